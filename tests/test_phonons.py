"""Finite-temperature phonons by normal-mode decomposition: spectra and fits against closed forms, and MD of a
harmonic crystal (known answer: the harmonic frequencies) and of a quartic one (frequencies must rise)."""

from __future__ import annotations

import numpy as np
import pytest


def test_power_spectrum_normalisation_and_peak():
    """A sampled sine: the spectrum integrates to its mean square and peaks at its frequency."""
    from aiida_capthermo.core.normal_modes import power_spectrum

    dt = 4.0  # fs
    t = np.arange(4000) * dt
    series = np.stack([2.0 * np.sin(2 * np.pi * 1.25e-3 * t), np.random.default_rng(0).normal(size=len(t))], axis=1)
    for segments in (1, 4):
        frequencies, spectrum = power_spectrum(series, dt, segments)
        resolution = frequencies[1]
        assert resolution == pytest.approx(1 / (len(t) // segments * dt * 1e-3))
        assert frequencies[np.argmax(spectrum[:, 0])] == pytest.approx(1.25, abs=resolution)
        assert np.sum(spectrum, axis=0) * resolution == pytest.approx(np.mean(series**2, axis=0), rel=0.02)
    with pytest.raises(ValueError, match='too few frames'):
        power_spectrum(series[:10], dt, segments=4)


def test_lorentzian_fit_recovers_centre_and_width():
    from aiida_capthermo.core.normal_modes import fit_lorentzian, lorentzian

    frequencies = np.linspace(0, 10, 2001)
    spectrum = lorentzian(frequencies, 3.0, 2.7, 0.3) * np.random.default_rng(1).uniform(0.9, 1.1, 2001)
    fit = fit_lorentzian(frequencies, spectrum, window=1.5)
    assert fit.fitted
    assert fit.frequency == pytest.approx(2.7, abs=0.01) and fit.linewidth == pytest.approx(0.3, rel=0.05)
    # a stronger unrelated peak elsewhere: the guess (the harmonic frequency) picks the mode's own line
    two = spectrum + lorentzian(frequencies, 5.0, 7.0, 0.2)  # higher, but the own line is > 20 % of it
    assert fit_lorentzian(frequencies, two, window=1.0, guess=2.6).frequency == pytest.approx(2.7, abs=0.02)


def test_renormalised_force_constants_round_trip():
    from aiida_capthermo.core.displacements import SupercellModes
    from aiida_capthermo.core.normal_modes import renormalised_force_constants

    rng = np.random.default_rng(2)
    masses = rng.uniform(10, 120, 4)
    a = rng.normal(size=(12, 12))
    fc = (a @ a.T).reshape(4, 3, 4, 3).transpose(0, 2, 1, 3)
    modes = SupercellModes.from_force_constants(fc, masses, frequency_cutoff=0.0, skip_translations=False)
    rebuilt = renormalised_force_constants(masses, modes.eigenvectors, modes.frequencies)
    assert np.allclose(rebuilt, fc)
    doubled = SupercellModes.from_force_constants(
        renormalised_force_constants(masses, modes.eigenvectors, 2 * modes.frequencies), masses,
        frequency_cutoff=0.0, skip_translations=False)
    assert np.allclose(doubled.frequencies, 2 * modes.frequencies)


def _spring_crystal():
    """Ag3SI (a = 4.869 Å) in the 2x2x2 phonopy supercell with central + transverse springs to 3.6 Å."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    from aiida_capthermo.core.structures import antiperovskite

    unit = antiperovskite(a='Ag', b='S', x='I', lattice_parameter=4.869)
    supercell = Phonopy(PhonopyAtoms(symbols=unit.get_chemical_symbols(), cell=unit.cell.array,
                                     scaled_positions=unit.get_scaled_positions()),
                        supercell_matrix=np.diag([2, 2, 2]), primitive_matrix=np.eye(3)).supercell
    positions, cell, n = supercell.positions, supercell.cell, len(supercell.positions)
    phi, bonds, directions = np.zeros((3 * n, 3 * n)), [], []
    for i in range(n):
        for j in range(i + 1, n):
            fractional = np.linalg.solve(cell.T, positions[j] - positions[i])
            delta = (fractional - np.round(fractional)) @ cell
            distance = np.linalg.norm(delta)
            if distance < 3.6:
                e = delta / distance
                block = -(1.5 * np.outer(e, e) + 0.3 * (np.eye(3) - np.outer(e, e)))  # eV/Å²
                phi[3 * i:3 * i + 3, 3 * j:3 * j + 3] = phi[3 * j:3 * j + 3, 3 * i:3 * i + 3] = block
                bonds.append((i, j))
                directions.append(e)
    for i in range(n):
        phi[3 * i:3 * i + 3, 3 * i:3 * i + 3] = -sum(phi[3 * i:3 * i + 3, 3 * j:3 * j + 3] for j in range(n) if j != i)
    return unit, positions, phi, np.array(bonds), np.array(directions)


@pytest.mark.parametrize('quartic', [0.0, 20.0])
def test_md_of_harmonic_and_quartic_crystals(quartic):
    """Harmonic springs: phonopy's force constants equal the model's, and MD returns every harmonic frequency of
    the supercell within the spectral resolution. Springs stiffened by a quartic term: the frequencies rise."""
    import torch

    from aiida_capthermo.core.displacements import SupercellModes
    from aiida_capthermo.ml.mlip import batched_forces, phonopy_from_forces
    from aiida_capthermo.ml.phonons import PhononConfig, commensurate_frequencies, finite_temperature_phonons
    from aiida_capthermo.ml.thermal import HarmonicModel

    torch.set_num_threads(1)
    unit, positions, phi, bonds, directions = _spring_crystal()
    n = len(positions)
    model = HarmonicModel(positions, phi, bonds=bonds, directions=directions, quartic=quartic)
    phonon = phonopy_from_forces(unit, batched_forces(model), supercell=[2, 2, 2], displacement=0.01)
    exact = SupercellModes.from_force_constants(phi.reshape(n, 3, n, 3).transpose(0, 2, 1, 3),
                                                phonon.supercell.masses, frequency_cutoff=0.0).frequencies
    _, commensurate = commensurate_frequencies(phonon)  # Γ, X, M, R of the unit cell
    assert commensurate.shape == (8, 15)
    if not quartic:
        assert np.allclose(np.sort(commensurate.ravel()), np.sort(exact), atol=1e-5)
    settings = PhononConfig(supercell=[2, 2, 2], temperatures=[300.0], replicas=2, steps=8000, timestep=2.0,
                            sample_stride=4, equilibration_steps=1000, device='cpu')
    result = finite_temperature_phonons(model, [phonon], settings)[0]['300.0']
    assert result['broke'] is None and result['fitted'].sum() == 3 * n - 3
    optical = np.setdiff1d(np.arange(3 * n), result['acoustic'])
    shift = result['renormalised'][optical] - result['harmonic'][optical]
    assert result['equipartition'] == pytest.approx(result['mean_temperature'] / 300.0, rel=1e-6)
    # the figures docs/screen.md refers to (seeded: `pytest -s` prints the same ones every run)
    print(f'\nk4 {quartic}: optical shifts {shift.min():+.3f} to {shift.max():+.3f} THz, mean {shift.mean():+.3f}, '
          f'rms {np.sqrt(np.mean(shift ** 2)):.3f} THz (resolution {settings.resolution:.4f} THz)')
    if not quartic:
        assert np.allclose(result['harmonic'], exact, atol=1e-3)
        assert np.abs(shift).max() < settings.resolution  # 0.0625 THz
        assert result['stabilised'] and not result['unresolved']
        # the linewidth is the thermostat's friction / 2 pi (0.032 THz) within the resolution
        assert np.median(result['linewidth'][optical]) == pytest.approx(2e-4 / (2 * np.pi) * 1e3, abs=0.0625)
    else:
        assert shift.min() > settings.resolution and shift.mean() > 3 * settings.resolution  # every mode hardens
        assert np.all(np.sort(result['commensurate_frequencies'].ravel())[3:] > 0)


def _double_well_crystal():
    """The spring crystal with every S atom a rattler in a double well: its six S-Ag bonds softened by 2.6 eV/Å²
    (central) and stiffened by a quartic term k4 = 9.4 eV/Å⁴. For S alone (Ag held) the curvature along x is
    2 (1.5 − 2.6) + 4 x 0.3 = −1.0 eV/Å² and the quartic coefficient 2 k4 = 18.8 eV/Å⁴: eight wells along ⟨111⟩,
    0.23 Å from the centre and 3 x 1.0² / (4 x 18.8) = 0.040 eV deep."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit, positions, phi, bonds, directions = _spring_crystal()
    symbols = Phonopy(PhonopyAtoms(symbols=unit.get_chemical_symbols(), cell=unit.cell.array,
                                   scaled_positions=unit.get_scaled_positions()),
                      supercell_matrix=np.diag([2, 2, 2]), primitive_matrix=np.eye(3)).supercell.symbols
    rattler = np.array([sorted((symbols[i], symbols[j])) == ['Ag', 'S'] for i, j in bonds])
    phi = phi.copy()
    for (i, j), e in zip(bonds[rattler], directions[rattler]):
        block = 2.6 * np.outer(e, e)  # a central spring of -2.6 eV/Å² added
        phi[3 * i:3 * i + 3, 3 * j:3 * j + 3] += block
        phi[3 * j:3 * j + 3, 3 * i:3 * i + 3] += block
        phi[3 * i:3 * i + 3, 3 * i:3 * i + 3] -= block
        phi[3 * j:3 * j + 3, 3 * j:3 * j + 3] -= block
    return unit, positions, phi, bonds[rattler], directions[rattler]


def test_double_well_mode_is_stabilised_above_its_barrier_and_not_below():
    """Known answer for dynamic stabilisation: rattlers in 0.04 eV double wells. At 0 K the 24 rattling modes are
    imaginary. At 1000 K (k_B T = 0.086 eV, over the barrier) the MD oscillates about the cubic structure at the
    frequency the self-consistent harmonic approximation gives for one rattler (k² + k − 3 x 18.8 k_B T = 0:
    k = 1.76 eV/Å², 3.66 THz): stabilised. At 30 K every rattler sits in one well. Its velocities still oscillate
    at a real frequency, so the spectra alone would call it stabilised; the displaced mean structure says it is
    not, and the modes are reported trapped and unresolved, never as real renormalised branches."""
    import torch

    from aiida_capthermo.core.normal_modes import TRAPPED_RATIO
    from aiida_capthermo.ml.mlip import batched_forces, phonopy_from_forces
    from aiida_capthermo.ml.phonons import PhononConfig, finite_temperature_phonons
    from aiida_capthermo.ml.thermal import HarmonicModel

    torch.set_num_threads(1)
    unit, positions, phi, bonds, directions = _double_well_crystal()
    model = HarmonicModel(positions, phi, bonds=bonds, directions=directions, quartic=9.4)
    phonon = phonopy_from_forces(unit, batched_forces(model), supercell=[2, 2, 2], displacement=0.01)
    settings = PhononConfig(supercell=[2, 2, 2], temperatures=[30.0, 1000.0], replicas=2, steps=4000, timestep=2.0,
                            sample_stride=4, equilibration_steps=1000, device='cpu')
    cold, hot = (finite_temperature_phonons(model, [phonon], settings)[0][key] for key in ('30.0', '1000.0'))
    for result in (cold, hot):
        assert result['broke'] is None
        assert len(result['imaginary_harmonic']) == 24  # the 8 rattlers x 3
        assert np.all(result['harmonic'][result['imaginary_harmonic']] < -2.5)
    # cold: real peaks (the spectrum alone is fooled), but the mean structure is displaced: not stabilised
    assert np.all(cold['renormalised'][cold['imaginary_harmonic']] > 2.0)
    # over MD seeds 0-11 the cold run traps 19-24 of the 24 modes with a median ratio of 2.5-5.8; the hot run's
    # largest ratio is 0.11-0.19 and its mean frequency 3.47-3.85 THz (seeds 0-7): the bounds leave that margin
    assert not cold['stabilised'] and len(cold['trapped']) >= 16
    assert set(cold['trapped']) <= set(cold['unresolved'])
    assert np.median(cold['displacement_ratio']) > 2 * TRAPPED_RATIO
    # hot: oscillation about the cubic structure at the SCHA frequency of a rattler
    assert hot['stabilised'] and not hot['trapped'] and not hot['unresolved']
    assert max(hot['displacement_ratio']) < 0.3 * TRAPPED_RATIO
    assert np.mean(hot['renormalised'][hot['imaginary_harmonic']]) == pytest.approx(3.66, rel=0.2)
