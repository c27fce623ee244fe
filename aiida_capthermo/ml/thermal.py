"""Batched Langevin molecular dynamics of many replicas in one simulation with TorchSim (``torch-sim-atomistic``).

Every (structure, temperature, seed) of a study is one system of a single TorchSim state: the model is loaded once
and all replicas are evaluated in one model call per step (BAOAB Langevin, ``torch_sim.integrators.nvt_langevin``;
``npt_langevin`` with the model's stress for NPT). Replicas start from Maxwell-Boltzmann velocities drawn from their
own seed with zero total momentum; the Langevin noise of the batch comes from torch's generator seeded with the
batch seed (recorded). With ``fix_com`` the total momentum of every replica is removed after each step and the
centre of mass shifted back to where it was (the Langevin noise would otherwise make the crystal diffuse); the
kinetic temperature then counts 3N - 3 degrees of freedom.

A replica that blows up (non-finite energy or positions, two atoms closer than ``stop_distance``, kinetic
temperature above ``max_temperature_ratio`` times the target) is taken out of the batch with the reason and the
step; the others go on.

Units: Å, eV, amu, fs, K (TorchSim works in ASE's internal units: time in Å sqrt(amu/eV)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from ase import units
from pydantic import Field, model_validator
from torch_sim.models.interface import ModelInterface

from aiida_capthermo.ml.settings import ModelRunSettings

__all__ = ['ThermalMdConfig', 'ModesConfig', 'ReplicaTrajectory', 'HarmonicModel', 'load_torchsim_model', 'run_replicas']


class ThermalMdConfig(ModelRunSettings):
    """Settings of ``capthermo-mlip thermal`` (unknown keys are rejected).

    The defaults are the paper's: time step 1 fs, friction 1e-3 fs^-1, 50 ps (the authors' scripts used 5e-3 fs^-1
    and 40 ps; the weaker coupling perturbs the dynamics less, the stronger one equilibrates faster).
    """

    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1,
                                      description='Target temperatures (K, > 0): every structure runs at each.')
    replicas: int = Field(1, ge=1, description='Independent replicas (seeds) per structure and temperature.')
    steps: int = Field(50000, ge=1, description='MD steps per replica.')
    timestep: float = Field(1.0, gt=0, description='Time step (fs).')
    friction: float = Field(1e-3, gt=0, description='Langevin friction (1/fs).')
    ensemble: Literal['nvt', 'npt'] = Field('nvt', description='NVT, or NPT with the model stress (Langevin barostat).')
    pressure: float = Field(0.0, description='External pressure of NPT (GPa).')
    seed: int = Field(0, ge=0, description='Replica r starts from seed + r; the Langevin noise of a batch from seed.')
    stride: int = Field(20, ge=1, description='Steps between recorded frames (positions, energies, temperatures).')
    store_velocities: bool = Field(False, description='Also record velocities (Å/fs) at every recorded frame.')
    fix_com: bool = Field(True, description='Remove the total momentum of every replica after each step.')
    stop_distance: float = Field(1.0, gt=0, description='Stop a replica when two atoms come closer than this (Å).')
    max_temperature_ratio: float = Field(3.0, gt=1, description='Stop a replica whose kinetic temperature exceeds '
                                                                'this multiple of its target.')
    max_batch: int | None = Field(None, ge=1, description='Replicas per batched simulation (memory); all at once '
                                                          'when unset.')
    select: list[int] | None = Field(None, description='Run only these replica ids (a restart of broken replicas).')

    @model_validator(mode='after')
    def _positive_temperatures(self) -> 'ThermalMdConfig':
        if min(self.temperatures) <= 0:
            raise ValueError(f'MD temperatures must be > 0 K, got {self.temperatures} (0 K is the relaxed structure)')
        return self

    def replica_table(self, n_structures: int) -> list[dict]:
        """Every replica: id, structure index, temperature (K) and seed, in id order (structure, T, seed)."""
        table = []
        for index in range(n_structures):
            for temperature in self.temperatures:
                for _ in range(self.replicas):
                    replica = len(table)
                    table.append({'replica': replica, 'index': index, 'temperature': float(temperature),
                                  'seed': self.seed + replica})
        if self.select is not None:
            unknown = sorted(set(self.select) - {row['replica'] for row in table})
            if unknown:
                raise ValueError(f'select names replicas {unknown} that do not exist (0..{len(table) - 1})')
            table = [row for row in table if row['replica'] in set(self.select)]
        return table


class ModesConfig(ModelRunSettings):
    """Settings of ``capthermo-mlip modes``: Γ phonons of each (relaxed) cell with the MLIP, every mode frozen at its
    thermal amplitude with both signs (unknown keys are rejected)."""

    temperatures: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1,
                                      description='Temperatures (K, >= 0) of the thermal amplitudes.')
    displacement: float = Field(0.01, gt=0, description='Finite displacement of the force constants (Å).')
    frequency_cutoff: float = Field(0.1, ge=0, description='Modes with |f| below this (THz) are left out.')
    imaginary: Literal['skip', 'absolute'] = Field('skip', description='Imaginary modes: left out, or frozen at '
                                                                       'the amplitude of |f|.')

    @model_validator(mode='after')
    def _temperatures(self) -> 'ModesConfig':
        if min(self.temperatures) < 0:
            raise ValueError(f'temperatures must be >= 0 K, got {self.temperatures}')
        return self


@dataclasses.dataclass
class ReplicaTrajectory:
    """One replica's recorded frames (every ``stride`` steps) and why it stopped early, if it did."""

    temperature_target: float  # K
    seed: int
    time_fs: np.ndarray  # [n_frames]
    temperature: np.ndarray  # [n_frames] K, kinetic
    potential_energy: np.ndarray  # [n_frames] eV
    min_distance: np.ndarray  # [n_frames] Å
    volume: np.ndarray  # [n_frames] Å^3
    positions: np.ndarray  # [n_frames, N, 3] Å (wrapped into the cell)
    cells: np.ndarray  # [n_frames, 3, 3] Å
    velocities: np.ndarray | None  # [n_frames, N, 3] Å/fs, when stored
    steps_done: int
    broke: str | None


