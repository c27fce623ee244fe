"""``ThermalValidationWorkChain``: both models checked on the MD frames that Eg(x, T) averages over.

After the thermal MD (``ThermalGapWorkChain``), for every (x, T):

1. ``pick_validation_frames`` (calcfunction; physics in :mod:`aiida_capthermo.core.validation`) picks
   ``frames_per_point`` decorrelated frames from the production part of the replicas: each replica's equilibration
   start and statistical inefficiency come from the thermal stage's ``replicas`` Dict when given (else the first
   ``equilibration_fraction`` of each replica is discarded), and picked frames are at least
   ``max(min_spacing, ceil(g))`` recorded frames apart. The replicas' boundaries in a frames dataset come from the
   ``results`` of the MD job that made it. The relaxed 0 K structures (``relaxed``) join them at T = 0: Eg(0) is
   the gap of that one structure, so the teacher's label of it is Eg(0).
2. In parallel: ``BatchLabelWorkChain`` labels them with the ``low`` engine (energy, forces, gap) and, when given,
   the ``high`` engine (gap); ``GnnPredictCalcJob`` predicts their gaps with the GNN. With ``relax`` (the local
   engine only) the low engine also relaxes the 0 K structures (``relax_low``).
3. ``MaceEvaluateCalcJob`` evaluates the MACE model on the low labels (energies and forces of the same frames);
   with ``relax`` and ``high``, the high engine labels the engine-relaxed 0 K structures (``label_high_relaxed``).
4. ``validation_table`` (calcfunction) gives per (x, T) the MLIP's force MAE/RMSE and energy-per-atom MAE, the
   GNN's bias mean(teacher - GNN) with its standard error and its MAE, the teacher's mean gap with its standard
   error and the number of frames. The teacher is the high engine when given, else the low engine. With
   ``relax``, the 0 K rows also get the teacher's gap at the low engine's own minimum (``engine_relaxed_gap``) and
   its difference from the gap at the potential's minimum as their ``sampling_shift``: the potential's structure
   error of Eg(0), the T = 0 limit of the sampling term of the frames (:mod:`aiida_capthermo.core.error_budget`).
"""

from __future__ import annotations

import re

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction

from aiida_capthermo.calculations.base import code_validator, job_options, validate_options
from aiida_capthermo.calculations.gnn import GnnPredictCalcJob, validate_gnn_model, validate_members
from aiida_capthermo.calculations.label import validate_relax
from aiida_capthermo.calculations.mace import MaceEvaluateCalcJob
from aiida_capthermo.calculations.mlip import validate_mace_model
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.batch_label import BatchLabelWorkChain
from aiida_capthermo.workflows.engines import engine_namespace, label_batch_inputs, relax_engine_error
from aiida_capthermo.workflows.functions import frames_to_structures
from aiida_capthermo.workflows.protocols import ProtocolMixin, set_options
from aiida_capthermo.workflows.validation import supplied_by_parent

__all__ = ['ThermalValidationWorkChain', 'pick_validation_frames', 'validation_table', 'replica_series']

#: |teacher's pressure| (GPa) on a relaxed 0 K structure above which the potential's equation of state is reported
#: off the teacher's (with a bulk modulus of 20 GPa, typical of these halides, 1 GPa is a 5 % volume error).
PRESSURE_TOLERANCE = 1.0
#: |V / V_Vegard - 1| above which a relaxed 0 K structure is reported as far from Vegard's law.
VEGARD_TOLERANCE = 0.03
#: Columns of the ``validation`` rows (see :func:`aiida_capthermo.core.validation.validation_rows`).
COLUMNS = ('point', 'key', 'x', 'temperature', 'n_frames', 'teacher_gap', 'teacher_gap_stderr', 'gnn_bias',
           'gnn_bias_stderr', 'gnn_mae', 'gnn_rmse', 'n_gap', 'force_mae', 'force_rmse', 'energy_per_atom_mae',
           'energy_per_atom_bias', 'n_mlip', 'sampling_shift', 'sampling_shift_stderr', 'sampling_beta_sigma',
           'sampling_correlation', 'n_sampling', 'sampling_shift_n', 'gnn_bias_stderr_frames',
           'gnn_bias_stderr_replicas', 'n_bias_replicas', 'gnn_bias_n', 'engine_relaxed_gap',
           'engine_relaxed_displacement', 'engine_relaxation_energy')
UNITS = {'temperature': 'K', 'volume_per_atom': 'Å^3', 'vegard_deviation': 'fraction', 'teacher_pressure': 'GPa',
         'mlip_pressure': 'GPa', 'teacher_max_force': 'eV/Å',
         'teacher_gap': 'eV', 'teacher_gap_stderr': 'eV', 'gnn_bias': 'eV',
         'gnn_bias_stderr': 'eV', 'gnn_bias_stderr_frames': 'eV', 'gnn_bias_stderr_replicas': 'eV',
         'gnn_mae': 'eV', 'gnn_rmse': 'eV', 'force_mae': 'eV/Å', 'force_rmse': 'eV/Å',
         'energy_per_atom_mae': 'eV/atom', 'energy_per_atom_bias': 'eV/atom', 'sampling_shift': 'eV',
         'sampling_shift_stderr': 'eV', 'sampling_beta_sigma': 'dimensionless',
         'sampling_correlation': 'dimensionless', 'engine_relaxed_gap': 'eV', 'engine_relaxed_displacement': 'Å',
         'engine_relaxation_energy': 'eV/atom'}


