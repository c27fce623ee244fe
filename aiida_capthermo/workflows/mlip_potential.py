"""``MlipPotentialWorkChain``: a MACE potential from a labelled set, refined with its own MD, checked and evaluated.

1. **Train.** One held-out set of the labelled (phonon-informed) structures is split off once and validates every
   round; ``FinetuneMaceWorkChain`` (restarts after walltime and out-of-memory failures) trains on the rest, from a
   foundation model node, a named foundation, or from scratch.
2. **Refine** (``refine``, optional): rounds of active learning. Langevin MD with the current potential from Vegard
   cells at the given compositions and temperatures (``MlipMdCalcJob``, the batched engine); its frames become
   structures (calcfunction), are labelled by the teacher's low engine (``BatchLabelWorkChain``) and merged into the
   training set; the potential is trained again (from scratch, or continued from the last one for
   ``finetune_epochs``).
3. **Check** (optional, side by side): MD of mixed cells with the final potential (``md_check``, a stability verdict
   per replica) and the errors of the final potential on the held-out set (``evaluate_code``).

A low validation error does not make a potential that MD can run with: that is why the MD stages exist.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, append_, calcfunction, if_, while_
from aiida.plugins import CalculationFactory
from pydantic import Field

from aiida_capthermo.calculations.base import code_validator, pydantic_error, validate_options
from aiida_capthermo.calculations.mace import validate_foundation_name
from aiida_capthermo.calculations.mace import validate_hyperparameters as validate_mace_hyperparameters
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.ml.settings import MdConfig
from aiida_capthermo.workflows.batch_label import BatchLabelWorkChain
from aiida_capthermo.workflows.dataset import build_parent, generate_structures
from aiida_capthermo.workflows.engines import engine_namespace
from aiida_capthermo.workflows.functions import frames_to_structures, merge_datasets, split_dataset
from aiida_capthermo.workflows.mace import FinetuneMaceWorkChain
from aiida_capthermo.workflows.protocols import ProtocolMixin, load_code, set_options
from aiida_capthermo.workflows.report import mace_parity_plot
from aiida_capthermo.workflows.validation import compositions_error, supplied_by_parent

__all__ = ['MdStageSettings', 'MlipPotentialWorkChain']

MlipMdCalcJob = CalculationFactory('capthermo.mlip_md')
MaceEvaluateCalcJob = CalculationFactory('capthermo.mace_evaluate')


class MdStageSettings(MdConfig):
    """Settings of an MD stage of the potential (``refine`` or ``md_check``): ``MdConfig`` (what each
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


def validate_inputs(inputs, ports) -> str | None:
    """The MD stages need the MD code, compositions the supercell holds, and a labelling engine to refine."""
    if supplied_by_parent(ports, 'prototype', 'supercell', 'engine'):
        return None  # the study checks them with the dataset's
    if ('refine' in inputs or 'md_check' in inputs) and not ('mlip_code' in inputs and 'prototype' in inputs):
        return 'refine and md_check need mlip_code (a capthermo-mlip code) and the prototype of their start cells'
    if 'refine' in inputs and 'code' not in inputs.get('engine', {}):
        return 'refine labels MD frames: it needs the labelling engine (engine.code)'
    supercell = inputs['supercell'].get_list() if 'supercell' in inputs else [2, 2, 2]
    for name in ('refine', 'md_check'):
        if name in inputs:
            error = compositions_error(inputs[name].get_dict().get('compositions', [0.5]), supercell)
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


class MlipPotentialWorkChain(ProtocolMixin, WorkChain):
    """Train a MACE potential, refine it with labelled frames of its own MD, check it by MD and evaluate it."""

    _protocol_file = 'mlip_potential'

    @classmethod
    def get_builder_from_protocol(cls, code: orm.AbstractCode, mlip_code: orm.AbstractCode | None = None,
                                  evaluate_code: orm.AbstractCode | None = None, protocol: str | None = None,
                                  overrides: dict | None = None, options: dict | None = None, **inputs):
        """Builder from ``protocols/mlip_potential.yaml`` (``demo``, ``fast``, ``paper``) merged with
        ``overrides``. The MD stages of the protocol (``refine``, ``md_check``) are set when ``mlip_code``
        (capthermo-mlip) is given, ``evaluate_code`` (capthermo-mace) adds the evaluation on the held-out set;
        each code may also be an override (a code label). ``options`` are the scheduler options of every job (the
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
                   help='Active learning: rounds, compositions (x), temperatures (K), steps, frame_stride, '
                        'max_frame_force (eV/Å) ... (MdConfig keys), finetune_epochs. Frames of MD with the '
                        'potential are labelled by `engine` and the potential is trained again on the merged '
                        'set (from scratch, or continued from the last one for finetune_epochs).')
        spec.input('md_check', valid_type=orm.Dict, required=False, validator=validate_md_stage,
                   help='MD stability check of the final potential: compositions, temperatures (K), steps, '
                        'stable_distance (Å), temperature_tolerance ... (MdConfig keys).')
        spec.input('md_options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the MD and evaluation jobs (default: those of the MACE job).')
        spec.input('evaluate_code', valid_type=orm.AbstractCode, required=False,
                   validator=code_validator('capthermo.mace_evaluate'),
                   help='A capthermo-mace code: evaluates the final potential on the held-out set.')
        spec.input('prototype', valid_type=orm.Dict, required=False,
                   help='The solid solution (species a, b, host, guest; a_host, a_guest Å) of the MD start cells.')
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
                cls.run_training,
                cls.inspect_training,
            ),
            if_(cls.should_check)(cls.run_checks, cls.inspect_checks),
            cls.results,
        )
        spec.output('model', valid_type=ModelData, help='The final MACE potential.')
        spec.output('metrics', valid_type=orm.Dict, help='MACE errors of the final round on train/validation.')
        spec.output('training_set', valid_type=DatasetData,
                    help='The set the final potential was trained on (the dataset less the validation set, plus '
                         'labelled MD frames).')
        spec.output('validation_set', valid_type=DatasetData,
                    help='Held-out structures of the dataset that validate every round (metrics `validation`).')
        spec.output('evaluation', valid_type=orm.Dict, required=False,
                    help='Errors of the final potential on validation_set (energy, energy per atom, forces, '
                         'stress: MAE, RMSE, R²), from MaceEvaluateCalcJob (with evaluate_code).')
        spec.output('parity_plot', valid_type=orm.SinglefileData, required=False,
                    help='Parity plot of the evaluation (PNG).')
        spec.output('md_check', valid_type=orm.Dict, required=False,
                    help='MD stability of the final potential: stable, n_stable, per replica x, T (K), mean '
                         'temperature (K), closest pair and distance (Å).')
        spec.exit_code(430, 'ERROR_MACE_FAILED', message='MACE training failed: {message}')
        spec.exit_code(440, 'ERROR_MD_FAILED', message='An MD job failed: {message}')
        spec.exit_code(450, 'ERROR_REFINE_LABELS_FAILED', message='No MD frame could be labelled: {message}')
        spec.exit_code(480, 'ERROR_MACE_EVALUATION_FAILED', message='The evaluation of the potential failed: {message}')

    def _md_settings(self, name: str) -> MdStageSettings:
        return MdStageSettings.model_validate(self.inputs[name].get_dict())

    def _md_options(self) -> dict:
        return self.inputs.get('md_options', self.inputs.get('options', orm.Dict({}))).get_dict()

    # ------------------------------------------------------------------ training
    def setup(self):
        """Split off the held-out set once: later rounds add MD frames to the training set, whose forces would
        otherwise dominate a random validation split."""
        hyper = self.inputs.get('hyperparameters', orm.Dict({})).get_dict()
        split = split_dataset(self.inputs.dataset, orm.Dict({'valid_fraction': hyper.get('valid_fraction', 0.05),
                                                             'seed': hyper.get('seed', 123)}))
        self.ctx.train, self.ctx.valid = split['train'], split['valid']
        self.ctx.round = 0

    def run_training(self):
        """Train on the current training set; in a refinement round with ``finetune_epochs``, continue from the
        previous potential."""
        inputs = {'code': self.inputs.code, 'train': self.ctx.train, 'valid': self.ctx.valid}
        for key in ('hyperparameters', 'foundation_model', 'foundation_name'):
            if key in self.inputs:
                inputs[key] = self.inputs[key]
        epochs = self._md_settings('refine').finetune_epochs if self.ctx.round else None
        if epochs:
            self.report(f'fine-tuning potential {self.ctx.model.pk} for {epochs} epochs on the enlarged set')
            inputs.pop('foundation_name', None)
            inputs['foundation_model'] = self.ctx.model
            hyper = inputs.get('hyperparameters', orm.Dict({})).get_dict()
            inputs['hyperparameters'] = orm.Dict({**hyper, 'max_num_epochs': epochs})
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
        if 'md_parent' not in self.ctx:
            self.ctx.md_parent = build_parent(self.inputs.prototype, orm.Str(p['host']))
        start_settings = {
            'host': p['host'], 'guest': p['guest'], 'a_host': p['a_host'], 'a_guest': p['a_guest'],
            'supercell': self.inputs.supercell.get_list(), 'n_structures': len(settings.compositions),
            'seed': settings.seed + 40_000 + seed_offset, 'scheme': 'equilibrium', 'distribution': 'uniform',
            'composition_mode': 'grid', 'frequency_cutoff': 0.1, 'x_values': settings.compositions}
        starts = generate_structures(self.ctx.md_parent, orm.Dict(start_settings))
        for index, key in enumerate(sorted(starts)):
            inputs = {'code': self.inputs.mlip_code, 'model': self.ctx.model, 'structures': {'start': starts[key]},
                      'parameters': orm.Dict(settings.md_parameters(seed_offset + 1000 * index)),
                      'metadata': {'call_link_label': f'{label}_{index:02d}', 'options': self._md_options()}}
            self.to_context(**{context: append_(self.submit(MlipMdCalcJob, **inputs))})

    def should_refine(self) -> bool:
        return 'refine' in self.inputs and self.ctx.round < self._md_settings('refine').rounds

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
        batch_size = min(self.inputs.batch_size.value, -(-len(structures) // concurrent))
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
        previous = self.ctx.train
        self.ctx.train = merge_datasets(orm.Dict({'subset': 'low+md', 'refine_round': self.ctx.round}),
                                        training_set=previous, md_frames=node.outputs.labels)
        self.report(f'training set {previous.n_structures} -> {self.ctx.train.n_structures} structures')
        self.ctx.round += 1
        return None

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
                return self.exit_codes.ERROR_MACE_EVALUATION_FAILED.format(
                    message=f'{node.pk} [{node.exit_status}] {node.exit_message}')
            self.out('evaluation', node.outputs.metrics)
            self.out('parity_plot', mace_parity_plot(node.outputs.parity))
            forces = node.outputs.metrics.get_dict().get('forces', {})
            self.report(f'potential on {node.inputs.dataset.n_structures} held-out structures: force MAE '
                        f'{forces.get("mae", float("nan")):.4g} eV/Å')
        return None

    def results(self):
        self.out('model', self.ctx.model)
        self.out('metrics', self.ctx.metrics)
        self.out('training_set', self.ctx.train)
        self.out('validation_set', self.ctx.valid)
