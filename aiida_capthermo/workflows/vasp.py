"""The ``vasp`` labelling engine: label a batch of structures with VASP through aiida-vasp.

:class:`VaspLabelWorkChain` runs one aiida-vasp ``VaspWorkChain`` (``vasp.v2.vasp``, with its restart
handlers) per structure, all in parallel, with the PBEsol or HSEsol preset of
``protocols/vasp.yaml``, and collects the labels from each run's ``misc`` output into one
:class:`~aiida_capthermo.data.dataset.DatasetData` made by the calcfunction :func:`collect_vasp_labels`,
so the graph links every label to its VASP run and its structure.

Labels and units (what is read from ``misc``):

- energy: ``total_energies[energy_type]``, by default ``energy_extrapolated`` (VASP's
  ``energy(sigma->0)``, ``e_0_energy``), in eV;
- forces: ``forces`` (eV/Å, in the order of the structure's sites);
- stress: ``stress`` (VASP: kBar, positive = compressive) converted to a Voigt 6-vector in eV/Å^3 with
  ASE's sign (positive = tensile): ``sigma_ase = -0.1 GPa * sigma_vasp``;
- gap, vbm, cbm: ``band_properties`` (``band_gap``, ``vbm``, ``cbm``; eV), from the occupations.

The engine contract shared with the ``local`` engine: inputs ``structures`` (namespace of
``StructureData``, keys are labels) and ``fidelity`` (``low``: energy/forces/stress/gap, ``high``:
gap only); output ``labels`` with one row per structure that succeeded, in sorted key order, and the
attributes ``n_failed``, ``failed`` (keys), ``engine``, ``method`` and ``fidelity``. A structure whose
VASP run fails is recorded, not fatal; the work chain fails only when no structure was labelled.
"""

from __future__ import annotations

import copy
import functools
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction
from aiida.plugins import WorkflowFactory

from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.structures import labelled_set_from_structures
from aiida_capthermo.exit_codes import EXIT_CODES

__all__ = [
    'VaspLabelWorkChain',
    'collect_vasp_labels',
    'load_vasp_presets',
    'kpoint_mesh_from_length',
    'vasp_stress_to_voigt',
    'labels_from_misc',
    'FIDELITY_LABELS',
]

#: Labels each fidelity must provide.
FIDELITY_LABELS = {'low': ('energy', 'forces', 'stress', 'gap', 'vbm', 'cbm'), 'high': ('gap', 'vbm', 'cbm')}
#: Energies aiida-vasp can report (``total_energies`` keys of ``misc``).
ENERGY_TYPES = ('energy_extrapolated', 'energy_free', 'energy_no_entropy')
#: 1 kBar in eV/Å^3 (0.1 GPa; 1 GPa = 1e9 J/m^3 / (1.602176634e-19 J/eV * 1e30 Å^3/m^3)).
KBAR_IN_EV_PER_A3 = 0.1 / 160.21766208

_PROTOCOL_FILE = pathlib.Path(__file__).parent / 'protocols' / 'vasp.yaml'


@functools.lru_cache(maxsize=1)
def _read_presets() -> dict:
    with _PROTOCOL_FILE.open(encoding='utf8') as handle:
        return yaml.safe_load(handle)


def load_vasp_presets() -> dict:
    """Return (a deep copy of) the engine's presets from ``protocols/vasp.yaml``.

    Keys: ``presets`` (``PBEsol``, ``HSEsol``: ``description``, ``labels``, ``incar``), ``default_preset``
    (per fidelity), ``kpoints_length`` (Å), ``energy_type`` and ``default_options``.
    """
    return copy.deepcopy(_read_presets())


