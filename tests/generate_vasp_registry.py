"""Regenerate ``tests/fixtures/vasp_registry`` (the mock-vasp registry of the VASP engine tests).

Run ``python tests/generate_vasp_registry.py`` from the repository root. It deletes the registry and
runs ``tests/test_vasp.py::test_generate_registry`` with ``CAPTHERMO_RECORD_VASP_REGISTRY`` set: the
``VaspLabelWorkChain`` runs (PBEsol preset, low fidelity) on the registered test structures with
aiida-vasp's ``mock-vasp`` as the VASP code and ``MOCK_VASP_VASP_CMD`` pointing at the test double
(``tests/vasp_double.py``). ``mock-vasp`` finds no matching entry, runs the double and records the
inputs (INCAR, POSCAR, KPOINTS exactly as aiida-vasp wrote them) and outputs into the registry; the test
renames each entry ``pbesol-<key>`` and drops the scheduler files. The outputs are the double's model
numbers in VASP formats, not VASP results.
"""

import os
import pathlib
import shutil
import subprocess
import sys

REGISTRY = pathlib.Path(__file__).parent / 'fixtures' / 'vasp_registry'

if __name__ == '__main__':
    shutil.rmtree(REGISTRY, ignore_errors=True)
    env = dict(os.environ, CAPTHERMO_RECORD_VASP_REGISTRY=str(REGISTRY))
    test = pathlib.Path(__file__).parent / 'test_vasp.py'
    command = [sys.executable, '-m', 'pytest', f'{test}::test_generate_registry',
               '-q', '-p', 'no:cacheprovider']
    sys.exit(subprocess.call(command, env=env))
