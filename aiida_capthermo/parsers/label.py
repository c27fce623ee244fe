"""Parser of ``LabelCalcJob``: the labelled batch as a ``DatasetData``, failures per structure recorded."""

from __future__ import annotations

import tempfile

import numpy as np

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.parsers.base import SummaryParser

__all__ = ['LabelParser']


class LabelParser(SummaryParser):
    """Read ``summary.json`` and ``labels.npz``; output the structures that were labelled."""

    def parse(self, **kwargs):
        summary = self.read_summary()
        if not isinstance(summary, dict):
            return summary
        keys = sorted(self.node.inputs.structures.keys())
        records = summary.get('records', [])
        if len(records) != len(keys):
            return self.exit_codes.ERROR_SUMMARY_UNPARSABLE.format(
                exception=f'{len(records)} records for {len(keys)} structures')
        ok = [record['index'] for record in records if record['status'] == 'ok']
        failed = [keys[record['index']] for record in records if record['status'] != 'ok']
        if not ok:
            return self.exit_codes.ERROR_NO_STRUCTURE_LABELLED.format(error=records[0].get('error'))
        with tempfile.TemporaryDirectory() as tmpdir:
            path = self.retrieved_path('labels.npz', tmpdir)
            if path is None:
                return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename='labels.npz')
            labelled = LabelledSet.load(path)
        labelled = labelled.subset(ok)
        from aiida_capthermo.ml.settings import CalculatorSpec

        calculator = CalculatorSpec.model_validate(summary['calculator'])
        dataset = DatasetData.from_labelled_set(
            labelled, engine='local', **calculator.describe(), calculator=calculator.model_dump(),
            keys=[keys[i] for i in ok], failed=failed, n_failed=len(failed),
            failed_errors={keys[r['index']]: r['error'] for r in records if r['status'] != 'ok'},
            seconds_per_structure=float(np.mean([r['seconds'] for r in records])),
            **({'relax': summary['relax'], 'relaxations': {keys[r['index']]: r.get('relax') for r in records}}
               if summary.get('relax') else {}))
        self.out('labels', dataset)
        return None
