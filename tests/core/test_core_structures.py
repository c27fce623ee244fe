"""Tests of the anti-perovskite prototype and structure transforms (``aiida_capthermo.core.structures``)."""

import numpy as np
import pytest
import spglib

from aiida_capthermo.core.structures import (
    antiperovskite,
    composition_x,
    end_member,
    scale_to_lattice,
    sublattice_indices,
    substitute,
    vegard_lattice_parameter,
)


def test_prototype_cell_and_space_group():
    atoms = antiperovskite()
    assert atoms.get_chemical_symbols() == ['I', 'S', 'Ag', 'Ag', 'Ag']
    assert np.allclose(atoms.cell.array, np.eye(3) * 4.869)
    expected = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    assert np.allclose(atoms.get_scaled_positions(), expected)
    assert all(atoms.pbc)
    for cell in (atoms, atoms.repeat((2, 2, 2))):
        spglib_cell = (cell.cell.array, cell.get_scaled_positions(), cell.numbers)
        dataset = spglib.get_symmetry_dataset(spglib_cell, symprec=1e-3)
        assert dataset.number == 221
    assert len(atoms.repeat((2, 2, 2))) == 40


def test_vegard_endpoints_of_the_2x2x2_cell():
    assert 2 * vegard_lattice_parameter(0.0) == pytest.approx(9.738, abs=1e-12)
    assert 2 * vegard_lattice_parameter(1.0) == pytest.approx(9.586, abs=1e-12)
    assert 2 * vegard_lattice_parameter(0.5) == pytest.approx(0.5 * (9.738 + 9.586), abs=1e-12)
    for bad in (-0.01, 1.01):
        with pytest.raises(ValueError, match=r'\[0, 1\]'):
            vegard_lattice_parameter(bad)


def test_scale_to_lattice_keeps_fractional_coordinates():
    supercell = antiperovskite().repeat((2, 2, 2))
    target = 2 * vegard_lattice_parameter(0.375)
    scaled = scale_to_lattice(supercell, target / supercell.cell.lengths()[0])
    assert np.allclose(scaled.cell.lengths(), target)
    assert np.allclose(scaled.get_scaled_positions(), supercell.get_scaled_positions())
    same = scale_to_lattice(supercell, np.eye(3) * target)
    assert np.allclose(same.positions, scaled.positions)
    assert np.allclose(supercell.cell.lengths(), 9.738)  # input untouched
    with pytest.raises(ValueError):
        scale_to_lattice(supercell, -1.0)
    with pytest.raises(ValueError):
        scale_to_lattice(supercell, np.zeros((3, 3)))


def test_bad_species_raise():
    with pytest.raises(ValueError, match='Xx'):
        antiperovskite(x='Xx')
    with pytest.raises(ValueError, match='distinct'):
        antiperovskite(a='Ag', b='S', x='S')
    with pytest.raises(ValueError, match='positive'):
        antiperovskite(lattice_parameter=0.0)


def test_sublattice_substitute_and_composition():
    supercell = antiperovskite().repeat((2, 2, 2))
    halides = sublattice_indices(supercell, 'I')
    assert halides.tolist() == [0, 5, 10, 15, 20, 25, 30, 35]
    assert len(sublattice_indices(supercell, ['Ag', 'S'])) == 32
    mask = np.array([True, False, True, False, False, False, True, False])
    mixed = substitute(supercell, halides, mask, 'Br')
    assert [mixed[i].symbol for i in halides] == ['Br', 'I', 'Br', 'I', 'I', 'I', 'Br', 'I']
    assert supercell.get_chemical_symbols().count('Br') == 0  # input untouched
    assert np.allclose(mixed.positions, supercell.positions)
    assert composition_x(mixed, host='I', guest='Br') == pytest.approx(3 / 8)
    assert sorted(sublattice_indices(mixed, ('I', 'Br')).tolist()) == halides.tolist()
    with pytest.raises(ValueError, match='boolean'):
        substitute(supercell, halides, np.ones(8, dtype=int), 'Br')
    with pytest.raises(ValueError, match='entries'):
        substitute(supercell, halides, np.ones(7, dtype=bool), 'Br')
    with pytest.raises(ValueError, match='neither'):
        composition_x(supercell, host='Cl', guest='Br')


