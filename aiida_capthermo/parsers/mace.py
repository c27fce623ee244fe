"""Parsers of the MACE CalcJobs; the reading of MACE's files is done by plain functions, unit-testable on text.

Files are read from ``self.retrieved`` only, so parsing is the same for a remote cluster. MACE writes:
``results/<name>_run-<seed>_train.txt`` (one JSON object per line: ``mode='opt'`` per batch with the training loss,
``mode='eval'`` per evaluation with the validation loss and errors in eV, eV/Å, eV/Å^3), ``logs/<name>_run-<seed>.log``
(the log, whose last error table gives the final train/valid/test errors in meV units) and ``<name>.model`` /
``<name>_compiled.model``.
"""

from __future__ import annotations

import json
import math
import re
import tempfile

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_capthermo.calculations.mace import MODEL_NAME, RESOLVE_RESULT
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.parsers.base import SummaryParser

__all__ = ['FinetuneMaceParser', 'MaceEvaluateParser', 'parse_results_lines', 'parse_error_table',
           'parse_architecture', 'training_curve_arrays', 'detect_failure']

#: Columns of MACE's error tables -> (metric key, factor to eV-based units).
_TABLE_COLUMNS = {
    'MAE E / meV / atom': ('mae_e_per_atom', 1e-3), 'RMSE E / meV / atom': ('rmse_e_per_atom', 1e-3),
    'MAE E / meV': ('mae_e', 1e-3), 'RMSE E / meV': ('rmse_e', 1e-3),
    'MAE F / meV / A': ('mae_f', 1e-3), 'RMSE F / meV / A': ('rmse_f', 1e-3),
    'relative F MAE %': ('rel_mae_f_percent', 1.0), 'relative F RMSE %': ('rel_rmse_f_percent', 1.0),
    'MAE Stress (Virials) / meV / A (A^3)': ('mae_stress', 1e-3),
    'RMSE Stress (Virials) / meV / A (A^3)': ('rmse_stress', 1e-3),
    'MAE Stress / meV / A^3': ('mae_stress', 1e-3), 'RMSE Stress / meV / A^3': ('rmse_stress', 1e-3),
}
_EVAL_KEYS = ('loss', 'mae_e', 'mae_e_per_atom', 'rmse_e', 'rmse_e_per_atom', 'mae_f', 'rmse_f', 'mae_stress',
              'rmse_stress')


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def parse_results_lines(text: str) -> tuple[list[dict], list[dict]]:
    """Split MACE's ``results/*_train.txt`` into evaluation records and optimisation (per batch) records.

    Returns
    -------
    (evals, opts): evals have ``epoch`` (None for the evaluation before training) and errors in eV, eV/Å,
    eV/Å^3; opts have ``epoch`` and the batch ``loss``.
    """
    evals, opts = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        record = json.loads(line)
        (evals if record.get('mode') == 'eval' else opts).append(record)
    return evals, opts


def training_curve_arrays(evals: list[dict], opts: list[dict]) -> dict[str, np.ndarray]:
    """Arrays of the training curve: validation errors per evaluation, mean training loss per epoch.

    ``eval_epoch`` is -1 for the evaluation before the first epoch.
    """
    arrays = {'eval_epoch': np.array([-1 if r.get('epoch') is None else r['epoch'] for r in evals], dtype=int)}
    for key in _EVAL_KEYS:
        arrays[f'valid_{key}'] = np.array([_float(r.get(key)) for r in evals], dtype=float)
    epochs = sorted({int(r['epoch']) for r in opts if r.get('epoch') is not None})
    arrays['train_epoch'] = np.array(epochs, dtype=int)
    arrays['train_loss'] = np.array([np.mean([_float(r['loss']) for r in opts if r.get('epoch') == e])
                                     for e in epochs], dtype=float)
    return arrays


