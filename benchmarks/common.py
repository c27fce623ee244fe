"""What every benchmark records beside its numbers: the machine and its load, and one way to write the result.

The JSON files beside the scripts (``benchmarks/bench_*.json``) are the results the docs quote; a rerun of a script
with its defaults overwrites its file.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform

HERE = pathlib.Path(__file__).parent


def machine(threads: int | None = None, device: str = 'cpu') -> dict:
    """The facts of the machine a benchmark ran on, with its load average at the end of the run (other jobs on
    shared cores slow every timing: compare ratios taken in the same run)."""
    import numpy as np

    facts = {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
             'cpu': cpu_model(),
             'cpu_count': os.cpu_count(), 'python': platform.python_version(), 'numpy': np.__version__,
             'threads': threads, 'device': device, 'load_average_1_5_15_min': list(os.getloadavg())}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return facts
    facts['torch'] = torch.__version__
    if device.startswith('cuda') and torch.cuda.is_available():
        facts['gpu'] = torch.cuda.get_device_name()
    return facts


def cpu_model() -> dict:
    """The CPU's model name and widest vector extension from /proc/cpuinfo (Linux; empty elsewhere): float results
    of BLAS and of torch on the CPU differ in the last bits between code paths, and a chaotic run (MD, float32
    training) amplifies them, so a run's record names its CPU."""
    try:
        with open('/proc/cpuinfo') as handle:
            lines = [line.split(':', 1) for line in handle if ':' in line]
    except OSError:
        return {}
    info = {key.strip(): value.strip() for key, value in reversed(lines)}  # the first processor's
    flags = set(info.get('flags', '').split())
    vector = next((name for name in ('avx512f', 'avx2', 'avx', 'sse4_2') if name in flags), None)
    return {'model_name': info.get('model name'), 'vector': vector}


def default_output(name: str) -> str:
    """``benchmarks/bench_<name>.json``: the committed result of a benchmark."""
    return str(HERE / f'bench_{name}.json')


def write_result(result: dict, output: str) -> None:
    """Write ``result`` as JSON to ``output`` (folders created) and print it."""
    path = pathlib.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + '\n')
    print(json.dumps(result, indent=1))