def _attempt(key: str) -> int | None:
    """The MD attempt of a frames key (``md_1`` -> 1: the thermal stage's ``replicas`` rows carry ``attempt``)."""
    match = re.search(r'(\d+)$', key)
    return int(match[1]) if match else None


def replica_series(frames, results: dict | None, replicas: list[dict] | None, attempt: int | None,
                   equilibration_fraction: float) -> list[dict]:
    """The replicas of one frames dataset as series for :func:`aiida_capthermo.core.validation.select_frames`.

    Parameters
    ----------
    frames
        The frames (a :class:`~aiida_capthermo.core.dataset.LabelledSet`) of one MD job.
    results
        That job's ``results`` (replica records with ``frame_offset``, ``n_frames`` and the structure ``key``);
        None: each run of frames with the same (x, T) counts as one replica, of no known structure.
    replicas
        The thermal stage's ``replicas`` rows (``attempt``, ``replica``, ``start``, ``inefficiency``), or None.
    attempt
        The MD attempt of this job, to match ``replicas`` rows.
    equilibration_fraction
        Fraction of each replica discarded when its equilibration start is not known.
    """
    if results is not None:
        records = [{'replica': r['replica'], 'offset': int(r['frame_offset']), 'n_frames': int(r['n_frames']),
                    'x': float(r['x']), 'temperature': float(r['temperature']), 'key': r.get('key')}
                   for r in results['replicas'] if not r.get('broke') and r.get('n_frames')]
    else:
        records, start = [], 0
        points = list(zip(np.round(frames.x, 6), np.round(frames.temperature, 6)))
        for index in range(1, len(points) + 1):
            if index == len(points) or points[index] != points[start]:
                records.append({'replica': len(records), 'offset': start, 'n_frames': index - start,
                                'x': float(frames.x[start]), 'temperature': float(frames.temperature[start])})
                start = index
    known = {int(r['replica']): r for r in (replicas or []) if r.get('attempt') == attempt and attempt is not None}
    for record in records:
        stats = known.get(int(record['replica']))
        if stats is not None:
            record.update(start=int(stats['start']), inefficiency=float(stats['inefficiency']))
        else:
            record['start'] = int(equilibration_fraction * record['n_frames'])
    return records


@calcfunction
def pick_validation_frames(settings: orm.Dict, **nodes) -> dict:
    """Decorrelated production frames per structure and T of the thermal MD, as one DatasetData ``frames``.

    ``settings``: ``frames_per_point``, ``min_spacing`` (recorded frames), ``seed``, ``equilibration_fraction``.
    ``nodes``: ``frames_<key>`` (frames DatasetData of an MD job), optionally ``results_<key>`` (that job's
    ``results`` Dict: the replicas' boundaries), ``replicas`` (the thermal stage's ``replicas`` Dict:
    equilibration start and statistical inefficiency per replica, matched by the attempt number ending ``key``)
    and ``relaxed_<key>`` (the relaxed 0 K structure of a composition, appended at T = 0).
    Output ``frames``: the picked frames (x, temperature K), attribute ``picked`` (per frame: source key, index
    in its source, replica, structure key, point, spacing); no output when no frame could be picked. Points are
    per structure (its key in the thermal stage) and T, so that configurations of one composition are validated
    apart; per (x, T) where the MD results name no structure.
    """
    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.core.validation import point_key, select_frames
    from aiida_capthermo.data.structures import labelled_set_from_structures

    s = settings.get_dict()
    replicas = nodes['replicas'].get_dict()['replicas'] if 'replicas' in nodes else None
    keys = sorted(name[len('frames_'):] for name in nodes if name.startswith('frames_'))
    sets, series, offset, sources = [], [], 0, []
    for key in keys:
        frames = nodes[f'frames_{key}'].get_labelled_set()
        results = nodes[f'results_{key}'].get_dict() if f'results_{key}' in nodes else None
        for record in replica_series(frames, results, replicas, _attempt(key), s['equilibration_fraction']):
            series.append({**record, 'offset': record['offset'] + offset, 'replica': f'{key}:{record["replica"]}'})
        sets.append(frames)
        sources.extend((key, index) for index in range(len(frames)))
        offset += len(frames)
    picked = select_frames(series, int(s['frames_per_point']), int(s['min_spacing']), int(s['seed']))
    if not picked:
        return {}
    chosen = LabelledSet.concatenate(sets).subset([frame['index'] for frame in picked])
    records = [{'source': sources[f['index']][0], 'index': sources[f['index']][1], 'replica': f['replica'],
                'key': f['key'], 'point': f['point'], 'spacing': f['spacing']} for f in picked]
    relaxed = sorted(name[len('relaxed_'):] for name in nodes if name.startswith('relaxed_'))
    if relaxed:  # the 0 K structures: Eg(0) is the gap of the structure itself
        zero = labelled_set_from_structures({key: nodes[f'relaxed_{key}'] for key in relaxed})
        if not np.all(np.isfinite(zero.x)):
            raise ValueError('every relaxed structure needs its composition x (capthermo metadata)')
        zero.temperature = np.zeros(len(zero))
        chosen = LabelledSet.concatenate([chosen, zero])
        keyed = any(record['key'] for record in records) or not records  # points per structure, as the MD's
        records += [{'source': 'relaxed', 'index': key, 'replica': None, 'key': key if keyed else None,
                     'point': point_key(zero.x[i], 0.0, key if keyed else None), 'spacing': None}
                    for i, key in enumerate(relaxed)]
    chosen.energy = np.full(len(chosen), np.nan)  # the MD's own energies are the model's, not labels
    chosen.forces = np.full_like(chosen.forces, np.nan)
    return {'frames': DatasetData.from_labelled_set(chosen, subset='thermal_validation', picked=records,
                                                    settings=s)}


