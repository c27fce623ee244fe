"""``FinetuneMaceWorkChain``: :class:`FinetuneMaceCalcJob` with restarts for the failures a retry can fix.

Handled: out of walltime -> restart from the last checkpoint of the failed run (its remote folder becomes
``parent_folder``, MACE's ``restart_latest``); out of (GPU) memory -> halve the batch size. Everything else
(no data, missing labels, NaN loss, foundation not obtainable, model file missing) is not retried.
"""

from __future__ import annotations

from typing import ClassVar

from aiida import orm
from aiida.engine import ProcessHandlerReport, process_handler

from aiida_capthermo.calculations.mace import FinetuneMaceCalcJob, MaceHyperParameters
from aiida_capthermo.workflows.base import CapthermoBaseRestartWorkChain

__all__ = ['FinetuneMaceWorkChain']


class FinetuneMaceWorkChain(CapthermoBaseRestartWorkChain):
    """Fine-tune a MACE potential, restarting from checkpoints after a walltime kill and shrinking batches on OOM."""

    _process_class = FinetuneMaceCalcJob
    defaults: ClassVar[dict] = {'batch_size_factor': 0.5, 'min_batch_size': 1}

    @classmethod
    def define(cls, spec) -> None:
        super().define(spec)
        spec.expose_inputs(FinetuneMaceCalcJob, namespace='mace')
        spec.expose_outputs(FinetuneMaceCalcJob)

    def setup(self) -> None:
        """Copy the exposed inputs into the context, where the handlers change them."""
        super().setup()
        self.ctx.inputs = self.exposed_inputs(FinetuneMaceCalcJob, 'mace')
        self.ctx.hyperparameters = dict(self.ctx.inputs['hyperparameters'].get_dict()
                                        if 'hyperparameters' in self.ctx.inputs else {})

    def _set_hyperparameters(self, **changes) -> None:
        self.ctx.hyperparameters.update(changes)
        MaceHyperParameters(**self.ctx.hyperparameters)  # still valid
        self.ctx.inputs['hyperparameters'] = orm.Dict(self.ctx.hyperparameters)


    @process_handler(priority=600, exit_codes=[FinetuneMaceCalcJob.exit_codes.ERROR_OUT_OF_WALLTIME,
                                              FinetuneMaceCalcJob.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, calculation) -> ProcessHandlerReport:
        """Restart from the latest checkpoint of the killed run."""
        self.ctx.inputs['parent_folder'] = calculation.outputs.remote_folder
        self._set_hyperparameters(restart_latest=True)
        self.report_error_handled(calculation, 'restarting from the last checkpoint in its remote folder')
        return ProcessHandlerReport(do_break=True)

    @process_handler(priority=500, exit_codes=[FinetuneMaceCalcJob.exit_codes.ERROR_OUT_OF_MEMORY])
    def handle_out_of_memory(self, calculation) -> ProcessHandlerReport:
        """Halve the (training and validation) batch size; give up at the minimum."""
        current = int(self.ctx.hyperparameters.get('batch_size', MaceHyperParameters().batch_size))
        if current <= self.defaults['min_batch_size']:
            self.report_error_handled(calculation, f'batch size is already {current}: cannot shrink, aborting')
            return ProcessHandlerReport(do_break=True, exit_code=self.exit_codes.ERROR_UNRECOVERABLE_FAILURE)
        new = max(self.defaults['min_batch_size'], int(current * self.defaults['batch_size_factor']))
        valid = self.ctx.hyperparameters.get('valid_batch_size')
        self._set_hyperparameters(batch_size=new, **({'valid_batch_size': max(1, valid // 2)} if valid else {}))
        self.report_error_handled(calculation, f'halving the batch size from {current} to {new}')
        return ProcessHandlerReport(do_break=True)
