"""``CapthermoStudyWorkChain``: the papers' study as one provenance graph.

dataset (PhononInformedDatasetWorkChain) -> MACE potential (FinetuneMaceCalcJob on the low set, from a
foundation model node, a named foundation, or from scratch) and, in parallel, the band-gap GNN in two stages
(GnnTrainCalcJob on the low + equilibrium sets, then fine-tuned on the high-fidelity gaps from that model).
MACE runs in FinetuneMaceWorkChain, which restarts from checkpoints after a walltime kill and halves the batch
size after running out of memory.
The screening and thermal-gap stages join here as they are built.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_
from aiida.plugins import CalculationFactory

from aiida_capthermo.data.model import ModelData
from aiida_capthermo.workflows.dataset import PhononInformedDatasetWorkChain
from aiida_capthermo.workflows.mace import FinetuneMaceWorkChain
from aiida_capthermo.workflows.protocols import ProtocolMixin

__all__ = ['CapthermoStudyWorkChain']

GnnTrainCalcJob = CalculationFactory('capthermo.gnn_train')


class CapthermoStudyWorkChain(ProtocolMixin, WorkChain):
    """Dataset -> fine-tuned MACE potential and two-stage band-gap GNN, every node in one graph."""

    _protocol_file = 'study'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(PhononInformedDatasetWorkChain, namespace='dataset',
                           namespace_options={'help': 'Inputs of the dataset stage.'})
        spec.input('gnn.code', valid_type=orm.AbstractCode, help='A capthermo-gnn code (CPU or GPU computer).')
        spec.input('gnn.hyperparameters', valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   help='Hyper-parameters of the first (low-fidelity) GNN stage; see docs/gnn.md.')
        spec.input('gnn.finetune_hyperparameters', valid_type=orm.Dict, required=False,
                   help='Hyper-parameters of the second (high-fidelity) stage; default: those of the first stage.')
        spec.input('gnn.options', valid_type=orm.Dict, required=False, help='Scheduler options of the GNN jobs.')
        spec.input('mace.code', valid_type=orm.AbstractCode, required=False,
                   help='A mace_run_train code; without it the MACE stage is skipped.')
        spec.input('mace.hyperparameters', valid_type=orm.Dict, required=False,
                   help='FinetuneMaceCalcJob hyper-parameters (loss weights 1/150/10 by default).')
        spec.input('mace.foundation_model', valid_type=ModelData, required=False,
                   help='Foundation MACE model node to fine-tune (preferred for provenance).')
        spec.input('mace.foundation_name', valid_type=orm.Str, required=False,
                   help='Named MACE foundation (e.g. medium-mpa-0) resolved on the computer; none: from scratch.')
        spec.input('mace.options', valid_type=orm.Dict, required=False, help='Scheduler options of the MACE job.')
        spec.outline(
            cls.run_dataset,
            cls.inspect_dataset,
            cls.run_models,
            cls.inspect_models,
            if_(cls.should_finetune_gnn)(cls.run_gnn_high, cls.inspect_gnn_high),
            cls.results,
        )
        spec.expose_outputs(PhononInformedDatasetWorkChain, namespace='dataset')
        spec.output('gnn.model_low', valid_type=ModelData, help='Band-gap GNN trained on the low-fidelity gaps.')
        spec.output('gnn.metrics_low', valid_type=orm.Dict, help='Metrics per split of the first stage.')
        spec.output('gnn.model', valid_type=ModelData, required=False,
                    help='Band-gap GNN fine-tuned on the high-fidelity gaps (the model to use).')
        spec.output('gnn.metrics', valid_type=orm.Dict, required=False, help='Metrics of the second stage.')
        spec.output('mace.model', valid_type=ModelData, required=False, help='The fine-tuned MACE potential.')
        spec.output('mace.metrics', valid_type=orm.Dict, required=False, help='MACE errors on train/validation.')
        spec.exit_code(410, 'ERROR_DATASET_FAILED', message='The dataset stage failed: {message}')
        spec.exit_code(420, 'ERROR_GNN_FAILED', message='GNN training failed: {message}')
        spec.exit_code(430, 'ERROR_MACE_FAILED', message='MACE fine-tuning failed: {message}')

    def run_dataset(self):
        inputs = self.exposed_inputs(PhononInformedDatasetWorkChain, 'dataset')
        inputs['metadata'] = {'call_link_label': 'dataset'}
        return ToContext(dataset=self.submit(PhononInformedDatasetWorkChain, **inputs))

    def inspect_dataset(self):
        node = self.ctx.dataset
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_DATASET_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out_many(self.exposed_outputs(node, PhononInformedDatasetWorkChain, namespace='dataset'))
        return None

    def _gnn_inputs(self, hyperparameters: orm.Dict, label: str) -> dict:
        inputs = {'code': self.inputs.gnn.code, 'hyperparameters': hyperparameters,
                  'metadata': {'call_link_label': label}}
        if 'options' in self.inputs.gnn:
            inputs['metadata']['options'] = self.inputs.gnn.options.get_dict()
        return inputs

    def run_models(self):
        outputs = self.ctx.dataset.outputs
        futures = {}
        gnn = self._gnn_inputs(self.inputs.gnn.hyperparameters, 'gnn_low')
        gnn['datasets'] = {'low': outputs.low}
        if 'equilibrium' in outputs:
            gnn['datasets']['equilibrium'] = outputs.equilibrium
        futures['gnn_low'] = self.submit(GnnTrainCalcJob, **gnn)
        if 'code' in self.inputs.mace:
            mace = {'code': self.inputs.mace.code, 'train': outputs.low}
            for key in ('hyperparameters', 'foundation_model', 'foundation_name'):
                if key in self.inputs.mace:
                    mace[key] = self.inputs.mace[key]
            if 'options' in self.inputs.mace:
                mace['metadata'] = {'options': self.inputs.mace.options.get_dict()}
            futures['mace'] = self.submit(FinetuneMaceWorkChain, mace=mace, metadata={'call_link_label': 'mace'})
        self.report(f'training {", ".join(futures)}')
        return ToContext(**futures)

    def inspect_models(self):
        node = self.ctx.gnn_low
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_GNN_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out('gnn.model_low', node.outputs.model)
        self.out('gnn.metrics_low', node.outputs.metrics)
        if 'mace' in self.ctx:
            mace = self.ctx.mace
            if not mace.is_finished_ok:
                return self.exit_codes.ERROR_MACE_FAILED.format(message=f'[{mace.exit_status}] {mace.exit_message}')
            self.out('mace.model', mace.outputs.model)
            self.out('mace.metrics', mace.outputs.metrics)
        return None

    def should_finetune_gnn(self):
        return 'high' in self.ctx.dataset.outputs

    def run_gnn_high(self):
        hyperparameters = self.inputs.gnn.get('finetune_hyperparameters', self.inputs.gnn.hyperparameters)
        inputs = self._gnn_inputs(hyperparameters, 'gnn_high')
        inputs['datasets'] = {'high': self.ctx.dataset.outputs.high}
        inputs['parent_model'] = self.ctx.gnn_low.outputs.model
        return ToContext(gnn_high=self.submit(GnnTrainCalcJob, **inputs))

    def inspect_gnn_high(self):
        node = self.ctx.gnn_high
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_GNN_FAILED.format(message=f'[{node.exit_status}] {node.exit_message}')
        self.out('gnn.model', node.outputs.model)
        self.out('gnn.metrics', node.outputs.metrics)
        return None

    def results(self):
        self.report('study finished')

    @classmethod
    def get_builder_from_protocol(cls, label_code: orm.AbstractCode, gnn_code: orm.AbstractCode,
                                  mace_code: orm.AbstractCode | None = None, protocol: str | None = None,
                                  overrides: dict | None = None, options: dict | None = None):
        """Builder for the whole study: the dataset protocol of the same name plus the GNN/MACE settings.

        ``overrides`` may hold ``dataset`` (overrides of the dataset protocol), ``gnn`` and ``mace``.
        """
        overrides = dict(overrides or {})
        inputs = cls.get_protocol_inputs(protocol, {k: v for k, v in overrides.items() if k != 'dataset'})
        unknown = set(inputs) - {'gnn', 'mace'}
        if unknown:
            raise ValueError(f'unknown inputs in protocol or overrides: {sorted(unknown)}')
        dataset = PhononInformedDatasetWorkChain.get_builder_from_protocol(
            label_code, protocol=protocol, overrides=overrides.get('dataset'), options=options)
        builder = cls.get_builder()
        builder.dataset = dataset._inputs(prune=True)
        builder.gnn.code = gnn_code
        builder.gnn.hyperparameters = orm.Dict(inputs['gnn'].get('hyperparameters', {}))
        if 'finetune_hyperparameters' in inputs['gnn']:
            builder.gnn.finetune_hyperparameters = orm.Dict(inputs['gnn']['finetune_hyperparameters'])
        if mace_code is not None:
            builder.mace.code = mace_code
            builder.mace.hyperparameters = orm.Dict(inputs['mace'].get('hyperparameters', {}))
            for key in ('foundation_name',):
                if key in inputs['mace']:
                    builder.mace[key] = orm.Str(inputs['mace'][key])
        if options:
            builder.gnn.options = orm.Dict(options)
            if mace_code is not None:
                builder.mace.options = orm.Dict(options)
        return builder
