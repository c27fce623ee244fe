"""The error budget of Eg(x, T) against known answers: an analytic teacher, a deliberately biased model and the
frames an MD would give, run through the same functions the study uses (series statistics, frame selection,
paired bias, control-variate correction)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aiida_capthermo.core.error_budget import budget_rows, corrected_gap
from aiida_capthermo.core.thermal import combine_replicas, series_statistics
from aiida_capthermo.core.validation import paired_difference, select_frames

# MD of a crystal with MODES independent phonon coordinates q_k, each a stationary AR(1) series (correlation PHI
# per recorded frame, statistical inefficiency (1 + PHI) / (1 - PHI) = 9 frames) with <q_k^2> = VARIANCE.
PHI, VARIANCE, LENGTH, MODES = 0.8, 0.25, 400, 8


def mean_square(q):
    """[..., MODES] -> mean over the modes of q_k^2."""
    return np.mean(q**2, axis=-1)


def teacher(q):
    """The analytic teacher: a gap that closes quadratically with the displacements (the lowest order of
    electron-phonon renormalisation); its thermal average is exactly 1 - 2 <q^2> = 0.5 eV."""
    return 1.0 - 2.0 * mean_square(q)


def biased_model(q):
    """A model that barely responds to disorder (a quarter of the teacher's curvature) and is offset: like the
    GNN trained on near-equilibrium cells. Its own thermal average, 0.775 eV, is 0.275 eV off."""
    return 0.9 - 0.5 * mean_square(q)


TRUTH = 1.0 - 2.0 * VARIANCE


def ar1(rng: np.random.Generator) -> np.ndarray:
    """[LENGTH, MODES] stationary AR(1) series of the phonon coordinates."""
    noise = rng.normal(0.0, math.sqrt(VARIANCE * (1 - PHI**2)), (LENGTH, MODES))
    q = np.empty((LENGTH, MODES))
    q[0] = rng.normal(0.0, math.sqrt(VARIANCE), MODES)
    for t in range(1, LENGTH):
        q[t] = PHI * q[t - 1] + noise[t]
    return q


def one_study(seed: int, per_point: int = 12) -> tuple[dict, float]:
    """Two replicas of one (x, T): the model's average with its statistical error, the teacher on ``per_point``
    decorrelated frames, the corrected gap. Returns the budget and the model's plain average."""
    rng = np.random.default_rng(seed)
    replicas = [ar1(rng) for _ in range(2)]
    statistics = [series_statistics(biased_model(q), start=0) for q in replicas]
    md = combine_replicas(statistics)
    series = [{'x': 0.5, 'temperature': 300.0, 'offset': k * LENGTH, 'n_frames': LENGTH, 'start': s.start,
               'inefficiency': s.inefficiency, 'replica': k} for k, s in enumerate(statistics)]
    frames = select_frames(series, per_point, seed=seed)
    q_all = np.concatenate(replicas)
    q_picked = q_all[[f['index'] for f in frames]]
    bias = paired_difference(teacher(q_picked), biased_model(q_picked))
    return corrected_gap(md['mean'], md['stderr'], bias['bias'], bias['stderr'], 300.0, bias['n']), md['mean']


def test_correction_removes_a_known_bias_and_its_error_covers_the_truth():
    """Over 300 independent studies the corrected gap is centred on the teacher's exact thermal average and the
    stated total error covers it about as often as a standard error claims (68 % at 1 sigma, 95 % at 2 sigma, less
    the few % of a t distribution with 11 degrees of freedom); the model's own average with its statistical error
    almost never does."""
    budgets, plain = zip(*(one_study(seed) for seed in range(300)))
    errors = np.array([b['gap'] - TRUTH for b in budgets])
    totals = np.array([b['stderr'] for b in budgets])
    statistical = np.array([b['stderr_statistical'] for b in budgets])
    assert abs(errors.mean()) < 3 * errors.std(ddof=1) / math.sqrt(len(errors))  # unbiased
    assert np.mean(np.array(plain) - TRUTH) == pytest.approx(0.275, abs=0.01)  # the model's bias, measured
    one, two = np.mean(np.abs(errors) <= totals), np.mean(np.abs(errors) <= 2 * totals)
    print(f'coverage {one:.3f} at 1 sigma, {two:.3f} at 2 sigma')
    assert 0.58 <= one <= 0.78, one
    assert two >= 0.88, two
    assert np.mean(np.abs(np.array(plain) - TRUTH) <= 2 * statistical) < 0.02
    # the model's part dominates: the statistical error alone would claim far more than the validation allows
    assert np.median(totals) > 3 * np.median(statistical)


def test_a_model_that_tracks_the_teacher_has_a_small_model_error():
    """A model off by a constant has paired differences with no spread: the bias is removed exactly and the
    model's error is zero, so the total is the statistical part."""
    rng = np.random.default_rng(0)
    q = rng.normal(0.0, 0.5, (20, MODES))
    bias = paired_difference(teacher(q), teacher(q) - 0.3)
    budget = corrected_gap(0.2, 0.01, bias['bias'], bias['stderr'], 600.0)
    assert budget['gap'] == pytest.approx(0.5)
    assert budget['stderr_model'] == pytest.approx(0.0, abs=1e-12)
    assert budget['stderr'] == pytest.approx(0.01)


def test_budget_rows_by_hand():
    """Corrected gaps, Eg(0) from the teacher's label of the relaxed structure (no sampling error), ΔEg and its
    error in quadrature; a point without validation keeps the model's gap and says it is not validated."""
    thermal = [{'key': 'a', 'x': 0.5, 'temperature': 0.0, 'gap': 1.0, 'stderr': 0.0, 'eg0': 1.0},
               {'key': 'a', 'x': 0.5, 'temperature': 300.0, 'gap': 0.9, 'stderr': 0.03, 'eg0': 1.0},
               {'key': 'a', 'x': 0.5, 'temperature': 600.0, 'gap': 0.8, 'stderr': 0.04, 'eg0': 1.0}]
    validation = [{'x': 0.5, 'temperature': 0.0, 'gnn_bias': 0.1, 'gnn_bias_stderr': None, 'n_gap': 1,
                   'teacher_gap': 1.1},
                  {'x': 0.5, 'temperature': 300.0, 'gnn_bias': -0.2, 'gnn_bias_stderr': 0.04, 'n_gap': 8,
                   'teacher_gap': 0.72}]
    rows = budget_rows(thermal, validation)
    zero, warm, hot = rows
    assert zero['gap'] == pytest.approx(1.1) and zero['stderr'] == 0.0 and zero['validated']
    model = 0.04 * 1.07671  # Student's t, 7 degrees of freedom, at 84.13 %
    assert warm['gap'] == pytest.approx(0.7) and warm['stderr_model'] == pytest.approx(model, rel=1e-4)
    assert warm['stderr'] == pytest.approx(np.hypot(0.03, model), rel=1e-4)
    assert warm['delta_gap'] == pytest.approx(-0.4) and warm['delta_gap_stderr'] == pytest.approx(warm['stderr'])
    assert warm['relative_change'] == pytest.approx(-0.4 / 1.1)
    assert warm['n_validation'] == 8 and warm['estimator'] == 'control_variate'
    assert not hot['validated'] and hot['gap'] == 0.8 and hot['stderr_model'] is None
    assert hot['stderr'] == pytest.approx(0.04) and hot['delta_gap'] == pytest.approx(0.8 - 1.1)
    with pytest.raises(ValueError, match='finite'):
        corrected_gap(float('nan'), 0.1, 0.0, 0.0, 300.0)


def test_structure_error_of_eg0_by_hand():
    """With the teacher's gap at the engine's own minimum (the validation's ``relax``), Eg(0) keeps the gap at the
    potential's minimum and gets the difference as its error: exact (a difference of two labels, never marked
    beyond first order) and carried into ΔEg(T); without it Eg(0) has none, as before."""
    thermal = [{'key': 'a', 'x': 0.5, 'temperature': 0.0, 'gap': 1.0, 'stderr': 0.0, 'eg0': 1.0},
               {'key': 'a', 'x': 0.5, 'temperature': 300.0, 'gap': 0.9, 'stderr': 0.03, 'eg0': 1.0}]
    validation = [{'x': 0.5, 'temperature': 0.0, 'gnn_bias': 0.1, 'gnn_bias_stderr': None, 'n_gap': 1,
                   'teacher_gap': 1.1, 'engine_relaxed_gap': 1.064, 'sampling_shift': -0.036,
                   'sampling_shift_stderr': 0.0, 'n_sampling': 1, 'sampling_beta_sigma': None},
                  {'x': 0.5, 'temperature': 300.0, 'gnn_bias': -0.2, 'gnn_bias_stderr': 0.04, 'n_gap': 8,
                   'teacher_gap': 0.72}]
    zero, warm = budget_rows(thermal, validation)
    assert zero['gap'] == pytest.approx(1.1)  # not moved: the gap of the structure the MD starts from
    assert zero['stderr'] == pytest.approx(0.036) and zero['stderr_sampling'] == pytest.approx(0.036)
    assert zero['stderr_model'] == 0.0 and zero['sampling_perturbative'] is True
    assert warm['eg0_stderr'] == pytest.approx(0.036)
    assert warm['delta_gap_stderr'] == pytest.approx(np.hypot(warm['stderr'], 0.036))
    assert warm['relative_change'] == pytest.approx(-0.4 / 1.1)
    without = budget_rows(thermal, [{**validation[0], 'sampling_shift': None}, validation[1]])
    assert without[0]['stderr'] == 0.0 and without[0]['stderr_sampling'] is None
    assert without[1]['delta_gap_stderr'] == pytest.approx(warm['stderr'])
    # Table I states it, and says what it is; without it, Eg(0) stays "(static)"
    from aiida_capthermo.workflows.report import table_rows, table_text

    text = table_text(table_rows([{**zero, 'n_frames': 0}, {**warm, 'n_frames': 10}]))
    assert text.splitlines()[2].split()[1:5] == ['1.100', '±', '0.036', '(0.000)']
    assert 'Eg(0) ± its structure error' in text and '(static)' not in text
    text = table_text(table_rows([{**row, 'n_frames': 0} for row in without]))
    assert '1.100 (static)' in text and 'structure error' not in text


def test_student_factor_makes_one_sigma_a_68_percent_interval():
    """The factor against tabulated quantiles of Student's t at 84.13 % (two-sided 68.27 %), and by simulation:
    means of 4 normal samples +- factor x standard error cover the true mean 68 % of the time."""
    from aiida_capthermo.core.error_budget import student_factor

    assert student_factor(2) == pytest.approx(1.8373, abs=1e-3)
    assert student_factor(4) == pytest.approx(1.1966, abs=1e-3)
    assert student_factor(10_000) == pytest.approx(1.0, abs=1e-3)
    samples = np.random.default_rng(1).normal(0.0, 1.0, (20_000, 4))
    stderr = samples.std(axis=1, ddof=1) / 2.0
    means = samples.mean(axis=1)
    assert np.mean(np.abs(means) <= stderr) == pytest.approx(0.61, abs=0.02)  # plain standard error: too short
    assert np.mean(np.abs(means) <= student_factor(4) * stderr) == pytest.approx(0.6827, abs=0.01)
    with pytest.raises(ValueError, match='2 samples'):
        student_factor(1)


def test_bias_error_sees_replicas_that_disagree():
    """The model's error on the frames of one replica shares that replica's offset (a replica settled into its own
    distortion): three replicas with offsets drawn with spread 0.05 eV and 10 frames each with noise 0.02 eV. The
    mean bias over the frames estimates the bias over replicas (0 here). Its standard error over the frames alone
    covers 0 far less often than the 68 % a one-sigma interval claims; the larger of it and the replicas' spread,
    with the Student factor of the samples it came from, covers it as claimed. One replica, or replicas that agree:
    the frames' error, as before. Through validation_rows and budget_rows, the model error is that one."""
    from aiida_capthermo.core.error_budget import one_sigma
    from aiida_capthermo.core.validation import replica_bias_error, validation_rows

    rng = np.random.default_rng(5)
    labels = [f'md:{r}' for r in range(3) for _ in range(10)]
    covered_frames, covered = [], []
    for _ in range(4000):
        difference = np.repeat(rng.normal(0.0, 0.05, 3), 10) + rng.normal(0.0, 0.02, 30)
        error = replica_bias_error(difference, labels)
        covered_frames.append(abs(difference.mean()) <= one_sigma(error['stderr_frames'], 30))
        covered.append(abs(difference.mean()) <= one_sigma(error['stderr'], error['n']))
    assert np.mean(covered_frames) < 0.45
    assert np.mean(covered) == pytest.approx(0.68, abs=0.04)
    by_hand = replica_bias_error([0.1, 0.1, 0.3, 0.3, 0.5, 0.5], ['a', 'a', 'b', 'b', 'c', 'c'])
    assert by_hand['stderr_replicas'] == pytest.approx(0.2 / math.sqrt(3)) and by_hand['n'] == 3
    assert by_hand['stderr'] == by_hand['stderr_replicas'] > by_hand['stderr_frames']
    agree = replica_bias_error([0.1, 0.3, 0.1, 0.3], ['a', 'a', 'b', 'b'])
    assert agree['stderr'] == agree['stderr_frames'] and agree['n'] == 4 and agree['stderr_replicas'] == 0
    single = replica_bias_error([0.1, 0.3, 0.2], [None, None, None])  # frames of their own: replicas = frames
    assert single['stderr'] == pytest.approx(single['stderr_frames']) and single['n_replicas'] == 3
    # through the study's functions: the model error is the replicas' spread times t(2)
    n = 6
    gaps = np.array([0.1, 0.1, 0.3, 0.3, 0.5, 0.5])
    rows = validation_rows([0.5] * n, [300.0] * n, gaps, np.zeros(n), [1] * n, [np.nan] * n, [np.nan] * n,
                           np.full((n, 3), np.nan), np.full((n, 3), np.nan), replicas=['a', 'a', 'b', 'b', 'c', 'c'])
    assert rows[0]['gnn_bias_stderr'] == pytest.approx(0.2 / math.sqrt(3)) and rows[0]['gnn_bias_n'] == 3
    thermal = [{'key': 'x050', 'x': 0.5, 'temperature': 300.0, 'gap': 0.0, 'stderr': 0.0, 'eg0': 0.0}]
    budget = budget_rows(thermal, rows)[0]
    assert budget['stderr_model'] == pytest.approx(one_sigma(0.2 / math.sqrt(3), 3))
    assert budget['n_validation'] == 6


def test_sampling_shift_sees_replicas_in_their_own_slow_states():
    """Frames of three MD replicas, each settled into its own slow state z_r ~ N(0, 1) that moves the gap by
    0.06 z_r eV and dU = U_engine - U_MLIP by -0.03 z_r eV (the potential misplaces the states' energies), and
    10 frames per replica with scatter 0.04 eV (gap) and 0.05 eV (dU), correlated 0.5. The exact first-order shift
    at 300 K is -beta cov(g, dU) = beta * 0.0008 eV^2 = 0.031 eV. Over 2000 such sets, the covariance over the
    frames taken as independent is biased low (about a third of the between-replica part is lost) and its
    jackknife over frames covers the exact shift far less often than the 68 % it claims; the variance-component
    estimate is centred on it, and its jackknife over replicas with the Student factor of three covers it as
    claimed (its error the larger of the replicas' and the frames' jackknife, as for the GNN's bias). By hand:
    replicas whose frames agree give the covariance of their means, with the 3-frame jackknife over replicas;
    through validation_rows and budget_rows the term takes t(3)."""
    from aiida_capthermo.core.constants import KB_EV
    from aiida_capthermo.core.error_budget import one_sigma
    from aiida_capthermo.core.validation import sampling_shift, validation_rows

    beta = 1.0 / (KB_EV * 300.0)
    exact = beta * (0.06 * 0.03 - 0.04 * 0.05 * 0.5)
    rng = np.random.default_rng(11)
    labels = [f'md:{r}' for r in range(3) for _ in range(10)]
    plain, replica = [], []
    for _ in range(2000):
        state = np.repeat(rng.normal(size=3), 10)
        noise = rng.normal(size=30)
        gaps = 0.5 + 0.06 * state + 0.04 * noise
        delta = -0.03 * state + 0.05 * (0.5 * noise + math.sqrt(0.75) * rng.normal(size=30))
        plain.append(sampling_shift(gaps, delta, np.zeros(30), 300.0))
        replica.append(sampling_shift(gaps, delta, np.zeros(30), 300.0, labels))
    assert exact == pytest.approx(0.031, abs=0.001)
    plain_shifts = np.array([r['shift'] for r in plain])
    shifts = np.array([r['shift'] for r in replica])
    assert plain_shifts.mean() < exact - 0.015  # the frames' covariance loses part of the replicas'
    assert abs(shifts.mean() - exact) < 3 * shifts.std(ddof=1) / math.sqrt(len(shifts))
    assert {r['stderr_n'] for r in plain} == {30} and {r['n_replicas'] for r in replica} == {3}
    assert 0.7 < np.mean([r['stderr_n'] == 3 for r in replica]) < 1  # the replicas' error wins, not always
    covered_plain = np.abs(plain_shifts - exact) <= [one_sigma(r['shift_stderr'], r['stderr_n']) for r in plain]
    covered = np.abs(shifts - exact) <= [one_sigma(r['shift_stderr'], r['stderr_n']) for r in replica]
    assert np.mean(covered_plain) < 0.55
    assert np.mean(covered) == pytest.approx(0.68, abs=0.05)
    # by hand: three replicas of two equal frames, means 1.0/0.8/0.6 eV and dU 0/0.1/0.2 eV: within 0, between
    # cov -0.02 eV^2 (the frames' plain covariance: -0.016); leaving a replica out: -0.01, -0.04, -0.01
    gaps, delta, names = np.repeat([1.0, 0.8, 0.6], 2), np.repeat([0.0, 0.1, 0.2], 2), np.repeat(['a', 'b', 'c'], 2)
    by_hand = sampling_shift(gaps, delta, np.zeros(6), 300.0, list(names))
    assert by_hand['shift'] == pytest.approx(0.02 * beta) and by_hand['shift_stderr'] == pytest.approx(0.02 * beta)
    assert sampling_shift(gaps, delta, np.zeros(6), 300.0)['shift'] == pytest.approx(0.016 * beta)
    two = sampling_shift(gaps[:4], delta[:4], np.zeros(4), 300.0, list(names[:4]))  # two replicas: frames
    assert two['stderr_n'] == 4 and two == {**sampling_shift(gaps[:4], delta[:4], np.zeros(4), 300.0),
                                             'n_replicas': 2}
    rows = validation_rows([0.5] * 6, [300.0] * 6, gaps, np.zeros(6), [1] * 6, delta, np.zeros(6),
                           np.zeros((6, 3)), np.zeros((6, 3)), replicas=list(names))
    assert rows[0]['sampling_shift'] == pytest.approx(0.02 * beta) and rows[0]['sampling_shift_n'] == 3
    assert rows[0]['n_sampling'] == 6
    thermal = [{'key': 'x050', 'x': 0.5, 'temperature': 300.0, 'gap': 0.0, 'stderr': 0.0, 'eg0': 0.0}]
    budget = budget_rows(thermal, rows)[0]
    assert budget['stderr_sampling'] == pytest.approx(math.hypot(0.02 * beta, one_sigma(0.02 * beta, 3)))


def harmonic_frames(rng: np.random.Generator, stiffening: float, n: int = 12, temperature: float = 300.0):
    """``n`` independent frames of MD with a harmonic potential whose MODES modes have <q^2> = VARIANCE at
    ``temperature``, the engine's spring constants ``stiffening`` times the potential's, the analytic teacher gap.
    Returns (gaps, engine energies, potential energies) in eV, and the exact shift of the teacher's thermal average
    from the potential's distribution to the engine's: 2 VARIANCE (1 - 1 / stiffening)."""
    from aiida_capthermo.core.constants import KB_EV

    spring = KB_EV * temperature / VARIANCE  # eV per unit q^2
    q = rng.normal(0.0, math.sqrt(VARIANCE), (n, MODES))
    potential = 0.5 * spring * np.sum(q**2, axis=1) + 3.0  # an offset of the potential's energies cancels
    engine = 0.5 * stiffening * spring * np.sum(q**2, axis=1)
    return teacher(q), engine, potential, 2 * VARIANCE * (1 - 1 / stiffening)


def test_sampling_shift_of_a_slightly_soft_potential_known_answer():
    """A potential 5 % softer than its engine samples too large displacements: the teacher's average over the
    engine's distribution is 0.0238 eV above that over the potential's frames (analytic). Over 300 independent sets
    of 12 frames the first-order estimate -beta cov(g, dU) is centred on it (first order: 0.025) with a jackknife
    error that covers it about as often as it claims, and beta * std(dU) = 0.1 says first order holds. The budget
    carries its size as a term of the total, the jackknife error times Student's t for 11 degrees of freedom."""
    from aiida_capthermo.core.validation import PERTURBATIVE_LIMIT, sampling_shift

    rng = np.random.default_rng(1)
    results, exact = [], None
    for _ in range(300):
        gaps, engine, potential, exact = harmonic_frames(rng, 1.05)
        results.append(sampling_shift(gaps, engine, potential, 300.0))
    shifts = np.array([r['shift'] for r in results])
    stderrs = np.array([r['shift_stderr'] for r in results])
    assert exact == pytest.approx(0.0238, abs=1e-4)
    assert abs(shifts.mean() - exact) < 3 * shifts.std(ddof=1) / math.sqrt(len(shifts)) + 0.0015  # + first order
    assert 0.55 <= np.mean(np.abs(shifts - exact) <= stderrs) <= 0.85
    beta_sigma = np.median([r['beta_sigma'] for r in results])
    assert beta_sigma == pytest.approx(0.1, rel=0.25) and beta_sigma < PERTURBATIVE_LIMIT
    budget = corrected_gap(0.5, 0.01, 0.02, 0.005, 300.0, 12, results[0])
    assert budget['sampling_perturbative'] and budget['sampling_shift'] == results[0]['shift']
    assert budget['stderr_sampling'] == pytest.approx(math.hypot(results[0]['shift'],
                                                                 1.04757 * results[0]['shift_stderr']), rel=1e-4)
    assert budget['stderr'] == pytest.approx(math.sqrt(0.01**2 + budget['stderr_model']**2
                                                       + budget['stderr_sampling']**2))
    assert budget['gap'] == pytest.approx(0.52)  # the shift widens the error bar; it does not move the gap


def test_sampling_shift_of_a_far_too_soft_potential_is_flagged():
    """A potential three times softer than its engine: beta * std(dU) = 4, the first order overshoots the exact shift
    (1.0 against 0.33 eV) and the row says the estimate is beyond first order; Table I marks it. At 0 K and with
    fewer than 3 frames there is no estimate."""
    from aiida_capthermo.core.validation import sampling_shift
    from aiida_capthermo.workflows.report import table_rows, table_text

    rng = np.random.default_rng(2)
    gaps, engine, potential, exact = harmonic_frames(rng, 3.0, n=400)
    result = sampling_shift(gaps, engine, potential, 300.0)
    assert exact == pytest.approx(1 / 3) and result['shift'] == pytest.approx(1.0, rel=0.2)
    assert result['beta_sigma'] == pytest.approx(4.0, rel=0.1)
    # the engine's extra energy and the gap are both sums of q^2: the potential is wrong exactly where the gap moves
    assert result['correlation'] < -0.9
    noise = sampling_shift(gaps, potential + rng.normal(0.0, 0.1, gaps.size), potential, 300.0)
    assert abs(noise['correlation']) < 0.2  # an energy error that is noise to the gap: no correlation
    assert sampling_shift(gaps, engine, potential, 0.0)['shift'] is None
    assert sampling_shift(gaps[:2], engine[:2], potential[:2], 300.0)['shift'] is None
    thermal = [{'key': 'a', 'x': 0.5, 'temperature': 0.0, 'gap': 1.0, 'stderr': 0.0, 'eg0': 1.0},
               {'key': 'a', 'x': 0.5, 'temperature': 300.0, 'gap': 0.9, 'stderr': 0.03, 'eg0': 1.0}]
    validation = [{'x': 0.5, 'temperature': 300.0, 'gnn_bias': -0.2, 'gnn_bias_stderr': 0.04, 'n_gap': 8,
                   'sampling_shift': result['shift'], 'sampling_shift_stderr': result['shift_stderr'],
                   'sampling_beta_sigma': result['beta_sigma']}]
    rows = budget_rows(thermal, validation)
    assert rows[1]['sampling_perturbative'] is False and rows[1]['stderr'] > abs(result['shift'])
    assert rows[0]['stderr_sampling'] is None and rows[0]['sampling_perturbative'] is None
    assert '‡' in table_text(table_rows(rows))


def test_energy_spread_per_point_known_answer():
    """The active learning's energy criterion: beta * std(U_engine - U_MLIP) per (x, T). For harmonic frames with
    the engine's springs s times the potential's it is (s - 1) sqrt(MODES / 2) whatever T (0.1 for s = 1.05, 4 for
    s = 3), and it is the same number the validation's sampling shift reports on the same frames. Frames without an
    energy and T = 0 frames are left out; one frame gives no spread."""
    from aiida_capthermo.core.validation import energy_spread, sampling_shift

    rng = np.random.default_rng(5)
    soft_gaps, soft_engine, soft_potential, _ = harmonic_frames(rng, 1.05, n=400, temperature=300.0)
    far_gaps, far_engine, far_potential, _ = harmonic_frames(rng, 3.0, n=400, temperature=600.0)
    x = np.r_[np.ones(400), np.zeros(400), [0.5, 0.5, 0.0]]
    temperature = np.r_[np.full(400, 600.0), np.full(400, 300.0), [300.0, 0.0, 300.0]]
    engine = np.r_[far_engine, soft_engine, [1.0, 1.0, np.nan]]
    potential = np.r_[far_potential, soft_potential, [0.0, 0.0, 0.0]]
    rows = energy_spread(x, temperature, engine, potential)
    assert [(row['x'], row['temperature'], row['n']) for row in rows] == [(0.0, 300.0, 400), (0.5, 300.0, 1),
                                                                          (1.0, 600.0, 400)]
    assert rows[0]['beta_sigma'] == pytest.approx(0.1, rel=0.1)
    assert rows[2]['beta_sigma'] == pytest.approx(4.0, rel=0.1)
    assert rows[1]['beta_sigma'] is None and rows[1]['std_dU'] is None
    assert rows[0]['beta_sigma'] == pytest.approx(sampling_shift(soft_gaps, soft_engine, soft_potential,
                                                                 300.0)['beta_sigma'], rel=1e-12)
    assert rows[2]['beta_sigma'] == pytest.approx(sampling_shift(far_gaps, far_engine, far_potential,
                                                                 600.0)['beta_sigma'], rel=1e-12)
    assert rows[2]['std_dU'] == pytest.approx(np.std(far_engine - far_potential, ddof=1))
    with pytest.raises(ValueError, match='energies'):
        energy_spread(x, temperature, engine[:-1], potential[:-1])


def test_ensemble_spread_by_hand():
    """With an ensemble of three GNNs, every model's corrected estimate is its average plus its own bias and
    ``stderr_members`` is their standard deviation, added in quadrature; a validated 0 K row is the teacher's gap
    whatever the model (spread 0); a row without validation has the spread of the models' averages as its only
    model error; the models' weighted averages over configurations give the spread of an alloy's gap."""
    from aiida_capthermo.core.error_budget import ensemble_rows, member_spread

    thermal = [{'key': 'a', 'x': 0.5, 'temperature': 0.0, 'gap': 1.0, 'stderr': 0.0, 'eg0': 1.0,
                'gap_members': [0.9, 1.0, 1.1]},
               {'key': 'a', 'x': 0.5, 'temperature': 300.0, 'gap': 0.9, 'stderr': 0.03, 'eg0': 1.0,
                'gap_members': [0.8, 0.9, 1.0]},
               {'key': 'a', 'x': 0.5, 'temperature': 600.0, 'gap': 0.8, 'stderr': 0.04, 'eg0': 1.0,
                'gap_members': [0.75, 0.8, 0.85]}]
    validation = [{'x': 0.5, 'temperature': 0.0, 'gnn_bias': 0.1, 'gnn_bias_stderr': None, 'n_gap': 1,
                   'teacher_gap': 1.1, 'gnn_bias_members': [0.2, 0.1, 0.0]},
                  {'x': 0.5, 'temperature': 300.0, 'gnn_bias': -0.2, 'gnn_bias_stderr': 0.04, 'n_gap': 8,
                   'teacher_gap': 0.72, 'gnn_bias_members': [-0.08, -0.2, -0.32]}]
    zero, warm, hot = budget_rows(thermal, validation)
    assert zero['gap_members_corrected'] == pytest.approx([1.1, 1.1, 1.1]) and zero['stderr_members'] == 0.0
    assert zero['stderr'] == 0.0
    # 0.72, 0.70, 0.68: the models disagree off the validation frames by more than on them
    assert warm['gap_members_corrected'] == pytest.approx([0.72, 0.70, 0.68])
    assert warm['stderr_members'] == pytest.approx(0.02)
    assert warm['stderr'] == pytest.approx(math.sqrt(0.03**2 + warm['stderr_model'] ** 2 + 0.02**2))
    assert not hot['validated'] and hot['stderr_members'] == pytest.approx(0.05)
    assert hot['stderr'] == pytest.approx(math.hypot(0.04, 0.05))
    assert member_spread([1.0]) is None and member_spread(None) is None
    # without every model's bias a validated row has no ensemble term rather than a wrong one
    partial = budget_rows(thermal[1:2], [{**validation[1], 'gnn_bias_members': None}])[0]
    assert partial['stderr_members'] is None and partial['stderr'] == pytest.approx(
        math.hypot(0.03, partial['stderr_model']))
    # two configurations of one composition share the ensemble: the spread of the models' weighted averages
    other = [{**row, 'key': 'b', 'gap_members': [g + 0.1 for g in row['gap_members']], 'gap': row['gap'] + 0.1}
             for row in thermal]
    rows = budget_rows(thermal + other, validation)
    alloy = next(r for r in ensemble_rows(rows, {'x050': {'a': 0.75, 'b': 0.25}}) if r['temperature'] == 300.0)
    models = [0.75 * a + 0.25 * b for a, b in zip(rows[1]['gap_members_corrected'],
                                                   rows[4]['gap_members_corrected'])]
    assert alloy['gap_members_corrected'] == pytest.approx(models)
    assert alloy['stderr_members'] == pytest.approx(np.std(models, ddof=1))
    assert alloy['gap'] == pytest.approx(np.mean(models))


def test_ensemble_spread_measures_what_the_correction_leaves():
    """Known answers for an ensemble of models of the analytic teacher, each validated on the same 12 frames:
    models that differ by a constant give one corrected gap (the correction removes any offset: spread 0); models
    that differ in how they respond to disorder give a spread that shrinks as the validation set grows (it is the
    models' disagreement off the validation frames), and is 0 when every frame is validated."""
    from aiida_capthermo.core.error_budget import member_spread

    rng = np.random.default_rng(5)
    q = np.concatenate([ar1(rng) for _ in range(2)])
    offsets = [0.85, 0.9, 0.95]
    curvatures = [0.3, 0.5, 0.7]

    def spread(models, n):
        picked = rng.choice(len(q), size=n, replace=False)
        estimates = [np.mean(model(q)) + np.mean(teacher(q[picked]) - model(q[picked])) for model in models]
        return member_spread(estimates)

    shifted = [lambda q, c=c: c - 0.5 * mean_square(q) for c in offsets]
    assert spread(shifted, 12) == pytest.approx(0.0, abs=1e-12)
    curved = [lambda q, k=k: 0.9 - k * mean_square(q) for k in curvatures]
    few, many = (np.mean([spread(curved, n) for _ in range(200)]) for n in (12, 200))
    assert few > 1.5 * many > 0
    assert spread(curved, len(q)) == pytest.approx(0.0, abs=1e-12)
