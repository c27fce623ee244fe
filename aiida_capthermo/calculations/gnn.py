"""CalcJobs of the band-gap GNN: ``GnnTrainCalcJob`` (train or fine-tune) and ``GnnPredictCalcJob`` (batched
prediction, optional explanation), both running the ``capthermo-gnn`` console script on any computer."""

from __future__ import annotations

import json

import numpy as np
from aiida import orm
from aiida.common import CalcInfo, CodeInfo

from aiida_capthermo.calculations.base import CapthermoCalcJob, pydantic_error
from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES

__all__ = ['GnnTrainCalcJob', 'GnnPredictCalcJob', 'labelled_set_from_trajectory']

#: Which dataset label each target needs.
TARGET_LABEL = {'gap': 'gap', 'vbm': 'vbm', 'energy_per_atom': 'energy', 'hydrostatic_stress': 'stress'}
MODEL_DIR = 'model'
PARENT_DIR = 'parent_model'


def validate_hyperparameters(value: orm.Dict, _) -> str | None:
    from aiida_capthermo.ml.gnn.config import GnnHyperparameters

    return pydantic_error(GnnHyperparameters, value.get_dict(), 'GNN hyper-parameters')


def validate_gnn_model(value: ModelData, _) -> str | None:
    if value is not None and value.kind != 'gnn':
        return f'the model must be a GNN (kind "gnn"), got kind {value.kind!r}'
    return value.integrity_error() if value is not None else None


def validate_members(value: dict | None, _) -> str | None:
    """Every member of an ensemble is a GNN."""
    for key, node in (value or {}).items():
        error = validate_gnn_model(node, None)
        if error:
            return f'member {key}: {error}'
    return None


def validate_train_inputs(inputs: dict, _) -> str | None:
    datasets = list(inputs.get('datasets', {}).values())
    if 'dataset' in inputs:
        datasets.append(inputs['dataset'])
    if not datasets:
        return 'give the training data as `dataset` or in the `datasets` namespace'
    target = inputs['hyperparameters'].get('target', 'gap') if 'hyperparameters' in inputs else 'gap'
    label = TARGET_LABEL.get(target)
    if label is not None and not any(label in (node.base.attributes.get('labels', None) or [label])
                                     for node in datasets):
        return f'no input dataset carries the `{label}` label that target {target!r} needs'
    return None


def _write_dataset(folder, name: str, labelled: LabelledSet) -> None:
    with folder.open(name, 'wb') as handle:
        labelled.save(handle)


def _write_model(folder, model: ModelData, dirname: str) -> None:
    subfolder = folder.get_subfolder(dirname, create=True)
    for name in model.base.attributes.get('files'):
        with subfolder.open(name, 'wb') as handle:
            handle.write(model.get_bytes(name))


def labelled_set_from_trajectory(trajectory: orm.TrajectoryData) -> LabelledSet:
    """Unlabelled set of the frames of a trajectory (positions Å, cells Å; all frames share the symbols)."""
    from ase.data import atomic_numbers

    positions = trajectory.get_positions()  # [n_steps, n_atoms, 3]
    cells = trajectory.get_cells()  # [n_steps, 3, 3]
    if cells is None:
        raise ValueError('the trajectory has no cells; a periodic graph needs them')
    numbers = np.array([atomic_numbers[s] for s in trajectory.symbols])
    n_steps, n_atoms = positions.shape[:2]
    return LabelledSet(numbers=np.tile(numbers, n_steps), positions=positions.reshape(-1, 3), cells=cells,
                       n_atoms=np.full(n_steps, n_atoms), origin=np.full(n_steps, 'trajectory'))


