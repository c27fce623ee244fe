"""``LocalLabelWorkChain``: the ``local`` labelling engine with restarts for structures whose SCF failed."""

from __future__ import annotations

from typing import ClassVar

from aiida import orm
from aiida.engine import ProcessHandlerReport, calcfunction, process_handler
from aiida.plugins import CalculationFactory

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.exit_codes import EXIT_CODES
from aiida_capthermo.workflows.base import CapthermoBaseRestartWorkChain

__all__ = ['LocalLabelWorkChain', 'merge_labels']

LabelCalcJob = CalculationFactory('capthermo.label')


@calcfunction
def merge_labels(**labels) -> DatasetData:
    """Join the label sets of several attempts into one, in the order of their keys; record what still failed."""
    nodes = [labels[key] for key in sorted(labels)]
    merged_keys = []
    for node in nodes:
        merged_keys.extend(node.base.attributes.get('keys'))
    order = sorted(range(len(merged_keys)), key=merged_keys.__getitem__)
    labelled = LabelledSet.concatenate([node.get_labelled_set() for node in nodes]).subset(order)
    still_failed = sorted(set(nodes[-1].base.attributes.get('failed')))
    first = nodes[0].base.attributes
    return DatasetData.from_labelled_set(
        labelled, engine=first.get('engine'), method=first.get('method'), gap_method=first.get('gap_method', None),
        calculator=first.get('calculator', None), keys=[merged_keys[i] for i in order],
        failed=still_failed, n_failed=len(still_failed),
        failed_errors={k: v for k, v in nodes[-1].base.attributes.get('failed_errors').items() if k in still_failed})


class LocalLabelWorkChain(CapthermoBaseRestartWorkChain):
    """Label a batch with ``LabelCalcJob``; structures whose SCF failed are retried with a more robust SCF.

    Output contract of every labelling engine (shared with ``VaspLabelWorkChain``): ``labels``, a ``DatasetData``
    of the structures that were labelled, in sorted key order, with ``keys``, ``failed`` and ``n_failed`` attributes.
    """

    _process_class = LabelCalcJob

    defaults: ClassVar[dict] = {
        'robust_mixer_damping': 0.1,  # a smaller Broyden damping converges the xTB SCF of distorted cells
        'robust_max_iterations_factor': 4,
        'walltime_factor': 2,
    }

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(LabelCalcJob, namespace='label')
        spec.input('fidelity', valid_type=orm.Str, default=lambda: orm.Str('low'),
                   help="'low': energy, forces, stress and gap; 'high': gap only.")
        spec.output('labels', valid_type=DatasetData,
                    help='The labelled structures (DatasetData) with the keys of those that failed in `failed`.')
        spec.exit_code(EXIT_CODES['ERROR_NO_STRUCTURE_LABELLED'], 'ERROR_NO_STRUCTURE_LABELLED',
                       message='No structure of the batch could be labelled, even with a robust SCF.')

    def setup(self):
        super().setup()
        self.ctx.inputs = self.exposed_inputs(LabelCalcJob, 'label')
        self.ctx.label_nodes = []
        self.ctx.robust = False
        self.ctx.stop = False
        if self.inputs.fidelity.value == 'high':
            calculator = self.ctx.inputs['calculator'].get_dict() if 'calculator' in self.ctx.inputs else {}
            calculator['properties'] = ['gap']
            self.ctx.inputs['calculator'] = orm.Dict(calculator)

    def _make_robust(self) -> bool:
        """Switch the calculator to the robust SCF settings; False when they are already in use."""
        if self.ctx.robust:
            return False
        calculator = self.ctx.inputs['calculator'].get_dict() if 'calculator' in self.ctx.inputs else {}
        calculator['mixer_damping'] = self.defaults['robust_mixer_damping']
        calculator['max_iterations'] = calculator.get('max_iterations', 250) * self.defaults[
            'robust_max_iterations_factor']
        self.ctx.inputs['calculator'] = orm.Dict(calculator)
        self.ctx.robust = True
        return True

    @process_handler(priority=600)
    def handle_failed_structures(self, node):
        """Some structures failed (finished job): relabel only those with a robust SCF, once."""
        if not node.is_finished_ok:
            return None
        labels = node.outputs.labels
        self.ctx.label_nodes.append(labels)
        failed = labels.base.attributes.get('failed')
        if not failed or not self._make_robust():
            return None
        self.ctx.inputs['structures'] = {key: self.ctx.inputs['structures'][key] for key in failed}
        self.report_error_handled(node, f'{len(failed)} structures failed their SCF: relabelling them with mixer '
                                  f'damping {self.defaults["robust_mixer_damping"]} and more iterations')
        return ProcessHandlerReport(True)

    @process_handler(priority=500, exit_codes=LabelCalcJob.exit_codes.ERROR_NO_STRUCTURE_LABELLED)
    def handle_no_structure_labelled(self, node):
        """No structure converged: retry the whole batch (or the failed rest) with the robust SCF, once."""
        if self._make_robust():
            self.report_error_handled(node, 'no structure converged: retrying with a robust SCF')
            return ProcessHandlerReport(True)
        self.ctx.stop = True
        if self.ctx.label_nodes:
            self.report('the robust retry converged none of the remaining structures; keeping the earlier labels')
            return ProcessHandlerReport(True)
        return ProcessHandlerReport(True, self.exit_codes.ERROR_NO_STRUCTURE_LABELLED)

    @process_handler(priority=550, exit_codes=[LabelCalcJob.exit_codes.ERROR_OUT_OF_WALLTIME,
                                               LabelCalcJob.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, node):
        """The batch ran out of walltime before writing its labels: resubmit it with twice the walltime."""
        walltime = self.increase_walltime(node)
        self.report_error_handled(node, f'out of walltime: resubmitting with max_wallclock_seconds {walltime}')
        return ProcessHandlerReport(True)

    @process_handler(priority=540, exit_codes=[LabelCalcJob.exit_codes.ERROR_SUMMARY_MISSING,
                                               LabelCalcJob.exit_codes.ERROR_SCHEDULER_NODE_FAILURE,
                                               LabelCalcJob.exit_codes.ERROR_NO_RETRIEVED_FOLDER])
    def handle_job_died(self, node):
        """The job died without writing its summary (killed by the scheduler or with its node, or its folder was
        lost): run the same batch again, up to ``max_iterations`` jobs in all."""
        self.report_error_handled(node, 'the job ended without a summary (killed, or its node failed): running the '
                                  'same batch again')
        return ProcessHandlerReport(True)

    def should_run_process(self):
        return not self.ctx.stop and super().should_run_process()

    def results(self):
        if not self.ctx.label_nodes:
            return self.exit_codes.ERROR_NO_STRUCTURE_LABELLED
        if len(self.ctx.label_nodes) == 1:
            labels = self.ctx.label_nodes[0]
        else:
            labels = merge_labels(**{f'attempt_{i}': node for i, node in enumerate(self.ctx.label_nodes)})
        self.out('labels', labels)
        return None
