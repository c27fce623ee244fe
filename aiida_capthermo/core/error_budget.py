"""The error budget of Eg(x, T): the GNN's thermal average corrected by the teacher on validation frames.

The thermal stage averages the GNN's gap over every recorded MD frame: ``<Eg_GNN>`` with a statistical error
``s_stat`` (decorrelated samples and the spread over seeds, :func:`aiida_capthermo.core.thermal.combine_replicas`).
That is the thermal average of the *model*. The quantity wanted is the teacher's thermal average over the same MD,
and the two differ by the model's bias on those frames, which can be far larger than ``s_stat``.

The validation stage labels ``n`` decorrelated production frames of the same MD with the teacher and gives the
paired bias ``b = mean(teacher - GNN)`` with its standard error ``s_b = std(teacher - GNN) / sqrt(n)``
(:func:`aiida_capthermo.core.validation.paired_difference`). The **control-variate estimator** is

    Eg = <Eg_GNN> + b,      s_total = sqrt(s_stat^2 + s_model^2 [+ s_sampling^2]),   s_model = t(n - 1) * s_b

It is unbiased for the teacher's average whatever the GNN's bias (the GNN's average over all frames is the control
variate; the teacher is only needed on the ``n`` frames), and ``s_b`` is the model's error as it enters the
number: it shrinks when the GNN tracks the teacher frame by frame, and stays large when it does not. The two terms
come from different samples (all frames vs. the validation subset) and are added in quadrature. ``s_b`` rests on
few frames (4-32 per (x, T)), so it is itself uncertain and a mean ± s_b covers the truth less often than 68 %;
``t(n - 1)`` is the factor of Student's t distribution with n - 1 degrees of freedom that makes ± s_model a 68.3 %
interval (1.20 for 4 frames, 1.08 for 8, 1.02 for 32; :func:`student_factor`).

At T = 0 the "average" is the relaxed structure itself: the teacher's gap of that one structure is the answer, so
``b`` is its teacher-minus-GNN difference and ``s_b = 0`` (its structure error is below).

Without a validation row for an (x, T) the gap stays the GNN's and is flagged ``validated = False``; its error bar
then holds the statistical part only and says so: no Table I row hides that its model error is unknown.

ΔEg(T) = Eg(T) - Eg(0) and its error ``sqrt(s_total(T)^2 + s_total(0)^2)`` (the two come from different frames).

**The potential's sampling error.** The correction gives the teacher's average over the *potential's* MD frames.
The MD run by the low engine itself samples another distribution wherever the potential's energy surface differs
from the engine's. On the same validation frames the low engine's energies give, to first order in
``dU = U_low - U_MLIP``, the shift of the teacher's average between the two distributions, ``-beta cov(g, dU)``
(:func:`aiida_capthermo.core.validation.sampling_shift`; per replica where the frames come from three or more, whose
slow states it would otherwise miss). It is not applied: a first-order estimate from 4-32 frames is no correction.
Its size enters the budget as a systematic term,

    s_sampling = sqrt(shift^2 + (t(m - 1) s_shift)^2),   s_total = sqrt(s_stat^2 + s_model^2 + s_sampling^2)

with ``m`` the samples behind ``s_shift`` (replicas or frames), and ``sampling_perturbative`` says whether the
first order can be trusted (beta * std(dU) <= 1). Where it is not, the term is an order of magnitude only and
Table I marks the gap. The term is conservative: ``shift^2`` already holds the estimate's noise, which ``s_shift``
counts again; and it comes from the frames of the bias, but is added in quadrature as if independent.

**The structure error of Eg(0).** At T = 0 the potential's distribution is its minimum, the relaxed structure,
and the engine's is the engine's minimum. Where the validation relaxed the 0 K structure with the low engine
(``ThermalValidationWorkChain`` with ``relax``, the local engine), the teacher labels both, and the 0 K row's
sampling term is their difference, ``shift = Eg_teacher(engine's minimum) - Eg_teacher(potential's minimum)``:
``s_sampling = |shift|`` (no standard error: two labels, no expansion in dU, so never marked beyond first order).
Like the finite-T term it is stated, not applied: Eg(0) stays the gap of the structure the thermal MD starts from,
and ΔEg(T) carries the term through ``s_total(0)``. Without ``relax`` (VASP) Eg(0) has no error bar; the
validation's ``teacher_max_force`` and ``teacher_pressure`` on the relaxed cell then say how far from the engine's
minimum it is.

**Configurations.** Where a composition is an ensemble of configurations (the screen's k lowest with their
Boltzmann weights at the synthesis temperature, :func:`ensemble_rows`), Eg(x, T) is the weighted average of the
configurations' corrected gaps. Each configuration has its own MD and its own validation frames, so their
statistical and model errors are independent and add as ``sqrt(sum w_i^2 s_i^2)``; their sampling terms come from
one potential and may share a sign, so they add linearly, ``sum w_i s_i`` (an upper bound). The spread of the
configurations' gaps, ``sqrt(sum w_i (Eg_i - Eg)^2)``, is reported beside the error: it is the width of the alloy's
gap distribution, not an error of its mean.

**The weights' error.** The weights ``w_i ∝ g_i exp(-E_i / k_B T_s)`` come from the potential's energies of the
relaxed configurations. The validation's 0 K rows give the low engine's energy of each relaxed configuration, so the
error of the potential's relative energies is known: ``D_i = E_i(engine) - E_i(potential)`` per cell (a common
offset cancels). The engine's weights are ``w'_i ∝ w_i exp(-(D_i - min D) / k_B T_s)``, and the term

    s_weights = |sum_i (w'_i - w_i) Eg_i|

is the change of the average if the engine's relative energies were used. Like the sampling term it is a systematic
estimate, not a correction (the engine's energies are of the cells the potential relaxed), and it enters ``s_total``
in quadrature. ΔEg gets ``|sum_i (w'_i - w_i) (Eg_i - Eg_i(0))|`` instead, since a wrong weight moves Eg(T) and
Eg(0) together. Without an engine energy for every configuration the term is None and left out, and the row says so.

**An ensemble of GNNs.** With ``M`` GNNs trained alike from other seeds (other splits, initial weights and batch
orders), "the GNN" is their mean: its average over the frames is the mean of the models' averages ``<Eg_m>``, and
its bias the mean of theirs ``b_m``. Every model gives its own corrected estimate ``Eg_m = <Eg_m> + b_m``; their
standard deviation over the models (ddof 1)

    s_members = std_m(Eg_m)

is how much the answer depends on which equally good model was trained, and enters ``s_total`` in quadrature. It
is small where the correction works (every model is corrected on the same frames: what differs is only the
models' disagreement off the validation frames) and it is the only model error of a row without validation, where
it is ``std_m(<Eg_m>)``. It is the spread of one model, not the standard error of the mean of ``M``: the models
share their training data and its gaps, so their errors are not independent. At T = 0 a validated row has the
teacher's gap whatever the model, and ``s_members = 0``. Configurations of one composition share the ensemble, so
for their weighted average the spread is taken of the models' weighted averages ``sum_i w_i Eg_i,m``.

Not included: the spread over ensembles of potentials (the MD's distribution and the relaxed structures).

No AiiDA and no torch here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from aiida_capthermo.core.validation import PERTURBATIVE_LIMIT

__all__ = ['ESTIMATOR', 'student_factor', 'corrected_gap', 'budget_rows', 'point_match', 'engine_weights',
           'ensemble_rows', 'member_spread']

#: Name of the estimator recorded beside every corrected gap.
ESTIMATOR = 'control_variate'


def student_factor(n: int) -> float:
    """The factor that turns the standard error of a mean of ``n`` normal samples into the half-width of its 68.3 %
    (one-sigma) interval: the quantile of Student's t with ``n - 1`` degrees of freedom at 0.8413 (1 for n -> inf).
    """
    from scipy import stats

    if n < 2:
        raise ValueError(f'a standard error needs at least 2 samples, got {n}')
    return float(stats.t.ppf(stats.norm.cdf(1.0), n - 1))


def one_sigma(stderr: float, n: int | None) -> float:
    """Half-width of the 68.3 % interval of a mean of ``n`` samples with standard error ``stderr``
    (:func:`student_factor`; ``stderr`` as it is where ``n`` is unknown, below 2 or the error is zero)."""
    return stderr * (student_factor(n) if n and n >= 2 and stderr > 0 else 1.0)


def member_spread(values: Sequence[float] | None) -> float | None:
    """Standard deviation (ddof 1) of the models' estimates of one gap; None for fewer than two models."""
    if values is None or len(values) < 2:
        return None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f'the models\' estimates {list(values)} are not all finite')
    return statistics.stdev(values)