class HarmonicModel(ModelInterface):
    """Harmonic crystal ``E = 1/2 u^T Phi u`` for TorchSim: every system is a copy of one reference structure.

    ``u`` is the minimum-image displacement from the reference positions (Å), ``Phi`` [3N, 3N] the force constants
    (eV/Å²). With ``bonds`` [B, 2] (atom pairs), ``directions`` [B, 3] (unit vectors from the first atom to the
    second) and ``quartic`` k4 (eV/Å⁴) a translation-invariant anharmonic term ``k4/4 sum_b (n_b . (u_j - u_i))^4``
    is added (k4 > 0 stiffens every bond: frequencies rise with temperature). It is a real potential, not a
    stand-in: the known-answer tests of the MD statistics and of the finite-temperature phonons run it through the
    same integrator as MACE.
    """

    def __init__(self, reference_positions: np.ndarray, force_constants: np.ndarray,
                 device: str | torch.device = 'cpu', dtype: torch.dtype = torch.float64,
                 bonds: np.ndarray | None = None, directions: np.ndarray | None = None, quartic: float = 0.0) -> None:
        super().__init__()
        self._device, self._dtype = torch.device(device), dtype
        self._compute_forces, self._compute_stress = True, False
        self.reference = torch.as_tensor(np.asarray(reference_positions), dtype=dtype, device=self._device)
        self.phi = torch.as_tensor(np.asarray(force_constants), dtype=dtype, device=self._device)
        n = self.reference.shape[0]
        if self.phi.shape != (3 * n, 3 * n):
            raise ValueError(f'force constants must be [3N, 3N] = {(3 * n, 3 * n)}, got {tuple(self.phi.shape)}')
        self.quartic = float(quartic)
        if self.quartic and (bonds is None or directions is None):
            raise ValueError('a quartic term needs bonds and their directions')
        if self.quartic:
            self.bonds = torch.as_tensor(np.asarray(bonds), dtype=torch.long, device=self._device)
            self.directions = torch.as_tensor(np.asarray(directions), dtype=dtype, device=self._device)

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        n_systems = state.n_systems
        cell = state.row_vector_cell  # [S, 3, 3] rows are lattice vectors
        positions = state.positions.reshape(n_systems, -1, 3)
        delta = positions - self.reference[None]
        fractional = torch.linalg.solve(cell.transpose(1, 2), delta.transpose(1, 2)).transpose(1, 2)
        delta = (fractional - torch.round(fractional)) @ cell  # minimum image [S, N, 3]
        u = delta.reshape(n_systems, -1)  # [S, 3N]
        force = -(u @ self.phi)  # Phi symmetric
        energy = -0.5 * torch.sum(u * force, dim=1)
        force = force.reshape(n_systems, -1, 3)
        if self.quartic:
            stretch = torch.einsum('sbk,bk->sb', delta[:, self.bonds[:, 1]] - delta[:, self.bonds[:, 0]],
                                   self.directions)  # [S, B]
            energy = energy + 0.25 * self.quartic * torch.sum(stretch**4, dim=1)
            pull = self.quartic * stretch[..., None] ** 3 * self.directions[None]  # dE/du_j of each bond [S, B, 3]
            force = force.index_add(1, self.bonds[:, 0], pull).index_add(1, self.bonds[:, 1], -pull)
        return {'energy': energy, 'forces': force.reshape(-1, 3)}


