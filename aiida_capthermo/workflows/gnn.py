"""``GnnTwoStageWorkChain``: the papers' band-gap GNN in two stages, low fidelity then high fidelity.

Stage one trains ``GnnTrainCalcJob`` on the low-fidelity gaps (the displaced set and, when given, the undisplaced
equilibrium set); stage two fine-tunes every weight of that model on the high-fidelity gaps (the PBEsol -> HSEsol
step of the paper). Without a high-fidelity set the first model is the one to use. Both jobs are in the graph:
the second job's ``parent_model`` is the first job's ``model``.

MD frames (``md_frames``: frames of MD with the potential, labelled by the low engine, as the potential's
active learning makes them) teach the model the thermal disorder it will be averaged over: their low-fidelity gaps
join stage one at no extra cost, and ``md_high_labels`` of them, spread over their (x, T), are labelled by the high
engine (``high_engine``, a budget of teacher labels) and join stage two. The thermal stage's own frames, on which
the validation stage checks the model, are never among them.

With ``members`` > 1 the stage trains an ensemble: member i exactly as the model but with the hyper-parameters' seed
plus i (another split, initial weights and batch order), in both stages, its second stage from its own first. The
thermal and validation stages predict with every member; the spread of the models' corrected gaps is a term of the
error budget (:mod:`aiida_capthermo.core.error_budget`).
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_

from aiida_capthermo.calculations.base import code_validator, validate_options
from aiida_capthermo.calculations.gnn import GnnTrainCalcJob
from aiida_capthermo.calculations.gnn import validate_hyperparameters as validate_gnn_hyperparameters
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.batch_label import BatchLabelWorkChain, balanced_batch_size
from aiida_capthermo.workflows.engines import engine_namespace
from aiida_capthermo.workflows.functions import frames_to_structures, spread_subset
from aiida_capthermo.workflows.protocols import ProtocolMixin, load_code, set_options
from aiida_capthermo.workflows.validation import supplied_by_parent

__all__ = ['GnnTwoStageWorkChain', 'member_label']


#: Most models of an ensemble (each one is a training job per stage).
MAX_MEMBERS = 16


def member_label(index: int) -> str:
    """Output key of ensemble member ``index`` (1, 2, ...; the ``model`` output is member 0)."""
    return f'member_{index:02d}'


@calcfunction
def collect_member_metrics(seeds: orm.List, **metrics: orm.Dict) -> orm.Dict:
    """Per model of the ensemble (``model`` first, then the members by key) its seed and its validation and test
    MAE; their mean and standard deviation over the models."""
    import numpy as np

    rows = []
    for seed, key in zip(seeds.get_list(), sorted(metrics, key=lambda k: (k != 'model', k))):
        values = metrics[key].get_dict()
        rows.append({'model': key, 'seed': seed, 'units': values.get('units'),
                     **{f'{split}_mae': (values.get(split) or {}).get('mae') for split in ('validation', 'test')}})
    summary = {}
    for split in ('validation', 'test'):
        found = [row[f'{split}_mae'] for row in rows if row[f'{split}_mae'] is not None]
        summary[f'{split}_mae_mean'] = float(np.mean(found)) if found else None
        summary[f'{split}_mae_std'] = float(np.std(found, ddof=1)) if len(found) > 1 else None
    return orm.Dict({'models': rows, **summary})


def validate_inputs(inputs, ports) -> str | None:
    """High-fidelity labels of MD frames need the high engine. (Without md_frames or a high-fidelity set, the
    protocol's md_high_labels has nothing to label and is not used.)"""
    if 'members' in inputs and not 1 <= inputs['members'].value <= MAX_MEMBERS:
        return f'members must be between 1 and {MAX_MEMBERS}, got {inputs["members"].value}'
    n = inputs['md_high_labels'].value if 'md_high_labels' in inputs else 0
    if n < 0:
        return f'md_high_labels must be >= 0, got {n}'
    if n and 'md_frames' in inputs and 'high' in inputs and not supplied_by_parent(ports, 'high_engine') \
            and 'code' not in inputs.get('high_engine', {}):
        return 'md_high_labels labels MD frames with the high-fidelity engine: give high_engine.code'
    return None


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
        spec.input('md_frames', valid_type=DatasetData, required=False,
                   help='MD frames labelled by the low engine (gap eV; x, temperature K), e.g. the potential\'s '
                        'active-learning frames: their gaps join the first stage.')
        spec.input('md_high_labels', valid_type=orm.Int, default=lambda: orm.Int(0),
                   help='How many of md_frames, spread over their (x, T), the high engine labels for the second '
                        'stage (the budget of teacher labels on thermal frames); 0: none.')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0),
                   help='Seed of the choice of the md_high_labels frames.')
        spec.input('members', valid_type=orm.Int, default=lambda: orm.Int(1),
                   help='Models of the ensemble: member i is trained like `model` with the hyper-parameters\' seed '
                        'plus i (another split, initialisation and batch order) in both stages, its second stage '
                        'from its own first. The spread of their gaps is a model error of the thermal gaps.')
        spec.input('batch_size', valid_type=orm.Int, default=lambda: orm.Int(20),
                   help='At most this many MD frames per high-fidelity labelling job.')
        spec.input('max_concurrent', valid_type=orm.Int, default=lambda: orm.Int(4),
                   help='High-fidelity labelling jobs running at the same time.')
        engine_namespace(spec, 'high_engine', required=False,
                         help='The high-fidelity labelling engine (the dataset\'s high engine) for md_high_labels.')
        spec.inputs.validator = validate_inputs
        spec.outline(
            if_(cls.should_label_md)(cls.label_md, cls.inspect_md_labels),
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
        spec.output_namespace('members', valid_type=ModelData, dynamic=True, required=False,
                              help='The other members of the ensemble (member_01, ...; `model` is member 0), as '
                                   '`model`: from the last stage.')
        spec.output('member_metrics', valid_type=orm.Dict, required=False,
                    help='With members: per model (`model` first) its seed and validation and test MAE (target '
                         'units) of the last stage, and their mean and spread.')
        spec.output('md_high', valid_type=DatasetData, required=False,
                    help='The high-fidelity gaps (eV) of the md_high_labels MD frames the second stage trained on.')
        spec.exit_code(EXIT_CODES['ERROR_MD_LABELLING_FAILED'], 'ERROR_MD_LABELLING_FAILED',
                       message='The high-fidelity labelling of the MD frames failed: {message}')
        spec.exit_code(EXIT_CODES['ERROR_GNN_FAILED'], 'ERROR_GNN_FAILED',
                       message='GNN training ({stage}) failed: {message}')

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

    @staticmethod
    def _job_label(stage: str, index: int) -> str:
        """Context key and call link label of member ``index``'s training job of ``stage`` (low, high)."""
        return f'gnn_{stage}' if index == 0 else f'gnn_{stage}_{member_label(index)}'

    def _submit_members(self, stage: str, hyperparameters: orm.Dict, datasets: dict, parent: str | None = None):
        """One training job per member of the ensemble: member i with the seed plus i (member 0 as given), its
        parent model (second stage) member i's of stage ``parent``."""
        jobs = {}
        for index in range(self.inputs.members.value):
            hyper = hyperparameters
            if index:
                values = hyperparameters.get_dict()
                hyper = orm.Dict({**values, 'seed': int(values.get('seed', 0)) + index})
            label = self._job_label(stage, index)
            inputs = self._inputs(hyper, label, **datasets)
            if parent is not None:
                inputs['parent_model'] = self.ctx[self._job_label(parent, index)].outputs.model
            jobs[label] = self.submit(GnnTrainCalcJob, **inputs)
        return ToContext(**jobs)

    def _member_nodes(self, stage: str) -> list:
        return [self.ctx[self._job_label(stage, index)] for index in range(self.inputs.members.value)]

    def should_label_md(self) -> bool:
        return (self.inputs.md_high_labels.value > 0 and 'high' in self.inputs and 'md_frames' in self.inputs
                and 'code' in self.inputs.get('high_engine', {}))

    def label_md(self):
        """Label ``md_high_labels`` MD frames, spread over their (x, T), with the high engine."""
        subset = spread_subset(self.inputs.md_frames, orm.Dict({'n': self.inputs.md_high_labels.value,
                                                                'seed': self.inputs.seed.value}))
        concurrent = self.inputs.max_concurrent.value
        batch_size = balanced_batch_size(subset.n_structures, self.inputs.batch_size.value, concurrent)
        self.report(f'labelling {subset.n_structures} MD frames with the high-fidelity engine')
        return ToContext(md_labels=self.submit(
            BatchLabelWorkChain, structures=frames_to_structures(subset), engine=dict(self.inputs.high_engine),
            fidelity=orm.Str('high'), batch_size=orm.Int(batch_size), max_concurrent=orm.Int(concurrent),
            attributes=orm.Dict({'subset': 'md', 'fidelity': 'high'}), metadata={'call_link_label': 'label_md_high'}))

    def inspect_md_labels(self):
        node = self.ctx.md_labels
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_MD_LABELLING_FAILED.format(message=f'[{node.exit_status}] '
                                                                             f'{node.exit_message}')
        self.out('md_high', node.outputs.labels)
        return None

    def run_low(self):
        datasets = {'low': self.inputs.low}
        if 'equilibrium' in self.inputs:
            datasets['equilibrium'] = self.inputs.equilibrium
        if 'md_frames' in self.inputs:
            datasets['md'] = self.inputs.md_frames
        return self._submit_members('low', self.inputs.hyperparameters, datasets)

    def inspect_low(self):
        return self._take_members('low')

    def has_high_fidelity(self) -> bool:
        return 'high' in self.inputs

    def run_high(self):
        hyperparameters = self.inputs.get('finetune_hyperparameters', self.inputs.hyperparameters)
        datasets = {'high': self.inputs.high}
        if 'md_labels' in self.ctx:
            datasets['md'] = self.ctx.md_labels.outputs.labels
        return self._submit_members('high', hyperparameters, datasets, parent='low')

    def inspect_high(self):
        return self._take_members('high')

    def _take_members(self, stage: str):
        for index, node in enumerate(self._member_nodes(stage)):
            error = self._take(node, stage if index == 0 else f'{stage}, {member_label(index)}')
            if error:
                return error
        return None

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
        if self.inputs.members.value > 1:
            nodes = self._member_nodes('high' if 'gnn_high' in self.ctx else 'low')
            for index, node in enumerate(nodes[1:], start=1):
                self.out(f'members.{member_label(index)}', node.outputs.model)
            seeds = orm.List([int(node.inputs.hyperparameters.get('seed', 0)) for node in nodes])
            self.out('member_metrics', collect_member_metrics(seeds, **{
                'model' if index == 0 else member_label(index): node.outputs.metrics
                for index, node in enumerate(nodes)}))
