"""``SolidSolutionScreenWorkChain``: enumerate the inequivalent configurations per composition, relax, rank.

For each composition x of the halide sublattice of a cubic A3BX supercell, a calcfunction enumerates the
symmetry-inequivalent decorations (all classes when there are at most ``max_configurations``, otherwise a seeded
random sample of that many distinct classes) and emits them as StructureData at the Vegard lattice parameter,
recording x and the class multiplicity. One ``MlipScreenCalcJob`` per composition relaxes them with the MACE
model; a calcfunction ranks them by energy per atom. Outputs per composition (``compositions.x_0p250``): the
lowest-energy relaxed structure and the ranking.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction

from aiida_capthermo.calculations.mlip import MlipScreenCalcJob, validate_mace_model
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.data.structures import set_structure_metadata
from aiida_capthermo.workflows.validation import prototype_error, supercell_error

__all__ = ['SolidSolutionScreenWorkChain', 'enumerate_structures', 'rank_configurations', 'composition_key']

MULTIPLICITY_ATTRIBUTE = 'capthermo_multiplicity'
TOLERANCE = 1e-6


def composition_key(x: float) -> str:
    """Link label of composition ``x``: ``x_0p250`` for 0.25."""
    return 'x_' + f'{x:.3f}'.replace('.', 'p')


def _parent_cell(prototype: dict, parent):
    from aiida_capthermo.core.structures import antiperovskite

    if parent is not None:
        return parent.get_ase()
    return antiperovskite(a=prototype['a'], b=prototype['b'], x=prototype['host'],
                          lattice_parameter=prototype['a_host'])


@calcfunction
def enumerate_structures(settings: orm.Dict, parent: orm.StructureData | None = None) -> dict:
    """Inequivalent decorations of the host sublattice of the supercell at composition ``settings['x']``.

    ``settings``: the prototype keys (a, b, host, guest, a_host, a_guest in Å), ``supercell`` [3], ``x``,
    ``max_configurations``, ``seed``. The supercell of ``parent`` (or of the prototype's host cell) is scaled to
    the Vegard lattice parameter a(x) (per primitive cell), then the guest occupies the class representative's
    sites. Outputs: ``c000``... StructureData (attributes x, origin ``screen``, multiplicity) and ``configurations``
    (Dict: per key the occupied site indices, multiplicity; plus totals).
    """
    import math

    from aiida_capthermo.core.solid_solution import count_inequivalent, enumerate_configurations, site_permutations
    from aiida_capthermo.core.structures import (scale_to_lattice, sublattice_indices, substitute,
                                                 vegard_lattice_parameter)

    s = settings.get_dict()
    unit = _parent_cell(s, parent)
    a_parent = float(np.cbrt(abs(np.linalg.det(unit.cell.array))))
    supercell = unit.repeat(tuple(int(n) for n in s['supercell']))
    sites = sublattice_indices(supercell, s['host'])
    n_sites = len(sites)
    n_guest = int(round(s['x'] * n_sites))
    permutations = site_permutations(supercell, sites)
    n_classes = count_inequivalent(permutations, n_guest)
    configurations = enumerate_configurations(permutations, n_guest, max_configurations=s['max_configurations'],
                                              rng=s['seed'])
    lattice = vegard_lattice_parameter(s['x'], s['a_host'], s['a_guest'])
    scaled = scale_to_lattice(supercell, lattice / a_parent)
    outputs, table = {}, {}
    for index, configuration in enumerate(configurations):
        key = f'c{index:03d}'
        atoms = substitute(scaled, sites, configuration.occupation_mask(), s['guest'])
        structure = set_structure_metadata(orm.StructureData(ase=atoms), x=configuration.x, origin='screen')
        structure.base.attributes.set(MULTIPLICITY_ATTRIBUTE, configuration.multiplicity)
        outputs[key] = structure
        table[key] = {'occupied_sites': [int(sites[i]) for i in configuration.occupied],
                      'multiplicity': configuration.multiplicity}
    outputs['configurations'] = orm.Dict({
        'x': n_guest / n_sites, 'n_sites': n_sites, 'n_guest': n_guest, 'n_classes': n_classes,
        'n_arrangements': math.comb(n_sites, n_guest), 'n_permutations': int(len(permutations)),
        'sampled': len(configurations) < n_classes, 'lattice_parameter': lattice, 'configurations': table,
    })
    return outputs


@calcfunction
def rank_configurations(configurations: orm.Dict, results: orm.Dict) -> orm.Dict:
    """Rank the relaxed configurations of one composition by MLIP energy per atom (lowest first)."""
    table = configurations.get_dict()['configurations']
    records = results.get_dict()
    relaxed = sorted((key for key in records if 'energy_per_atom' in records[key]),
                     key=lambda key: records[key]['energy_per_atom'])
    lowest = records[relaxed[0]]['energy_per_atom']
    return orm.Dict({
        'keys': relaxed,
        'energy_per_atom': [records[k]['energy_per_atom'] for k in relaxed],
        'relative_energy_per_atom': [records[k]['energy_per_atom'] - lowest for k in relaxed],
        'multiplicity': [table[k]['multiplicity'] for k in relaxed],
        'converged': [bool(records[k]['converged']) for k in relaxed],
        'n_imaginary': [records[k].get('n_imaginary') for k in relaxed],
        'failed': sorted(k for k in records if 'energy_per_atom' not in records[k]),
        'lowest': relaxed[0],
        'units': {'energy_per_atom': 'eV/atom'},
    })


def validate_inputs(inputs, _) -> str | None:
    """Prototype keys and species, supercell, compositions on the sublattice grid, cubic parent."""
    from aiida_capthermo.core.structures import check_cubic_prototype

    prototype = inputs['prototype'].get_dict()
    supercell = inputs['supercell'].get_list()
    error = prototype_error(prototype) or supercell_error(supercell)
    if error:
        return error
    if 'parent' in inputs:
        atoms = inputs['parent'].get_ase()
        try:
            check_cubic_prototype(atoms)
        except ValueError as exception:
            return f'parent: {exception}'
        n_host = atoms.get_chemical_symbols().count(prototype['host'])
        if n_host != 1 or len(atoms) != 5:
            return f'parent must be the 5-atom A3BX cell with one {prototype["host"]} (the host), got {atoms}'
    n_sites = int(np.prod(supercell))  # one halide site per primitive cell
    compositions = inputs['compositions'].get_list()
    if not compositions:
        return 'compositions is empty: give at least one x'
    for x in compositions:
        if not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
            return f'composition {x!r} is not a fraction in [0, 1]'
        if abs(x * n_sites - round(x * n_sites)) > TOLERANCE:
            return (f'composition {x} is not a multiple of 1/{n_sites} (the supercell {supercell} has {n_sites} '
                    f'{prototype["host"]} sites)')
    keys = [composition_key(x) for x in compositions]
    if len(set(keys)) != len(keys):
        return f'compositions repeat: {compositions}'
    if inputs['max_configurations'].value < 1:
        return 'max_configurations must be a positive integer'
    return None


class SolidSolutionScreenWorkChain(WorkChain):
    """Screen the symmetry-inequivalent configurations of a cubic A3B(X,Y) solid solution with a MACE potential."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('model', valid_type=ModelData, validator=validate_mace_model,
                   help='The MACE potential (ModelData of kind "mace"), e.g. the fine-tuned model.')
        spec.input('prototype', valid_type=orm.Dict,
                   help='Cubic A3BX solid solution: species a (face centres), b (body centre), host (x=0) and guest '
                        '(x=1) on the corner sublattice, end-member primitive lattice parameters a_host, a_guest (Å).')
        spec.input('parent', valid_type=orm.StructureData, required=False,
                   help='Optional 5-atom host cell (cubic Pm-3m, e.g. relaxed) replacing the one built from the '
                        'prototype; its cell is rescaled to the Vegard lattice parameter of each composition.')
        spec.input('supercell', valid_type=orm.List, default=lambda: orm.List([2, 2, 2]),
                   help='Diagonal supercell of the primitive cell, e.g. [2, 2, 2] (8 halide sites, 40 atoms).')
        spec.input('compositions', valid_type=orm.List,
                   help='Guest fractions x on the halide sublattice, multiples of 1/n_sites.')
        spec.input('max_configurations', valid_type=orm.Int, default=lambda: orm.Int(100),
                   help='All inequivalent classes when there are at most this many, else a seeded random sample.')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='Seed of the class sampling.')
        spec.input('code', valid_type=orm.AbstractCode, help='The `capthermo-mlip` code.')
        spec.input('parameters', valid_type=orm.Dict, required=False,
                   help='Screen settings of MlipScreenCalcJob (fmax, max_steps, relax_cell, phonons, ...).')
        spec.input('options', valid_type=orm.Dict, required=False,
                   help='Scheduler options of the MlipScreenCalcJobs (resources, max_wallclock_seconds, ...).')
        spec.inputs.validator = validate_inputs
        spec.outline(cls.setup, cls.run_screens, cls.results)
        spec.output_namespace('compositions', dynamic=True,
                              help='Per composition (`x_0p250`): `lowest` relaxed StructureData, `ranking` Dict, '
                                   '`configurations` Dict (classes, multiplicities, sampled or not).')
        spec.exit_code(400, 'ERROR_SCREEN_FAILED',
                       message='The MlipScreenCalcJob of composition {x} failed with exit status {status}.')

    def setup(self):
        """Enumerate the configurations of every composition (one calcfunction call each)."""
        settings = {**self.inputs.prototype.get_dict(), 'supercell': self.inputs.supercell.get_list(),
                    'max_configurations': self.inputs.max_configurations.value, 'seed': self.inputs.seed.value}
        self.ctx.enumerated = {}
        for x in self.inputs.compositions.get_list():
            kwargs = {'parent': self.inputs.parent} if 'parent' in self.inputs else {}
            outputs = enumerate_structures(orm.Dict({**settings, 'x': float(x)}), **kwargs)
            self.ctx.enumerated[composition_key(x)] = outputs
            table = outputs['configurations'].get_dict()
            self.report(f'x = {x}: {len(table["configurations"])} of {table["n_classes"]} inequivalent classes '
                        f'({table["n_arrangements"]} arrangements, {table["n_permutations"]} site permutations)')

    def run_screens(self):
        """One MlipScreenCalcJob per composition."""
        futures = {}
        for key, outputs in self.ctx.enumerated.items():
            builder = MlipScreenCalcJob.get_builder()
            builder.code = self.inputs.code
            builder.model = self.inputs.model
            builder.structures = {k: v for k, v in outputs.items() if k != 'configurations'}
            if 'parameters' in self.inputs:
                builder.parameters = self.inputs.parameters
            if 'options' in self.inputs:
                builder.metadata.options = self.inputs.options.get_dict()
            builder.metadata.call_link_label = f'screen_{key}'
            futures[key] = self.submit(builder)
        return ToContext(**{f'screen_{key}': future for key, future in futures.items()})

    def results(self):
        """Rank each composition; expose the lowest relaxed structure, the ranking and the configurations."""
        for key, enumerated in self.ctx.enumerated.items():
            node = self.ctx[f'screen_{key}']
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_SCREEN_FAILED.format(x=key, status=node.exit_status)
            ranking = rank_configurations(enumerated['configurations'], node.outputs.results)
            lowest = ranking['lowest']
            self.out(f'compositions.{key}.lowest', node.outputs.relaxed[lowest])
            self.out(f'compositions.{key}.ranking', ranking)
            self.out(f'compositions.{key}.configurations', enumerated['configurations'])
            self.report(f'{key}: lowest {lowest} at {ranking["energy_per_atom"][0]:.5f} eV/atom of '
                        f'{len(ranking["keys"])} relaxed')
        return None