def parse_error_table(log: str) -> dict[str, dict[str, float]]:
    """Parse the last error table of a MACE log into ``{row name: {metric: value}}`` in eV-based units.

    Row names are MACE's ``config_type`` (``train_Default``, ``valid_Default``, ``test_...``); the metric keys are
    ``mae_e_per_atom`` (eV/atom), ``mae_f`` (eV/Å), ``mae_stress`` (eV/Å^3) and their RMSE/total counterparts,
    whichever the chosen ``error_table`` prints.
    """
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if 'Error-table on' in line]
    if not starts:
        return {}
    rows = [line for line in lines[starts[-1] + 1:] if line.startswith('|')]
    if not rows:
        return {}
    header = [cell.strip() for cell in rows[0].strip('|').split('|')]
    table = {}
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.strip('|').split('|')]
        if len(cells) != len(header):
            continue
        entry = {}
        for name, cell in zip(header[1:], cells[1:]):
            key, factor = _TABLE_COLUMNS.get(name, (re.sub(r'\W+', '_', name).strip('_').lower(), 1.0))
            entry[key] = _float(cell) * factor
        table[cells[0]] = entry
    return table


def parse_architecture(log: str) -> dict:
    """Architecture of the trained model as MACE logs it: channels, max_L, layers, correlation, r_max (Å)."""
    arch = {}
    if match := re.search(r'Message passing with (\d+) channels and max_L=(\d+) \(([^)]*)\)', log):
        arch.update(num_channels=int(match[1]), max_L=int(match[2]), hidden_irreps=match[3])
    elif match := re.search(r'Message passing with hidden irreps ([0-9x+eo]+)', log):  # fine-tuning logs this form
        irreps = [(int(multiplicity), int(degree)) for multiplicity, degree in re.findall(r'(\d+)x(\d+)[eo]', match[1])]
        arch.update(num_channels=irreps[0][0], max_L=max(degree for _, degree in irreps), hidden_irreps=match[1])
    if match := re.search(r'(\d+) layers, each with correlation order: (\d+)', log):
        arch.update(num_interactions=int(match[1]), correlation=int(match[2]))
    if match := re.search(r'Radial cutoff: ([0-9.]+) A', log):
        arch['r_max'] = float(match[1])
    if match := re.search(r'Average number of neighbors: ([0-9.]+)', log):
        arch['avg_num_neighbors'] = float(match[1])
    return arch


def detect_failure(text: str) -> tuple[str, str] | None:
    """Classify a failure from MACE's log and standard output: ``(kind, detail)`` or None.

    Kinds are those of :data:`~aiida_capthermo.compute.summary.ERROR_KINDS`: ``out_of_memory``, ``missing_labels``,
    ``no_data``, ``exception`` (a traceback; its last line is the detail).
    """
    if match := re.search(r'(CUDA out of memory[^\n]*|OutOfMemoryError[^\n]*|DefaultCPUAllocator: can\'t allocate'
                          r'[^\n]*)', text):
        return 'out_of_memory', match[1]
    if match := re.search(r"(None of '[^\n]*found[^\n]*)", text):
        return 'no_data', match[1]
    if match := re.search(r'(No (?:energies|forces|stress\w*) found with key[^\n]*)', text):
        return 'missing_labels', match[1]
    if 'Traceback (most recent call last)' in text:
        tail = [line for line in text.splitlines() if line.strip()]
        return 'exception', tail[-1] if tail else 'traceback'
    return None


