"""Parsers of the ``capthermo-mlip`` jobs: screen (relaxed structures, energies, per-structure results), md
(stability verdicts, series, frames), thermal (replica records, series, frames) and modes (modes, distorted cells)."""

from __future__ import annotations

import json
import math
import tempfile

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_capthermo.parsers.base import SummaryParser

__all__ = ['MlipParser', 'MlipScreenParser', 'MlipPhononsParser', 'MlipMdParser', 'MlipThermalParser',
           'MlipModesParser', 'phonon_bands']


class MlipParser(SummaryParser):
    """What the parsers of ``capthermo-mlip`` tasks share: required files, records keyed by input structure,
    LabelledSet files as DatasetData outputs."""

    def missing_file(self, *filenames: str) -> ExitCode | None:
        """ERROR_OUTPUT_FILES_MISSING for the first of ``filenames`` that was not retrieved."""
        names = self.retrieved.base.repository.list_object_names()
        for filename in filenames:
            if filename not in names:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=filename)
        return None

    def read_records(self, filename: str) -> list[dict]:
        """The JSON records of ``filename`` with their structure ``index`` (sorted-key order) replaced by ``key``."""
        records = json.loads(self.retrieved.base.repository.get_object_content(filename))
        keys = sorted(self.node.inputs.structures)
        for record in records:
            record['key'] = keys[record.pop('index')]
        return records

    def out_dataset(self, link: str, filename: str, origin: str) -> ExitCode | None:
        """Attach the LabelledSet file ``filename`` as DatasetData ``link`` (the model's uuid recorded)."""
        from aiida_capthermo.core.dataset import LabelledSet
        from aiida_capthermo.data.dataset import DatasetData

        with tempfile.TemporaryDirectory() as tmpdir:
            path = self.retrieved_path(filename, tmpdir)
            if path is None:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=filename)
            labelled = LabelledSet.load(path)
        self.out(link, DatasetData.from_labelled_set(labelled, origin=origin, model_uuid=self.node.inputs.model.uuid))
        return None


class MlipScreenParser(MlipParser):
    """Read ``summary.json``, ``screen.json`` and ``relaxed.npz`` through the retrieved folder.

    A run that stopped at its time limit (``complete: false``), or that the scheduler killed for walltime after a
    checkpoint, gets the structures relaxed so far attached and ERROR_OUT_OF_WALLTIME.
    """

    def parse(self, **kwargs):
        """Map the records (sorted-key order of the input structures) back to the input keys."""
        from aiida_capthermo.calculations.mlip import MlipScreenCalcJob as Job

        summary = self.read_summary()
        checkpoint = Job._SCREEN in self.retrieved.base.repository.list_object_names()
        if isinstance(summary, ExitCode):
            if summary.status == self.exit_codes.ERROR_OUT_OF_WALLTIME.status and checkpoint:
                return self._attach(Job) or summary
            if summary.status == self.exit_codes.ERROR_SCRIPT_FAILED.status and 'no structure was relaxed' in (
                    summary.message or ''):
                return self.exit_codes.ERROR_NO_STRUCTURE_RELAXED.format(error=summary.message)
            return summary
        missing = self.missing_file(Job._SCREEN, Job._RELAXED)
        if missing:
            return missing
        error = self._attach(Job)
        if error:
            return error
        if not summary['outputs'].get('complete', True):
            return self.exit_codes.ERROR_OUT_OF_WALLTIME
        return None

    def _attach(self, Job) -> ExitCode | None:  # noqa: N803 -- the job class
        """Attach the relaxed structures, their energies and the records written so far."""
        from aiida_capthermo.core.dataset import LabelledSet
        from aiida_capthermo.data.structures import get_structure_metadata, set_structure_metadata

        records = json.loads(self.retrieved.base.repository.get_object_content(Job._SCREEN))
        inputs = self.node.inputs.structures
        keys = sorted(inputs)
        results, rows = {}, []
        for record in records:
            key = keys[record['index']]
            if record['structure_uuid'] and record['structure_uuid'] != inputs[key].uuid:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=f'{Job._SCREEN} (order)')
            results[key] = {name: _clean(value) for name, value in record.items()}
            if 'error' not in record:
                rows.append(key)
        if not rows:
            return self.exit_codes.ERROR_NO_STRUCTURE_RELAXED.format(error='every relaxation failed')
        with tempfile.TemporaryDirectory() as tmpdir:
            path = self.retrieved_path(Job._RELAXED, tmpdir)
            if path is None:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=Job._RELAXED)
            relaxed = LabelledSet.load(path)
        if len(relaxed) != len(rows):
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=f'{Job._RELAXED} (records != set)')
        for row, key in enumerate(rows):
            atoms = relaxed.atoms(row, with_labels=False)
            atoms.calc = None
            structure = orm.StructureData(ase=atoms)
            set_structure_metadata(structure, x=get_structure_metadata(inputs[key])['x'], origin='mlip_relaxed')
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


