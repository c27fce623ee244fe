"""Input checks shared by the workchains that build substitutional solid solutions from a prototype (the
anti-perovskite preset, or the sublattice of the user's own parent structure)."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ['PROTOTYPE_KEYS', 'Prototype', 'calculator_elements_error', 'compositions_error',
           'end_member_atoms', 'end_members_input_error', 'lattice_parameter_range', 'prototype_error',
           'supercell_error', 'supplied_by_parent']

#: The elements ASE's EMT has parameters for.
EMT_ELEMENTS = ('H', 'C', 'N', 'O', 'Al', 'Ni', 'Cu', 'Pd', 'Ag', 'Pt', 'Au')
#: tblite's GFN1-xTB, GFN2-xTB and IPEA1-xTB cover hydrogen to radon.
TBLITE_MAX_Z = 86

#: Keys of the ``prototype`` Dict: species a (face centres), b (body centre), host (x = 0) and guest (x = 1) on the
#: corner sublattice, and the end members' primitive lattice parameters in Å (the anti-perovskite preset). With only
#: host and guest it names the substituted sublattice of a parent given as a structure (``parents.host``).
PROTOTYPE_KEYS = ('a', 'b', 'host', 'guest', 'a_host', 'a_guest')
#: The keys of a prototype that names only the sublattice of the user's parent.
SUBLATTICE_KEYS = ('host', 'guest')


def supplied_by_parent(port_namespace, *names: str) -> bool:
    """True when a workchain's inputs are exposed in a parent that leaves out ports ``names`` because it supplies them
    at run time (the study): the parent checks those inputs itself, with what it will supply."""
    return port_namespace is not None and hasattr(port_namespace, 'keys') and any(
        name not in port_namespace for name in names)


class Prototype(BaseModel):
    """The ``prototype`` Dict of a binary solid solution: ``host`` (x = 0) and ``guest`` (x = 1) on one sublattice,
    alone (the parent is then given as a structure) or with ``a``, ``b``, ``a_host``, ``a_guest``, the cubic A3BX
    anti-perovskite preset A3B(host_1-x guest_x). Unknown keys are rejected; the species must be elements, host and
    guest must differ, and each lattice parameter must put A and B (a / 2 apart) at 0.6-2 times the sum of their
    covalent radii (:func:`lattice_parameter_range`)."""

    model_config = ConfigDict(extra='forbid')

    a: str | None = Field(None, description='Preset: species on the face centres (Ag in Ag3SI).')
    b: str | None = Field(None, description='Preset: species on the body centre (S in Ag3SI).')
    host: str = Field(description='Species on the substituted sublattice at x = 0 (I; the corners of the preset).')
    guest: str = Field(description='Species that takes the host sites, all of them at x = 1 (Br).')
    a_host: float | None = Field(None, description='Preset: lattice parameter of the x = 0 end member (Å).')
    a_guest: float | None = Field(None, description='Preset: lattice parameter of the x = 1 end member (Å).')

    @model_validator(mode='before')
    @classmethod
    def _physical(cls, data):
        if isinstance(data, dict):
            problem = _prototype_problem(data)
            if problem:
                raise ValueError(problem)
        return data


def prototype_error(prototype: dict) -> str | None:
    """Why ``prototype`` is not a valid A3BX solid-solution prototype (:class:`Prototype`), or None."""
    try:
        Prototype.model_validate(prototype)
    except ValidationError as exception:
        return '; '.join(str(error['msg']).removeprefix('Value error, ') for error in exception.errors())
    return None


def _prototype_problem(prototype: dict) -> str | None:
    """The first thing wrong with a prototype dict (keys, species, lattice parameters), or None."""
    from ase.data import atomic_numbers

    missing, unknown = set(PROTOTYPE_KEYS) - set(prototype), set(prototype) - set(PROTOTYPE_KEYS)
    if unknown:  # first: a misspelt key is also a missing one
        return f'unknown prototype keys {sorted(unknown)}: the keys are {list(PROTOTYPE_KEYS)}' + (
            f' (the prototype misses {sorted(missing)})' if missing and set(prototype) - set(SUBLATTICE_KEYS) else '')
    if set(SUBLATTICE_KEYS) - set(prototype):
        return (f'the prototype misses {sorted(set(SUBLATTICE_KEYS) - set(prototype))}: it names the substituted '
                'species (host) and the one that takes its sites (guest)')
    if missing and set(prototype) != set(SUBLATTICE_KEYS):
        return (f'the prototype misses {sorted(missing)}: the anti-perovskite preset needs all of a, b, a_host and '
                'a_guest; for your own parent give only host and guest, and the parent as parents.host')
    for key in ('a', 'b', 'host', 'guest'):
        if key in prototype and (not isinstance(prototype[key], str) or prototype[key] not in atomic_numbers):
            return f'prototype {key!r} is {prototype[key]!r}, which is not a chemical element'
    if prototype['host'] == prototype['guest']:
        return 'host and guest species of the solid solution must differ'
    if missing:
        return None
    for key in ('a_host', 'a_guest'):
        value = prototype[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            return f'prototype {key!r} must be a positive number (Å), got {value!r}'
        low, high = lattice_parameter_range(prototype['a'], prototype['b'])
        if not low <= value <= high:
            return (f'prototype {key!r} = {value!r} Å puts {prototype["a"]} and {prototype["b"]} {value / 2:.3g} Å '
                    f'apart (a / 2), against {low / 2:.2f}-{high / 2:.2f} Å for 0.6-2 times the sum of their '
                    f'covalent radii: give a lattice parameter in [{low:.2f}, {high:.2f}] Å')
    return None


def calculator_elements_error(calculator: dict, elements: list[str]) -> str | None:
    """Why the local engine's ``calculator`` (a CalculatorSpec dict) cannot label structures of ``elements``, or
    None: EMT knows 11 elements; tblite (the calculator, or the gap beside CHGNet) H to Rn."""
    from ase.data import atomic_numbers

    name = calculator.get('name', 'tblite')
    if name == 'emt':
        missing = [e for e in elements if e not in EMT_ELEMENTS]
        return (f'EMT has no parameters for {missing} (it knows {list(EMT_ELEMENTS)}): choose name tblite or chgnet'
                if missing else None)
    if name == 'tblite' or 'gap' in calculator.get('properties', ['gap']):
        heavy = [e for e in elements if atomic_numbers[e] > TBLITE_MAX_Z]
        if heavy:
            return f"tblite's xTB parametrisations cover H to Rn (Z <= {TBLITE_MAX_Z}), not {heavy}"
    return None


def lattice_parameter_range(a: str, b: str) -> tuple[float, float]:
    """Physical bounds (Å) of the cubic A3BX lattice parameter: the A-B distance a / 2 between 0.6 and 2 times the
    sum of the covalent radii of A and B (Ag3SI: 4.87 Å, the distance 0.97 times the sum)."""
    from ase.data import atomic_numbers, covalent_radii

    bond = covalent_radii[atomic_numbers[a]] + covalent_radii[atomic_numbers[b]]
    return 2 * 0.6 * bond, 2 * 2.0 * bond


def supercell_error(supercell: list) -> str | None:
    """Why ``supercell`` is not a diagonal supercell of three positive integers, or None."""
    if len(supercell) != 3 or any(not isinstance(n, int) or n < 1 for n in supercell):
        return f'supercell must be three positive integers, got {supercell}'
    return None


def compositions_error(x_values: list, supercell: list, sites_per_cell: int = 1) -> str | None:
    """Why ``x_values`` are not compositions the supercell can hold (multiples of 1/n_sites in [0, 1]), or None.

    The disordered sublattice has ``sites_per_cell`` sites per parent cell (one in the anti-perovskite), so
    ``n_sites`` is that times the product of the diagonal; the check is
    :func:`aiida_capthermo.core.solid_solution.guest_count`.
    """
    from aiida_capthermo.core.solid_solution import guest_count

    n_sites = sites_per_cell * supercell[0] * supercell[1] * supercell[2]
    if not x_values:
        return f'compositions is empty: give at least one x (a multiple of 1/{n_sites} in [0, 1])'
    for x in x_values:
        try:
            guest_count(x, n_sites)
        except ValueError as exception:
            return (f'{exception} (compositions must be multiples of 1/{n_sites} in [0, 1]: the supercell {supercell} '
                    f'has {n_sites} sites on the disordered sublattice); give a supercell with more sites (e.g. '
                    '[2, 2, 2]: steps of 1/8) or compositions on its grid')
    return None


def end_member_atoms(prototype: dict, parents: dict) -> tuple:
    """The two end members (ase.Atoms, unrelaxed) of ``prototype`` with the ``parents`` given (StructureData by role
    ``host``/``guest``), as the workchains will build them (:func:`aiida_capthermo.core.structures.end_members`);
    raises ValueError with the reason where they cannot be."""
    from aiida_capthermo.core.structures import end_members, parent_error

    atoms = {role: node.get_ase() for role, node in parents.items()}
    if 'host' in atoms:
        error = parent_error(atoms['host'], prototype['host'], prototype['guest'])
        if error:
            raise ValueError(f'parents.host: {error}')
    elif 'guest' in atoms:
        raise ValueError('parents.guest needs parents.host: the x = 1 cell is the host parent with its host sites '
                         'substituted')
    if 'guest' in atoms and prototype['guest'] not in atoms['guest'].get_chemical_symbols():
        raise ValueError(f'parents.guest has no {prototype["guest"]}: it is the x = 1 end member')
    return end_members(prototype, atoms.get('host'), atoms.get('guest'))


def end_members_input_error(prototype: dict, parents: dict) -> str | None:
    """Why the end members of ``prototype`` and ``parents`` cannot be built (:func:`end_member_atoms`), or None."""
    try:
        end_member_atoms(prototype, parents)
    except ValueError as exception:
        message = str(exception)
        if not message.startswith('parents.'):
            message = f'parents: {message}'
        return message
    return None