def _by_uuid(labelled, position: dict) -> np.ndarray:
    """Index in the picked frames of every structure of a labelled set (by the uuid of its StructureData)."""
    missing = [u for u in labelled.structure_uuid if u not in position]
    if missing:
        raise ValueError(f'{len(missing)} labelled structures are not among the picked frames')
    return np.array([position[u] for u in labelled.structure_uuid], dtype=np.int64)


@calcfunction
def validation_table(settings: orm.Dict, frames: DatasetData, low: DatasetData, parity: orm.ArrayData,
                     predictions: orm.ArrayData, high: DatasetData | None = None,
                     relaxed_low: DatasetData | None = None, relaxed_high: DatasetData | None = None) -> dict:
    """Errors of the MLIP and the GNN per (x, T) on the validation frames (:func:`core.validation.validation_rows`).

    ``settings['structure_uuids']``: the uuid of the StructureData of every picked frame, in the order of
    ``frames``, which matches the labelled structures to the frames. ``low``: low-fidelity labels (energy eV,
    forces eV/Å, gap eV); ``parity``: the MaceEvaluateCalcJob arrays on ``low`` (energy_pred eV, forces_pred
    eV/Å); ``predictions``: the GNN's gaps of ``frames`` (eV; with ``members``, every model's of an ensemble);
    ``high``: high-fidelity gaps (eV), the teacher
    when given, else the low gaps are. ``relaxed_low``: the low engine's labels of the 0 K structures after it
    relaxed them (their structure uuids those of the picked frames); ``relaxed_high``: the high engine's gaps of
    those relaxed structures, matched through ``settings['relaxed_origin']`` ({uuid of the relaxed structure: uuid
    of its picked frame}). The 0 K rows then get :func:`engine_relaxation` (the teacher's gap at the engine's
    minimum and its shift from the potential's). Outputs: ``validation`` (``rows``, one per (x, T), ``columns``,
    ``units``, ``teacher``) and ``plot`` (PNG: GNN against teacher and MLIP forces against the low engine, per frame).
    """
    from aiida_capthermo.core.validation import point_key, pressure, validation_rows, vegard_deviations
    from aiida_capthermo.workflows.report import figure_nodes, validation_figure

    uuids = settings['structure_uuids']
    position = {uuid: index for index, uuid in enumerate(uuids)}
    picked = frames.get_labelled_set()
    n = len(picked)
    gnn = predictions.get_array('values')
    if len(gnn) != n or len(uuids) != n:
        raise ValueError(f'{len(gnn)} GNN predictions and {len(uuids)} structures for {n} frames')
    offsets = picked.offsets
    energy_reference, energy_predicted = np.full(n, np.nan), np.full(n, np.nan)
    forces_reference = np.full((offsets[-1], 3), np.nan)
    forces_predicted = np.full((offsets[-1], 3), np.nan)
    labelled = low.get_labelled_set()
    rows = _by_uuid(labelled, position)
    energy_reference[rows] = parity.get_array('energy_ref')
    energy_predicted[rows] = parity.get_array('energy_pred')
    own = labelled.offsets
    reference, predicted = parity.get_array('forces_ref'), parity.get_array('forces_pred')
    for k, row in enumerate(rows):
        forces_reference[offsets[row]:offsets[row + 1]] = reference[own[k]:own[k + 1]]
        forces_predicted[offsets[row]:offsets[row + 1]] = predicted[own[k]:own[k + 1]]
    stress_reference, stress_predicted = np.full((n, 6), np.nan), np.full((n, 6), np.nan)
    stress_reference[rows], stress_predicted[rows] = parity.get_array('stress_ref'), parity.get_array('stress_pred')
    teacher_set = high.get_labelled_set() if high is not None else labelled
    teacher = np.full(n, np.nan)
    teacher[_by_uuid(teacher_set, position) if high is not None else rows] = teacher_set.gap
    records = frames.base.attributes.get('picked', None)
    points = [record['point'] for record in records] if records and len(records) == n else None
    keys = [record.get('key') for record in records] if points is not None else None
    replicas = [record.get('replica') for record in records] if points is not None else None
    members = predictions.get_array('members') if 'members' in predictions.get_arraynames() else None
    table = validation_rows(picked.x, picked.temperature, teacher, gnn, picked.n_atoms, energy_reference,
                            energy_predicted, forces_reference, forces_predicted, points=points, keys=keys,
                            member_gaps=members, replicas=replicas)
    point_of = points or [point_key(float(a), float(b)) for a, b in zip(picked.x, picked.temperature)]
    zero = np.flatnonzero(picked.temperature == 0)  # the relaxed structures: their volume against Vegard's law
    volumes = np.abs(np.linalg.det(picked.cells[zero])) / picked.n_atoms[zero]
    deviation = dict(zip([point_of[i] for i in zero], vegard_deviations(picked.x[zero], volumes)))
    volume_of = dict(zip([point_of[i] for i in zero], volumes.tolist()))
    mechanics = {}  # the teacher (low engine) on each relaxed structure, and the MLIP that relaxed it
    for index in zero:
        forces = forces_reference[offsets[index]:offsets[index + 1]]
        mechanics[point_of[index]] = {
            'teacher_pressure': pressure(stress_reference[index]) if np.all(np.isfinite(stress_reference[index]))
            else None,
            'mlip_pressure': pressure(stress_predicted[index]) if np.all(np.isfinite(stress_predicted[index]))
            else None,
            'teacher_max_force': float(np.linalg.norm(forces, axis=1).max()) if np.all(np.isfinite(forces)) else None}
    for row in table:
        if row['temperature'] == 0 and row['point'] in volume_of:
            row['volume_per_atom'] = volume_of[row['point']]
            row['vegard_deviation'] = deviation[row['point']]
            row.update(mechanics[row['point']])
    if relaxed_low is not None:
        engine = engine_relaxation(picked, position, energy_reference, teacher, relaxed_low.get_labelled_set(),
                                   relaxed_high.get_labelled_set() if relaxed_high is not None else None,
                                   settings.get_dict().get('relaxed_origin', {}), teacher_is_low=high is None)
        by_point = {point_of[index]: values for index, values in engine.items()}
        for row in table:
            found = by_point.get(row['point']) if row['temperature'] == 0 else None
            if found is not None:
                row.update(found)
    source = high if high is not None else low
    frame_of_atom = np.repeat(np.arange(n), picked.n_atoms)
    figure = validation_figure({
        'x': picked.x, 'temperature': picked.temperature, 'teacher_gap': teacher, 'gnn_gap': gnn,
        'force_x': picked.x[frame_of_atom], 'force_temperature': picked.temperature[frame_of_atom],
        'forces_reference': forces_reference, 'forces_predicted': forces_predicted})
    png, pdf = figure_nodes(figure, 'validation')
    return {'validation': orm.Dict({'rows': table, 'columns': list(COLUMNS), 'units': UNITS,
                                    'teacher': 'high' if high is not None else 'low',
                                    'teacher_method': source.base.attributes.get('gap_method', None)
                                    or source.base.attributes.get('method', None),
                                    'n_frames': n, 'n_low': len(labelled),
                                    'n_teacher': int(np.isfinite(teacher).sum())}),
            'plot': png, 'plot_pdf': pdf}