def corrected_gap(model_gap: float, stderr_statistical: float, bias: float | None, bias_stderr: float | None,
                  temperature: float, n_validation: int | None = None, sampling: dict | None = None,
                  stderr_members: float | None = None) -> dict:
    """Control-variate estimate of the teacher's thermal average of the gap, with its error components (eV).

    Parameters
    ----------
    model_gap, stderr_statistical
        The GNN's average over the MD frames and its statistical standard error.
    bias, bias_stderr
        ``mean(teacher - GNN)`` on the validation frames of this (x, T) and its standard error; None: not validated.
    temperature
        K; at 0 the validation "frame" is the structure itself and the bias has no sampling error; its sampling term
        is the structure error (the teacher's gap at the engine's minimum less at the potential's), exact.
    n_validation
        Frames behind ``bias_stderr``: the model's error is ``student_factor(n_validation) * bias_stderr``; None
        takes ``bias_stderr`` as it is.
    sampling
        The potential's first-order sampling shift of this (x, T) (``shift``, ``shift_stderr``, ``beta_sigma``,
        ``n``, ``stderr_n``: :func:`aiida_capthermo.core.validation.sampling_shift`); None or None values: not
        estimated. Its term is ``sqrt(shift^2 + (student_factor(m) * shift_stderr)^2)``, ``m`` the samples behind
        the standard error (``stderr_n``: replicas or frames; ``n`` where it is absent).
    stderr_members
        The spread of the ensemble's estimates of this gap (:func:`member_spread`: of the corrected ones where
        validated, of the models' averages where not); None: one model.

    Returns
    -------
    dict
        ``gap`` (the estimate), ``gap_model``, ``bias``, ``stderr_statistical``, ``stderr_model`` (the bias's
        standard error times the Student factor), ``sampling_shift``, ``stderr_sampling`` (None where not
        estimated), ``sampling_perturbative`` (None where not estimated), ``stderr_members`` (None: one model),
        ``stderr`` (total, in quadrature), ``validated``, ``estimator``.
    """
    if not math.isfinite(model_gap) or not math.isfinite(stderr_statistical) or stderr_statistical < 0:
        raise ValueError(f'model gap {model_gap} ± {stderr_statistical} is not a finite estimate')
    sampling = sampling or {}
    shift = sampling.get('shift')
    term = {'sampling_shift': shift, 'stderr_sampling': None, 'sampling_perturbative': None}
    if shift is not None:
        term['stderr_sampling'] = math.hypot(shift, one_sigma(sampling.get('shift_stderr') or 0.0,
                                                              sampling.get('stderr_n') or sampling.get('n')))
        term['sampling_perturbative'] = temperature == 0 or bool(  # at 0 K a difference of two labels: no expansion
            sampling.get('beta_sigma') is not None and sampling['beta_sigma'] <= PERTURBATIVE_LIMIT)
    if stderr_members is not None and not (math.isfinite(stderr_members) and stderr_members >= 0):
        raise ValueError(f'the ensemble spread {stderr_members} is not a finite error')
    term['stderr_members'] = stderr_members
    if temperature == 0 and bias is not None:
        bias_stderr = 0.0
        term['stderr_members'] = 0.0 if stderr_members is not None else None  # the teacher's gap, whatever the model
    systematic = (term['stderr_sampling'] or 0.0) ** 2 + (term['stderr_members'] or 0.0) ** 2
    if bias is None or bias_stderr is None:
        return {'gap': model_gap, 'gap_model': model_gap, 'bias': None, 'stderr_statistical': stderr_statistical,
                'stderr_model': None, **term, 'stderr': math.sqrt(stderr_statistical**2 + systematic),
                'validated': False, 'estimator': 'model'}
    model = one_sigma(bias_stderr, n_validation)
    total = math.sqrt(stderr_statistical**2 + model**2 + systematic)
    return {'gap': model_gap + bias, 'gap_model': model_gap, 'bias': bias, 'stderr_statistical': stderr_statistical,
            'stderr_model': model, **term, 'stderr': total, 'validated': True, 'estimator': ESTIMATOR}


