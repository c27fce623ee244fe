"""Parsers of the GNN CalcJobs: the summary decides success; model, metrics, parity and curves become nodes."""

from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np
from aiida import orm

from aiida_capthermo.data.model import ModelData
from aiida_capthermo.parsers.base import SummaryParser

__all__ = ['GnnTrainParser', 'GnnPredictParser', 'arrays_node']


def arrays_node(arrays: dict, **attributes) -> orm.ArrayData:
    """An ``ArrayData`` of ``arrays`` with scalar ``attributes``."""
    node = orm.ArrayData()
    for name, value in arrays.items():
        node.set_array(name, np.asarray(value))
    for key, value in attributes.items():
        node.base.attributes.set(key, value)
    return node


class _GnnParser(SummaryParser):
    """The summary's ``error_kind`` decides the exit code (:meth:`SummaryParser.error_exit_code`)."""

    def read_files(self, names, tmpdir) -> dict | orm.ExitCode:
        paths = {}
        for name in names:
            path = self.retrieved_path(name, tmpdir)
            if path is None:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=name)
            paths[name] = path
        return paths


class GnnTrainParser(_GnnParser):
    """Outputs ``model`` (ModelData kind gnn), ``metrics``, ``parity``, ``training_curve``, ``parity_plot`` (and
    ``parity_plot_pdf``);
    on a walltime stop the ``checkpoint`` to restart from."""

    def parse(self, **kwargs):
        summary = self.read_summary()
        if not isinstance(summary, dict):
            if summary.status == self.exit_codes.ERROR_OUT_OF_WALLTIME.status:
                self._output_checkpoint(kwargs.get('retrieved_temporary_folder'))
            return summary
        files = ('model.pt', 'model.json', 'metrics.json', 'parity.npz', 'parity.png', 'training_curve.json')
        with tempfile.TemporaryDirectory() as tmpdir:
            paths = self.read_files(files, tmpdir)
            if not isinstance(paths, dict):
                return paths
            try:
                metadata = json.loads(pathlib.Path(paths['model.json']).read_text())
                metrics = json.loads(pathlib.Path(paths['metrics.json']).read_text())
                curve = json.loads(pathlib.Path(paths['training_curve.json']).read_text())
                with np.load(paths['parity.npz']) as parity:
                    parity_arrays = {name: parity[name] for name in parity.files}
            except (ValueError, OSError, KeyError) as exception:
                return self.exit_codes.ERROR_SUMMARY_UNPARSABLE.format(exception=exception)
            parent = self.node.inputs.parent_model if 'parent_model' in self.node.inputs else None
            model = ModelData.from_files(
                'gnn', {name: paths[name] for name in ('model.pt', 'model.json')}, main_file='model.pt',
                architecture=metadata['architecture'], hyperparameters=metadata['hyperparameters'],
                normalisation=metadata['normalisation'], normalisation_source=metadata['normalisation_source'],
                target=metadata['target'], units=metadata['units'], cutoff=metadata['cutoff'],
                split=metadata['split'], best_epoch=metadata['best_epoch'],
                metrics={split: {name: metrics[split][name] for name in ('mae', 'rmse', 'r2')}
                         for split in ('train', 'validation', 'test')},
                parent_model_uuid=parent.uuid if parent is not None else None, domain=metadata.get('domain'))
            self.out('parity_plot', orm.SinglefileData(paths['parity.png']))
            if 'parity.pdf' in self.retrieved.base.repository.list_object_names():
                with self.retrieved.base.repository.open('parity.pdf', 'rb') as handle:
                    self.out('parity_plot_pdf', orm.SinglefileData(handle, filename='parity.pdf'))
        self.out('model', model)
        self.out('metrics', orm.Dict(metrics))
        self.out('parity', arrays_node(parity_arrays, target=metrics['target'], units=metrics['units']))
        self.out('training_curve', arrays_node(curve, loss='MSE of the min-max normalised target',
                                               val_mae_units=metrics['units']))
        return None

    def _output_checkpoint(self, temporary_folder) -> None:
        if temporary_folder is None:
            return
        path = pathlib.Path(temporary_folder) / 'checkpoint.pt'
        if path.is_file():
            self.out('checkpoint', orm.SinglefileData(str(path)))


class GnnPredictParser(_GnnParser):
    """Outputs ``predictions`` (ArrayData ``values``, ``x``, ``temperature``) and, when explained, the bond
    importance."""

    def parse(self, **kwargs):
        summary = self.read_summary()
        if not isinstance(summary, dict):
            return summary
        with tempfile.TemporaryDirectory() as tmpdir:
            paths = self.read_files(['predictions.npz'], tmpdir)
            if not isinstance(paths, dict):
                return paths
            with np.load(paths['predictions.npz']) as data:
                arrays = {name: data[name] for name in data.files}
            self.out('predictions', arrays_node(arrays, target=summary['target'], units=summary['units']['values'],
                                                model_sha256=summary['model_sha256'],
                                                structures_per_second=summary['structures_per_second'],
                                                n_outside_domain=summary.get('n_outside_domain', 0),
                                                outside_domain_reasons=summary.get('outside_domain_reasons', {})))
            if self.node.inputs.explain.value:
                explained = self.read_files(['explanation.json', 'explanation.png', 'explain_summary.json'], tmpdir)
                if not isinstance(explained, dict):
                    return explained
                explain_summary = json.loads(pathlib.Path(explained['explain_summary.json']).read_text())
                if explain_summary.get('error'):
                    return self.exit_codes.ERROR_SCRIPT_FAILED.format(error=explain_summary['error'])
                importance = json.loads(pathlib.Path(explained['explanation.json']).read_text())
                self.out('bond_importance', orm.Dict(importance))
                self.out('bond_importance_plot', orm.SinglefileData(explained['explanation.png']))
        return None