class FinetuneMaceParser(SummaryParser):
    """Parse a :class:`~aiida_capthermo.calculations.mace.FinetuneMaceCalcJob` into model, metrics, curve and log."""

    def _text(self, name: str) -> str | None:
        if name not in self.retrieved.base.repository.list_object_names():
            return None
        return self.retrieved.base.repository.get_object_content(name)

    def parse(self, **kwargs):
        """Map MACE's output files to output nodes and failures to exit codes."""
        node = self.node
        if self.scheduler_ran_out_of_walltime():
            return self.exit_codes.ERROR_OUT_OF_WALLTIME
        names = self.retrieved.base.repository.list_object_names()
        summary = {}

        resolution_text = self._text(RESOLVE_RESULT)
        if resolution_text is not None:
            resolution = json.loads(resolution_text)
            summary['remote_resolution'] = resolution
            if resolution.get('error'):
                self.out('summary', orm.Dict(summary))
                return self.error_exit_code(resolution.get('error_kind') or 'resolve_failed', resolution['error'])

        stdout = self._text(node.base.attributes.get('output_filename', 'aiida.out')) or ''
        log_name = next((n for n in names if re.fullmatch(rf'{MODEL_NAME}_run-\d+\.log', n)), None)
        results_name = next((n for n in names if re.fullmatch(rf'{MODEL_NAME}_run-\d+_train\.txt', n)), None)
        log = self._text(log_name) if log_name else ''

        failure = detect_failure(log + '\n' + stdout)
        if failure is not None:
            kind, detail = failure
            self.out('summary', orm.Dict({**summary, 'error': detail, 'error_kind': kind}))
            return self.error_exit_code(kind, detail)
        if not log_name or not results_name:
            return self.exit_codes.ERROR_LOG_MISSING

        with self.retrieved.base.repository.open(log_name, 'rb') as handle:
            self.out('log', orm.SinglefileData(handle, filename=log_name))
        evals, opts = parse_results_lines(self._text(results_name))
        curve = orm.ArrayData()
        for key, value in training_curve_arrays(evals, opts).items():
            curve.set_array(key, value)
        self.out('training_curve', curve)

        if evals and math.isnan(_float(evals[-1].get('loss'))):
            return self.error_exit_code('nan_loss', f"at epoch {evals[-1].get('epoch')}")

        table = parse_error_table(log)
        metrics = {'units': {'e': 'eV', 'e_per_atom': 'eV/atom', 'f': 'eV/Å', 'stress': 'eV/Å^3'}, 'final': table}
        for row, values in table.items():
            split = row.split('_', 1)[0]
            if split in ('train', 'valid', 'test'):  # MACE's row names; ours: train, validation, test
                metrics.setdefault('validation' if split == 'valid' else split, {}).update(values)
        finite = [r for r in evals if r.get('epoch') is not None and math.isfinite(_float(r.get('loss')))]
        if finite:
            best = min(finite, key=lambda r: _float(r['loss']))
            metrics['validation_best_epoch'] = {key: _float(best.get(key)) for key in ('epoch', *_EVAL_KEYS)
                                           if key in best}
            metrics['validation_last_epoch'] = {key: _float(finite[-1].get(key)) for key in ('epoch', *_EVAL_KEYS)
                                           if key in finite[-1]}
        if evals and evals[0].get('epoch') is None:
            metrics['validation_initial'] = {key: _float(evals[0].get(key)) for key in _EVAL_KEYS if key in evals[0]}
        self.out('metrics', orm.Dict(_json_clean(metrics)))

        main = f'{MODEL_NAME}_stagetwo.model' if f'{MODEL_NAME}_stagetwo.model' in names else f'{MODEL_NAME}.model'
        if main not in names:
            return self.exit_codes.ERROR_MODEL_FILE_MISSING.format(filename=main)
        self.out('model', self._model_node(main, names, log, metrics))
        summary.update(n_evaluations=len(evals), epochs=int(max((r['epoch'] for r in opts), default=-1)) + 1,
                       training_seconds=float(sum(_float(r.get('time')) for r in opts)))
        self.out('summary', orm.Dict(_json_clean(summary)))
        return None

    def _model_node(self, main: str, names: list[str], log: str, metrics: dict) -> ModelData:
        from aiida_capthermo.calculations.mace import MaceHyperParameters

        inputs = self.node.inputs
        params = MaceHyperParameters(**(inputs.hyperparameters.get_dict() if 'hyperparameters' in inputs else {}))
        architecture = parse_architecture(log)
        if 'foundation_model' in inputs:
            foundation = {'uuid': inputs.foundation_model.uuid, 'sha256': inputs.foundation_model.sha256}
        elif 'foundation_name' in inputs:
            foundation = {'name': inputs.foundation_name.value}
            resolution = self._text(RESOLVE_RESULT)
            if resolution:
                foundation.update({k: v for k, v in (json.loads(resolution).get('foundation') or {}).items()
                                   if k in ('path', 'sha256')})
        else:
            foundation = None
        compiled = main.replace('.model', '_compiled.model')
        with tempfile.TemporaryDirectory() as tmpdir:
            files = {main: self.retrieved_path(main, tmpdir)}
            if compiled in names:
                files[compiled] = self.retrieved_path(compiled, tmpdir)
            return ModelData.from_files(
                'mace', files, main_file=main, architecture={'model': 'MACE', **architecture},
                r_max=architecture.get('r_max', params.r_max), dtype=params.default_dtype,
                hyperparameters=params.model_dump(), foundation=foundation,
                compiled_file=compiled if compiled in names else None, trained_by='FinetuneMaceCalcJob',
                metrics=headline_metrics(metrics), domain=self._training_domain())

    def _training_domain(self) -> dict:
        """The domain of the structures this job trained on (``train`` and ``valid``):
        :func:`aiida_capthermo.core.domain.training_domain`. A model fine-tuned from a foundation knows more than
        this, but how well only its fine-tuning set says."""
        from aiida_capthermo.core.domain import training_domain

        atoms = []
        for name in ('train', 'valid'):
            if name in self.node.inputs:
                labelled = self.node.inputs[name].get_labelled_set()
                atoms.extend(labelled.atoms(i, with_labels=False) for i in range(len(labelled)))
        return training_domain(atoms)