class MlipPhononsParser(MlipParser):
    """Read ``summary.json``, ``phonons.json`` and ``bands.npz`` of ``capthermo-mlip phonons``: results per key,
    harmonic and renormalised BandsData, mode spectra."""

    def parse(self, **kwargs):
        from aiida_capthermo.calculations.mlip import MlipPhononsCalcJob as Job

        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            return summary
        missing = self.missing_file(Job._PHONONS, Job._BANDS)
        if missing:
            return missing
        records = self.read_records(Job._PHONONS)
        spectra = orm.ArrayData()
        with self.retrieved.base.repository.open(Job._BANDS, 'rb') as handle, np.load(handle) as arrays:
            for number, record in enumerate(records):
                key = record['key']
                self.out(f'bands.{key}', phonon_bands(arrays[f'qpoints_{number}'], arrays[f'harmonic_{number}'],
                                                      record, self.node.inputs.structures[key],
                                                      dos=_dos(arrays, f'{number}')))
                for temperature, result in record['temperatures'].items():
                    if result['broke']:
                        continue
                    link = f'{key}_T{float(temperature):.0f}'
                    self.out(f'renormalised_bands.{link}', phonon_bands(
                        arrays[f'qpoints_{number}'], arrays[f'T{temperature}_{number}'], record,
                        self.node.inputs.structures[key], temperature=float(temperature),
                        dos=_dos(arrays, f'{number}_T{temperature}')))
                    spectra.set_array(link, arrays[f'spectrum_{number}_T{temperature}'])
                    spectra.set_array(f'frequency_{link}', arrays[f'spectrum_frequency_{number}_T{temperature}'])
        if spectra.get_arraynames():
            self.out('spectra', spectra)
        self.out('results', orm.Dict({record.pop('key'): record for record in records}))
        broken = summary['outputs']['broken']
        if broken:
            keys = sorted(self.node.inputs.structures)
            return self.exit_codes.ERROR_MD_BROKE.format(runs=', '.join(f'{keys[i]} at {t} K' for i, t in broken))
        return None


def phonon_bands(qpoints: np.ndarray, frequencies: np.ndarray, record: dict, structure: orm.StructureData,
                 temperature: float | None = None, dos: tuple[np.ndarray, np.ndarray] | None = None) -> orm.BandsData:
    """BandsData (THz) of one structure's bands along the cubic path, labels at the segment ends; the structure's
    formula and x as attributes and, where the job computed it, the total DOS on a q mesh as the arrays
    ``dos_frequency`` (THz) and ``dos`` (states/THz per cell)."""
    bands = orm.BandsData()
    bands.set_cell_from_structure(structure)
    bands.set_kpoints(np.asarray(qpoints))
    bands.labels = [(int(index), name) for index, name in record['band_labels']]
    bands.set_bands(np.asarray(frequencies), units='THz')
    bands.base.attributes.set('formula', structure.get_formula())
    bands.base.attributes.set('x', float(record['x']))
    if temperature is not None:
        bands.base.attributes.set('temperature', temperature)
    if dos is not None:
        bands.set_array('dos_frequency', dos[0])
        bands.set_array('dos', dos[1])
    return bands


def _dos(arrays, suffix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The DOS of ``bands.npz`` for one structure (and temperature), None in the files of older jobs."""
    if f'dos_{suffix}' not in arrays:
        return None
    return arrays[f'dos_frequency_{suffix}'], arrays[f'dos_{suffix}']


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MlipMdParser(MlipParser):
    """Read ``summary.json``, ``md.json`` and (when written) ``frames.npz``: verdicts, series and frames."""

    def parse(self, **kwargs):
        from aiida_capthermo.calculations.mlip import MlipMdCalcJob as Job

        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            if summary.status == self.exit_codes.ERROR_SCRIPT_FAILED.status and 'no replica ran' in (
                    summary.message or ''):
                return self.exit_codes.ERROR_NO_REPLICA_RAN.format(error=summary.message)
            return summary
        missing = self.missing_file(Job._MD)
        if missing:
            return missing
        trajectories = orm.ArrayData()
        replicas = []
        for record in self.read_records(Job._MD):
            series = record.pop('series', {})
            for name, values in series.items():
                trajectories.set_array(f'{name}_{record["replica"]}', np.asarray(values, dtype=float))
            replicas.append({name: _clean(value) for name, value in record.items()})
        self.out('trajectories', trajectories)
        outputs = summary['outputs']
        self.out('results', orm.Dict({'stable': outputs['stable'], 'n_stable': outputs['n_stable'],
                                      'n_replicas': outputs['n_replicas'], 'replicas': replicas}))
        if outputs['files']['frames']:
            return self.out_dataset('frames', Job._FRAMES, 'md')
        return None


class MlipThermalParser(MlipParser):
    """Read ``summary.json``, ``md.json``, ``series.npz`` and ``frames.npz`` of ``capthermo-mlip thermal``."""

    def parse(self, **kwargs):
        from aiida_capthermo.calculations.mlip import MlipThermalCalcJob as Job

        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            return summary
        missing = self.missing_file(Job._MD, Job._SERIES)
        if missing:
            return missing
        records = self.read_records(Job._MD)
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
            missing = self.out_dataset('frames', Job._FRAMES, 'md')
            if missing:
                return missing
        if outputs['n_broken']:
            reasons = '; '.join(f'{r["replica"]}: {r["broke"]}' for r in records if r['broke'])
            return self.exit_codes.ERROR_REPLICAS_BROKE.format(broken=outputs['broken'], reasons=reasons)
        return None


class MlipModesParser(MlipParser):
    """Read ``summary.json``, ``modes.json`` and ``distorted.npz`` of ``capthermo-mlip modes``."""

    def parse(self, **kwargs):
        from aiida_capthermo.calculations.mlip import MlipModesCalcJob as Job

        summary = self.read_summary()
        if isinstance(summary, ExitCode):
            return summary
        missing = self.missing_file(Job._MODES, Job._DISTORTED)
        if missing:
            return missing
        self.out('modes', orm.Dict({'structures': self.read_records(Job._MODES)}))
        return self.out_dataset('distorted', Job._DISTORTED, 'mode')
