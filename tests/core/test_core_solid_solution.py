"""Tests of the configuration enumeration of ``aiida_capthermo.core.solid_solution``."""

import math
import time

import numpy as np
import pytest

from aiida_capthermo.core.solid_solution import (
    Configuration,
    canonical_keys,
    class_probabilities,
    configurational_average,
    count_inequivalent,
    draw_compositions,
    enumerate_configurations,
    guest_count,
    orbit_sizes,
    random_configuration,
    site_permutations,
)
from aiida_capthermo.core.structures import antiperovskite, sublattice_indices, substitute

# Inequivalent classes of k Br on the 8 halide sites of the 2x2x2 cell and their class sizes (sorted).
EXPECTED_2X2X2 = {
    0: [1],
    1: [8],
    2: [4, 12, 12],
    3: [8, 24, 24],
    4: [2, 6, 6, 8, 24, 24],
    5: [8, 24, 24],
    6: [4, 12, 12],
    7: [8],
    8: [1],
}


@pytest.fixture(scope='module')
def halide_2x2x2():
    supercell = antiperovskite().repeat((2, 2, 2))
    sites = sublattice_indices(supercell, 'I')
    return supercell, sites, site_permutations(supercell, sites)


@pytest.fixture(scope='module')
def halide_3x3x3():
    supercell = antiperovskite().repeat((3, 3, 3))
    sites = sublattice_indices(supercell, 'I')
    return site_permutations(supercell, sites)


def _orbits_by_brute_force(perms, n_sites, k):
    """Orbits of k-subsets with Python sets: independent of the vectorised integer codes."""
    import itertools

    remaining = {frozenset(c) for c in itertools.combinations(range(n_sites), k)}
    sizes = []
    while remaining:
        seed = next(iter(remaining))
        orbit = {frozenset(int(p[i]) for i in seed) for p in perms}
        remaining -= orbit
        sizes.append(len(orbit))
    return sorted(sizes)


def test_48_permutations_form_a_group(halide_2x2x2):
    supercell, sites, perms = halide_2x2x2
    assert perms.shape == (48, 8)
    assert len({tuple(p) for p in perms}) == 48
    assert any(np.array_equal(p, np.arange(8)) for p in perms)
    as_set = {tuple(p) for p in perms}
    for p in perms:
        for q in perms:
            assert tuple(q[p]) in as_set  # closed under composition
    # they come from the 384 space-group operations of the supercell (48 point operations x 8 lattice translations)
    import spglib

    cell = (supercell.cell[:], supercell.get_scaled_positions(), supercell.numbers)
    assert len(spglib.get_symmetry(cell, symprec=1e-5)['rotations']) == 384
    # a partly substituted cell has the same parent symmetry
    mixed = substitute(supercell, sites, np.array([1, 1, 0, 0, 0, 0, 0, 1], dtype=bool), 'Br')
    assert np.array_equal(site_permutations(mixed, sites), perms)


def test_permutations_map_positions(halide_2x2x2):
    """Every permutation is a rigid motion of the halide sublattice: pair distances are preserved."""
    supercell, sites, perms = halide_2x2x2
    distances = supercell.get_all_distances(mic=True)[np.ix_(sites, sites)]
    for p in perms:
        assert np.allclose(distances[np.ix_(p, p)], distances)


@pytest.mark.parametrize('k', range(9))
def test_enumeration_2x2x2_matches_burnside_and_brute_force(halide_2x2x2, k):
    _, _, perms = halide_2x2x2
    configurations = enumerate_configurations(perms, k)
    assert len(configurations) == count_inequivalent(perms, k) == len(EXPECTED_2X2X2[k])
    multiplicities = sorted(c.multiplicity for c in configurations)
    assert multiplicities == EXPECTED_2X2X2[k] == _orbits_by_brute_force(perms, 8, k)
    assert sum(multiplicities) == math.comb(8, k)
    for c in configurations:
        assert c.n_sites == 8 and c.n_guest == k and c.x == pytest.approx(k / 8)
        assert c.occupation_mask().sum() == k
        assert 48 % c.multiplicity == 0
    codes = canonical_keys(np.array([c.occupation_mask() for c in configurations]), perms)
    assert np.all(np.diff(codes) > 0)  # distinct and sorted by canonical form