def headline_metrics(metrics: dict) -> dict:
    """The model node's ``metrics`` attribute (selectable by QueryBuilder): per split (train, validation, test) the
    force, energy-per-atom and stress MAE (eV/Å, eV/atom, eV/Å^3) of MACE's final error table."""
    names = {'mae_forces': 'mae_f', 'mae_energy_per_atom': 'mae_e_per_atom', 'mae_stress': 'mae_stress'}
    return {split: {name: metrics[split][key] for name, key in names.items() if key in metrics[split]}
            for split in ('train', 'validation', 'test') if split in metrics}


class MaceEvaluateParser(SummaryParser):
    """Parse ``capthermo-mace evaluate`` (and ``phonons``) outputs: metrics Dict, parity and frequency arrays."""

    def parse(self, **kwargs):
        """Read the summaries and arrays through the retrieved folder."""
        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            return summary
        names = self.retrieved.base.repository.list_object_names()
        from aiida_capthermo.calculations.mace import MaceEvaluateCalcJob as Job

        if Job._PARITY not in names:
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=Job._PARITY)
        metrics = dict(summary.get('metrics', {}))
        with tempfile.TemporaryDirectory() as tmpdir:
            parity = orm.ArrayData()
            with np.load(self.retrieved_path(Job._PARITY, tmpdir)) as data:
                for key in data.files:
                    parity.set_array(key, data[key])
            self.out('parity', parity)
            if 'phonon_structure' in self.node.inputs:
                if Job._PHONON_SUMMARY not in names or Job._PHONON_ARRAYS not in names:
                    return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=Job._PHONON_SUMMARY)
                phonon = json.loads(self.retrieved.base.repository.get_object_content(Job._PHONON_SUMMARY))
                if phonon.get('error'):
                    return self.exit_codes.ERROR_SCRIPT_FAILED.format(error=phonon['error'])
                metrics['phonons'] = phonon.get('outputs', {})
                frequencies = orm.ArrayData()
                with np.load(self.retrieved_path(Job._PHONON_ARRAYS, tmpdir)) as data:
                    for key in data.files:
                        frequencies.set_array(key, data[key])
                self.out('phonon_frequencies', frequencies)
        self.out('metrics', orm.Dict(_json_clean(metrics)))
        return None


def _json_clean(value):
    """NaN/inf -> None, numpy scalars -> Python, recursively (Dict nodes must be JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
