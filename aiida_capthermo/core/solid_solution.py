"""Symmetry-inequivalent configurations of a binary solid solution on one sublattice.

Method
------
1. :func:`site_permutations` takes the space-group operations of the *parent* supercell (all
   disordered sites carry one species) from spglib and turns each operation into a permutation of
   the disordered sites (image positions matched to sites with periodic wrap and a Cartesian
   tolerance). Duplicate permutations (e.g. a point operation combined with a lattice translation
   that acts identically on the sublattice) are removed; the result is the permutation group
   acting on the sublattice. For the 8 halide sites of the 2x2x2 Ag3SI cell it has 48 elements.
2. A configuration with ``k`` guest atoms is a boolean mask over the ``n`` sites, encoded as the
   integer ``sum_i mask[i] * 2**i``. Its *canonical form* is the smallest code over the images
   under all permutations; two configurations are equivalent iff their canonical forms agree, and
   the orbit size (multiplicity) is the number of distinct image codes. The images of a batch of
   configurations are computed with one matrix product ``masks @ 2**perm.T`` (vectorised).
3. :func:`enumerate_configurations` enumerates all ``C(n, k)`` masks when that is small enough and
   groups them by canonical form. When there are more inequivalent classes than requested
   (``max_configurations``; the number of classes is known beforehand from Burnside's lemma,
   :func:`count_inequivalent`), it draws uniformly random configurations in batches and keeps the
   first ``max_configurations`` distinct canonical forms. Random configurations are uniform over
   the ``C(n, k)`` arrangements, so a class is found with probability proportional to its
   multiplicity (the weight it has in a random alloy). ``C(n, k)`` is never enumerated explicitly in
   that case, so 27 sites with k = 13 (20 M arrangements) is fast.
4. :func:`class_probabilities` weighs the classes of one composition in the configurational canonical
   ensemble: class i (multiplicity ``g_i``, energy ``E_i`` of the supercell) has probability
   ``g_i exp(-(E_i - E_min) / k_B T) / Z``; :func:`configurational_average` averages a property with
   these weights.

Only numpy and spglib are used here (no AiiDA, no torch).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import ase
import numpy as np
import spglib

from aiida_capthermo.core.constants import KB_EV

__all__ = [
    'Configuration',
    'kept_weights',
    'site_permutations',
    'enumerate_configurations',
    'count_inequivalent',
    'canonical_keys',
    'orbit_sizes',
    'draw_compositions',
    'random_configuration',
    'guest_count',
    'class_probabilities',
    'configurational_average',
    'enumeration_table',
    'COMPOSITION_TOLERANCE',
]

#: Largest sublattice the integer encoding supports (codes are int64).
MAX_SITES = 62
#: Largest number of arrangements C(n, k) enumerated explicitly.
ENUMERATION_LIMIT = 2_000_000
_CHUNK = 4096
#: Largest ``|x n_sites - round(x n_sites)|`` of a composition x on the grid of a sublattice of n_sites sites.
COMPOSITION_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One symmetry-inequivalent configuration (class representative) of a solid solution.

    Attributes
    ----------
    occupied
        Indices into ``site_indices`` (not atom indices) of the sites carrying the guest species, in
        the canonical (smallest-code) representative of the class.
    multiplicity
        Number of arrangements in the class (orbit size under the site permutations).
    n_sites
        Number of sites of the disordered sublattice.
    """

    occupied: tuple[int, ...]
    multiplicity: int
    n_sites: int

    @property
    def n_guest(self) -> int:
        """Number of guest atoms."""
        return len(self.occupied)

    @property
    def x(self) -> float:
        """Guest fraction on the sublattice, ``n_guest / n_sites``."""
        return len(self.occupied) / self.n_sites

    def occupation_mask(self) -> np.ndarray:
        """Boolean mask over the sublattice sites, shape [n_sites], ``True`` = guest."""
        mask = np.zeros(self.n_sites, dtype=bool)
        mask[list(self.occupied)] = True
        return mask


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def site_permutations(atoms: ase.Atoms, site_indices: Sequence[int], symprec: float = 1e-3) -> np.ndarray:
    """Return the space-group operations of the parent structure as permutations of a sublattice.

    The symmetry is that of ``atoms`` with every selected site set to one species (the parent
    structure), so a partly substituted structure gives the same answer as its parent.

    Parameters
    ----------
    atoms
        The (super)cell.
    site_indices
        Atom indices of the disordered sublattice, shape [n_sites].
    symprec
        spglib tolerance in Å; image positions are matched to sites within ``max(10 * symprec, 1e-3)`` Å.

    Returns
    -------
    numpy.ndarray
        Integer array [n_distinct_ops, n_sites]; row ``g`` maps site ``i`` to site ``perm[g, i]``
        (both indices into ``site_indices``). Rows are unique and sorted; the identity is included.
    """
    site_indices = np.asarray(site_indices, dtype=np.int64).reshape(-1)
    if site_indices.size == 0:
        raise ValueError('site_indices is empty.')
    if site_indices.min() < 0 or site_indices.max() >= len(atoms) or len(np.unique(site_indices)) != site_indices.size:
        raise ValueError(f'site_indices must be distinct atom indices in [0, {len(atoms)}).')
    numbers = atoms.numbers.copy()
    numbers[site_indices] = numbers[site_indices[0]]
    cell = atoms.cell.array
    scaled = atoms.get_scaled_positions(wrap=True)
    symmetry = spglib.get_symmetry((cell, scaled, numbers), symprec=symprec)
    if symmetry is None:
        raise ValueError(f'spglib found no symmetry for the structure (symprec={symprec}).')
    rotations = np.asarray(symmetry['rotations'], dtype=float)  # [n_ops, 3, 3]
    translations = np.asarray(symmetry['translations'], dtype=float)  # [n_ops, 3]
    sites = scaled[site_indices]  # [n_sites, 3]
    images = np.einsum('gab,nb->gna', rotations, sites) + translations[:, None, :]  # [n_ops, n_sites, 3]
    diff = images[:, :, None, :] - sites[None, None, :, :]  # [n_ops, n_sites, n_sites, 3]
    diff -= np.round(diff)
    distance = np.linalg.norm(diff @ cell, axis=-1)  # [n_ops, n_sites, n_sites] Å
    tolerance = max(10 * symprec, 1e-3)
    match = distance < tolerance
    if not np.all(match.sum(axis=-1) == 1):
        raise ValueError(
            'a symmetry operation does not map the sublattice onto itself one-to-one; '
            'check site_indices and symprec.'
        )
    perms = np.argmax(match, axis=-1)  # [n_ops, n_sites]
    if not np.all(np.sort(perms, axis=1) == np.arange(site_indices.size)):
        raise ValueError('a symmetry operation maps two sites onto one; decrease symprec.')
    return np.unique(perms, axis=0)


