"""CalcJobs around MACE: fine-tune a (foundation) potential with ``mace_run_train``; evaluate a model on a dataset.

:class:`FinetuneMaceCalcJob` writes the training data of a :class:`~aiida_capthermo.data.dataset.DatasetData` as
extxyz (so the data that trained the model is uploaded with the job and sits in the provenance graph), a MACE YAML
config built from a validated hyper-parameter ``Dict`` (:class:`MaceHyperParameters`, unknown keys rejected) and runs
the ``mace_run_train`` code. The foundation model is either a ``ModelData`` input (copied into the sandbox), a named
MACE foundation model (``medium-mpa-0``...) that the remote side resolves from a local copy or downloads -- failing
fast with :attr:`ERROR_FOUNDATION_NOT_OBTAINABLE` when it can do neither -- or none (training from scratch).

:class:`MaceEvaluateCalcJob` runs ``capthermo-mace evaluate`` (and optionally ``capthermo-mace phonons``) on the
compute side.
"""

from __future__ import annotations

import io
import json
from typing import Literal

import numpy as np
import pydantic
import yaml
from aiida import engine, orm
from aiida.common import datastructures

from aiida_capthermo.calculations.base import CapthermoCalcJob, pydantic_error
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES

__all__ = ['FinetuneMaceCalcJob', 'MaceEvaluateCalcJob', 'MaceHyperParameters', 'build_mace_config',
           'RESOLVE_SCRIPT', 'DEFAULT_FOUNDATION']

#: Named foundation of the paper (MACE's name for ``mace-mpa-0-medium``).
DEFAULT_FOUNDATION = 'medium-mpa-0'
#: Experiment name given to MACE: the model files are ``<name>.model`` and ``<name>_compiled.model``.
MODEL_NAME = 'mace_model'
FOUNDATION_FILE = 'foundation.model'
CONFIG_FILE = 'config.yaml'
TRAIN_FILE = 'train.xyz'
VALID_FILE = 'valid.xyz'
TEST_FILE = 'test.xyz'
#: The copy of :mod:`aiida_capthermo.compute.mace_resolve` that runs on the compute side before ``mace_run_train``
#: (standard library, torch and mace only): resolves ``device: auto`` and a named foundation model in ``config.yaml``
#: and writes ``remote_resolution.json``.
RESOLVE_SCRIPT = 'resolve_remote.py'
RESOLVE_RESULT = 'remote_resolution.json'


