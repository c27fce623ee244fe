"""MLIP screening on the compute side: relax many structures in one batched TorchSim simulation (FIRE with a
Fréchet cell filter), or one at a time with ASE BFGS (the baseline), and harmonic phonons by phonopy finite
displacements whose displaced supercells are evaluated in batches.

No AiiDA here. torch/mace are imported inside the functions; the settings of ``capthermo-mlip screen``
(:class:`~aiida_capthermo.ml.settings.ScreenConfig`) live in :mod:`aiida_capthermo.ml.settings`. Units: energies eV,
forces eV/Å, lengths Å, frequencies THz.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ['load_calculator', 'relax', 'relax_batch', 'batched_forces', 'calculator_forces',
           'harmonic_phonons']


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


def relax_batch(model, systems: Sequence, fmax: float = 0.01, steps: int = 1000, cell: bool = True) -> list[tuple]:
    """Relax every structure of ``systems`` together in one batched TorchSim FIRE simulation.

    Every structure is one system of a single state (the model is evaluated once per step for all of them); with
    ``cell`` the cell relaxes too through TorchSim's Fréchet cell filter (cell forces = virial / number of atoms,
    as ASE's ``FrechetCellFilter``). A structure leaves the batch when its largest atomic force and (with ``cell``)
    its largest cell force are below ``fmax``; structures still in the batch after ``steps`` steps are returned
    unconverged, not dropped.

    Returns
    -------
    list of tuple
        Per input structure, in order: the relaxed ``ase.Atoms`` (a single-point calculator holds its energy,
        forces and stress) and a dict as :func:`relax` returns.
    """
    import ase
    import torch
    import torch_sim as ts
    from ase.calculators.singlepoint import SinglePointCalculator
    from torch_sim.quantities import systemwise_max_force

    if not systems:
        return []
    device, dtype = model.device, model.dtype
    state = ts.io.atoms_to_state(list(systems), device, dtype)
    if cell:
        init, update = ts.optimizers.frechet_cell_fire(model)
    else:
        init, update = ts.optimizers.fire(model)
    state = init(state)
    initial = state.energy.detach().cpu().numpy().copy()
    active = list(range(len(systems)))
    results: list = [None] * len(systems)

    def converged(current) -> torch.Tensor:
        done = systemwise_max_force(current) < fmax
        if cell:
            done &= current.cell_forces.norm(dim=2).max(dim=1).values < fmax
        return done

    def finish(popped, index: int, step: int, is_converged: bool) -> None:
        forces = popped.forces.detach().cpu().numpy()
        energy = float(popped.energy.detach().cpu().numpy()[0])
        stress = popped.stress.detach().cpu().numpy()[0] if getattr(popped, 'stress', None) is not None else None
        atoms = ase.Atoms(numbers=systems[index].numbers, positions=popped.positions.detach().cpu().numpy(),
                          cell=popped.row_vector_cell.detach().cpu().numpy()[0], pbc=True)
        voigt = None if stress is None else np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2],
                                                      stress[0, 2], stress[0, 1]])
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=voigt)
        results[index] = (atoms, {
            'energy': energy, 'initial_energy': float(initial[index]), 'energy_per_atom': energy / len(atoms),
            'converged': bool(is_converged), 'steps': step, 'max_force': float(np.linalg.norm(forces, axis=1).max()),
            'max_stress': None if stress is None else float(np.abs(stress).max()),
        })

    step = 0
    while active:
        done = converged(state).cpu().numpy()
        last = step == steps
        leaving = [system for system in range(len(active)) if done[system] or last]
        if leaving:
            for system, popped in zip(leaving, state.pop(leaving) if len(leaving) < len(active) else state.split()):
                finish(popped, active[system], step, bool(done[system]))
            active = [index for system, index in enumerate(active) if system not in set(leaving)]
            if not active:
                break
        state = update(state)
        step += 1
    return results


#: Structures per model call of :func:`batched_forces` on the CPU with ``batch_size='auto'``: 8 was the fastest on
#: one thread for 40-atom cells (1.24x over one by one; 64 was 0.6x: a large graph falls out of cache).
CPU_FORCE_BATCH = 8


def batched_forces(model, batch_size: int | str = 'auto'):
    """A forces function ``f(list of ase.Atoms) -> list of [N, 3] arrays`` (eV/Å) that evaluates the structures
    ``batch_size`` at a time in one call of the TorchSim ``model`` each; ``'auto'``: on a GPU as many as half its
    free memory holds (:func:`aiida_capthermo.ml.thermal.memory_batch_size`), on the CPU :data:`CPU_FORCE_BATCH`."""
    import torch_sim as ts

    from aiida_capthermo.ml.thermal import memory_batch_size

    sized = {}  # 'auto' is sized once, on the first call's cells (a memory probe is a model call of its own)

    def forces(cells: Sequence) -> list[np.ndarray]:
        size = batch_size
        if size == 'auto':
            if 'size' not in sized:
                sized['size'] = (memory_batch_size(model, list(cells))['batch_size']
                                 if str(model.device).startswith('cuda') else CPU_FORCE_BATCH)
            size = sized['size']
        result = []
        for first in range(0, len(cells), size):
            chunk = list(cells[first:first + size])
            state = ts.io.atoms_to_state(chunk, model.device, model.dtype)
            output = model(state)
            values = output['forces'].detach().cpu().numpy()
            system = state.system_idx.cpu().numpy()
            result.extend(values[system == index] for index in range(len(chunk)))
        return result

    return forces


def calculator_forces(calc):
    """A forces function (as :func:`batched_forces`) that evaluates the structures one by one with an ASE
    calculator (the baseline of the benchmarks)."""

    def forces(cells: Sequence) -> list[np.ndarray]:
        result = []
        for cell in cells:
            cell = cell.copy()
            cell.calc = calc
            result.append(np.array(cell.get_forces()))
        return result

    return forces


def phonopy_from_forces(atoms, forces, supercell: Sequence[int] = (1, 1, 1), displacement: float = 0.01):
    """A ``Phonopy`` object of ``atoms`` (its own primitive cell) with symmetrised force constants of the diagonal
    ``supercell`` from finite ``displacement`` (Å); ``forces`` evaluates all displaced supercells in one call."""
    import ase
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unitcell = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=np.asarray(atoms.cell),
                            scaled_positions=atoms.get_scaled_positions())
    phonon = Phonopy(unitcell, supercell_matrix=np.diag([int(s) for s in supercell]), primitive_matrix=np.eye(3))
    phonon.generate_displacements(distance=float(displacement))
    displaced = [ase.Atoms(symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, pbc=True)
                 for cell in phonon.supercells_with_displacements]
    phonon.forces = np.array(forces(displaced))
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()
    return phonon


def harmonic_phonons(atoms, forces, supercell: Sequence[int] = (1, 1, 1), displacement: float = 0.01,
                     mesh: Sequence[int] | None = None, imaginary_threshold: float = -0.1) -> dict:
    """Harmonic phonons of ``atoms`` by phonopy finite displacements.

    Parameters
    ----------
    atoms
        The (relaxed) cell.
    forces
        Forces function of the displaced supercells (:func:`batched_forces`, :func:`calculator_forces`).
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
        [N, N, 3, 3] (eV/Å², of the supercell, symmetrised), ``phonopy`` (the Phonopy object).
    """
    phonon = phonopy_from_forces(atoms, forces, supercell, displacement)
    gamma = np.sort(np.asarray(phonon.get_frequencies([0.0, 0.0, 0.0])))
    n_gamma = int(np.sum(gamma < imaginary_threshold))
    result = {'gamma_frequencies': gamma, 'mesh_frequencies': None, 'n_imaginary_gamma': n_gamma,
              'n_imaginary': n_gamma, 'min_frequency': float(gamma.min()),
              'n_displacements': len(phonon.supercells_with_displacements),
              'force_constants': np.asarray(phonon.force_constants), 'phonopy': phonon}
    if mesh is not None:
        phonon.run_mesh([int(m) for m in mesh], is_gamma_center=True)
        frequencies = np.asarray(phonon.get_mesh_dict()['frequencies'])
        result.update(mesh_frequencies=frequencies, n_imaginary=int(np.sum(frequencies < imaginary_threshold)),
                      min_frequency=float(min(frequencies.min(), gamma.min())))
    return result


def total_dos(phonon, mesh: Sequence[int], sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Total phonon DOS of ``phonon`` (its current force constants) on a Γ-centred ``mesh``: the frequency points
    (THz; imaginary modes at negative frequencies) and the DOS (states/THz per cell: it integrates to 3N), each mesh
    frequency a Gaussian of width ``sigma`` (THz) weighted by its q point's symmetry weight."""
    phonon.run_mesh([int(m) for m in mesh], is_gamma_center=True)
    phonon.run_total_dos(sigma=float(sigma), freq_pitch=float(sigma) / 4.0)
    dos = phonon.get_total_dos_dict()
    return np.asarray(dos['frequency_points']), np.asarray(dos['total_dos'])


