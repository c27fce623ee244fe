"""A production profile (PostgreSQL + RabbitMQ on localhost): submit to its daemon, export the study as an archive.

Skipped with a reason where the services are not reachable. Runs in subprocesses with their own ``AIIDA_PATH`` so
the session's test profile is not touched.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import uuid

import pytest

BIN = pathlib.Path(sys.executable).parent


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1.0):
            return True
    except OSError:
        return False


SUBMIT = """
import sys, time
from aiida import load_profile, orm
from aiida.engine import submit
load_profile()
from aiida_capthermo.workflows.dataset import PhononInformedDatasetWorkChain
code = orm.InstalledCode(computer=orm.load_computer('localhost'), filepath_executable=sys.argv[1],
                         label='capthermo-label', default_calc_job_plugin='capthermo.label').store()
builder = PhononInformedDatasetWorkChain.get_builder_from_protocol(code, protocol='demo', overrides={
    'scheme': 'random', 'random_amplitudes': [0.2], 'structures_per_temperature': 2, 'n_equilibrium': 0,
    'high_structures': 0})
node = submit(builder)
start = time.monotonic()
while not node.is_terminated and time.monotonic() - start < 400:
    time.sleep(1)
assert node.is_finished_ok, (node.process_state, node.exit_status, node.exit_message)
print('DATASET', node.outputs.low.uuid, node.outputs.low.n_structures)
"""

IMPORT = """
from aiida import load_profile, orm
load_profile()
from aiida.tools.archive import import_archive
import_archive(__import__('sys').argv[1])
node = orm.load_node(__import__('sys').argv[2])
print('IMPORTED', node.base.attributes.get('n_structures'), len(node.get_labelled_set()))
print('CREATOR', node.creator.process_label)
"""


@pytest.mark.services
@pytest.mark.skipif(not reachable(5432), reason='PostgreSQL is not reachable on 127.0.0.1:5432')
@pytest.mark.skipif(not reachable(5672), reason='RabbitMQ is not reachable on 127.0.0.1:5672')
def test_production_profile_daemon_and_archive(tmp_path):
    env = dict(os.environ, AIIDA_PATH=str(tmp_path / 'prod'), PATH=f'{BIN}:{os.environ["PATH"]}')
    name = f'capthermo-prod-{uuid.uuid4().hex[:8]}'
    verdi = str(BIN / 'verdi')

    def run(*args, **kwargs):
        return subprocess.run(args, env=env, check=True, capture_output=True, text=True, timeout=600, **kwargs)

    # A database of our own (template0, the server's default locale), then a psql_dos profile with RabbitMQ.
    import psycopg

    database = name.replace('-', '_')
    with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {database} TEMPLATE template0 ENCODING \'UTF8\'')
    setup = run(verdi, 'profile', 'setup', 'core.psql_dos', '--non-interactive', '--profile-name', name,
                '--email', 'prod@capthermo.local', '--first-name', 'Prod', '--last-name', 'Test', '--institution', 'CI',
                '--broker', 'core.rabbitmq', '--database-hostname', '127.0.0.1', '--database-port', '5432',
                '--database-username', 'postgres', '--database-password', '', '--database-name', database,
                '--repository-uri', f'file://{tmp_path}/repository')
    run(verdi, 'computer', 'setup', '--non-interactive', '--label', 'localhost', '--hostname', 'localhost',
        '--transport', 'core.local', '--scheduler', 'core.direct', '--work-dir', str(tmp_path / 'work'))
    run(verdi, 'computer', 'configure', 'core.local', 'localhost', '--non-interactive', '--safe-interval', '0')
    shown = run(verdi, 'profile', 'show', name).stdout
    assert 'core.psql_dos' in shown and 'core.rabbitmq' in shown, setup.stdout + shown
    run(verdi, 'daemon', 'start', '1')
    try:
        result = run(sys.executable, '-c', SUBMIT, str(BIN / 'capthermo-label'))
    finally:
        subprocess.run([verdi, 'daemon', 'stop'], env=env, capture_output=True, timeout=120)
    dataset_uuid, n_structures = result.stdout.split('DATASET')[1].split()
    assert int(n_structures) == 2

    archive = tmp_path / 'study.aiida'
    run(verdi, 'archive', 'create', '--all', str(archive))
    assert archive.stat().st_size > 0

    # Import the study into a fresh SQLite profile: the dataset and its provenance come along.
    env_import = dict(env, AIIDA_PATH=str(tmp_path / 'import'))
    subprocess.run([verdi, 'presto', '--use-zeromq', '--profile-name', 'importer'], env=env_import, check=True,
                   capture_output=True, timeout=300)
    imported = subprocess.run([sys.executable, '-c', IMPORT, str(archive), dataset_uuid], env=env_import, check=True,
                              capture_output=True, text=True, timeout=300).stdout
    assert 'IMPORTED 2 2' in imported and 'CREATOR assemble_dataset' in imported
    with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS {database} WITH (FORCE)')