class MaceHyperParameters(pydantic.BaseModel):
    """Hyper-parameters of a MACE (fine-)training run; unknown keys are rejected.

    Defaults follow the paper: loss weights energy 1 / forces 150 / stress 10 (MACE's ``stress`` loss),
    95 % train / 5 % validation split drawn with ``seed`` when no validation set is given.
    Architecture keys (``num_channels``, ``max_L``, ``num_interactions``, ``correlation``, ``r_max``,
    ``pair_repulsion``) are used only
    when training from scratch: a foundation model fixes its own architecture and cutoff.
    """

    model_config = pydantic.ConfigDict(extra='forbid')

    seed: int = 123
    valid_fraction: float = pydantic.Field(0.05, gt=0.0, lt=1.0, description='Validation fraction of the train set.')
    loss: Literal['stress', 'universal', 'weighted', 'ef', 'huber'] = 'stress'
    energy_weight: float = pydantic.Field(1.0, ge=0.0)
    forces_weight: float = pydantic.Field(150.0, ge=0.0)
    stress_weight: float = pydantic.Field(10.0, ge=0.0)
    max_num_epochs: int = pydantic.Field(50, ge=1)
    batch_size: int = pydantic.Field(4, ge=1)
    valid_batch_size: int | None = pydantic.Field(None, ge=1)
    lr: float = pydantic.Field(0.01, gt=0.0)
    weight_decay: float = pydantic.Field(5e-7, ge=0.0)
    scheduler_patience: int = pydantic.Field(5, ge=0)
    patience: int = pydantic.Field(2048, ge=1, description='Epochs of increasing validation loss before stopping.')
    eval_interval: int = pydantic.Field(1, ge=1)
    default_dtype: Literal['float64', 'float32'] = 'float64'
    device: Literal['auto', 'cpu', 'cuda'] = 'auto'
    E0s: str | None = pydantic.Field(None, description="'average', 'foundation', 'estimated' or a dict string; "
                                                       "default: 'foundation' when fine-tuning, else 'average'.")
    swa: bool = pydantic.Field(False, description='Stage two (SWA): switch loss weights for the last epochs.')
    start_swa: int | None = pydantic.Field(None, ge=0)
    swa_lr: float | None = pydantic.Field(None, gt=0.0)
    swa_energy_weight: float | None = pydantic.Field(None, ge=0.0)
    swa_forces_weight: float | None = pydantic.Field(None, ge=0.0)
    swa_stress_weight: float | None = pydantic.Field(None, ge=0.0)
    ema: bool = False
    ema_decay: float = pydantic.Field(0.99, gt=0.0, lt=1.0)
    error_table: Literal['PerAtomMAEstressvirials', 'PerAtomRMSEstressvirials', 'PerAtomMAE', 'PerAtomRMSE',
                         'TotalMAE', 'TotalRMSE'] = 'PerAtomMAEstressvirials'
    # architecture, from scratch only
    model: Literal['MACE', 'ScaleShiftMACE'] = 'MACE'
    num_channels: int = pydantic.Field(128, ge=1)
    max_L: int = pydantic.Field(1, ge=0, le=3)
    num_interactions: int = pydantic.Field(2, ge=1)
    correlation: int = pydantic.Field(3, ge=1)
    r_max: float = pydantic.Field(5.0, gt=0.0, description='Cutoff radius in Å (from the foundation when fine-tuning).')
    pair_repulsion: bool = pydantic.Field(False, description='Add a ZBL pair repulsion to the learned energy (from '
                                                             'scratch only): keeps MD from collapsing atoms.')
    # replay fine-tuning: needs MACE's pre-training data on the remote computer
    multiheads_finetuning: bool = pydantic.Field(False, description='Multi-head replay fine-tuning (needs '
                                                                    'pt_train_file).')
    pt_train_file: str | None = pydantic.Field(None, description='Remote path of the replay (pre-training) data.')
    num_samples_pt: int | None = pydantic.Field(None, ge=1)
    restart_latest: bool = pydantic.Field(False, description='Restart from the latest checkpoint in checkpoints/.')

    @pydantic.model_validator(mode='after')
    def _check_replay(self) -> MaceHyperParameters:
        if self.multiheads_finetuning and not self.pt_train_file:
            raise ValueError('multiheads_finetuning (replay) needs pt_train_file: the path of MACE pre-training data '
                             'on the remote computer; it cannot be downloaded by the job')
        if self.swa and self.start_swa is not None and self.start_swa >= self.max_num_epochs:
            raise ValueError(f'start_swa={self.start_swa} must be below max_num_epochs={self.max_num_epochs}')
        return self


