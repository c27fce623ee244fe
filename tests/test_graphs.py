"""Periodic radius graph against independent neighbour lists (ase, matscipy), node features, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list

from aiida_capthermo.core.graphs import (
    MinMaxScaler,
    bond_types,
    node_features,
    radius_graph_pbc,
    radius_graph_pbc_loop,
    radius_graphs_pbc,
)

A_AG3SI = 4.869  # Å, cubic Ag3SI


def ag3si(repeat=1, rattle=0.0, seed=0) -> Atoms:
    """Cubic anti-perovskite Ag3SI: I at the corner, S at the body centre, Ag on the face centres."""
    atoms = Atoms('ISAg3', scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
                  cell=np.eye(3) * A_AG3SI, pbc=True).repeat(repeat)
    if rattle:
        atoms.positions += np.random.default_rng(seed).uniform(-rattle, rattle, size=atoms.positions.shape)
    return atoms


def ase_edges(atoms, cutoff):
    i, j, shifts = neighbor_list('ijS', atoms, cutoff, self_interaction=False)
    return set(map(tuple, np.column_stack([i, j, shifts]).tolist()))


def cases():
    skewed = Atoms('AgS', positions=[(0.1, 0.2, 0.3), (1.9, 1.4, 0.8)],
                   cell=[[3.1, 0, 0], [1.6, 2.7, 0], [0.9, 0.4, 2.9]], pbc=True)
    outside = ag3si(2, rattle=0.3, seed=3)
    outside.positions[:5] += [[10.3, -4.1, 25.0], [-9.8, 0, 0], [0, 0, -30.2], [5, 5, 5], [-0.01, 0, 0]]
    return {
        'ag3si_5': ag3si(1),
        'ag3si_5_displaced': ag3si(1, rattle=0.4, seed=1),
        'ag3si_40': ag3si(2),
        'ag3si_40_displaced': ag3si(2, rattle=0.4, seed=2),
        'one_atom_small_cell': Atoms('Ag', positions=[(0.3, 0.2, 0.1)], cell=np.eye(3) * 2.1, pbc=True),
        'skewed_small_cell': skewed,
        'positions_outside_cell': outside,
    }


@pytest.mark.parametrize('name', list(cases()))
def test_edges_match_ase_neighbour_list(name):
    atoms = cases()[name]
    graph = radius_graph_pbc(atoms.positions, atoms.cell[:], 5.5)
    reference = ase_edges(atoms, 5.5)
    assert graph.edge_set() == reference
    assert graph.n_edges == len(reference)  # no duplicates
    # distances and vectors agree with the geometry of the positions as given
    i, j = graph.edge_index
    expected = atoms.positions[j] + graph.shifts @ atoms.cell[:] - atoms.positions[i]
    np.testing.assert_allclose(graph.vectors, expected, atol=1e-10)
    np.testing.assert_allclose(graph.distances, np.linalg.norm(expected, axis=1), atol=1e-10)
    assert np.all(graph.distances < 5.5)


def test_self_image_edges_and_counts_small_cell():
    """The 5-atom cell is smaller than the cutoff: every atom sees its own images at a and a*sqrt(2)."""
    atoms = ag3si(1)
    graph = radius_graph_pbc(atoms.positions, atoms.cell[:], 5.5)
    i, j = graph.edge_index
    self_edges = (i == j)
    # 6 images at a = 4.869 Å per atom (a*sqrt(2) = 6.89 Å is beyond the cutoff): 5 * 6 = 30 self-edges
    assert self_edges.sum() == 30
    np.testing.assert_allclose(graph.distances[self_edges], A_AG3SI)
    # the 40-atom supercell has exactly 8x the edges of the 5-atom cell (same local environments)
    big = ag3si(2)
    assert radius_graph_pbc(big.positions, big.cell[:], 5.5).n_edges == 8 * graph.n_edges


def test_matches_matscipy():
    matscipy = pytest.importorskip('matscipy.neighbours')
    atoms = ag3si(2, rattle=0.3, seed=7)
    i, j, shifts = matscipy.neighbour_list('ijS', atoms, 5.5)
    reference = set(map(tuple, np.column_stack([i, j, shifts]).tolist()))
    assert radius_graph_pbc(atoms.positions, atoms.cell[:], 5.5).edge_set() == reference


def test_loop_reference_agrees():
    for atoms in (ag3si(1, rattle=0.3, seed=4), cases()['skewed_small_cell'], cases()['positions_outside_cell']):
        fast = radius_graph_pbc(atoms.positions, atoms.cell[:], 5.5)
        slow = radius_graph_pbc_loop(atoms.positions, atoms.cell[:], 5.5)
        assert fast.edge_set() == slow.edge_set()


def test_bad_input():
    with pytest.raises(ValueError, match='singular'):
        radius_graph_pbc(np.zeros((1, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match='cutoff'):
        radius_graph_pbc(np.zeros((1, 3)), np.eye(3), cutoff=0)


def test_node_features_from_tables():
    from ase.data import atomic_masses
    from pymatgen.core.periodic_table import Element

    features = node_features([47, 16, 53, 35])
    assert features.shape == (4, 4)
    np.testing.assert_allclose(features[:, 0], [47, 16, 53, 35])
    np.testing.assert_allclose(features[:, 1], atomic_masses[[47, 16, 53, 35]])
    np.testing.assert_allclose(features[:, 3], [Element(s).X for s in ('Ag', 'S', 'I', 'Br')])
    scaler = MinMaxScaler.fit(features)
    scaled = scaler.transform(features)
    np.testing.assert_allclose(scaled.min(axis=0), 0)
    np.testing.assert_allclose(scaled.max(axis=0), 1)
    np.testing.assert_allclose(MinMaxScaler.from_dict(scaler.to_dict()).inverse(scaled), features)


def test_bond_types():
    atoms = ag3si(1)
    graph = radius_graph_pbc(atoms.positions, atoms.cell[:], 3.0)  # Ag-S (2.43 Å) and Ag-I (3.44 Å) > 3: only Ag-S
    assert set(bond_types(atoms.numbers, graph.edge_index)) == {'Ag-S'}
    assert graph.n_edges == 12  # 6 Ag around S, each Ag with 2 S, both directions


def test_batched_graphs_equal_single_graphs():
    """Mixed sizes and cells in one call, tiny chunks: every graph equals its own single-structure graph."""
    frames = list(cases().values()) + [ag3si(2, rattle=0.2, seed=s) for s in range(5)]
    batched = radius_graphs_pbc([a.positions for a in frames], [a.cell[:] for a in frames], 5.5, max_elements=20_000)
    for atoms, graph in zip(frames, batched):
        assert graph.edge_set() == ase_edges(atoms, 5.5)