def kpoint_mesh_from_length(cell: np.ndarray, length: float) -> list[int]:
    """Divisions of a k-point mesh for ``cell`` from the k-point length ``length`` (Å).

    ``N_i = max(1, int(length * |b_i| + 0.5))`` with ``b_i`` the reciprocal vectors without the 2 pi
    factor (``|b_i| = 1 / d_i``, the inverse spacing of the lattice planes), VASP's fully automatic rule.
    ``length = 58`` Å gives 12x12x12 on the 5-atom Ag3SI and Ag3SBr cells and 6x6x6 on 2x2x2 supercells.

    Parameters
    ----------
    cell
        Lattice vectors as rows [3, 3], Å.
    length
        k-point length R_k, Å. Must be positive.
    """
    if not length > 0:
        raise ValueError(f'the k-point length must be positive, got {length}')
    reciprocal = np.linalg.inv(np.asarray(cell, dtype=float)).T  # [3, 3] rows b_i, 1/Å
    return [max(1, int(length * float(np.linalg.norm(b)) + 0.5)) for b in reciprocal]


def vasp_stress_to_voigt(stress_kbar) -> np.ndarray:
    """Convert VASP's 3x3 stress (kBar, positive = compressive) to an ASE Voigt 6-vector (eV/Å^3, tensile > 0).

    Returns ``(xx, yy, zz, yz, xz, xy)``.
    """
    s = -np.asarray(stress_kbar, dtype=float).reshape(3, 3) * KBAR_IN_EV_PER_A3
    s = 0.5 * (s + s.T)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def labels_from_misc(misc: Mapping, n_atoms: int, fidelity: str, energy_type: str = 'energy_extrapolated') -> dict:
    """Extract labels from the ``misc`` output (as a dict) of an aiida-vasp run.

    Parameters
    ----------
    misc
        Contents of the ``misc`` Dict of a ``VaspWorkChain``/``VaspCalculation``.
    n_atoms
        Number of atoms of the structure (forces are checked against it).
    fidelity
        ``low`` reads energy, forces, stress and the band edges, ``high`` only the band edges.
    energy_type
        Which ``total_energies`` entry is the energy label.

    Returns
    -------
    dict
        The labels of :data:`FIDELITY_LABELS` ``[fidelity]``: ``energy`` (eV), ``forces`` [n_atoms, 3] (eV/Å),
        ``stress`` [6] (eV/Å^3, ASE sign), ``gap``, ``vbm``, ``cbm`` (eV).

    Raises
    ------
    KeyError, ValueError
        When a label is missing or has the wrong shape (the structure then counts as failed).
    """
    labels: dict[str, Any] = {}
    bands = misc['band_properties']
    labels.update(gap=float(bands['band_gap']), vbm=float(bands['vbm']), cbm=float(bands['cbm']))
    if fidelity == 'low':
        labels['energy'] = float(misc['total_energies'][energy_type])
        forces = np.asarray(misc['forces'], dtype=float)
        if forces.shape != (n_atoms, 3):
            raise ValueError(f'forces have shape {forces.shape}, expected ({n_atoms}, 3)')
        labels['forces'] = forces
        labels['stress'] = vasp_stress_to_voigt(misc['stress'])
    for name, value in labels.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f'label {name} is not finite: {value}')
    return labels


@calcfunction
def collect_vasp_labels(attributes: orm.Dict, **nodes: orm.Data) -> DatasetData:
    """Build the labelled dataset from the structures and the ``misc`` outputs of their VASP runs.

    ``nodes`` holds ``structure_<key>`` (StructureData) and ``misc_<key>`` (Dict) for every structure that
    succeeded; ``attributes`` holds ``fidelity``, ``energy_type``, ``engine``, ``method``, ``failed`` and
    ``failure_reasons``, which become attributes. Rows are in sorted key order.
    """
    meta = attributes.get_dict()
    keys = sorted(label[len('structure_'):] for label in nodes if label.startswith('structure_'))
    structures = {key: nodes[f'structure_{key}'] for key in keys}
    labelled = labelled_set_from_structures(structures)
    offsets = labelled.offsets
    for row, key in enumerate(keys):
        n_atoms = int(labelled.n_atoms[row])
        labels = labels_from_misc(nodes[f'misc_{key}'].get_dict(), n_atoms, meta['fidelity'], meta['energy_type'])
        for name in ('energy', 'gap', 'vbm', 'cbm'):
            if name in labels:
                labelled[name][row] = labels[name]
        if 'forces' in labels:
            labelled.forces[offsets[row]:offsets[row + 1]] = labels['forces']
        if 'stress' in labels:
            labelled.stress[row] = labels['stress']
    return DatasetData.from_labelled_set(
        labelled, engine=meta['engine'], method=meta['method'], gap_method=meta['method'], fidelity=meta['fidelity'],
        energy_type=meta['energy_type'], keys=keys, n_failed=len(meta['failed']), failed=list(meta['failed']),
        failure_reasons=meta['failure_reasons'])