def point_match(x: float, temperature: float, key: str | None = None) -> tuple:
    """The key matching a thermal row to a validation row: (x, T) rounded to 1e-6, and the structure's key where
    the validation has one (several configurations of one composition are validated apart)."""
    return round(float(x), 6), round(float(temperature), 6), key


def budget_rows(thermal_rows: Sequence[dict], validation_rows: Sequence[dict] | None) -> list[dict]:
    """The thermal stage's rows (one per structure and T: ``key``, ``x``, ``temperature``, ``gap``, ``stderr``...)
    with the validation's bias applied (the validation row of the same structure and T; of the same (x, T) where
    the validation rows name no structure) (:func:`corrected_gap`) and ΔEg, the relative change and their errors
    recomputed from the corrected gaps.

    Returns
    -------
    list of dict
        Per input row, its keys plus those of :func:`corrected_gap`, ``n_validation`` (teacher-labelled frames),
        ``teacher_gap`` (their mean, eV), ``eg0`` and ``eg0_stderr``, ``delta_gap`` and ``delta_gap_stderr`` (eV),
        ``relative_change``; ``gap_members_corrected``: every model's estimate with an ensemble of GNNs (eV; None
        with one model).
    """
    validation = {point_match(r['x'], r['temperature'], r.get('key')): r for r in (validation_rows or [])}
    corrected = []
    for row in thermal_rows:
        check = validation.get(point_match(row['x'], row['temperature'], row.get('key')),
                               validation.get(point_match(row['x'], row['temperature']), {}))
        bias = check.get('gnn_bias') if check.get('n_gap') else None
        sampling = {'shift': check.get('sampling_shift'), 'shift_stderr': check.get('sampling_shift_stderr'),
                    'beta_sigma': check.get('sampling_beta_sigma'), 'n': check.get('n_sampling'),
                    'stderr_n': check.get('sampling_shift_n')}
        members = _member_estimates(row.get('gap_members'), check.get('gnn_bias_members') if bias is not None
                                    else None, bias is not None)
        budget = corrected_gap(float(row['gap']), float(row['stderr']), bias, check.get('gnn_bias_stderr'),
                               float(row['temperature']),
                               int(check.get('gnn_bias_n') or check.get('n_gap') or 0) or None, sampling,
                               member_spread(members))
        corrected.append({**row, **budget, 'n_validation': int(check.get('n_gap') or 0),
                          'teacher_gap': check.get('teacher_gap'), 'gap_members_corrected': members})
    zero = {row['key']: row for row in corrected if row['temperature'] == 0}
    for row in corrected:
        reference = zero.get(row['key'])
        if reference is None:  # no 0 K row: keep the thermal stage's Eg(0), uncorrected
            eg0, eg0_stderr = float(row['eg0']), 0.0
        else:
            eg0, eg0_stderr = reference['gap'], reference['stderr']
        row['eg0'], row['eg0_stderr'] = eg0, eg0_stderr
        row['delta_gap'] = row['gap'] - eg0
        row['delta_gap_stderr'] = 0.0 if row['temperature'] == 0 else math.hypot(row['stderr'], eg0_stderr)
        row['relative_change'] = row['delta_gap'] / eg0 if eg0 else None
    return corrected