def load_torchsim_model(model_path: str, device: str, dtype: str, compute_stress: bool = False):
    """A MACE model (a ``.model`` file, or a named foundation: :func:`aiida_capthermo.ml.mace.load_mace_model`) as a
    TorchSim model: TorchSim 0.3's own ``torch_sim.models.mace.MaceModel`` (mace-torch 0.3.16's
    ``MaceTorchSimModel`` needs a newer TorchSim's neighbour list), else mace-torch's."""
    try:
        from torch_sim.models.mace import MaceModel as TorchSimMace
    except ImportError:  # TorchSim releases that moved the MACE wrapper into mace-torch
        from mace.calculators.mace_torchsim import MaceTorchSimModel as TorchSimMace

    from aiida_capthermo.ml.mace import load_mace_model, resolve_device

    device = resolve_device(device)
    return TorchSimMace(model=load_mace_model(str(model_path), device, dtype), device=torch.device(device),
                        dtype=getattr(torch, dtype), compute_forces=True, compute_stress=compute_stress)


def _initial_momenta(masses: np.ndarray, temperature: float, seed: int) -> np.ndarray:
    """Maxwell-Boltzmann momenta (amu Å / ASE time) at ``temperature`` from ``seed``, total momentum zero."""
    rng = np.random.default_rng(seed)
    momenta = rng.normal(size=(len(masses), 3)) * np.sqrt(masses * units.kB * temperature)[:, None]
    return momenta - masses[:, None] * momenta.sum(axis=0) / masses.sum()


def _min_distances(positions: torch.Tensor, cell: torch.Tensor, system_idx: torch.Tensor, n_systems: int) -> np.ndarray:
    """Shortest minimum-image pair distance of every system (Å); exact below half the narrowest cell width."""
    result = np.empty(n_systems)
    for system in range(n_systems):
        pos = positions[system_idx == system]
        lattice = cell[system]
        delta = pos[:, None, :] - pos[None, :, :]
        fractional = torch.linalg.solve(lattice.T, delta.reshape(-1, 3).T).T
        delta = (fractional - torch.round(fractional)) @ lattice
        distance = torch.linalg.norm(delta, dim=1).reshape(len(pos), len(pos))
        distance.fill_diagonal_(float('inf'))
        result[system] = float(distance.min())
    return result


def _momenta(state) -> torch.Tensor:
    return state.momenta if hasattr(state, 'momenta') else state.velocities * state.masses.unsqueeze(-1)


