"""Parser of ``MlipScreenCalcJob``: relaxed structures (same keys), energies array and per-structure results."""

from __future__ import annotations

import json
import math
import tempfile

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_capthermo.parsers.base import SummaryParser

__all__ = ['MlipScreenParser', 'MlipMdParser', 'MlipThermalParser', 'MlipModesParser']


class MlipScreenParser(SummaryParser):
    """Read ``summary.json``, ``screen.json`` and ``relaxed.npz`` through the retrieved folder."""

    def parse(self, **kwargs):
        """Map the records (sorted-key order of the input structures) back to the input keys."""
        from aiida_capthermo.calculations.mlip import MlipScreenCalcJob as Job
        from aiida_capthermo.core.dataset import LabelledSet
        from aiida_capthermo.data.structures import get_structure_metadata, set_structure_metadata

        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            if summary.status == self.exit_codes.ERROR_SCRIPT_FAILED.status and 'no structure was relaxed' in (
                    summary.message or ''):
                return self.exit_codes.ERROR_NO_STRUCTURE_RELAXED.format(error=summary.message)
            return summary
        names = self.retrieved.base.repository.list_object_names()
        for filename in (Job._SCREEN, Job._RELAXED):
            if filename not in names:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=filename)
        records = json.loads(self.retrieved.base.repository.get_object_content(Job._SCREEN))
        with tempfile.TemporaryDirectory() as tmpdir:
            relaxed = LabelledSet.load(self.retrieved_path(Job._RELAXED, tmpdir))
        inputs = self.node.inputs.structures
        keys = sorted(inputs)
        if len(records) != len(keys):
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=f'{Job._SCREEN} (records != inputs)')
        results, rows = {}, []
        for record in records:
            key = keys[record['index']]
            if record['structure_uuid'] and record['structure_uuid'] != inputs[key].uuid:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=f'{Job._SCREEN} (order)')
            results[key] = {name: _clean(value) for name, value in record.items() if name != 'gamma_frequencies'}
            if 'error' not in record:
                rows.append(key)
        if not rows:
            return self.exit_codes.ERROR_NO_STRUCTURE_RELAXED.format(error='every relaxation failed')
        for row, key in enumerate(rows):
            atoms = relaxed.atoms(row, with_labels=False)
            atoms.calc = None
            structure = orm.StructureData(ase=atoms)
            metadata = get_structure_metadata(inputs[key])
            set_structure_metadata(structure, x=metadata['x'], origin='mlip_relaxed')
            self.out(f'relaxed.{key}', structure)
        energies = orm.ArrayData()
        energies.set_array('energy', np.array([results[k]['energy'] for k in rows], float))
        energies.set_array('energy_per_atom', np.array([results[k]['energy_per_atom'] for k in rows], float))
        energies.set_array('converged', np.array([results[k]['converged'] for k in rows], bool))
        energies.set_array('steps', np.array([results[k]['steps'] for k in rows], int))
        energies.base.attributes.set('keys', rows)
        self.out('energies', energies)
        self.out('results', orm.Dict(results))
        return None


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MlipMdParser(SummaryParser):
    """Read ``summary.json``, ``md.json`` and (when written) ``frames.npz``: verdicts, series and frames."""

    def parse(self, **kwargs):
        from aiida_capthermo.calculations.mlip import MlipMdCalcJob as Job
        from aiida_capthermo.core.dataset import LabelledSet
        from aiida_capthermo.data.dataset import DatasetData

        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            if summary.status == self.exit_codes.ERROR_SCRIPT_FAILED.status and 'no replica ran' in (
                    summary.message or ''):
                return self.exit_codes.ERROR_NO_REPLICA_RAN.format(error=summary.message)
            return summary
        if Job._MD not in self.retrieved.base.repository.list_object_names():
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=Job._MD)
        records = json.loads(self.retrieved.base.repository.get_object_content(Job._MD))
        keys = sorted(self.node.inputs.structures)
        trajectories = orm.ArrayData()
        replicas = []
        for record in records:
            series = record.pop('series', {})
            for name, values in series.items():
                trajectories.set_array(f'{name}_{record["replica"]}', np.asarray(values, dtype=float))
            record['key'] = keys[record['index']]
            replicas.append({name: _clean(value) for name, value in record.items()})
        self.out('trajectories', trajectories)
        outputs = summary['outputs']
        self.out('results', orm.Dict({'stable': outputs['stable'], 'n_stable': outputs['n_stable'],
                                      'n_replicas': outputs['n_replicas'], 'replicas': replicas}))
        if outputs['files']['frames']:
            with tempfile.TemporaryDirectory() as tmpdir:
                path = self.retrieved_path(Job._FRAMES, tmpdir)
                if path is None:
                    return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=Job._FRAMES)
                frames = LabelledSet.load(path)
            self.out('frames', DatasetData.from_labelled_set(frames, origin='md', model_uuid=self.node.inputs.model.uuid))
        return None


