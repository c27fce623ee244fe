"""``enumeration_table`` (``capthermo enumerate``) on two families the package was not built for, against a
brute-force orbit count and the space groups' known orders."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from aiida_capthermo.core.solid_solution import enumeration_table, site_permutations
from aiida_capthermo.core.structures import sublattice_indices


def perovskite() -> Atoms:
    """Cubic CsPbI3 (Pm-3m), 5 atoms."""
    return Atoms('CsPbI3', scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)],
                 cell=[6.3] * 3, pbc=True)


def wurtzite() -> Atoms:
    """Wurtzite ZnO (P6_3mc), 4 atoms, hexagonal cell."""
    return bulk('ZnO', 'wurtzite', a=3.25, c=5.2)


def brute_force_classes(permutations: np.ndarray, n_sites: int, n_guest: int) -> int:
    """Orbits of the n_guest-subsets under the permutations, by applying every permutation to every subset (sets of
    tuples; no canonical codes, no Burnside)."""
    seen, classes = set(), 0
    for subset in itertools.combinations(range(n_sites), n_guest):
        if subset in seen:
            continue
        classes += 1
        for perm in permutations:
            seen.add(tuple(sorted(int(perm[i]) for i in subset)))
    return classes


@pytest.mark.parametrize(('parent', 'site', 'group_order', 'guests'), [
    (perovskite, 'I', 48 * 8, [0, 1, 2, 3, 4, 20, 21, 22, 23, 24]),  # Oh x 8 translations; C(24, 12) is too many
    (wurtzite, 'O', 12 * 8, range(17)),  # C6v x 8 translations; every composition
])
def test_counts_equal_a_brute_force_orbit_count(parent, site, group_order, guests):
    table = enumeration_table(parent(), site, 'Br' if site == 'I' else 'S', (2, 2, 2))
    cell = parent().repeat(2)
    permutations = site_permutations(cell, sublattice_indices(cell, site))
    assert table['group_order'] == len(permutations) == group_order
    n_sites = table['n_sites']
    assert n_sites == len(sublattice_indices(cell, site))
    for k in guests:
        row = table['rows'][k]
        assert row['n_configurations'] == brute_force_classes(permutations, n_sites, k), k
        assert row['x'] == k / n_sites
    assert [row['n_configurations'] for row in table['rows']] == [row['n_configurations']
                                                                  for row in table['rows'][::-1]]  # x <-> 1 - x


def test_max_configurations_says_which_compositions_are_sampled():
    table = enumeration_table(wurtzite(), 'O', 'S', (2, 2, 2), max_configurations=38)
    modes = {row['n_guest']: row['mode'] for row in table['rows']}
    assert modes[4] == 'enumerate' and modes[5] == 'sample' and modes[8] == 'sample' and modes[12] == 'enumerate'
    assert json.loads(json.dumps(table)) == table  # what --json prints


@pytest.mark.parametrize(('change', 'message'), [
    ({'site': 'Cl'}, 'has no Cl to substitute'),
    ({'guest': 'O'}, 'must differ from the site element'),
    ({'guest': 'Xx'}, 'not a chemical element'),
    ({'supercell': (2, 0, 1)}, 'three positive integers'),
    ({'supercell': (5, 5, 5)}, 'at most 62'),
])
def test_bad_input_is_refused_with_the_fix(change, message):
    arguments = {'site': 'O', 'guest': 'S', 'supercell': (2, 2, 2), **change}
    with pytest.raises(ValueError, match=message):
        enumeration_table(wurtzite(), **arguments)


def test_a_molecule_is_not_a_parent():
    with pytest.raises(ValueError, match='periodic'):
        enumeration_table(Atoms('CO', positions=[(0, 0, 0), (0, 0, 1.1)]), 'O', 'S')