def engine_relaxation(picked, position: dict, energy: np.ndarray, teacher: np.ndarray, relaxed_low,
                      relaxed_high, relaxed_origin: dict, teacher_is_low: bool) -> dict:
    """What the low engine's relaxation of each 0 K structure changes, by point.

    ``picked``: the picked frames (LabelledSet); ``position``: {structure uuid: frame index}; ``energy`` and
    ``teacher``: per frame, the low engine's energy (eV) and the teacher's gap (eV) of the structure as picked (the
    potential's minimum); ``relaxed_low``: the low labels of the engine-relaxed structures (their structure uuids are
    the picked frames'); ``relaxed_high``: the high labels of them, matched through ``relaxed_origin``, or None;
    ``teacher_is_low``: the low engine is the teacher (its gaps of the relaxed structures are the teacher's).

    Returns ``{frame index: {...}}`` per relaxed 0 K structure: ``engine_relaxed_gap`` (eV, the teacher's gap at the
    engine's minimum; None without a teacher label there), ``engine_relaxed_displacement`` (Å, the largest
    displacement of an atom, minimum image), ``engine_relaxation_energy`` (eV/atom, the engine's energy at its minimum
    less at the potential's), and the sampling term of the row: ``sampling_shift`` = engine_relaxed_gap - teacher_gap
    with ``sampling_shift_stderr`` 0, ``n_sampling`` and ``sampling_shift_n`` 1 (a difference of two labels, not an
    estimate).
    """
    gap_at = {}
    if teacher_is_low:
        gap_at = dict(zip(relaxed_low.structure_uuid, relaxed_low.gap))
    elif relaxed_high is not None:
        gap_at = {relaxed_origin.get(u): g for u, g in zip(relaxed_high.structure_uuid, relaxed_high.gap)}
    out = {}
    for k, uuid in enumerate(relaxed_low.structure_uuid):
        if uuid not in position:
            raise ValueError(f'the relaxed structure {uuid} is not among the picked frames')
        index = position[uuid]
        before = picked.positions[picked.offsets[index]:picked.offsets[index + 1]]
        after = relaxed_low.positions[relaxed_low.offsets[k]:relaxed_low.offsets[k + 1]]
        cell_before, cell_after = picked.cells[index], relaxed_low.cells[k]
        fractional = after @ np.linalg.inv(cell_after) - before @ np.linalg.inv(cell_before)
        displacement = (fractional - np.round(fractional)) @ cell_after
        gap = gap_at.get(uuid)
        gap = float(gap) if gap is not None and np.isfinite(gap) else None
        shift = gap - float(teacher[index]) if gap is not None and np.isfinite(teacher[index]) else None
        n_atoms = int(picked.n_atoms[index])
        energy_change = (float(relaxed_low.energy[k]) - float(energy[index])) / n_atoms \
            if np.isfinite(energy[index]) and np.isfinite(relaxed_low.energy[k]) else None
        out[int(index)] = {'engine_relaxed_gap': gap,
                           'engine_relaxed_displacement': float(np.linalg.norm(displacement, axis=1).max()),
                           'engine_relaxation_energy': energy_change, 'sampling_shift': shift,
                           'sampling_shift_stderr': 0.0 if shift is not None else None,
                           'n_sampling': 1 if shift is not None else 0,
                           'sampling_shift_n': 1 if shift is not None else None}
    return out


