"""Tests of the phonon-informed and random displacement samplers (``aiida_capthermo.core.displacements``).

The reference for the thermal mean-square displacement is phonopy's own
``Phonopy.run_thermal_displacements`` on the q-mesh commensurate with the supercell, for an
L1_2 Cu3Au crystal whose force constants are computed here with ase's EMT potential by phonopy
finite displacements.
"""

import ase
import numpy as np
import pytest
from ase.calculators.emt import EMT
from phonopy import Phonopy
from phonopy.structure.atoms import PhonopyAtoms

from aiida_capthermo.core.displacements import (
    EV_PER_A2_AMU_TO_THZ,
    IMAGINARY_TREATMENTS,
    SupercellModes,
    phonopy_supercell,
    sample_mixed_phonon_displacements,
    sample_phonon_displacements,
    sample_random_displacements,
    thermal_msd,
)

HBAR = 1.054571817e-34  # J s
KB = 1.380649e-23  # J/K
EV = 1.602176634e-19  # J
AMU = 1.66053906660e-27  # kg
CUTOFF = 0.1  # THz
N_SAMPLES = 20000


def _cu3au_phonopy(full_fc: bool = True) -> Phonopy:
    a = 3.75
    unitcell = PhonopyAtoms(
        symbols=['Au', 'Cu', 'Cu', 'Cu'],
        cell=np.eye(3) * a,
        scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    phonon = Phonopy(unitcell, supercell_matrix=np.eye(3, dtype=int) * 2, primitive_matrix=None)
    phonon.generate_displacements(distance=0.01)
    forces = []
    for supercell in phonon.supercells_with_displacements:
        atoms = ase.Atoms(supercell.symbols, cell=supercell.cell, scaled_positions=supercell.scaled_positions, pbc=True)
        atoms.calc = EMT()
        forces.append(atoms.get_forces())
    phonon.forces = np.array(forces)
    phonon.produce_force_constants(calculate_full_force_constants=full_fc)
    phonon.symmetrize_force_constants()  # acoustic sum rule, as SupercellModes imposes it by projection
    return phonon


@pytest.fixture(scope='module')
def cu3au():
    phonon = _cu3au_phonopy()
    phonon.run_mesh([2, 2, 2], is_gamma_center=True, with_eigenvectors=True, is_mesh_symmetry=False)
    phonon.run_thermal_displacements(temperatures=[0.0, 300.0, 600.0], freq_min=CUTOFF)
    reference = np.asarray(phonon.thermal_displacements.thermal_displacements)  # [n_T, n_primitive * 3] Å²
    modes = SupercellModes.from_phonopy(phonon, frequency_cutoff=CUTOFF)
    # primitive atom of each supercell atom (phonopy's supercell order)
    p2s = phonon.primitive.p2s_map
    s2p = phonon.primitive.s2p_map
    index = np.array([list(p2s).index(s) for s in s2p])
    expected = {t: reference[i].reshape(-1, 3)[index] for i, t in enumerate((0.0, 300.0, 600.0))}  # [N, 3]
    return phonon, modes, expected


def test_modes_and_msd_match_phonopy(cu3au):
    phonon, modes, expected = cu3au
    assert modes.n_atoms == len(phonon.supercell) == 32
    assert modes.eigenvectors.shape == (96, 96)
    assert np.allclose(modes.eigenvectors.T @ modes.eigenvectors, np.eye(96), atol=1e-10)
    assert modes.n_imaginary == 0
    assert len(modes.skipped) == 3 and np.all(np.abs(modes.frequencies[modes.skipped]) < 1e-3)
    # the supercell's Γ modes are the primitive cell's modes on the commensurate 2x2x2 mesh
    reference = np.sort(phonon.get_mesh_dict()['frequencies'].reshape(-1))
    ours = np.sort(modes.frequencies)
    assert np.all(np.abs(ours[:3]) < 1e-6) and np.all(np.abs(reference[:3]) < 1e-3)  # acoustic at Γ
    assert np.allclose(ours[3:], reference[3:], rtol=2e-6, atol=0)
    for temperature, msd in expected.items():
        ours = thermal_msd(modes, temperature)
        assert ours.shape == (32, 3)
        # phonopy uses CODATA-1986 AMU and eV (1.6605402e-27 kg, 1.60217733e-19 J); we use CODATA 2018:
        # the two differ by ~6e-7 relative
        assert np.allclose(ours, msd, rtol=2e-6, atol=0)
    # the Cu sites of L1_2 are anisotropic, the Au site is isotropic
    ours = thermal_msd(modes, 300.0)
    gold, copper = modes.numbers == 79, modes.numbers == 29
    assert gold.sum() == 8 and copper.sum() == 24
    assert np.all(np.ptp(ours[gold], axis=1) < 1e-12) and np.all(np.ptp(ours[copper], axis=1) > 1e-4)


def test_compact_force_constants_give_the_same_modes(cu3au):
    _, modes, _ = cu3au
    compact = SupercellModes.from_phonopy(_cu3au_phonopy(full_fc=False), frequency_cutoff=CUTOFF)
    assert np.allclose(compact.frequencies, modes.frequencies, atol=1e-6)
    assert np.allclose(thermal_msd(compact, 300.0), thermal_msd(modes, 300.0), rtol=1e-8)


@pytest.mark.parametrize('distribution, fraction', [('uniform', 1 / 3), ('gaussian', 1.0)])
def test_sampled_variance_matches_phonopy(cu3au, distribution, fraction):
    _, modes, expected = cu3au
    u = sample_phonon_displacements(modes, 300.0, N_SAMPLES, distribution=distribution, rng=11)
    assert u.shape == (N_SAMPLES, 32, 3) and np.all(np.isfinite(u))
    # no net translation of the cell in the Gaussian scheme (acoustic modes skipped): centre of mass fixed
    if distribution == 'gaussian':
        com = np.einsum('snc,n->sc', u, modes.masses) / modes.masses.sum()
        assert np.max(np.abs(com)) < 1e-12
    variance = np.mean(u**2, axis=0)  # [N, 3] (mean is zero by symmetry of the distribution)
    target = fraction * expected[300.0]
    # relative standard error of a mean of u²: sqrt(2/n) (Gaussian), sqrt(0.8/n) (uniform eps)
    rel = np.sqrt((2.0 if distribution == 'gaussian' else 0.8) / N_SAMPLES)
    assert np.all(np.abs(variance / target - 1) < 5 * rel)
    # pooled over all atoms of one species the estimate is tighter still
    assert np.mean(variance / target) == pytest.approx(1.0, abs=5 * rel)
    if distribution == 'uniform':
        assert np.all(np.abs(u) <= np.sqrt(expected[300.0])[None] + 1e-15)


def _einstein_modes(k_spring, mass):
    fc = np.zeros((1, 1, 3, 3))
    fc[0, 0] = np.eye(3) * k_spring
    return SupercellModes.from_force_constants(fc, [mass], skip_translations=False, frequency_cutoff=CUTOFF)


def test_single_oscillator_units_by_hand():
    """One atom on a spring (eV/Å²): frequency, zero-point and classical mean-square displacements in SI."""
    k_spring, mass = 2.0, 63.546  # eV/Å², amu (Cu)
    modes = _einstein_modes(k_spring, mass)
    omega = np.sqrt(k_spring * EV / 1e-20 / (mass * AMU))  # rad/s
    assert modes.skipped.size == 0
    assert np.allclose(modes.frequencies, omega / (2 * np.pi) / 1e12, rtol=1e-12)
    assert pytest.approx(15.633302, rel=1e-6) == EV_PER_A2_AMU_TO_THZ  # phonopy's VaspToTHz
    zero_point = HBAR / (2 * mass * AMU * omega) * 1e20  # Å²
    assert np.allclose(thermal_msd(modes, 0.0), zero_point, rtol=1e-10)
    temperature = 5000.0
    classical = KB * temperature / EV / k_spring  # kT / k in Å²
    x = HBAR * omega / (2 * KB * temperature)
    assert np.allclose(thermal_msd(modes, temperature), classical, rtol=x**2)  # coth(x) x = 1 + x²/3 - ...
    exact = HBAR / (2 * mass * AMU * omega) / np.tanh(x) * 1e20
    assert np.allclose(thermal_msd(modes, temperature), exact, rtol=1e-10)


def _force_constants_with_soft_modes(rng):
    """4 atoms, acoustic sum rule kept, one imaginary (-2 THz) and one near-zero (0.05 THz) optical mode."""
    masses = np.array([10.0, 20.0, 30.0, 40.0])
    translations = np.zeros((12, 3))
    for a in range(3):
        translations[a::3, a] = np.sqrt(masses)
    basis, _ = np.linalg.qr(np.hstack([translations, rng.standard_normal((12, 9))]))  # first 3 span translations
    frequencies = np.array([0, 0, 0, -2.0, 0.05, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])  # THz
    eigenvalues = np.sign(frequencies) * (frequencies / EV_PER_A2_AMU_TO_THZ) ** 2  # eV/(Å² amu)
    dyn = basis @ np.diag(eigenvalues) @ basis.T
    sqrt_m = np.repeat(np.sqrt(masses), 3)
    fc = (dyn * sqrt_m[:, None] * sqrt_m[None, :]).reshape(4, 3, 4, 3).transpose(0, 2, 1, 3)
    return fc, masses, frequencies


def test_imaginary_and_soft_modes_are_skipped_and_reported():
    fc, masses, frequencies = _force_constants_with_soft_modes(np.random.default_rng(5))
    assert np.allclose(fc.sum(axis=1), 0, atol=1e-10)  # acoustic sum rule
    modes = SupercellModes.from_force_constants(fc, masses, frequency_cutoff=CUTOFF)
    assert np.allclose(np.sort(modes.frequencies), np.sort(frequencies), atol=1e-6)
    assert modes.n_imaginary == 1
    skipped = np.sort(modes.frequencies[modes.skipped])
    assert np.allclose(skipped, [-2.0, 0, 0, 0, 0.05], atol=1e-6)
    for temperature in (0.0, 300.0):
        msd = thermal_msd(modes, temperature)
        assert np.all(np.isfinite(msd)) and np.all(msd > 0)
        # by hand: only the 7 stable modes above the cutoff contribute
        kept = modes.frequencies > CUTOFF
        omega = 2 * np.pi * 1e12 * modes.frequencies[kept]
        coth = 1 / np.tanh(HBAR * omega / (2 * KB * temperature)) if temperature else 1.0
        per_mode = HBAR / (2 * omega) * coth / AMU * 1e20  # amu Å²
        by_hand = (modes.eigenvectors[:, kept] ** 2 @ per_mode).reshape(4, 3) / masses[:, None]
        assert np.allclose(msd, by_hand, rtol=1e-10)
        for distribution in ('uniform', 'gaussian'):
            u = sample_phonon_displacements(modes, temperature, 10, distribution, rng=1)
            assert np.all(np.isfinite(u))
    # a larger cutoff also drops the 3 THz mode; imaginary count unchanged
    assert len(SupercellModes.from_force_constants(fc, masses, frequency_cutoff=3.5).skipped) == 6


def test_seed_reproducibility(cu3au):
    _, modes, _ = cu3au
    for distribution in ('uniform', 'gaussian'):
        a = sample_phonon_displacements(modes, 300.0, 5, distribution, rng=42)
        b = sample_phonon_displacements(modes, 300.0, 5, distribution, rng=np.random.default_rng(42))
        c = sample_phonon_displacements(modes, 300.0, 5, distribution, rng=43)
        assert np.array_equal(a, b) and not np.allclose(a, c)
    first = sample_random_displacements(40, 0.3, 4, rng=1)
    assert np.array_equal(first, sample_random_displacements(40, 0.3, 4, rng=1))


def test_mixture_variance(cu3au):
    _, modes, _ = cu3au
    soft = SupercellModes(
        frequencies=modes.frequencies / 2,  # force constants / 4
        eigenvectors=modes.eigenvectors,
        masses=modes.masses,
        numbers=modes.numbers,
        skipped=modes.skipped,
        n_imaginary=0,
        frequency_cutoff=CUTOFF,
    )
    weights = (0.3, 0.7)
    target = weights[0] * thermal_msd(modes, 600.0) + weights[1] * thermal_msd(soft, 600.0)
    mix = [(modes, weights[0]), (soft, weights[1])]
    cases = (('uniform', 1 / 3, np.sqrt(0.8 / N_SAMPLES)), ('gaussian', 1.0, np.sqrt(2 / N_SAMPLES)))
    for distribution, fraction, rel in cases:
        u = sample_mixed_phonon_displacements(mix, 600.0, N_SAMPLES, distribution, rng=3)
        assert np.array_equal(u, sample_phonon_displacements(mix, 600.0, N_SAMPLES, distribution, rng=3))
        variance = np.mean(u**2, axis=0)
        assert np.all(np.abs(variance / (fraction * target) - 1) < 5 * rel)
    pure = sample_mixed_phonon_displacements([(modes, 1.0), (soft, 0.0)], 300.0, 3, 'uniform', rng=9)
    assert np.array_equal(pure, sample_phonon_displacements(modes, 300.0, 3, 'uniform', rng=9))
    with pytest.raises(ValueError, match='sum to 1'):
        sample_mixed_phonon_displacements([(modes, 0.5), (soft, 0.6)], 300.0, 3)


def test_random_displacements_bounded():
    u = sample_random_displacements(40, 0.4, 2000, rng=0)
    assert u.shape == (2000, 40, 3)
    assert np.max(np.abs(u)) <= 0.4 and np.max(np.abs(u)) > 0.39
    assert np.mean(u**2) == pytest.approx(0.4**2 / 3, rel=0.02)
    with pytest.raises(ValueError, match='amplitude'):
        sample_random_displacements(40, -0.1, 3)


def test_bad_inputs(cu3au):
    _, modes, _ = cu3au
    with pytest.raises(ValueError, match='temperature'):
        thermal_msd(modes, -1.0)
    with pytest.raises(ValueError, match='distribution'):
        sample_phonon_displacements(modes, 300.0, 2, distribution='normal')
    with pytest.raises(ValueError, match='shape'):
        SupercellModes.from_force_constants(np.zeros((2, 2, 3, 3)), [1.0])
    with pytest.raises(ValueError, match='force constants'):
        phonon = Phonopy(PhonopyAtoms(symbols=['Cu'], cell=np.eye(3) * 2.5, scaled_positions=[[0, 0, 0]]))
        SupercellModes.from_phonopy(phonon)


def _chain_frequencies(k1: float, k2: float, mass: float, n_cells: int) -> np.ndarray:
    """Analytic Γ frequencies (THz, negative = imaginary) of the periodic chain of ``n_cells`` atoms (spacing a) with
    springs k1 to the first and k2 to the second neighbours (eV/Å², the same along x, y and z): for each of the
    n_cells wave vectors q = 2 pi n / (n_cells a), omega^2 = (2 / m) (k1 (1 - cos qa) + k2 (1 - cos 2qa)), three
    times (one per direction), in SI units."""
    qa = 2 * np.pi * np.arange(n_cells) / n_cells
    omega2 = 2 / (mass * AMU) * (k1 * (1 - np.cos(qa)) + k2 * (1 - np.cos(2 * qa))) * EV / 1e-20  # s^-2
    return np.repeat(np.sign(omega2) * np.sqrt(np.abs(omega2)) / (2 * np.pi) / 1e12, 3)  # THz


def test_phonopy_force_constants_of_a_chain_give_the_analytic_dispersion():
    """The dataset's path (phonopy supercell, phonopy force constants, SupercellModes.from_phonopy and its summary) on
    a chain of 8 Ag with a destabilising second-neighbour spring: the frequencies are the analytic dispersion, the
    imaginary ones (q = ±2pi/8a, ±4pi/8a: 4 wave vectors, 12 modes) are counted and treated as asked."""
    a, n_cells, k1, k2 = 3.0, 8, 1.0, -0.6
    cell = np.diag([a, 5.0, 5.0])  # tetragonal like the supercell (a cubic cell would make phonopy warn)
    unit = ase.Atoms('Ag', cell=cell, pbc=True)
    phonon = Phonopy(PhonopyAtoms(symbols=['Ag'], cell=cell, positions=[[0, 0, 0]]),
                     supercell_matrix=np.diag([n_cells, 1, 1]), primitive_matrix=np.eye(3))
    reference = phonopy_supercell(unit, [n_cells, 1, 1])  # phonopy's atom order: that of its force constants
    np.testing.assert_allclose(reference.positions, phonon.supercell.positions)
    np.testing.assert_allclose(reference.cell[:], np.diag([n_cells * a, 5.0, 5.0]))
    site = np.rint(reference.positions[:, 0] / a).astype(int)  # [8] lattice index of each atom along the chain
    spring = {1: -k1, n_cells - 1: -k1, 2: -k2, n_cells - 2: -k2, 0: 2 * (k1 + k2)}
    fc = np.zeros((n_cells, n_cells, 3, 3))
    for i in range(n_cells):
        for j in range(n_cells):
            fc[i, j] = spring.get((site[j] - site[i]) % n_cells, 0.0) * np.eye(3)
    phonon.force_constants = fc
    mass = float(phonon.supercell.masses[0])
    expected = np.sort(_chain_frequencies(k1, k2, mass, n_cells))
    assert np.sum(expected < -CUTOFF) == 12
    for treatment in IMAGINARY_TREATMENTS:
        modes = SupercellModes.from_phonopy(phonon, frequency_cutoff=CUTOFF, imaginary=treatment)
        np.testing.assert_allclose(np.sort(modes.frequencies), expected, atol=1e-6)  # zeros: sqrt of round-off
        skipped = 3 + (12 if treatment == 'skip' else 0)  # the translations (q = 0), and the imaginary modes
        assert modes.summary() == {
            'n_modes': 24, 'n_imaginary': 12, 'imaginary_modes': treatment, 'n_skipped': skipped,
            'n_active': 24 - skipped, 'min_frequency_thz': pytest.approx(expected[0], abs=1e-9),
            'max_frequency_thz': pytest.approx(expected[-1], abs=1e-9)}
    # by hand: the softest mode is at q a = pi/4 and the stiffest at q a = pi, omega^2 = 4 k1 / m
    assert expected[-1] == pytest.approx(np.sqrt(4 * k1 * EV / 1e-20 / (mass * AMU)) / (2 * np.pi * 1e12), rel=1e-12)


def test_importing_the_samplers_imports_no_phonopy():
    """The workflows import IMAGINARY_TREATMENTS from here at submission: that must not cost a phonopy import."""
    import subprocess
    import sys

    script = ('import sys, aiida_capthermo.core.displacements as d; '
              'print(d.IMAGINARY_TREATMENTS, "phonopy" in sys.modules, "ase" in sys.modules)')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.split() == ["('skip',", "'absolute')", 'False', 'False']
