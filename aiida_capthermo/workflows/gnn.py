"""``GnnTwoStageWorkChain``: the papers' band-gap GNN in two stages, low fidelity then high fidelity.

Stage one trains ``GnnTrainCalcJob`` on the low-fidelity gaps (the displaced set and, when given, the undisplaced
equilibrium set); stage two fine-tunes every weight of that model on the high-fidelity gaps (the PBEsol -> HSEsol
step of the paper). Without a high-fidelity set the first model is the one to use. Both jobs are in the graph:
the second job's ``parent_model`` is the first job's ``model``.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_

from aiida_capthermo.calculations.base import code_validator, validate_options
from aiida_capthermo.calculations.gnn import GnnTrainCalcJob
from aiida_capthermo.calculations.gnn import validate_hyperparameters as validate_gnn_hyperparameters
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.workflows.protocols import ProtocolMixin, load_code, set_options

__all__ = ['GnnTwoStageWorkChain']


class GnnTwoStageWorkChain(ProtocolMixin, WorkChain):
    """Band-gap GNN: train on the low-fidelity gaps, then fine-tune on the high-fidelity ones."""

    _protocol_file = 'gnn'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('code', valid_type=orm.AbstractCode, validator=code_validator('capthermo.gnn_train'),
                   help='A capthermo-gnn code (CPU or GPU computer).')
        spec.input('low', valid_type=DatasetData,
                   help='Low-fidelity dataset with gaps (eV): the first stage trains on it.')
        spec.input('equilibrium', valid_type=DatasetData, required=False,
                   help='Undisplaced structures labelled like `low`, added to the first stage.')
        spec.input('high', valid_type=DatasetData, required=False,
                   help='High-fidelity gaps (eV): the second stage fine-tunes the first model on them; none: one '
                        'stage.')
        spec.input('hyperparameters', valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   validator=validate_gnn_hyperparameters,
                   help='Hyper-parameters of the first (low-fidelity) stage (GnnHyperparameters keys).')
        spec.input('finetune_hyperparameters', valid_type=orm.Dict, required=False,
                   validator=validate_gnn_hyperparameters,
                   help='Hyper-parameters of the second (high-fidelity) stage; default: those of the first stage.')
        spec.input('options', valid_type=orm.Dict, required=False, validator=validate_options,
                   help='Scheduler options of the GNN jobs.')
        spec.outline(
            cls.run_low,
            cls.inspect_low,
            if_(cls.has_high_fidelity)(cls.run_high, cls.inspect_high),
            cls.results,
        )
        spec.output('model_low', valid_type=ModelData, help='The GNN trained on the low-fidelity gaps.')
        spec.output('metrics_low', valid_type=orm.Dict, help='Metrics per split of the first stage.')
        spec.output('parity_plot_low', valid_type=orm.SinglefileData, required=False,
                    help='Parity plot of the first stage (PNG).')
        spec.output('model', valid_type=ModelData,
                    help='The model to use: the fine-tuned one, or the first when there is no high-fidelity set.')
        spec.output('metrics', valid_type=orm.Dict, help='Metrics per split of `model`.')
        spec.output('parity_plot', valid_type=orm.SinglefileData, required=False,
                    help='Parity plot of `model` (PNG).')
        spec.exit_code(420, 'ERROR_GNN_FAILED', message='GNN training ({stage}) failed: {message}')

    @classmethod
    def get_builder_from_protocol(cls, code: orm.AbstractCode, protocol: str | None = None,
                                  overrides: dict | None = None, options: dict | None = None, **datasets):
        """Builder from ``protocols/gnn.yaml`` (``demo``, ``fast``, ``paper``) merged with ``overrides``; ``code`` (or
        an override ``code``, a label) trains both stages, ``options`` are the scheduler options of the jobs (the
        protocol's own win); ``datasets`` may give ``low``, ``equilibrium`` and ``high``."""
        inputs = cls.get_protocol_inputs(protocol, overrides)
        builder = cls.get_builder()
        builder.code = load_code(inputs.pop('code', code))
        own_options = inputs.pop('options', None)
        for key, node in cls.protocol_nodes(inputs).items():
            builder[key] = node
        set_options(builder, 'options', options, own_options)
        for key, dataset in datasets.items():
            builder[key] = dataset
        return builder

    def _inputs(self, hyperparameters: orm.Dict, label: str, **datasets) -> dict:
        inputs = {'code': self.inputs.code, 'hyperparameters': hyperparameters, 'datasets': datasets,
                  'metadata': {'call_link_label': label}}
        if 'options' in self.inputs:
            inputs['metadata']['options'] = self.inputs.options.get_dict()
        return inputs

    def run_low(self):
        datasets = {'low': self.inputs.low}
        if 'equilibrium' in self.inputs:
            datasets['equilibrium'] = self.inputs.equilibrium
        return ToContext(gnn_low=self.submit(GnnTrainCalcJob, **self._inputs(self.inputs.hyperparameters,
                                                                              'gnn_low', **datasets)))

    def inspect_low(self):
        return self._take(self.ctx.gnn_low, 'low')

    def has_high_fidelity(self) -> bool:
        return 'high' in self.inputs

    def run_high(self):
        hyperparameters = self.inputs.get('finetune_hyperparameters', self.inputs.hyperparameters)
        inputs = self._inputs(hyperparameters, 'gnn_high', high=self.inputs.high)
        inputs['parent_model'] = self.ctx.gnn_low.outputs.model
        return ToContext(gnn_high=self.submit(GnnTrainCalcJob, **inputs))

    def inspect_high(self):
        return self._take(self.ctx.gnn_high, 'high')

    def _take(self, node, stage: str):
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_GNN_FAILED.format(stage=stage,
                                                           message=f'[{node.exit_status}] {node.exit_message}')
        metrics = node.outputs.metrics.get_dict()
        errors = ', '.join(f'{split} MAE {(metrics.get(split) or {}).get("mae")}' for split in ('validation', 'test'))
        self.report(f'GNN {stage} ({metrics.get("target")}, {metrics.get("units")}): {errors}')
        return None

    def results(self):
        low = self.ctx.gnn_low
        self.out('model_low', low.outputs.model)
        self.out('metrics_low', low.outputs.metrics)
        if 'parity_plot' in low.outputs:
            self.out('parity_plot_low', low.outputs.parity_plot)
        final = self.ctx.get('gnn_high', low)
        self.out('model', final.outputs.model)
        self.out('metrics', final.outputs.metrics)
        if 'parity_plot' in final.outputs:
            self.out('parity_plot', final.outputs.parity_plot)