def build_mace_config(params: MaceHyperParameters, *, foundation: str | None, has_valid: bool,
                      has_test: bool) -> dict:
    """Return the ``mace_run_train`` YAML config (a dict) for validated hyper-parameters.

    Parameters
    ----------
    params
        The validated hyper-parameters.
    foundation
        The file name of the foundation model in the working directory, or ``None`` to train from scratch.
    has_valid, has_test
        Whether ``valid.xyz`` / ``test.xyz`` are written next to ``train.xyz``.
    """
    p = params.model_dump()
    config = {
        'name': MODEL_NAME, 'seed': p['seed'], 'train_file': TRAIN_FILE,
        'energy_key': 'REF_energy', 'forces_key': 'REF_forces', 'stress_key': 'REF_stress', 'compute_stress': True,
        'loss': p['loss'], 'energy_weight': p['energy_weight'], 'forces_weight': p['forces_weight'],
        'stress_weight': p['stress_weight'], 'max_num_epochs': p['max_num_epochs'], 'batch_size': p['batch_size'],
        'valid_batch_size': p['valid_batch_size'] or p['batch_size'], 'lr': p['lr'],
        'weight_decay': p['weight_decay'], 'scheduler_patience': p['scheduler_patience'], 'patience': p['patience'],
        'eval_interval': p['eval_interval'], 'default_dtype': p['default_dtype'], 'device': p['device'],
        'error_table': p['error_table'], 'save_cpu': True, 'plot': False,
        'E0s': p['E0s'] or ('foundation' if foundation else 'average'),
    }
    if has_valid:
        config['valid_file'] = VALID_FILE
    else:
        config['valid_fraction'] = p['valid_fraction']
    if has_test:
        config['test_file'] = TEST_FILE
    if foundation:
        config['foundation_model'] = foundation
        config['multiheads_finetuning'] = p['multiheads_finetuning']
        if p['pt_train_file']:
            config['pt_train_file'] = p['pt_train_file']
        if p['num_samples_pt']:
            config['num_samples_pt'] = p['num_samples_pt']
    else:
        config.update({key: p[key] for key in ('model', 'num_channels', 'max_L', 'num_interactions', 'correlation',
                                               'r_max')})
        if p['pair_repulsion']:
            config['pair_repulsion'] = True
    if p['swa']:
        config['swa'] = True
        for key in ('start_swa', 'swa_lr', 'swa_energy_weight', 'swa_forces_weight', 'swa_stress_weight'):
            if p[key] is not None:
                config[key] = p[key]
    if p['ema']:
        config.update(ema=True, ema_decay=p['ema_decay'])
    if p['restart_latest']:
        config['restart_latest'] = True
    return config


def resolve_script_text() -> str:
    """Source of :mod:`aiida_capthermo.compute.mace_resolve`, which the job copies into its folder as
    :data:`RESOLVE_SCRIPT`: the remote python then needs no install of this package."""
    from importlib.resources import files

    return files('aiida_capthermo.compute').joinpath('mace_resolve.py').read_text(encoding='utf-8')


def validate_hyperparameters(value: orm.Dict | None, _) -> str | None:
    return None if value is None else pydantic_error(MaceHyperParameters, value.get_dict(), 'MACE hyper-parameters')


def _validate_training_set(value: DatasetData | None, _) -> str | None:
    if value is None:
        return None
    if value.n_structures == 0:
        return 'the training dataset has no structures'
    statistics = value.base.attributes.get('statistics', {})
    keys = {'energy': 'energy_per_atom', 'forces': 'forces', 'stress': 'stress'}  # names in the statistics
    lacking = {name: value.n_structures - statistics.get(key, {}).get('count', 0) for name, key in keys.items()}
    lacking = {name: count for name, count in lacking.items() if count}
    if lacking:
        counts = ', '.join(f'{name} on {count} of {value.n_structures}' for name, count in lacking.items())
        which = f'dataset {value.pk}' if value.is_stored else 'dataset'
        return (f'the training {which} lacks finite labels ({counts} structures): MACE with the stress loss needs '
                'energy, forces and stress on every structure; train on the labelled rows only')
    return None


#: Keys of FinetuneMaceCalcJob ``settings``.
FINETUNE_SETTINGS = ('foundation_search_paths', 'allow_download', 'download_timeout', 'python_executable')


def known_foundations() -> list[str] | None:
    """Names of the MACE foundation models this mace-torch can resolve (None when mace is not importable)."""
    try:
        from mace.calculators import foundations_models
    except ImportError:
        return None
    return sorted(foundations_models.mace_mp_urls)


