"""Helpers shared by the VASP engine tests and the registry generator (MOCK: VASP cannot run here).

- :func:`write_fake_potcars` writes minimal fake POTCAR files (only the header block that aiida-vasp's
  POTCAR parser reads; made-up numbers, no pseudopotential data) in aiida-vasp's family layout
  ``<family>/<symbol>/POTCAR``;
- :func:`upload_fake_family` uploads them as a potential family;
- :func:`mock_vasp_code` sets up aiida-vasp's ``mock-vasp`` executable as a ``vasp.vasp`` code;
- :func:`make_structures` builds the tiny, deterministic structures the registry was made for;
- :func:`double_command` writes the wrapper that lets ``mock-vasp`` run the test double.
"""

from __future__ import annotations

import pathlib
import stat
import sys

import numpy as np

TESTS = pathlib.Path(__file__).parent
REGISTRY = TESTS / 'fixtures' / 'vasp_registry'
FAMILY = 'capthermo-fake-PBE'
ELEMENTS = {'Ag': (107.9, 11.0), 'S': (32.1, 6.0), 'I': (126.9, 7.0), 'Br': (79.9, 7.0)}
MAPPING = {symbol: symbol for symbol in ELEMENTS}
#: k-point length of the test runs (Å): a 2x2x2 mesh on the 5-atom cells keeps the files small.
KPOINTS_LENGTH = 10.0

_POTCAR = """  PAW_PBE {symbol} 01Jan2000 (FAKE for aiida-capthermo tests: no pseudopotential data)
   {zval:.10f}
 parameters from PSCTR are:
   VRHFIN ={symbol}: fake
   LEXCH  = PE
   TITEL  = PAW_PBE {symbol} 01Jan2000
   POMASS = {mass:8.3f}; ZVAL   = {zval:8.3f}    mass and valenz
   ENMAX  =  250.000; ENMIN  =  200.000 eV
 END of PSCTR-controll parameters
 End of Dataset
"""


def write_fake_potcars(folder: pathlib.Path) -> pathlib.Path:
    """Write fake POTCARs for Ag, S, I, Br under ``folder/<FAMILY>/<symbol>/POTCAR``; return the family folder."""
    family = pathlib.Path(folder) / FAMILY
    for symbol, (mass, zval) in ELEMENTS.items():
        (family / symbol).mkdir(parents=True, exist_ok=True)
        (family / symbol / 'POTCAR').write_text(_POTCAR.format(symbol=symbol, mass=mass, zval=zval))
    return family


def upload_fake_family(folder: pathlib.Path) -> str:
    """Upload the fake POTCARs as the potential family :data:`FAMILY` (once per profile); return its label."""
    from aiida_vasp.data.potcar import PotcarData

    if PotcarData.get_potcar_group(FAMILY) is None:
        PotcarData.upload_potcar_family(str(write_fake_potcars(folder)), FAMILY, 'Fake POTCARs for tests',
                                        stop_if_existing=False)
    return FAMILY


def mock_vasp_code(computer):
    """An InstalledCode running aiida-vasp's ``mock-vasp`` (from this environment) with the ``vasp.vasp`` plugin."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    executable = pathlib.Path(sys.executable).parent / 'mock-vasp'
    label = 'mock-vasp'
    try:
        return orm.load_code(f'{label}@{computer.label}')
    except NotExistent:
        code = orm.InstalledCode(computer=computer, filepath_executable=str(executable), label=label,
                                 default_calc_job_plugin='vasp.vasp')
        return code.store()


def double_command(folder: pathlib.Path) -> str:
    """Write an executable wrapper that runs ``tests/vasp_double.py`` with this Python; return its path."""
    path = pathlib.Path(folder) / 'vasp-double'
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TESTS / "vasp_double.py"}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def make_structures() -> dict:
    """Tiny deterministic ase structures: rattled 5-atom Ag3SI and Ag3SBr cells, plus one unregistered cell.

    Returns ``{key: (atoms, metadata)}`` with ``metadata`` = x, temperature, origin.
    """
    from ase import Atoms

    scaled = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    specs = {
        'ag3si_300k': ('I', 4.869, 300.0, 0.0, 1),
        'ag3sbr_600k': ('Br', 4.793, 600.0, 1.0, 2),
        'unregistered': ('I', 4.80, 100.0, 0.0, 3),
    }
    result = {}
    for key, (halide, a, temperature, x, seed) in specs.items():
        atoms = Atoms(f'{halide}SAg3', scaled_positions=scaled, cell=np.eye(3) * a, pbc=True)
        atoms.rattle(0.04, seed=seed)
        result[key] = (atoms, {'x': x, 'temperature': temperature, 'origin': 'phonon'})
    return result


def structure_nodes(keys) -> dict:
    """Stored StructureData for ``keys`` of :func:`make_structures`, with the package's metadata."""
    from aiida import orm

    from aiida_capthermo.data.structures import set_structure_metadata

    nodes = {}
    for key, (atoms, metadata) in make_structures().items():
        if key in keys:
            nodes[key] = set_structure_metadata(orm.StructureData(ase=atoms), **metadata).store()
    return nodes


def mock_options(registry: pathlib.Path, vasp_cmd: str | None = None) -> dict:
    """``metadata.options`` for mock-vasp runs on localhost: serial, registry (and recorder) in the environment."""
    environment = {'MOCK_VASP_REG_BASE': str(registry)}
    if vasp_cmd:
        environment['MOCK_VASP_VASP_CMD'] = vasp_cmd
    return {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'withmpi': False,
            'max_wallclock_seconds': 600, 'environment_variables': environment}

