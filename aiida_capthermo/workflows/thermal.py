"""``ThermalGapWorkChain``: Eg(x, T) and ΔEg(T) from batched MLIP molecular dynamics and GNN band gaps (paper
eqs. 5-6, Table I, Figure 7), and the mode-resolved Γ-phonon coupling (Figure 8).

1. ``MlipScreenWorkChain`` (the screen's relaxation with its restarts) relaxes every input structure (positions and
   cell) with the MACE model: the 0 K structures.
2. In parallel: one ``MlipThermalCalcJob`` runs every (structure, T > 0, seed) replica as one batched TorchSim
   simulation; ``GnnPredictCalcJob`` predicts Eg(0) of the relaxed structures; with ``coupling``, an
   ``MlipModesCalcJob`` freezes each Γ mode of the chosen relaxed cells at its thermal amplitude (both signs).
3. Replicas that blew up (exit 313) are rerun by a new MD job with half the time step (twice the steps, same
   simulated time, new seeds), up to ``max_md_restarts`` times; a replica that fails does not sink the others.
4. ``GnnPredictCalcJob`` predicts the gap of every recorded frame of every MD job (and of the frozen-mode cells).
5. Calcfunctions: per replica, equilibration detected and the statistical inefficiency of the gap series estimated
   (pymbar), the means of the replicas of each (structure, T) combined; ΔEg = <Eg>(T) - Eg(0); the coupling table
   and its plot.
"""

from __future__ import annotations

import math

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, while_

from aiida_capthermo.calculations.base import code_validator, job_options, pydantic_error, validate_options
from aiida_capthermo.calculations.gnn import GnnPredictCalcJob, validate_gnn_model, validate_members
from aiida_capthermo.calculations.mlip import MlipModesCalcJob, MlipThermalCalcJob, validate_mace_model
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.protocols import ProtocolMixin, set_options
from aiida_capthermo.workflows.report import figure_nodes, pyplot, styled
from aiida_capthermo.workflows.screen import MlipScreenWorkChain
from aiida_capthermo.workflows.validation import supplied_by_parent

__all__ = ['ThermalGapWorkChain', 'thermal_gaps', 'mode_coupling', 'gap_key']

#: Settings of the MD that the workchain sets itself.
MD_RESERVED = ('temperatures', 'select')


def gap_key(key: str, temperature: float) -> str:
    """Link label of the gap of structure ``key`` at ``temperature``: ``x050_T300``."""
    return f'{key}_T{temperature:.0f}'


def _md_series(results: dict, gaps: np.ndarray, outside: np.ndarray | None = None,
               members: np.ndarray | None = None, series: orm.ArrayData | None = None) -> list[dict]:
    """Per finished replica of one MD job: its record, its gap series and the GNN's out-of-domain flags of the
    same frames (frames in replica order; ``outside``: one flag per frame, all False where not recorded), for
    an ensemble every model's series ``members`` [n_models, n_frames] (None without) and, from the job's
    ``series``, the potential energy of the same frames ``energy`` (eV; None without)."""
    replicas = []
    for record in results['replicas']:
        if record['broke'] or not record['n_frames']:
            continue
        start, stop = record['frame_offset'], record['frame_offset'] + record['n_frames']
        flags = outside[start:stop].astype(bool) if outside is not None else np.zeros(stop - start, dtype=bool)
        energy = None
        if series is not None and f'potential_energy_{record["replica"]}' in series.get_arraynames():
            energy = series.get_array(f'potential_energy_{record["replica"]}')
            if energy.size != record['n_frames']:
                raise ValueError(f'replica {record["replica"]}: {energy.size} energies for {record["n_frames"]} '
                                 'frames')
        replicas.append({**record, 'gaps': gaps[start:stop], 'outside': flags, 'energy': energy,
                         'members': None if members is None else members[:, start:stop]})
    return replicas


