"""Base restart workchain of the package: the reporting every process handler uses."""

from __future__ import annotations

from aiida.engine import BaseRestartWorkChain

__all__ = ['CapthermoBaseRestartWorkChain']


class CapthermoBaseRestartWorkChain(BaseRestartWorkChain):
    """``BaseRestartWorkChain`` with :meth:`report_error_handled` for the process handlers."""

    _process_class = None

    def report_error_handled(self, node, action: str) -> None:
        """Report the failure of ``node`` and what the handler does about it."""
        self.report(f'{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: '
                    f'{node.exit_message}')
        self.report(f'action taken: {action}')
