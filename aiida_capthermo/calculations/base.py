"""Base CalcJob of the plugin: shared exit codes for jobs that run one of the package's console scripts.

Every console script of the package writes ``summary.json`` (inputs, units, outputs, timings and an
``error`` key when it failed). Exit codes follow the AiiDA bands: 3xx output missing or unparsable,
4xx failures a retry may fix, 7xx warnings; any code below 400 invalidates the cache.
"""

from __future__ import annotations

from aiida import engine, orm

from aiida_capthermo.exit_codes import EXIT_CODES

__all__ = ['CapthermoCalcJob', 'DEFAULT_RESOURCES', 'SUMMARY_FILE', 'EXECUTABLES', 'code_error', 'code_validator',
           'job_options', 'options_error', 'pydantic_error', 'validate_options']

SUMMARY_FILE = 'summary.json'

#: The executable behind each CalcJob plugin (the package's console scripts, MACE's trainer, VASP): a code set up
#: for one of them cannot run the jobs of another.
EXECUTABLES = {
    'capthermo-label': ('capthermo.label',),
    'capthermo-gnn': ('capthermo.gnn_train', 'capthermo.gnn_predict'),
    'capthermo-mace': ('capthermo.mace_evaluate',),
    'capthermo-mlip': ('capthermo.mlip_screen', 'capthermo.mlip_phonons', 'capthermo.mlip_md', 'capthermo.mlip_thermal',
                       'capthermo.mlip_modes'),
    'mace_run_train': ('capthermo.mace_finetune',),
    'vasp': ('vasp.vasp',),
}


def code_error(code: orm.AbstractCode, entry_point: str) -> str | None:
    """Why ``code`` cannot run ``entry_point`` jobs, or None.

    Decided by the code's default CalcJob plugin when it has one (``capthermo setup-codes`` sets it), else by the
    name of its executable; a code with neither (e.g. a wrapper script without a default plugin) is accepted.
    """
    import pathlib

    wanted = next((name for name, plugins in EXECUTABLES.items() if entry_point in plugins), entry_point)
    plugin = code.default_calc_job_plugin
    if plugin:
        if plugin == entry_point or entry_point in next((p for p in EXECUTABLES.values() if plugin in p), ()):
            return None
        return f'code {code.full_label} is set up for {plugin} jobs, not {entry_point}: give a {wanted} code'
    executable = pathlib.PurePath(str(getattr(code, 'filepath_executable', '') or '')).name
    if executable in EXECUTABLES and entry_point not in EXECUTABLES[executable]:
        return f'code {code.full_label} runs {executable}, not {wanted} ({entry_point} jobs)'
    return None


def options_error(options: dict) -> str | None:
    """Why ``options`` are not valid scheduler options of a CalcJob (``metadata.options``), or None."""
    known = set(engine.CalcJob.spec().inputs['metadata']['options'])
    unknown = sorted(set(options) - known)
    if unknown:
        return f'unknown scheduler options {unknown}; see `metadata.options` of a CalcJob (e.g. queue_name, ' \
               'max_wallclock_seconds, resources, custom_scheduler_commands, environment_variables)'
    return None


#: The resources every capthermo job takes unless its options say otherwise (one process on one machine).
DEFAULT_RESOURCES = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}


def job_options(inputs, *names: str) -> dict:
    """The ``metadata.options`` of a stage's job: the first of the Dict inputs ``names`` the stage was given (a job
    kind's own options, e.g. ``md_options``, before the stage's ``options``), with :data:`DEFAULT_RESOURCES` where
    it names none. A builder validates options assigned as a whole, so they must carry the resources."""
    options = next((inputs[name].get_dict() for name in names if name in inputs), {})
    return {'resources': dict(DEFAULT_RESOURCES), **options}


def validate_options(value: orm.Dict | None, _) -> str | None:
    """Port validator of a Dict of scheduler options that a workchain passes to its jobs."""
    return None if value is None else options_error(value.get_dict())


def code_validator(entry_point: str):
    """A port validator refusing codes that cannot run ``entry_point`` jobs (see :func:`code_error`)."""

    def validate(value, _) -> str | None:
        return None if value is None else code_error(value, entry_point)

    return validate


def pydantic_error(model, data: dict, what: str) -> str | None:
    """Validate ``data`` against the pydantic ``model``; return a port-validator message, or None when valid: one
    ``field: reason (got value)`` per error, without pydantic's links and type tags."""
    from pydantic import ValidationError

    try:
        model.model_validate(data)
    except ValidationError as exception:
        reasons = []
        for error in exception.errors():
            where = '.'.join(str(part) for part in error['loc'])
            reason = str(error['msg']).removeprefix('Value error, ')
            got = '' if error['type'] in ('missing', 'value_error') else f' (got {error.get("input")!r})'
            reasons.append(f'{where}: {reason}{got}' if where else f'{reason}{got}')
        return f'invalid {what}: ' + '; '.join(reasons)
    return None


class CapthermoCalcJob(engine.CalcJob):
    """Base class of the package's CalcJobs: scheduler defaults, summary file, shared exit codes."""

    _SUMMARY = SUMMARY_FILE
    _STDOUT = 'aiida.out'

    @classmethod
    def define(cls, spec: engine.CalcJobProcessSpec) -> None:
        super().define(spec)
        from aiida.plugins.entry_point import get_entry_point_from_class

        _, entry_point = get_entry_point_from_class(cls.__module__, cls.__name__)
        if entry_point is not None:
            spec.inputs['code'].validator = code_validator(entry_point.name)
        spec.inputs['metadata']['options']['resources'].default = dict(DEFAULT_RESOURCES)
        spec.inputs['metadata']['options']['withmpi'].default = False
        spec.inputs['metadata']['options']['output_filename'].default = cls._STDOUT
        spec.output('summary', valid_type=orm.Dict, required=False,
                    help='The machine-readable summary the console script wrote: inputs, units, timings, outputs.')
        spec.exit_code(EXIT_CODES['ERROR_SUMMARY_MISSING'], 'ERROR_SUMMARY_MISSING',
                       message='The console script did not write `summary.json`: it crashed before finishing.')
        spec.exit_code(EXIT_CODES['ERROR_SUMMARY_UNPARSABLE'], 'ERROR_SUMMARY_UNPARSABLE',
                       message='`summary.json` could not be parsed: {exception}')
        spec.exit_code(EXIT_CODES['ERROR_OUTPUT_FILES_MISSING'], 'ERROR_OUTPUT_FILES_MISSING',
                       message='An output file named in the summary is missing from the retrieved folder: {filename}')
        spec.exit_code(EXIT_CODES['ERROR_SCRIPT_FAILED'], 'ERROR_SCRIPT_FAILED',
                       message='The console script reported an error: {error}')
        spec.exit_code(EXIT_CODES['ERROR_OUT_OF_WALLTIME'], 'ERROR_OUT_OF_WALLTIME',
                       message='The job ran out of walltime (the scheduler killed it, or the script stopped at its '
                               'own time limit): restart from its checkpoint.')
        spec.exit_code(EXIT_CODES['ERROR_OUT_OF_MEMORY'], 'ERROR_OUT_OF_MEMORY',
                       message='The job ran out of (GPU or host) memory: {error}')
