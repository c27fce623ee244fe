"""Parent structures of a substitutional solid solution, and simple structure transforms.

A binary solid solution host_(1-x) guest_x lives on one sublattice of a parent crystal: the sites of species
``host`` in the parent (x = 0). Its two end members are the parent and the parent with every host site taken by the
guest (x = 1); they share the atom order, and each may have its own (relaxed) cell and internal coordinates.
:func:`vegard_structure` interpolates both linearly in x (Vegard's law for the whole cell matrix). Any periodic
parent works: :func:`parent_error` says why one does not.

The named preset is the cubic Pm-3m (No. 221) anti-perovskite A3BX with 5 atoms per cell, in the order
``[X, B, A, A, A]``: the halide X at the corner (0, 0, 0), the chalcogen B at the body centre (1/2, 1/2, 1/2) and
the three A (Ag) at the face centres. For Ag3SBr_xI_(1-x) the disordered sublattice is the halide one (X = I or Br).

Units: lengths in Å. Only numpy and ase are used here (no AiiDA, no torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import ase
import numpy as np
from ase.data import atomic_numbers

__all__ = [
    'AG3SI_LATTICE_PARAMETER',
    'AG3SBR_LATTICE_PARAMETER',
    'antiperovskite',
    'end_member',
    'vegard_lattice_parameter',
    'sublattice_indices',
    'substitute',
    'scale_to_lattice',
    'composition_x',
    'perpendicular_widths',
    'cutoff_error',
    'guest_end_member',
    'vegard_structure',
    'parent_error',
    'end_members_error',
    'end_members',
    'is_preset',
    'PRESET_KEYS',
    'nearest_neighbour_distance',
    'align_to',
    'unit_cell_of_supercell',
]

#: The keys that make a solid-solution ``prototype`` the cubic anti-perovskite preset (besides host and guest).
PRESET_KEYS = ('a', 'b', 'a_host', 'a_guest')

#: Lattice parameter of the 5-atom Ag3SI cell (x = 0) in Å (2x2x2 cell: 9.738 Å).
AG3SI_LATTICE_PARAMETER = 4.869
#: Lattice parameter of the 5-atom Ag3SBr cell (x = 1) in Å (2x2x2 cell: 9.586 Å).
AG3SBR_LATTICE_PARAMETER = 4.793

#: Fractional coordinates of the prototype, in the order [X, B, A, A, A].
_PROTOTYPE_SCALED_POSITIONS = np.array(
    [
        [0.0, 0.0, 0.0],  # X (halide), corner
        [0.5, 0.5, 0.5],  # B (chalcogen), body centre
        [0.5, 0.5, 0.0],  # A, face centres
        [0.5, 0.0, 0.5],
        [0.0, 0.5, 0.5],
    ]
)


def _check_element(symbol: str, role: str) -> None:
    """Raise ``ValueError`` unless ``symbol`` is the symbol of a real chemical element."""
    if not isinstance(symbol, str) or symbol not in atomic_numbers or atomic_numbers[symbol] == 0:
        raise ValueError(f'{role} species {symbol!r} is not a chemical element symbol (e.g. "Ag", "S", "I").')


def antiperovskite(
    a: str = 'Ag', b: str = 'S', x: str = 'I', lattice_parameter: float = AG3SI_LATTICE_PARAMETER
) -> ase.Atoms:
    """Return the 5-atom cubic Pm-3m anti-perovskite A3BX.

    Parameters
    ----------
    a, b, x
        Element symbols of the face-centre (A, three per cell), body-centre (B) and corner (X) species.
    lattice_parameter
        Cubic lattice parameter in Å (default: Ag3SI, 4.869 Å).

    Returns
    -------
    ase.Atoms
        Periodic cell with atoms ordered ``[X, B, A, A, A]``.

    Raises
    ------
    ValueError
        If a species is not an element, the species are not distinct, or the lattice parameter is not positive.
    """
    for symbol, role in ((a, 'A (face-centre)'), (b, 'B (body-centre)'), (x, 'X (corner)')):
        _check_element(symbol, role)
    if len({a, b, x}) != 3:
        raise ValueError(f'the A, B and X species must be distinct, got A={a!r}, B={b!r}, X={x!r}.')
    lattice_parameter = float(lattice_parameter)
    if not np.isfinite(lattice_parameter) or lattice_parameter <= 0:
        raise ValueError(f'lattice_parameter must be a positive length in Å, got {lattice_parameter}.')
    return ase.Atoms(
        symbols=[x, b, a, a, a],
        scaled_positions=_PROTOTYPE_SCALED_POSITIONS,
        cell=np.eye(3) * lattice_parameter,
        pbc=True,
    )


def end_member(prototype: dict, species: str | None = None) -> ase.Atoms:
    """Return the 5-atom cubic end member of a solid-solution prototype.

    Parameters
    ----------
    prototype
        The species ``a`` (face centres), ``b`` (body centre), ``host`` (x = 0) and ``guest`` (x = 1) and the end
        members' primitive lattice parameters ``a_host`` and ``a_guest`` in Å.
    species
        The corner species: ``prototype['host']`` (default) or ``prototype['guest']``; the cell takes that end
        member's lattice parameter.

    Returns
    -------
    ase.Atoms
        ``antiperovskite(a, b, species, a_host or a_guest)``, atoms ordered ``[X, B, A, A, A]``.
    """
    species = prototype['host'] if species is None else species
    if species not in (prototype['host'], prototype['guest']):
        raise ValueError(f'species {species!r} is neither the host {prototype["host"]!r} nor the guest '
                         f'{prototype["guest"]!r} of the prototype.')
    lattice = prototype['a_host'] if species == prototype['host'] else prototype['a_guest']
    return antiperovskite(a=prototype['a'], b=prototype['b'], x=species, lattice_parameter=lattice)


def vegard_lattice_parameter(
    x: float, a_x0: float = AG3SI_LATTICE_PARAMETER, a_x1: float = AG3SBR_LATTICE_PARAMETER
) -> float:
    """Return the primitive-cell lattice parameter of the solid solution by Vegard's law.

    ``a(x) = (1 - x) * a_x0 + x * a_x1``. With the defaults this is Ag3SBr_xI_(1-x): 4.869 Å at
    x = 0 (Ag3SI) and 4.793 Å at x = 1 (Ag3SBr), i.e. 9.738 / 9.586 Å for the 2x2x2 cell.

    Parameters
    ----------
    x
        Fraction of the guest halide on the halide sublattice, in [0, 1].
    a_x0, a_x1
        Lattice parameters in Å of the two end members.

    Returns
    -------
    float
        Lattice parameter in Å.
    """
    x = float(x)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f'composition x must lie in [0, 1], got {x}.')
    return (1.0 - x) * float(a_x0) + x * float(a_x1)


def sublattice_indices(atoms: ase.Atoms, species: str | Sequence[str]) -> np.ndarray:
    """Return the indices (ascending) of the atoms whose element is in ``species``.

    Parameters
    ----------
    atoms
        The structure.
    species
        One element symbol or a sequence of them (e.g. ``('I', 'Br')`` for the halide sublattice).

    Returns
    -------
    numpy.ndarray
        Integer indices, shape [n_sites].
    """
    wanted = [species] if isinstance(species, str) else list(species)
    for symbol in wanted:
        _check_element(symbol, 'sublattice')
    symbols = np.array(atoms.get_chemical_symbols())
    return np.flatnonzero(np.isin(symbols, wanted)).astype(np.int64)


def substitute(atoms: ase.Atoms, site_indices: Sequence[int], occupation: np.ndarray, species: str) -> ase.Atoms:
    """Return a copy of ``atoms`` with the selected sites of a sublattice replaced by ``species``.

    Parameters
    ----------
    atoms
        The parent structure (not modified).
    site_indices
        Atom indices of the sublattice, shape [n_sites].
    occupation
        Boolean mask over ``site_indices`` (shape [n_sites]): ``True`` sites get ``species``.
    species
        Element symbol of the substituting species.
    """
    _check_element(species, 'substituting')
    site_indices = np.asarray(site_indices, dtype=np.int64).reshape(-1)
    occupation = np.asarray(occupation).reshape(-1)
    if occupation.dtype != bool:
        raise ValueError(f'occupation must be a boolean mask, got dtype {occupation.dtype}.')
    if occupation.shape != site_indices.shape:
        raise ValueError(f'occupation has {occupation.size} entries but there are {site_indices.size} sites.')
    if site_indices.size and (site_indices.min() < 0 or site_indices.max() >= len(atoms)):
        raise ValueError(f'site indices must lie in [0, {len(atoms)}), got {site_indices.tolist()}.')
    new = atoms.copy()
    numbers = new.numbers.copy()
    numbers[site_indices[occupation]] = atomic_numbers[species]
    new.numbers = numbers
    return new


def scale_to_lattice(atoms: ase.Atoms, factor_or_cell: float | np.ndarray) -> ase.Atoms:
    """Return a copy homogeneously rescaled, keeping fractional coordinates.

    Parameters
    ----------
    atoms
        The structure (not modified).
    factor_or_cell
        Either a positive scalar multiplying the cell vectors (e.g. ``a_new / a_old`` for Vegard's
        law) or a new [3, 3] cell in Å.
    """
    value = np.asarray(factor_or_cell, dtype=float)
    if value.ndim == 0:
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f'scale factor must be positive, got {float(value)}.')
        cell = atoms.cell.array * float(value)
    elif value.shape == (3, 3):
        if abs(np.linalg.det(value)) < 1e-8:
            raise ValueError('the new cell is singular.')
        cell = value
    else:
        raise ValueError(f'factor_or_cell must be a scalar or a [3, 3] cell, got shape {value.shape}.')
    new = atoms.copy()
    new.set_cell(cell, scale_atoms=True)
    return new


def composition_x(atoms: ase.Atoms, host: str, guest: str) -> float:
    """Return the fraction of ``guest`` on the sublattice shared by ``host`` and ``guest``.

    Parameters
    ----------
    atoms
        The structure.
    host, guest
        Element symbols (e.g. ``host='I'``, ``guest='Br'`` gives x of Ag3SBr_xI_(1-x)).

    Returns
    -------
    float
        ``n_guest / (n_host + n_guest)``.
    """
    _check_element(host, 'host')
    _check_element(guest, 'guest')
    symbols = np.array(atoms.get_chemical_symbols())
    n_host = int(np.sum(symbols == host))
    n_guest = int(np.sum(symbols == guest))
    if n_host + n_guest == 0:
        raise ValueError(f'the structure contains neither {host!r} nor {guest!r}.')
    return n_guest / (n_host + n_guest)


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """The distances between opposite faces of a cell, ``V / |a_j x a_k|`` (Å), [3] for the rows ``cell`` [3, 3].
    Every lattice vector is at least as long as the smallest: an atom meets its own periodic image no nearer."""
    cell = np.asarray(cell, dtype=float).reshape(3, 3)  # [3, 3] Å, lattice vectors as rows
    volume = abs(float(np.linalg.det(cell)))
    if volume <= 0:
        raise ValueError('the cell has no volume.')
    faces = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)  # [3] Å^2, face j opposite a_j
    return volume / faces


def cutoff_error(unit_cell: np.ndarray, repeats: Sequence[int], cutoffs: dict[str, float]) -> str | None:
    """Why the supercell ``repeats`` of ``unit_cell`` [3, 3] (Å) is too small for the models' ``cutoffs``
    (``{name: radius in Å}``), or None. It is too small when a perpendicular width is not above a cutoff: an atom
    then sees its own periodic image inside the model's radius, so a displaced atom drags its images into its own
    environment and the model learns (or predicts) the artefact. The message names the smallest supercell of this
    unit cell that fits."""
    widths = perpendicular_widths(np.asarray(unit_cell, dtype=float) * np.asarray(repeats, dtype=float)[:, None])
    unit = perpendicular_widths(unit_cell)
    for name, radius in cutoffs.items():
        if widths.min() <= radius:
            fits = [max(int(n), int(np.floor(radius / w)) + 1) for n, w in zip(repeats, unit)]
            return (f'the supercell {list(repeats)} is {widths.min():.2f} Å wide (between opposite faces), not more '
                    f'than the {name} of {radius:g} Å: an atom would see its own periodic image inside it. Use a '
                    f'supercell of at least {fits}, or a smaller {name}.')
    return None


def guest_end_member(parent: ase.Atoms, host: str, guest: str) -> ase.Atoms:
    """The x = 1 end member of ``parent``: every ``host`` atom replaced by ``guest``, same cell, positions and order
    (unrelaxed: the study relaxes it with its engine)."""
    sites = sublattice_indices(parent, host)
    if len(sites) == 0:
        raise ValueError(f'the parent {parent.get_chemical_formula()} has no {host} site to substitute.')
    return substitute(parent, sites, np.ones(len(sites), dtype=bool), guest)


def vegard_structure(host: ase.Atoms, guest: ase.Atoms, x: float) -> ase.Atoms:
    """The structure at composition ``x`` between the end members ``host`` (x = 0) and ``guest`` (x = 1), with the
    species of ``host``: the cell matrix and the fractional coordinates are both linear in x (Vegard's law; the
    fractional differences are taken to the nearest image, so an atom that crossed the cell boundary in a relaxation
    is not dragged across the cell). For end members that differ by a scale factor (a cubic cell) the cell is
    ``a(x) / a_host`` times the host's, with ``a(x)`` from :func:`vegard_lattice_parameter`."""
    x = float(x)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f'composition x must lie in [0, 1], got {x}.')
    error = end_members_error(host, guest)
    if error:
        raise ValueError(error)
    frac_host = host.get_scaled_positions(wrap=False)  # [N, 3]
    step = guest.get_scaled_positions(wrap=False) - frac_host  # [N, 3]
    step -= np.round(step)
    cell = (1.0 - x) * host.cell.array + x * guest.cell.array  # [3, 3] Å
    new = host.copy()
    new.set_cell(cell, scale_atoms=False)
    new.set_scaled_positions(frac_host + x * step)
    return new