# ------------------------------------------------------------------------------------------ validation
def validate_fidelity(node: orm.Str, _) -> str | None:
    if node.value not in FIDELITY_LABELS:
        return f'fidelity must be one of {sorted(FIDELITY_LABELS)}, got {node.value!r}'
    return None


def validate_preset(node: orm.Str, _) -> str | None:
    presets = _read_presets()['presets']
    if node.value not in presets:
        return f'preset must be one of {sorted(presets)}, got {node.value!r}'
    return None


def validate_energy_type(node: orm.Str, _) -> str | None:
    if node.value not in ENERGY_TYPES:
        return f'energy_type must be one of {list(ENERGY_TYPES)}, got {node.value!r}'
    return None


def validate_parameters(node: orm.Dict, _) -> str | None:
    bad = [key for key in node.get_dict() if key != key.lower()]
    if bad:
        return f'INCAR overrides must use lower-case tags (aiida-vasp convention); got {bad}'
    if 'incar' in node.get_dict():
        return 'give the INCAR overrides directly ({"encut": 600}), not under an "incar" key'
    return None


def validate_kpoints_length(node: orm.Float, _) -> str | None:
    if not node.value > 0:
        return f'kpoints_length must be positive (Å), got {node.value}'
    return None


def validate_inputs(inputs: dict, _) -> str | None:
    """Check the batch before anything is submitted: non-empty, potentials for every element."""
    structures = inputs.get('structures', {})
    if not structures:
        return 'the `structures` namespace is empty: give at least one StructureData'
    for key in structures:
        if not key.isidentifier():
            return f'structure key {key!r} must be a valid Python identifier (it becomes a link label)'
    mapping = inputs['potential_mapping'].get_dict()
    for key, structure in structures.items():
        missing = sorted(set(structure.get_kind_names()) - set(mapping))
        if missing:
            return f'potential_mapping has no POTCAR for kinds {missing} of structure {key!r}'
    return None