def _validate_settings(value: orm.Dict | None, _) -> str | None:
    unknown = set(value.get_dict()) - set(FINETUNE_SETTINGS) if value is not None else set()
    return f'unknown settings {sorted(unknown)}; known: {list(FINETUNE_SETTINGS)}' if unknown else None


def foundation_name_error(name: str) -> str | None:
    """Why ``name`` is not a MACE foundation model name the remote side can resolve, or None."""
    known = known_foundations()
    if known is not None and name not in known:
        return f'unknown MACE foundation model {name!r}; known names: {known}'
    return None


def validate_foundation_name(value: orm.Str | None, _) -> str | None:
    return None if value is None else foundation_name_error(value.value)


def _validate_inputs(inputs: dict, _) -> str | None:
    if 'foundation_model' in inputs and 'foundation_name' in inputs:
        return 'give either foundation_model (a ModelData node) or foundation_name, not both'
    model = inputs.get('foundation_model')
    if model is not None and model.kind != 'mace':
        return f'foundation_model is a {model.kind!r} model, expected a MACE model (kind "mace")'
    return model.integrity_error() if model is not None else None


class FinetuneMaceCalcJob(CapthermoCalcJob):
    """Fine-tune a MACE foundation potential (or train one from scratch) on a dataset node with ``mace_run_train``."""

    _LOG_GLOB = 'logs/*_run-*[0-9].log'

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.input('metadata.options.parser_name', valid_type=str, default='capthermo.mace_finetune')
        spec.input('train', valid_type=DatasetData, validator=_validate_training_set,
                   help='Training set: energies (eV), forces (eV/Å) and stresses (eV/Å^3) of every structure.')
        spec.input('valid', valid_type=DatasetData, required=False, validator=_validate_training_set,
                   help='Validation set; when absent MACE splits off `valid_fraction` of the train set by seed.')
        spec.input('test', valid_type=DatasetData, required=False, validator=_validate_training_set,
                   help='Optional test set, evaluated by MACE after training.')
        spec.input('foundation_model', valid_type=ModelData, required=False,
                   help='Foundation MACE model node (kind "mace"); copied into the job: the preferred provenance.')
        spec.input('foundation_name', valid_type=orm.Str, required=False, validator=validate_foundation_name,
                   help=f'Name of a MACE foundation model resolved on the remote side (e.g. {DEFAULT_FOUNDATION!r}): '
                        'a local copy, else a download; the job fails with exit code 330 when neither works.')
        spec.input('hyperparameters', valid_type=orm.Dict, required=False, validator=validate_hyperparameters,
                   help='Hyper-parameters (see MaceHyperParameters); unknown keys are rejected; defaults: the paper.')
        spec.input('settings', valid_type=orm.Dict, required=False, validator=_validate_settings,
                   help='Job settings: `foundation_search_paths` (remote folders holding foundation model files), '
                        '`allow_download` (bool, default True), `download_timeout` (s, default 20), '
                        '`python_executable` (remote python with torch+mace; default: the code\'s shebang).')
        spec.input('parent_folder', valid_type=orm.RemoteData, required=False,
                   help='Remote folder of an earlier run: its checkpoints/ are copied and training restarts from '
                        'the latest checkpoint.')
        spec.inputs.validator = _validate_inputs

        spec.output('model', valid_type=ModelData, help='The trained MACE model (with the compiled model file).')
        spec.output('metrics', valid_type=orm.Dict,
                    help='Final errors on train/valid(/test) (eV, eV/Å, eV/Å^3; per atom where MACE reports it).')
        spec.output('training_curve', valid_type=orm.ArrayData,
                    help='Per evaluation: epoch, validation loss and errors; per epoch: mean training loss.')
        spec.output('log', valid_type=orm.SinglefileData, help='The MACE training log.')
        spec.default_output_node = 'metrics'

        spec.exit_code(EXIT_CODES['ERROR_NO_TRAINING_DATA'], 'ERROR_NO_TRAINING_DATA',
                       message='MACE found no training data: {error}')
        spec.exit_code(EXIT_CODES['ERROR_MISSING_LABELS'], 'ERROR_MISSING_LABELS',
                       message='The training data lack energy/forces/stress labels: {error}')
        spec.exit_code(EXIT_CODES['ERROR_MODEL_FILE_MISSING'], 'ERROR_MODEL_FILE_MISSING',
                       message='MACE finished without writing the model file `{filename}`.')
        spec.exit_code(EXIT_CODES['ERROR_LOG_MISSING'], 'ERROR_LOG_MISSING',
                       message='The MACE log or results file was not retrieved.')
        spec.exit_code(EXIT_CODES['ERROR_FOUNDATION_NOT_OBTAINABLE'], 'ERROR_FOUNDATION_NOT_OBTAINABLE',
                       message='The named foundation model could not be obtained on the remote computer: {error}')
        spec.exit_code(EXIT_CODES['ERROR_REMOTE_RESOLUTION_FAILED'], 'ERROR_REMOTE_RESOLUTION_FAILED',
                       message='Resolving the device/foundation model on the remote computer failed: {error}')
        spec.exit_code(EXIT_CODES['ERROR_NAN_LOSS'], 'ERROR_NAN_LOSS',
                       message='The validation loss became NaN: {error}')

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        """Write the extxyz data, the MACE config and (when needed) the remote resolution script."""
        params = MaceHyperParameters(**(self.inputs.hyperparameters.get_dict()
                                        if 'hyperparameters' in self.inputs else {}))
        settings = self.inputs.settings.get_dict() if 'settings' in self.inputs else {}
        unknown = set(settings) - set(FINETUNE_SETTINGS)
        if unknown:
            raise ValueError(f'unknown settings keys {sorted(unknown)}')

        for port, filename in (('train', TRAIN_FILE), ('valid', VALID_FILE), ('test', TEST_FILE)):
            if port in self.inputs:
                with folder.open(filename, 'w') as handle:
                    self.inputs[port].write_extxyz(handle)

        local_copy_list = []
        foundation = None
        if 'foundation_model' in self.inputs:
            node = self.inputs.foundation_model
            local_copy_list.append((node.uuid, node.main_file, FOUNDATION_FILE))
            foundation = FOUNDATION_FILE
        elif 'foundation_name' in self.inputs:
            foundation = self.inputs.foundation_name.value

        if 'parent_folder' in self.inputs:
            params = params.model_copy(update={'restart_latest': True})
        config = build_mace_config(params, foundation=foundation, has_valid='valid' in self.inputs,
                                   has_test='test' in self.inputs)
        with folder.open(CONFIG_FILE, 'w') as handle:
            yaml.safe_dump(config, handle, sort_keys=False)

        calcinfo = datastructures.CalcInfo()
        request = {'device': params.device}
        if 'foundation_name' in self.inputs:
            request.update(foundation_name=foundation, search_paths=list(settings.get('foundation_search_paths', [])),
                           allow_download=bool(settings.get('allow_download', True)),
                           download_timeout=float(settings.get('download_timeout', 20.0)))
        if params.device == 'auto' or 'foundation_name' in self.inputs:
            with folder.open(RESOLVE_SCRIPT, 'w') as handle:
                handle.write(resolve_script_text())
            python = settings.get('python_executable') or self._python_of_code()
            quoted = "'" + json.dumps(request).replace("'", "'\"'\"'") + "'"
            calcinfo.prepend_text = f'{python} {RESOLVE_SCRIPT} {CONFIG_FILE} {RESOLVE_RESULT} {quoted} || exit 0'

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ['--config', CONFIG_FILE]
        codeinfo.stdout_name = self.metadata.options.output_filename
        codeinfo.join_files = True

        calcinfo.codes_info = [codeinfo]
        calcinfo.local_copy_list = local_copy_list
        calcinfo.remote_copy_list = []
        if 'parent_folder' in self.inputs:
            parent = self.inputs.parent_folder
            calcinfo.remote_copy_list.append((parent.computer.uuid, f'{parent.get_remote_path()}/checkpoints',
                                              'checkpoints'))
        calcinfo.retrieve_list = [self.metadata.options.output_filename, RESOLVE_RESULT, f'{MODEL_NAME}.model',
                                  f'{MODEL_NAME}_compiled.model', f'{MODEL_NAME}_stagetwo.model',
                                  f'{MODEL_NAME}_stagetwo_compiled.model', self._LOG_GLOB, 'results/*_train.txt']
        return calcinfo

    def _python_of_code(self) -> str:
        """Remote python: the interpreter in the shebang of the ``mace_run_train`` script (pip console script)."""
        code = self.inputs.code
        try:
            executable = str(code.get_executable())
        except Exception:  # noqa: BLE001 -- codes without a fixed executable path
            return 'python3'
        return f'"$(head -n1 {executable} | sed -e \'s/^#!//\' -e \'s/ .*//\')"'