@calcfunction
def thermal_gaps(settings: orm.Dict, eg0: orm.ArrayData, **md) -> dict:
    """Eg(T) per structure from the GNN gaps of the MD frames.

    ``settings``: ``keys`` (sorted structure keys, the order of ``eg0``), ``x`` per key, ``temperatures`` (K). ``md``:
    ``results_<i>`` (Dict of an MlipThermalCalcJob), ``gaps_<i>`` (its frames' GnnPredictCalcJob predictions) and
    ``series_<i>`` (its series: the potential energies, whose equilibration also sets where each replica's average
    starts, :func:`aiida_capthermo.core.thermal.replica_statistics`; optional). Outputs: ``gap_<key>_T<T>`` Dict per
    (structure, T) with attributes x, temperature, gap, stderr, stderr_decorrelated, stderr_seeds, n_independent,
    n_replicas, n_frames (the production frames averaged), n_outside_domain (those of them the GNN flagged outside its
    training domain), n_drifting (replicas whose potential energy still drifts where their average starts), eg0,
    delta_gap, relative_change (eV; T = 0 is the relaxed structure) and, with an ensemble of GNNs (predictions with
    ``members``), every model's average over the same production frames with the replicas' weights ``gap_members``
    (their mean is ``gap``) and its Eg(0) ``eg0_members``; ``curve_<key>`` XyData (T in K; gap and stderr in eV);
    ``table`` Dict (one row per (structure, T)); ``replicas`` Dict (statistics of every replica).
    """
    from aiida_capthermo.core.thermal import combine_replicas, replica_statistics

    s = settings.get_dict()
    eg0_values = dict(zip(s['keys'], eg0.get_array('values').tolist()))
    eg0_members = dict(zip(s['keys'], eg0.get_array('members').T.tolist())) \
        if 'members' in eg0.get_arraynames() else {}
    per_case, counts, replica_rows, member_means = {}, {}, [], {}
    for name in sorted(k for k in md if k.startswith('results_')):
        suffix = name[len('results_'):]
        predictions = md[f'gaps_{suffix}']
        outside = predictions.get_array('outside_domain') if 'outside_domain' in predictions.get_arraynames() \
            else None
        members = predictions.get_array('members') if 'members' in predictions.get_arraynames() else None
        for replica in _md_series(md[name].get_dict(), predictions.get_array('values'), outside, members,
                                  md.get(f'series_{suffix}')):
            stats, starts = replica_statistics(replica['gaps'], replica['energy'])
            case = (replica['key'], float(replica['temperature']))
            per_case.setdefault(case, []).append(stats)
            if replica['members'] is not None:  # every model over the production frames of the mean's series
                member_means.setdefault(case, []).append(
                    (stats.n_independent, replica['members'][:, stats.start:].mean(axis=1)))
            n_outside = int(np.count_nonzero(replica['outside'][stats.start:]))  # the frames averaged
            frames = counts.setdefault(case, [0, 0, 0])
            frames[0] += stats.n_samples
            frames[1] += n_outside
            frames[2] += int(starts['drifting'])
            replica_rows.append({'replica': replica['replica'], 'key': replica['key'], 'x': replica['x'],
                                 'temperature': replica['temperature'], 'seed': replica['seed'],
                                 'timestep': replica['timestep'], 'attempt': int(suffix),
                                 'n_outside_domain': n_outside, **starts, **stats.as_dict()})
    outputs, rows = {}, []
    for key in s['keys']:
        x, eg0_value = float(s['x'][key]), float(eg0_values[key])
        curve = []
        for temperature in s['temperatures']:
            if temperature == 0:
                row = {'gap': eg0_value, 'stderr': 0.0, 'stderr_decorrelated': 0.0, 'stderr_seeds': None,
                       'n_independent': None, 'n_replicas': 0, 'n_frames': 0, 'n_outside_domain': 0,
                       'n_drifting': 0}
                if key in eg0_members:
                    row['gap_members'] = eg0_members[key]
            elif (key, float(temperature)) in per_case:
                combined = combine_replicas(per_case[(key, float(temperature))])
                n_frames, n_outside, n_drifting = counts[(key, float(temperature))]
                row = {'gap': combined['mean'], **{k: combined[k] for k in (
                    'stderr', 'stderr_decorrelated', 'stderr_seeds', 'n_independent', 'n_replicas')},
                    'n_frames': n_frames, 'n_outside_domain': n_outside, 'n_drifting': n_drifting}
                if (key, float(temperature)) in member_means:  # every model's average, weighted as the mean's
                    weights, averages = zip(*member_means[(key, float(temperature))])
                    row['gap_members'] = (np.asarray(weights) @ np.asarray(averages) / np.sum(weights)).tolist()
            else:
                continue  # every replica of this (structure, T) blew up: no number rather than a wrong one
            delta = row['gap'] - eg0_value
            if key in eg0_members:
                row['eg0_members'] = eg0_members[key]
            row = {'key': key, 'x': x, 'temperature': float(temperature), **row, 'eg0': eg0_value,
                   'delta_gap': delta, 'relative_change': delta / eg0_value if eg0_value else None,
                   'units': {'gap': 'eV', 'temperature': 'K'}}
            outputs[f'gap_{gap_key(key, temperature)}'] = orm.Dict(row)
            rows.append(row)
            curve.append((float(temperature), row['gap'], row['stderr']))
        if curve:
            xy = orm.XyData()
            xy.set_x(np.array([c[0] for c in curve]), 'temperature', 'K')
            xy.set_y([np.array([c[1] for c in curve]), np.array([c[2] for c in curve])], ['gap', 'stderr'],
                     ['eV', 'eV'])
            xy.base.attributes.set('x_composition', x)
            xy.base.attributes.set('key', key)
            outputs[f'curve_{key}'] = xy
    outputs['table'] = orm.Dict({'rows': rows, 'columns': ['key', 'x', 'temperature', 'gap', 'stderr', 'eg0',
                                                           'delta_gap', 'relative_change', 'n_independent',
                                                           'n_frames', 'n_outside_domain']})
    outputs['replicas'] = orm.Dict({'replicas': replica_rows})
    return outputs


