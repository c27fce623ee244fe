"""Thermal band gaps: statistics of correlated series, frozen-mode amplitudes, the batched TorchSim MD engine against
the analytic answer of a harmonic crystal, and ThermalGapWorkChain run for real on localhost."""

from __future__ import annotations

import numpy as np
import pytest
from ase.neighborlist import neighbor_list

from aiida_capthermo.core.displacements import SupercellModes
from aiida_capthermo.core.structures import antiperovskite
from aiida_capthermo.core.thermal import (combine_replicas, frozen_mode_displacements, series_statistics,
                                          species_participation)

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
    # the atom moves by Q / sqrt(m): x_rms = sqrt(hbar (1 + 2n) / (2 m omega)) = 0.1215 Å here (hbar omega / kT = 0.320, n = 2.65)
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


def test_combine_replicas_takes_larger_error():
    from aiida_capthermo.core.thermal import SeriesStatistics

    a = SeriesStatistics(mean=1.0, stderr=0.01, std=0.1, start=0, n_samples=100, inefficiency=1.0, n_independent=100)
    b = SeriesStatistics(mean=1.2, stderr=0.01, std=0.1, start=0, n_samples=100, inefficiency=1.0, n_independent=100)
    combined = combine_replicas([a, b])
    assert combined['mean'] == pytest.approx(1.1)
    assert combined['stderr_seeds'] == pytest.approx(0.1)  # std of (1.0, 1.2) / sqrt(2)
    assert combined['stderr'] == combined['stderr_seeds'] > combined['stderr_decorrelated']


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
    assert np.std(means, ddof=1) / errors.mean() == pytest.approx(1.0, abs=0.4)


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
    assert trajectories[1].steps_done == 10
    for good in (trajectories[0], trajectories[2]):
        assert good.broke is None and good.steps_done == 200 and len(good.time_fs) == 20
        assert np.all(np.isfinite(good.positions))
