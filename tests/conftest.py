"""Shared fixtures: an AiiDA test profile with the ZeroMQ broker (so the daemon and ``submit`` work),
the localhost computer and codes for the package's console scripts."""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

import pytest

pytest_plugins = ['aiida.tools.pytest_fixtures']


#: Test files that run for minutes (a whole study through the daemon): collected first, so that with
#: ``--dist loadfile --no-loadscope-reorder`` (scripts/run-tests.sh) one worker starts on them while the other
#: takes the rest, instead of the run ending on one of them alone.
LONG_FILES = ('test_study.py',)


def pytest_collection_modifyitems(config, items):
    """Move the tests of :data:`LONG_FILES` to the front, keeping the order within each group."""
    items.sort(key=lambda item: item.path.name not in LONG_FILES)


@pytest.fixture(scope='session')
def aiida_profile(aiida_config, aiida_profile_factory):
    """Temporary SQLite profile with the ZeroMQ broker: no services needed, ``submit`` and the daemon work."""
    with aiida_profile_factory(aiida_config, broker_backend='core.zeromq') as profile:
        yield profile


def script_path(name: str) -> str:
    """Absolute path of one of the package's console scripts in the running environment."""
    candidate = pathlib.Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f'console script {name} is not installed; run `pip install -e .`')
    return found


@pytest.fixture
def script_code(aiida_code_installed, aiida_localhost):
    """Factory: an ``InstalledCode`` on localhost for console script ``name`` (e.g. ``capthermo-label``); the one
    made before with that label and plugin when there is one, so that no label is taken twice on the computer (a
    second ``mace_run_train@localhost`` would make ``capthermo setup-codes`` ambiguous in a later test file)."""
    from aiida import orm

    def factory(name: str, default_calc_job_plugin: str | None = None):
        label = name.replace('-', '_')
        query = orm.QueryBuilder().append(orm.Computer, filters={'label': aiida_localhost.label}, tag='computer')
        query.append(orm.InstalledCode, with_computer='computer', filters={'label': label})
        for (code,) in query.all():
            if code.default_calc_job_plugin == default_calc_job_plugin and str(code.filepath_executable) == \
                    script_path(name):
                return code
        return aiida_code_installed(filepath_executable=script_path(name),
                                    default_calc_job_plugin=default_calc_job_plugin, label=label)

    return factory


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Keep numerical libraries to one thread per test process for reproducible CPU timings."""
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    yield


@pytest.fixture
def aiida_localhost(aiida_computer_local):
    """aiida's localhost computer, configured without a login shell. A login shell (`bash -l`, AiiDA's default)
    runs the user's profile for every submission and poll; where that profile runs `pyenv rehash`, one shell killed
    while it holds pyenv's lock leaves the lock behind, and every later login shell waits 60 s for it (a test run
    that took over 90 minutes). Every computer of the tests is configured so."""
    computer = aiida_computer_local(label='localhost', configure=False)
    if not computer.is_configured:
        computer.configure(use_login_shell=False, safe_interval=0.0)
    return computer


@pytest.fixture(scope='session')
def localhost_session(aiida_profile, tmp_path_factory):
    """A session-scoped localhost computer (core.local transport, core.direct scheduler) for module-scoped runs."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        return orm.load_computer('localhost-session')
    except NotExistent:
        computer = orm.Computer(label='localhost-session', hostname='localhost', transport_type='core.local',
                                scheduler_type='core.direct',
                                workdir=str(tmp_path_factory.mktemp('aiida-workdir'))).store()
        computer.configure(safe_interval=0.0, use_login_shell=False)  # see aiida_localhost
        computer.set_minimum_job_poll_interval(0.0)
        return computer