class GnnTrainCalcJob(CapthermoCalcJob):
    """Train the band-gap GNN (or fine-tune all weights of ``parent_model``, the second stage) with ``capthermo-gnn``.

    The datasets are concatenated in the order ``dataset``, then ``datasets`` by sorted key; the seeded split,
    normalisation and all metrics are recorded in the outputs. With ``metadata.options.max_wallclock_seconds``
    set, the script stops cleanly before it with a checkpoint (exit 400, output ``checkpoint``); pass that
    node as the ``checkpoint`` input of a new job with the same inputs to continue.
    """

    _HYPERPARAMETERS = 'hyperparameters.json'
    _RESTART = 'restart.pt'
    _CHECKPOINT = 'checkpoint.pt'
    _OUTPUT_FILES = ('model.pt', 'model.json', 'metrics.json', 'parity.npz', 'parity.png', 'parity.pdf',
                     'training_curve.json')

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('dataset', valid_type=DatasetData, required=False,
                   help='Training data: a labelled set (structures Å, gaps/VBM eV, energies eV, stress eV/Å^3).')
        spec.input_namespace('datasets', valid_type=DatasetData, dynamic=True, required=False,
                             help='Several training datasets, concatenated by sorted key (after `dataset`).')
        spec.input('hyperparameters', valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   validator=validate_hyperparameters,
                   help='GnnHyperparameters (target, cutoff Å, conv_layers, hidden_channels, dropout, pooling, '
                        'learning_rate, batch_size, max_epochs, patience, split, seed, ...); unknown keys rejected.')
        spec.input('parent_model', valid_type=ModelData, required=False, validator=validate_gnn_model,
                   help='First-stage GNN to fine-tune (all weights) on these data: the two-stage PBEsol -> HSEsol '
                        'path.')
        spec.input('checkpoint', valid_type=orm.SinglefileData, required=False,
                   help='checkpoint.pt of a run stopped at its walltime, to continue from.')
        spec.inputs.validator = validate_train_inputs
        spec.inputs['metadata']['options']['parser_name'].default = 'capthermo.gnn_train'

        spec.output('model', valid_type=ModelData,
                    help='The best-validation GNN: model.pt (state_dict) + model.json; attributes architecture, '
                         'hyperparameters, normalisation, target, sha256, parent_model_uuid.')
        spec.output('metrics', valid_type=orm.Dict,
                    help='MAE, RMSE (target units) and R^2 per split, best epoch, structure counts.')
        spec.output('parity', valid_type=orm.ArrayData,
                    help='Reference vs predicted values per split ({split}_true, {split}_pred, {split}_index).')
        spec.output('training_curve', valid_type=orm.ArrayData,
                    help='Per epoch: train and validation MSE (normalised), validation MAE (target units), seconds.')
        spec.output('parity_plot', valid_type=orm.SinglefileData, required=False, help='The parity plot (PNG).')
        spec.output('parity_plot_pdf', valid_type=orm.SinglefileData, required=False,
                    help='The parity plot as vector PDF.')
        spec.output('checkpoint', valid_type=orm.SinglefileData, required=False,
                    help='Restart checkpoint, output when the job stopped at its walltime.')
        spec.exit_code(EXIT_CODES['ERROR_NO_TRAINING_DATA'], 'ERROR_NO_TRAINING_DATA',
                       message='No usable training data: {error}')
        spec.exit_code(EXIT_CODES['ERROR_INVALID_INPUT'], 'ERROR_INVALID_INPUT',
                       message='The console script rejected its input: {error}')
        spec.exit_code(EXIT_CODES['ERROR_NAN_LOSS'], 'ERROR_NAN_LOSS',
                       message='The loss became NaN or infinite (try a lower learning rate): {error}')

    def prepare_for_submission(self, folder):
        arguments = []
        names = []
        if 'dataset' in self.inputs:
            names.append(('dataset.npz', self.inputs.dataset))
        for key in sorted(self.inputs.get('datasets', {})):
            names.append((f'dataset_{key}.npz', self.inputs.datasets[key]))
        for name, node in names:
            _write_dataset(folder, name, node.get_labelled_set())
            arguments += ['--dataset', name]
        with folder.open(self._HYPERPARAMETERS, 'w') as handle:
            json.dump(self.inputs.hyperparameters.get_dict(), handle, indent=2)
        arguments += ['--hyperparameters', self._HYPERPARAMETERS, '--output-dir', '.']
        if 'parent_model' in self.inputs:
            _write_model(folder, self.inputs.parent_model, PARENT_DIR)
            arguments += ['--parent-model', PARENT_DIR]
        if 'checkpoint' in self.inputs:
            with folder.open(self._RESTART, 'wb') as handle:
                handle.write(self.inputs.checkpoint.get_content('rb'))
            arguments += ['--restart', self._RESTART]
        walltime = self.inputs.metadata.options.get('max_wallclock_seconds')
        if walltime:
            # leave room for start-up, saving the outputs and the scheduler's own accounting
            arguments += ['--time-limit', str(max(0.0, 0.9 * walltime - 30))]

        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ['--summary', self._SUMMARY, 'train', *arguments]
        codeinfo.stdout_name = self.metadata.options.output_filename

        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [*self._OUTPUT_FILES, self._SUMMARY, self.metadata.options.output_filename]
        calcinfo.retrieve_temporary_list = [self._CHECKPOINT]
        return calcinfo


