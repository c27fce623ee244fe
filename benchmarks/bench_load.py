"""Load: a dataset workchain of N structures labelled by the local engine in batches, through the daemon, on the
embedded profile (SQLite + ZeroMQ) and on PostgreSQL + RabbitMQ.

    python benchmarks/bench_load.py [--n 2000] [--backends sqlite postgres] [--output benchmarks/bench_load.json]

The labels are ASE's EMT on an A3BX prototype of EMT metals (Cu3Au(Ag,Pd)): milliseconds per structure, so what is
measured is the AiiDA layer: generating and storing the structures (calcfunctions), the labelling jobs (upload,
submission, retrieval, parsing, the dataset nodes), the merge. Reported per backend: wall time from submission to
the end, the labelling scripts' own time, the calcfunctions' time, the nodes added, the database and repository
sizes, and the AiiDA layer's time per structure (wall time less the scripts' time spread over the parallel jobs).
Each backend gets a fresh profile in a temporary AIIDA_PATH (removed afterwards; PostgreSQL's database dropped).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

BIN = pathlib.Path(sys.executable).parent

_RUN = r'''
import json, sys, time
from aiida import load_profile, orm
from aiida.engine import submit
load_profile()
from aiida_capthermo.workflows.dataset import PhononInformedDatasetWorkChain
n, batch_size, max_concurrent = (int(v) for v in sys.argv[1:4])
computer = orm.load_computer('localhost')
code = orm.InstalledCode(computer=computer, filepath_executable=sys.argv[4], label='capthermo-label',
                         default_calc_job_plugin='capthermo.label', prepend_text='export OMP_NUM_THREADS=1').store()
amplitudes = [0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16]
builder = PhononInformedDatasetWorkChain.get_builder_from_protocol(code, protocol='demo', overrides={
    'prototype': {'a': 'Cu', 'b': 'Au', 'host': 'Ag', 'guest': 'Pd', 'a_host': 3.9, 'a_guest': 3.8},
    'scheme': 'random', 'random_amplitudes': amplitudes, 'structures_per_temperature': n // len(amplitudes),
    'n_equilibrium': 0, 'high_structures': 0, 'batch_size': batch_size, 'max_concurrent': max_concurrent,
    'low': {'calculator': {'name': 'emt'}}})
before = orm.QueryBuilder().append(orm.Node).count()
start = time.monotonic()
node = submit(builder)
while not node.is_terminated:
    time.sleep(1.0)
wall = time.monotonic() - start
jobs = [c for c in node.called_descendants if isinstance(c, orm.CalcJobNode)]
functions = [c for c in node.called_descendants if isinstance(c, orm.CalcFunctionNode)]
script = sum(job.outputs.summary['wall_time_s'] for job in jobs if 'summary' in job.outputs)
print(json.dumps({'exit_status': node.exit_status, 'wall_s': wall, 'n_structures': node.outputs.low.n_structures
                  if 'low' in node.outputs else 0, 'n_jobs': len(jobs), 'script_s': script,
                  'calcfunction_s': sum((f.mtime - f.ctime).total_seconds() for f in functions),
                  'nodes_added': orm.QueryBuilder().append(orm.Node).count() - before}))
'''


def verdi(*args, env, check=True):
    return subprocess.run([str(BIN / 'verdi'), *args], env=env, capture_output=True, text=True, check=check)


def run_backend(backend: str, n: int, batch_size: int, max_concurrent: int) -> dict:
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f'bench-load-{backend}-'))
    env = {**os.environ, 'AIIDA_PATH': str(folder), 'OMP_NUM_THREADS': '1', 'PATH': f'{BIN}:{os.environ["PATH"]}'}
    name = f'bench-load-{backend}-{os.getpid()}'
    if backend == 'sqlite':
        verdi('presto', '--profile-name', name, '--email', 'bench@capthermo.local', '--use-zeromq', env=env)
    else:  # as tests/test_services.py: a database of our own (template0: the server's default locale) + RabbitMQ
        import psycopg

        database = name.replace('-', '_')
        with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database} TEMPLATE template0 ENCODING 'UTF8'")
        verdi('profile', 'setup', 'core.psql_dos', '--non-interactive', '--profile-name', name, '--email',
              'bench@capthermo.local', '--first-name', 'Bench', '--last-name', 'Load', '--institution', 'CI',
              '--broker', 'core.rabbitmq', '--database-hostname', '127.0.0.1', '--database-port', '5432',
              '--database-username', 'postgres', '--database-password', '', '--database-name', database,
              '--repository-uri', f'file://{folder}/repository', env=env)
        verdi('computer', 'setup', '--non-interactive', '--label', 'localhost', '--hostname', 'localhost',
              '--transport', 'core.local', '--scheduler', 'core.direct', '--work-dir', str(folder / 'work'), env=env)
        verdi('computer', 'configure', 'core.local', 'localhost', '--non-interactive', '--safe-interval', '0',
              env=env)
        verdi('-p', name, 'config', 'set', 'runner.poll.interval', '1', env=env)  # as presto sets it
    info = verdi('profile', 'show', name, env=env).stdout
    try:
        verdi('daemon', 'start', '2', env=env)
        result = subprocess.run([sys.executable, '-c', _RUN, str(n), str(batch_size), str(max_concurrent),
                                 str(BIN / 'capthermo-label')], env=env, capture_output=True, text=True, check=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        verdi('daemon', 'stop', env=env, check=False)
    broker = next((line.split(':', 1)[1].strip() for line in info.splitlines()
                   if line.strip().startswith('backend: core.') and 'sqlite' not in line and 'psql' not in line), '?')
    storage = next((line.split(':', 1)[1].strip() for line in info.splitlines()
                    if line.strip().startswith('backend: core.') and ('sqlite' in line or 'psql' in line)), '?')
    measured.update(backend=backend, storage=storage, broker=broker, batch_size=batch_size,
                    max_concurrent=max_concurrent)
    measured['database_mb'] = _database_mb(backend, folder, info)
    measured['repository_mb'] = sum(p.stat().st_size for p in folder.rglob('*') if p.is_file()
                                    and not p.name.endswith(('.sqlite', '.sqlite-wal', '.sqlite-shm'))
                                    and 'container' in str(p)) / 2 ** 20
    parallel = min(max_concurrent, os.cpu_count() or 1)
    measured['aiida_ms_per_structure'] = 1000 * (measured['wall_s'] - measured['script_s'] / parallel) / max(
        measured['n_structures'], 1)
    measured['calcfunction_ms_per_structure'] = 1000 * measured['calcfunction_s'] / max(measured['n_structures'], 1)
    verdi('profile', 'delete', '--force', name, env=env, check=False)
    if backend == 'postgres':
        import psycopg

        with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS {name.replace("-", "_")}')
    shutil.rmtree(folder, ignore_errors=True)
    return measured


def _database_mb(backend: str, folder: pathlib.Path, info: str) -> float:
    if backend == 'sqlite':
        return sum(p.stat().st_size for p in folder.rglob('*.sqlite*') if p.is_file()) / 2 ** 20
    database = next((line.split(':', 1)[1].strip() for line in info.splitlines()
                     if line.strip().startswith('database_name')), None)  # psql_dos: storage.config.database_name
    if database is None:
        return float('nan')
    size = subprocess.run(['psql', '-h', '127.0.0.1', '-U', 'postgres', '-tAc',
                           f"select pg_database_size('{database}')"], capture_output=True, text=True)
    return int(size.stdout.strip()) / 2 ** 20 if size.returncode == 0 and size.stdout.strip() else float('nan')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n', type=int, default=2000)
    parser.add_argument('--batch-size', type=int, default=100)
    parser.add_argument('--max-concurrent', type=int, default=4)
    parser.add_argument('--backends', nargs='+', default=['sqlite', 'postgres'], choices=['sqlite', 'postgres'])
    parser.add_argument('--output', default=str(pathlib.Path(__file__).parent / 'bench_load.json'),
                        help='JSON file to write (default: the committed benchmarks/bench_load.json, any cwd).')
    args = parser.parse_args()
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from common import machine, write_result

    results = []
    for backend in args.backends:
        results.append(run_backend(backend, args.n, args.batch_size, args.max_concurrent))
        write_result({'machine': machine(1, 'cpu'), 'n': args.n, 'results': results}, args.output)


if __name__ == '__main__':
    started = time.monotonic()
    main()
    print(f'total {time.monotonic() - started:.0f} s')