def _set_momenta(state, momenta: torch.Tensor) -> None:
    if 'momenta' in {f.name for f in dataclasses.fields(state)}:
        state.momenta = momenta
    else:
        state.velocities = momenta / state.masses.unsqueeze(-1)


def _restore_centre_of_mass(state, before: torch.Tensor) -> None:
    """Shift every system back by the centre-of-mass displacement of the last step (minimum image per atom: the
    positions are wrapped into the cell), so the noise of the Langevin step does not make the crystal diffuse."""
    cell = state.row_vector_cell  # [S, 3, 3]
    inverse = torch.linalg.inv(cell)[state.system_idx]  # one 3x3 inverse per system, not per atom
    delta = state.positions - before
    fractional = torch.einsum('ni,nij->nj', delta, inverse)
    delta = torch.einsum('ni,nij->nj', fractional - torch.round(fractional), cell[state.system_idx])
    n_systems = state.n_systems
    weighted = torch.zeros((n_systems, 3), device=delta.device, dtype=delta.dtype).index_add_(
        0, state.system_idx, state.masses.unsqueeze(-1) * delta)
    mass = torch.zeros(n_systems, device=delta.device, dtype=delta.dtype).index_add_(0, state.system_idx, state.masses)
    state.positions = state.positions - (weighted / mass.unsqueeze(-1))[state.system_idx]


