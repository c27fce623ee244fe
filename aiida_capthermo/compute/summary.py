"""The machine-readable ``summary.json`` every console script writes, also when it fails.

One writer for every script: ``task``, ``inputs``, ``host``, ``python``, what the script adds (``outputs``,
``units``, metrics...), ``wall_time_s`` and, on failure, ``error``, ``error_kind`` and ``traceback``. The kinds are
those of :data:`ERROR_KINDS`; the parsers map each to the CalcJob's exit code of that name
(:class:`~aiida_capthermo.parsers.base.SummaryParser`), so a retry handler can tell a walltime stop from a NaN loss.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import platform
import signal
import sys
import time
import traceback

__all__ = ['ERROR_KINDS', 'WallClockLimitError', 'error_kind', 'summary_writer', 'wall_clock_limit']

#: error_kind -> the exit code (label) of the CalcJobs that report it; a job without that exit code reports
#: ``ERROR_SCRIPT_FAILED`` with the error message. The kinds come from the package's scripts (their exceptions'
#: ``error_kind``), from the MACE job's resolution script and from MACE's own log (``parsers.mace.detect_failure``).
ERROR_KINDS = {
    'out_of_memory': 'ERROR_OUT_OF_MEMORY',
    'walltime': 'ERROR_OUT_OF_WALLTIME',
    'no_data': 'ERROR_NO_TRAINING_DATA',
    'missing_labels': 'ERROR_MISSING_LABELS',
    'no_structure_labelled': 'ERROR_NO_STRUCTURE_LABELLED',
    'nan_loss': 'ERROR_NAN_LOSS',
    'invalid_input': 'ERROR_INVALID_INPUT',
    'foundation_not_obtainable': 'ERROR_FOUNDATION_NOT_OBTAINABLE',
    'resolve_failed': 'ERROR_REMOTE_RESOLUTION_FAILED',
    'exception': 'ERROR_SCRIPT_FAILED',
}


def error_kind(exception: BaseException) -> str:
    """The kind of a failure: the exception's own ``error_kind`` attribute (the package's exceptions carry one),
    out of memory, invalid input (validation errors, missing files), else ``exception``."""
    kind = getattr(exception, 'error_kind', None)
    if kind in ERROR_KINDS:
        return kind
    if isinstance(exception, MemoryError) or 'out of memory' in str(exception).lower():
        return 'out_of_memory'
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic is a dependency
        ValidationError = ()  # noqa: N806
    if isinstance(exception, (ValidationError, FileNotFoundError)):
        return 'invalid_input'
    return 'exception'


@contextlib.contextmanager
def summary_writer(path: str | pathlib.Path, task: str, inputs: dict):
    """Yield a dict to fill with outputs; write it with timings, and the error on an exception, at the end.

    The exception is re-raised after the summary is written, so the caller decides the exit status (the console
    scripts return 1).
    """
    summary: dict = {'task': task, 'inputs': inputs, 'host': platform.node(), 'python': sys.version.split()[0],
                     'error': None}
    start = time.perf_counter()
    try:
        yield summary
    except BaseException as exception:
        summary['error'] = f'{type(exception).__name__}: {exception}'
        summary['error_kind'] = error_kind(exception)
        summary['traceback'] = traceback.format_exc()
        raise
    finally:
        summary['wall_time_s'] = time.perf_counter() - start
        pathlib.Path(path).write_text(json.dumps(summary, indent=2, default=_to_json))


def _to_json(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class WallClockLimitError(RuntimeError):
    """The task ran to its wall-clock limit (``max_seconds``)."""

    error_kind = 'walltime'


@contextlib.contextmanager
def wall_clock_limit(seconds: float | None):
    """Raise :class:`WallClockLimitError` in the block after ``seconds`` (None: no limit), wherever it is: a SIGALRM
    interrupts a step that would never return (a NaN state that sends a neighbour search into an endless loop)."""
    if not seconds:
        yield
        return
    message, fired = f'the task reached its wall-clock limit of {seconds:.0f} s (max_seconds) and stopped', []

    def stop(signum, frame):
        fired.append(True)
        raise WallClockLimitError(message)

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    except Exception as exception:
        if fired and not isinstance(exception, WallClockLimitError):  # raised inside an import, say: ImportError
            raise WallClockLimitError(message) from exception
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
