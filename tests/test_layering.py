"""The science core (``aiida_capthermo.core``) must import neither AiiDA nor torch (docs/architecture.md)."""

import json
import pkgutil
import subprocess
import sys

import aiida_capthermo.core

FORBIDDEN = ('aiida', 'torch', 'torch_geometric', 'mace')

_SCRIPT = """
import importlib, json, pkgutil, sys
import aiida_capthermo.core as core
names = sorted('aiida_capthermo.core.' + m.name for m in pkgutil.iter_modules(core.__path__))
for name in names:
    importlib.import_module(name)
forbidden = {forbidden!r}
loaded = sorted(m for m in sys.modules if m.split('.')[0] in forbidden)
print(json.dumps({{'modules': names, 'loaded': loaded}}))
"""


def test_core_modules_import_neither_aiida_nor_torch():
    expected = sorted('aiida_capthermo.core.' + m.name for m in pkgutil.iter_modules(aiida_capthermo.core.__path__))
    assert {'aiida_capthermo.core.structures', 'aiida_capthermo.core.solid_solution'} <= set(expected)
    result = subprocess.run(
        [sys.executable, '-c', _SCRIPT.format(forbidden=FORBIDDEN)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['modules'] == expected
    assert report['loaded'] == [], f'core modules pulled in {report["loaded"]}'


_COMPUTE_SCRIPT = """
import importlib, json, pkgutil, sys
import aiida_capthermo.compute as compute
names = sorted('aiida_capthermo.compute.' + m.name for m in pkgutil.iter_modules(compute.__path__))
for name in names:
    importlib.import_module(name)
print(json.dumps({'modules': names, 'loaded': sorted(m for m in sys.modules if m.split('.')[0] == 'aiida')}))
"""


def test_compute_side_scripts_import_no_aiida():
    """The console scripts the jobs run (aiida_capthermo.compute) need no AiiDA: a cluster without it runs them; the
    user's command line (aiida_capthermo.cli) is the AiiDA side."""
    import aiida_capthermo.cli
    import aiida_capthermo.compute

    result = subprocess.run([sys.executable, '-c', _COMPUTE_SCRIPT], capture_output=True, text=True, check=False,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {'aiida_capthermo.compute.gnn', 'aiida_capthermo.compute.label', 'aiida_capthermo.compute.mace',
            'aiida_capthermo.compute.mace_resolve', 'aiida_capthermo.compute.mlip',
            'aiida_capthermo.compute.summary'} == set(report['modules'])
    assert report['loaded'] == [], f'compute-side modules pulled in {report["loaded"]}'
    assert [m.name for m in pkgutil.iter_modules(aiida_capthermo.cli.__path__)] == ['main']


def test_one_mapping_of_error_kinds_to_exit_codes():
    """Every error kind a script or MACE's log can report names an exit code that some CalcJob of the package has,
    and every such exit code takes the error text (``{error}``) or nothing: the base parser formats it alone."""
    import string
    from importlib.metadata import entry_points

    from aiida.plugins import CalculationFactory

    from aiida_capthermo.compute.summary import ERROR_KINDS

    jobs = [CalculationFactory(ep.name) for ep in entry_points(group='aiida.calculations')
            if ep.name.startswith('capthermo.')]
    assert len(jobs) >= 8
    for kind, label in ERROR_KINDS.items():
        having = [job for job in jobs if label in job.exit_codes]
        assert having, f'no CalcJob has {label} (error kind {kind})'
        for job in having:
            fields = {name for _, name, _, _ in string.Formatter().parse(job.exit_codes[label].message) if name}
            assert fields <= {'error'}, (job.__name__, label, fields)


_AIIDA_LAYER_SCRIPT = """
import importlib, json, pkgutil, sys
from aiida.manage import get_manager
from aiida.storage.sqlite_temp import SqliteTempBackend

import aiida_capthermo
names = []
for package in ('workflows', 'calculations', 'parsers', 'data', 'cli'):
    module = importlib.import_module('aiida_capthermo.' + package)
    names += sorted(f'aiida_capthermo.{{package}}.' + m.name for m in pkgutil.iter_modules(module.__path__))
for name in names:
    importlib.import_module(name)
get_manager().load_profile(SqliteTempBackend.create_profile('layering'), allow_switch=True)
from aiida import orm
from aiida_capthermo.cli.main import ensure_codes
from aiida_capthermo.workflows.study import CapthermoStudyWorkChain

orm.Computer(label='localhost', hostname='localhost', transport_type='core.local', scheduler_type='core.direct',
             workdir='/tmp').store().configure(use_login_shell=False)
codes = {{name: code for name, (code, _) in ensure_codes('localhost').items()}}
builder = CapthermoStudyWorkChain.get_builder_from_protocol(
    codes['capthermo-label'], codes['capthermo-gnn'], codes['mace_run_train'], protocol='demo',
    mlip_code=codes['capthermo-mlip'], evaluate_code=codes['capthermo-mace'])
error = CapthermoStudyWorkChain.spec().inputs.validate(builder._inputs(prune=True))
forbidden = {forbidden!r}
print(json.dumps({{'modules': names, 'error': None if error is None else str(error),
                  'loaded': sorted(m for m in sys.modules if m.split('.')[0] in forbidden)}}))
"""


def test_aiida_layers_import_no_torch():
    """Every module of the AiiDA layer (workflows, calculations, parsers, data, cli) imports, and the demo study's
    builder is built and validated, without loading torch or any library on top of it: submitting (and
    ``--dry-run``) stays fast on a login node, and the settings classes the validators need live in torch-free
    modules."""
    forbidden = ('torch', 'torch_sim', 'mace', 'e3nn', 'torch_geometric')
    result = subprocess.run([sys.executable, '-c', _AIIDA_LAYER_SCRIPT.format(forbidden=forbidden)],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert {'aiida_capthermo.workflows.study', 'aiida_capthermo.workflows.batch_label',
            'aiida_capthermo.calculations.mlip', 'aiida_capthermo.cli.main'} <= set(report['modules'])
    assert report['error'] is None, report['error']
    assert report['loaded'] == [], f'the AiiDA layer pulled in {report["loaded"]}'
