"""Phonon-informed and random atomic displacements of supercells.

The harmonic modes of a supercell at its Γ point (equivalently, of the primitive cell at the
q-points commensurate with the supercell) give the thermal mean-square displacement of paper eq. 1::

    zeta_{j,a}^2 = sum_nu hbar / (2 m_j omega_nu) * (1 + 2 n_nu(T)) * |e_nu(j, a)|^2,

with ``e_nu`` the eigenvectors of the supercell's mass-weighted dynamical matrix (normalised over
the 3N degrees of freedom of the supercell) and ``n`` the Bose-Einstein occupation. This equals
``hbar / (2 N m_j) sum_{q, nu} ...`` over the N commensurate q-points of the primitive cell, which
is what ``phonopy.Phonopy.run_thermal_displacements`` computes. ``1 + 2 n = coth(hbar omega / 2 kT)``
is evaluated as ``1 / tanh`` so that T = 0 (zero-point motion) and large ``hbar omega / kT`` never
overflow.

Units: frequencies in THz (ordinary, not angular), masses in amu, force constants in eV/Å²,
displacements in Å, mean-square displacements in Å², temperatures in K.

Only numpy (and ase and phonopy, imported on use, for :meth:`SupercellModes.from_phonopy` and
:func:`phonopy_supercell`) is used here: no AiiDA, no torch; importing this module imports neither phonopy nor ase.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from aiida_capthermo.core.constants import AMU, ANGSTROM, EV, HBAR, KB

if TYPE_CHECKING:  # pragma: no cover
    import ase
    import phonopy

__all__ = [
    'SupercellModes',
    'thermal_msd',
    'mode_amplitudes',
    'sample_phonon_displacements',
    'sample_mixed_phonon_displacements',
    'sample_random_displacements',
    'phonopy_supercell',
    'EV_PER_A2_AMU_TO_THZ',
    'IMAGINARY_TREATMENTS',
]

#: sqrt(eV / (Å² amu)) / (2 pi) in THz: eigenvalue of the mass-weighted dynamical matrix -> frequency.
EV_PER_A2_AMU_TO_THZ = float(np.sqrt(EV / (ANGSTROM**2 * AMU)) / (2 * np.pi) / 1e12)  # 15.633302...
#: What the samplers do with imaginary modes (see :class:`SupercellModes`).
IMAGINARY_TREATMENTS = ('skip', 'absolute')
#: hbar / (amu * 2 pi THz) in Å²: hbar / (m omega) for m = 1 amu, f = 1 THz.
_HBAR_OVER_AMU_THZ_A2 = HBAR / (AMU * 2 * np.pi * 1e12) / ANGSTROM**2
#: hbar * 2 pi THz / kB in K.
_HBAR_THZ_OVER_KB = HBAR * 2 * np.pi * 1e12 / KB


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f'temperature must be a finite number >= 0 K, got {temperature}.')
    return temperature


@dataclasses.dataclass
class SupercellModes:
    """Harmonic normal modes of a supercell at its Γ point.

    Attributes
    ----------
    frequencies
        [3N] THz, ascending; imaginary modes are given as negative numbers.
    eigenvectors
        [3N (dof, index ``3 * atom + cartesian``), 3N (modes)] real orthonormal eigenvectors of the
        mass-weighted dynamical matrix.
    masses
        [N] amu.
    numbers
        [N] atomic numbers.
    skipped
        Indices of the modes left out of every thermal quantity: the three acoustic translations,
        modes with ``|f| < frequency_cutoff`` and, with ``imaginary='skip'``, imaginary modes
        (``f <= -frequency_cutoff``).
    n_imaginary
        Number of imaginary modes with ``|f| >= frequency_cutoff`` that are not translations (they
        signal a dynamical instability of the reference structure).
    frequency_cutoff
        THz.
    imaginary
        ``'skip'``: imaginary modes carry no displacement; ``'absolute'``: they are sampled as real modes of
        frequency ``|f|`` (hiPhive's phonon rattle does the same), so the directions along which the
        reference is unstable, and which a strongly anharmonic crystal explores most at finite T, are in
        the training set.
    """

    frequencies: np.ndarray
    eigenvectors: np.ndarray
    masses: np.ndarray
    numbers: np.ndarray
    skipped: np.ndarray
    n_imaginary: int
    frequency_cutoff: float
    imaginary: str = 'skip'

    @property
    def n_atoms(self) -> int:
        """Number of atoms N of the supercell."""
        return int(len(self.masses))

    @property
    def active(self) -> np.ndarray:
        """Indices of the modes that enter thermal quantities (complement of ``skipped``)."""
        mask = np.ones(len(self.frequencies), dtype=bool)
        mask[self.skipped] = False
        return np.flatnonzero(mask)

    def summary(self) -> dict:
        """What the samplers make of these modes (JSON-ready): ``n_modes`` (3N), ``n_imaginary``, ``imaginary_modes``
        (the treatment), ``n_skipped``, ``n_active``, ``min_frequency_thz`` (the softest mode, negative when
        imaginary) and ``max_frequency_thz``."""
        return {'n_modes': int(len(self.frequencies)), 'n_imaginary': int(self.n_imaginary),
                'imaginary_modes': self.imaginary, 'n_skipped': int(len(self.skipped)),
                'n_active': int(len(self.active)), 'min_frequency_thz': float(self.frequencies.min()),
                'max_frequency_thz': float(self.frequencies.max())}

    @classmethod
    def from_force_constants(
        cls,
        force_constants: np.ndarray,
        masses: Sequence[float],
        numbers: Sequence[int] | None = None,
        frequency_cutoff: float = 0.1,
        skip_translations: bool = True,
        imaginary: str = 'skip',
    ) -> SupercellModes:
        """Diagonalise the mass-weighted supercell force constants.

        Parameters
        ----------
        force_constants
            [N, N, 3, 3] eV/Å², ``fc[i, j, a, b] = d2E / du_ia du_jb``.
        masses
            [N] amu.
        numbers
            [N] atomic numbers (zeros if not given).
        frequency_cutoff
            Modes with ``|f|`` below this (THz) are skipped.
        skip_translations
            Project the three rigid translations out of the dynamical matrix (this imposes the
            acoustic sum rule that finite-difference force constants satisfy only approximately, so
            the remaining modes move no centre of mass) and skip them. Set ``False`` only for a
            system pinned in space (e.g. an Einstein oscillator).
        imaginary
            ``'skip'`` or ``'absolute'``: what the samplers do with imaginary modes (see the class).
        """
        if imaginary not in IMAGINARY_TREATMENTS:
            raise ValueError(f'imaginary must be one of {IMAGINARY_TREATMENTS}, got {imaginary!r}.')
        fc = np.asarray(force_constants, dtype=float)
        masses = np.asarray(masses, dtype=float).reshape(-1)
        n_atoms = masses.size
        if fc.shape != (n_atoms, n_atoms, 3, 3):
            raise ValueError(
                f'force constants must have shape [N, N, 3, 3] = {(n_atoms, n_atoms, 3, 3)}, got {fc.shape}.'
            )
        if not np.all(np.isfinite(fc)):
            raise ValueError('force constants contain NaN or inf.')
        if np.any(masses <= 0) or not np.all(np.isfinite(masses)):
            raise ValueError('masses must be positive numbers in amu.')
        frequency_cutoff = float(frequency_cutoff)
        if frequency_cutoff < 0:
            raise ValueError(f'frequency_cutoff must be >= 0 THz, got {frequency_cutoff}.')
        numbers = np.zeros(n_atoms, dtype=np.int64) if numbers is None else np.asarray(numbers, dtype=np.int64)

        inv_sqrt_m = 1.0 / np.sqrt(masses)
        dyn = fc * inv_sqrt_m[:, None, None, None] * inv_sqrt_m[None, :, None, None]  # [N, N, 3, 3] eV/(Å² amu)
        dyn = dyn.transpose(0, 2, 1, 3).reshape(3 * n_atoms, 3 * n_atoms)
        dyn = 0.5 * (dyn + dyn.T)
        if skip_translations:
            # Mass-weighted rigid translations, one per Cartesian direction: [3N, 3], orthonormal.
            translations = np.zeros((3 * n_atoms, 3))
            for a in range(3):
                translations[a::3, a] = np.sqrt(masses)
            translations /= np.linalg.norm(translations, axis=0)
            projector = np.eye(3 * n_atoms) - translations @ translations.T  # [3N, 3N]
            dyn = projector @ dyn @ projector
        eigenvalues, eigenvectors = np.linalg.eigh(dyn)  # [3N], [3N, 3N]
        frequencies = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * EV_PER_A2_AMU_TO_THZ  # THz

        skip = np.abs(frequencies) < frequency_cutoff
        translation_modes = np.zeros(0, dtype=np.int64)
        if skip_translations:
            overlap = np.sum((translations.T @ eigenvectors) ** 2, axis=0)  # [3N]
            translation_modes = np.argsort(-overlap, kind='stable')[:3]
            skip[translation_modes] = True
        is_imaginary = frequencies <= -frequency_cutoff
        is_imaginary[translation_modes] = False
        if imaginary == 'skip':
            skip |= is_imaginary
        return cls(
            frequencies=frequencies,
            eigenvectors=eigenvectors,
            masses=masses,
            numbers=numbers,
            skipped=np.flatnonzero(skip),
            n_imaginary=int(np.count_nonzero(is_imaginary)),
            frequency_cutoff=frequency_cutoff,
            imaginary=imaginary,
        )

    @classmethod
    def from_phonopy(cls, phonon: phonopy.Phonopy, frequency_cutoff: float = 0.1,
                     imaginary: str = 'skip') -> SupercellModes:
        """Modes of ``phonon.supercell`` (same atom order) from phonopy's supercell force constants.

        Parameters
        ----------
        phonon
            A ``phonopy.Phonopy`` with force constants set (full or compact).
        frequency_cutoff, imaginary
            See :meth:`from_force_constants`.
        """
        fc = phonon.force_constants
        if fc is None:
            raise ValueError('the Phonopy object has no force constants; run produce_force_constants() first.')
        n_atoms = len(phonon.supercell)
        if fc.shape[0] != n_atoms:  # compact [N_primitive, N, 3, 3]
            from phonopy.harmonic.force_constants import compact_fc_to_full_fc

            fc = compact_fc_to_full_fc(phonon.primitive, fc)
        return cls.from_force_constants(
            fc,
            masses=phonon.supercell.masses,
            numbers=phonon.supercell.numbers,
            frequency_cutoff=frequency_cutoff,
            imaginary=imaginary,
        )


def phonopy_supercell(unitcell: ase.Atoms, supercell: Sequence[int]) -> ase.Atoms:
    """The diagonal ``supercell`` [3] of ``unitcell`` in phonopy's atom order: the order of the force constants that
    phonopy computes for it, hence of :meth:`SupercellModes.from_phonopy` (phonopy is imported here, on use)."""
    import ase
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    cell = PhonopyAtoms(symbols=unitcell.get_chemical_symbols(), cell=unitcell.cell[:], positions=unitcell.positions)
    sc = Phonopy(cell, supercell_matrix=np.diag([int(n) for n in supercell]), primitive_matrix=np.eye(3)).supercell
    return ase.Atoms(symbols=sc.symbols, positions=sc.positions, cell=sc.cell, pbc=True)


def mode_amplitudes(modes: SupercellModes, temperature: float) -> np.ndarray:
    """Thermal variance of the mass-weighted normal coordinates, ``hbar / (2 omega) coth(hbar omega / 2kT)``.

    Returns
    -------
    numpy.ndarray
        [3N] in amu Å²; zero for skipped modes. T = 0 gives the zero-point value.
    """
    temperature = _check_temperature(temperature)
    variance = np.zeros(len(modes.frequencies))
    active = modes.active
    f = np.abs(modes.frequencies[active])  # THz, all >= cutoff (imaginary ones at |f| when sampled)
    coth = 1.0 / np.tanh(_HBAR_THZ_OVER_KB * f / (2.0 * temperature)) if temperature > 0 else np.ones_like(f)
    variance[active] = 0.5 * _HBAR_OVER_AMU_THZ_A2 / f * coth
    return variance


def thermal_msd(modes: SupercellModes, temperature: float) -> np.ndarray:
    """Harmonic mean-square displacement zeta² (paper eq. 1) per atom and Cartesian direction.

    Parameters
    ----------
    modes
        Supercell modes; skipped modes do not contribute.
    temperature
        K (0 gives the zero-point motion).

    Returns
    -------
    numpy.ndarray
        [N, 3] Å², finite and >= 0.
    """
    variance = mode_amplitudes(modes, temperature)  # [3N] amu Å²
    msd = (modes.eigenvectors**2) @ variance  # [3N dof] amu Å²
    return msd.reshape(-1, 3) / modes.masses[:, None]


def _check_samples(n_samples: int) -> int:
    n_samples = int(n_samples)
    if n_samples < 0:
        raise ValueError(f'n_samples must be >= 0, got {n_samples}.')
    return n_samples


def sample_phonon_displacements(
    modes: SupercellModes | Sequence[tuple[SupercellModes, float]],
    temperature: float,
    n_samples: int,
    distribution: str = 'uniform',
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Draw thermal displacements of the supercell from its harmonic modes.

    Parameters
    ----------
    modes
        The supercell modes, or a mixture ``[(modes_a, w_a), (modes_b, w_b), ...]`` for a solid
        solution (see :func:`sample_mixed_phonon_displacements`).
    temperature
        K.
    n_samples
        Number of displaced structures.
    distribution
        ``'uniform'`` (paper eq. 1): ``u_ja = eps * zeta_ja`` with ``eps ~ U[-1, 1]`` independently per
        atom and direction, so the per-component variance is ``zeta²/3`` and ``|u_ja| <= zeta_ja``.
        ``'gaussian'``: canonical normal-mode sampling, ``Q_nu ~ N(0, sigma_nu²)`` with
        ``sigma_nu² = hbar/(2 omega_nu) coth(hbar omega_nu / 2kT)``, ``u = sum_nu e_nu Q_nu / sqrt(m)``;
        displacements are correlated across atoms and the per-component variance is ``zeta²``.
    rng
        Generator or seed (``numpy.random.default_rng``).

    Returns
    -------
    numpy.ndarray
        [n_samples, N, 3] Å, to be added to the positions of the reference supercell.
    """
    if isinstance(modes, SupercellModes):
        return sample_mixed_phonon_displacements([(modes, 1.0)], temperature, n_samples, distribution, rng)
    return sample_mixed_phonon_displacements(modes, temperature, n_samples, distribution, rng)


def sample_mixed_phonon_displacements(
    mix: Sequence[tuple[SupercellModes, float]],
    temperature: float,
    n_samples: int,
    distribution: str = 'uniform',
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Draw thermal displacements from a composition-weighted mixture of harmonic fields.

    Approximation for a solid solution: its displacement field is taken as the mixture of the
    parents' harmonic fields, weighted by composition (``mix = [(modes_x0, 1 - x), (modes_x1, x)]``).
    All parents must be the same supercell with the same atom order (site j of every parent is the
    same lattice site); the modes of the actual disordered configuration (other masses on the
    substituted sites, broken symmetry, local relaxations) are not computed. ``'uniform'`` uses
    ``zeta² = sum_i w_i zeta_i²``; ``'gaussian'`` uses ``u = sum_i sqrt(w_i) u_i`` with independent
    draws ``u_i`` of each parent, which has the same variance ``sum_i w_i zeta_i²`` and keeps each
    parent's correlations.

    Parameters
    ----------
    mix
        Pairs of (modes, weight); weights >= 0 summing to 1.
    temperature, n_samples, distribution, rng
        As in :func:`sample_phonon_displacements`.

    Returns
    -------
    numpy.ndarray
        [n_samples, N, 3] Å.
    """
    temperature = _check_temperature(temperature)
    n_samples = _check_samples(n_samples)
    mix = list(mix)
    if not mix:
        raise ValueError('mix is empty: give at least one (modes, weight) pair.')
    for item in mix:
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], SupercellModes)):
            raise ValueError('mix must be a sequence of (SupercellModes, weight) pairs.')
    weights = np.array([float(w) for _, w in mix])
    if np.any(weights < 0) or not np.all(np.isfinite(weights)) or abs(weights.sum() - 1.0) > 1e-8:
        raise ValueError(f'mixture weights must be >= 0 and sum to 1, got {weights.tolist()}.')
    n_atoms = mix[0][0].n_atoms
    if any(m.n_atoms != n_atoms for m, _ in mix):
        sizes = [m.n_atoms for m, _ in mix]
        raise ValueError(f'all modes in a mixture must describe the same supercell; got {sizes} atoms.')
    generator = _as_rng(rng)

    if distribution == 'uniform':
        msd = sum(w * thermal_msd(m, temperature) for m, w in mix)  # [N, 3] Å²
        eps = generator.uniform(-1.0, 1.0, size=(n_samples, n_atoms, 3))
        return eps * np.sqrt(msd)[None]
    if distribution == 'gaussian':
        out = np.zeros((n_samples, n_atoms, 3))
        for m, w in mix:
            if w == 0:
                continue
            active = m.active
            sigma = np.sqrt(mode_amplitudes(m, temperature)[active])  # [n_active] sqrt(amu) Å
            inv_sqrt_m = np.repeat(1.0 / np.sqrt(m.masses), 3)  # [3N]
            transform = m.eigenvectors[:, active] * sigma[None, :] * inv_sqrt_m[:, None]  # [3N, n_active] Å
            z = generator.standard_normal((n_samples, active.size))  # [n_samples, n_active]
            out += np.sqrt(w) * (z @ transform.T).reshape(n_samples, n_atoms, 3)
        return out
    raise ValueError(f"distribution must be 'uniform' or 'gaussian', got {distribution!r}.")


def sample_random_displacements(
    n_atoms: int, amplitude: float, n_samples: int, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Random displacements of the second paper (eq. 2): ``u = eps * a``, ``eps ~ U[-1, 1]`` per atom and direction.

    Parameters
    ----------
    n_atoms
        Number of atoms N.
    amplitude
        Maximum displacement per Cartesian component ``a`` in Å (paper: 0.1-0.8 Å).
    n_samples
        Number of displaced structures.
    rng
        Generator or seed.

    Returns
    -------
    numpy.ndarray
        [n_samples, N, 3] Å, each component in [-a, a].
    """
    n_samples = _check_samples(n_samples)
    amplitude = float(amplitude)
    if not np.isfinite(amplitude) or amplitude < 0:
        raise ValueError(f'amplitude must be a finite length >= 0 Å, got {amplitude}.')
    if int(n_atoms) < 1:
        raise ValueError(f'n_atoms must be >= 1, got {n_atoms}.')
    return _as_rng(rng).uniform(-1.0, 1.0, size=(n_samples, int(n_atoms), 3)) * amplitude