@calcfunction
def mode_coupling(modes: orm.Dict, predictions: orm.ArrayData, eg0: orm.ArrayData, settings: orm.Dict) -> dict:
    """ΔEg/Eg per Γ mode frozen at its thermal amplitude (Figure 8a).

    The distorted cells of ``modes`` (an MlipModesCalcJob output) are in the order structure, temperature, active
    mode, sign (+, -); ``predictions`` are their GNN gaps, ``eg0`` the gaps of the relaxed structures (sorted keys
    ``settings['keys']``), ``settings['temperatures']`` the temperatures of the modes job. ΔEg of a mode is the mean
    of the two signs minus Eg(0) (``core.thermal.pair_frozen_modes``: the linear term cancels). Outputs per structure
    key: ``table_<key>`` ArrayData (mode, frequency THz, temperature K, amplitude amu^1/2 Å, gap_plus, gap_minus,
    delta_gap eV, relative_change, share_<species>), ``plot_<key>`` PNG of ΔEg/Eg against frequency (and
    ``plot_<key>_pdf``).
    """
    from aiida_capthermo.core.thermal import pair_frozen_modes

    s = settings.get_dict()
    eg0_values = dict(zip(s['keys'], eg0.get_array('values').tolist()))
    gaps = predictions.get_array('values')
    outputs, offset = {}, 0
    for record in modes.get_dict()['structures']:
        active = np.array(record['active'], dtype=int)
        frequencies = np.array(record['frequencies'])[active]
        eg0_value = eg0_values[record['key']]
        columns = {name: [] for name in ('mode', 'frequency', 'temperature', 'amplitude', 'gap_plus', 'gap_minus',
                                         'delta_gap', 'relative_change')}
        for temperature in s['temperatures']:
            plus, minus, delta = pair_frozen_modes(gaps[offset:offset + 2 * len(active)], eg0_value)  # [n_active]
            offset += 2 * len(active)
            columns['mode'].append(active)
            columns['frequency'].append(frequencies)
            columns['temperature'].append(np.full(len(active), float(temperature)))
            columns['amplitude'].append(np.array(record['amplitudes'][str(float(temperature))]))
            columns['gap_plus'].append(plus)
            columns['gap_minus'].append(minus)
            columns['delta_gap'].append(delta)
            columns['relative_change'].append(delta / eg0_value)
        table = orm.ArrayData()
        for name, values in columns.items():
            table.set_array(name, np.concatenate(values))
        shares = {symbol: np.array(share)[active] for symbol, share in record['participation'].items()}
        for symbol, share in shares.items():
            table.set_array(f'share_{symbol}', np.tile(share, len(s['temperatures'])))
        table.base.attributes.set('key', record['key'])
        table.base.attributes.set('x_composition', record['x'])
        table.base.attributes.set('eg0', eg0_value)
        table.base.attributes.set('n_imaginary', record['n_imaginary'])
        table.base.attributes.set('units', {'frequency': 'THz', 'temperature': 'K', 'amplitude': 'amu^1/2 Å',
                                            'gap': 'eV'})
        outputs[f'table_{record["key"]}'] = table
        outputs[f'plot_{record["key"]}'], outputs[f'plot_{record["key"]}_pdf'] = figure_nodes(
            _coupling_figure(columns, shares, s['temperatures'], record), f'mode_coupling_{record["key"]}')
    return outputs


