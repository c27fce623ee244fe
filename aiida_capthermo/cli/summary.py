"""The machine-readable ``summary.json`` every console script writes, also when it fails."""

from __future__ import annotations

import contextlib
import json
import pathlib
import platform
import time
import traceback

__all__ = ['summary_writer']


@contextlib.contextmanager
def summary_writer(path: str | pathlib.Path, task: str, inputs: dict):
    """Yield a dict to fill with outputs; write it with timings, and ``error`` on an exception, at the end.

    The exception is re-raised after the summary is written so the process exits non-zero.
    """
    summary: dict = {'task': task, 'inputs': inputs, 'host': platform.node(), 'error': None}
    start = time.perf_counter()
    try:
        yield summary
    except BaseException as exception:
        summary['error'] = f'{type(exception).__name__}: {exception}'
        summary['error_kind'] = 'out_of_memory' if 'out of memory' in str(exception).lower() else 'exception'
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
    raise TypeError(f'cannot serialise {type(value).__name__}')
