"""``CapthermoStudyWorkChain``: the papers' study as one provenance graph.

dataset (PhononInformedDatasetWorkChain) -> MACE potential (FinetuneMaceCalcJob on the low set, from a
foundation model node, a named foundation, or from scratch) and, in parallel, the band-gap GNN in two stages
(GnnTrainCalcJob on the low + equilibrium sets, then fine-tuned on the high-fidelity gaps from that model).
MACE runs in FinetuneMaceWorkChain, which restarts from checkpoints after a walltime kill and halves the batch
size after running out of memory.

A low validation error does not make a potential that MD can run with, so two optional MD stages follow
(``capthermo-mlip md`` through MlipMdCalcJob):

* ``mace.refine``: rounds of active learning. Langevin MD with the current potential from Vegard cells at the given
  compositions and temperatures; the frames (each a StructureData made by calcfunction) are labelled by the
  dataset's low engine and added to the training set; the potential is trained again on the merged set.
* ``mace.md_check``: Langevin MD of mixed cells with the final potential; the verdict (stable, mean temperature,
  closest pair) is the ``mace.md_check`` output.

Then, when their namespaces are given, the solid-solution screen (SolidSolutionScreenWorkChain with the final
potential: ground state per composition, its 0 K and finite-temperature phonons) and the thermal band gaps
(ThermalGapWorkChain on the screen's lowest configurations with the potential and the fine-tuned GNN: Eg(x, T) with
error bars and the mode-resolved coupling). A calcfunction turns the gaps into the paper's Table I (Dict and CSV)
and Figure 7b-d (PNG); the stages' own figures (GNN parity, phonon bands at 0 K and T, coupling per Γ mode) are
re-exposed under ``figures``.

Every stage can start from given nodes instead (``given``): datasets, either model, or the structures of the thermal
stage; what is given is not recomputed.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_
from aiida.plugins import CalculationFactory
from pydantic import Field

from aiida_capthermo.calculations.base import code_validator, pydantic_error, validate_options
from aiida_capthermo.calculations.gnn import validate_hyperparameters as validate_gnn_hyperparameters
from aiida_capthermo.calculations.mace import validate_foundation_name
from aiida_capthermo.calculations.mace import validate_hyperparameters as validate_mace_hyperparameters
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.ml.md import MdConfig
from aiida_capthermo.workflows.dataset import (
    PhononInformedDatasetWorkChain,
    build_parent,
    frames_to_structures,
    generate_structures,
    merge_datasets,
    split_dataset,
)
from aiida_capthermo.workflows.engines import label_batch_inputs
from aiida_capthermo.workflows.mace import FinetuneMaceWorkChain
from aiida_capthermo.workflows.protocols import ProtocolMixin, load_code, set_options, unlanded_overrides
from aiida_capthermo.workflows.report import mace_parity_plot, table_one
from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain
from aiida_capthermo.workflows.thermal import ThermalGapWorkChain
from aiida_capthermo.workflows.validation import compositions_error

__all__ = ['CapthermoStudyWorkChain']

GnnTrainCalcJob = CalculationFactory('capthermo.gnn_train')
MlipMdCalcJob = CalculationFactory('capthermo.mlip_md')
MaceEvaluateCalcJob = CalculationFactory('capthermo.mace_evaluate')


class MdStageSettings(MdConfig):
    """Settings of an MD stage of the study (``mace.refine`` or ``mace.md_check``): ``MdConfig`` (what each
    ``capthermo-mlip md`` job runs) plus where the jobs start and how often the stage repeats.

    ``compositions`` are the x of the starting Vegard cells (multiples of 1/n_sites), one MD job each, run at every
    temperature. Unknown keys are rejected.
    """

    rounds: int = Field(1, ge=1, description='Refinement rounds (refine only).')
    compositions: list[float] = Field(default_factory=lambda: [0.5], min_length=1,
                                      description='Compositions x of the starting cells, one MD job each.')
    finetune_epochs: int | None = Field(
        None, ge=1, description='Refine only: each round continues from the previous potential (its foundation) '
                                'for this many epochs on the enlarged set; None trains each round from scratch.')

    def md_parameters(self, seed_offset: int = 0) -> dict:
        """The ``MdConfig`` of one MD job (the seed shifted so that every job draws its own noise)."""
        return {**self.model_dump(exclude={'rounds', 'compositions', 'finetune_epochs'}),
                'seed': self.seed + seed_offset}


def validate_md_stage(value: orm.Dict, _) -> str | None:
    return pydantic_error(MdStageSettings, value.get_dict(), 'MD stage settings')


@calcfunction
def collect_md_results(**results) -> orm.Dict:
    """Join the ``results`` of several MD jobs: ``stable`` only when every replica is."""
    replicas = [{**replica, 'job': key} for key in sorted(results) for replica in results[key]['replicas']]
    return orm.Dict({'stable': all(bool(r.get('stable')) for r in replicas),
                     'n_stable': sum(bool(r.get('stable')) for r in replicas), 'n_replicas': len(replicas),
                     'replicas': replicas})


def _with_defaults(process, given: dict, extra: dict) -> dict:
    """The inputs of a stage as its validator sees them: ``given`` (the study's namespace), ``extra`` (what the
    study supplies) and the defaults of the ports neither sets."""
    inputs = {**given, **extra}
    for name, port in process.spec().inputs.items():
        if name not in inputs and getattr(port, 'has_default', lambda: False)():
            default = port.default
            inputs[name] = default() if callable(default) else default
    return inputs


def validate_study(inputs, _) -> str | None:
    from aiida_capthermo.workflows import screen, thermal

    given = inputs.get('given', {})
    if 'screen' in inputs:
        if 'mace_model' not in given and 'code' not in inputs.get('mace', {}):
            return 'the screen needs a potential: give mace.code (train one) or given.mace_model'
        dataset = inputs.get('dataset', {})
        extra = {'prototype': dataset['prototype']} if 'prototype' in dataset else {}
        if 'supercell' in dataset:
            extra['supercell'] = dataset['supercell']
        error = screen.validate_inputs(_with_defaults(SolidSolutionScreenWorkChain, dict(inputs['screen']), extra),
                                       None)
        if error:
            return f'screen: {error}'
    if 'thermal' in inputs:
        if 'screen' not in inputs and not given.get('structures'):
            return 'the thermal stage needs structures: the screen namespace, or given.structures'
        error = thermal.settings_error(_with_defaults(ThermalGapWorkChain, dict(inputs['thermal']), {}),
                                       sorted(given['structures']) if given.get('structures') else None)
        if error:
            return f'thermal: {error}'
    mace = inputs.get('mace', {})
    if ('refine' in mace or 'md_check' in mace) and not ('mlip_code' in mace and 'code' in mace):
        return 'mace.refine and mace.md_check need mace.code and mace.mlip_code (a capthermo-mlip code)'
    supercell = inputs['dataset']['supercell'].get_list() if 'supercell' in inputs.get('dataset', {}) else [2, 2, 2]
    for name in ('refine', 'md_check'):
        if name in mace:
            error = compositions_error(mace[name].get_dict().get('compositions', [0.5]), supercell)
            if error:
                return f'mace.{name}.compositions: {error}'
    return None


#: What the study's protocol entries may hold besides the dataset's (checked by the dataset builder); a code may be
#: a code node or its label (``capthermo-gnn@gpu``), options are the scheduler options of that stage's jobs and win
#: over the global ``options``.
STAGE_KEYS = {
    'gnn': {'code', 'hyperparameters', 'finetune_hyperparameters', 'options'},
    'mace': {'code', 'mlip_code', 'evaluate_code', 'hyperparameters', 'foundation_name', 'refine', 'md_check',
             'options', 'md_options'},
}


class CapthermoStudyWorkChain(ProtocolMixin, WorkChain):
    """Dataset -> fine-tuned MACE potential and two-stage band-gap GNN, every node in one graph."""

    _protocol_file = 'study'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(PhononInformedDatasetWorkChain, namespace='dataset',
                           namespace_options={'help': 'Inputs of the dataset stage.'})
        spec.input('gnn.code', valid_type=orm.AbstractCode, validator=code_validator('capthermo.gnn_train'),
                   help='A capthermo-gnn code (CPU or GPU computer).')
        spec.input('gnn.hyperparameters', valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   validator=validate_gnn_hyperparameters,
                   help='Hyper-parameters of the first (low-fidelity) GNN stage; see docs/gnn.md.')
        spec.input('gnn.finetune_hyperparameters', valid_type=orm.Dict, required=False,
                   validator=validate_gnn_hyperparameters,
                   help='Hyper-parameters of the second (high-fidelity) stage; default: those of the first stage.')
        spec.input('gnn.options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the GNN jobs.')
        spec.input('mace.code', valid_type=orm.AbstractCode, required=False,
                   validator=code_validator('capthermo.mace_finetune'),
                   help='A mace_run_train code; without it the MACE stage is skipped.')
        spec.input('mace.hyperparameters', valid_type=orm.Dict, required=False,
                   validator=validate_mace_hyperparameters,
                   help='FinetuneMaceCalcJob hyper-parameters (loss weights 1/150/10 by default).')
        spec.input('mace.foundation_model', valid_type=ModelData, required=False,
                   help='Foundation MACE model node to fine-tune (preferred for provenance).')
        spec.input('mace.foundation_name', valid_type=orm.Str, required=False,
                   validator=validate_foundation_name,
                   help='Named MACE foundation (e.g. medium-mpa-0) resolved on the computer; none: from scratch.')
        spec.input('mace.options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the MACE job.')
        spec.input('mace.mlip_code', valid_type=orm.AbstractCode, required=False,
                   validator=code_validator('capthermo.mlip_md'),
                   help='A capthermo-mlip code: runs the MD of mace.refine and mace.md_check.')
        spec.input('mace.refine', valid_type=orm.Dict, required=False, validator=validate_md_stage,
                   help='Active learning: rounds, compositions (x), temperatures (K), steps, frame_stride, '
                        'max_frame_force (eV/Å) ... (MdConfig keys), finetune_epochs. Frames of MD with the '
                        'potential are labelled by the low engine and the potential is trained again on the merged '
                        'set (from scratch, or continued from the last one for finetune_epochs).')
        spec.input('mace.md_check', valid_type=orm.Dict, required=False, validator=validate_md_stage,
                   help='MD stability check of the final potential: compositions, temperatures (K), steps, '
                        'stable_distance (Å), temperature_tolerance ... (MdConfig keys).')
        spec.input('mace.md_options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the MD jobs (default: those of the MACE job).')
        spec.input('mace.evaluate_code', valid_type=orm.AbstractCode, required=False,
                   validator=code_validator('capthermo.mace_evaluate'),
                   help='A capthermo-mace code: evaluates the final potential on the held-out validation set '
                        '(mace.evaluation, figures.mace_parity) beside the next stage.')
        spec.input('given.low', valid_type=DatasetData, required=False,
                   help='An existing low-fidelity dataset (energies, forces, stresses, gaps): no dataset stage.')
        spec.input('given.high', valid_type=DatasetData, required=False,
                   help='An existing high-fidelity gap dataset (with given.low).')
        spec.input('given.equilibrium', valid_type=DatasetData, required=False,
                   help='An existing set of equilibrium structures for the GNN (with given.low).')
        spec.input('given.mace_model', valid_type=ModelData, required=False,
                   help='An existing MACE potential: no MACE training, refinement or MD check.')
        spec.input('given.gnn_model', valid_type=ModelData, required=False,
                   help='An existing band-gap GNN (the one the thermal stage uses): no GNN training.')
        spec.input_namespace('given.structures', valid_type=orm.StructureData, dynamic=True, required=False,
                             help='Structures of the thermal stage by key (each with its x): no screen.')
        spec.expose_inputs(SolidSolutionScreenWorkChain, namespace='screen',
                           exclude=('model', 'prototype', 'parent', 'supercell'),
                           namespace_options={'required': False, 'populate_defaults': False,
                                              'help': 'The solid-solution screen with the final potential (the '
                                                      'prototype and supercell are the dataset\'s); none: no screen.'})
        spec.expose_inputs(ThermalGapWorkChain, namespace='thermal',
                           exclude=('structures', 'mace_model', 'gnn_model', 'gnn_code'),
                           namespace_options={'required': False, 'populate_defaults': False,
                                              'help': 'Thermal band gaps of the screen\'s lowest configurations '
                                                      '(or given.structures) with the potential and the GNN (its '
                                                      'code is gnn.code); none: no thermal stage.'})
        for namespace in ('screen', 'thermal'):
            spec.inputs[namespace].validator = None  # their checks need what the study supplies: validate_study
        spec.inputs.validator = validate_study
        spec.outline(
            if_(cls.should_run_dataset)(cls.run_dataset, cls.inspect_dataset),
            cls.run_models,
            cls.inspect_models,
            if_(cls.should_finetune_gnn)(cls.run_gnn_high, cls.inspect_gnn_high),
            while_(cls.should_refine)(
                cls.run_refine_md,
                cls.inspect_refine_md,
                cls.run_refine_labels,
                cls.inspect_refine_labels,
                cls.run_mace_refined,
                cls.inspect_mace_refined,
            ),
            if_(cls.should_check_md)(cls.run_md_check, cls.inspect_md_check),
            if_(cls.should_screen)(cls.run_screen, cls.inspect_screen),
            if_(cls.should_thermal)(cls.run_thermal, cls.inspect_thermal),
            if_(cls.should_evaluate_mace)(cls.run_mace_evaluation),
            cls.results,
        )
        spec.expose_outputs(PhononInformedDatasetWorkChain, namespace='dataset',
                            namespace_options={'required': False})
        for port in spec.outputs['dataset'].values():
            port.required = False  # the dataset stage is skipped when datasets are given
        spec.expose_outputs(SolidSolutionScreenWorkChain, namespace='screen', namespace_options={'required': False})
        spec.expose_outputs(ThermalGapWorkChain, namespace='thermal', namespace_options={'required': False})
        for namespace in ('screen', 'thermal'):
            for port in spec.outputs[namespace].values():
                port.required = False
        spec.output('table', valid_type=orm.Dict, required=False,
                    help='The paper\'s Table I: per composition x, Eg at each T with its error bar, ΔEg and the '
                         'relative change (eV), from the thermal stage.')
        spec.output('table_csv', valid_type=orm.SinglefileData, required=False, help='Table I as CSV.')
        spec.output_namespace('figures', valid_type=orm.SinglefileData, dynamic=True,
                              help='PNG figures: eg_vs_x, eg_vs_t, relative_change (Figure 7b-d), coupling_<key> '
                                   '(Figure 8a), phonons_<key> (Figure 6), gnn_parity_low / gnn_parity, '
                                   'mace_parity.')
        spec.output('gnn.model_low', valid_type=ModelData, required=False,
                    help='Band-gap GNN trained on the low-fidelity gaps (absent with given.gnn_model).')
        spec.output('gnn.metrics_low', valid_type=orm.Dict, required=False, help='Metrics per split of the first stage.')
        spec.output('gnn.model', valid_type=ModelData, required=False,
                    help='Band-gap GNN fine-tuned on the high-fidelity gaps (the model to use).')
        spec.output('gnn.metrics', valid_type=orm.Dict, required=False, help='Metrics of the second stage.')
        spec.output('mace.model', valid_type=ModelData, required=False, help='The fine-tuned MACE potential.')
        spec.output('mace.metrics', valid_type=orm.Dict, required=False, help='MACE errors on train/validation.')
        spec.output('mace.training_set', valid_type=DatasetData, required=False,
                    help='The set the final potential was trained on (low set less the validation set, plus '
                         'labelled MD frames).')
        spec.output('mace.validation_set', valid_type=DatasetData, required=False,
                    help='Held-out low-set structures that validate every MACE round (mace.metrics `valid`).')
        spec.output('mace.evaluation', valid_type=orm.Dict, required=False,
                    help='Errors of the final potential on mace.validation_set (energy, energy per atom, forces, '
                         'stress: MAE, RMSE, R²), from MaceEvaluateCalcJob (with mace.evaluate_code).')
        spec.output('mace.md_check', valid_type=orm.Dict, required=False,
                    help='MD stability of the final potential: stable, n_stable, per replica x, T (K), mean '
                         'temperature (K), closest pair and distance (Å).')
        spec.exit_code(410, 'ERROR_DATASET_FAILED', message='The dataset stage failed: {message}')
        spec.exit_code(420, 'ERROR_GNN_FAILED', message='GNN training failed: {message}')
        spec.exit_code(430, 'ERROR_MACE_FAILED', message='MACE fine-tuning failed: {message}')
        spec.exit_code(440, 'ERROR_MD_FAILED', message='An MD job failed: {message}')
        spec.exit_code(450, 'ERROR_REFINE_LABELS_FAILED', message='No MD frame could be labelled: {message}')
        spec.exit_code(460, 'ERROR_SCREEN_FAILED', message='The screen failed: {message}')
        spec.exit_code(470, 'ERROR_THERMAL_FAILED', message='The thermal-gap stage failed: {message}')
        spec.exit_code(480, 'ERROR_MACE_EVALUATION_FAILED', message='The evaluation of the potential failed: {message}')

    def _given(self) -> dict:
        return self.inputs.get('given', {})

    def should_run_dataset(self) -> bool:
        given = self._given()
        if 'low' in given:
            self.ctx.datasets = {k: given[k] for k in ('low', 'high', 'equilibrium') if k in given}
            return False
        if 'mace_model' in given and 'gnn_model' in given:
            self.ctx.datasets = {}
            return False
        return True

    def run_dataset(self):
        inputs = self.exposed_inputs(PhononInformedDatasetWorkChain, 'dataset')
        inputs['metadata'] = {'call_link_label': 'dataset'}
        return ToContext(dataset=self.submit(PhononInformedDatasetWorkChain, **inputs))

    def inspect_dataset(self):
        node = self.ctx.dataset
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_DATASET_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out_many(self.exposed_outputs(node, PhononInformedDatasetWorkChain, namespace='dataset'))
        self.ctx.datasets = {k: node.outputs[k] for k in ('low', 'high', 'equilibrium') if k in node.outputs}
        return None

    def _gnn_inputs(self, hyperparameters: orm.Dict, label: str) -> dict:
        inputs = {'code': self.inputs.gnn.code, 'hyperparameters': hyperparameters,
                  'metadata': {'call_link_label': label}}
        if 'options' in self.inputs.gnn:
            inputs['metadata']['options'] = self.inputs.gnn.options.get_dict()
        return inputs

    def run_models(self):
        outputs = self.ctx.datasets
        given = self._given()
        futures = {}
        if 'gnn_model' in given:
            self.ctx.gnn_model = given['gnn_model']
        else:
            gnn = self._gnn_inputs(self.inputs.gnn.hyperparameters, 'gnn_low')
            gnn['datasets'] = {'low': outputs['low']}
            if 'equilibrium' in outputs:
                gnn['datasets']['equilibrium'] = outputs['equilibrium']
            futures['gnn_low'] = self.submit(GnnTrainCalcJob, **gnn)
        if 'mace_model' in given:
            self.ctx.mace_model = given['mace_model']
        elif 'code' in self.inputs.mace:
            # One held-out set of thermal (phonon-informed) structures validates every MACE round: the training
            # sets of later rounds add MD frames, whose forces would otherwise dominate a random validation split.
            hyper = self.inputs.mace.get('hyperparameters', orm.Dict({})).get_dict()
            split = split_dataset(outputs['low'], orm.Dict({'valid_fraction': hyper.get('valid_fraction', 0.05),
                                                         'seed': hyper.get('seed', 123)}))
            self.ctx.mace_valid = split['valid']
            futures['mace'] = self._submit_mace(split['train'], 'mace')
        self.report(f'training {", ".join(futures) or "nothing (models given)"}')
        return ToContext(**futures)

    def _submit_mace(self, train: DatasetData, label: str, continue_from: ModelData | None = None,
                     epochs: int | None = None):
        """Train the potential on ``train``; with ``continue_from``, fine-tune that model for ``epochs``."""
        mace = {'code': self.inputs.mace.code, 'train': train, 'valid': self.ctx.mace_valid}
        for key in ('hyperparameters', 'foundation_model', 'foundation_name'):
            if key in self.inputs.mace:
                mace[key] = self.inputs.mace[key]
        if continue_from is not None:
            mace.pop('foundation_name', None)
            mace['foundation_model'] = continue_from
            hyper = mace.get('hyperparameters', orm.Dict({})).get_dict()
            mace['hyperparameters'] = orm.Dict({**hyper, 'max_num_epochs': epochs})
        if 'options' in self.inputs.mace:
            mace['metadata'] = {'options': self.inputs.mace.options.get_dict()}
        self.ctx.mace_train = train
        return self.submit(FinetuneMaceWorkChain, mace=mace, metadata={'call_link_label': label})

    def inspect_models(self):
        if 'gnn_low' in self.ctx:
            error = self._take_gnn(self.ctx.gnn_low, '_low')
            if error:
                return error
        if 'mace' in self.ctx:
            return self._take_mace(self.ctx.mace)
        return None

    def _take_mace(self, mace):
        if not mace.is_finished_ok:
            return self.exit_codes.ERROR_MACE_FAILED.format(message=f'[{mace.exit_status}] {mace.exit_message}')
        self.ctx.mace_model = mace.outputs.model
        self.ctx.mace_metrics = mace.outputs.metrics
        valid = mace.outputs.metrics.get_dict().get('validation', {})
        self.report(f'MACE potential {mace.outputs.model.pk}: validation force MAE {valid.get("mae_f", float("nan")):.4g}')
        return None

    # ------------------------------------------------------------------ MD stages
    def _md_settings(self, name: str) -> MdStageSettings:
        return MdStageSettings.model_validate(self.inputs.mace[name].get_dict())

    def _submit_md(self, settings: MdStageSettings, label: str, seed_offset: int) -> dict:
        """One MlipMdCalcJob per composition (they run side by side), each at every temperature."""
        p = self.inputs.dataset.prototype.get_dict()
        if 'md_parent' not in self.ctx:
            self.ctx.md_parent = build_parent(self.inputs.dataset.prototype, orm.Str(p['host']))
        start_settings = {
            'host': p['host'], 'guest': p['guest'], 'a_host': p['a_host'], 'a_guest': p['a_guest'],
            'supercell': self.inputs.dataset.supercell.get_list(), 'n_structures': len(settings.compositions),
            'seed': settings.seed + 40_000 + seed_offset, 'scheme': 'equilibrium', 'distribution': 'uniform',
            'composition_mode': 'grid', 'frequency_cutoff': 0.1, 'x_values': settings.compositions}
        starts = generate_structures(self.ctx.md_parent, orm.Dict(start_settings))
        options = self.inputs.mace.get('md_options', self.inputs.mace.get('options', orm.Dict({}))).get_dict()
        futures = {}
        for index, key in enumerate(sorted(starts)):
            inputs = {'code': self.inputs.mace.mlip_code, 'model': self.ctx.mace_model,
                      'structures': {'start': starts[key]},
                      'parameters': orm.Dict(settings.md_parameters(seed_offset + 1000 * index)),
                      'metadata': {'call_link_label': f'{label}_{index:02d}', 'options': options}}
            futures[f'{label}_{index:02d}'] = self.submit(MlipMdCalcJob, **inputs)
        return futures

    def _md_nodes(self, label: str) -> list:
        return [self.ctx[key] for key in sorted(k for k in self.ctx if isinstance(k, str) and k.startswith(label))]

    def should_refine(self) -> bool:
        if 'refine' not in self.inputs.mace or 'mace' not in self.ctx:
            return False
        self.ctx.setdefault('refine_round', 0)
        return self.ctx.refine_round < self._md_settings('refine').rounds

    def run_refine_md(self):
        settings = self._md_settings('refine')
        label = f'refine{self.ctx.refine_round}_md'
        self.report(f'refinement round {self.ctx.refine_round}: MD with the potential at x {settings.compositions}, '
                    f'T {settings.temperatures} K')
        return ToContext(**self._submit_md(settings, label, seed_offset=100 * self.ctx.refine_round))

    def inspect_refine_md(self):
        self.ctx.refine_frames = []
        for node in self._md_nodes(f'refine{self.ctx.refine_round}_md'):
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MD_FAILED.format(message=f'{node.pk} [{node.exit_status}] '
                                                                      f'{node.exit_message}')
            results = node.outputs.results.get_dict()
            broken = [r.get('broke') for r in results['replicas'] if r.get('broke')]
            self.report(f'MD {node.pk}: {results["n_stable"]}/{results["n_replicas"]} replicas stable'
                        + (f' (broke: {broken})' if broken else ''))
            if 'frames' in node.outputs:
                self.ctx.refine_frames.append(node.outputs.frames)
        if not self.ctx.refine_frames:
            return self.exit_codes.ERROR_MD_FAILED.format(message='no MD frame to label (set frame_stride)')
        return None

    def run_refine_labels(self):
        structures = {}
        for index, frames in enumerate(self.ctx.refine_frames):
            for key, node in frames_to_structures(frames).items():
                structures[f'md{index:02d}_{key}'] = node
        keys = sorted(structures)
        # As many jobs as the dataset stage runs at once, each at most its batch size.
        dataset = self.inputs.dataset
        batch_size = min(dataset.batch_size.value, -(-len(keys) // dataset.max_concurrent.value))
        futures = {}
        for start in range(0, len(keys), batch_size):
            batch = {key: structures[key] for key in keys[start:start + batch_size]}
            process, inputs = label_batch_inputs(dict(self.inputs.dataset.low), batch, 'low')
            label = f'refine{self.ctx.refine_round}_label_{start // batch_size:04d}'
            inputs['metadata'] = {'call_link_label': label}
            futures[label] = self.submit(process, **inputs)
        self.report(f'labelling {len(keys)} MD frames in {len(futures)} jobs')
        return ToContext(**futures)

    def inspect_refine_labels(self):
        labelled = [node.outputs.labels for node in self._md_nodes(f'refine{self.ctx.refine_round}_label_')
                    if node.is_finished_ok]
        if not labelled:
            return self.exit_codes.ERROR_REFINE_LABELS_FAILED.format(message='every labelling job failed')
        sources = {'a_train': self.ctx.mace_train}  # the low set's training part (or the last round's set)
        sources.update({f'b_frames_{index:04d}': node for index, node in enumerate(labelled)})
        self.ctx.refined_train = merge_datasets(
            orm.Dict({'subset': 'low+md', 'refine_round': self.ctx.refine_round}), **sources)
        self.report(f'training set {self.ctx.mace_train.n_structures} -> {self.ctx.refined_train.n_structures} '
                    'structures')
        return None

    def run_mace_refined(self):
        epochs = self._md_settings('refine').finetune_epochs
        previous = self.ctx.mace_model if epochs else None
        if previous is not None:
            self.report(f'fine-tuning potential {previous.pk} for {epochs} epochs on the enlarged set')
        return ToContext(mace_refined=self._submit_mace(self.ctx.refined_train, f'mace_refine{self.ctx.refine_round}',
                                                        continue_from=previous, epochs=epochs))

    def inspect_mace_refined(self):
        self.ctx.refine_round += 1
        return self._take_mace(self.ctx.mace_refined)

    def should_check_md(self) -> bool:
        return 'md_check' in self.inputs.mace and 'mace' in self.ctx

    def run_md_check(self):
        return ToContext(**self._submit_md(self._md_settings('md_check'), 'md_check', seed_offset=10_000))

    def inspect_md_check(self):
        nodes = self._md_nodes('md_check')
        for node in nodes:
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MD_FAILED.format(message=f'{node.pk} [{node.exit_status}] '
                                                                      f'{node.exit_message}')
        self.ctx.md_check = collect_md_results(**{f'job_{i:02d}': n.outputs.results for i, n in enumerate(nodes)})
        for r in self.ctx.md_check['replicas']:
            self.report(f'MD check x={r["x"]:.3f} T={r["temperature"]:.0f} K: stable={r.get("stable")}, mean T '
                        f'{r.get("mean_temperature", float("nan")):.0f} K, closest {r.get("closest_pair")} '
                        f'{r.get("min_distance", float("nan")):.2f} Å')
        return None

    def should_finetune_gnn(self):
        return 'high' in self.ctx.datasets and 'gnn_low' in self.ctx

    def run_gnn_high(self):
        hyperparameters = self.inputs.gnn.get('finetune_hyperparameters', self.inputs.gnn.hyperparameters)
        inputs = self._gnn_inputs(hyperparameters, 'gnn_high')
        inputs['datasets'] = {'high': self.ctx.datasets['high']}
        inputs['parent_model'] = self.ctx.gnn_low.outputs.model
        return ToContext(gnn_high=self.submit(GnnTrainCalcJob, **inputs))

    def inspect_gnn_high(self):
        return self._take_gnn(self.ctx.gnn_high, '')

    def _take_gnn(self, node, suffix: str):
        """Expose a GNN stage's model and metrics (``gnn.model<suffix>``); it becomes the model the thermal stage
        uses (the second stage's replaces the first's)."""
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_GNN_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out(f'gnn.model{suffix}', node.outputs.model)
        self.out(f'gnn.metrics{suffix}', node.outputs.metrics)
        self.ctx.gnn_model = node.outputs.model
        return None

    # ------------------------------------------------------------------ screen and thermal gaps
    def should_screen(self) -> bool:
        return 'screen' in self.inputs and not self._given().get('structures')

    def run_screen(self):
        inputs = self.exposed_inputs(SolidSolutionScreenWorkChain, 'screen')
        inputs.update(model=self.ctx.mace_model, prototype=self.inputs.dataset.prototype,
                      metadata={'call_link_label': 'screen'})
        if 'supercell' in self.inputs.dataset:
            inputs['supercell'] = self.inputs.dataset.supercell
        self.report(f'screen of x = {inputs["compositions"].get_list()} with MACE potential {self.ctx.mace_model.pk}')
        return ToContext(screen=self.submit(SolidSolutionScreenWorkChain, **inputs), **self._mace_evaluation())

    def inspect_screen(self):
        node = self.ctx.screen
        finite_failed = SolidSolutionScreenWorkChain.exit_codes.ERROR_FINITE_TEMPERATURE_FAILED.status
        if not node.is_finished_ok and not (node.exit_status == finite_failed and 'compositions' in node.outputs):
            return self.exit_codes.ERROR_SCREEN_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        if not node.is_finished_ok:  # ground states and 0 K phonons are there; the finite-T MD broke
            self.report(f'screen: {node.exit_message}; going on with the ground states')
        self.out_many(self.exposed_outputs(node, SolidSolutionScreenWorkChain, namespace='screen'))
        compositions = node.outputs.compositions
        self.ctx.structures = {key: compositions[key]['lowest'] for key in compositions}
        for key in compositions:
            for name, value in compositions[key].items():
                if isinstance(value, dict) and 'phonon_plot' in value:
                    self.out(f'figures.phonons_{key}', value['phonon_plot'])
        return None

    def should_thermal(self) -> bool:
        return 'thermal' in self.inputs

    def run_thermal(self):
        inputs = self.exposed_inputs(ThermalGapWorkChain, 'thermal')
        structures = self.ctx.get('structures') or dict(self._given()['structures'])
        inputs.update(structures=structures, mace_model=self.ctx.mace_model, gnn_model=self.ctx.gnn_model,
                      gnn_code=self.inputs.gnn.code, metadata={'call_link_label': 'thermal'})
        self.report(f'thermal gaps of {sorted(structures)} at {inputs["temperatures"].get_list()} K')
        return ToContext(thermal=self.submit(ThermalGapWorkChain, **inputs), **self._mace_evaluation())

    def inspect_thermal(self):
        node = self.ctx.thermal
        if 'table' not in node.outputs:
            return self.exit_codes.ERROR_THERMAL_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out_many(self.exposed_outputs(node, ThermalGapWorkChain, namespace='thermal'))
        report = table_one(node.outputs.table)
        self.out('table', report['table'])
        self.out('table_csv', report['csv'])
        for name in ('eg_vs_x', 'eg_vs_t', 'relative_change'):
            self.out(f'figures.{name}', report[name])
        for label, value in (node.outputs.coupling.items() if 'coupling' in node.outputs else []):
            if label.startswith('plot_'):
                self.out(f'figures.coupling_{label[5:]}', value)
        for row in report['table']['rows']:
            gaps = ', '.join(f'{t} K {g:.3f}±{e:.3f}' for t, g, e in zip(row['temperatures'], row['gap'], row['stderr']))
            self.report(f'x = {row["x"]:.3f}: Eg {gaps} eV')
        if node.exit_status == ThermalGapWorkChain.exit_codes.ERROR_REPLICAS_LOST.status:
            self.report(f'thermal: {node.exit_message}; Table I holds the gaps of the replicas that finished')
        elif not node.is_finished_ok:
            return self.exit_codes.ERROR_THERMAL_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        return None

    # ------------------------------------------------------------------ evaluation of the final potential
    def should_evaluate_mace(self) -> bool:
        return 'evaluate_code' in self.inputs.mace and 'mace_valid' in self.ctx and \
            not self.ctx.get('mace_evaluation_submitted')

    def _mace_evaluation(self) -> dict:
        """The evaluation of the final potential on the held-out set, submitted once, beside the next stage."""
        if not self.should_evaluate_mace():
            return {}
        self.ctx.mace_evaluation_submitted = True
        options = self.inputs.mace.get('md_options', self.inputs.mace.get('options', orm.Dict({}))).get_dict()
        return {'mace_evaluation': self.submit(
            MaceEvaluateCalcJob, code=self.inputs.mace.evaluate_code, model=self.ctx.mace_model,
            dataset=self.ctx.mace_valid, metadata={'call_link_label': 'mace_evaluation', 'options': options})}

    def run_mace_evaluation(self):
        return ToContext(**self._mace_evaluation())

    def results(self):
        for label, stage in (('gnn_parity_low', 'gnn_low'), ('gnn_parity', 'gnn_high')):
            if stage in self.ctx and 'parity_plot' in self.ctx[stage].outputs:
                self.out(f'figures.{label}', self.ctx[stage].outputs.parity_plot)
        if 'mace' in self.ctx:
            self.out('mace.model', self.ctx.mace_model)
            self.out('mace.metrics', self.ctx.mace_metrics)
            self.out('mace.training_set', self.ctx.mace_train)
            self.out('mace.validation_set', self.ctx.mace_valid)
        if 'md_check' in self.ctx:
            self.out('mace.md_check', self.ctx.md_check)
        if 'mace_evaluation' in self.ctx:
            node = self.ctx.mace_evaluation
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MACE_EVALUATION_FAILED.format(
                    message=f'{node.pk} [{node.exit_status}] {node.exit_message}')
            self.out('mace.evaluation', node.outputs.metrics)
            self.out('figures.mace_parity', mace_parity_plot(node.outputs.parity))
            forces = node.outputs.metrics.get_dict().get('forces', {})
            self.report(f'potential on {node.inputs.dataset.n_structures} held-out structures: force MAE '
                        f'{forces.get("mae", float("nan")):.4g} eV/Å')
        self.report('study finished')
        return None

    @classmethod
    def get_builder_from_protocol(cls, label_code: orm.AbstractCode, gnn_code: orm.AbstractCode,
                                  mace_code: orm.AbstractCode | None = None, protocol: str | None = None,
                                  overrides: dict | None = None, options: dict | None = None,
                                  mlip_code: orm.AbstractCode | None = None,
                                  evaluate_code: orm.AbstractCode | None = None):
        """Builder for the whole study from ``protocols/study.yaml`` (``demo``, ``fast``, ``paper``): each protocol
        names the dataset, screen and thermal protocols it runs (with overrides) and sets the GNN and MACE stages.

        ``overrides`` may hold ``dataset`` (overrides of the dataset protocol, e.g. ``low.vasp.potential_family``),
        ``gnn``, ``mace``, ``screen`` and ``thermal``. ``label_code`` labels both fidelities and the parents'
        phonons: a capthermo-label code for the local engine (``demo``, ``fast``) or a VASP code (``paper``). The MD stages
        of the protocol (``mace.refine``, ``mace.md_check``) are set when ``mlip_code`` (capthermo-mlip) is given;
        ``evaluate_code`` (capthermo-mace) adds the evaluation of the final potential on the held-out set.
        """
        inputs = cls.get_protocol_inputs(protocol, overrides)
        unknown = set(inputs) - {'dataset', 'gnn', 'mace', 'screen', 'thermal'}
        if unknown:
            raise ValueError(f'unknown inputs in protocol or overrides: {sorted(unknown)}')
        for name, allowed in STAGE_KEYS.items():
            unknown = set(inputs.get(name) or {}) - allowed
            if unknown:
                raise ValueError(f'unknown {name} inputs in protocol or overrides: {sorted(unknown)}; '
                                 f'known: {sorted(allowed)}')
        dataset_inputs = dict(inputs.get('dataset') or {})
        dataset = PhononInformedDatasetWorkChain.get_builder_from_protocol(
            label_code, protocol=dataset_inputs.pop('protocol', None), overrides=dataset_inputs, options=options)
        builder = cls.get_builder()
        builder.dataset = dataset._inputs(prune=True)
        gnn = inputs['gnn']
        builder.gnn.code = load_code(gnn.get('code', gnn_code))
        builder.gnn.hyperparameters = orm.Dict(gnn.get('hyperparameters', {}))
        if 'finetune_hyperparameters' in gnn:
            builder.gnn.finetune_hyperparameters = orm.Dict(gnn['finetune_hyperparameters'])
        set_options(builder.gnn, 'options', options, gnn.get('options'))
        mace = inputs['mace']
        mace_code = mace.get('code', mace_code)
        mlip_code = mace.get('mlip_code', mlip_code)
        if mace_code is not None:
            builder.mace.code = load_code(mace_code)
            builder.mace.hyperparameters = orm.Dict(mace.get('hyperparameters', {}))
            if 'foundation_name' in mace:
                builder.mace.foundation_name = orm.Str(mace['foundation_name'])
            if mace.get('evaluate_code', evaluate_code) is not None:
                builder.mace.evaluate_code = load_code(mace.get('evaluate_code', evaluate_code))
            set_options(builder.mace, 'options', options, mace.get('options'))
            if mlip_code is not None:
                builder.mace.mlip_code = load_code(mlip_code)
                for key in ('refine', 'md_check'):
                    if mace.get(key):
                        builder.mace[key] = orm.Dict(mace[key])
                set_options(builder.mace, 'md_options', options, mace.get('md_options'))
        for name, process in (('screen', SolidSolutionScreenWorkChain), ('thermal', ThermalGapWorkChain)):
            if inputs.get(name) is None:
                continue
            stage = dict(inputs[name])
            code_key = 'code' if name == 'screen' else 'mlip_code'
            code = stage.pop(code_key, mlip_code)
            if code is None:
                raise ValueError(f'the {name} stage of the protocol needs mlip_code (a capthermo-mlip code)')
            stage_inputs = process.get_protocol_inputs(stage.pop('protocol', None), stage)
            namespace = builder[name]
            for key, node in process.protocol_nodes(stage_inputs, exclude=('prototype', 'supercell')).items():
                namespace[key] = node  # the prototype and supercell are the dataset's
            namespace[code_key] = load_code(code)
            for key in ('options', 'phonon_options') if name == 'screen' else ('options', 'md_options'):
                set_options(namespace, key, options, stage_inputs.get(key))
        missing = unlanded_overrides(builder, overrides or {}, skip=('dataset.protocol', 'screen.protocol',
                                                                      'thermal.protocol'))
        if missing:
            raise ValueError(f'overrides that no input of the study takes: {missing}')
        return builder