def parent_error(atoms: ase.Atoms, host: str, guest: str | None = None) -> str | None:
    """Why ``atoms`` cannot be the x = 0 parent of a solid solution with ``host`` replaced by ``guest``, or None: it
    must be periodic in three directions with a volume, hold at least one ``host`` atom, and ``guest`` must be an
    element other than ``host``."""
    try:
        _check_element(host, 'host')
        if guest is not None:
            _check_element(guest, 'guest')
    except ValueError as exception:
        return str(exception)
    if guest == host:
        return f'the guest must differ from the host, both are {host!r}: name the substituting species'
    if len(atoms) == 0:
        return 'the structure has no atoms'
    if not np.all(atoms.pbc):
        return (f'the structure must be periodic in all three directions (a crystal), got pbc={atoms.pbc.tolist()}: '
                'give a bulk cell (a CIF or POSCAR)')
    if abs(atoms.cell.volume) < 1e-6:
        return 'the structure has no cell volume: give a bulk cell with three lattice vectors'
    symbols = atoms.get_chemical_symbols()
    if host not in symbols:
        return (f'the structure {atoms.get_chemical_formula()} has no {host} to substitute: the host is one of its '
                f'species {sorted(set(symbols))}')
    if guest is not None and guest in symbols:
        return (f'the structure {atoms.get_chemical_formula()} already holds the guest {guest}: the parent is the '
                f'x = 0 end member, with every site of the sublattice taken by {host}')
    return None


