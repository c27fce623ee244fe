"""The end members of a solid solution from any parent, and Vegard's cells between them (core.structures)."""

import numpy as np
import pytest
from ase.build import bulk

from aiida_capthermo.core.structures import (
    antiperovskite,
    end_members,
    end_members_error,
    guest_end_member,
    nearest_neighbour_distance,
    parent_error,
    vegard_lattice_parameter,
    vegard_structure,
)

PRESET = {'a': 'Ag', 'b': 'S', 'host': 'I', 'guest': 'Br', 'a_host': 4.869, 'a_guest': 4.793}


def wurtzite(a: float, c: float, u: float, anion: str = 'O'):
    """ZnO-type wurtzite with internal parameter u, atoms [Zn, O, Zn, O]: ASE puts the second O at z = 1 - u above
    the first Zn (the bond along c is u * c long)."""
    return bulk(f'Zn{anion}', 'wurtzite', a=a, c=c, u=u)


def test_preset_end_members_are_the_cubic_cells_and_vegard_is_the_lattice_parameter_law():
    host, guest = end_members(PRESET)
    assert host.get_chemical_formula() == 'Ag3IS' and guest.get_chemical_formula() == 'Ag3BrS'
    np.testing.assert_allclose(host.cell.lengths(), 4.869)
    np.testing.assert_allclose(guest.cell.lengths(), 4.793)
    for x in (0.0, 0.25, 0.5, 1.0):
        cell = vegard_structure(host.repeat(2), guest.repeat(2), x).cell.array
        np.testing.assert_allclose(cell, np.eye(3) * 2 * vegard_lattice_parameter(x, 4.869, 4.793), atol=1e-12)
    # a given host parent: the guest is substituted and scaled by the preset's ratio, atom for atom
    given = antiperovskite('Ag', 'S', 'I', 5.0)
    host, guest = end_members(PRESET, given)
    np.testing.assert_allclose(guest.cell.lengths(), 5.0 * 4.793 / 4.869)
    assert guest.get_chemical_symbols() == ['Br', 'S', 'Ag', 'Ag', 'Ag']


def test_vegard_interpolates_the_whole_cell_and_the_internal_coordinates():
    """Wurtzite's u is not fixed by symmetry: both end members have their own, and x interpolates it (and a, c)."""
    host = wurtzite(3.25, 5.20, 0.380)
    guest = wurtzite(3.85, 6.25, 0.375, anion='S')
    mixed = vegard_structure(host, guest, 0.25)
    assert mixed.get_chemical_symbols() == host.get_chemical_symbols()  # the species are the caller's
    np.testing.assert_allclose(mixed.cell.cellpar()[:3], [3.40, 3.40, 5.4625], atol=1e-12)
    np.testing.assert_allclose(mixed.cell.cellpar()[3:], [90, 90, 120], atol=1e-9)
    frac = mixed.get_scaled_positions()
    u = 1 - (frac[3, 2] - frac[0, 2])  # at x = 0.25: 0.380 - 0.25 * 0.005
    assert u == pytest.approx(0.37875, abs=1e-12)
    # an atom that crossed the cell boundary in one end member is not dragged across the cell
    shifted = guest.copy()
    frac_guest = shifted.get_scaled_positions(wrap=False)
    frac_guest[0, 2] += 1.0
    shifted.set_scaled_positions(frac_guest)
    np.testing.assert_allclose(vegard_structure(host, shifted, 0.5).get_scaled_positions(),
                               vegard_structure(host, guest, 0.5).get_scaled_positions(), atol=1e-12)


def test_guest_end_member_takes_every_host_site_and_keeps_the_order():
    host = wurtzite(3.25, 5.20, 0.38)
    guest = guest_end_member(host, 'O', 'S')
    assert guest.get_chemical_symbols() == ['Zn', 'S', 'Zn', 'S']
    np.testing.assert_array_equal(guest.positions, host.positions)
    with pytest.raises(ValueError, match='no Cl site'):
        guest_end_member(host, 'Cl', 'Br')


@pytest.mark.parametrize('change, message', [
    ({'host': 'Cl'}, 'has no Cl to substitute: the host is one of its species'),
    ({'guest': 'O'}, 'the guest must differ from the host'),
    ({'guest': 'Xx'}, 'not a chemical element'),
    ({'pbc': [True, True, False]}, 'periodic in all three directions'),
])
def test_parent_error_names_the_fix(change, message):
    atoms = wurtzite(3.25, 5.20, 0.38)
    if 'pbc' in change:
        atoms.pbc = change['pbc']
    error = parent_error(atoms, change.get('host', 'O'), change.get('guest', 'S'))
    assert error is not None and message in error
    assert parent_error(wurtzite(3.25, 5.20, 0.38), 'O', 'S') is None