@styled
def _coupling_figure(columns: dict, shares: dict, temperatures: list, record: dict):
    """ΔEg/Eg (%) against frequency, one panel per temperature, coloured by the species that moves most."""

    symbols = sorted(shares)
    dominant = np.array(symbols)[np.argmax(np.stack([shares[s] for s in symbols]), axis=0)]
    figure, axes = pyplot().subplots(1, len(temperatures), figsize=(4.5 * len(temperatures), 3.6), squeeze=False)
    for axis, temperature, frequency, relative in zip(axes[0], temperatures, columns['frequency'],
                                                      columns['relative_change']):
        for symbol in symbols:
            mask = dominant == symbol
            axis.scatter(frequency[mask], 100 * relative[mask], s=14, label=f'{symbol} dominated')
        axis.axhline(0.0, color='grey', lw=0.8)
        axis.set_xlabel('frequency (THz)')
        axis.set_ylabel(r'$\Delta E_g / E_g$ (%)')
        axis.set_title(f'x = {record["x"]:.3f}, T = {temperature:.0f} K')
        axis.legend(fontsize=7)
    if len(temperatures) > 1:  # why the panels look alike
        figure.suptitle('Each mode is frozen at its thermal amplitude, Q² ∝ coth(ħω/2kT) ≈ 2kT/ħω above ħω/2k: '
                        'ΔEg, second order in Q, grows about ∝ T, so the panels differ mainly in scale', fontsize=7)
    return figure


def validate_inputs(inputs, ports) -> str | None:
    """Structures with a composition, temperatures, the MD and coupling settings, a gap GNN."""
    from aiida_capthermo.data.structures import get_structure_metadata

    if supplied_by_parent(ports, 'structures'):
        return None

    structures = inputs.get('structures') or {}
    if not structures:
        return 'give at least one structure in `structures`'
    for key, structure in structures.items():
        if not math.isfinite(get_structure_metadata(structure)['x']):
            return f'structure {key!r} has no composition x (set it with data.structures.set_structure_metadata)'
    return settings_error(inputs, sorted(structures))


def settings_error(inputs, keys: list[str] | None) -> str | None:
    """Temperatures, MD and coupling settings, GNN target, restarts; ``keys`` of the structures when known (the
    study checks the settings before the screen has made the structures)."""
    from aiida_capthermo.ml.settings import ModesConfig, ThermalMdConfig

    temperatures = inputs['temperatures'].get_list()
    if not temperatures or any(not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0
                               for t in temperatures):
        return f'temperatures must be a non-empty list of finite numbers >= 0 K, got {temperatures}'
    if len(set(temperatures)) != len(temperatures):
        return f'temperatures repeat: {temperatures}'
    md = inputs['md'].get_dict() if 'md' in inputs else {}
    reserved = sorted(set(md) & set(MD_RESERVED))
    if reserved:
        return f'md must not set {reserved}: the workchain sets them from `temperatures` and for restarts'
    hot = [float(t) for t in temperatures if t > 0]
    if hot:
        error = pydantic_error(ThermalMdConfig, {**md, 'temperatures': hot}, 'md')
        if error:
            return error
    if 'coupling' in inputs:
        coupling = inputs['coupling'].get_dict()
        chosen = coupling.pop('structures', 'all')
        if chosen != 'all' and (not isinstance(chosen, list) or (keys is not None and set(chosen) - set(keys))):
            return f'coupling.structures must be "all" or a list of keys of `structures` {keys}, got {chosen}'
        error = pydantic_error(ModesConfig, coupling, 'coupling')
        if error:
            return error
    target = inputs['gnn_model'].base.attributes.get('target', 'gap') if 'gnn_model' in inputs else 'gap'
    if target != 'gap':
        return f'the GNN model predicts {target!r}; the thermal gaps need a band-gap model (target "gap")'
    if inputs['max_md_restarts'].value < 0:
        return 'max_md_restarts must be >= 0'
    return None