#: End members whose cells differ by more than this (relative, largest element of (C_guest - C_host) C_host^-1), or
#: whose atoms sit further apart than this share of the nearest-neighbour distance, are not one lattice.
MAX_CELL_STRAIN = 0.25
MAX_SITE_SHIFT = 0.5


def align_to(host: ase.Atoms, guest: ase.Atoms) -> ase.Atoms:
    """A copy of ``guest`` whose fractional coordinates are each atom's nearest image to the same atom of ``host``:
    two relaxed cells can wrap one site to 0.0001 and 0.9999, and supercells built from them would then pair an atom
    with another copy of it (:func:`vegard_structure`, the phonon modes of the two end members)."""
    frac_host = host.get_scaled_positions(wrap=False)
    step = guest.get_scaled_positions(wrap=False) - frac_host
    aligned = guest.copy()
    aligned.set_scaled_positions(frac_host + step - np.round(step))
    return aligned


def end_members_error(host: ase.Atoms, guest: ase.Atoms) -> str | None:
    """Why ``host`` and ``guest`` are not the two end members of one solid solution, or None: the same number of
    atoms in the same order, the same species except on one sublattice, where every atom of ``host``'s species there
    is one species in ``guest``, three-dimensional cells within :data:`MAX_CELL_STRAIN` of each other, and each atom
    (nearest image, in the host's cell) within :data:`MAX_SITE_SHIFT` nearest-neighbour distances of its site in the
    host: another atom order, origin or setting of the same crystal would make Vegard's cells slide atoms through
    the cell."""
    if len(host) != len(guest):
        return f'the end members have {len(host)} and {len(guest)} atoms: they must be the same cell, site by site'
    a, b = np.array(host.get_chemical_symbols()), np.array(guest.get_chemical_symbols())
    differ = a != b
    if not differ.any():
        return f'the end members have the same species ({host.get_chemical_formula()}): nothing is substituted'
    if len(set(a[differ])) != 1 or len(set(b[differ])) != 1:
        return (f'the end members differ on {sorted(set(a[differ]))} -> {sorted(set(b[differ]))}: a binary solid '
                'solution substitutes one species by one other')
    if (a == a[differ][0]).sum() != differ.sum():
        return f'only some {a[differ][0]} sites are substituted in the x = 1 end member: it must take all of them'
    for atoms in (host, guest):
        if not np.all(atoms.pbc) or abs(atoms.cell.volume) < 1e-6:
            return 'the end members must be periodic cells with a volume'
    strain = float(np.abs((guest.cell.array - host.cell.array) @ np.linalg.inv(host.cell.array)).max())
    if strain > MAX_CELL_STRAIN:
        return (f'the end members\' cells differ by {100 * strain:.0f} % (more than {100 * MAX_CELL_STRAIN:.0f} %): '
                'give both in the same setting and orientation (the same lattice vectors, rescaled)')
    step = guest.get_scaled_positions(wrap=False) - host.get_scaled_positions(wrap=False)
    shift = np.linalg.norm((step - np.round(step)) @ host.cell.array, axis=1)  # [N] Å
    nearest = nearest_neighbour_distance(host)
    if shift.max() > MAX_SITE_SHIFT * nearest:
        atom = int(shift.argmax())
        return (f'atom {atom} ({host[atom].symbol}) of the x = 1 end member sits {shift.max():.2f} Å from its site in '
                f'the parent (nearest-neighbour distance {nearest:.2f} Å): give both cells with the same origin and '
                'the atoms in the same order')
    return None