def _reference_force_constants(node: orm.ArrayData) -> dict:
    """Supercell matrix and full force constants from a ForceConstantsData or a plain ArrayData."""
    if 'supercell_matrix' in node.get_arraynames():
        return {'supercell_matrix': node.get_array('supercell_matrix'),
                'force_constants': node.get_array('force_constants')}
    force_constants = node.force_constants  # aiida-phonopy ForceConstantsData: matrix is an attribute
    matrix = np.asarray(node.supercell_matrix)
    n_supercell = int(round(abs(np.linalg.det(matrix)))) * len(node.get_unitcell().sites)
    if force_constants is None or force_constants.shape != (n_supercell, n_supercell, 3, 3):
        raise ValueError(f'reference force constants must be in full format [{n_supercell}, {n_supercell}, 3, 3]')
    return {'supercell_matrix': matrix, 'force_constants': force_constants}


class MaceEvaluateCalcJob(CapthermoCalcJob):
    """Evaluate a MACE model node on a dataset node (and optionally phonons vs reference force constants).

    Runs ``capthermo-mace evaluate`` (energy/forces/stress MAE, RMSE, R^2 and parity arrays) and, when
    ``phonon_structure`` and ``reference_force_constants`` are given, ``capthermo-mace phonons``
    (harmonic frequency MAE in THz).
    """

    _MODEL = 'model.model'
    _DATASET = 'dataset.npz'
    _PARITY = 'parity.npz'
    _PHONON_INPUT = 'phonon_input.npz'
    _PHONON_SUMMARY = 'phonon_summary.json'
    _PHONON_ARRAYS = 'phonon_frequencies.npz'

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.input('metadata.options.parser_name', valid_type=str, default='capthermo.mace_evaluate')
        spec.input('model', valid_type=ModelData, required=False, help='The MACE model node to evaluate.')
        spec.input('foundation_name', valid_type=orm.Str, required=False,
                   help='Instead of `model`: a named MACE foundation model resolved on the remote side.')
        spec.input('dataset', valid_type=DatasetData, help='Structures with reference energy/forces/stress labels.')
        spec.input('phonon_structure', valid_type=orm.StructureData, required=False,
                   help='Unit cell for the phonon check (Å).')
        spec.input('reference_force_constants', valid_type=orm.ArrayData, required=False,
                   help='Reference force constants of the supercell of `phonon_structure`: aiida-phonopy '
                        '`ForceConstantsData` (full format), or ArrayData with arrays `force_constants` '
                        '[n_s, n_s, 3, 3] (eV/Å^2) and `supercell_matrix` [3, 3].')
        spec.input('settings', valid_type=orm.Dict, required=False,
                   help='`device` (auto/cpu/cuda), `dtype` (float64/float32), `batch_size`, `mesh` ([3] q-mesh of '
                        'the phonon check), `displacement` (Å).')
        spec.inputs.validator = cls._validate

        spec.output('metrics', valid_type=orm.Dict, help='Energy (eV, eV/atom), forces (eV/Å), stress (eV/Å^3) '
                    'MAE, RMSE and R^2; frequency MAE (THz) when the phonon check ran.')
        spec.output('parity', valid_type=orm.ArrayData, help='Parity arrays: reference and predicted labels.')
        spec.output('phonon_frequencies', valid_type=orm.ArrayData, required=False,
                    help='Frequencies (THz) on the q-mesh: model and reference.')
        spec.default_output_node = 'metrics'

    @staticmethod
    def _validate(inputs: dict, _) -> str | None:
        if ('model' in inputs) == ('foundation_name' in inputs):
            return 'give exactly one of `model` and `foundation_name`'
        if ('phonon_structure' in inputs) != ('reference_force_constants' in inputs):
            return 'the phonon check needs both `phonon_structure` and `reference_force_constants`'
        return None

    def prepare_for_submission(self, folder) -> datastructures.CalcInfo:
        settings = self.inputs.settings.get_dict() if 'settings' in self.inputs else {}
        with folder.open(self._DATASET, 'wb') as handle:
            buffer = io.BytesIO()
            self.inputs.dataset.get_labelled_set().save(buffer)
            handle.write(buffer.getvalue())
        local_copy_list = []
        if 'model' in self.inputs:
            local_copy_list.append((self.inputs.model.uuid, self.inputs.model.main_file, self._MODEL))
            model_arg = self._MODEL
        else:
            model_arg = self.inputs.foundation_name.value
        common = ['--device', str(settings.get('device', 'auto')), '--dtype', str(settings.get('dtype', 'float64'))]
        evaluate = datastructures.CodeInfo()
        evaluate.code_uuid = self.inputs.code.uuid
        evaluate.cmdline_params = ['evaluate', model_arg, self._DATASET, '--parity', self._PARITY, '--summary',
                                   self._SUMMARY, '--batch-size', str(settings.get('batch_size', 8)), *common]
        evaluate.stdout_name = self.metadata.options.output_filename
        evaluate.join_files = True
        codes = [evaluate]
        retrieve = [self.metadata.options.output_filename, self._SUMMARY, self._PARITY]
        if 'phonon_structure' in self.inputs:
            fc_node = self.inputs.reference_force_constants
            ase_cell = self.inputs.phonon_structure.get_ase()
            with folder.open(self._PHONON_INPUT, 'wb') as handle:
                buffer = io.BytesIO()
                np.savez(buffer, numbers=ase_cell.numbers, positions=ase_cell.positions, cell=np.asarray(ase_cell.cell),
                         **_reference_force_constants(fc_node))
                handle.write(buffer.getvalue())
            phonons = datastructures.CodeInfo()
            phonons.code_uuid = self.inputs.code.uuid
            mesh = [str(int(m)) for m in settings.get('mesh', [4, 4, 4])]
            phonons.cmdline_params = ['phonons', model_arg, self._PHONON_INPUT, '--summary', self._PHONON_SUMMARY,
                                      '--arrays', self._PHONON_ARRAYS, '--mesh', *mesh, '--displacement',
                                      str(settings.get('displacement', 0.01)), *common]
            phonons.stdout_name = 'phonons.out'
            phonons.join_files = True
            codes.append(phonons)
            retrieve += ['phonons.out', self._PHONON_SUMMARY, self._PHONON_ARRAYS]
        calcinfo = datastructures.CalcInfo()
        calcinfo.codes_info = codes
        calcinfo.codes_run_mode = datastructures.CodeRunMode.SERIAL
        calcinfo.local_copy_list = local_copy_list
        calcinfo.retrieve_list = retrieve
        return calcinfo