#: The standard path of the simple-cubic Brillouin zone (Setyawan-Curtarolo) Γ-X-M-Γ-R-X | M-R: its special points
#: in reciprocal lattice coordinates of the (near-)cubic cell, and the two continuous pieces.
CUBIC_POINTS = {'Γ': [0.0, 0.0, 0.0], 'X': [0.0, 0.5, 0.0], 'M': [0.5, 0.5, 0.0], 'R': [0.5, 0.5, 0.5]}
CUBIC_PATH = [['Γ', 'X', 'M', 'Γ', 'R', 'X'], ['M', 'R']]


def special_path(cell) -> tuple[dict, list]:
    """The special points (reciprocal lattice coordinates of ``cell`` [3, 3]) and the pieces of the standard band path
    of its Bravais lattice (Setyawan-Curtarolo, through ASE's ``Cell.bandpath``, lattice found within 2 %):
    :data:`CUBIC_POINTS` and :data:`CUBIC_PATH` for a (near-)cubic cell, as the disordered supercells of a cubic
    parent are; any other lattice (a hexagonal wurtzite, a tetragonal kesterite) its own."""
    from ase.cell import Cell

    path = Cell(np.asarray(cell, dtype=float)).bandpath(eps=0.02, npoints=0)
    if path.path == 'GXMGRX,MR':
        return CUBIC_POINTS, CUBIC_PATH
    names = {'G': 'Γ'}
    points = {names.get(k, k): np.asarray(v, dtype=float).tolist() for k, v in path.special_points.items()}
    pieces, piece = [], []
    for piece_text in path.path.split(','):
        piece = []
        for char in piece_text:  # ASE's labels are a letter with an optional digit (e.g. 'X1')
            if char.isdigit() and piece:
                piece[-1] += char
            else:
                piece.append(names.get(char, char))
        pieces.append(piece)
    return points, pieces