def test_end_members_must_be_one_cell_site_by_site():
    host = wurtzite(3.25, 5.20, 0.38)
    assert end_members_error(host, guest_end_member(host, 'O', 'S')) is None
    assert 'same species' in end_members_error(host, host)
    assert 'atoms' in end_members_error(host, host.repeat((1, 1, 2)))
    half = host.copy()
    half.symbols[1] = 'S'
    half.symbols[0] = 'Cd'
    assert 'one species by one other' in end_members_error(host, half)
    with pytest.raises(ValueError, match=r'give the parent structure as parents\.host'):
        end_members({'host': 'O', 'guest': 'S'})


def test_nearest_neighbour_distance_by_hand():
    assert nearest_neighbour_distance(antiperovskite(lattice_parameter=4.869)) == pytest.approx(4.869 / 2)
    # wurtzite: the Zn-O bond along c is u * c (for u = 3/8 and ideal c/a all four bonds are equal)
    a = 3.25
    ideal = wurtzite(a, a * np.sqrt(8 / 3), 0.375)
    assert nearest_neighbour_distance(ideal) == pytest.approx(0.375 * a * np.sqrt(8 / 3), rel=1e-9)


def test_end_members_are_one_lattice_site_by_site():
    """Another origin, another order of the substituted sites, or another cell setting would make Vegard slide atoms
    through the cell: refused, naming the fix. A site wrapped to the other side of the cell is the same site."""
    from aiida_capthermo.core.structures import align_to

    host = antiperovskite('Ag', 'S', 'I', 4.869)
    guest = antiperovskite('Ag', 'S', 'Br', 4.793)
    shifted = guest.copy()
    shifted.translate([2.4, 0, 0])  # the same crystal with another origin
    assert 'from its site in the parent' in end_members_error(host, shifted)
    reordered = guest.copy()
    reordered.positions[[2, 3]] = reordered.positions[[3, 2]]  # two Ag face centres swapped
    assert 'same order' in end_members_error(host, reordered)
    tilted = guest.copy()
    tilted.set_cell(guest.cell.array @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]]) * 1.4, scale_atoms=True)
    assert 'cells differ by' in end_members_error(host, tilted)
    wrapped = guest.copy()
    frac = wrapped.get_scaled_positions(wrap=False)
    frac[0] = [0.99999, -0.00001, 0.99999]  # the corner, written on the other side
    wrapped.set_scaled_positions(frac)
    assert end_members_error(host, wrapped) is None
    aligned = align_to(host, wrapped)
    np.testing.assert_allclose(aligned.get_scaled_positions(wrap=False)[0], [-1e-5, -1e-5, -1e-5], atol=1e-12)
    # so the supercells pair each atom with its own copy: at x = 1/2 every atom is on its ideal site
    mixed = vegard_structure(host.repeat(2), align_to(host, wrapped).repeat(2), 0.5)
    ideal = vegard_structure(host.repeat(2), guest.repeat(2), 0.5)
    np.testing.assert_allclose(mixed.positions, ideal.positions, atol=1e-3)
    _, built = end_members({'host': 'I', 'guest': 'Br'}, host, wrapped)  # end_members aligns what it is given
    np.testing.assert_allclose(built.get_scaled_positions(wrap=False), aligned.get_scaled_positions(wrap=False))


def test_a_parent_that_already_holds_the_guest_is_refused():
    mixed = antiperovskite('Ag', 'S', 'I').repeat((2, 1, 1))
    mixed.symbols[5] = 'Br'
    assert 'already holds the guest Br' in parent_error(mixed, 'I', 'Br')


def test_unit_cell_of_a_relaxed_supercell():
    from aiida_capthermo.core.structures import unit_cell_of_supercell

    unit = wurtzite(3.25, 5.20, 0.38)
    relaxed = wurtzite(3.30, 5.25, 0.377).repeat((2, 2, 2))
    cut = unit_cell_of_supercell(relaxed, unit, (2, 2, 2))
    np.testing.assert_allclose(cut.cell.cellpar(), wurtzite(3.30, 5.25, 0.377).cell.cellpar(), atol=1e-12)
    np.testing.assert_allclose(cut.positions, wurtzite(3.30, 5.25, 0.377).positions, atol=1e-12)
    broken = relaxed.copy()
    broken.positions[7] += [0.05, 0, 0]  # one image moved on its own: no longer copies of one cell
    with pytest.raises(ValueError, match='not \\[2, 2, 2\\] copies of one cell'):
        unit_cell_of_supercell(broken, unit, (2, 2, 2))
