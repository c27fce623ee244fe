"""Base CalcJob of the plugin: shared exit codes for jobs that run one of the package's console scripts.

Every console script of the package writes ``summary.json`` (inputs, units, outputs, timings and an
``error`` key when it failed). Exit codes follow the AiiDA bands: 3xx output missing or unparsable,
4xx failures a retry may fix, 7xx warnings; any code below 400 invalidates the cache.
"""

from __future__ import annotations

from aiida import engine, orm

__all__ = ['CapthermoCalcJob', 'SUMMARY_FILE', 'pydantic_error']

SUMMARY_FILE = 'summary.json'


def pydantic_error(model, data: dict, what: str) -> str | None:
    """Validate ``data`` against the pydantic ``model``; return a port-validator message, or None when valid."""
    from pydantic import ValidationError

    try:
        model.model_validate(data)
    except ValidationError as exception:
        return f'invalid {what}: {exception}'
    return None


class CapthermoCalcJob(engine.CalcJob):
    """Base class of the package's CalcJobs: scheduler defaults, summary file, shared exit codes."""

    _SUMMARY = SUMMARY_FILE
    _STDOUT = 'aiida.out'

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        spec.inputs['metadata']['options']['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        spec.inputs['metadata']['options']['withmpi'].default = False
        spec.inputs['metadata']['options']['output_filename'].default = cls._STDOUT
        spec.output('summary', valid_type=orm.Dict, required=False,
                    help='The machine-readable summary the console script wrote: inputs, units, timings, outputs.')
        spec.exit_code(303, 'ERROR_SUMMARY_MISSING',
                       message='The console script did not write `summary.json`: it crashed before finishing.')
        spec.exit_code(304, 'ERROR_SUMMARY_UNPARSABLE',
                       message='`summary.json` could not be parsed: {exception}')
        spec.exit_code(305, 'ERROR_OUTPUT_FILES_MISSING',
                       message='An output file named in the summary is missing from the retrieved folder: {filename}')
        spec.exit_code(310, 'ERROR_SCRIPT_FAILED',
                       message='The console script reported an error: {error}')
        spec.exit_code(400, 'ERROR_OUT_OF_WALLTIME',
                       message='The job ran out of walltime (the scheduler killed it, or the script stopped at its '
                               'own time limit): restart from its checkpoint.')
        spec.exit_code(401, 'ERROR_OUT_OF_MEMORY',
                       message='The job ran out of (GPU or host) memory: {error}')
