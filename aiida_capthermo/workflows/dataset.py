"""``PhononInformedDatasetWorkChain``: from the parent structures to labelled, phonon-informed training sets in the
graph."""

from __future__ import annotations

import math

import numpy as np
from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, calcfunction, if_
from aiida.plugins import DataFactory

from aiida_capthermo.core.displacements import IMAGINARY_TREATMENTS
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.structures import set_structure_metadata
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.batch_label import BatchLabelWorkChain
from aiida_capthermo.workflows.engines import engine_namespace, label_batch_inputs, relax_engine_error
from aiida_capthermo.workflows.functions import build_end_members
from aiida_capthermo.workflows.phonons import ParentPhononsWorkChain
from aiida_capthermo.workflows.protocols import ProtocolMixin, load_code, set_options, to_node, unlanded_overrides
from aiida_capthermo.workflows.validation import (
    calculator_elements_error,
    compositions_error,
    end_member_atoms,
    prototype_error,
    supercell_error,
)

__all__ = ['PhononInformedDatasetWorkChain', 'generate_structures', 'relaxed_end_members']

ForceConstantsData = DataFactory('phonopy.force_constants')

SCHEMES = ('phonon', 'random')
DISTRIBUTIONS = ('uniform', 'gaussian')
COMPOSITION_MODES = ('grid', 'binomial')


# ---------------------------------------------------------------------------------------------- calcfunctions
@calcfunction
def parent_supercells(host: orm.StructureData, guest: orm.StructureData, supercell: orm.List) -> dict:
    """The end members repeated ``supercell`` times (ASE's order: the unit cell's atoms first), to relax in the
    supercell whose Γ point the engine samples for the phonons and labels."""
    repeats = tuple(int(n) for n in supercell.get_list())
    return {role: orm.StructureData(ase=node.get_ase().repeat(repeats)) for role, node in
            (('host', host), ('guest', guest))}


@calcfunction
def relaxed_end_members(labels: DatasetData, host: orm.StructureData, guest: orm.StructureData,
                        supercell: orm.List) -> dict:
    """The relaxed unit cells of the end members from their relaxed supercells (``labels``, keys host and guest):
    :func:`aiida_capthermo.core.structures.unit_cell_of_supercell`; the host's atoms wrapped into its cell and the
    guest's aligned to them (each atom the nearest image of the host's)."""
    from aiida_capthermo.core.structures import align_to

    cells = _relaxed_unit_cells(labels, host, guest, supercell)
    cells['host'].wrap()
    cells['guest'] = align_to(cells['host'], cells['guest'])
    return {role: orm.StructureData(ase=atoms) for role, atoms in cells.items()}


def _relaxed_unit_cells(labels, host, guest, supercell) -> dict:
    """The relaxed unit cells (ase.Atoms) by role; ValueError where a relaxation broke the unit cell's translations."""
    from aiida_capthermo.core.structures import unit_cell_of_supercell

    labelled = labels.get_labelled_set()
    keys = labels.base.attributes.get('keys')
    return {role: unit_cell_of_supercell(labelled.atoms(keys.index(role), with_labels=False), unit.get_ase(),
                                         supercell.get_list())
            for role, unit in (('host', host), ('guest', guest))}


def _reference_supercell(parent: orm.StructureData, supercell: list):
    """The parent supercell in phonopy's atom order (the order of the force constants)."""
    from aiida_capthermo.core.displacements import phonopy_supercell

    return phonopy_supercell(parent.get_ase(), supercell)