def validate_inputs(inputs, ports) -> str | None:
    """Frames given, positive budget and spacing, a band-gap GNN."""
    if not inputs.get('frames') and not supplied_by_parent(ports, 'frames'):
        return 'give the frames of at least one thermal MD job in `frames`'
    for name in ('frames_per_point', 'min_spacing'):
        if name in inputs and inputs[name].value < 1:
            return f'{name} must be at least 1, got {inputs[name].value}'
    if 'equilibration_fraction' in inputs and not 0.0 <= inputs['equilibration_fraction'].value < 1.0:
        return f'equilibration_fraction must be in [0, 1), got {inputs["equilibration_fraction"].value}'
    if 'relax' in inputs and 'low' in inputs:
        error = relax_engine_error(inputs['low'])
        if error:
            return f'relax: {error.split(":")[0]}: leave out `relax` (Eg(0) then gets no structure error)'
    if 'gnn_model' in inputs and inputs['gnn_model'].base.attributes.get('target', 'gap') != 'gap':
        return 'the GNN model must predict the band gap (target "gap")'
    if 'replicas' in inputs:
        rows = inputs['replicas'].get_dict().get('replicas')
        if not isinstance(rows, list) or any(not {'attempt', 'replica', 'start', 'inefficiency'} <= set(r)
                                             for r in rows):
            return 'replicas must be the thermal stage\'s `replicas` Dict (rows with attempt, replica, start, ' \
                   'inefficiency)'
        if any(_attempt(key) is None for key in inputs['frames']):
            return 'with `replicas`, every frames key must end with its MD attempt number (md_0, md_1, ...)'
    return None