def _member_estimates(gaps: Sequence[float] | None, biases: Sequence[float] | None,
                      validated: bool) -> list[float] | None:
    """Every model's estimate of a gap: its average plus its bias where the row is validated, its average where
    it is not; None without an ensemble (or, validated, without every model's bias)."""
    if gaps is None or len(gaps) < 2:
        return None
    if not validated:
        return [float(g) for g in gaps]
    if biases is None or len(biases) != len(gaps):
        return None
    return [float(g) + float(b) for g, b in zip(gaps, biases)]


def engine_weights(weights: dict[str, float], energy_bias: dict[str, float], temperature: float) -> dict:
    """The weights of :func:`ensemble_rows` recomputed with the engine's relative energies: ``w'_i ∝ w_i
    exp(-(D_i - min D) / k_B T)`` for ``weights`` ``{structure key: w_i}`` (normalised here), ``energy_bias``
    ``{structure key: D_i}`` (engine minus potential energy of the configuration's cell, eV) and the weights'
    ``temperature`` (K). Raises ValueError for a configuration without a finite D_i or a temperature <= 0."""
    from aiida_capthermo.core.constants import KB_EV

    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f'the weights\' temperature must be a finite number > 0 K, got {temperature}')
    missing = sorted(key for key in weights if not math.isfinite(energy_bias.get(key, math.nan)))
    if missing:
        raise ValueError(f'no engine energy for the configurations {missing}')
    lowest = min(energy_bias[key] for key in weights)
    total = float(sum(weights.values()))
    raw = {key: w / total * math.exp(-(energy_bias[key] - lowest) / (KB_EV * temperature))
           for key, w in weights.items()}
    norm = sum(raw.values())
    return {key: value / norm for key, value in raw.items()}