def run_replicas(model, systems: Sequence, temperatures: Sequence[float], seeds: Sequence[int], *, steps: int,
                 timestep: float = 1.0, friction: float = 1e-3, stride: int = 20, ensemble: str = 'nvt',
                 pressure: float = 0.0, fix_com: bool = True, store_velocities: bool = False,
                 stop_distance: float = 1.0, max_temperature_ratio: float = 3.0,
                 batch_seed: int = 0) -> list[ReplicaTrajectory]:
    """Run every system as a replica of one batched Langevin simulation; return one trajectory per system.

    Parameters
    ----------
    model
        A TorchSim model (``MaceTorchSimModel``, :class:`HarmonicModel`, ...).
    systems
        ``ase.Atoms`` starting structures, one per replica.
    temperatures, seeds
        Target temperature (K) and seed of each replica.
    steps, timestep, friction, stride
        Number of steps, time step (fs), Langevin friction (1/fs), steps between recorded frames.
    ensemble, pressure
        ``'nvt'`` or ``'npt'`` (external pressure in GPa, the model must give stress).
    fix_com, store_velocities, stop_distance, max_temperature_ratio, batch_seed
        See :class:`ThermalMdConfig`.
    """
    import torch_sim as ts

    n = len(systems)
    if not (len(temperatures) == len(seeds) == n) or n == 0:
        raise ValueError(f'need one temperature and one seed per system: {n} systems, {len(temperatures)} '
                         f'temperatures, {len(seeds)} seeds')
    device, dtype = model.device, model.dtype
    torch.manual_seed(batch_seed)
    state = ts.io.atoms_to_state(list(systems), device, dtype)
    kt_all = torch.tensor([units.kB * float(t) for t in temperatures], device=device, dtype=dtype)
    dt = torch.tensor(timestep * units.fs, device=device, dtype=dtype)
    gamma = torch.tensor(friction / units.fs, device=device, dtype=dtype)
    if ensemble == 'nvt':
        init, update = ts.integrators.nvt_langevin(model, dt=dt, kT=kt_all, gamma=gamma, seed=batch_seed)
        extra = {}
    elif ensemble == 'npt':
        external = torch.tensor(pressure * units.GPa, device=device, dtype=dtype)
        init, update = ts.integrators.npt_langevin(model, dt=dt, kT=kt_all, external_pressure=external, alpha=gamma,
                                                   seed=batch_seed)
        extra = {'external_pressure': external}
    else:
        raise ValueError(f'unknown ensemble {ensemble!r}')
    md = init(state, kT=kt_all)
    masses = [np.asarray(atoms.get_masses(), dtype=float) for atoms in systems]
    momenta = np.concatenate([_initial_momenta(m, t, s) for m, t, s in zip(masses, temperatures, seeds)])
    _set_momenta(md, torch.as_tensor(momenta, device=device, dtype=dtype))

    active = list(range(n))  # replica of each system still in the batch
    records = [{'time_fs': [], 'temperature': [], 'potential_energy': [], 'min_distance': [], 'volume': [],
                'positions': [], 'cells': [], 'velocities': []} for _ in range(n)]
    steps_done, broke = [steps] * n, [None] * n
    dof = [3 * len(atoms) - (3 if fix_com else 0) for atoms in systems]
    for step in range(1, steps + 1):
        before = md.positions.clone() if fix_com else None
        md = update(md, kT=kt_all[active], **extra)
        if fix_com:
            _restore_centre_of_mass(md, before)
            p = _momenta(md)
            total = torch.zeros((md.n_systems, 3), device=device, dtype=dtype).index_add_(0, md.system_idx, p)
            mass = torch.zeros(md.n_systems, device=device, dtype=dtype).index_add_(0, md.system_idx, md.masses)
            _set_momenta(md, p - md.masses.unsqueeze(-1) * (total / mass.unsqueeze(-1))[md.system_idx])
        if step % stride and step != steps:
            continue
        p = _momenta(md)
        kinetic = torch.zeros(md.n_systems, device=device, dtype=dtype).index_add_(
            0, md.system_idx, (p**2).sum(-1) / (2 * md.masses)).cpu().numpy()
        energy = md.energy.detach().cpu().numpy()
        positions = md.positions.detach().cpu().numpy()
        cells = md.row_vector_cell.detach().cpu().numpy()
        velocities = (p / md.masses.unsqueeze(-1)).detach().cpu().numpy() * units.fs  # Å/fs
        closest = _min_distances(md.positions.detach(), md.row_vector_cell.detach(), md.system_idx, md.n_systems)
        system_of_atom = md.system_idx.cpu().numpy()
        finished = []
        for system, replica in enumerate(active):
            atoms_mask = system_of_atom == system
            temperature = 2 * kinetic[system] / (dof[replica] * units.kB)
            record = records[replica]
            record['time_fs'].append(step * timestep)
            record['temperature'].append(float(temperature))
            record['potential_energy'].append(float(energy[system]))
            record['min_distance'].append(float(closest[system]))
            record['volume'].append(float(abs(np.linalg.det(cells[system]))))
            record['positions'].append(positions[atoms_mask])
            record['cells'].append(cells[system])
            if store_velocities:
                record['velocities'].append(velocities[atoms_mask])
            reason = None
            if not np.isfinite(energy[system]) or not np.all(np.isfinite(positions[atoms_mask])):
                reason = f'non-finite energy or positions at step {step}'
            elif closest[system] < stop_distance:
                reason = f'atoms {closest[system]:.2f} Å apart at step {step}'
            elif temperature > max_temperature_ratio * temperatures[replica]:
                reason = f'temperature {temperature:.0f} K at step {step} (target {temperatures[replica]:.0f} K)'
            if reason:
                broke[replica], steps_done[replica] = reason, step
                finished.append(system)
        if finished:
            if len(finished) == len(active):
                break
            md.pop(finished)
            active = [replica for system, replica in enumerate(active) if system not in set(finished)]
    return [ReplicaTrajectory(
        temperature_target=float(temperatures[r]), seed=int(seeds[r]), steps_done=steps_done[r], broke=broke[r],
        time_fs=np.asarray(records[r]['time_fs']), temperature=np.asarray(records[r]['temperature']),
        potential_energy=np.asarray(records[r]['potential_energy']),
        min_distance=np.asarray(records[r]['min_distance']), volume=np.asarray(records[r]['volume']),
        positions=np.asarray(records[r]['positions']).reshape(-1, len(systems[r]), 3),
        cells=np.asarray(records[r]['cells']).reshape(-1, 3, 3),
        velocities=np.asarray(records[r]['velocities']).reshape(-1, len(systems[r]), 3) if store_velocities else None,
    ) for r in range(n)]