class ThermalValidationWorkChain(ProtocolMixin, WorkChain):
    """Both models checked per (x, T) on decorrelated frames of the thermal MD, labelled by the study's engines."""

    _protocol_file = 'thermal_validation'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace('frames', valid_type=DatasetData, dynamic=True,
                             help='The `frames` DatasetData of the thermal MD jobs (MlipThermalCalcJob), by key; '
                                  'with `replicas`, keys end with the MD attempt (md_0, md_1, ...). Positions and '
                                  'cells in Å, x and temperature (K) per frame.')
        spec.input_namespace('relaxed', valid_type=orm.StructureData, dynamic=True, required=False,
                             help='The relaxed 0 K structures of the thermal stage (with their x), by key: labelled '
                                  'and predicted like the frames, at T = 0 (the teacher\'s Eg(0) and the MLIP\'s '
                                  'forces at its own minimum).')
        spec.input('replicas', valid_type=orm.Dict, required=False,
                   help='The thermal stage\'s `replicas` Dict: each replica\'s equilibration start (frames) and '
                        'statistical inefficiency g (frames). Without it, the first `equilibration_fraction` of '
                        'each replica is discarded and frames are `min_spacing` apart.')
        spec.input('mace_model', valid_type=ModelData, validator=validate_mace_model,
                   help='The MACE potential (kind "mace") that drove the MD; its energies (eV) and forces (eV/Å) '
                        'are checked against the low labels.')
        spec.input('gnn_model', valid_type=ModelData, validator=validate_gnn_model,
                   help='The band-gap GNN (kind "gnn", target "gap", eV) whose gaps are checked against the teacher.')
        spec.input_namespace('gnn_members', valid_type=ModelData, dynamic=True, required=False,
                             validator=validate_members,
                             help='Other members of an ensemble of band-gap GNNs, as the thermal stage\'s: the GNN '
                                  'gap is then their mean, and every row gets each model\'s bias '
                                  '(gnn_bias_members).')
        spec.input('gnn_code', valid_type=orm.AbstractCode, validator=code_validator('capthermo.gnn_predict'),
                   help='The `capthermo-gnn` code.')
        spec.input('evaluate_code', valid_type=orm.AbstractCode, validator=code_validator('capthermo.mace_evaluate'),
                   help='The `capthermo-mace` code that evaluates the MACE model.')
        engine_namespace(spec, 'low', help='The low-fidelity labelling engine: energy (eV), forces (eV/Å) and gap '
                                           '(eV) of every picked frame; the teacher of the gaps without `high`.')
        engine_namespace(spec, 'high', required=False,
                         help='The high-fidelity engine (optional): the gap (eV) of every picked frame, the teacher.')
        spec.input('relax', valid_type=orm.Dict, required=False, validator=validate_relax,
                   help='Relax the 0 K structures (`relaxed`) with the low engine (the local engine only; fmax eV/Å, '
                        'max_steps, cell, symprec) and label the teacher\'s gap at its minimum: the 0 K rows get '
                        'engine_relaxed_gap and, as their sampling_shift, its difference from the gap at the '
                        'potential\'s minimum (the potential\'s structure error of Eg(0)). The screen relaxes '
                        'positions only: give cell false to relax the same degrees of freedom.')
        spec.input('frames_per_point', valid_type=orm.Int, default=lambda: orm.Int(8),
                   help='Frames labelled per (x, T) (the labelling budget), spread over the replicas.')
        spec.input('min_spacing', valid_type=orm.Int, default=lambda: orm.Int(1),
                   help='Smallest distance between two picked frames of one replica, in recorded frames; a '
                        'replica\'s ceil(statistical inefficiency) wins when larger.')
        spec.input('equilibration_fraction', valid_type=orm.Float, default=lambda: orm.Float(0.2),
                   help='Fraction of each replica discarded as equilibration when `replicas` does not give its start.')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0),
                   help='Seed of the frame selection: the same seed picks the same frames.')
        spec.input('batch_size', valid_type=orm.Int, default=lambda: orm.Int(20),
                   help='Structures per labelling job.')
        spec.input('max_concurrent', valid_type=orm.Int, default=lambda: orm.Int(4),
                   help='Labelling jobs running at the same time.')
        spec.input('gnn_batch_size', valid_type=orm.Int, default=lambda: orm.Int(256),
                   help='Structures per GNN inference batch.')
        spec.input('evaluate_settings', valid_type=orm.Dict, required=False,
                   help='Settings of the MACE evaluation: device (auto/cpu/cuda), dtype (float64/float32), '
                        'batch_size.')
        spec.input('options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the GNN and MACE evaluation jobs (resources, max_wallclock_seconds '
                        's, ...); the labelling jobs take their engine\'s options.')
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.pick,
            cls.label_and_predict,
            cls.evaluate,
            cls.results,
        )
        spec.output('frames', valid_type=DatasetData,
                    help='The picked frames (Å; x, temperature K), attribute `picked` (source, index, replica).')
        spec.output_namespace('labels', valid_type=DatasetData, dynamic=True,
                              help='`low` (energy eV, forces eV/Å, gap eV) and `high` (gap eV) labels of the frames; '
                                   'with `relax`, `relaxed_low` (the engine-relaxed 0 K structures, labelled there) '
                                   'and `relaxed_high` (their teacher gaps).')
        spec.output('validation', valid_type=orm.Dict,
                    help='`rows`, one per (x, T): n_frames; teacher_gap ± teacher_gap_stderr (eV); gnn_bias = '
                         'mean(teacher - GNN) ± gnn_bias_stderr, gnn_mae, gnn_rmse (eV); force_mae, force_rmse '
                         '(eV/Å), energy_per_atom_mae and _bias (eV/atom) of the MLIP; at T = 0 (relaxed '
                         'structures) volume_per_atom (Å^3), vegard_deviation (V/V_Vegard - 1 between the end '
                         'members, when both are there), teacher_pressure and mlip_pressure (GPa) and '
                         'teacher_max_force (eV/Å) on the relaxed cell; plus `teacher` (low/high).')
        spec.output('plot', valid_type=orm.SinglefileData, required=False,
                    help='PNG: the GNN\'s gap against the teacher\'s and the MLIP\'s forces against the low engine\'s '
                         'on every validation frame, coloured by (x, T).')
        spec.exit_code(EXIT_CODES['ERROR_NO_FRAMES'], 'ERROR_NO_FRAMES',
                       message='No production frame could be picked from the MD frames.')
        spec.exit_code(EXIT_CODES['ERROR_LOW_LABELLING_FAILED'], 'ERROR_LOW_LABELLING_FAILED',
                       message='The low-fidelity labelling failed ({status}: {message}).')
        spec.exit_code(EXIT_CODES['ERROR_HIGH_LABELLING_FAILED'], 'ERROR_HIGH_LABELLING_FAILED',
                       message='The high-fidelity labelling failed ({status}: {message}).')
        spec.exit_code(EXIT_CODES['ERROR_PREDICTION_FAILED'], 'ERROR_PREDICTION_FAILED',
                       message='The GNN prediction failed ({status}: {message}).')
        spec.exit_code(EXIT_CODES['ERROR_EVALUATION_FAILED'], 'ERROR_EVALUATION_FAILED',
                       message='The MACE evaluation failed ({status}: {message}).')
        spec.exit_code(EXIT_CODES['ERROR_NO_TEACHER_GAP'], 'ERROR_NO_TEACHER_GAP',
                       message='No validation frame has a teacher gap: does the {teacher} engine give gaps?')

    @classmethod
    def get_builder_from_protocol(cls, gnn_code: orm.AbstractCode, evaluate_code: orm.AbstractCode,
                                  mace_model: ModelData, gnn_model: ModelData, frames: dict, low: dict,
                                  high: dict | None = None, replicas: orm.Dict | None = None,
                                  protocol: str | None = None, overrides: dict | None = None,
                                  options: dict | None = None):
        """Builder with the protocol's budget and spacing (``demo``, ``fast``, ``paper``); ``low`` and ``high`` are
        engine namespaces (nodes: engine, code, calculator, vasp, options); ``options`` go to the GNN and
        evaluation jobs."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.gnn_code, builder.evaluate_code = gnn_code, evaluate_code
        builder.mace_model, builder.gnn_model = mace_model, gnn_model
        builder.frames = frames
        builder.low = low
        if high:
            builder.high = high
        if replicas is not None:
            builder.replicas = replicas
        own_options = inputs.pop('options', None)
        for key, node in cls.protocol_nodes(inputs).items():
            builder[key] = node
        set_options(builder, 'options', options, own_options)
        return builder

    # ------------------------------------------------------------------ steps
    def _options(self) -> dict:
        return job_options(self.inputs, 'options')

    def pick(self):
        """Pick decorrelated production frames per (x, T) and turn them into structures."""
        nodes = {}
        for key, frames in self.inputs.frames.items():
            nodes[f'frames_{key}'] = frames
            creator = frames.creator
            if creator is not None and 'results' in creator.outputs:  # the MD job: where each replica starts
                nodes[f'results_{key}'] = creator.outputs.results
        if 'replicas' in self.inputs:
            nodes['replicas'] = self.inputs.replicas
        for key, structure in self.inputs.get('relaxed', {}).items():
            nodes[f'relaxed_{key}'] = structure
        settings = orm.Dict({'frames_per_point': self.inputs.frames_per_point.value,
                             'min_spacing': self.inputs.min_spacing.value, 'seed': self.inputs.seed.value,
                             'equilibration_fraction': self.inputs.equilibration_fraction.value})
        picked = pick_validation_frames(settings, **nodes)
        if 'frames' not in picked:
            return self.exit_codes.ERROR_NO_FRAMES
        self.ctx.frames = picked['frames']
        self.out('frames', self.ctx.frames)
        self.ctx.structures = frames_to_structures(self.ctx.frames)
        self.report(f'picked {self.ctx.frames.n_structures} frames for validation')
        return None

    def _label(self, name: str, structures: dict | None = None, suffix: str = ''):
        """Label ``structures`` (default: the picked frames) with the ``name`` engine (low or high)."""
        builder = BatchLabelWorkChain.get_builder()
        builder.structures = self.ctx.structures if structures is None else structures
        builder.engine = dict(self.inputs[name])
        builder.fidelity = orm.Str(name)
        builder.batch_size, builder.max_concurrent = self.inputs.batch_size, self.inputs.max_concurrent
        builder.attributes = orm.Dict({'subset': f'thermal_validation{suffix}', 'fidelity': name})
        builder.metadata.call_link_label = f'label_{name}{suffix}'
        return self.submit(builder)

    def _has_high(self) -> bool:
        return bool(self.inputs.get('high')) and 'code' in self.inputs.high

    def _zero_structures(self) -> dict:
        """The structures of the picked 0 K frames (the relaxed structures), by their key in ``ctx.structures``."""
        keys = sorted(self.ctx.structures)
        temperature = self.ctx.frames.get_labelled_set().temperature
        return {keys[i]: self.ctx.structures[keys[i]] for i in np.flatnonzero(temperature == 0)}

    def label_and_predict(self):
        """Label the frames (low; high when given) and predict their gaps with the GNN, all at once."""
        futures = {'low': self._label('low')}
        if self._has_high():
            futures['high'] = self._label('high')
        zero = self._zero_structures()
        if 'relax' in self.inputs and zero:
            process, inputs = label_batch_inputs(dict(self.inputs.low), zero, 'low', relax=self.inputs.relax)
            inputs['metadata'] = {'call_link_label': 'relax_low'}
            self.report(f'relaxing the {len(zero)} 0 K structures with the low engine')
            futures['relax_low'] = self.submit(process, **inputs)
        builder = GnnPredictCalcJob.get_builder()
        builder.code, builder.model = self.inputs.gnn_code, self.inputs.gnn_model
        if 'gnn_members' in self.inputs:
            builder.members = dict(self.inputs.gnn_members)
        builder.dataset, builder.batch_size = self.ctx.frames, self.inputs.gnn_batch_size
        builder.metadata.options = self._options()
        builder.metadata.call_link_label = 'predict'
        futures['predict'] = self.submit(builder)
        return ToContext(**futures)

    def evaluate(self):
        """Check the children; evaluate the MACE model on the low labels."""
        for name, code in (('low', self.exit_codes.ERROR_LOW_LABELLING_FAILED),
                           ('high', self.exit_codes.ERROR_HIGH_LABELLING_FAILED),
                           ('predict', self.exit_codes.ERROR_PREDICTION_FAILED)):
            if name in self.ctx and not self.ctx[name].is_finished_ok:
                node = self.ctx[name]
                return code.format(status=node.exit_status, message=node.exit_message)
        for name in ('low', 'high'):
            if name in self.ctx:
                self.out(f'labels.{name}', self.ctx[name].outputs.labels)
        futures = {}
        if 'relax_low' in self.ctx:
            node = self.ctx.relax_low
            failed = (node.outputs.labels.base.attributes.get('failed_errors') if node.is_finished_ok
                      else {'all': f'[{node.exit_status}] {node.exit_message}'})
            if failed:  # the structure error of Eg(0) is then not estimated; nothing else is lost
                self.report(f'WARNING: the low engine did not relax the 0 K structures {failed}: their Eg(0) gets '
                            'no structure error')
            if node.is_finished_ok:
                self.ctx.relaxed_low = node.outputs.labels
                self.out('labels.relaxed_low', self.ctx.relaxed_low)
                if self._has_high():
                    self.ctx.relaxed_structures = frames_to_structures(self.ctx.relaxed_low)
                    futures['relaxed_high'] = self._label('high', self.ctx.relaxed_structures, '_relaxed')
        builder = MaceEvaluateCalcJob.get_builder()
        builder.code, builder.model = self.inputs.evaluate_code, self.inputs.mace_model
        builder.dataset = self.ctx.low.outputs.labels
        if 'evaluate_settings' in self.inputs:
            builder.settings = self.inputs.evaluate_settings
        builder.metadata.options = self._options()
        builder.metadata.call_link_label = 'evaluate'
        futures['evaluate'] = self.submit(builder)
        return ToContext(**futures)

    def results(self):
        """The errors of both models per (x, T)."""
        node = self.ctx.evaluate
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_EVALUATION_FAILED.format(status=node.exit_status, message=node.exit_message)
        uuids = [self.ctx.structures[key].uuid for key in sorted(self.ctx.structures)]
        settings = {'structure_uuids': uuids}
        inputs = {'frames': self.ctx.frames,
                  'low': self.ctx.low.outputs.labels, 'parity': node.outputs.parity,
                  'predictions': self.ctx.predict.outputs.predictions}
        if 'high' in self.ctx:
            inputs['high'] = self.ctx.high.outputs.labels
        if 'relaxed_low' in self.ctx:
            inputs['relaxed_low'] = self.ctx.relaxed_low
            node = self.ctx.get('relaxed_high')
            if node is not None and node.is_finished_ok:
                self.out('labels.relaxed_high', node.outputs.labels)
                inputs['relaxed_high'] = node.outputs.labels
                # the relaxed structures were made from relaxed_low's rows, in order: each one's picked frame
                made = self.ctx.relaxed_structures
                origin = self.ctx.relaxed_low.get_labelled_set().structure_uuid
                settings['relaxed_origin'] = {made[key].uuid: str(origin[i]) for i, key in enumerate(sorted(made))}
            elif node is not None:
                self.report(f'WARNING: the teacher did not label the engine-relaxed 0 K structures '
                            f'([{node.exit_status}] {node.exit_message}): their Eg(0) gets no structure error')
        inputs['settings'] = orm.Dict(settings)
        outputs = validation_table(**inputs)
        validation = outputs['validation']
        self.out('validation', validation)
        self.out('plot', outputs['plot'])
        for row in validation['rows']:
            bias = 'n/a' if row['gnn_bias'] is None else f'{row["gnn_bias"]:+.3f} ± {row["gnn_bias_stderr"] or 0:.3f}'
            force = 'n/a' if row['force_mae'] is None else f'{row["force_mae"]:.3f}'
            self.report(f'x = {row["x"]:.3f}, T = {row["temperature"]:.0f} K ({row["n_frames"]} frames): GNN bias '
                        f'{bias} eV, MLIP force MAE {force} eV/Å')
        for row in validation['rows']:
            if row.get('engine_relaxed_gap') is not None:
                energy = row.get('engine_relaxation_energy')
                self.report(f'x = {row["x"]:.3f}: the low engine moved the 0 K structure by up to '
                            f'{row["engine_relaxed_displacement"]:.3f} Å'
                            + ('' if energy is None else f' ({1000 * energy:+.2f} meV/atom)')
                            + f'; the teacher\'s gap there is {row["engine_relaxed_gap"]:.3f} eV against '
                            f'{row["teacher_gap"]:.3f} eV at the potential\'s minimum (the structure error of Eg(0))')
            deviation = row.get('vegard_deviation')
            if deviation is not None and abs(deviation) > VEGARD_TOLERANCE:
                self.report(f'WARNING: the relaxed structure of x = {row["x"]:.3f} has {row["volume_per_atom"]:.2f} '
                            f'Å^3/atom, {100 * deviation:+.1f} % from Vegard\'s law between the end members: its '
                            f'ranking and gaps rest on the potential far from where it was checked (teacher gap '
                            f'{row["teacher_gap"] or float("nan"):.3f} eV, GNN bias '
                            f'{row["gnn_bias"] or float("nan"):+.3f} eV)')
            teacher_pressure = row.get('teacher_pressure')
            if teacher_pressure is not None and abs(teacher_pressure) > PRESSURE_TOLERANCE:
                self.report(f'WARNING: the teacher puts {teacher_pressure:+.2f} GPa on the relaxed structure of '
                            f'x = {row["x"]:.3f} (the potential {row["mlip_pressure"] or 0.0:+.2f} GPa; largest '
                            f'teacher force {row["teacher_max_force"] or float("nan"):.3f} eV/Å): the potential\'s '
                            f'equation of state is off the teacher\'s there, and Eg(0) is the gap of a strained cell')
        if not any(row['n_gap'] for row in validation['rows']):
            return self.exit_codes.ERROR_NO_TEACHER_GAP.format(teacher=validation['teacher'])
        return None