def test_total_class_count_2x2x2(halide_2x2x2):
    _, _, perms = halide_2x2x2
    assert sum(count_inequivalent(perms, k) for k in range(9)) == 22


def test_max_configurations_samples_distinct_classes(halide_2x2x2):
    _, _, perms = halide_2x2x2
    sample = enumerate_configurations(perms, 4, max_configurations=3, rng=7)
    assert len(sample) == 3
    assert len({c.occupied for c in sample}) == 3
    full = {c.occupied: c.multiplicity for c in enumerate_configurations(perms, 4)}
    for c in sample:
        assert full[c.occupied] == c.multiplicity
    assert sample == enumerate_configurations(perms, 4, max_configurations=3, rng=7)


def test_3x3x3_sampling_is_fast_distinct_and_reproducible(halide_3x3x3):
    perms = halide_3x3x3
    assert perms.shape == (1296, 27)  # 27 translations x 48 point operations, all distinct on Z_3^3
    n_classes = count_inequivalent(perms, 13)
    # Burnside over the 1296 operations, k = 0..13 (docs/solid-solutions.md quotes this list)
    assert [count_inequivalent(perms, k) for k in range(14)] == [1, 1, 3, 10, 34, 105, 321, 846, 1984, 4023, 7074,
                                                                 10770, 14253, 16384]
    assert count_inequivalent(perms, 14) == n_classes == 16384  # k <-> 27 - k
    start = time.perf_counter()
    sample = enumerate_configurations(perms, 13, max_configurations=100, rng=2024)
    elapsed = time.perf_counter() - start
    assert elapsed < 20.0
    print(f'\n100 of {n_classes} classes of k = 13 on 27 sites sampled in {elapsed:.2f} s')  # docs/solid-solutions.md
    assert len(sample) == 100
    masks = np.array([c.occupation_mask() for c in sample])
    assert np.all(masks.sum(axis=1) == 13)
    codes = canonical_keys(masks, perms)
    assert len(np.unique(codes)) == 100 and np.all(np.diff(codes) > 0)
    assert np.array_equal(orbit_sizes(masks, perms), [c.multiplicity for c in sample])
    assert all(1296 % c.multiplicity == 0 for c in sample)
    assert sample == enumerate_configurations(perms, 13, max_configurations=100, rng=2024)
    assert sample != enumerate_configurations(perms, 13, max_configurations=100, rng=2025)
    with pytest.raises(ValueError, match='max_configurations'):
        enumerate_configurations(perms, 13)


def test_3x3x3_small_k_full_enumeration(halide_3x3x3):
    perms = halide_3x3x3
    for k in (1, 2, 3):
        configurations = enumerate_configurations(perms, k)
        assert len(configurations) == count_inequivalent(perms, k)
        assert sum(c.multiplicity for c in configurations) == math.comb(27, k)
    # two guests: classified by the separation vector up to sign and axis permutation -> (1,0,0), (1,1,0), (1,1,1)
    assert len(enumerate_configurations(perms, 2)) == 3


def test_burnside_on_a_cyclic_group():
    """Necklaces: 2-colourings of a 6-cycle under rotations, k=3 -> 4 classes (textbook value)."""
    rotations = np.array([np.roll(np.arange(6), s) for s in range(6)])
    assert count_inequivalent(rotations, 3) == 4
    assert len(enumerate_configurations(rotations, 3)) == 4
    with pytest.raises(ValueError, match='group'):
        count_inequivalent(rotations[:5], 3)


def test_draw_compositions():
    grid = draw_compositions(20, 8, mode='grid')
    assert grid.tolist() == list(range(9)) + list(range(9)) + [0, 4]  # the remainder spans the range
    custom = draw_compositions(5, 8, mode='grid', x_values=[0.0, 0.5, 1.0])
    assert custom.tolist() == [0, 4, 8, 0, 4]
    with pytest.raises(ValueError, match='multiples'):
        draw_compositions(5, 8, mode='grid', x_values=[0.3])
    counts = draw_compositions(9000, 8, mode='binomial', rng=3)
    assert counts.min() >= 0 and counts.max() <= 8
    assert np.array_equal(counts, draw_compositions(9000, 8, mode='binomial', rng=3))
    # x ~ U[0,1], k ~ Bin(8, x) is uniform over k = 0..8: each frequency 1/9 within 5 sigma
    frequencies = np.bincount(counts, minlength=9) / 9000
    assert np.all(np.abs(frequencies - 1 / 9) < 5 * np.sqrt((1 / 9) * (8 / 9) / 9000))
    with pytest.raises(ValueError, match='mode'):
        draw_compositions(3, 8, mode='uniform')


