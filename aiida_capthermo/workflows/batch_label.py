"""``BatchLabelWorkChain``: label many structures with one engine, in batches, a few jobs at a time.

Every stage that labels structures goes through it: the dataset's low, equilibrium and high sets, the labels of the
MD frames that refine the potential, and the teacher's labels of validation frames. Each batch is one job of the
engine (``LocalLabelWorkChain`` or ``VaspLabelWorkChain``, with their restarts); at most ``max_concurrent`` run at
once. A batch whose whole job failed is reported and its structures are counted as failed; the stage fails only
when no structure at all was labelled.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import WorkChain, append_, while_

from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.engines import engine_namespace, label_batch_inputs
from aiida_capthermo.workflows.functions import assemble_dataset

__all__ = ['BatchLabelWorkChain', 'balanced_batch_size']


def validate_positive(value: orm.Int, _) -> str | None:
    if value.value < 1:
        return f'must be at least 1, got {value.value}'
    return None


def balanced_batch_size(n_structures: int, batch_size: int, max_concurrent: int) -> int:
    """At most ``batch_size`` structures per batch, but small enough that ``n_structures`` fill all
    ``max_concurrent`` jobs at once (a few frames in one job would leave the other slots idle)."""
    return max(1, min(batch_size, -(-n_structures // max_concurrent)))


class BatchLabelWorkChain(WorkChain):
    """Label ``structures`` with the engine of ``engine`` in batches of ``batch_size``, ``max_concurrent`` at once.

    Output ``labels``: one ``DatasetData`` of every labelled structure, batches in key order, with ``n_failed`` and
    ``failed_structures`` (the keys that could not be labelled, also those of batches whose job failed) and the
    ``attributes`` given.
    """

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace('structures', valid_type=orm.StructureData, dynamic=True,
                             help='The structures to label, by key (keys sort in the order of the output).')
        engine_namespace(spec, 'engine', help='The labelling engine (local or vasp) and its code, calculator or '
                                              'VASP settings and scheduler options.')
        spec.input('fidelity', valid_type=orm.Str, default=lambda: orm.Str('low'),
                   help="'low': energy, forces, stress and gap; 'high': the gap only.")
        spec.input('batch_size', valid_type=orm.Int, default=lambda: orm.Int(20), validator=validate_positive,
                   help='Structures per labelling job.')
        spec.input('max_concurrent', valid_type=orm.Int, default=lambda: orm.Int(4), validator=validate_positive,
                   help='Labelling jobs running at the same time.')
        spec.input('attributes', valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   help='Attributes of the output dataset (subset, fidelity, scheme, ...).')
        spec.outline(
            cls.setup,
            while_(cls.has_pending_batches)(cls.run_batches),
            cls.results,
        )
        spec.output('labels', valid_type=DatasetData, help='Every labelled structure, in the order of the keys.')
        spec.exit_code(EXIT_CODES['ERROR_NO_STRUCTURE_LABELLED'], 'ERROR_NO_STRUCTURE_LABELLED',
                       message='No structure could be labelled.')

    def setup(self):
        """Queue the batches: ``batch_size`` structures each, in key order."""
        keys = sorted(self.inputs.structures)
        size = self.inputs.batch_size.value
        self.ctx.pending = [keys[start:start + size] for start in range(0, len(keys), size)]
        self.ctx.batch_keys = []

    def has_pending_batches(self) -> bool:
        return bool(self.ctx.pending)

    def run_batches(self):
        """Submit up to ``max_concurrent`` batches; the next ones wait until these are done."""
        for _ in range(min(self.inputs.max_concurrent.value, len(self.ctx.pending))):
            keys = self.ctx.pending.pop(0)
            index = len(self.ctx.batch_keys)
            process, inputs = label_batch_inputs(dict(self.inputs.engine),
                                                 {key: self.inputs.structures[key] for key in keys},
                                                 self.inputs.fidelity.value)
            inputs['metadata'] = {'call_link_label': f'label_{index:04d}'}
            self.to_context(batches=append_(self.submit(process, **inputs)))
            self.ctx.batch_keys.append(keys)

    def results(self):
        """Join the labels of the batches that finished; a batch whose job failed counts as failed structures."""
        labelled, failed_in_failed_jobs = {}, []
        for index, (node, keys) in enumerate(zip(self.ctx.batches, self.ctx.batch_keys)):
            if node.is_finished_ok:
                labelled[f'batch_{index:04d}'] = node.outputs.labels
                failed = node.outputs.labels.base.attributes.get('failed')
                if failed:
                    self.report(f'batch {index}: {len(failed)} structures could not be labelled and are left out')
            else:
                self.report(f'batch {index} failed ({node.exit_status}: {node.exit_message}); its '
                            f'{len(keys)} structures are left out')
                failed_in_failed_jobs.extend(keys)
        if not labelled:
            return self.exit_codes.ERROR_NO_STRUCTURE_LABELLED
        attributes = {**self.inputs.attributes.get_dict(), 'failed_in_failed_jobs': failed_in_failed_jobs}
        self.out('labels', assemble_dataset(orm.Dict(attributes), **labelled))
        return None
