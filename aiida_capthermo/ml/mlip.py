"""MLIP screening on the compute side: load a MACE model as an ASE calculator, relax structures, harmonic phonons.

No AiiDA here. torch/mace are imported inside the functions, so importing this module (for :class:`ScreenConfig`)
is cheap. Units: energies eV, forces eV/Å, lengths Å, frequencies THz.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ['ScreenConfig', 'load_calculator', 'relax', 'harmonic_phonons']


class ScreenConfig(BaseModel):
    """Settings of ``capthermo-mlip screen`` (unknown keys are rejected)."""

    model_config = ConfigDict(extra='forbid')

    fmax: float = Field(0.01, gt=0, description='Force convergence criterion of BFGS (eV/Å), stress included.')
    max_steps: int = Field(500, ge=1, description='Maximum number of BFGS steps per structure.')
    relax_cell: bool = Field(True, description='Relax the cell (FrechetCellFilter) as well as the positions.')
    phonons: bool = Field(False, description='Compute harmonic phonons of every relaxed structure.')
    supercell: list[int] = Field(default_factory=lambda: [1, 1, 1], description='Diagonal phonon supercell.')
    displacement: float = Field(0.01, gt=0, description='Finite displacement of the phonon calculation (Å).')
    mesh: list[int] | None = Field(None, description='Optional q-mesh for phonon frequencies besides Γ.')
    imaginary_threshold: float = Field(-0.1, le=0, description='Frequencies below this (THz) count as imaginary.')
    device: Literal['auto', 'cpu', 'cuda'] = 'auto'
    dtype: Literal['float64', 'float32'] = 'float64'

    @field_validator('supercell', 'mesh')
    @classmethod
    def _three_positive(cls, value):
        if value is not None and (len(value) != 3 or min(value) < 1):
            raise ValueError(f'expected three positive integers, got {value}')
        return value


def load_calculator(model_path: str, device: str = 'auto', dtype: str = 'float64'):
    """Return a ``MACECalculator`` for the MACE ``.model`` file ``model_path`` on ``device`` (auto: cuda if present)."""
    from mace.calculators import MACECalculator

    from aiida_capthermo.ml.mace import resolve_device

    return MACECalculator(model_paths=str(model_path), device=resolve_device(device), default_dtype=dtype)


def relax(atoms, calc, fmax: float = 0.01, steps: int = 500, cell: bool = True) -> tuple:
    """Relax ``atoms`` (a copy) with BFGS, on a ``FrechetCellFilter`` when ``cell`` is True.

    Parameters
    ----------
    atoms
        The starting structure (not modified).
    calc
        The ASE calculator.
    fmax
        Convergence criterion (eV/Å); with the cell filter it also bounds the stress times volume.
    steps
        Maximum number of optimiser steps.
    cell
        Relax cell degrees of freedom too.

    Returns
    -------
    tuple
        The relaxed ``ase.Atoms`` (a single-point calculator holds the final energy, forces and stress, since
        ``calc`` may be reused for other structures) and a dict with
        ``energy`` and ``initial_energy`` (eV), ``energy_per_atom`` (eV/atom), ``converged``, ``steps``,
        ``max_force`` (eV/Å) and ``max_stress`` (eV/Å^3).
    """
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    atoms = atoms.copy()
    atoms.calc = calc
    initial = float(atoms.get_potential_energy())
    target = FrechetCellFilter(atoms) if cell else atoms
    optimizer = BFGS(target, logfile=None)
    converged = bool(optimizer.run(fmax=fmax, steps=steps))
    energy = float(atoms.get_potential_energy())
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)  # calc is shared
    return atoms, {
        'energy': energy, 'initial_energy': initial, 'energy_per_atom': energy / len(atoms), 'converged': converged,
        'steps': int(optimizer.nsteps), 'max_force': float(np.linalg.norm(forces, axis=1).max()),
        'max_stress': float(np.abs(stress).max()),
    }


def harmonic_phonons(atoms, calc, supercell: Sequence[int] = (1, 1, 1), displacement: float = 0.01,
                     mesh: Sequence[int] | None = None, imaginary_threshold: float = -0.1) -> dict:
    """Harmonic phonons of ``atoms`` by phonopy finite displacements with forces from ``calc``.

    Parameters
    ----------
    atoms
        The (relaxed) cell.
    calc
        The ASE calculator giving forces.
    supercell
        Diagonal supercell of ``atoms`` for the force constants.
    displacement
        Finite displacement (Å).
    mesh
        Optional q-point mesh; its frequencies are returned too and counted for imaginary modes.
    imaginary_threshold
        Frequencies below this value (THz, negative = imaginary) count as imaginary modes.

    Returns
    -------
    dict
        ``gamma_frequencies`` [3N] (THz, sorted), ``mesh_frequencies`` [n_q, 3N] or None, ``n_imaginary`` (Γ plus
        mesh when given), ``n_imaginary_gamma``, ``min_frequency`` (THz), ``n_displacements``, ``force_constants``
        [N, N, 3, 3] (eV/Å², of the supercell, symmetrised).
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unitcell = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.asarray(atoms.cell),
                            scaled_positions=atoms.get_scaled_positions())
    phonon = Phonopy(unitcell, supercell_matrix=np.diag([int(s) for s in supercell]), primitive_matrix=np.eye(3))
    phonon.generate_displacements(distance=float(displacement))
    forces = []
    import ase

    for displaced in phonon.supercells_with_displacements:
        cell = ase.Atoms(symbols=displaced.symbols, cell=displaced.cell, scaled_positions=displaced.scaled_positions,
                         pbc=True)
        cell.calc = calc
        forces.append(np.array(cell.get_forces()))
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()
    gamma = np.sort(np.asarray(phonon.get_frequencies([0.0, 0.0, 0.0])))
    n_gamma = int(np.sum(gamma < imaginary_threshold))
    result = {'gamma_frequencies': gamma, 'mesh_frequencies': None, 'n_imaginary_gamma': n_gamma,
              'n_imaginary': n_gamma, 'min_frequency': float(gamma.min()), 'n_displacements': len(forces),
              'force_constants': np.asarray(phonon.force_constants)}
    if mesh is not None:
        phonon.run_mesh([int(m) for m in mesh], is_gamma_center=True)
        frequencies = np.asarray(phonon.get_mesh_dict()['frequencies'])
        result.update(mesh_frequencies=frequencies, n_imaginary=int(np.sum(frequencies < imaginary_threshold)),
                      min_frequency=float(min(frequencies.min(), gamma.min())))
    return result
