"""``MlipPotentialWorkChain``: a MACE potential from a labelled set, refined by active learning on its own MD,
checked and evaluated.

1. **Train.** One held-out set of the labelled (phonon-informed) structures is split off once and validates every
   training; ``FinetuneMaceWorkChain`` (restarts after walltime and out-of-memory failures) trains on the rest, from
   a foundation model node, a named foundation, or from scratch.
2. **Refine** (``refine``, optional, needs ``evaluate_code``): at most ``rounds`` rounds of active learning. Each
   round runs Langevin MD with the current potential from Vegard cells at the given compositions and temperatures
   (``MlipMdCalcJob``, the batched engine); its frames become structures (calcfunction) and are labelled by the
   teacher's low engine (``BatchLabelWorkChain``); then the current potential is evaluated on these fresh frames
   (``MaceEvaluateCalcJob``) *before* it trains on them: an out-of-sample error of the potential on the
   configurations its own MD visits. When the force MAE is at most ``force_tolerance`` and, with
   ``sampling_tolerance``, the potential's energies follow the engine's on the frames of every (x, T) to within that
   many k_B T (``beta * std(U_engine - U_MLIP)``, what the thermal average needs: the potential's MD samples the
   engine's distribution) the loop stops (converged, the potential is final); otherwise, if rounds remain, the
   frames are merged into the training set and the potential is trained again (from scratch, or continued from the
   last one for ``finetune_epochs``). Retraining happens between rounds, so the final potential is the one
   evaluated last on fresh frames; with ``train_on_last`` an unconverged last round is trained on too, and the final
   potential's out-of-sample check is then the thermal validation's frames. The per-round errors are the
   ``learning_curve``; every labelled frame is in ``md_frames``.
3. **Check** (optional, side by side): MD of mixed cells with the final potential (``md_check``, a stability verdict
   per replica) and the errors of the final potential on the held-out set (``evaluate_code``).

A low validation error does not make a potential that MD can run with: that is why the MD stages exist.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, append_, calcfunction, if_, while_
from aiida.plugins import CalculationFactory
from pydantic import Field, field_validator

from aiida_capthermo.calculations.base import code_validator, job_options, pydantic_error, validate_options
from aiida_capthermo.calculations.mace import validate_foundation_name
from aiida_capthermo.calculations.mace import validate_hyperparameters as validate_mace_hyperparameters
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.ml.settings import MdConfig
from aiida_capthermo.workflows.batch_label import BatchLabelWorkChain, balanced_batch_size
from aiida_capthermo.workflows.dataset import generate_structures
from aiida_capthermo.workflows.engines import engine_namespace
from aiida_capthermo.workflows.functions import build_end_members, frames_to_structures, merge_datasets, split_dataset
from aiida_capthermo.workflows.mace import FinetuneMaceWorkChain
from aiida_capthermo.workflows.protocols import ProtocolMixin, load_code, set_options
from aiida_capthermo.workflows.report import figure_nodes, learning_curve_figure, mace_parity_plot
from aiida_capthermo.workflows.validation import (
    compositions_error,
    end_member_atoms,
    prototype_error,
    supplied_by_parent,
)

__all__ = ['MdStageSettings', 'MlipPotentialWorkChain']

MlipMdCalcJob = CalculationFactory('capthermo.mlip_md')
MaceEvaluateCalcJob = CalculationFactory('capthermo.mace_evaluate')


class MdStageSettings(MdConfig):
    """Settings of an MD stage of the potential (``refine`` or ``md_check``): ``MdConfig`` (what each
    ``capthermo-mlip md`` job runs) plus where the jobs start and how often the stage repeats.

    ``compositions`` are the x of the starting Vegard cells (multiples of 1/n_sites), one MD job each, run at every
    temperature. Unknown keys are rejected.
    """

    rounds: int = Field(1, ge=1, description='Refine only: at most this many rounds of MD -> label -> evaluate the '
                                             'current potential on the fresh frames; the potential is retrained on '
                                             'the frames between rounds (rounds N: up to N-1 retrainings; N with '
                                             'train_on_last).')
    force_tolerance: float | None = Field(
        None, gt=0, description='Refine only: stop (converged) when the force MAE of the current potential on the '
                                'fresh frames of a round is at most this (eV/Å); None runs every round.')
    sampling_tolerance: float | None = Field(
        None, gt=0, description='Refine only: converged also needs beta * std(U_engine - U_MLIP) over the fresh '
                                'frames of every (x, T) of a round at most this (dimensionless; 1 is where the '
                                "thermal validation's first-order sampling shift holds); None: forces only.")
    compositions: list[float] = Field(default_factory=lambda: [0.5], min_length=1,
                                      description='Compositions x of the starting cells, one MD job each.')
    finetune_epochs: int | None = Field(
        None, ge=1, description='Refine only: each round continues from the previous potential (its foundation) '
                                'for this many epochs on the enlarged set; None trains each round from scratch.')
    train_on_last: bool = Field(
        False, description='Refine only: when the last round has not converged, train once more with its frames '
                           '(rounds N: up to N retrainings). The final potential then learns from the frames of its '
                           "predecessor's MD, the closest to its own; it has no out-of-sample point on the learning "
                           "curve, and the thermal validation's frames are its out-of-sample check.")
    finetune_hyperparameters: dict = Field(
        default_factory=dict, description='Refine with finetune_epochs only: MACE hyper-parameters that replace the '
                                          "training's in those rounds (MaceHyperParameters keys, e.g. a larger "
                                          'energy_weight, as the second stage of MACE fine-tuning).')

    @field_validator('finetune_hyperparameters')
    @classmethod
    def _known_hyperparameters(cls, value: dict) -> dict:
        from aiida_capthermo.calculations.mace import MaceHyperParameters

        unknown = sorted(set(value) - set(MaceHyperParameters.model_fields))
        if unknown:
            raise ValueError(f'unknown MACE hyper-parameters {unknown}')
        MaceHyperParameters(**value)  # each value valid on its own
        return value

    def md_parameters(self, seed_offset: int = 0) -> dict:
        """The ``MdConfig`` of one MD job (the seed shifted so that every job draws its own noise)."""
        stage_only = set(type(self).model_fields) - set(MdConfig.model_fields)  # rounds, compositions, ...
        return {**self.model_dump(exclude=stage_only), 'seed': self.seed + seed_offset}


def validate_md_stage(value: orm.Dict, _) -> str | None:
    return pydantic_error(MdStageSettings, value.get_dict(), 'MD stage settings')


def validate_inputs(inputs, ports) -> str | None:
    """The MD stages need the MD code, compositions the supercell holds, and a labelling engine and the evaluation
    code to refine."""
    if supplied_by_parent(ports, 'prototype', 'supercell', 'engine'):
        return None  # the study checks them with the dataset's
    if 'refine' in inputs and 'evaluate_code' not in inputs:
        return ('refine evaluates each potential on the fresh MD frames before training on them: it needs '
                'evaluate_code (a capthermo-mace code)')
    if ('refine' in inputs or 'md_check' in inputs) and not ('mlip_code' in inputs and 'prototype' in inputs):
        return 'refine and md_check need mlip_code (a capthermo-mlip code) and the prototype of their start cells'
    if 'refine' in inputs and 'code' not in inputs.get('engine', {}):
        return 'refine labels MD frames: it needs the labelling engine (engine.code)'
    supercell = inputs['supercell'].get_list() if 'supercell' in inputs else [2, 2, 2]
    sites_per_cell = 1
    if 'prototype' in inputs:
        prototype = inputs['prototype'].get_dict()
        error = prototype_error(prototype)
        if error:
            return f'prototype: {error}'
        try:
            host, _ = end_member_atoms(prototype, inputs.get('parents', {}))
        except ValueError as exception:
            return str(exception)
        sites_per_cell = host.get_chemical_symbols().count(prototype['host'])
    for name in ('refine', 'md_check'):
        if name in inputs:
            error = compositions_error(inputs[name].get_dict().get('compositions', [0.5]), supercell, sites_per_cell)
            if error:
                return f'{name}.compositions: {error}'
    return None


@calcfunction
def collect_md_results(**results) -> orm.Dict:
    """Join the ``results`` of several MD jobs: ``stable`` only when every replica is."""
    replicas = [{**replica, 'job': key} for key in sorted(results) for replica in results[key]['replicas']]
    return orm.Dict({'stable': all(bool(r.get('stable')) for r in replicas),
                     'n_stable': sum(bool(r.get('stable')) for r in replicas), 'n_replicas': len(replicas),
                     'replicas': replicas})


@calcfunction
def energy_spread(frames: DatasetData, parity: orm.ArrayData) -> orm.Dict:
    """``beta * std(U_engine - U_MLIP)`` per (x, T) of labelled MD frames (``frames``: the engine's labels;
    ``parity``: ``MaceEvaluateCalcJob``'s arrays on them): :func:`aiida_capthermo.core.validation.energy_spread`,
    output ``rows``."""
    from aiida_capthermo.core.validation import energy_spread as spread

    labelled = frames.get_labelled_set()
    return orm.Dict({'rows': spread(labelled.x, labelled.temperature, parity.get_array('energy_ref'),
                                    parity.get_array('energy_pred')), 'units': {'std_dU': 'eV'}})


def round_converged(force_mae: float, sampling: list[dict], force_tolerance: float | None,
                    sampling_tolerance: float | None) -> bool | None:
    """Whether a refinement round's potential is final: force MAE within ``force_tolerance`` and, with
    ``sampling_tolerance``, ``beta_sigma`` of every (x, T) row of ``sampling`` within it (a row without one, from a
    single frame, cannot show it). None without a force tolerance."""
    if force_tolerance is None:
        return None
    if force_mae > force_tolerance:
        return False
    if sampling_tolerance is None:
        return True
    return bool(sampling) and all(row['beta_sigma'] is not None and row['beta_sigma'] <= sampling_tolerance
                                  for row in sampling)


@calcfunction
def learning_curve(settings: orm.Dict, **nodes) -> dict:
    """The out-of-sample learning curve of the refinement: one row per round. ``nodes``: ``round_00``... the
    ``metrics`` of ``MaceEvaluateCalcJob`` on that round's fresh MD frames and ``spread_00``... their
    :func:`energy_spread`; ``settings``: ``force_tolerance``, ``sampling_tolerance``, per round ``n_training``,
    ``model_uuid``, ``compositions``, ``temperatures``, and ``final`` (the final potential's ``model_uuid``,
    ``n_training`` and ``trained_on_last_round``: not the last round's potential, with ``train_on_last``)."""
    s = settings.get_dict()
    force_tolerance, sampling_tolerance = s.get('force_tolerance'), s.get('sampling_tolerance')
    rows = []
    for key, row in zip(sorted(k for k in nodes if k.startswith('round_')), s['rounds']):
        values = nodes[key].get_dict()
        sampling = nodes[f'spread_{key[6:]}']['rows']
        spreads = [r['beta_sigma'] for r in sampling if r['beta_sigma'] is not None]
        rows.append({'round': row['round'], 'n_frames': values['n_structures'], 'n_training': row['n_training'],
                     'force_mae': values['forces']['mae'], 'force_rmse': values['forces']['rmse'],
                     'energy_per_atom_mae': values['energy_per_atom']['mae'],
                     'max_beta_sigma': max(spreads) if spreads else None, 'sampling': sampling,
                     'converged': round_converged(values['forces']['mae'], sampling, force_tolerance,
                                                  sampling_tolerance),
                     'model_uuid': row['model_uuid'], 'compositions': row['compositions'],
                     'temperatures': row['temperatures']})
    curve = {'rounds': rows, 'force_tolerance': force_tolerance, 'sampling_tolerance': sampling_tolerance,
             'converged': rows[-1]['converged'] if rows else None, 'final': s.get('final'),
             'units': {'force_mae': 'eV/Å', 'force_rmse': 'eV/Å', 'energy_per_atom_mae': 'eV/atom',
                       'force_tolerance': 'eV/Å', 'std_dU': 'eV per cell'}}
    png, pdf = figure_nodes(learning_curve_figure(curve), 'mace_learning_curve')
    return {'learning_curve': orm.Dict(curve), 'plot': png, 'plot_pdf': pdf}


class MlipPotentialWorkChain(ProtocolMixin, WorkChain):
    """Train a MACE potential, refine it with labelled frames of its own MD, check it by MD and evaluate it."""

    _protocol_file = 'mlip_potential'

    @classmethod
    def get_builder_from_protocol(cls, code: orm.AbstractCode, mlip_code: orm.AbstractCode | None = None,
                                  evaluate_code: orm.AbstractCode | None = None, protocol: str | None = None,
                                  overrides: dict | None = None, options: dict | None = None, **inputs):
        """Builder from ``protocols/mlip_potential.yaml`` (``demo``, ``fast``, ``paper``) merged with
        ``overrides``. The MD stages of the protocol (``refine``, ``md_check``) are set when ``mlip_code``
        (capthermo-mlip) is given, ``evaluate_code`` (capthermo-mace) adds the evaluation on the held-out set and
        is needed by ``refine`` (each round's potential evaluated on its fresh MD frames); each code may also be an
        override (a code label). ``options`` are the scheduler options of every job (the
        protocol's own ``options`` and ``md_options`` win). ``inputs`` (dataset, prototype, supercell, engine...)
        are set as they are."""
        values = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.code = load_code(values.pop('code', code))
        evaluate_code = values.pop('evaluate_code', evaluate_code)
        if evaluate_code is not None:
            builder.evaluate_code = load_code(evaluate_code)
        mlip_code = values.pop('mlip_code', mlip_code)
        own = {key: values.pop(key, None) for key in ('options', 'md_options')}
        md_stages = {key: values.pop(key) for key in ('refine', 'md_check') if key in values}
        if mlip_code is not None:
            builder.mlip_code = load_code(mlip_code)
            for key, node in cls.protocol_nodes(md_stages).items():
                builder[key] = node
            set_options(builder, 'md_options', options, own['md_options'])
        for key, node in cls.protocol_nodes(values).items():
            builder[key] = node
        set_options(builder, 'options', options, own['options'])
        for key, value in inputs.items():
            builder[key] = value
        return builder

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('dataset', valid_type=DatasetData,
                   help='The labelled set (energies eV, forces eV/Å, stresses eV/Å^3) to train and validate on.')
        spec.input('code', valid_type=orm.AbstractCode, validator=code_validator('capthermo.mace_finetune'),
                   help='A mace_run_train code.')
        spec.input('hyperparameters', valid_type=orm.Dict, required=False, validator=validate_mace_hyperparameters,
                   help='FinetuneMaceCalcJob hyper-parameters (loss weights 1/150/10 by default); valid_fraction and '
                        'seed also choose the held-out set.')
        spec.input('foundation_model', valid_type=ModelData, required=False,
                   help='Foundation MACE model node to fine-tune (preferred for provenance).')
        spec.input('foundation_name', valid_type=orm.Str, required=False, validator=validate_foundation_name,
                   help='Named MACE foundation (e.g. medium-mpa-0) resolved on the computer; none: from scratch.')
        spec.input('options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the MACE training jobs.')
        spec.input('mlip_code', valid_type=orm.AbstractCode, required=False,
                   validator=code_validator('capthermo.mlip_md'),
                   help='A capthermo-mlip code: runs the MD of refine and md_check.')
        spec.input('refine', valid_type=orm.Dict, required=False, validator=validate_md_stage,
                   help='Active learning (needs evaluate_code): rounds (at most), force_tolerance (eV/Å), '
                        'sampling_tolerance (beta * std(U_engine - U_MLIP) per (x, T)), compositions (x), '
                        'temperatures (K), steps, frame_stride, max_frame_force (eV/Å) ... (MdConfig keys), '
                        'finetune_epochs. Each round, frames of MD with the current potential are labelled by '
                        '`engine` and the potential is evaluated on them (out of sample); unless its force MAE is '
                        'within force_tolerance (and its energy spread within sampling_tolerance at every (x, T)) '
                        'or no round remains, it is trained again on the merged set (from scratch, or continued '
                        'from the last one for finetune_epochs).')
        spec.input('md_check', valid_type=orm.Dict, required=False, validator=validate_md_stage,
                   help='MD stability check of the final potential: compositions, temperatures (K), steps, '
                        'stable_distance (Å), temperature_tolerance ... (MdConfig keys).')
        spec.input('md_options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the MD and evaluation jobs (default: those of the MACE job).')
        spec.input('evaluate_code', valid_type=orm.AbstractCode, required=False,
                   validator=code_validator('capthermo.mace_evaluate'),
                   help='A capthermo-mace code: evaluates the final potential on the held-out set, and each '
                        'refinement round\'s potential on its fresh MD frames (required by refine).')
        spec.input('prototype', valid_type=orm.Dict, required=False,
                   help='The solid solution (host, guest; the anti-perovskite preset with a, b, a_host, a_guest Å) of '
                        'the MD start cells.')
        spec.input_namespace('parents', valid_type=orm.StructureData, required=False,
                             help="The end members `host` and `guest` of the MD start cells (the dataset's parents); "
                                  'built from the prototype preset when absent.')
        spec.input('supercell', valid_type=orm.List, default=lambda: orm.List([2, 2, 2]),
                   help='Diagonal supercell of the MD start cells.')
        engine_namespace(spec, 'engine', required=False,
                         help='The engine that labels the refinement frames (the dataset\'s low engine).')
        spec.input('batch_size', valid_type=orm.Int, default=lambda: orm.Int(20),
                   help='At most this many frames per labelling job.')
        spec.input('max_concurrent', valid_type=orm.Int, default=lambda: orm.Int(4),
                   help='Labelling jobs running at the same time.')
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            cls.run_training,
            cls.inspect_training,
            while_(cls.should_refine)(
                cls.run_refine_md,
                cls.inspect_refine_md,
                cls.run_refine_labels,
                cls.inspect_refine_labels,
                cls.run_refine_evaluation,
                cls.inspect_refine_evaluation,
                if_(cls.should_retrain)(
                    cls.merge_frames,
                    cls.run_training,
                    cls.inspect_training,
                ),
            ),
            cls.collect_refinement,
            if_(cls.should_check)(cls.run_checks, cls.inspect_checks),
            cls.results,
        )
        spec.output('model', valid_type=ModelData, help='The final MACE potential.')
        spec.output('metrics', valid_type=orm.Dict, help='MACE errors of the final round on train/validation.')
        spec.output('training_set', valid_type=DatasetData,
                    help='The set the final potential was trained on (the dataset less the validation set, plus '
                         'the labelled MD frames of the rounds before the last; of every round with '
                         'refine.train_on_last).')
        spec.output('validation_set', valid_type=DatasetData,
                    help='Held-out structures of the dataset that validate every round (metrics `validation`).')
        spec.output('evaluation', valid_type=orm.Dict, required=False,
                    help='Errors of the final potential on validation_set (energy, energy per atom, forces, '
                         'stress: MAE, RMSE, R²), from MaceEvaluateCalcJob (with evaluate_code).')
        spec.output('parity_plot', valid_type=orm.SinglefileData, required=False,
                    help='Parity plot of the evaluation (PNG).')
        spec.output('learning_curve', valid_type=orm.Dict, required=False,
                    help='Refinement: per round the out-of-sample errors of the current potential on its fresh MD '
                         'frames before training on them (round, n_frames, n_training, force_mae and force_rmse '
                         'eV/Å, energy_per_atom_mae eV/atom, sampling: per (x, T) n, std_dU eV and beta_sigma = '
                         'beta * std(U_engine - U_MLIP), max_beta_sigma, converged, model_uuid, compositions, '
                         'temperatures), force_tolerance, sampling_tolerance, converged (the last round within '
                         'both; None without a force tolerance), final (the final potential: model_uuid, '
                         'n_training, trained_on_last_round), units.')
        spec.output('learning_curve_plot', valid_type=orm.SinglefileData, required=False,
                    help='PNG of the learning curve: force MAE/RMSE on fresh frames against the training-set size.')
        spec.output('md_frames', valid_type=DatasetData, required=False,
                    help='Refinement: every labelled MD frame of every round (also the last round\'s, which the '
                         'final potential did not train on unless refine.train_on_last), labelled by the low engine.')
        spec.output('md_check', valid_type=orm.Dict, required=False,
                    help='MD stability of the final potential: stable, n_stable, per replica x, T (K), mean '
                         'temperature (K), closest pair and distance (Å).')
        spec.exit_code(EXIT_CODES['ERROR_MACE_FAILED'], 'ERROR_MACE_FAILED', message='MACE training failed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_MD_FAILED'], 'ERROR_MD_FAILED', message='An MD job failed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_REFINE_LABELS_FAILED'], 'ERROR_REFINE_LABELS_FAILED',
                       message='No MD frame could be labelled: {message}')
        spec.exit_code(EXIT_CODES['ERROR_EVALUATION_FAILED'], 'ERROR_EVALUATION_FAILED',
                       message='The evaluation of the potential failed: {message}')

    def _md_settings(self, name: str) -> MdStageSettings:
        return MdStageSettings.model_validate(self.inputs[name].get_dict())

    def _md_options(self) -> dict:
        return job_options(self.inputs, 'md_options', 'options')

    # ------------------------------------------------------------------ training
    def setup(self):
        """Split off the held-out set once: later rounds add MD frames to the training set, whose forces would
        otherwise dominate a random validation split."""
        hyper = self.inputs.get('hyperparameters', orm.Dict({})).get_dict()
        split = split_dataset(self.inputs.dataset, orm.Dict({'valid_fraction': hyper.get('valid_fraction', 0.05),
                                                             'seed': hyper.get('seed', 123)}))
        self.ctx.train, self.ctx.valid = split['train'], split['valid']
        self.ctx.round = 0
        self.ctx.converged = False
        self.ctx.curve = []  # per refinement round: what the learning curve records besides the evaluation metrics
        self.ctx.round_metrics = {}  # round_00...: the evaluation metrics; spread_00...: their energy spread
        self.ctx.md_labels = []

    def run_training(self):
        """Train on the current training set; in a refinement round with ``finetune_epochs``, continue from the
        previous potential."""
        inputs = {'code': self.inputs.code, 'train': self.ctx.train, 'valid': self.ctx.valid}
        for key in ('hyperparameters', 'foundation_model', 'foundation_name'):
            if key in self.inputs:
                inputs[key] = self.inputs[key]
        refine = self._md_settings('refine') if self.ctx.round else None
        epochs = refine.finetune_epochs if refine else None
        if epochs:
            changed = refine.finetune_hyperparameters
            self.report(f'fine-tuning potential {self.ctx.model.pk} for {epochs} epochs on the enlarged set'
                        + (f' with {changed}' if changed else ''))
            inputs.pop('foundation_name', None)
            inputs['foundation_model'] = self.ctx.model
            hyper = inputs.get('hyperparameters', orm.Dict({})).get_dict()
            inputs['hyperparameters'] = orm.Dict({**hyper, **changed, 'max_num_epochs': epochs})
        if 'options' in self.inputs:
            inputs['metadata'] = {'options': self.inputs.options.get_dict()}
        label = f'mace_refine{self.ctx.round - 1}' if self.ctx.round else 'mace'
        return ToContext(training=self.submit(FinetuneMaceWorkChain, mace=inputs,
                                              metadata={'call_link_label': label}))

    def inspect_training(self):
        node = self.ctx.training
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_MACE_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.ctx.model, self.ctx.metrics = node.outputs.model, node.outputs.metrics
        valid = node.outputs.metrics.get_dict().get('validation', {})
        self.report(f'MACE potential {node.outputs.model.pk}: validation force MAE '
                    f'{valid.get("mae_f", float("nan")):.4g} eV/Å')
        return None

    # ------------------------------------------------------------------ MD stages
    def _submit_md(self, settings: MdStageSettings, label: str, seed_offset: int, context: str) -> None:
        """One MlipMdCalcJob per composition (they run side by side), each at every temperature; appended to the
        context list ``context``."""
        p = self.inputs.prototype.get_dict()
        if 'md_parents' not in self.ctx:
            self.ctx.md_parents = dict(build_end_members(self.inputs.prototype, **self.inputs.get('parents', {})))
        start_settings = {
            'host': p['host'], 'guest': p['guest'],
            'supercell': self.inputs.supercell.get_list(), 'n_structures': len(settings.compositions),
            'seed': settings.seed + 40_000 + seed_offset, 'scheme': 'equilibrium', 'distribution': 'uniform',
            'composition_mode': 'grid', 'frequency_cutoff': 0.1, 'x_values': settings.compositions}
        starts = generate_structures(self.ctx.md_parents['host'], self.ctx.md_parents['guest'],
                                     orm.Dict(start_settings))
        for index, key in enumerate(sorted(starts)):
            inputs = {'code': self.inputs.mlip_code, 'model': self.ctx.model, 'structures': {'start': starts[key]},
                      'parameters': orm.Dict(settings.md_parameters(seed_offset + 1000 * index)),
                      'metadata': {'call_link_label': f'{label}_{index:02d}', 'options': self._md_options()}}
            self.to_context(**{context: append_(self.submit(MlipMdCalcJob, **inputs))})

    def should_refine(self) -> bool:
        """Another round: refine is set, the last round did not converge and rounds remain."""
        return ('refine' in self.inputs and not self.ctx.converged
                and self.ctx.round < self._md_settings('refine').rounds)

    def run_refine_md(self):
        settings = self._md_settings('refine')
        self.report(f'refinement round {self.ctx.round}: MD with the potential at x {settings.compositions}, '
                    f'T {settings.temperatures} K')
        self.ctx.refine_md = []
        self._submit_md(settings, f'refine{self.ctx.round}_md', seed_offset=100 * self.ctx.round, context='refine_md')

    def inspect_refine_md(self):
        self.ctx.frames = []
        for node in self.ctx.refine_md:
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MD_FAILED.format(message=f'{node.pk} [{node.exit_status}] '
                                                                      f'{node.exit_message}')
            results = node.outputs.results.get_dict()
            broken = [r.get('broke') for r in results['replicas'] if r.get('broke')]
            self.report(f'MD {node.pk}: {results["n_stable"]}/{results["n_replicas"]} replicas stable'
                        + (f' (broke: {broken})' if broken else ''))
            if 'frames' in node.outputs:
                self.ctx.frames.append(node.outputs.frames)
        if not self.ctx.frames:
            return self.exit_codes.ERROR_MD_FAILED.format(message='no MD frame to label (set frame_stride)')
        return None

    def run_refine_labels(self):
        """Label the frames with the teacher's low engine, as many jobs at once as the dataset ran."""
        structures = {}
        for index, frames in enumerate(self.ctx.frames):
            for key, node in frames_to_structures(frames).items():
                structures[f'md{index:02d}_{key}'] = node
        concurrent = self.inputs.max_concurrent.value
        batch_size = balanced_batch_size(len(structures), self.inputs.batch_size.value, concurrent)
        self.report(f'labelling {len(structures)} MD frames')
        return ToContext(frame_labels=self.submit(
            BatchLabelWorkChain, structures=structures, engine=dict(self.inputs.engine), fidelity=orm.Str('low'),
            batch_size=orm.Int(batch_size), max_concurrent=orm.Int(concurrent),
            attributes=orm.Dict({'subset': 'md', 'refine_round': self.ctx.round}),
            metadata={'call_link_label': f'refine{self.ctx.round}_labels'}))

    def inspect_refine_labels(self):
        node = self.ctx.frame_labels
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_REFINE_LABELS_FAILED.format(message=f'[{node.exit_status}] '
                                                                             f'{node.exit_message}')
        self.ctx.md_labels.append(node.outputs.labels)
        return None

    def run_refine_evaluation(self):
        """Evaluate the current potential on the freshly labelled frames, before it trains on them: its error on
        configurations it has not seen, drawn from its own MD."""
        return ToContext(refine_evaluation=self.submit(
            MaceEvaluateCalcJob, code=self.inputs.evaluate_code, model=self.ctx.model,
            dataset=self.ctx.md_labels[-1],
            metadata={'call_link_label': f'refine{self.ctx.round}_evaluation', 'options': self._md_options()}))

    def inspect_refine_evaluation(self):
        """Record the round on the learning curve; converged when the force MAE is within its tolerance and, with
        ``sampling_tolerance``, the energy spread of every (x, T) within that."""
        node = self.ctx.refine_evaluation
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_EVALUATION_FAILED.format(
                message=f'{node.pk} [{node.exit_status}] {node.exit_message}')
        settings = self._md_settings('refine')
        metrics = node.outputs.metrics.get_dict()
        force_mae = metrics['forces']['mae']
        self.ctx.round_metrics[f'round_{self.ctx.round:02d}'] = node.outputs.metrics
        spread = energy_spread(self.ctx.md_labels[-1], node.outputs.parity)
        self.ctx.round_metrics[f'spread_{self.ctx.round:02d}'] = spread
        sampling = spread['rows']
        self.ctx.curve.append({'round': self.ctx.round, 'n_training': self.ctx.train.n_structures,
                               'model_uuid': self.ctx.model.uuid, 'compositions': list(settings.compositions),
                               'temperatures': list(settings.temperatures)})
        tolerance = settings.force_tolerance
        self.report(f'refinement round {self.ctx.round}: force MAE {force_mae:.4g} eV/Å on {metrics["n_structures"]} '
                    f'fresh MD frames (tolerance {tolerance if tolerance is not None else "none"})')
        spreads = ', '.join(f'x {r["x"]:g} {r["temperature"]:g} K {r["beta_sigma"]:.2f}' for r in sampling
                            if r['beta_sigma'] is not None)
        self.report(f'refinement round {self.ctx.round}: beta * std(U_engine - U_MLIP) per (x, T): {spreads or "-"} '
                    f'(tolerance {settings.sampling_tolerance if settings.sampling_tolerance else "none"})')
        self.ctx.converged = bool(round_converged(force_mae, sampling, tolerance, settings.sampling_tolerance))
        self.ctx.round += 1
        return None

    def should_retrain(self) -> bool:
        """Retrain between rounds: not after a converged round, and after the last one only with
        ``train_on_last`` (else the final potential is the one last evaluated on fresh frames)."""
        settings = self._md_settings('refine')
        return not self.ctx.converged and (self.ctx.round < settings.rounds or settings.train_on_last)

    def merge_frames(self):
        """Merge the labelled frames of the round just evaluated into the training set."""
        previous = self.ctx.train
        self.ctx.train = merge_datasets(orm.Dict({'subset': 'low+md', 'refine_round': self.ctx.round - 1}),
                                        training_set=previous, md_frames=self.ctx.md_labels[-1])
        self.report(f'training set {previous.n_structures} -> {self.ctx.train.n_structures} structures')

    def collect_refinement(self):
        """The learning curve and every labelled frame of the refinement."""
        if not self.ctx.curve:
            return
        settings = self._md_settings('refine')
        tolerance = settings.force_tolerance
        trained_on_last = self.ctx.model.uuid != self.ctx.curve[-1]['model_uuid']
        final = {'model_uuid': self.ctx.model.uuid, 'n_training': self.ctx.train.n_structures,
                 'trained_on_last_round': trained_on_last}
        outputs = learning_curve(orm.Dict({'force_tolerance': tolerance, 'rounds': self.ctx.curve, 'final': final,
                                           'sampling_tolerance': settings.sampling_tolerance}),
                                 **self.ctx.round_metrics)
        curve = outputs['learning_curve']
        self.out('learning_curve', curve)
        self.out('learning_curve_plot', outputs['plot'])
        labels = self.ctx.md_labels
        self.out('md_frames', merge_datasets(orm.Dict({'subset': 'md', 'refine_rounds': len(labels)}),
                                             **{f'round_{index:02d}': node for index, node in enumerate(labels)}))
        last = curve['rounds'][-1]
        spread = '' if last['max_beta_sigma'] is None else f', beta * std(dU) at most {last["max_beta_sigma"]:.2f}'
        within = '' if settings.sampling_tolerance is None else f' and {settings.sampling_tolerance}'
        if curve['converged']:
            self.report(f'refinement converged in round {last["round"]}: force MAE {last["force_mae"]:.4g} eV/Å'
                        f'{spread} within tolerance {tolerance} eV/Å{within}; potential {self.ctx.model.pk} is final')
        elif tolerance is not None:
            self.report(f'WARNING: refinement did not converge in {len(labels)} round(s): force MAE '
                        f'{last["force_mae"]:.4g} eV/Å{spread} on fresh MD frames, tolerance {tolerance} eV/Å'
                        f'{within}')
        if trained_on_last:
            self.report(f'potential {self.ctx.model.pk} is final: trained also on round {last["round"]}\'s frames '
                        f'({final["n_training"]} structures); its out-of-sample check is the thermal validation')

    # ------------------------------------------------------------------ checks of the final potential
    def should_check(self) -> bool:
        return 'md_check' in self.inputs or 'evaluate_code' in self.inputs

    def run_checks(self):
        """The MD check and the evaluation on the held-out set, side by side."""
        self.ctx.md_check = []
        if 'md_check' in self.inputs:
            self._submit_md(self._md_settings('md_check'), 'md_check', seed_offset=10_000, context='md_check')
        if 'evaluate_code' in self.inputs:
            return ToContext(evaluation=self.submit(
                MaceEvaluateCalcJob, code=self.inputs.evaluate_code, model=self.ctx.model, dataset=self.ctx.valid,
                metadata={'call_link_label': 'mace_evaluation', 'options': self._md_options()}))
        return None

    def inspect_checks(self):
        for node in self.ctx.md_check:
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MD_FAILED.format(message=f'{node.pk} [{node.exit_status}] '
                                                                      f'{node.exit_message}')
        if self.ctx.md_check:
            check = collect_md_results(**{f'job_{i:02d}': n.outputs.results for i, n in enumerate(self.ctx.md_check)})
            self.out('md_check', check)
            for r in check['replicas']:
                self.report(f'MD check x={r["x"]:.3f} T={r["temperature"]:.0f} K: stable={r.get("stable")}, mean T '
                            f'{r.get("mean_temperature", float("nan")):.0f} K, closest {r.get("closest_pair")} '
                            f'{r.get("min_distance", float("nan")):.2f} Å')
        if 'evaluation' in self.ctx:
            node = self.ctx.evaluation
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_EVALUATION_FAILED.format(
                    message=f'{node.pk} [{node.exit_status}] {node.exit_message}')
            self.out('evaluation', node.outputs.metrics)
            self.out('parity_plot', mace_parity_plot(node.outputs.parity)['plot'])
            forces = node.outputs.metrics.get_dict().get('forces', {})
            self.report(f'potential on {node.inputs.dataset.n_structures} held-out structures: force MAE '
                        f'{forces.get("mae", float("nan")):.4g} eV/Å')
        return None

    def results(self):
        self.out('model', self.ctx.model)
        self.out('metrics', self.ctx.metrics)
        self.out('training_set', self.ctx.train)
        self.out('validation_set', self.ctx.valid)