@calcfunction
def generate_structures(host_parent: orm.StructureData, guest_parent: orm.StructureData, settings: orm.Dict,
                        **force_constants) -> dict:
    """Make ``settings['n_structures']`` disordered, displaced supercells (see ``core.generation``) between the
    end members ``host_parent`` (x = 0) and ``guest_parent`` (x = 1), whose cells Vegard's law interpolates.

    ``settings``: host, guest, supercell, n_structures, seed, scheme (phonon|random|equilibrium),
    distribution, temperature (K), amplitude (Å), composition_mode, frequency_cutoff (THz), imaginary_modes
    (skip|absolute), stratum (index of the temperature or amplitude: the compositions are stratified over (x, T), see
    ``draw_compositions``). ``force_constants`` may hold ``host`` and/or ``guest`` ForceConstantsData for the phonon
    scheme. Every output structure records x, temperature and origin.
    """
    from aiida_capthermo.core.displacements import SupercellModes
    from aiida_capthermo.core.generation import GenerationSpec
    from aiida_capthermo.core.generation import generate_structures as generate

    s = settings.get_dict()
    reference = _reference_supercell(host_parent, s['supercell'])
    guest_reference = _reference_supercell(guest_parent, s['supercell'])
    modes = {key: SupercellModes.from_phonopy(node.get_phonopy_instance(), frequency_cutoff=s['frequency_cutoff'],
                                              imaginary=s.get('imaginary_modes', 'skip'))
             for key, node in force_constants.items()}
    spec = GenerationSpec(host=s['host'], guest=s['guest'], n_structures=s['n_structures'], seed=s['seed'],
                          scheme=s['scheme'],
                          distribution=s['distribution'], temperature=s.get('temperature', 0.0),
                          amplitude=s.get('amplitude', 0.1), composition_mode=s['composition_mode'],
                          stratum=s.get('stratum', 0),
                          x_values=tuple(s['x_values']) if s.get('x_values') else None)
    outputs = {}
    for index, item in enumerate(generate(spec, reference, modes.get('host'), modes.get('guest'), guest_reference)):
        structure = orm.StructureData(ase=item.atoms)
        set_structure_metadata(structure, x=item.x, temperature=item.temperature, origin=item.origin)
        outputs[f'structure_{index:05d}'] = structure
    return outputs


# ---------------------------------------------------------------------------------------------- validation
#: Largest frequency_cutoff accepted at submission (THz): above it most modes of these soft crystals (highest
#: parent frequencies about 8 THz) would be left undisplaced; a cutoff that leaves none fails at generation (403).
MAX_FREQUENCY_CUTOFF = 2.0


#: Random displacement amplitudes may reach this fraction of the nearest-neighbour distance (the second paper's
#: largest, 0.8 Å, is a third of the Ag-S distance of Ag3SBr).
MAX_AMPLITUDE_FRACTION = 0.5