def band_structure(phonon, npoints: int = 31) -> dict:
    """Phonon bands of ``phonon`` along the standard path of its cell's lattice (:func:`special_path`;
    :data:`CUBIC_PATH` for a cubic parent), ``npoints`` per segment.

    Returns ``qpoints`` [n_q, 3] (reciprocal lattice coordinates), ``distances`` [n_q] (1/Å, cumulative, as
    phonopy), ``frequencies`` [n_q, 3N] (THz) and ``labels``: (index of the q point, name) at both ends of every
    segment (a break such as X|M shows as two consecutive labelled points).
    """
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections

    points, pieces = special_path(phonon.unitcell.cell)
    path = [[points[name] for name in piece] for piece in pieces]
    qpoints, connections = get_band_qpoints_and_path_connections(path, npoints=npoints)
    phonon.run_band_structure(qpoints, path_connections=connections)
    bands = phonon.get_band_structure_dict()
    labels, start = [], 0
    segments = [(piece[i], piece[i + 1]) for piece in pieces for i in range(len(piece) - 1)]
    for (first, last), segment in zip(segments, bands['qpoints']):
        labels += [(start, first), (start + len(segment) - 1, last)]
        start += len(segment)
    return {'qpoints': np.concatenate(bands['qpoints']), 'distances': np.concatenate(bands['distances']),
            'frequencies': np.concatenate(bands['frequencies']), 'labels': labels}