class ThermalGapWorkChain(ProtocolMixin, WorkChain):
    """Temperature-dependent band gaps Eg(x, T) with error bars, and the mode-resolved Γ coupling."""

    _protocol_file = 'thermal'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True,
                             help='One structure per composition (e.g. the screen\'s lowest-energy configurations), '
                                  'by key; each carries its x (set_structure_metadata). They are relaxed first.')
        spec.input('mace_model', valid_type=ModelData, validator=validate_mace_model,
                   help='The MACE potential (ModelData of kind "mace") that relaxes and drives the MD.')
        spec.input('gnn_model', valid_type=ModelData, validator=validate_gnn_model,
                   help='The band-gap GNN (ModelData of kind "gnn", target "gap") that predicts the gaps.')
        spec.input_namespace('gnn_members', valid_type=ModelData, dynamic=True, required=False,
                             validator=validate_members,
                             help='Other members of an ensemble of band-gap GNNs (GnnTwoStageWorkChain `members`): '
                                  'every gap is then the mean of the models, and each row holds every model\'s '
                                  'average (gap_members, eg0_members), whose spread is a model error.')
        spec.input('mlip_code', valid_type=orm.AbstractCode, validator=code_validator('capthermo.mlip_thermal'),
                   help='The `capthermo-mlip` code (CPU or GPU computer).')
        spec.input('gnn_code', valid_type=orm.AbstractCode, validator=code_validator('capthermo.gnn_predict'),
                   help='The `capthermo-gnn` code.')
        spec.input('temperatures', valid_type=orm.List,
                   default=lambda: orm.List([0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0]),
                   help='Temperatures (K); 0 is the relaxed structure (Eg(0)), each T > 0 runs MD.')
        spec.input('md', valid_type=orm.Dict, required=False,
                   help='MD settings (ThermalMdConfig without temperatures/select): replicas, steps, timestep (fs), '
                        'friction (1/fs), ensemble, pressure (GPa), seed, stride, store_velocities, fix_com, '
                        'stop_distance (Å), max_temperature_ratio, max_batch, device, dtype, threads.')
        spec.input('relax', valid_type=orm.Dict, required=False,
                   help='Relaxation settings of MlipScreenCalcJob (fmax eV/Å, max_steps, relax_cell, device, dtype).')
        spec.input('coupling', valid_type=orm.Dict, required=False,
                   help='Mode-resolved coupling: `structures` ("all" or keys) plus ModesConfig (temperatures K, '
                        'displacement Å, frequency_cutoff THz, imaginary skip/absolute); none when absent.')
        spec.input('max_md_restarts', valid_type=orm.Int, default=lambda: orm.Int(2),
                   help='How often replicas that blew up are rerun with half the time step.')
        spec.input('gnn_batch_size', valid_type=orm.Int, default=lambda: orm.Int(1024),
                   help='Structures per GNN inference batch.')
        spec.input('options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the GNN jobs (resources, max_wallclock_seconds, ...).')
        spec.input('md_options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the MACE jobs: relaxation, MD and modes (e.g. a GPU queue); default: '
                        '`options`.')
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.relax,
            cls.run_md,
            while_(cls.md_needs_restart)(cls.restart_md),
            cls.predict,
            cls.results,
        )
        spec.output_namespace('relaxed', valid_type=orm.StructureData, dynamic=True,
                              help='The relaxed (0 K) structures, same keys as `structures`.')
        spec.output_namespace('gaps', valid_type=orm.Dict, dynamic=True,
                              help='Per (structure, T), `<key>_T<T>`: attributes x, temperature (K), gap, stderr, '
                                   'stderr_decorrelated, stderr_seeds, n_independent, n_replicas, n_frames, '
                                   'n_outside_domain (frames outside the GNN\'s training domain), eg0, delta_gap (eV), '
                                   'relative_change. Query with filters on attributes.x and attributes.temperature.')
        spec.output_namespace('curves', valid_type=orm.XyData, dynamic=True,
                              help='Eg(T) per structure key: T (K) against gap and stderr (eV).')
        spec.output('table', valid_type=orm.Dict, help='One row per (structure, T): the gaps table (Table I).')
        spec.output('replicas', valid_type=orm.Dict,
                    help='Statistics of every replica: equilibration start (the later of start_gap and start_energy, '
                         'the potential energy\'s), drifting (the energy kept from there still has a trend), '
                         'energy_trend (its change by that trend, eV, and the trend\'s z), statistical inefficiency, '
                         'mean, stderr.')
        spec.output_namespace('coupling', dynamic=True,
                              help='Per structure key: `table_<key>` (ArrayData) and `plot_<key>` (PNG).')
        spec.exit_code(EXIT_CODES['ERROR_RELAX_FAILED'], 'ERROR_RELAX_FAILED',
                       message='The relaxation job failed with exit status {status}.')
        spec.exit_code(EXIT_CODES['ERROR_MD_FAILED'], 'ERROR_MD_FAILED',
                       message='The MD job failed with exit status {status}: {message}')
        spec.exit_code(EXIT_CODES['ERROR_PREDICTION_FAILED'], 'ERROR_PREDICTION_FAILED',
                       message='A GNN prediction job ({label}) failed ({status}).')
        spec.exit_code(EXIT_CODES['ERROR_MODES_FAILED'], 'ERROR_MODES_FAILED',
                       message='The frozen-mode job failed with exit status {status}.')
        spec.exit_code(EXIT_CODES['ERROR_REPLICAS_LOST'], 'ERROR_REPLICAS_LOST',
                       message='Replicas {replicas} still blew up after {restarts} restarts; the gaps of the other '
                               'replicas are in the outputs.')

    @classmethod
    def get_builder_from_protocol(cls, mlip_code: orm.AbstractCode, gnn_code: orm.AbstractCode,
                                  mace_model: ModelData, gnn_model: ModelData, structures: dict,
                                  protocol: str | None = None, overrides: dict | None = None,
                                  options: dict | None = None):
        """Builder with the protocol's temperatures, MD, relaxation and coupling settings (``demo``, ``fast``,
        ``paper``); ``overrides`` is merged into the protocol; ``options`` go to every job."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.mlip_code, builder.gnn_code = mlip_code, gnn_code
        builder.mace_model, builder.gnn_model = mace_model, gnn_model
        builder.structures = structures
        for key, node in cls.protocol_nodes(inputs).items():
            builder[key] = node
        for key in ('options', 'md_options'):  # the protocol's (or overrides') options of a job kind win
            set_options(builder, key, options, inputs.get(key))
        return builder

    # ------------------------------------------------------------------ steps
    def _options(self, md: bool = False) -> dict:
        return job_options(self.inputs, *(('md_options', 'options') if md else ('options',)))

    def _hot(self) -> list[float]:
        return [float(t) for t in self.inputs.temperatures.get_list() if t > 0]

    def relax(self):
        """Relax every structure with the MACE model (the 0 K structures), with the screen's restarts (walltime:
        the rest of the structures; out of memory: smaller batches)."""
        builder = MlipScreenWorkChain.get_builder()
        builder.screen.code, builder.screen.model = self.inputs.mlip_code, self.inputs.mace_model
        builder.screen.structures = dict(self.inputs.structures)
        builder.screen.parameters = orm.Dict(self.inputs.relax.get_dict() if 'relax' in self.inputs else {})
        builder.screen.metadata.options = self._options(md=True)
        builder.metadata.call_link_label = 'relax'
        return ToContext(relax=self.submit(builder))

    def run_md(self):
        """Batched MD of every replica, Eg(0) of the relaxed structures, and the frozen modes."""
        node = self.ctx.relax
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_RELAX_FAILED.format(status=node.exit_status)
        relaxed = dict(node.outputs.relaxed)
        missing = sorted(set(self.inputs.structures) - set(relaxed))
        if missing:
            return self.exit_codes.ERROR_RELAX_FAILED.format(status=f'{node.exit_status} (not relaxed: {missing})')
        self.ctx.relaxed = relaxed
        for key, structure in relaxed.items():
            self.out(f'relaxed.{key}', structure)
        self.ctx.md_attempts = []
        futures = {'eg0': self._predict(structures=relaxed, label='predict_eg0')}
        if self._hot():
            md = self.inputs.md.get_dict() if 'md' in self.inputs else {}
            self.ctx.md_parameters = {**md, 'temperatures': self._hot()}
            futures['md_0'] = self._submit_md(self.ctx.md_parameters)
            self.ctx.md_attempts.append('md_0')
        if 'coupling' in self.inputs:
            coupling = self.inputs.coupling.get_dict()
            keys = coupling.pop('structures', 'all')
            builder = MlipModesCalcJob.get_builder()
            builder.code, builder.model = self.inputs.mlip_code, self.inputs.mace_model
            builder.structures = relaxed if keys == 'all' else {k: relaxed[k] for k in keys}
            builder.parameters = orm.Dict(coupling)
            builder.metadata.options = self._options(md=True)
            builder.metadata.call_link_label = 'modes'
            futures['modes'] = self.submit(builder)
        return ToContext(**futures)

    def _submit_md(self, parameters: dict):
        builder = MlipThermalCalcJob.get_builder()
        builder.code, builder.model = self.inputs.mlip_code, self.inputs.mace_model
        builder.structures = self.ctx.relaxed
        builder.parameters = orm.Dict(parameters)
        builder.metadata.options = self._options(md=True)
        builder.metadata.call_link_label = f'md_{len(self.ctx.md_attempts)}'
        return self.submit(builder)

    def _predict(self, label: str, **data):
        builder = GnnPredictCalcJob.get_builder()
        builder.code, builder.model = self.inputs.gnn_code, self.inputs.gnn_model
        if 'gnn_members' in self.inputs:
            builder.members = dict(self.inputs.gnn_members)
        builder.batch_size = self.inputs.gnn_batch_size
        for name, value in data.items():
            builder[name] = value
        builder.metadata.options = self._options()
        builder.metadata.call_link_label = label
        return self.submit(builder)

    def md_needs_restart(self) -> bool:
        """True when the last MD job left broken replicas and restarts remain; stops on any other failure."""
        if not self.ctx.md_attempts:
            return False
        node = self.ctx[self.ctx.md_attempts[-1]]
        if node.is_finished_ok:
            return False
        if node.exit_status != MlipThermalCalcJob.exit_codes.ERROR_REPLICAS_BROKE.status:
            return False  # reported in `predict`
        broken = node.outputs.results['broken']
        restarts = len(self.ctx.md_attempts) - 1
        if restarts >= self.inputs.max_md_restarts.value:
            self.report(f'replicas {broken} still broke after {restarts} restarts; going on without them')
            return False
        self.report(f'{node.exit_message} Rerunning replicas {broken} with half the time step.')
        return True

    def restart_md(self):
        """Rerun the broken replicas with half the time step, twice the steps and stride, new seeds."""
        node = self.ctx[self.ctx.md_attempts[-1]]
        previous = node.inputs.parameters.get_dict()
        attempt = len(self.ctx.md_attempts)
        parameters = {**previous, 'select': node.outputs.results['broken'],
                      'timestep': previous.get('timestep', 1.0) / 2, 'steps': 2 * previous.get('steps', 50000),
                      'stride': 2 * previous.get('stride', 20), 'seed': previous.get('seed', 0) + 100003 * attempt}
        future = self._submit_md(parameters)  # link label md_<attempt>
        self.ctx.md_attempts.append(f'md_{attempt}')
        return ToContext(**{f'md_{attempt}': future})

    def predict(self):
        """GNN gaps of every MD frame (one job per MD job) and of the frozen-mode cells."""
        if not self.ctx.eg0.is_finished_ok:
            return self.exit_codes.ERROR_PREDICTION_FAILED.format(label='predict_eg0', status=self.ctx.eg0.exit_status)
        futures = {}
        for key in self.ctx.md_attempts:
            node = self.ctx[key]
            ok = node.is_finished_ok or node.exit_status == MlipThermalCalcJob.exit_codes.ERROR_REPLICAS_BROKE.status
            if not ok:
                return self.exit_codes.ERROR_MD_FAILED.format(status=node.exit_status, message=node.exit_message)
            if 'frames' in node.outputs:
                futures[f'gaps_{key}'] = self._predict(dataset=node.outputs.frames, label=f'predict_{key}')
        if 'coupling' in self.inputs:
            if not self.ctx.modes.is_finished_ok:
                return self.exit_codes.ERROR_MODES_FAILED.format(status=self.ctx.modes.exit_status)
            futures['gaps_modes'] = self._predict(dataset=self.ctx.modes.outputs.distorted, label='predict_modes')
        return ToContext(**futures)

    def results(self):
        """Statistics per replica, Eg(T) per structure, the table; the coupling table and plot."""
        for key in [k for k in self.ctx if str(k).startswith('gaps_')]:
            if not self.ctx[key].is_finished_ok:
                return self.exit_codes.ERROR_PREDICTION_FAILED.format(label=key, status=self.ctx[key].exit_status)
        from aiida_capthermo.data.structures import get_structure_metadata
        from aiida_capthermo.ml.settings import ModesConfig

        keys = sorted(self.inputs.structures)
        settings = orm.Dict({'keys': keys, 'temperatures': [float(t) for t in self.inputs.temperatures.get_list()],
                             'x': {k: get_structure_metadata(self.inputs.structures[k])['x'] for k in keys}})
        md = {}
        for index, key in enumerate(self.ctx.md_attempts):
            if f'gaps_{key}' in self.ctx:
                md[f'results_{index}'] = self.ctx[key].outputs.results
                md[f'gaps_{index}'] = self.ctx[f'gaps_{key}'].outputs.predictions
                md[f'series_{index}'] = self.ctx[key].outputs.series
        eg0 = self.ctx.eg0.outputs.predictions
        outputs = thermal_gaps(settings, eg0, **md)
        for name, node in outputs.items():
            if name.startswith('gap_'):
                self.out(f'gaps.{name[4:]}', node)
            elif name.startswith('curve_'):
                self.out(f'curves.{name[6:]}', node)
        self.out('table', outputs['table'])
        self.out('replicas', outputs['replicas'])
        for row in outputs['table']['rows']:
            self.report(f'{row["key"]} x = {row["x"]:.3f}, T = {row["temperature"]:.0f} K: Eg = {row["gap"]:.3f} '
                        f'± {row["stderr"]:.3f} eV, ΔEg = {row["delta_gap"]:+.3f} eV')
            if row['n_outside_domain']:
                self.report(f'warning: {row["n_outside_domain"]} of the {row["n_frames"]} MD frames of '
                            f'{row["key"]} at {row["temperature"]:.0f} K lie outside the GNN\'s training domain '
                            '(their gaps are extrapolated: see the prediction jobs\' outside_domain_reasons)')
            if row.get('n_drifting'):
                self.report(f'warning: the potential energy of {row["n_drifting"]} of the {row["n_replicas"]} '
                            f'replicas of {row["key"]} at {row["temperature"]:.0f} K still drifts where its average '
                            'starts (a linear trend beyond 3 standard errors: not equilibrated, run longer MD)')
        if 'coupling' in self.inputs:
            coupling = mode_coupling(self.ctx.modes.outputs.modes, self.ctx.gaps_modes.outputs.predictions, eg0,
                                     orm.Dict({'keys': keys, 'temperatures': ModesConfig.model_validate(
                                         self.ctx.modes.inputs.parameters.get_dict()).temperatures}))
            for name, node in coupling.items():
                self.out(f'coupling.{name}', node)
        if self.ctx.md_attempts:
            last = self.ctx[self.ctx.md_attempts[-1]]
            if not last.is_finished_ok:
                return self.exit_codes.ERROR_REPLICAS_LOST.format(replicas=last.outputs.results['broken'],
                                                                  restarts=len(self.ctx.md_attempts) - 1)
        return None