class GnnPredictCalcJob(CapthermoCalcJob):
    """Predict the model's target (the band gap) for structures, a trajectory or a dataset, in batches.

    Give exactly one of ``dataset``, ``structures`` or ``trajectory``. With ``explain`` true the job also runs
    GNNExplainer and outputs the edge importance per bond type.
    """

    _STRUCTURES = 'structures.npz'
    _PREDICTIONS = 'predictions.npz'
    _EXPLANATION = 'explanation.json'
    _EXPLAIN_SUMMARY = 'explain_summary.json'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('model', valid_type=ModelData, validator=validate_gnn_model,
                   help='The trained GNN (output `model` of a GnnTrainCalcJob).')
        spec.input_namespace('members', valid_type=ModelData, dynamic=True, required=False,
                             validator=validate_members,
                             help='Other members of an ensemble of GNNs with the same target (sorted by key): '
                                  '`values` is then the mean of `model` and the members, and `members` holds each '
                                  'one\'s predictions (`model` first).')
        spec.input('dataset', valid_type=DatasetData, required=False, help='Structures as a dataset node.')
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True, required=False,
                             help='Structures keyed by label; predictions come in sorted key order.')
        spec.input('trajectory', valid_type=orm.TrajectoryData, required=False,
                   help='A trajectory (positions Å, cells Å); one prediction per frame.')
        spec.input('batch_size', valid_type=orm.Int, default=lambda: orm.Int(256),
                   help='Structures per inference batch.')
        spec.input('explain', valid_type=orm.Bool, default=lambda: orm.Bool(False),
                   help='Also compute the GNNExplainer edge importance per bond type.')
        spec.input('explain_epochs', valid_type=orm.Int, default=lambda: orm.Int(100),
                   help='GNNExplainer optimisation epochs per structure.')
        spec.inputs.validator = cls.validate_inputs
        spec.inputs['metadata']['options']['parser_name'].default = 'capthermo.gnn_predict'
        spec.output('predictions', valid_type=orm.ArrayData,
                    help='Array `values` [n_structures] in the model target units (eV for gaps; with `members` the '
                         'mean of the models), `members` [n_models, n_structures] with members, plus `x` and '
                         '`temperature` (K) of the structures; attributes target, units, model_sha256.')
        spec.output('bond_importance', valid_type=orm.Dict, required=False,
                    help='Edge importance per bond type: mean, std, count, share.')
        spec.output('bond_importance_plot', valid_type=orm.SinglefileData, required=False,
                    help='Bar chart of the importance per bond type (PNG).')
        spec.exit_code(EXIT_CODES['ERROR_INVALID_INPUT'], 'ERROR_INVALID_INPUT',
                       message='The console script rejected its input: {error}')

    @staticmethod
    def validate_inputs(inputs, _):
        given = [name for name in ('dataset', 'structures', 'trajectory') if inputs.get(name)]
        if len(given) != 1:
            return f'give exactly one of `dataset`, `structures`, `trajectory` (got {given or "none"})'
        if inputs.get('batch_size') is not None and inputs['batch_size'].value < 1:
            return 'batch_size must be positive'
        target = inputs['model'].base.attributes.get('target', None) if 'model' in inputs else None
        for key, member in (inputs.get('members') or {}).items():
            if member.base.attributes.get('target', None) != target:
                return (f'member {key} predicts {member.base.attributes.get("target", None)!r}, the model '
                        f'{target!r}: an ensemble averages one target')
        return None

    def _labelled_set(self) -> LabelledSet:
        from aiida_capthermo.data.structures import labelled_set_from_structures

        if 'dataset' in self.inputs:
            return self.inputs.dataset.get_labelled_set()
        if 'trajectory' in self.inputs:
            return labelled_set_from_trajectory(self.inputs.trajectory)
        return labelled_set_from_structures(self.inputs.structures)

    def prepare_for_submission(self, folder):
        _write_dataset(folder, self._STRUCTURES, self._labelled_set())
        _write_model(folder, self.inputs.model, MODEL_DIR)
        members = []
        for key in sorted(self.inputs.get('members', {})):
            _write_model(folder, self.inputs.members[key], f'{MODEL_DIR}_{key}')
            members += ['--member', f'{MODEL_DIR}_{key}']
        predict = CodeInfo()
        predict.code_uuid = self.inputs.code.uuid
        predict.cmdline_params = ['--summary', self._SUMMARY, 'predict', '--model', MODEL_DIR, *members, '--dataset',
                                  self._STRUCTURES, '--batch-size', str(self.inputs.batch_size.value),
                                  '--output', self._PREDICTIONS]
        predict.stdout_name = self.metadata.options.output_filename
        calcinfo = CalcInfo()
        calcinfo.codes_info = [predict]
        calcinfo.retrieve_list = [self._PREDICTIONS, self._SUMMARY, self.metadata.options.output_filename]
        if self.inputs.explain.value:
            explain = CodeInfo()
            explain.code_uuid = self.inputs.code.uuid
            explain.cmdline_params = ['--summary', self._EXPLAIN_SUMMARY, 'explain', '--model', MODEL_DIR,
                                      '--dataset', self._STRUCTURES, '--epochs', str(self.inputs.explain_epochs.value),
                                      '--output', self._EXPLANATION]
            explain.stdout_name = 'explain.out'
            calcinfo.codes_info.append(explain)
            calcinfo.retrieve_list += [self._EXPLANATION, 'explanation.png', self._EXPLAIN_SUMMARY]
        return calcinfo