class MlipThermalParser(SummaryParser):
    """Read ``summary.json``, ``md.json``, ``series.npz`` and ``frames.npz`` of ``capthermo-mlip thermal``."""

    def parse(self, **kwargs):
        from aiida_capthermo.calculations.mlip import MlipThermalCalcJob as Job
        from aiida_capthermo.core.dataset import LabelledSet
        from aiida_capthermo.data.dataset import DatasetData

        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            return summary
        names = self.retrieved.base.repository.list_object_names()
        for filename in (Job._MD, Job._SERIES):
            if filename not in names:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=filename)
        records = json.loads(self.retrieved.base.repository.get_object_content(Job._MD))
        keys = sorted(self.node.inputs.structures)
        for record in records:
            record['key'] = keys[record.pop('index')]
        series = orm.ArrayData()
        with self.retrieved.base.repository.open(Job._SERIES, 'rb') as handle, np.load(handle) as arrays:
            for name in arrays.files:
                series.set_array(name, arrays[name])
        self.out('series', series)
        outputs = summary['outputs']
        self.out('results', orm.Dict({
            'replicas': [{name: _clean(value) for name, value in record.items()} for record in records],
            'broken': outputs['broken'], 'n_broken': outputs['n_broken'], 'n_replicas': outputs['n_replicas'],
            'wall_time_s': outputs['wall_time_s'], 'replica_steps_per_s': outputs['replica_steps_per_s']}))
        if outputs['files']['frames']:
            with tempfile.TemporaryDirectory() as tmpdir:
                path = self.retrieved_path(Job._FRAMES, tmpdir)
                if path is None:
                    return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=Job._FRAMES)
                frames = LabelledSet.load(path)
            self.out('frames', DatasetData.from_labelled_set(frames, origin='md', model_uuid=self.node.inputs.model.uuid))
        if outputs['n_broken']:
            reasons = '; '.join(f'{r["replica"]}: {r["broke"]}' for r in records if r['broke'])
            return self.exit_codes.ERROR_REPLICAS_BROKE.format(broken=outputs['broken'], reasons=reasons)
        return None


class MlipModesParser(SummaryParser):
    """Read ``summary.json``, ``modes.json`` and ``distorted.npz`` of ``capthermo-mlip modes``."""

    def parse(self, **kwargs):
        from aiida_capthermo.calculations.mlip import MlipModesCalcJob as Job
        from aiida_capthermo.core.dataset import LabelledSet
        from aiida_capthermo.data.dataset import DatasetData

        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            return summary
        names = self.retrieved.base.repository.list_object_names()
        for filename in (Job._MODES, Job._DISTORTED):
            if filename not in names:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=filename)
        records = json.loads(self.retrieved.base.repository.get_object_content(Job._MODES))
        keys = sorted(self.node.inputs.structures)
        for record in records:
            record['key'] = keys[record.pop('index')]
        self.out('modes', orm.Dict({'structures': records}))
        with tempfile.TemporaryDirectory() as tmpdir:
            distorted = LabelledSet.load(self.retrieved_path(Job._DISTORTED, tmpdir))
        self.out('distorted', DatasetData.from_labelled_set(distorted, origin='mode',
                                                            model_uuid=self.node.inputs.model.uuid))
        return None
