"""Langevin molecular dynamics with an ASE calculator, and the stability verdict of a potential.

A low validation error does not make a potential that MD can run with: a small MACE with 28 meV/Å force MAE broke
within 450 steps here (atoms at 1.05 Å). This module runs NVT Langevin dynamics and records what a stability check
needs: the temperature series (K), the potential energy (eV) and the shortest interatomic distance (Å, minimum
image) along the run. Single-structure ASE dynamics; the batched many-replica engine is TorchSim (DESIGN.md §3).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pydantic import Field, model_validator

from aiida_capthermo.ml.settings import ModelRunSettings

__all__ = ['MdConfig', 'MdStability', 'langevin_stability', 'min_pair_distance']


class MdConfig(ModelRunSettings):
    """Settings of ``capthermo-mlip md``: every structure runs at every temperature (one replica each); unknown keys
    are rejected."""

    temperatures: list[float] = Field(default_factory=lambda: [600.0], min_length=1,
                                      description='Target temperatures (K), one replica per structure and T.')
    steps: int = Field(5000, ge=1, description='MD steps per replica.')
    timestep: float = Field(1.0, gt=0, description='Time step (fs).')
    friction: float = Field(0.01, gt=0, description='Langevin friction (1/fs).')
    seed: int = Field(0, description='Seed; replica i uses seed + i.')
    stride: int = Field(10, ge=1, description='Steps between recorded frames.')
    frame_stride: int | None = Field(None, ge=1, description='Steps between frames written to frames.npz '
                                                             '(a multiple of stride; none written when unset).')
    stop_distance: float = Field(1.0, gt=0, description='Stop a replica when two atoms come closer than this (Å).')
    stable_distance: float = Field(1.8, gt=0, description='A stable replica keeps every pair above this (Å).')
    temperature_tolerance: float = Field(0.2, gt=0, description='A stable replica has its mean T (second half) '
                                                                'within this relative deviation of the target.')
    max_frame_force: float | None = Field(None, gt=0, description='Frames whose model force exceeds this (eV/Å) '
                                                                  'are not written (collapsed geometries).')

    @model_validator(mode='after')
    def _frames_on_recorded_steps(self) -> 'MdConfig':
        if self.frame_stride is not None and self.frame_stride % self.stride:
            raise ValueError(f'frame_stride {self.frame_stride} must be a multiple of stride {self.stride}')
        return self


def min_pair_distance(atoms) -> tuple[float, str]:
    """Shortest distance between two atoms of ``atoms`` (Å, minimum image) and their species (``'Ag-Ag'``)."""
    from ase.geometry import get_distances

    _, distances = get_distances(atoms.positions, cell=atoms.cell, pbc=atoms.pbc)  # [N, N]
    np.fill_diagonal(distances, np.inf)
    i, j = np.unravel_index(np.argmin(distances), distances.shape)
    symbols = atoms.get_chemical_symbols()
    return float(distances[i, j]), '-'.join(sorted((symbols[i], symbols[j])))


@dataclasses.dataclass
class MdStability:
    """Result of :func:`langevin_stability`. Series have one entry per recorded frame (every ``stride`` steps)."""

    target_temperature: float  # K
    time_fs: np.ndarray  # [n_frames]
    temperature: np.ndarray  # [n_frames] K, instantaneous kinetic temperature
    potential_energy: np.ndarray  # [n_frames] eV
    min_distance: np.ndarray  # [n_frames] Å
    closest_pair: list  # [n_frames] species of the closest pair, e.g. 'Ag-Ag'
    steps_done: int
    broke: str | None  # why the run was stopped early (NaN energy, atoms too close), else None
    frames: list = dataclasses.field(default_factory=list)  # ase.Atoms every `frame_stride` steps, when asked for

    def mean_temperature(self, discard_fraction: float = 0.5) -> float:
        """Mean kinetic temperature (K) after discarding the first ``discard_fraction`` of the frames."""
        start = int(len(self.temperature) * discard_fraction)
        return float(np.mean(self.temperature[start:]))

    def verdict(self, temperature_tolerance: float = 0.2, min_distance: float = 1.8) -> dict:
        """Stable when the run finished, the mean temperature of its second half is within ``temperature_tolerance``
        (relative) of the target, and no pair of atoms came closer than ``min_distance`` (Å)."""
        mean_t = self.mean_temperature() if len(self.temperature) else float('nan')
        closest = float(np.min(self.min_distance)) if len(self.min_distance) else float('nan')
        pair = self.closest_pair[int(np.argmin(self.min_distance))] if len(self.min_distance) else None
        relative = abs(mean_t - self.target_temperature) / self.target_temperature
        stable = self.broke is None and bool(relative <= temperature_tolerance) and bool(closest >= min_distance)
        return {'stable': stable, 'broke': self.broke, 'steps': self.steps_done,
                'time_ps': float(self.time_fs[-1]) / 1000.0 if len(self.time_fs) else 0.0,
                'target_temperature': self.target_temperature, 'mean_temperature': mean_t,
                'temperature_deviation': float(relative), 'min_distance': closest, 'closest_pair': pair}


def langevin_stability(atoms, calculator, temperature: float, steps: int = 5000, timestep: float = 1.0,
                       friction: float = 0.01, seed: int = 0, stride: int = 10,
                       min_distance: float = 1.0, frame_stride: int | None = None) -> MdStability:
    """Run NVT Langevin MD of a copy of ``atoms`` and record temperature, energy and shortest distance.

    Parameters
    ----------
    atoms
        Starting structure (not modified).
    calculator
        ASE calculator (e.g. a MACE model's).
    temperature
        Target temperature (K); velocities start from Maxwell-Boltzmann at this temperature, total momentum zero.
    steps, timestep
        Number of steps and time step (fs).
    friction
        Langevin friction (1/fs).
    seed
        Seed of the initial velocities and the Langevin noise.
    stride
        Record every ``stride`` steps.
    min_distance
        Stop early (``broke``) when two atoms come closer than this (Å); energies that are not finite stop it too.
    frame_stride
        Keep a copy of the structure every ``frame_stride`` steps (a multiple of ``stride``) in ``frames``, with
        the calculator's energy and forces attached as a single-point calculator; none kept when None.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = atoms.copy()
    atoms.calc = calculator
    atoms.set_constraint(FixCom())  # the centre of mass stays put (total momentum zero throughout)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dynamics = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                        rng=rng, fixcm=False)
    series = {'time_fs': [], 'temperature': [], 'potential_energy': [], 'min_distance': []}
    pairs, frames = [], []
    broke, done = None, 0
    while done < steps:
        chunk = min(stride, steps - done)
        dynamics.run(chunk)
        done += chunk
        energy = float(atoms.get_potential_energy())
        closest, pair = min_pair_distance(atoms)
        pairs.append(pair)
        if frame_stride and done % frame_stride == 0:
            frame = atoms.copy()
            frame.set_constraint()
            frame.calc = SinglePointCalculator(frame, energy=energy, forces=atoms.get_forces())
            frames.append(frame)
        series['time_fs'].append(done * timestep)
        series['temperature'].append(float(atoms.get_temperature()))
        series['potential_energy'].append(energy)
        series['min_distance'].append(closest)
        if not np.isfinite(energy) or not np.all(np.isfinite(atoms.positions)):
            broke = f'non-finite energy or positions at step {done}'
        elif closest < min_distance:
            broke = f'{pair} atoms {closest:.2f} Å apart at step {done}'
        if broke:
            break
    return MdStability(target_temperature=float(temperature), steps_done=done, broke=broke, closest_pair=pairs, frames=frames,
                       **{key: np.asarray(value, dtype=float) for key, value in series.items()})