def validate_inputs(inputs, _) -> str | None:
    prototype = inputs['prototype'].get_dict()
    supercell = inputs['supercell'].get_list()
    error = prototype_error(prototype) or supercell_error(supercell)
    if error:
        return error
    try:
        host, guest = end_member_atoms(prototype, inputs.get('parents', {}))
    except ValueError as exception:
        return str(exception)
    from aiida_capthermo.core.structures import is_preset

    if not is_preset(prototype) and 'guest' not in inputs.get('parents', {}) and 'relax' not in inputs:
        return ('your own parent\'s x = 1 end member would be its substituted copy in the parent\'s cell, neither '
                'relaxed: give `relax` (the local engine relaxes both end members), or the relaxed x = 1 cell as '
                'parents.guest')
    elements = sorted(set(host.get_chemical_symbols()) | set(guest.get_chemical_symbols()))
    for fidelity in ('low', 'high', 'phonons'):
        calculator = inputs.get(fidelity, {}).get('calculator')
        error = calculator_elements_error(calculator.get_dict(), elements) if calculator is not None else None
        if error:
            return f'{fidelity}.calculator: {error}'
    if 'relax' in inputs:
        from aiida_capthermo.calculations.label import validate_relax

        engine = inputs['phonons'] if 'code' in inputs.get('phonons', {}) else inputs.get('low', {})
        error = validate_relax(inputs['relax']) or relax_engine_error(engine)
        if error:
            return f'relax: {error}'
        if inputs.get('force_constants'):
            return ('relax and force_constants exclude each other: given force constants belong to the unrelaxed '
                    'parents; leave out one of them')
    scheme = inputs['scheme'].value
    if scheme not in SCHEMES:
        return f'scheme must be one of {SCHEMES}, got {scheme!r}'
    if inputs['distribution'].value not in DISTRIBUTIONS:
        return f'distribution must be one of {DISTRIBUTIONS}'
    if inputs['imaginary_modes'].value not in IMAGINARY_TREATMENTS:
        return f'imaginary_modes must be one of {IMAGINARY_TREATMENTS}, got {inputs["imaginary_modes"].value!r}'
    if inputs['composition_mode'].value not in COMPOSITION_MODES:
        return f'composition_mode must be one of {COMPOSITION_MODES}'
    temperatures = inputs['temperatures'].get_list()
    if scheme == 'phonon':
        if not temperatures:
            return 'the temperature list is empty'
        if any(not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0 for t in temperatures):
            return f'temperatures must be positive numbers in K, got {temperatures}'
    amplitudes = inputs['random_amplitudes'].get_list()
    if scheme == 'random' and (not amplitudes or any(a <= 0 for a in amplitudes)):
        return f'random_amplitudes must be a non-empty list of positive numbers (Å), got {amplitudes}'
    from aiida_capthermo.core.structures import nearest_neighbour_distance

    nearest = min(nearest_neighbour_distance(host), nearest_neighbour_distance(guest))
    if scheme == 'random' and max(amplitudes) > MAX_AMPLITUDE_FRACTION * nearest:
        return (f'random_amplitudes up to {max(amplitudes)} Å: above {MAX_AMPLITUDE_FRACTION} x the nearest-neighbour '
                f'distance ({nearest:.2f} Å) atoms collide; give at most {MAX_AMPLITUDE_FRACTION * nearest:.2f} Å')
    if 'x_values' in inputs:
        if inputs['composition_mode'].value != 'grid':
            return "x_values is used by composition_mode 'grid' only"
        error = compositions_error(inputs['x_values'].get_list(), supercell,
                                   host.get_chemical_symbols().count(prototype['host']))
        if error:
            return f'x_values: {error}'
    if inputs['structures_per_temperature'].value < 1:
        return 'structures_per_temperature must be at least 1: a dataset with zero structures is empty'
    for key in ('n_equilibrium', 'high_structures'):
        if inputs[key].value < 0:
            return f'{key} must be >= 0'
    if inputs['high_structures'].value > 0 and 'code' not in inputs.get('high', {}):
        return 'high_structures > 0 needs a `high` engine namespace'
    if inputs['batch_size'].value < 1 or inputs['max_concurrent'].value < 1:
        return 'batch_size and max_concurrent must be at least 1'
    # Ports with defaults may be absent here when the workchain is exposed in another (e.g. the study's validator).
    seed = inputs['seed'].value if 'seed' in inputs else 0
    if seed < 0:
        return f'seed must be a non-negative integer (numpy seeds), got {seed}'
    displacement = inputs['phonon_displacement'].value if 'phonon_displacement' in inputs else 0.01
    if not 0.001 <= displacement <= 0.1:
        return (f'phonon_displacement must lie in [0.001, 0.1] Å (finite displacements for the parent force '
                f'constants; phonopy uses 0.01), got {displacement}')
    cutoff = inputs['frequency_cutoff'].value if 'frequency_cutoff' in inputs else 0.1
    if not 0 <= cutoff <= MAX_FREQUENCY_CUTOFF:
        return (f'frequency_cutoff must lie in [0, {MAX_FREQUENCY_CUTOFF}] THz (modes below it are not displaced; '
                f'the default 0.1 skips the acoustic modes at Γ), got {cutoff}')
    force_constants = inputs.get('force_constants', {})
    for role, node in force_constants.items():
        matrix = np.asarray(node.supercell_matrix)
        if not np.array_equal(matrix, np.diag(supercell)):
            return f'force_constants.{role} were computed in supercell {matrix.tolist()}, not diag({supercell})'
    return None


