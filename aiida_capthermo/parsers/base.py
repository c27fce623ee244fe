"""Parser base: read the console script's ``summary.json`` from the retrieved folder and map failures to exit codes."""

from __future__ import annotations

import json

from aiida import orm
from aiida.parsers import Parser

from aiida_capthermo.calculations.base import SUMMARY_FILE
from aiida_capthermo.compute.summary import ERROR_KINDS

__all__ = ['SummaryParser']


class SummaryParser(Parser):
    """Parsers of the package's CalcJobs start here: :meth:`read_summary` returns the summary dict or an exit code.

    Files are read through ``self.retrieved`` only, so parsing works the same for a remote cluster.
    """

    def scheduler_ran_out_of_walltime(self) -> bool:
        """True when the scheduler reported a walltime kill (aiida-core sets its exit status 120 before parsing)."""
        return self.node.exit_status == self.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status

    def read_summary(self) -> dict | orm.ExitCode:
        """Return the parsed summary, or the exit code that says why it is not there."""
        names = self.retrieved.base.repository.list_object_names()
        if SUMMARY_FILE not in names:
            if self.scheduler_ran_out_of_walltime():
                return self.exit_codes.ERROR_OUT_OF_WALLTIME
            return self.exit_codes.ERROR_SUMMARY_MISSING
        try:
            summary = json.loads(self.retrieved.base.repository.get_object_content(SUMMARY_FILE))
        except (ValueError, OSError) as exception:
            return self.exit_codes.ERROR_SUMMARY_UNPARSABLE.format(exception=exception)
        self.out('summary', orm.Dict(summary))
        error = summary.get('error')
        if error:
            return self.error_exit_code(summary.get('error_kind'), error)
        return summary

    def error_exit_code(self, kind: str | None, error: str) -> orm.ExitCode:
        """The exit code of a failure of kind ``kind`` (:data:`~aiida_capthermo.compute.summary.ERROR_KINDS`, the
        one mapping of every job): the job's exit code of that name, else ``ERROR_SCRIPT_FAILED``."""
        label = ERROR_KINDS.get(kind or 'exception', 'ERROR_SCRIPT_FAILED')
        if label not in self.exit_codes:
            label = 'ERROR_SCRIPT_FAILED'
        exit_code = self.exit_codes[label]
        return exit_code.format(error=error) if '{error}' in exit_code.message else exit_code

    def retrieved_path(self, name: str, tmpdir) -> str | None:
        """Copy retrieved file ``name`` to ``tmpdir`` and return its path, or None when it was not retrieved."""
        import pathlib

        if name not in self.retrieved.base.repository.list_object_names():
            return None
        target = pathlib.Path(tmpdir) / name
        with self.retrieved.base.repository.open(name, 'rb') as source:
            target.write_bytes(source.read())
        return str(target)
