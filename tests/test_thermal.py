"""Thermal band gaps: statistics of correlated series, frozen-mode amplitudes, the package's batched TorchSim MD engine
(``ml.thermal``) against the analytic answer of a harmonic crystal, and ThermalGapWorkChain run for real on
localhost. The stability verdicts and the collapse checks of the same engine are in test_md.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from aiida_capthermo.core.displacements import SupercellModes
from aiida_capthermo.core.structures import antiperovskite
from aiida_capthermo.core.thermal import (
    combine_replicas,
    frozen_mode_displacements,
    series_statistics,
    species_participation,
)

KB_EV = 8.617333262e-5  # eV/K


def spring_crystal(k: float = 1.0, cutoff: float = 3.6):
    """10-atom Ag3SI cell (2x1x1, a = 4.9 Å) with central springs of ``k`` eV/Å² to every neighbour within
    ``cutoff`` (minimum image): a translation-invariant harmonic crystal. Returns atoms and Phi [3N, 3N]."""
    atoms = antiperovskite('Ag', 'S', 'I', 4.9).repeat((2, 1, 1))
    n = len(atoms)
    first, second, vectors = neighbor_list('ijD', atoms, cutoff)
    phi = np.zeros((n, n, 3, 3))
    for i, j, d in zip(first, second, vectors):
        block = k * np.outer(d, d) / np.dot(d, d)
        phi[i, j] -= block
        phi[i, i] += block
    phi = phi.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    return atoms, 0.5 * (phi + phi.T)


def test_mode_amplitude_by_hand_in_si_units():
    """A single mode of f = 2 THz on one Ag atom: Q = sqrt(hbar (1 + 2n) / (2 omega)), by hand in SI."""
    hbar, kb, amu = 1.054571817e-34, 1.380649e-23, 1.66053906660e-27
    mass, frequency, temperature = 107.8682, 2.0, 300.0
    # one atom in a harmonic well along x only: Phi = m omega^2 (J/m^2 -> eV/Å^2)
    omega = 2 * np.pi * frequency * 1e12
    stiffness = mass * amu * omega**2 / 1.602176634e-19 * 1e-20  # eV/Å^2
    fc = np.zeros((1, 1, 3, 3))
    fc[0, 0] = np.diag([stiffness, 1e6 * stiffness, 1e6 * stiffness])  # y, z far above: x is the soft mode
    modes = SupercellModes.from_force_constants(fc, [mass], [47], skip_translations=False)
    indices, amplitudes, displacements = frozen_mode_displacements(modes, temperature)
    soft = int(np.argmin(modes.frequencies[indices]))
    assert modes.frequencies[indices][soft] == pytest.approx(frequency, rel=1e-9)
    n = 1.0 / np.expm1(hbar * omega / (kb * temperature))
    q_si = np.sqrt(hbar * (1 + 2 * n) / (2 * omega))  # kg^1/2 m
    assert amplitudes[soft] == pytest.approx(q_si / np.sqrt(amu) / 1e-10, rel=1e-9)  # amu^1/2 Å
    # the atom moves by Q / sqrt(m): x_rms = sqrt(hbar (1 + 2n) / (2 m omega)) = 0.1215 Å here
    # (hbar omega / kT = 0.320, n = 2.65)
    x_si = np.sqrt(hbar * (1 + 2 * n) / (2 * mass * amu * omega))
    assert np.abs(displacements[soft, 0, 0]) == pytest.approx(x_si / 1e-10, rel=1e-9)
    assert np.abs(displacements[soft, 0, 0]) == pytest.approx(0.1215, abs=5e-4)
    assert np.allclose(displacements[soft, 0, 1:], 0.0)
    # zero-point limit: 1 + 2n -> 1
    _, zero, _ = frozen_mode_displacements(modes, 0.0)
    assert zero[soft] == pytest.approx(np.sqrt(hbar / (2 * omega)) / np.sqrt(amu) / 1e-10, rel=1e-9)


def test_species_participation_sums_to_one():
    atoms, phi = spring_crystal()
    modes = SupercellModes.from_force_constants(phi.reshape(10, 3, 10, 3).transpose(0, 2, 1, 3),
                                                atoms.get_masses(), atoms.numbers)
    shares = species_participation(modes, atoms.get_chemical_symbols())
    assert set(shares) == {'Ag', 'S', 'I'}
    np.testing.assert_allclose(sum(shares.values()), 1.0, atol=1e-12)


def test_series_statistics_ar1_known_inefficiency():
    """AR(1) series x_t = phi x_{t-1} + noise: g = (1 + phi) / (1 - phi); a transient at the start is discarded."""
    rng = np.random.default_rng(4)
    phi, n = 0.9, 40000
    noise = rng.normal(size=n)
    series = np.empty(n)
    series[0] = 0.0
    for t in range(1, n):
        series[t] = phi * series[t - 1] + noise[t]
    series += 1.5
    series[:300] += np.linspace(20.0, 0.0, 300)  # equilibration transient
    stats = series_statistics(series)
    assert 250 <= stats.start <= 2000
    assert stats.inefficiency == pytest.approx((1 + phi) / (1 - phi), rel=0.25)
    assert abs(stats.mean - 1.5) < 4 * stats.stderr
    assert stats.n_independent == pytest.approx(stats.n_samples / stats.inefficiency)
    with pytest.raises(ValueError, match='NaN'):
        series_statistics([1.0, np.nan, 2.0, 3.0])


def test_equilibration_start_from_the_energy_and_drift():
    """A replica relaxing from its start (energy 3 eV above equilibrium, decaying over 40 frames) whose gap carries
    the same relaxation hidden in its noise: the energy's equilibration comes later than the gap's, and the average
    from it is the equilibrium value within its error in every seed. An energy still decaying at half the run is
    flagged as drifting and its start is capped there; a stationary series is not."""
    from aiida_capthermo.core.thermal import equilibration_start

    n, t = 400, np.arange(400)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        gaps = 1.0 + 0.06 * np.exp(-t / 40) + rng.normal(0.0, 0.05, n)
        energy = -100.0 + 3.0 * np.exp(-t / 40) + rng.normal(0.0, 0.2, n)
        (start_gap, _), (start_energy, drifting) = equilibration_start(gaps), equilibration_start(energy)
        assert start_energy > start_gap and start_energy >= 100 and not drifting  # 3 e^{-t/40} < 0.2 from t = 108
        stats = series_statistics(gaps, start=start_energy)
        assert abs(stats.mean - 1.0) < 3 * stats.stderr
        slow = -100.0 + 3.0 * np.exp(-t / 300) + rng.normal(0.0, 0.2, n)
        assert equilibration_start(slow) == (200, True)
        assert not equilibration_start(rng.normal(0.0, 0.2, n))[1]
    with pytest.raises(ValueError, match='4 finite'):
        equilibration_start([1.0, np.nan, 2.0, 3.0])


def _ar1(rng, n: int, tau: float, sigma: float) -> np.ndarray:
    """A stationary AR(1) series of ``n`` samples: correlation time ``tau`` samples, standard deviation ``sigma``."""
    phi, values = np.exp(-1.0 / tau), np.empty(n)
    values[0] = rng.normal(0.0, sigma)
    for i in range(1, n):
        values[i] = phi * values[i - 1] + rng.normal(0.0, sigma * np.sqrt(1 - phi**2))
    return values


def test_drift_is_a_trend_not_a_late_start():
    """Stationary series with correlation times of 1, 5 and 10 samples (200 samples, like the MD's 200 frames; the
    `mid` run's energies have statistical inefficiencies of 5-24 frames): pymbar's detection often lands beyond half
    such a series by chance, the trend test of what is kept rarely calls it a drift (1, 4 and 15 of 200 series; the
    late start alone: 2, 27 and 65). An energy still relaxing through the kept part (3 eV decaying over 150 samples,
    under correlated noise) is called drifting in every seed, with its change by the trend within 0.25 eV of the
    exact one."""
    from aiida_capthermo.core.thermal import _timeseries, equilibration_start, trend

    counts, late = {}, {}
    for tau in (1, 5, 10):
        counts[tau] = late[tau] = 0
        for seed in range(200):
            values = -100.0 + _ar1(np.random.default_rng(seed), 200, tau, 0.3)
            counts[tau] += equilibration_start(values)[1]
            late[tau] += int(_timeseries().detect_equilibration(values, fast=True, nskip=1)[0]) > 100
    assert counts == {1: 1, 5: 4, 10: 15} and late == {1: 2, 5: 27, 10: 65}, (counts, late)
    t = np.arange(200)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        relaxing = -100.0 + 3.0 * np.exp(-t / 150) + _ar1(rng, 200, 5, 0.2)
        start, drifting = equilibration_start(relaxing)
        exact = 3.0 * (np.exp(-199 / 150) - np.exp(-start / 150))
        change, z = trend(relaxing[start:])
        assert drifting and z < -3 and abs(change - exact) < 0.25, (seed, start, change, exact)
    with pytest.raises(ValueError, match='at least 4'):
        trend([1.0, 2.0, 3.0])


def test_combine_replicas_takes_larger_error():
    from aiida_capthermo.core.thermal import SeriesStatistics

    a = SeriesStatistics(mean=1.0, stderr=0.01, std=0.1, start=0, n_samples=100, inefficiency=1.0, n_independent=100)
    b = SeriesStatistics(mean=1.2, stderr=0.01, std=0.1, start=0, n_samples=100, inefficiency=1.0, n_independent=100)
    combined = combine_replicas([a, b])
    assert combined['mean'] == pytest.approx(1.1)
    assert combined['stderr_seeds'] == pytest.approx(0.1)  # std of (1.0, 1.2) / sqrt(2)
    assert combined['stderr'] == combined['stderr_seeds'] > combined['stderr_decorrelated']


def test_thermal_gaps_count_the_frames_outside_the_gnn_domain(aiida_profile):
    """Every Table I row counts the production frames it averages and those of them the GNN prediction job flagged
    outside its training domain (counted here over each replica's frame range from its own equilibration start, a
    broken replica excluded); the flags change no number. The text table marks the row and the CSV carries both
    counts. Without flags (a prediction node from before the domain) the count is 0."""
    from aiida import orm

    from aiida_capthermo.core.error_budget import budget_rows
    from aiida_capthermo.core.thermal import series_statistics
    from aiida_capthermo.workflows.report import table_csv, table_rows, table_text
    from aiida_capthermo.workflows.thermal import thermal_gaps

    def replica(index, temperature, offset, n_frames, broke=False):
        return {'replica': index, 'key': 'x000', 'x': 0.0, 'temperature': temperature, 'seed': index,
                'timestep': 2.0, 'broke': broke, 'frame_offset': offset, 'n_frames': n_frames}

    ranges = {300.0: [(0, 50), (50, 90)], 600.0: [(90, 150)]}
    results = orm.Dict({'replicas': [replica(0, 300.0, 0, 50), replica(1, 300.0, 50, 40),
                                     replica(2, 600.0, 90, 0, broke=True), replica(3, 600.0, 90, 60)]})
    gaps = np.random.default_rng(0).normal(1.0, 0.05, 150)
    gaps[:5] += 0.3  # an equilibration the statistics discard
    outside = np.zeros(150, dtype=bool)
    outside[[1, 3, 45, 55, 56, 120, 149]] = True
    expected = {0.0: (0, 0)}
    for temperature, spans in ranges.items():
        starts = [start + series_statistics(gaps[start:stop]).start for start, stop in spans]
        expected[temperature] = (sum(stop - first for first, (_, stop) in zip(starts, spans)),
                                 sum(int(outside[first:stop].sum()) for first, (_, stop) in zip(starts, spans)))
    assert series_statistics(gaps[0:50]).start > 3  # so the flags at frames 1 and 3 are not averaged
    predictions = orm.ArrayData({'values': gaps, 'outside_domain': outside})
    settings = orm.Dict({'keys': ['x000'], 'temperatures': [0.0, 300.0, 600.0], 'x': {'x000': 0.0}})
    eg0 = orm.ArrayData({'values': np.array([1.2])})
    rows = thermal_gaps(settings, eg0, results_0=results, gaps_0=predictions)['table']['rows']
    counts = {row['temperature']: (row['n_frames'], row['n_outside_domain']) for row in rows}
    assert counts == expected and expected[300.0][1] == 3 and expected[600.0][1] == 2
    table = table_rows(budget_rows(rows, None))
    text = table_text(table)
    assert '†' in text
    assert f'x = 0.000, 300 K: 3 of {expected[300.0][0]}; x = 0.000, 600 K: 2 of {expected[600.0][0]}' in text
    independent = {row['temperature']: row['n_independent'] for row in rows}
    header, *lines = table_csv(table).splitlines()
    columns = [header.split(',').index(name) for name in ('n_frames', 'n_outside_domain', 'n_independent')]
    assert [[line.split(',')[i] for i in columns] for line in lines] == [
        ['0', '0', ''],
        [str(expected[300.0][0]), '3', f'{independent[300.0]:.6f}'],
        [str(expected[600.0][0]), '2', f'{independent[600.0]:.6f}']]
    # the sample sizes behind each average, and Eg(0) of the relaxed cell without a made-up error bar
    assert (f'x = 0.000, 300 K: {expected[300.0][0]} / {independent[300.0]:.0f} / 0; x = 0.000, 600 K: '
            f'{expected[600.0][0]} / {independent[600.0]:.0f} / 0.') in text
    assert text.splitlines()[2].split()[1:3] == ['1.200', '(static)*'] and '± 0.000' not in text
    unflagged = thermal_gaps(settings, eg0, results_0=results, gaps_0=orm.ArrayData({'values': gaps}))
    assert [row['n_outside_domain'] for row in unflagged['table']['rows']] == [0, 0, 0]
    assert [row['gap'] for row in unflagged['table']['rows']] == [row['gap'] for row in rows]
    assert '†' not in table_text(table_rows(budget_rows(unflagged['table']['rows'], None)))


def test_thermal_gaps_start_where_the_potential_energy_settles(aiida_profile):
    """With the MD job's series, each replica's average starts at the later of the equilibration of its gap and
    of its potential energy: a replica relaxing out of its starting basin (energy decaying over 30 frames) is
    averaged from where its energy settles, and one still relaxing at half the run is counted in the row's
    ``n_drifting``, marked ``§`` in the text and counted in the CSV. Without the series, the gap alone decides."""
    from aiida import orm

    from aiida_capthermo.core.error_budget import budget_rows
    from aiida_capthermo.core.thermal import equilibration_start, series_statistics
    from aiida_capthermo.workflows.report import table_csv, table_rows, table_text
    from aiida_capthermo.workflows.thermal import thermal_gaps

    rng = np.random.default_rng(2)
    t = np.arange(200)
    gaps = np.concatenate([1.0 + 0.05 * np.exp(-t / 30), 0.9 + 0.05 * np.exp(-t / 30)]) + rng.normal(0, 0.03, 400)
    settling = -100.0 + 3.0 * np.exp(-t / 30) + rng.normal(0, 0.2, 200)
    drifting = -100.0 + 3.0 * np.exp(-t / 400) + rng.normal(0, 0.2, 200)
    results = orm.Dict({'replicas': [
        {'replica': r, 'key': 'x000', 'x': 0.0, 'temperature': 300.0, 'seed': r, 'timestep': 2.0, 'broke': False,
         'frame_offset': 200 * r, 'n_frames': 200} for r in (0, 1)]})
    series = orm.ArrayData({'potential_energy_0': settling, 'potential_energy_1': drifting})
    settings = orm.Dict({'keys': ['x000'], 'temperatures': [0.0, 300.0], 'x': {'x000': 0.0}})
    eg0 = orm.ArrayData({'values': np.array([1.2])})
    outputs = thermal_gaps(settings, eg0, results_0=results, gaps_0=orm.ArrayData({'values': gaps}), series_0=series)
    first, second = outputs['replicas']['replicas']
    assert first['start_energy'] == equilibration_start(settling)[0] > first['start_gap'] and not first['drifting']
    assert first['start'] == first['start_energy']
    assert first['mean'] == pytest.approx(gaps[first['start']:200].mean())
    assert second['drifting'] and second['start'] == 100  # capped at half the run
    row = outputs['table']['rows'][1]
    assert row['n_drifting'] == 1 and row['n_frames'] == 400 - first['start'] - 100
    table = table_rows(budget_rows(outputs['table']['rows'], None))
    text = table_text(table)
    assert '§' in text and 'x = 0.000, 300 K: 1.' in text.split('§ replicas')[1]
    header, *lines = table_csv(table).splitlines()
    assert [line.split(',')[header.split(',').index('n_drifting')] for line in lines] == ['0', '1']
    alone = thermal_gaps(settings, eg0, results_0=results, gaps_0=orm.ArrayData({'values': gaps}))
    assert [r['start'] for r in alone['replicas']['replicas']] == [
        series_statistics(gaps[:200]).start, series_statistics(gaps[200:]).start]
    assert alone['table']['rows'][1]['n_drifting'] == 0 and '§' not in table_text(
        table_rows(budget_rows(alone['table']['rows'], None)))


def test_thermal_gaps_of_an_ensemble_of_gnns(aiida_profile):
    """With every model's gaps (predictions ``members``), each row holds every model's average over the same
    production frames, weighted over the replicas as the mean is: their mean is the row's gap (the ensemble's
    mean prediction), and a model shifted by a constant has an average shifted by it."""
    from aiida import orm

    from aiida_capthermo.workflows.thermal import thermal_gaps

    rng = np.random.default_rng(1)
    replicas = [{'replica': k, 'key': 'x000', 'x': 0.0, 'temperature': 300.0, 'seed': k, 'timestep': 2.0,
                 'broke': False, 'frame_offset': 60 * k, 'n_frames': 60} for k in range(2)]
    members = np.stack([rng.normal(1.0, 0.05, 120) + shift for shift in (-0.1, 0.0, 0.1)])
    members[:, :4] += 0.3  # an equilibration the statistics discard
    predictions = orm.ArrayData({'values': members.mean(axis=0), 'members': members})
    settings = orm.Dict({'keys': ['x000'], 'temperatures': [0.0, 300.0], 'x': {'x000': 0.0}})
    eg0 = orm.ArrayData({'values': np.array([1.2]), 'members': np.array([[1.1], [1.2], [1.3]])})
    zero, warm = thermal_gaps(settings, eg0, results_0=orm.Dict({'replicas': replicas}),
                              gaps_0=predictions)['table']['rows']
    assert zero['gap_members'] == pytest.approx([1.1, 1.2, 1.3]) and warm['eg0_members'] == zero['gap_members']
    assert np.mean(warm['gap_members']) == pytest.approx(warm['gap'], abs=1e-12)
    assert np.diff(warm['gap_members']) == pytest.approx([0.1, 0.1], abs=0.02)
    single = thermal_gaps(settings, orm.ArrayData({'values': np.array([1.2])}),
                          results_0=orm.Dict({'replicas': replicas}),
                          gaps_0=orm.ArrayData({'values': members.mean(axis=0)}))['table']['rows']
    assert 'gap_members' not in single[1] and single[1]['gap'] == warm['gap']


def test_batched_md_harmonic_crystal_known_answer():
    """Batched Langevin MD of a harmonic crystal in the same TorchSim engine as MACE, with the 'gap' replaced by the
    mean square displacement: the thermal average must equal the classical analytic value kT sum_nu |e_nu|^2 /
    (m omega_nu^2) / N (translations excluded: the centre of mass is fixed), within its error bar, and the error bars
    of independent seeds must cover it about as often as they claim (68 %)."""
    import torch

    from aiida_capthermo.ml.thermal import HarmonicModel, run_replicas

    torch.set_num_threads(1)
    atoms, phi = spring_crystal()
    n = len(atoms)
    masses = np.repeat(atoms.get_masses(), 3)
    eigenvalues, vectors = np.linalg.eigh(phi / np.sqrt(masses)[:, None] / np.sqrt(masses)[None, :])
    assert np.sum(np.abs(eigenvalues) < 1e-8) == 3  # three translations, everything else stable
    temperature = 300.0
    modes = eigenvalues > 1e-8
    exact = KB_EV * temperature * np.sum(vectors[:, modes] ** 2 / eigenvalues[modes] / masses[:, None]) / n  # Å²

    replicas = 24
    trajectories = run_replicas(HarmonicModel(atoms.positions, phi), [atoms] * replicas, [temperature] * replicas,
                                list(range(replicas)), steps=16000, timestep=2.0, friction=0.01, stride=10,
                                batch_seed=1)
    stats = []
    cell = atoms.cell.array
    for trajectory in trajectories:
        assert trajectory.broke is None and len(trajectory.time_fs) == 1600
        delta = trajectory.positions - atoms.positions[None]
        fractional = delta @ np.linalg.inv(cell)
        delta = (fractional - np.round(fractional)) @ cell
        stats.append(series_statistics((delta**2).sum(axis=(1, 2)) / n))
    temperatures = np.array([t.temperature[len(t.temperature) // 5:].mean() for t in trajectories])
    assert temperatures.mean() == pytest.approx(temperature, rel=0.02)  # 3N - 3 degrees of freedom
    means = np.array([s.mean for s in stats])
    errors = np.array([s.stderr for s in stats])
    coverage = np.mean(np.abs(means - exact) <= errors)
    assert 0.45 <= coverage <= 0.92, (coverage, means, errors, exact)
    combined = combine_replicas(stats)
    assert abs(combined['mean'] - exact) < 3 * combined['stderr'], (combined, exact)
    # the decorrelated error bar of one replica agrees with the spread over seeds
    spread = np.std(means, ddof=1) / errors.mean()
    assert spread == pytest.approx(1.0, abs=0.4)
    # the figures docs/thermal.md quotes (seeded: `pytest -s -k known_answer` prints the same ones every run)
    print(f"\nknown answer: <u^2> {combined['mean']:.5f} +- {combined['stderr']:.5f} A^2, exact {exact:.5f} "
          f"({abs(combined['mean'] - exact) / combined['stderr']:.2f} sigma); {int(round(coverage * replicas))} of "
          f"{replicas} error bars cover it; spread/error {spread:.2f}; kinetic T {temperatures.mean():.1f} K")


def test_batched_md_broken_replica_does_not_sink_the_others():
    import torch

    from aiida_capthermo.ml.thermal import HarmonicModel, run_replicas

    torch.set_num_threads(1)
    atoms, phi = spring_crystal()
    squeezed = atoms.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.4, 0.0, 0.0]
    trajectories = run_replicas(HarmonicModel(atoms.positions, phi), [atoms, squeezed, atoms], [300.0] * 3,
                                [0, 1, 2], steps=200, timestep=1.0, friction=0.01, stride=10)
    assert trajectories[1].broke is not None and 'apart' in trajectories[1].broke
    assert trajectories[1].steps_done == 10 and trajectories[1].min_distance[-1] < 1.0
    assert trajectories[1].closest_pair[-1] == 'I-S' and not trajectories[1].verdict()['stable']
    for good in (trajectories[0], trajectories[2]):
        assert good.broke is None and good.steps_done == 200 and len(good.time_fs) == 20
        assert np.all(np.isfinite(good.positions))


# ---------------------------------------------------------------------------------------------- the workchain
@pytest.fixture(scope='module')
def trained_models(aiida_profile, tmp_path_factory):
    """A band-gap GNN (GnnTrainCalcJob) and a MACE potential (FinetuneMaceCalcJob, trained from scratch on LJ
    labels of rattled 10-atom Ag3S(I,Br) cells), both with their datasets in the provenance graph."""
    import os
    import sys

    from aiida import engine, orm

    from aiida_capthermo.calculations.gnn import GnnTrainCalcJob
    from aiida_capthermo.calculations.mace import FinetuneMaceCalcJob
    from aiida_capthermo.data.dataset import DatasetData

    from gnn_helpers import synthetic_set
    from mlip_helpers import lj_labelled_cells

    bin_dir = os.path.dirname(sys.executable)
    from aiida.common.exceptions import NotExistent

    try:  # another module (test_faults) uses this fixture too
        computer = orm.load_computer('localhost-thermal')
    except NotExistent:
        computer = orm.Computer(label='localhost-thermal', hostname='localhost', transport_type='core.local',
                                scheduler_type='core.direct', workdir=str(tmp_path_factory.mktemp('thermal'))).store()
        computer.configure(safe_interval=0.0, use_login_shell=False)  # see conftest's aiida_localhost
        computer.set_minimum_job_poll_interval(0.0)
    codes = {name: orm.InstalledCode(computer=computer, filepath_executable=os.path.join(bin_dir, executable),
                                     label=name, prepend_text='export OMP_NUM_THREADS=1').store()
             for name, executable in (('gnn_code', 'capthermo-gnn'), ('mace_code', 'mace_run_train'),
                                      ('mlip_code', 'capthermo-mlip'))}
    gnn_data = DatasetData.from_labelled_set(synthetic_set(60, seed=0), fidelity='low', method='synthetic').store()
    gnn, _ = engine.run_get_node(GnnTrainCalcJob, code=codes['gnn_code'], datasets={'low': gnn_data},
                                 hyperparameters=orm.Dict({'max_epochs': 15, 'hidden_channels': 16, 'batch_size': 8,
                                                           'learning_rate': 5e-3, 'dropout': 0.0, 'patience': None}))
    mace_data = DatasetData.from_labelled_set(lj_labelled_cells(16, rattle=0.1), method='LJ').store()
    mace, _ = engine.run_get_node(FinetuneMaceCalcJob, code=codes['mace_code'], train=mace_data,
                                  hyperparameters=orm.Dict(
        {'num_channels': 8, 'max_L': 0, 'r_max': 4.0, 'num_interactions': 2, 'correlation': 2, 'batch_size': 4,
         'device': 'cpu', 'default_dtype': 'float64', 'seed': 1, 'max_num_epochs': 3, 'valid_fraction': 0.2,
         'pair_repulsion': True}))
    return {'gnn': gnn['model'], 'mace': mace['model'], 'gnn_data': gnn_data, 'mace_data': mace_data, **codes}


def thermal_builder(trained_models, overrides: dict):
    """ThermalGapWorkChain builder of the demo protocol with ``overrides`` for the two unrattled 10-atom cells
    x000 (Ag3SI) and x050 (Ag3S(I,Br)) and the models of ``trained_models``."""
    from aiida import orm

    from aiida_capthermo.data.structures import set_structure_metadata
    from aiida_capthermo.workflows.thermal import ThermalGapWorkChain

    from mlip_helpers import small_cell

    structures = {}
    for key, bromide in (('x000', False), ('x050', True)):
        atoms = small_cell(bromide, seed=0, rattle=0.0)
        structures[key] = set_structure_metadata(orm.StructureData(ase=atoms), x=0.5 if bromide else 0.0)
    return ThermalGapWorkChain.get_builder_from_protocol(
        trained_models['mlip_code'], trained_models['gnn_code'], trained_models['mace'], trained_models['gnn'],
        structures, protocol='demo', overrides=overrides)


def test_thermal_gap_workchain_on_localhost(trained_models, tmp_path):
    from aiida import engine, orm

    from aiida_capthermo.workflows.thermal import ThermalGapWorkChain

    builder = thermal_builder(trained_models, {
        'md': {'steps': 800, 'stride': 5, 'threads': 1, 'dtype': 'float64'}, 'relax': {'dtype': 'float64'},
        'coupling': {'structures': ['x050'], 'temperatures': [300.0], 'threads': 1, 'dtype': 'float64'}})
    structures = dict(builder.structures)
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert set(results['gaps']) == {f'{k}_T{t}' for k in structures for t in (0, 300, 600)}
    table = results['table']['rows']
    assert len(table) == 6
    for row in table:
        gap = results['gaps'][f'{row["key"]}_T{row["temperature"]:.0f}']
        assert gap['x'] == row['x'] and gap['gap'] == pytest.approx(row['gap'])
        assert gap['delta_gap'] == pytest.approx(gap['gap'] - gap['eg0'])
        if row['temperature'] > 0:
            assert row['n_replicas'] == 2 and row['n_independent'] > 2 and row['stderr'] > 0
            # the GNN learnt gaps that fall with disorder (synthetic labels: -1.5 eV per Å of rms displacement)
            assert row['delta_gap'] < -3 * row['stderr']
    curve = results['curves']['x050']
    np.testing.assert_allclose(curve.get_x()[1], [0.0, 300.0, 600.0])

    # the replica statistics are those of the GNN gaps of its frames from the later of the equilibrations of the
    # gaps and of the potential energy (the MD job's series), recomputed here
    md = node.base.links.get_outgoing(link_label_filter='md_0').one().node
    predictions = md.outputs.frames.base.links.get_outgoing(link_label_filter='CALL%').all()  # none: data node
    assert predictions == []
    replica = md.outputs.results['replicas'][0]
    predict = next(c for c in md.outputs.frames.base.links.get_outgoing().all_nodes()
                   if c.process_label == 'GnnPredictCalcJob')
    gaps = predict.outputs.predictions.get_array('values')[replica['frame_offset']:][:replica['n_frames']]
    from aiida_capthermo.core.thermal import equilibration_start, series_statistics

    own = next(r for r in results['replicas']['replicas'] if r['replica'] == replica['replica'])
    energy = md.outputs.series.get_array(f'potential_energy_{replica["replica"]}')
    assert energy.size == gaps.size and own['start_energy'] == equilibration_start(energy)[0]
    start = max(equilibration_start(gaps)[0], equilibration_start(energy)[0])
    assert own['start'] == start and own['mean'] == pytest.approx(series_statistics(gaps, start=start).mean)
    check_trajectory_export(md, tmp_path)

    # QueryBuilder finds the gap by x and T
    qb = orm.QueryBuilder().append(orm.Dict, filters={'attributes.x': 0.5, 'attributes.temperature': 600.0},
                                   tag='gap').append(ThermalGapWorkChain, with_outgoing='gap',
                                                     filters={'id': node.pk})
    assert qb.count() == 1

    # provenance: the 600 K gap goes back to the MD, both models and their datasets
    gap = results['gaps']['x050_T600']
    ancestors = orm.QueryBuilder().append(orm.Dict, filters={'id': gap.pk}, tag='gap').append(
        orm.Node, with_descendants='gap', project='uuid').all(flat=True)
    for required in (trained_models['gnn'], trained_models['mace'], trained_models['gnn_data'],
                     trained_models['mace_data'], md, md.outputs.frames):
        assert required.uuid in ancestors, required

    # mode coupling: the table of the chosen structure, its amplitudes those of the modes job
    coupling = results['coupling']
    assert set(coupling) == {'table_x050', 'plot_x050', 'plot_x050_pdf'}
    assert coupling['plot_x050_pdf'].get_content('rb')[:5] == b'%PDF-'
    table = coupling['table_x050']
    n_imaginary = table.base.attributes.get('n_imaginary')
    assert len(table.get_array('frequency')) == 27 - n_imaginary  # 30 modes - 3 translations - imaginary (skipped)
    assert np.all(table.get_array('frequency') > 0)
    shares = sum(table.get_array(f'share_{s}') for s in ('Ag', 'S', 'I', 'Br'))
    np.testing.assert_allclose(shares, 1.0, atol=1e-8)
    assert coupling['plot_x050'].filename.endswith('.png')
    for row in table_rows(results):
        print(row)


def check_trajectory_export(md, tmp_path):
    """`capthermo export trajectory`: every finished replica of the MD job becomes a TrajectoryData with the job's
    own frames and times, `verdi data core.trajectory list` lists them, a second call makes no new nodes, and the
    extxyz files hold the same positions."""
    import ase.io
    from aiida.cmdline.commands.cmd_data.cmd_trajectory import trajectory_list
    from click.testing import CliRunner

    from aiida_capthermo.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ['export', 'trajectory', str(md.pk), '-o', str(tmp_path / 'trajectories')])
    assert result.exit_code == 0, result.output
    frames, series = md.outputs.frames.get_labelled_set(), md.outputs.series
    records = [r for r in md.outputs.results['replicas'] if not r['broke'] and r['n_frames']]
    made = next(n for n in md.outputs.frames.base.links.get_outgoing().all_nodes()
                if getattr(n, 'process_label', None) == 'md_trajectories')
    trajectories = {link.link_label: link.node for link in made.base.links.get_outgoing().all()}
    assert sorted(trajectories) == sorted(f'replica_{r["replica"]}' for r in records)
    for record in records:
        trajectory = trajectories[f'replica_{record["replica"]}']
        first, count = record['frame_offset'], record['n_frames']
        n_atoms = int(frames.n_atoms[first])
        offset = int(frames.offsets[first])
        np.testing.assert_array_equal(trajectory.get_positions(),
                                      frames.positions[offset:offset + count * n_atoms].reshape(count, n_atoms, 3))
        np.testing.assert_array_equal(trajectory.get_cells(), frames.cells[first:first + count])
        times = series.get_array(f'time_fs_{record["replica"]}')
        np.testing.assert_array_equal(trajectory.get_array('times'), times)
        np.testing.assert_array_equal(trajectory.get_stepids(), np.rint(times / record['timestep']))
        assert trajectory.base.attributes.get('temperature') == record['temperature']
        assert f'TrajectoryData<{trajectory.pk}> replica {record["replica"]}' in result.output
        written = ase.io.read(tmp_path / 'trajectories' / f'{record["key"]}_T{record["temperature"]:.0f}_r'
                              f'{record["replica"]}.extxyz', ':')
        assert len(written) == count and written[-1].info['time_fs'] == pytest.approx(times[-1])
        np.testing.assert_allclose(written[-1].positions, trajectory.get_positions()[-1], atol=1e-6)
    listed = runner.invoke(trajectory_list, ['--raw'])
    assert listed.exit_code == 0, listed.output
    assert {str(node.pk) for node in trajectories.values()} <= {line.split()[0] for line in listed.output.split('\n')
                                                                  if line.strip()}
    again = runner.invoke(cli, ['export', 'trajectory', str(md.pk)])
    assert again.exit_code == 0 and again.output.count('TrajectoryData<') == len(records)
    assert sum(getattr(n, 'process_label', None) == 'md_trajectories'
               for n in md.outputs.frames.base.links.get_outgoing().all_nodes()) == 1  # found, not made again
    wrong = runner.invoke(cli, ['export', 'trajectory', str(made.pk)])
    assert wrong.exit_code != 0 and 'is not a thermal MD job' in wrong.output, wrong.output


def table_rows(results) -> list[str]:
    return [f'{r["key"]} T={r["temperature"]:.0f} K: {r["gap"]:.4f} ± {r["stderr"]:.4f} eV (ΔEg {r["delta_gap"]:+.4f})'
            for r in results['table']['rows']]


def test_thermal_stage_twice_gives_identical_numbers(trained_models):
    """Reproducibility: the same inputs and models run twice, AiiDA caching off (every job really runs again), give
    bit-identical MD frames, GNN predictions and Table I rows (seeds of the replicas and of the Langevin noise come
    from the MD settings; the demo protocol's float32 on two threads)."""
    from aiida import engine, orm
    from aiida.common.links import LinkType
    from aiida.manage.caching import disable_caching

    def run():
        builder = thermal_builder(trained_models, {'temperatures': [0.0, 300.0],
                                                   'md': {'steps': 200, 'stride': 5, 'seed': 11}})
        del builder.coupling
        with disable_caching():
            results, node = engine.run_get_node(builder)
        assert node.is_finished_ok, (node.exit_status, node.exit_message)
        return results, node

    def jobs(node) -> dict:
        """label -> CalcJobNode of every job the workchain (and its subworkflows) called."""
        found = {}
        for link in node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all():
            if isinstance(link.node, orm.CalcJobNode):
                found[link.link_label] = link.node
            elif isinstance(link.node, orm.WorkflowNode):
                found.update({f'{link.link_label}/{k}': v for k, v in jobs(link.node).items()})
        return found

    (first, first_node), (second, second_node) = run(), run()
    first_jobs, second_jobs = jobs(first_node), jobs(second_node)
    assert set(first_jobs) == set(second_jobs) >= {'md_0', 'predict_md_0', 'predict_eg0'}
    for label, job in second_jobs.items():
        assert not job.base.caching.is_created_from_cache, label
        assert job.pk != first_jobs[label].pk and job.is_finished_ok, label

    one, two = first_jobs['md_0'].outputs.frames, second_jobs['md_0'].outputs.frames
    assert one.pk != two.pk
    one, two = one.get_labelled_set(), two.get_labelled_set()
    assert len(one) == len(two) == 2 * 2 * 40  # 2 structures x 2 replicas x 200 / 5 frames
    assert np.array_equal(one.positions, two.positions) and np.array_equal(one.cells, two.cells)
    for label in ('predict_md_0', 'predict_eg0'):
        values = [jobs_[label].outputs.predictions.get_array('values') for jobs_ in (first_jobs, second_jobs)]
        assert np.array_equal(*values), label
    assert first['table']['rows'] == second['table']['rows']  # exact float equality, row by row
    assert [row['temperature'] for row in first['table']['rows']] == [0.0, 300.0, 0.0, 300.0]
    assert first['replicas']['replicas'] == second['replicas']['replicas']


def test_thermal_relaxation_resumed_after_its_walltime(trained_models):
    """The thermal stage relaxes through MlipScreenWorkChain: a relaxation job stopped by its time limit (one
    structure per batch, no time for a second) is followed by one that relaxes the rest, and the 0 K structures and
    Eg(0) are those of an uninterrupted relaxation."""
    from aiida import engine, orm

    from aiida_capthermo.calculations.mlip import MlipScreenCalcJob
    from aiida_capthermo.data.structures import set_structure_metadata
    from aiida_capthermo.workflows.thermal import ThermalGapWorkChain

    from mlip_helpers import small_cell

    structures = {key: set_structure_metadata(orm.StructureData(ase=small_cell(bromide, seed=3, rattle=0.05)),
                                              x=0.5 if bromide else 0.0)
                  for key, bromide in (('x000', False), ('x050', True))}
    relax = {'fmax': 0.02, 'max_steps': 300, 'device': 'cpu', 'dtype': 'float64'}

    def run(extra: dict, **overrides):
        builder = ThermalGapWorkChain.get_builder_from_protocol(
            trained_models['mlip_code'], trained_models['gnn_code'], trained_models['mace'], trained_models['gnn'],
            structures, protocol='demo', overrides={'temperatures': [0.0], 'relax': {**relax, **extra}, **overrides})
        del builder.coupling
        return engine.run_get_node(builder)

    results, node = run({'max_batch': 1, 'max_seconds': 1e-6})
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    relaxation = node.base.links.get_outgoing(link_label_filter='relax').one().node
    assert relaxation.process_label == 'MlipScreenWorkChain'
    jobs = sorted((c for c in relaxation.called if isinstance(c, orm.CalcJobNode)), key=lambda c: c.ctime)
    assert [job.exit_status for job in jobs] == [MlipScreenCalcJob.exit_codes.ERROR_OUT_OF_WALLTIME.status, 0]
    assert [len(job.inputs.structures) for job in jobs] == [2, 1]
    assert set(results['relaxed']) == set(structures)
    # A stage's md_options reach its jobs as a whole (here a walltime alone: the jobs keep the default resources),
    # and the relaxation's script is told to stop itself at 80 % of that walltime.
    direct, direct_node = run({}, md_options={'max_wallclock_seconds': 3600})
    assert direct_node.is_finished_ok, (direct_node.exit_status, direct_node.exit_message)
    job = next(c for c in direct_node.called_descendants if c.process_label == 'MlipScreenCalcJob')
    assert job.get_option('max_wallclock_seconds') == 3600
    assert job.get_option('resources') == {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
    config = json.loads(job.base.repository.get_object_content(MlipScreenCalcJob._CONFIG))
    assert config['max_seconds'] == pytest.approx(0.8 * 3600)
    for key in structures:
        np.testing.assert_allclose(results['relaxed'][key].get_ase().positions,
                                   direct['relaxed'][key].get_ase().positions, atol=1e-6)
    assert [row['gap'] for row in results['table']['rows']] == pytest.approx(
        [row['gap'] for row in direct['table']['rows']], abs=1e-6)


def test_thermal_gap_workchain_reruns_broken_replicas(trained_models):
    """Replicas stopped at a closest-pair threshold the crystal crosses at 600 K: the workchain reruns them with half
    the time step, twice the steps, new seeds; when they break again it exits 450 with the rest attached."""
    from aiida import engine, orm

    from aiida_capthermo.data.structures import set_structure_metadata
    from aiida_capthermo.workflows.thermal import ThermalGapWorkChain

    from mlip_helpers import small_cell

    structure = set_structure_metadata(orm.StructureData(ase=small_cell(True, seed=0, rattle=0.0)), x=0.5)
    builder = ThermalGapWorkChain.get_builder_from_protocol(
        trained_models['mlip_code'], trained_models['gnn_code'], trained_models['mace'], trained_models['gnn'],
        {'x050': structure}, protocol='demo',
        overrides={'temperatures': [0.0, 600.0], 'max_md_restarts': 1,
                   'md': {'steps': 300, 'stride': 5, 'threads': 1, 'dtype': 'float64', 'stop_distance': 2.3}})
    del builder.coupling
    results, node = engine.run_get_node(builder)
    md = {link.link_label: link.node for link in node.base.links.get_outgoing().all()
          if link.link_label.startswith('md_')}
    assert set(md) == {'md_0', 'md_1'}
    assert md['md_0'].exit_status == 313
    first, second = md['md_0'].inputs.parameters.get_dict(), md['md_1'].inputs.parameters.get_dict()
    assert second['select'] == md['md_0'].outputs.results['broken']
    assert second['timestep'] == first.get('timestep', 1.0) / 2 and second['steps'] == 2 * first['steps']
    assert second['seed'] != first.get('seed', 0)
    if md['md_1'].is_finished_ok:
        assert node.is_finished_ok
    else:
        assert node.exit_status == node.process_class.exit_codes.ERROR_REPLICAS_LOST.status == 544
    assert 'x050_T0' in results['gaps']  # Eg(0) whatever the MD did


def test_thermal_gap_inputs_rejected_with_a_clear_message(aiida_profile, tmp_path):
    """Bad input stops at submission with a message that names what to change."""
    from aiida import orm

    from aiida_capthermo.data.model import ModelData
    from aiida_capthermo.data.structures import set_structure_metadata
    from aiida_capthermo.workflows.thermal import validate_inputs

    from mlip_helpers import small_cell

    (tmp_path / 'state.pt').write_bytes(b'0')
    gnn = ModelData.from_files(kind='gnn', files={'state.pt': tmp_path / 'state.pt'}, main_file='state.pt',
                               target='gap')
    energy_gnn = ModelData.from_files(kind='gnn', files={'state.pt': tmp_path / 'state.pt'}, main_file='state.pt',
                                      target='energy_per_atom')
    good = set_structure_metadata(orm.StructureData(ase=small_cell(False, 0)), x=0.0)
    no_x = orm.StructureData(ase=small_cell(False, 0))

    def inputs(**changes):
        base = {'structures': {'a': good}, 'temperatures': orm.List([0.0, 300.0]), 'gnn_model': gnn,
                'max_md_restarts': orm.Int(2)}
        return {**base, **changes}

    assert validate_inputs(inputs(), None) is None
    cases = [
        (inputs(structures={}), 'at least one structure'),
        (inputs(structures={'a': no_x}), "'a' has no composition x"),
        (inputs(temperatures=orm.List([-10.0, 300.0])), '>= 0 K'),
        (inputs(temperatures=orm.List([300.0, 300.0])), 'repeat'),
        (inputs(md=orm.Dict({'temperatures': [300.0]})), "must not set ['temperatures']"),
        (inputs(md=orm.Dict({'stepz': 10})), 'stepz'),
        (inputs(md=orm.Dict({'timestep': -1.0})), 'timestep'),
        (inputs(coupling=orm.Dict({'structures': ['b']})), 'coupling.structures'),
        (inputs(coupling=orm.Dict({'temperatures': [-5.0]})), '>= 0 K'),
        (inputs(gnn_model=energy_gnn), 'band-gap model'),
        (inputs(max_md_restarts=orm.Int(-1)), 'max_md_restarts'),
    ]
    for case, expected in cases:
        message = validate_inputs(case, None)
        assert message is not None and expected in message, (expected, message)