def is_preset(prototype: dict) -> bool:
    """True when ``prototype`` names the cubic anti-perovskite preset (a, b, a_host, a_guest besides host and guest);
    False when it only names the sublattice (host, guest) of a parent given as a structure."""
    return any(key in prototype for key in PRESET_KEYS)


def end_members(prototype: dict, host: ase.Atoms | None = None,
                guest: ase.Atoms | None = None) -> tuple[ase.Atoms, ase.Atoms]:
    """The end members (x = 0, x = 1) of the solid solution ``prototype`` (``host``, ``guest``; with ``a``, ``b``,
    ``a_host``, ``a_guest`` the anti-perovskite preset), in one atom order.

    ``host``: the user's parent, or None for the preset's cubic cell at ``a_host``. ``guest``: the user's x = 1 cell
    (same atoms, same order), or None: the preset's cell at ``a_guest`` when the host is the preset's too; otherwise
    the host with every host site substituted (:func:`guest_end_member`), its cell scaled by ``a_guest / a_host``
    for the preset and left as it is for the user's own parent (the study relaxes both with its engine)."""
    if host is None:
        if not is_preset(prototype):
            raise ValueError('the prototype names only the sublattice (host, guest): give the parent structure as '
                             'parents.host (capthermo submit --parent FILE), or the preset keys a, b, a_host, a_guest')
        host_atoms = end_member(prototype, prototype['host'])
        if guest is None:
            return host_atoms, end_member(prototype, prototype['guest'])
    else:
        host_atoms = host.copy()
    if guest is None:
        guest = guest_end_member(host_atoms, prototype['host'], prototype['guest'])
        if is_preset(prototype):
            guest = scale_to_lattice(guest, float(prototype['a_guest']) / float(prototype['a_host']))
    error = end_members_error(host_atoms, guest)
    if error:
        raise ValueError(error)
    return host_atoms, align_to(host_atoms, guest)