def _check_permutations(permutations: np.ndarray) -> np.ndarray:
    perms = np.asarray(permutations, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[0] == 0:
        raise ValueError(f'permutations must be a non-empty [n_ops, n_sites] array, got shape {perms.shape}.')
    n_sites = perms.shape[1]
    if not np.all(np.sort(perms, axis=1) == np.arange(n_sites)):
        raise ValueError('every row of permutations must be a permutation of 0..n_sites-1.')
    return perms


def _image_codes(masks: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Integer codes of all images of ``masks`` [B, n] under ``perms`` [G, n]; returns [B, G]."""
    n_sites = perms.shape[1]
    if n_sites > MAX_SITES:
        raise ValueError(f'at most {MAX_SITES} sublattice sites are supported, got {n_sites}.')
    # Image of mask m under perm p: m'[p[i]] = m[i], so code(m') = sum_i m[i] 2**p[i].
    if n_sites <= 52:  # exact in float64, use BLAS
        weights = np.exp2(perms.astype(float))  # [G, n]
        return (masks.astype(float) @ weights.T).astype(np.int64)  # [B, G]
    weights = np.left_shift(np.int64(1), perms)  # [G, n]
    return masks.astype(np.int64) @ weights.T


def canonical_keys(masks: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """Canonical integer code (smallest image code) of each configuration.

    Parameters
    ----------
    masks
        Boolean occupation masks [n_configurations, n_sites].
    permutations
        Site permutations [n_ops, n_sites] (from :func:`site_permutations`).

    Returns
    -------
    numpy.ndarray
        int64 codes [n_configurations]; equal codes = symmetry-equivalent configurations.
    """
    perms = _check_permutations(permutations)
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    out = np.empty(masks.shape[0], dtype=np.int64)
    for start in range(0, masks.shape[0], _CHUNK):
        out[start : start + _CHUNK] = _image_codes(masks[start : start + _CHUNK], perms).min(axis=1)
    return out


def orbit_sizes(masks: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """Number of distinct images (multiplicity) of each configuration, shape [n_configurations]."""
    perms = _check_permutations(permutations)
    masks = np.atleast_2d(np.asarray(masks, dtype=bool))
    out = np.empty(masks.shape[0], dtype=np.int64)
    for start in range(0, masks.shape[0], _CHUNK):
        codes = np.sort(_image_codes(masks[start : start + _CHUNK], perms), axis=1)  # [B, G]
        out[start : start + _CHUNK] = 1 + np.count_nonzero(np.diff(codes, axis=1), axis=1)
    return out


def _decode(codes: np.ndarray, n_sites: int) -> np.ndarray:
    """Boolean masks [len(codes), n_sites] from integer codes."""
    bits = np.left_shift(np.int64(1), np.arange(n_sites, dtype=np.int64))
    return (np.asarray(codes, dtype=np.int64)[:, None] & bits[None, :]) != 0


def count_inequivalent(permutations: np.ndarray, n_guest: int) -> int:
    """Number of inequivalent ``n_guest``-subsets of the sites, by Burnside's lemma.

    ``N = (1/|G|) sum_g fix(g)``, where ``fix(g)`` is the number of k-subsets that ``g`` maps onto
    themselves: the coefficient of ``t**k`` in ``prod_cycles (1 + t**len(cycle))``. Independent of
    the enumeration; ``permutations`` must form a group (as :func:`site_permutations` returns).
    """
    perms = _check_permutations(permutations)
    n_sites = perms.shape[1]
    if not 0 <= n_guest <= n_sites:
        raise ValueError(f'n_guest must lie in [0, {n_sites}], got {n_guest}.')
    total = 0
    for perm in perms:
        seen = np.zeros(n_sites, dtype=bool)
        poly = [1] + [0] * n_sites  # coefficients of t**0 .. t**n
        for start in range(n_sites):
            if seen[start]:
                continue
            length, j = 0, start
            while not seen[j]:
                seen[j] = True
                j = perm[j]
                length += 1
            poly = [poly[i] + (poly[i - length] if i >= length else 0) for i in range(n_sites + 1)]
        total += poly[n_guest]
    if total % len(perms):
        raise ValueError('Burnside sum is not divisible by the group order: the permutations do not form a group.')
    return total // len(perms)


def enumerate_configurations(
    permutations: np.ndarray,
    n_guest: int,
    max_configurations: int | None = None,
    rng: np.random.Generator | int | None = None,
    batch_size: int = 4096,
    max_draws: int = 10_000_000,
) -> list[Configuration]:
    """Return the symmetry-inequivalent configurations of ``n_guest`` guest atoms with their multiplicities.

    Parameters
    ----------
    permutations
        Site permutations [n_ops, n_sites] of the parent structure (:func:`site_permutations`).
    n_guest
        Number of guest atoms on the sublattice, in [0, n_sites].
    max_configurations
        If given and the number of inequivalent classes (Burnside) exceeds it, return a random sample
        of this many distinct classes instead: uniformly random arrangements are drawn in batches
        and the first ``max_configurations`` distinct canonical forms are kept (classes are thus
        found with probability proportional to their multiplicity). ``None`` = all classes.
    rng
        ``numpy.random.Generator`` or seed for the sampling (reproducible for a given seed).
    batch_size
        Number of random arrangements canonicalised per batch when sampling.
    max_draws
        Safety bound on the number of random arrangements drawn.

    Returns
    -------
    list[Configuration]
        Sorted by canonical code. With full enumeration the multiplicities sum to ``C(n_sites, n_guest)``.
    """
    perms = _check_permutations(permutations)
    n_sites = perms.shape[1]
    n_guest = int(n_guest)
    if not 0 <= n_guest <= n_sites:
        raise ValueError(f'n_guest must lie in [0, {n_sites}], got {n_guest}.')
    if max_configurations is not None and int(max_configurations) < 1:
        raise ValueError(f'max_configurations must be a positive integer or None, got {max_configurations}.')
    n_classes = count_inequivalent(perms, n_guest)
    n_arrangements = math.comb(n_sites, n_guest)

    if max_configurations is None or n_classes <= max_configurations:
        if n_arrangements > ENUMERATION_LIMIT:
            raise ValueError(
                f'{n_classes} inequivalent classes among C({n_sites}, {n_guest}) = {n_arrangements} arrangements: '
                f'too many to enumerate explicitly (limit {ENUMERATION_LIMIT}); set max_configurations '
                f'below {n_classes} to sample.'
            )
        combos = np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(n_sites), n_guest)),
            dtype=np.int64,
            count=n_arrangements * n_guest,
        ).reshape(n_arrangements, n_guest)
        masks = np.zeros((n_arrangements, n_sites), dtype=bool)
        np.put_along_axis(masks, combos, True, axis=1)
        keys = canonical_keys(masks, perms)
        codes, counts = np.unique(keys, return_counts=True)  # sorted
        if len(codes) != n_classes:
            raise RuntimeError(f'enumeration found {len(codes)} classes but Burnside counts {n_classes}.')
        multiplicities = counts
    else:
        generator = _as_rng(rng)
        found: dict[int, None] = {}
        drawn = 0
        while len(found) < max_configurations:
            if drawn >= max_draws:
                raise RuntimeError(f'found only {len(found)} distinct classes after {drawn} random draws.')
            order = np.argsort(generator.random((batch_size, n_sites)), axis=1)
            masks = np.zeros((batch_size, n_sites), dtype=bool)
            np.put_along_axis(masks, order[:, :n_guest], True, axis=1)
            drawn += batch_size
            for key in canonical_keys(masks, perms).tolist():
                if key not in found:
                    found[key] = None
                    if len(found) == max_configurations:
                        break
        codes = np.sort(np.fromiter(found, dtype=np.int64, count=len(found)))
        multiplicities = orbit_sizes(_decode(codes, n_sites), perms)

    masks = _decode(codes, n_sites)
    return [
        Configuration(occupied=tuple(int(i) for i in np.flatnonzero(mask)), multiplicity=int(mult), n_sites=n_sites)
        for mask, mult in zip(masks, multiplicities)
    ]


def draw_compositions(
    n_structures: int,
    n_sites: int,
    mode: str = 'grid',
    rng: np.random.Generator | int | None = None,
    x_values: Sequence[float] | None = None,
    stratum: int = 0,
) -> np.ndarray:
    """Number of guest atoms for each of ``n_structures`` structures.

    Parameters
    ----------
    n_structures
        How many structures to draw compositions for.
    n_sites
        Number of sites of the disordered sublattice (8 for the 2x2x2 halide sublattice).
    mode
        ``'grid'``: stratified over the fixed grid k = 0, 1, ..., n_sites (or ``round(x * n_sites)`` of the
        given ``x_values``): every grid point appears ``n_structures // len(grid)`` times; the remaining
        ``r = n_structures % len(grid)`` structures take ``r`` points spread evenly over the grid, so the
        batch spans the whole composition range even when it is smaller than the grid. Which points rotates
        with ``stratum``: ``len(grid)`` consecutive strata (the temperatures of a dataset) use every grid
        point exactly equally often.
        ``'binomial'``: for each structure draw x ~ U[0, 1], then k ~ Binomial(n_sites, x). Marginally
        this makes every k in 0..n_sites equally likely (a Beta(1, 1)-binomial) while the sites of a
        structure are filled as in a random alloy of composition x.
    rng
        Generator or seed (used by ``'binomial'`` only).
    x_values
        Grid of compositions in [0, 1] for ``'grid'``; each must be a multiple of ``1 / n_sites``.
    stratum
        Index of the batch (e.g. the temperature) in a stratified design over (x, T), ``'grid'`` only.

    Returns
    -------
    numpy.ndarray
        int64 counts [n_structures], each in [0, n_sites].
    """
    n_structures, n_sites = int(n_structures), int(n_sites)
    if n_structures < 0 or n_sites < 1:
        raise ValueError(f'need n_structures >= 0 and n_sites >= 1, got {n_structures}, {n_sites}.')
    if mode == 'grid':
        if x_values is None:
            grid = np.arange(n_sites + 1, dtype=np.int64)
        else:
            x = np.asarray(x_values, dtype=float).reshape(-1)
            if x.size == 0:
                raise ValueError(f'x_values must be a non-empty list of multiples of 1/{n_sites} in [0, 1].')
            try:
                grid = np.array([guest_count(value, n_sites) for value in x.tolist()], dtype=np.int64)
            except ValueError as exception:
                raise ValueError(f'x_values must be multiples of 1/{n_sites} in [0, 1]: {exception}.') from None
        size = len(grid)
        full, rest = divmod(n_structures, size)
        # The remainder: points (j * size + c) // rest, j < rest, are spread over the whole grid; the phase
        # c = stratum * rest mod size walks through the residues, so `size` consecutive strata use every grid
        # point equally often.
        extra = (np.arange(rest) * size + (int(stratum) * rest) % size) // rest if rest else np.zeros(0, int)
        return np.concatenate([np.tile(grid, full), grid[extra]]).astype(np.int64)
    if mode == 'binomial':
        if x_values is not None:
            raise ValueError("x_values is only used with mode='grid'.")
        generator = _as_rng(rng)
        x = generator.random(n_structures)
        return generator.binomial(n_sites, x).astype(np.int64)
    raise ValueError(f"mode must be 'grid' or 'binomial', got {mode!r}.")


def random_configuration(n_sites: int, n_guest: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Uniformly random occupation mask [n_sites] with exactly ``n_guest`` ``True`` entries."""
    if not 0 <= n_guest <= n_sites:
        raise ValueError(f'n_guest must lie in [0, {n_sites}], got {n_guest}.')
    mask = np.zeros(n_sites, dtype=bool)
    mask[_as_rng(rng).choice(n_sites, size=n_guest, replace=False)] = True
    return mask


def guest_count(x: float, n_sites: int) -> int:
    """Number of guest atoms ``k = x n_sites`` of composition ``x`` on a sublattice of ``n_sites`` sites.

    Raises
    ------
    ValueError
        Unless ``x`` is a number in [0, 1] and a multiple of ``1 / n_sites`` (within
        :data:`COMPOSITION_TOLERANCE` in ``x n_sites``).
    """
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not 0 <= x <= 1:
        raise ValueError(f'composition {x!r} is not a fraction in [0, 1]')
    count = round(float(x) * n_sites)
    if abs(float(x) * n_sites - count) > COMPOSITION_TOLERANCE:
        raise ValueError(f'composition {x} is not a multiple of 1/{n_sites}')
    return int(count)


def class_probabilities(energies: Sequence[float], multiplicities: Sequence[int], temperature: float) -> np.ndarray:
    """Probabilities of the symmetry classes of one composition in the configurational canonical ensemble.

    ``p_i = g_i exp(-(E_i - E_min) / k_B T) / Z`` with ``Z`` the sum of the numerators: a class counts once per
    arrangement it holds. T = 0 is the limit T -> 0+: the classes at the lowest energy, weighted by their
    multiplicities; T -> infinity gives ``g_i / sum(g)``, the random alloy.

    Parameters
    ----------
    energies
        [n] energies of the classes' representatives in eV, all of the same supercell (total, not per atom).
    multiplicities
        [n] number of arrangements of each class (>= 1).
    temperature
        K, >= 0.

    Returns
    -------
    numpy.ndarray
        [n] probabilities, summing to one.
    """
    energies = np.asarray(energies, dtype=float).reshape(-1)  # [n] eV
    weights = np.asarray(multiplicities, dtype=float).reshape(-1)  # [n]
    if energies.size == 0 or energies.shape != weights.shape:
        raise ValueError(f'need one multiplicity per energy and at least one class, got {energies.size} energies and '
                         f'{weights.size} multiplicities.')
    if not np.all(np.isfinite(energies)):
        raise ValueError('the energies contain NaN or inf.')
    if np.any(weights < 1):
        raise ValueError(f'multiplicities must be >= 1, got {weights.tolist()}.')
    temperature = float(temperature)
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f'temperature must be a finite number >= 0 K, got {temperature}.')
    excess = energies - energies.min()  # [n] eV, >= 0
    if temperature > 0:
        weights = weights * np.exp(-excess / (KB_EV * temperature))
    else:
        weights = np.where(excess == 0, weights, 0.0)
    return weights / weights.sum()


def kept_weights(energies: Sequence[float], multiplicities: Sequence[int], k: int,
                 temperature: float | None) -> tuple[np.ndarray, float]:
    """The weights of an ensemble of the ``k`` first classes (the lowest, ``energies`` sorted ascending), and the
    share of all the given classes' weight they hold (their coverage).

    ``temperature`` in K gives the Boltzmann weights there (:func:`class_probabilities`, multiplicities included);
    ``None`` gives the random alloy, ``g_i / sum(g)``: every arrangement equally likely, energies unused (the
    limit T -> infinity). With every class of the composition given and k of them all, the random alloy's average
    of a property of the arrangements is exact.

    Returns
    -------
    tuple
        [min(k, n)] weights summing to one, and the coverage in (0, 1].
    """
    energies = np.asarray(energies, dtype=float).reshape(-1)  # [n] eV
    multiplicity = np.asarray(multiplicities, dtype=float).reshape(-1)  # [n]
    if int(k) < 1:
        raise ValueError(f'k must be a positive integer, got {k}.')
    if energies.size and np.any(np.diff(energies) < 0):
        raise ValueError('the classes must be sorted by energy, lowest first.')
    k = min(int(k), energies.size)
    if temperature is None:
        if energies.size == 0 or energies.shape != multiplicity.shape or np.any(multiplicity < 1):
            raise ValueError(f'need one multiplicity >= 1 per class, got {multiplicity.tolist()}.')
        every = multiplicity / multiplicity.sum()
    else:
        every = class_probabilities(energies, multiplicity, temperature)
    kept = every[:k]
    return kept / kept.sum(), float(kept.sum())


def configurational_average(values: Sequence[float], energies: Sequence[float], multiplicities: Sequence[int],
                            temperature: float) -> float:
    """Boltzmann average ``sum_i p_i A_i`` of a property ``values`` [n] of the classes at ``temperature`` (K), with
    the probabilities of :func:`class_probabilities` (``energies`` [n] in eV, ``multiplicities`` [n])."""
    values = np.asarray(values, dtype=float).reshape(-1)  # [n]
    probabilities = class_probabilities(energies, multiplicities, temperature)
    if values.shape != probabilities.shape:
        raise ValueError(f'need one value per class: {values.size} values for {probabilities.size} classes.')
    return float(probabilities @ values)


def enumeration_table(parent: ase.Atoms, site: str, guest: str, supercell: Sequence[int] = (1, 1, 1),
                      max_configurations: int | None = None, symprec: float = 1e-3) -> dict:
    """How big is a screen: per number of guest atoms on the ``site`` sublattice of ``parent`` repeated by
    ``supercell``, the composition, the number of symmetry-inequivalent configurations (Burnside's lemma, over the
    space group spglib finds for the actual parent: no symmetry is assumed), the number of arrangements C(n, k), and
    whether a screen of ``max_configurations`` would enumerate every class or sample them.

    Parameters
    ----------
    parent
        A periodic structure, the sublattice fully occupied by ``site``.
    site, guest
        Element on the sublattice in the parent, and the element that substitutes it (x = guest fraction).
    supercell
        Three positive repeats of ``parent``.
    max_configurations
        The screen's cap on classes per composition (None: no cap, every class enumerated).

    Returns
    -------
    dict
        ``formula``, ``site``, ``guest``, ``supercell``, ``n_sites``, ``group_order`` (distinct permutations of the
        sublattice) and ``rows``: per ``n_guest`` 0..n, ``x``, ``n_configurations``, ``n_arrangements`` and ``mode``
        (``enumerate`` or ``sample``).

    Raises
    ------
    ValueError
        A non-periodic parent, a site element it does not have, a guest that is no element or is the site element,
        a bad supercell, or a sublattice larger than :data:`MAX_SITES`; each message names the fix.
    """
    from aiida_capthermo.core.structures import _check_element, sublattice_indices

    if not all(parent.pbc) or parent.cell.rank != 3:
        raise ValueError('the parent must be periodic in three dimensions with a full cell (read it from a CIF or '
                         'POSCAR, or set pbc=True and a cell).')
    _check_element(site, 'site')
    _check_element(guest, 'guest')
    present = sorted(set(parent.get_chemical_symbols()))
    if site not in present:
        raise ValueError(f'the parent has no {site} to substitute; its elements are {present}: choose one of them '
                         'as the site.')
    if guest == site:
        raise ValueError(f'the guest must differ from the site element ({site}): name the element that substitutes '
                         'it.')
    repeats = [int(n) for n in supercell]
    if len(repeats) != 3 or min(repeats) < 1 or any(float(n) != r for n, r in zip(supercell, repeats)):
        raise ValueError(f'the supercell must be three positive integers, got {list(supercell)}.')
    cell = parent.repeat(repeats)
    sites = sublattice_indices(cell, site)
    n_sites = len(sites)
    if n_sites > MAX_SITES:
        raise ValueError(f'the {site} sublattice of the {repeats} supercell has {n_sites} sites; at most {MAX_SITES} '
                         'are supported: choose a smaller supercell.')
    permutations = site_permutations(cell, sites, symprec=symprec)
    rows = []
    for n_guest in range(n_sites + 1):
        classes = count_inequivalent(permutations, n_guest)
        rows.append({'n_guest': n_guest, 'x': n_guest / n_sites, 'n_configurations': classes,
                     'n_arrangements': math.comb(n_sites, n_guest),
                     'mode': 'enumerate' if max_configurations is None or classes <= max_configurations
                     else 'sample'})
    return {'formula': cell.get_chemical_formula(), 'site': site, 'guest': guest, 'supercell': repeats,
            'n_sites': n_sites, 'group_order': len(permutations), 'max_configurations': max_configurations,
            'rows': rows}
