"""Base restart workchain of the package: the reporting every process handler uses."""

from __future__ import annotations

from typing import ClassVar

from aiida import orm
from aiida.engine import BaseRestartWorkChain, while_

from aiida_capthermo.exit_codes import EXIT_CODES

__all__ = ['CapthermoBaseRestartWorkChain']


class CapthermoBaseRestartWorkChain(BaseRestartWorkChain):
    """``BaseRestartWorkChain`` with the standard restart outline, unhandled failures aborting, and
    :meth:`report_error_handled` for the process handlers."""

    _process_class = None
    defaults: ClassVar[dict] = {'walltime_factor': 2}  # subclasses add the numbers of their own handlers

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.inputs['on_unhandled_failure'].default = lambda: orm.Str('abort')
        spec.exit_code(EXIT_CODES['ERROR_UNRECOVERABLE_FAILURE'], 'ERROR_UNRECOVERABLE_FAILURE',
                       message='The job failed with an unrecoverable error.')

    def increase_walltime(self, node) -> int | None:
        """Give the next job ``defaults['walltime_factor']`` (default 2) times the walltime of ``node``; returns the
        new ``max_wallclock_seconds`` (None when the job had no limit)."""
        options = self.ctx.inputs.setdefault('metadata', {}).setdefault('options', {})
        walltime = options.get('max_wallclock_seconds') or node.get_option('max_wallclock_seconds')
        if walltime:
            options['max_wallclock_seconds'] = int(walltime * self.defaults.get('walltime_factor', 2))
        return options.get('max_wallclock_seconds')

    def report_error_handled(self, node, action: str) -> None:
        """Report the failure of ``node`` and what the handler does about it."""
        self.report(f'{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: '
                    f'{node.exit_message}')
        self.report(f'action taken: {action}')