def unit_cell_of_supercell(supercell: ase.Atoms, unit: ase.Atoms, repeats, tolerance: float = 1e-4) -> ase.Atoms:
    """The unit cell of ``supercell``, which is ``unit.repeat(repeats)`` after a relaxation that kept its symmetry
    (ASE's order: the unit cell's atoms first): the cell divided by the repeats and the first image's atoms. Raises
    ValueError when the images are not copies of the first to ``tolerance`` Å (a relaxation that broke the
    translations of the unit cell)."""
    repeats = np.asarray(repeats, dtype=int).reshape(3)
    cell = supercell.cell.array / repeats[:, None]  # [3, 3] Å
    cut = ase.Atoms(unit.get_chemical_symbols(), positions=supercell.positions[:len(unit)], cell=cell, pbc=True)
    tiled = cut.repeat(tuple(int(n) for n in repeats))
    shift = tiled.get_scaled_positions(wrap=False) - supercell.get_scaled_positions(wrap=False)  # [N, 3]
    shift = np.abs((shift - np.round(shift)) @ supercell.cell.array).max()
    if shift > tolerance:
        raise ValueError(f'the relaxed supercell is not {repeats.tolist()} copies of one cell (images {shift:.2g} Å '
                         'apart): relax with the symmetry kept (symprec), or give the relaxed end members')
    return cut


def nearest_neighbour_distance(atoms: ase.Atoms) -> float:
    """The shortest distance (Å) between two atoms of the periodic structure, periodic images included."""
    from ase.neighborlist import neighbor_list

    cutoff = 2.0 * float(np.cbrt(abs(atoms.cell.volume) / max(len(atoms), 1))) + 1.0
    distances = neighbor_list('d', atoms, cutoff)
    if len(distances) == 0:
        raise ValueError(f'no two atoms are closer than {cutoff:.1f} Å')
    return float(distances.min())
