"""The tiny MACE of the MLIP tests: trained once per module with ``mace_run_train`` on LJ-labelled cells.

It is no physical model of Ag3SBr_xI_(1-x): 8 channels, max_L 0, r_max 4 Å, 2 epochs, float64, CPU, trained on twelve
rattled 10-atom Ag3S(I,Br) cells labelled by ASE's Lennard-Jones calculator. Tests check machinery against
independent numbers with it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.core.structures import antiperovskite

if TYPE_CHECKING:
    import ase

VENV_BIN = pathlib.Path(sys.executable).parent


def small_cell(bromide: bool, seed: int, rattle: float = 0.05) -> ase.Atoms:
    """10-atom 2x1x1 Ag3SI cell, one I replaced by Br when ``bromide``, rattled by ``rattle`` Å (normal)."""
    atoms = antiperovskite('Ag', 'S', 'I', 4.8).repeat((2, 1, 1))
    if bromide:
        symbols = atoms.get_chemical_symbols()
        symbols[0] = 'Br'
        atoms.set_chemical_symbols(symbols)
    atoms.positions += np.random.default_rng(seed).normal(0.0, rattle, atoms.positions.shape)
    return atoms


def lj_labelled_cells(n: int, rattle: float) -> LabelledSet:
    """``n`` small cells (Br in every other one), rattled by ``rattle`` Å and strained by up to 3 %, labelled by
    ASE's smooth Lennard-Jones (energy, forces, stress): training data of the tiny test potentials."""
    from ase.calculators.lj import LennardJones

    rng = np.random.default_rng(0)
    frames = []
    for index in range(n):
        atoms = small_cell(bool(index % 2), seed=100 + index, rattle=rattle)
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.03, 0.03)), scale_atoms=True)
        atoms.calc = LennardJones(sigma=2.3, epsilon=0.1, rc=4.5, smooth=True)
        atoms.get_potential_energy()
        atoms.get_stress()
        frames.append(atoms)
    return LabelledSet.from_atoms_list(frames)


@pytest.fixture(scope='module')
def mace_model_file(tmp_path_factory) -> pathlib.Path:
    """Train the tiny MACE with ``mace_run_train`` (about 10 s) and return the ``.model`` path."""
    from aiida_capthermo.calculations.mace import MaceHyperParameters, build_mace_config

    workdir = tmp_path_factory.mktemp('mlip_train')
    lj_labelled_cells(12, rattle=0.08).write_extxyz(workdir / 'train.xyz')
    params = MaceHyperParameters(num_channels=8, max_L=0, r_max=4.0, num_interactions=2, correlation=2, batch_size=4,
                                 device='cpu', default_dtype='float64', seed=1, max_num_epochs=2, valid_fraction=0.2,
                                 pair_repulsion=True)  # ZBL core: MD of the toy cannot collapse atoms
    config = build_mace_config(params, foundation=None, has_valid=False, has_test=False)
    (workdir / 'config.yaml').write_text(yaml.safe_dump(config))
    run = subprocess.run([str(VENV_BIN / 'mace_run_train'), '--config', 'config.yaml'], cwd=workdir,
                         capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    path = workdir / 'mace_model.model'
    assert path.is_file()
    return path