PROTOTYPE = {'a': 'Ag', 'b': 'S', 'host': 'I', 'guest': 'Br', 'a_host': 4.869, 'a_guest': 4.793}


def test_end_members_of_a_prototype():
    """The host and guest end members: [X, B, A, A, A] at their own lattice parameters."""
    host, guest = end_member(PROTOTYPE), end_member(PROTOTYPE, 'Br')
    assert host.get_chemical_symbols() == ['I', 'S', 'Ag', 'Ag', 'Ag']
    assert guest.get_chemical_symbols() == ['Br', 'S', 'Ag', 'Ag', 'Ag']
    np.testing.assert_allclose(host.cell[:], 4.869 * np.eye(3))
    np.testing.assert_allclose(guest.cell[:], 4.793 * np.eye(3))
    np.testing.assert_allclose(guest.get_scaled_positions(), antiperovskite().get_scaled_positions())
    with pytest.raises(ValueError, match='neither the host'):
        end_member(PROTOTYPE, 'Cl')


def test_perpendicular_widths_and_the_shortest_image():
    """Widths between opposite faces, against the reciprocal lattice (1 / |b_j|, b = the rows of A^-T) for a cubic,
    a hexagonal and a triclinic cell; no lattice vector (a brute-force search over n_j in [-3, 3]) is shorter than
    the smallest width; the hexagonal in-plane width is a sqrt(3) / 2."""
    import itertools

    from aiida_capthermo.core.structures import perpendicular_widths

    cubic = np.eye(3) * 4.869
    hexagonal = np.array([[3.25, 0, 0], [-1.625, 3.25 * np.sqrt(3) / 2, 0], [0, 0, 5.21]])
    triclinic = np.array([[5.0, 0.3, 0.2], [1.1, 4.2, -0.4], [0.7, 1.3, 6.1]])
    for cell in (cubic, hexagonal, triclinic):
        widths = perpendicular_widths(cell)
        np.testing.assert_allclose(widths, 1 / np.linalg.norm(np.linalg.inv(cell).T, axis=1), rtol=1e-12)
        shortest = min(np.linalg.norm(np.array(n) @ cell) for n in itertools.product(range(-3, 4), repeat=3) if any(n))
        assert shortest >= widths.min() - 1e-12
    np.testing.assert_allclose(perpendicular_widths(hexagonal), [3.25 * np.sqrt(3) / 2] * 2 + [5.21], rtol=1e-12)
    np.testing.assert_allclose(perpendicular_widths(cubic), [4.869] * 3)


def test_cutoff_error_names_the_supercell_that_fits():
    """A 2x2x2 cubic cell of 4.793 Å (9.586 Å wide) takes a 5.5 Å GNN cutoff and refuses a 10 Å one, naming
    [3, 3, 3]. A hexagonal cell (2.81 Å wide in plane, 5.21 Å along c) refuses a 5 Å r_max and names [2, 2, 1]
    (5.63 Å in plane), which takes it."""
    from aiida_capthermo.core.structures import cutoff_error, perpendicular_widths

    cubic = np.eye(3) * 4.793
    assert cutoff_error(cubic, [2, 2, 2], {'GNN cutoff': 5.5}) is None
    message = cutoff_error(cubic, [2, 2, 2], {'GNN cutoff': 10.0})
    assert 'is 9.59 Å wide' in message and 'at least [3, 3, 3]' in message
    hexagonal = np.array([[3.25, 0, 0], [-1.625, 3.25 * np.sqrt(3) / 2, 0], [0, 0, 5.21]])
    message = cutoff_error(hexagonal, [1, 1, 1], {'MACE r_max': 5.0})
    assert 'is 2.81 Å wide' in message and 'at least [2, 2, 1]' in message
    assert perpendicular_widths(hexagonal * np.array([2, 2, 1])[:, None]).min() > 5.0
    assert cutoff_error(hexagonal, [2, 2, 1], {'MACE r_max': 5.0}) is None