@pytest.mark.parametrize('n_per', [1, 3, 5, 9, 12, 20])
def test_grid_compositions_stratified_over_temperature(n_per):
    """Each temperature's batch spans the composition range; together the temperatures cover every grid point
    as evenly as the sizes allow (counts per (x, T) cell differ by at most one)."""
    n_t = 9
    counts = np.array([np.bincount(draw_compositions(n_per, 8, mode='grid', stratum=t), minlength=9)
                       for t in range(n_t)])  # [T, x]
    assert np.all(counts.sum(axis=1) == n_per)
    assert np.all(counts.max(axis=1) - counts.min(axis=1) <= 1)  # balanced within every temperature
    drawn = [np.flatnonzero(row) for row in counts]
    if n_per >= 2:  # every temperature reaches both halves of the composition range
        assert all(k.min() <= 4 and k.max() >= 4 for k in drawn)
    if n_per >= 9:
        assert np.all(counts >= n_per // 9)  # every x at every T
    assert np.all(counts.sum(axis=0) == n_per)  # nine temperatures use every x equally often


def test_random_configuration():
    mask = random_configuration(8, 3, rng=1)
    assert mask.dtype == bool and mask.sum() == 3
    assert np.array_equal(mask, random_configuration(8, 3, rng=1))
    with pytest.raises(ValueError):
        random_configuration(8, 9)


def test_configuration_dataclass():
    c = Configuration(occupied=(1, 4), multiplicity=12, n_sites=8)
    assert c.x == 0.25
    assert c.occupation_mask().tolist() == [False, True, False, False, True, False, False, False]


# ------------------------------------------------------------------------------------ configurational statistics
KB_EV = 8.617333262e-5  # Boltzmann constant, eV/K (CODATA 2018)


def test_two_classes_by_hand():
    """Class A (g = 2) at 0 and class B (g = 6) 25 meV above: p_B / p_A = 3 exp(-0.025 / kT), by hand at 300 K."""
    energies, multiplicities = [0.0, 0.025], [2, 6]
    ratio = 3.0 * math.exp(-0.025 / (KB_EV * 300.0))  # 0.9011...
    expected = np.array([1.0, ratio]) / (1.0 + ratio)
    np.testing.assert_allclose(class_probabilities(energies, multiplicities, 300.0), expected, rtol=1e-9)
    # the reference energy does not matter, only the differences
    np.testing.assert_allclose(class_probabilities([-80.0, -79.975], multiplicities, 300.0), expected, rtol=1e-9)
    # the average of a property of the classes: sum p_i A_i
    assert configurational_average([1.0, 3.0], energies, multiplicities, 300.0) == pytest.approx(
        (1.0 + 3.0 * ratio) / (1.0 + ratio), rel=1e-9)


def test_limits_of_low_and_high_temperature():
    energies, multiplicities = [0.3, 0.0, 0.1], [24, 4, 12]
    # T -> 0: the lowest class alone; T = 0 is that limit
    np.testing.assert_allclose(class_probabilities(energies, multiplicities, 0.0), [0, 1, 0])
    np.testing.assert_allclose(class_probabilities(energies, multiplicities, 1.0), [0, 1, 0], atol=1e-300)
    # T -> infinity: the random alloy, each class by its share of the arrangements g_i / sum(g)
    np.testing.assert_allclose(class_probabilities(energies, multiplicities, 1e9), np.array([24, 4, 12]) / 40,
                               rtol=1e-5)
    # degenerate lowest classes share T = 0 by their multiplicities (the T -> 0+ limit)
    np.testing.assert_allclose(class_probabilities([0.0, 0.0, 0.2], [1, 3, 8], 0.0), [0.25, 0.75, 0.0])
    np.testing.assert_allclose(class_probabilities([0.0, 0.0, 0.2], [1, 3, 8], 1e-3), [0.25, 0.75, 0.0])


def test_class_probabilities_reject_bad_input():
    with pytest.raises(ValueError, match='multiplicity per energy'):
        class_probabilities([0.0, 1.0], [1], 300.0)
    with pytest.raises(ValueError, match='>= 1'):
        class_probabilities([0.0, 1.0], [1, 0], 300.0)
    with pytest.raises(ValueError, match='>= 0 K'):
        class_probabilities([0.0], [1], -1.0)
    with pytest.raises(ValueError, match='NaN'):
        class_probabilities([0.0, np.nan], [1, 1], 300.0)


def test_guest_count_on_the_grid():
    assert [guest_count(x, 8) for x in (0, 0.125, 0.5, 1.0)] == [0, 1, 4, 8]
    assert guest_count(1 / 3, 27) == 9 and guest_count(np.float64(0.25), 8) == 2
    with pytest.raises(ValueError, match='not a multiple of 1/8'):
        guest_count(0.3, 8)
    for bad in (1.5, -0.125, '0.5', True):
        with pytest.raises(ValueError, match=r'not a fraction in \[0, 1\]'):
            guest_count(bad, 8)


def test_random_alloy_weights_average_every_arrangement_equally(halide_2x2x2):
    """The random alloy's weights (multiplicity over the total) average a property of the arrangements as the
    plain mean over all C(8, 4) = 70 arrangements does, counted here one by one: the property is the number of
    nearest guest-guest pairs on the halide sublattice (invariant under the cell's symmetry, so one number per
    class). The Boltzmann weights at 800 K of two classes and the coverage of a truncated ensemble are checked by
    hand."""
    import itertools

    from aiida_capthermo.core.solid_solution import kept_weights

    supercell, sites, perms = halide_2x2x2
    distances = supercell.get_all_distances(mic=True)[np.ix_(sites, sites)]  # [8, 8] Å
    nearest = np.isclose(distances, distances[distances > 0.1].min(), atol=1e-6)  # [8, 8]

    def pairs(occupied) -> int:
        mask = np.zeros(len(sites), dtype=bool)
        mask[list(occupied)] = True
        return int(nearest[np.ix_(mask, mask)].sum()) // 2

    brute = np.mean([pairs(c) for c in itertools.combinations(range(len(sites)), 4)])
    classes = enumerate_configurations(perms, 4)
    values = np.array([pairs(c.occupied) for c in classes])
    order = np.argsort(values, kind='stable')  # "energies": J = 10 meV per pair, sorted lowest first
    energies, multiplicity = 0.01 * values[order], [classes[i].multiplicity for i in order]
    weights, coverage = kept_weights(energies, multiplicity, k=len(classes), temperature=None)
    assert coverage == 1.0 and weights @ values[order] == pytest.approx(brute, abs=1e-12)
    assert 0 < brute < 12  # not a trivial property: the classes differ in it
    # truncated: the first two classes, their share of the 70 arrangements
    weights, coverage = kept_weights(energies, multiplicity, k=2, temperature=None)
    assert coverage == pytest.approx((multiplicity[0] + multiplicity[1]) / 70)
    np.testing.assert_allclose(weights, np.array(multiplicity[:2]) / (multiplicity[0] + multiplicity[1]))
    # Boltzmann at 800 K over the first two, by hand
    weights, coverage = kept_weights(energies, multiplicity, k=2, temperature=800.0)
    boltzmann = np.array(multiplicity, dtype=float) * np.exp(-(energies - energies[0]) / (8.617333262e-5 * 800.0))
    np.testing.assert_allclose(weights, boltzmann[:2] / boltzmann[:2].sum(), rtol=1e-7)
    assert coverage == pytest.approx(boltzmann[:2].sum() / boltzmann.sum(), rel=1e-7)
    with pytest.raises(ValueError, match='sorted by energy'):
        kept_weights(energies[::-1], multiplicity[::-1], k=2, temperature=None)