def ensemble_rows(rows: Sequence[dict], ensemble: dict[str, dict[str, float]],
                  engine: dict[str, dict[str, float]] | None = None) -> list[dict]:
    """The rows of :func:`budget_rows` with the configurations of each composition replaced by their weighted
    average, per T.

    Parameters
    ----------
    rows
        :func:`budget_rows` output, one row per structure (``key``) and T.
    ensemble
        ``{composition key: {structure key: weight}}``: the configurations of each composition and their weights
        (>= 0, normalised here). Rows of structures in no composition pass unchanged.
    engine
        ``{composition key: {structure key: weight}}``: the weights the engine's energies give
        (:func:`engine_weights`; the same weights where they do not depend on energies, as the random alloy's).
        A composition in it gets the weights' error ``stderr_weights``, the change of its average with these
        weights (normalised here as ``ensemble``'s); for the others that term is None.

    Returns
    -------
    list of dict
        Per composition and T where every configuration has a row (else none: no number rather than a partial
        average): ``key`` (the composition's), ``x``, ``temperature``; ``gap``, ``gap_model``, ``bias``,
        ``teacher_gap``, ``eg0`` and ``delta_gap`` weighted averages (eV); ``stderr_statistical``,
        ``stderr_model``, ``eg0_stderr`` in quadrature with the squared weights, ``stderr_sampling`` and
        ``sampling_shift`` summed with the weights, ``stderr_members`` the spread of the GNN models' weighted
        averages (``gap_members_corrected``; None with one model), ``stderr`` their quadrature sum,
        ``delta_gap_stderr``;
        ``configuration_spread`` (eV); ``validated``, ``sampling_perturbative`` (every configuration's);
        ``n_validation``, ``n_frames``, ``n_independent``, ``n_outside_domain``, ``n_drifting`` (summed);
        ``relative_change``;
        ``stderr_weights`` (eV, in ``stderr``; None where not estimated); ``configurations`` (``key``,
        ``weight``, ``gap`` of each, and ``weight_engine`` where the weights' error is estimated).
    """
    member_of = {}
    for composition, members in ensemble.items():
        total = float(sum(members.values()))
        if not members or total <= 0 or any(w < 0 or not math.isfinite(w) for w in members.values()):
            raise ValueError(f'{composition}: the weights {members} must be >= 0 with a positive sum')
        for key, weight in members.items():
            if key in member_of:
                raise ValueError(f'structure {key} is a configuration of {member_of[key][0]} and of {composition}')
            member_of[key] = (composition, weight / total)
    passed, grouped = [], {}
    for row in rows:
        if row['key'] in member_of:
            composition, _ = member_of[row['key']]
            grouped.setdefault((composition, round(float(row['temperature']), 6)), {})[row['key']] = row
        else:
            passed.append(row)

    def weighted(members, name):
        values = [(w, m.get(name)) for w, m in members]
        return None if any(v is None for _, v in values) else sum(w * v for w, v in values)

    def quadrature(members, name):
        values = [(w, m.get(name)) for w, m in members]
        return None if any(v is None for _, v in values) else math.sqrt(sum((w * v) ** 2 for w, v in values))

    def total(members, name):
        values = [m.get(name) for _, m in members]
        return None if any(v is None for v in values) else sum(values)

    reweighted = {}  # composition: the engine's weights, normalised as the ensemble's
    for composition, members in (engine or {}).items():
        if set(members) != set(ensemble.get(composition, {})):
            raise ValueError(f'{composition}: the engine\'s weights are of {sorted(members)}, the ensemble\'s of '
                             f'{sorted(ensemble.get(composition, {}))}')
        norm = float(sum(members.values()))
        reweighted[composition] = {key: w / norm for key, w in members.items()}

    combined = []
    for (composition, temperature), found in sorted(grouped.items()):
        weights = ensemble[composition]
        if set(found) != set(weights):
            continue  # a configuration without a row at this T (its replicas all broke)
        members = [(member_of[key][1], found[key]) for key in sorted(weights)]
        xs = {round(float(m['x']), 6) for _, m in members}
        if len(xs) > 1:
            raise ValueError(f'{composition}: configurations of different compositions {sorted(xs)}')
        gap = weighted(members, 'gap')
        statistical, model = quadrature(members, 'stderr_statistical'), quadrature(members, 'stderr_model')
        sampling = weighted(members, 'stderr_sampling')
        eg0, eg0_stderr = weighted(members, 'eg0'), quadrature(members, 'eg0_stderr') or 0.0
        per_model = [m.get('gap_members_corrected') for _, m in members]
        models = None
        if all(v is not None for v in per_model) and len({len(v) for v in per_model}) == 1:
            models = [sum(w * v[j] for (w, _), v in zip(members, per_model)) for j in range(len(per_model[0]))]
        spread = member_spread(models)
        core = math.sqrt(sum(v**2 for v in (statistical, model, sampling, spread) if v is not None))
        shift = reweighted.get(composition)
        if shift is not None:  # the weights' error of Eg(T), and of ΔEg
            moved = [(shift[m['key']] - w, m) for w, m in members]
            weights_error = abs(sum(dw * m['gap'] for dw, m in moved))
            delta_weights_error = None if eg0 is None else abs(sum(dw * (m['gap'] - m['eg0']) for dw, m in moved))
        else:
            weights_error = delta_weights_error = None
        stderr = math.hypot(core, weights_error or 0.0)
        perturbative = [m.get('sampling_perturbative') for _, m in members]
        combined.append({
            'key': composition, 'x': float(members[0][1]['x']), 'temperature': temperature, 'gap': gap,
            'gap_model': weighted(members, 'gap_model'), 'bias': weighted(members, 'bias'),
            'teacher_gap': weighted(members, 'teacher_gap'), 'stderr_statistical': statistical,
            'stderr_model': model, 'stderr_sampling': sampling, 'sampling_shift': weighted(members, 'sampling_shift'),
            'sampling_perturbative': None if None in perturbative else all(perturbative),
            'stderr_members': spread, 'gap_members_corrected': models, 'stderr': stderr,
            'validated': all(m.get('validated') for _, m in members),
            'estimator': members[0][1].get('estimator'), 'n_validation': total(members, 'n_validation'),
            'n_frames': total(members, 'n_frames'), 'n_independent': total(members, 'n_independent'),
            'n_outside_domain': total(members, 'n_outside_domain'), 'n_drifting': total(members, 'n_drifting'),
            'eg0': eg0, 'eg0_stderr': eg0_stderr,
            'delta_gap': gap - eg0,
            'delta_gap_stderr': 0.0 if temperature == 0 else math.sqrt(
                core**2 + eg0_stderr**2 + (delta_weights_error or 0.0) ** 2),
            'relative_change': (gap - eg0) / eg0 if eg0 else None,
            'configuration_spread': math.sqrt(sum(w * (m['gap'] - gap) ** 2 for w, m in members)),
            'stderr_weights': weights_error,
            'configurations': [{'key': m['key'], 'weight': w, 'gap': m['gap'],
                                **({'weight_engine': shift[m['key']]} if shift is not None else {})}
                               for w, m in members]})
    return passed + combined
