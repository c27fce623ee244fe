"""The science core (``aiida_capthermo.core``) must import neither AiiDA nor torch (DESIGN.md §3)."""

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
            'aiida_capthermo.compute.mlip', 'aiida_capthermo.compute.summary'} == set(report['modules'])
    assert report['loaded'] == [], f'compute-side modules pulled in {report["loaded"]}'
    assert [m.name for m in pkgutil.iter_modules(aiida_capthermo.cli.__path__)] == ['main']


def test_one_mapping_of_error_kinds_to_exit_codes():
    """Every error kind a script or MACE's log can report names an exit code that some CalcJob of the package has,
    and every such exit code takes the error text (``{error}``) or nothing: the base parser formats it alone."""
    import string

    from aiida.plugins import CalculationFactory
    from importlib.metadata import entry_points

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