# ---------------------------------------------------------------------------------------------- the workchain
class PhononInformedDatasetWorkChain(ProtocolMixin, WorkChain):
    """Build labelled training sets of thermally displaced, chemically disordered supercells.

    Outputs ``low`` (energies, forces, stresses, gaps of displaced structures: the MLIP and GNN set),
    ``equilibrium`` (undisplaced structures, labelled like ``low``: for the GNN only) and ``high``
    (gaps of further, distinct structures with the high-fidelity engine).
    """

    _protocol_file = 'dataset'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('prototype', valid_type=orm.Dict,
                   help='The solid solution: host (x=0) and guest (x=1) species of the substituted sublattice. Alone, '
                        'they name the sublattice of parents.host; with a (face centres), b (body centre), a_host and '
                        'a_guest (Å) they are the cubic A3BX anti-perovskite preset, built for you.')
        spec.input_namespace('parents', valid_type=orm.StructureData, required=False,
                             help='The parent unit cells: `host` (x=0; any periodic structure with host atoms, '
                                  'required without the preset) and optionally `guest` (x=1: the same atoms in the '
                                  'same order, every host site taken by the guest; default: substituted from host).')
        spec.input('relax', valid_type=orm.Dict, required=False,
                   help='Relax both end members (cell and positions, space group kept) with the phonon engine (the '
                        'low engine by default) in the supercell before their phonons: fmax (eV/Å), max_steps, cell, '
                        'symprec. Absent: the parents are used as they are. The local engine only.')
        spec.input_namespace('force_constants', valid_type=ForceConstantsData, required=False,
                             help='Optional harmonic force constants `host` and/or `guest` in the chosen supercell; '
                                  'computed with the low engine when absent (phonon scheme).')
        spec.input('supercell', valid_type=orm.List, default=lambda: orm.List([2, 2, 2]),
                   help='Diagonal supercell of the primitive cell, e.g. [2, 2, 2] (40 atoms).')
        spec.input('temperatures', valid_type=orm.List,
                   default=lambda: orm.List([100.0, 200.0, 300.0, 400.0, 500.0, 600.0]),
                   help='Temperatures in K of the phonon-informed displacements.')
        spec.input('structures_per_temperature', valid_type=orm.Int, default=lambda: orm.Int(10),
                   help='Low-fidelity structures per temperature (per amplitude for the random scheme).')
        spec.input('scheme', valid_type=orm.Str, default=lambda: orm.Str('phonon'),
                   help="'phonon' (paper eq. 1 / normal modes) or 'random' (uniform displacements, second paper "
                        'eq. 2).')
        spec.input('distribution', valid_type=orm.Str, default=lambda: orm.Str('uniform'),
                   help="Phonon scheme: 'uniform' (eq. 1, eps ~ U[-1, 1]) or 'gaussian' (canonical normal modes).")
        spec.input('random_amplitudes', valid_type=orm.List, default=lambda: orm.List([0.1, 0.2, 0.3, 0.4]),
                   help='Random scheme: displacement amplitudes a in Å (u = eps * a).')
        spec.input('composition_mode', valid_type=orm.Str, default=lambda: orm.Str('grid'),
                   help="How guest counts are drawn per structure: 'grid' (cycle k = 0..n_sites) or 'binomial'.")
        spec.input('x_values', valid_type=orm.List, required=False,
                   help="Composition range for the 'grid' mode: the x values (multiples of 1/n_sites) to cycle "
                        'through; default: every k/n_sites from 0 to 1.')
        spec.input('n_equilibrium', valid_type=orm.Int, default=lambda: orm.Int(2),
                   help='Undisplaced structures (random compositions) for the GNN set; not in the MLIP set.')
        spec.input('high_structures', valid_type=orm.Int, default=lambda: orm.Int(0),
                   help='Number of further displaced structures labelled (gap only) by the `high` engine.')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(20251119),
                   help='Seed of all random draws: the same inputs give the same structures.')
        spec.input('phonon_displacement', valid_type=orm.Float, default=lambda: orm.Float(0.01),
                   help='Finite displacement (Å) for the parent force constants.')
        spec.input('frequency_cutoff', valid_type=orm.Float, default=lambda: orm.Float(0.1),
                   help='Modes whose frequency is below this in magnitude (THz) are skipped by the sampler (see '
                        'imaginary_modes).')
        spec.input('imaginary_modes', valid_type=orm.Str, default=lambda: orm.Str('absolute'),
                   help="Imaginary parent modes (the cubic phase is unstable at 0 K): 'absolute' samples them as real "
                        "modes of frequency abs(f) so that the soft directions MD explores are in the training set; "
                        "'skip' leaves them out (eq. 1 over the stable modes only). Counted and reported either way.")
        spec.input('batch_size', valid_type=orm.Int, default=lambda: orm.Int(20),
                   help='Structures per labelling job.')
        spec.input('max_concurrent', valid_type=orm.Int, default=lambda: orm.Int(4),
                   help='Labelling jobs running at the same time.')
        engine_namespace(spec, 'low', help='Low-fidelity engine (energy, forces, stress, gap; PBEsol-like).')
        engine_namespace(spec, 'high', required=False, help='High-fidelity engine (gap only; HSEsol-like).')
        engine_namespace(spec, 'phonons', required=False,
                         help='Engine for the parent force constants (finite displacements); default: the low engine.')
        spec.inputs.validator = validate_inputs

        spec.outline(
            cls.setup,
            if_(cls.should_relax)(cls.run_relax, cls.inspect_relax),
            if_(cls.should_compute_phonons)(cls.run_phonons, cls.inspect_phonons),
            cls.generate,
            cls.run_labels,
            cls.inspect_labels,
            cls.results,
        )
        spec.output('low', valid_type=DatasetData, help='Low-fidelity dataset of displaced structures.')
        spec.output('equilibrium', valid_type=DatasetData, required=False,
                    help='Undisplaced structures labelled by the low engine (GNN training only).')
        spec.output('high', valid_type=DatasetData, required=False, help='High-fidelity band gaps.')
        spec.output_namespace('force_constants', valid_type=ForceConstantsData, required=False,
                              help='The parent force constants that informed the displacements.')
        spec.output_namespace('parents', valid_type=orm.StructureData,
                              help='The end members the structures were built from: `host` (x = 0) and `guest` '
                                   '(x = 1), relaxed when `relax` was given. Later stages build their cells from '
                                   'these.')
        spec.exit_code(EXIT_CODES['ERROR_PHONONS_FAILED'], 'ERROR_PHONONS_FAILED',
                       message='The parent phonons could not be computed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_PARENT_RELAX_FAILED'], 'ERROR_PARENT_RELAX_FAILED',
                       message='The end members could not be relaxed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_NO_MODE_TO_SAMPLE'], 'ERROR_NO_MODE_TO_SAMPLE',
                       message='The {role} parent has no mode above frequency_cutoff {cutoff} THz: every structure '
                               'would be undisplaced.')
        spec.exit_code(EXIT_CODES['ERROR_NO_STRUCTURE_LABELLED'], 'ERROR_NO_STRUCTURE_LABELLED',
                       message='No structure of the {fidelity} set could be labelled.')

    # ------------------------------------------------------------------ steps
    def setup(self):
        self.ctx.prototype = self.inputs.prototype.get_dict()
        parents = build_end_members(self.inputs.prototype, **self.inputs.get('parents', {}))
        self.ctx.parents = dict(parents)
        self.ctx.force_constants = dict(self.inputs.get('force_constants', {}))

    def should_relax(self):
        return 'relax' in self.inputs

    def run_relax(self):
        """Relax both end members in the supercell with the phonon engine (one job)."""
        supercells = parent_supercells(self.ctx.parents['host'], self.ctx.parents['guest'], self.inputs.supercell)
        process, inputs = label_batch_inputs(self._phonon_engine(), dict(supercells), 'low', relax=self.inputs.relax)
        inputs['metadata'] = {'call_link_label': 'relax_parents'}
        self.report('relaxing the end members (cell and positions) with the phonon engine')
        return ToContext(relax=self.submit(process, **inputs))

    def inspect_relax(self):
        node = self.ctx.relax
        if not node.is_finished_ok:
            jobs = [child.exit_message for child in node.called if child.exit_message]
            detail = f' (its last job: {jobs[-1]})' if jobs else ''
            return self.exit_codes.ERROR_PARENT_RELAX_FAILED.format(message=f'{node.exit_message}{detail}')
        labels = node.outputs.labels
        failed = labels.base.attributes.get('failed')
        if failed:
            errors = labels.base.attributes.get('failed_errors')
            return self.exit_codes.ERROR_PARENT_RELAX_FAILED.format(message=f'{errors}')
        try:
            _relaxed_unit_cells(labels, self.ctx.parents['host'], self.ctx.parents['guest'], self.inputs.supercell)
        except ValueError as exception:
            return self.exit_codes.ERROR_PARENT_RELAX_FAILED.format(message=str(exception))
        self.ctx.parents = dict(relaxed_end_members(labels, self.ctx.parents['host'], self.ctx.parents['guest'],
                                                    self.inputs.supercell))
        for role, record in sorted(labels.base.attributes.get('relaxations', {}).items()):
            lengths = self.ctx.parents[role].get_ase().cell.lengths()
            self.report(f'{role} end member relaxed in {record["steps"]} steps: largest force '
                        f'{record["max_force"]:.1e} eV/Å, cell lengths {np.round(lengths, 4).tolist()} Å')
        return None

    def should_compute_phonons(self):
        return self.inputs.scheme.value == 'phonon' and set(self.ctx.force_constants) != {'host', 'guest'}

    def run_phonons(self):
        futures = {}
        for role in ('host', 'guest'):
            if role in self.ctx.force_constants:
                continue
            inputs = AttributeDict({
                'structure': self.ctx.parents[role], 'supercell_matrix': self.inputs.supercell,
                'displacement': self.inputs.phonon_displacement, 'engine': self._phonon_engine(),
                'metadata': {'call_link_label': f'phonons_{role}'}})
            futures[f'phonons_{role}'] = self.submit(ParentPhononsWorkChain, **inputs)
            self.report(f'computing the force constants of the {role} parent')
        return ToContext(**futures)

    def _phonon_engine(self) -> dict:
        engine = self.inputs.get('phonons', {})
        return dict(engine) if 'code' in engine else dict(self.inputs.low)

    def inspect_phonons(self):
        for role in ('host', 'guest'):
            key = f'phonons_{role}'
            if key not in self.ctx:
                continue
            node = self.ctx[key]
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_PHONONS_FAILED.format(message=f'{role}: {node.exit_message}')
            self.ctx.force_constants[role] = node.outputs.force_constants
        return None

    def _settings(self, **kwargs) -> orm.Dict:
        p = self.ctx.prototype
        settings = {
            'host': p['host'], 'guest': p['guest'], 'supercell': self.inputs.supercell.get_list(),
            'distribution': self.inputs.distribution.value, 'composition_mode': self.inputs.composition_mode.value,
            'frequency_cutoff': self.inputs.frequency_cutoff.value,
            'imaginary_modes': self.inputs.imaginary_modes.value}
        if 'x_values' in self.inputs:
            settings['x_values'] = self.inputs.x_values.get_list()
        settings.update(kwargs)
        return orm.Dict(settings)

    def generate(self):
        """Create every structure by calcfunction: the low, equilibrium and high sets."""
        if self.inputs.scheme.value == 'phonon':
            self.ctx.phonon_modes = self._phonon_mode_report()
            for role, entry in self.ctx.phonon_modes.items():
                if entry['n_active'] == 0:
                    return self.exit_codes.ERROR_NO_MODE_TO_SAMPLE.format(role=role,
                                                                          cutoff=self.inputs.frequency_cutoff.value)
        seed = self.inputs.seed.value
        n_per = self.inputs.structures_per_temperature.value
        fc = {key: self.ctx.force_constants[key] for key in self.ctx.force_constants} \
            if self.inputs.scheme.value == 'phonon' else {}
        host, guest = self.ctx.parents['host'], self.ctx.parents['guest']
        structures = {'low': [], 'equilibrium': [], 'high': []}
        if self.inputs.scheme.value == 'phonon':
            points = [('temperature', float(t)) for t in self.inputs.temperatures.get_list()]
        else:
            points = [('amplitude', float(a)) for a in self.inputs.random_amplitudes.get_list()]
        for index, (key, value) in enumerate(points):
            settings = self._settings(scheme=self.inputs.scheme.value, n_structures=n_per, seed=seed + index,
                                      stratum=index, **{key: value})
            outputs = generate_structures(host, guest, settings, **fc)
            structures['low'].extend(outputs[k] for k in sorted(outputs))
        if self.inputs.n_equilibrium.value > 0:
            settings = self._settings(scheme='equilibrium', n_structures=self.inputs.n_equilibrium.value,
                                      seed=seed + 10_000)
            outputs = generate_structures(host, guest, settings)
            structures['equilibrium'].extend(outputs[k] for k in sorted(outputs))
        n_high = self.inputs.high_structures.value
        if n_high > 0:
            # Distinct structures: their own seeds, spread over the same temperatures/amplitudes.
            share = np.array_split(np.arange(n_high), len(points))
            for index, ((key, value), part) in enumerate(zip(points, share)):
                if len(part) == 0:
                    continue
                settings = self._settings(scheme=self.inputs.scheme.value, n_structures=len(part),
                                          seed=seed + 20_000 + index, stratum=index + len(points),
                                          **{key: value})
                outputs = generate_structures(host, guest, settings, **fc)
                structures['high'].extend(outputs[k] for k in sorted(outputs))
        self.ctx.structures = {name: [node.pk for node in nodes] for name, nodes in structures.items() if nodes}
        self.report(f'generated {dict((n, len(v)) for n, v in structures.items())} structures')
        return None

    def run_labels(self):
        """One batch-labelling stage per set (low, equilibrium, high), each throttled on its own."""
        common = self._dataset_attributes()
        futures = {}
        for name, pks in self.ctx.structures.items():
            fidelity = 'high' if name == 'high' else 'low'
            futures[f'label_{name}'] = self.submit(
                BatchLabelWorkChain, structures={f'structure_{i:05d}': orm.load_node(pk) for i, pk in enumerate(pks)},
                engine=dict(self.inputs.high if name == 'high' else self.inputs.low), fidelity=orm.Str(fidelity),
                batch_size=self.inputs.batch_size, max_concurrent=self.inputs.max_concurrent,
                attributes=orm.Dict({**common, 'fidelity': fidelity, 'subset': name}),
                metadata={'call_link_label': f'label_{name}'})
        return ToContext(**futures)

    def inspect_labels(self):
        """The low set must have labels, and the high set when one was asked for."""
        for name in ('low', 'high'):
            key = f'label_{name}'
            if key in self.ctx and not self.ctx[key].is_finished_ok:
                return self.exit_codes.ERROR_NO_STRUCTURE_LABELLED.format(fidelity=name)
        if 'label_equilibrium' in self.ctx and not self.ctx.label_equilibrium.is_finished_ok:
            self.report('no equilibrium structure could be labelled; the GNN trains without them')
        return None

    def _dataset_attributes(self) -> dict:
        scheme = self.inputs.scheme.value
        common = {'scheme': scheme, 'seed': self.inputs.seed.value,
                  'composition_mode': self.inputs.composition_mode.value,
                  'supercell': self.inputs.supercell.get_list(), 'prototype': self.ctx.prototype}
        if scheme == 'phonon':
            common['distribution'] = self.inputs.distribution.value
            common['phonon_modes'] = self.ctx.phonon_modes
        else:
            common['random_amplitudes'] = self.inputs.random_amplitudes.get_list()
        return common

    def results(self):
        for name in ('low', 'equilibrium', 'high'):
            key = f'label_{name}'
            if key in self.ctx and self.ctx[key].is_finished_ok:
                self.out(name, self.ctx[key].outputs.labels)
        scheme = self.inputs.scheme.value
        for role, node in self.ctx.parents.items():
            self.out(f'parents.{role}', node)
        for role, node in self.ctx.force_constants.items():
            if scheme == 'phonon':
                self.out(f'force_constants.{role}', node)
        self.report(f'datasets: low {self.outputs["low"].n_structures} structures')

    def _phonon_mode_report(self) -> dict:
        """Per parent: how many supercell modes the sampler displaces and skips (imaginary, near zero) and the
        softest one."""
        from aiida_capthermo.core.displacements import SupercellModes

        report = {}
        for role, node in self.ctx.force_constants.items():
            modes = SupercellModes.from_phonopy(node.get_phonopy_instance(), self.inputs.frequency_cutoff.value,
                                                self.inputs.imaginary_modes.value)
            report[role] = modes.summary()
            if modes.n_imaginary:
                treatment = 'skips them' if modes.imaginary == 'skip' else 'samples them at |f|'
                self.report(f'{role} parent: {modes.n_imaginary} of {len(modes.frequencies)} supercell modes are '
                            f'imaginary (softest {modes.frequencies.min():.2f} THz); the sampler {treatment}')
        return report

    # ------------------------------------------------------------------ protocol
    @classmethod
    def get_builder_from_protocol(cls, code: orm.AbstractCode, high_code: orm.AbstractCode | None = None,
                                  protocol: str | None = None, overrides: dict | None = None,
                                  options: dict | None = None, engine: str = 'local'):
        """Return a builder filled from the protocol (``demo``, ``fast``, ``paper``) and ``overrides``.

        ``code`` labels the low-fidelity set (and the parent phonons), ``high_code`` (default: ``code``) the
        high-fidelity gaps; ``options`` are the scheduler options of every labelling job. The protocols' ``relax`` of
        the end members needs the local engine: with ``engine='vasp'`` it is left out unless the overrides ask for it
        (which is then refused, with the message to give relaxed parents).
        """
        inputs = cls.get_protocol_inputs(protocol, overrides)
        low_engine = inputs.get('phonons', inputs.get('low', {})).get('engine', engine)
        if low_engine != 'local' and 'relax' not in (overrides or {}):
            inputs.pop('relax', None)  # the protocols relax with the local engine; with VASP give relaxed parents
        builder = cls.get_builder()
        ports = cls.spec().inputs
        simple = ('prototype', 'relax', 'supercell', 'temperatures', 'structures_per_temperature', 'scheme',
                  'distribution',
                  'random_amplitudes', 'composition_mode', 'n_equilibrium', 'high_structures', 'seed',
                  'phonon_displacement', 'x_values', 'imaginary_modes', 'frequency_cutoff', 'batch_size',
                  'max_concurrent')
        unknown = set(inputs) - set(simple) - {'low', 'high', 'phonons'}
        if unknown:
            raise ValueError(f'unknown inputs in protocol or overrides: {sorted(unknown)}')
        for key, value in inputs.items():
            if key in simple:
                builder[key] = to_node(ports[key], value)
        for fidelity, fidelity_code in (('low', code), ('high', high_code or code), ('phonons', code)):
            if fidelity == 'high' and inputs.get('high_structures', 0) == 0:
                continue
            if fidelity == 'phonons' and (inputs.get('scheme') == 'random' or 'phonons' not in inputs):
                continue
            namespace = inputs.get(fidelity, {})
            unknown = set(namespace) - {'engine', 'code', 'calculator', 'vasp', 'options'}
            if unknown:
                raise ValueError(f'unknown {fidelity} engine inputs in protocol or overrides: {sorted(unknown)}')
            builder[fidelity]['engine'] = orm.Str(namespace.get('engine', engine))
            builder[fidelity]['code'] = load_code(namespace.get('code', fidelity_code))
            for key in ('calculator', 'vasp'):
                if key in namespace and (key == 'vasp') == (builder[fidelity]['engine'].value == 'vasp'):
                    builder[fidelity][key] = to_node(ports[fidelity][key], namespace[key])
            set_options(builder[fidelity], 'options', options, namespace.get('options'))
        missing = unlanded_overrides(builder, overrides or {})
        if missing:
            raise ValueError(f'overrides that no input of the dataset workchain takes: {missing}')
        return builder