class VaspLabelWorkChain(WorkChain):
    """Label a batch of structures with VASP (aiida-vasp ``VaspWorkChain``), PBEsol or HSEsol preset.

    Every structure gets its own ``VaspWorkChain`` (restart handlers included), all launched at once;
    the labels are collected by :func:`collect_vasp_labels` into the ``labels`` output.
    """

    _vasp_workchain = 'vasp.v2.vasp'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True,
                             help='The structures to label; keys are their labels (valid identifiers) and order the '
                                  'rows of the dataset.')
        spec.input('fidelity', valid_type=orm.Str, default=lambda: orm.Str('low'), validator=validate_fidelity,
                   help="'low': energy, forces, stress, gap, VBM, CBM; 'high': gap, VBM and CBM only.")
        spec.input('code', valid_type=orm.AbstractCode,
                   help='The VASP code (aiida-vasp plugin `vasp.vasp`) on the computer that runs the jobs.')
        spec.input('potential_family', valid_type=orm.Str,
                   help='Label of the POTCAR family uploaded with `aiida-vasp potcar uploadfamily`.')
        spec.input('potential_mapping', valid_type=orm.Dict,
                   help='POTCAR symbol per kind name, e.g. {"Ag": "Ag", "S": "S", "I": "I", "Br": "Br"}.')
        spec.input('preset', valid_type=orm.Str, required=False, validator=validate_preset,
                   help="INCAR preset of protocols/vasp.yaml: 'PBEsol' or 'HSEsol'. Default: PBEsol for the low "
                        'fidelity, HSEsol for the high one.')
        spec.input('parameters', valid_type=orm.Dict, required=False, validator=validate_parameters,
                   help='INCAR overrides (lower-case tags) merged over the preset; a value of null removes a tag.')
        spec.input('kpoints_length', valid_type=orm.Float, required=False, validator=validate_kpoints_length,
                   help='k-point length R_k in Å: N_i = max(1, int(R_k * norm(b_i) + 0.5)). Default from the presets '
                        '(58 Å: 12x12x12 on the 5-atom cell, 6x6x6 on the 2x2x2 cell).')
        spec.input('energy_type', valid_type=orm.Str, required=False, validator=validate_energy_type,
                   help="Energy label: 'energy_extrapolated' (sigma -> 0, default), 'energy_free' (TOTEN, "
                        "force-consistent) or 'energy_no_entropy'.")
        spec.input('options', valid_type=orm.Dict, required=False,
                   help='`metadata.options` of every VaspCalculation (resources, max_wallclock_seconds, queue_name, '
                        'account, withmpi, environment_variables...), merged over the presets\' default_options.')
        spec.input('settings', valid_type=orm.Dict, required=False,
                   help='Extra aiida-vasp settings merged into those the engine sets (parser_settings.energy_type).')
        spec.input('max_iterations', valid_type=orm.Int, default=lambda: orm.Int(5),
                   help='Maximum VaspCalculation restarts per structure (VaspWorkChain.max_iterations).')
        spec.input('clean_workdir', valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help='Clean the remote folders of successful VASP runs.')
        spec.inputs.validator = validate_inputs

        spec.outline(
            cls.setup,
            cls.run_vasp,
            cls.inspect_vasp,
            cls.results,
        )
        spec.output('labels', valid_type=DatasetData,
                    help='Labelled dataset, one row per structure that succeeded (sorted keys); attributes n_failed, '
                         'failed, engine, method, fidelity, energy_type.')
        spec.exit_code(EXIT_CODES['ERROR_NO_STRUCTURE_LABELLED'], 'ERROR_NO_STRUCTURE_LABELLED',
                       message='No structure of the batch was labelled; failures: {failures}')

    # ------------------------------------------------------------------ steps
    def setup(self) -> None:
        """Resolve the preset, the INCAR, the options and the parser settings once for the batch."""
        presets = load_vasp_presets()
        fidelity = self.inputs.fidelity.value
        preset = self.inputs.preset.value if 'preset' in self.inputs else presets['default_preset'][fidelity]
        incar = presets['presets'][preset]['incar']
        if 'parameters' in self.inputs:
            for key, value in self.inputs.parameters.get_dict().items():
                if value is None:
                    incar.pop(key, None)
                else:
                    incar[key] = value
        options = presets['default_options']
        if 'options' in self.inputs:
            options.update(self.inputs.options.get_dict())
        energy_type = self.inputs.energy_type.value if 'energy_type' in self.inputs else presets['energy_type']
        settings = self.inputs.settings.get_dict() if 'settings' in self.inputs else {}
        parser_settings = settings.setdefault('parser_settings', {})
        requested = list(parser_settings.get('energy_type', []))
        parser_settings['energy_type'] = [*requested, energy_type] if energy_type not in requested else requested
        self.ctx.preset = preset
        self.ctx.energy_type = energy_type
        self.ctx.incar = incar
        self.ctx.options = options
        self.ctx.settings = settings
        self.ctx.kpoints_length = (self.inputs.kpoints_length.value if 'kpoints_length' in self.inputs
                                   else float(presets['kpoints_length']))
        self.ctx.structure_keys = sorted(self.inputs.structures)
        self.report(f'labelling {len(self.ctx.structure_keys)} structures with VASP, preset {preset}, '
                    f'fidelity {fidelity}, '
                    f'k-point length {self.ctx.kpoints_length} Å')

    def run_vasp(self):
        """Launch one VaspWorkChain per structure, all in parallel."""
        VaspWorkChain = WorkflowFactory(self._vasp_workchain)
        parameters = orm.Dict({'incar': self.ctx.incar})
        settings = orm.Dict(self.ctx.settings)
        futures = {}
        for key in self.ctx.structure_keys:
            structure = self.inputs.structures[key]
            kpoints = orm.KpointsData()
            kpoints.set_cell_from_structure(structure)
            kpoints.set_kpoints_mesh(kpoint_mesh_from_length(np.array(structure.cell), self.ctx.kpoints_length))
            inputs = {
                'code': self.inputs.code,
                'structure': structure,
                'parameters': parameters,
                'kpoints': kpoints,
                'potential_family': self.inputs.potential_family,
                'potential_mapping': self.inputs.potential_mapping,
                'settings': settings,
                'max_iterations': self.inputs.max_iterations,
                'clean_workdir': self.inputs.clean_workdir,
                'calc': {'metadata': {'options': copy.deepcopy(self.ctx.options)}},
                'metadata': {'call_link_label': f'vasp_{key}', 'label': key},
            }
            futures[f'vasp_{key}'] = self.submit(VaspWorkChain, **inputs)
        self.report(f'submitted {len(futures)} VaspWorkChains')
        return ToContext(**futures)

    def inspect_vasp(self):
        """Sort the runs into labelled and failed; fail only if nothing was labelled."""
        fidelity = self.inputs.fidelity.value
        self.ctx.succeeded, self.ctx.failure_reasons = [], {}
        for key in self.ctx.structure_keys:
            node = self.ctx[f'vasp_{key}']
            if not node.is_finished_ok:
                self.ctx.failure_reasons[key] = (f'VaspWorkChain<{node.pk}> failed with exit status '
                                                 f'{node.exit_status}: {node.exit_message}')
                continue
            if 'misc' not in node.outputs:
                self.ctx.failure_reasons[key] = f'VaspWorkChain<{node.pk}> has no misc output'
                continue
            try:
                labels_from_misc(node.outputs.misc.get_dict(), len(self.inputs.structures[key].sites), fidelity,
                                 self.ctx.energy_type)
            except (KeyError, ValueError, TypeError) as exception:
                self.ctx.failure_reasons[key] = f'VaspWorkChain<{node.pk}> misc lacks a label: {exception!r}'
                continue
            self.ctx.succeeded.append(key)
        for key, reason in self.ctx.failure_reasons.items():
            self.report(f'structure {key} not labelled: {reason}')
        if not self.ctx.succeeded:
            failures = '; '.join(f'{key}: {reason}' for key, reason in self.ctx.failure_reasons.items())
            return self.exit_codes.ERROR_NO_STRUCTURE_LABELLED.format(failures=failures)
        return None

    def results(self) -> None:
        """Collect the labels of the successful runs into the ``labels`` dataset."""
        failed = [key for key in self.ctx.structure_keys if key in self.ctx.failure_reasons]
        attributes = orm.Dict({
            'fidelity': self.inputs.fidelity.value,
            'energy_type': self.ctx.energy_type,
            'engine': 'vasp',
            'method': self.ctx.preset,
            'failed': failed,
            'failure_reasons': self.ctx.failure_reasons,
        })
        nodes = {}
        for key in self.ctx.succeeded:
            nodes[f'structure_{key}'] = self.inputs.structures[key]
            nodes[f'misc_{key}'] = self.ctx[f'vasp_{key}'].outputs.misc
        labels = collect_vasp_labels(attributes, **nodes, metadata={'call_link_label': 'collect_labels'})
        self.out('labels', labels)
        self.report(f'labelled {len(self.ctx.succeeded)} structures, {len(failed)} failed')
