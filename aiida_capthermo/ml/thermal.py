"""The package's one molecular-dynamics engine: batched Langevin MD of many replicas in one TorchSim simulation.

Every MD of the package runs here: the thermal stage (``capthermo-mlip thermal``), the stability check and the
refinement frames (``capthermo-mlip md``) and the finite-temperature phonons (``capthermo-mlip phonons``). Every
replica (a structure at a target temperature with its own seed) is one system of a single TorchSim state: the
model is loaded once and all replicas are evaluated in one model call per step (BAOAB Langevin,
``torch_sim.integrators.nvt_langevin``; ``npt_langevin`` with the model's stress for NPT). Replicas start from
Maxwell-Boltzmann velocities drawn from their own seed with zero total momentum; the Langevin noise of the batch
comes from torch's generator seeded with the batch seed (recorded). With ``fix_com`` the total momentum of every
replica is removed after each step and the centre of mass shifted back to where it was (the Langevin noise would
otherwise make the crystal diffuse); the kinetic temperature then counts 3N - 3 degrees of freedom.

The engine is split as TorchSim's integrators are (``*_init`` / ``*_step``): :func:`init_replicas` builds the
batched state, :func:`replica_step` advances it by one step, :func:`record_frame` appends every running replica's
frame to its record, and :func:`stop_blown_up` takes out the replicas that :func:`blow_up` (the one blow-up check:
non-finite energy or positions, two atoms closer than ``stop_distance``, kinetic temperature above
``max_temperature_ratio`` times the target) condemns, with the reason and the step; the others go on.
:func:`run_replicas` drives them. Each replica's :class:`ReplicaTrajectory` gives its stability verdict. The
settings of the MD tasks are in the torch-free :mod:`aiida_capthermo.ml.settings`; ASE's single-structure Langevin
is only the baseline of ``benchmarks/bench_thermal.py``.

Units: Å, eV, amu, fs, K (TorchSim works in ASE's internal units: time in Å sqrt(amu/eV)).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import units
from torch_sim.models.interface import ModelInterface

__all__ = ['ReplicaTrajectory', 'ReplicaBatch', 'HarmonicModel', 'load_torchsim_model', 'memory_batch_size',
           'batch_plan', 'min_pair_distances', 'blow_up', 'init_replicas', 'replica_step', 'record_frame',
           'stop_blown_up', 'run_replicas']

#: What a replica records at every recorded frame (each a list, one entry per frame).
_SERIES = ('time_fs', 'temperature', 'potential_energy', 'min_distance', 'closest_pair', 'volume', 'positions',
           'cells', 'velocities', 'forces')


@dataclasses.dataclass
class ReplicaTrajectory:
    """One replica's recorded frames (every ``stride`` steps, and the last step) and why it stopped early, if it did.
    Series have one entry per recorded frame."""

    temperature_target: float  # K
    seed: int
    time_fs: np.ndarray  # [n_frames]
    temperature: np.ndarray  # [n_frames] K, kinetic
    potential_energy: np.ndarray  # [n_frames] eV
    min_distance: np.ndarray  # [n_frames] Å, minimum image
    closest_pair: list  # [n_frames] species of the closest pair, e.g. 'Ag-Ag'
    volume: np.ndarray  # [n_frames] Å^3
    positions: np.ndarray  # [n_frames, N, 3] Å (wrapped into the cell)
    cells: np.ndarray  # [n_frames, 3, 3] Å
    velocities: np.ndarray | None  # [n_frames, N, 3] Å/fs, when stored
    forces: np.ndarray | None  # [n_frames, N, 3] eV/Å, the model's, when stored
    steps_done: int
    broke: str | None
    batch_seed: int = 0  # seed of the Langevin noise of the batch the replica ran in

    def mean_temperature(self, discard_fraction: float = 0.5) -> float:
        """Mean kinetic temperature (K) after discarding the first ``discard_fraction`` of the frames."""
        start = int(len(self.temperature) * discard_fraction)
        return float(np.mean(self.temperature[start:]))

    def verdict(self, temperature_tolerance: float = 0.2, stable_distance: float = 1.8) -> dict:
        """Stable when the run finished, the mean temperature of its second half is within ``temperature_tolerance``
        (relative) of the target, and no pair of atoms came closer than ``stable_distance`` (Å)."""
        mean_t = self.mean_temperature()
        closest = int(np.argmin(self.min_distance))
        relative = abs(mean_t - self.temperature_target) / self.temperature_target
        stable = (self.broke is None and bool(relative <= temperature_tolerance)
                  and bool(self.min_distance[closest] >= stable_distance))
        return {'stable': stable, 'broke': self.broke, 'steps': self.steps_done,
                'time_ps': float(self.time_fs[-1]) / 1000.0, 'target_temperature': self.temperature_target,
                'mean_temperature': mean_t, 'temperature_deviation': float(relative),
                'min_distance': float(self.min_distance[closest]), 'closest_pair': self.closest_pair[closest]}


@dataclasses.dataclass
class ReplicaBatch:
    """A batched Langevin run in progress: the TorchSim state of the replicas still running, the integrator's step
    and what every replica has recorded so far."""

    state: object  # TorchSim MD state of the running replicas, system s is replica active[s]
    update: Callable  # the integrator's step: update(state, kT=...) -> state
    kt: torch.Tensor  # [n_replicas] target k_B T of every replica (eV)
    extra: dict  # further arguments of the step (NPT: external pressure)
    targets: list[float]  # [n_replicas] target temperatures (K)
    dof: list[int]  # [n_replicas] kinetic degrees of freedom
    symbols: list[list[str]]  # [n_replicas] chemical symbols
    seeds: list[int]  # [n_replicas] seeds of the initial velocities
    active: list[int]  # replica of each system of the state
    records: list[dict]  # [n_replicas] lists named as _SERIES
    steps_done: list[int]
    broke: list[str | None]

    def forget_records(self) -> None:
        """Drop what the running replicas have recorded (the end of an equilibration): their records start again."""
        for replica in self.active:
            self.records[replica] = {name: [] for name in _SERIES}

    def trajectory(self, replica: int) -> ReplicaTrajectory:
        """The recorded frames of ``replica`` as arrays."""
        record, n_atoms = self.records[replica], len(self.symbols[replica])

        def frames(name: str, shape: tuple) -> np.ndarray | None:
            return np.asarray(record[name], dtype=float).reshape(-1, *shape) if record[name] else None

        return ReplicaTrajectory(
            temperature_target=self.targets[replica], seed=self.seeds[replica], steps_done=self.steps_done[replica],
            broke=self.broke[replica], closest_pair=list(record['closest_pair']),
            **{name: np.asarray(record[name], dtype=float)
               for name in ('time_fs', 'temperature', 'potential_energy', 'min_distance', 'volume')},
            positions=frames('positions', (n_atoms, 3)), cells=frames('cells', (3, 3)),
            velocities=frames('velocities', (n_atoms, 3)), forces=frames('forces', (n_atoms, 3)))


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


def load_torchsim_model(model_path: str, device: str, dtype: str, compute_stress: bool = False,
                        enable_cueq: bool = False):
    """A MACE model (a ``.model`` file, or a named foundation: :func:`aiida_capthermo.ml.mace.load_mace_model`) as a
    TorchSim model whose neighbour list is searched for every replica at once on ``device``
    (:class:`aiida_capthermo.ml.torchsim_mace.MaceModel`); with ``enable_cueq``, on cuEquivariance kernels where
    they are installed (its ``kernels`` says which ran)."""
    from aiida_capthermo.ml.mace import load_mace_model, resolve_device
    from aiida_capthermo.ml.torchsim_mace import MaceModel

    device = resolve_device(device)
    return MaceModel(load_mace_model(str(model_path), device, dtype), device=device, dtype=getattr(torch, dtype),
                     compute_forces=True, compute_stress=compute_stress, enable_cueq=enable_cueq)


#: Offset between the Langevin seeds of consecutive batches of :func:`run_replicas` (a prime).
BATCH_SEED_STRIDE = 7919

#: Share of the free GPU memory that :func:`memory_batch_size` fills with one model call.
MEMORY_FRACTION = 0.5


def memory_batch_size(model, systems: Sequence, fraction: float = MEMORY_FRACTION, probe_atoms: int = 2000) -> dict:
    """How many of ``systems`` (``ase.Atoms``) one call of ``model`` can take, from the device's free memory.

    On a GPU one model call on a probe batch (copies of the systems, about ``probe_atoms`` atoms) measures the
    peak memory per atom; the batch then fills ``fraction`` of the free memory, with room for the largest system.
    On the CPU memory is not the limit: every system goes in one call. Returns ``batch_size`` (at least 1, at most
    ``len(systems)``), ``bytes_per_atom`` (None on the CPU), ``free_bytes``, ``fraction`` and ``device``.
    """
    import torch_sim as ts

    n = len(systems)
    device = torch.device(model.device)
    if device.type != 'cuda' or n == 0:
        return {'batch_size': max(n, 1), 'bytes_per_atom': None, 'free_bytes': None, 'fraction': fraction,
                'device': str(device)}
    largest = max(len(atoms) for atoms in systems)
    copies = max(1, probe_atoms // largest)
    probe = ts.io.atoms_to_state([systems[i % n] for i in range(copies)], device, model.dtype)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    model(probe)
    torch.cuda.synchronize(device)
    per_atom = (torch.cuda.max_memory_allocated(device) - before) / probe.n_atoms
    del probe
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info(device)[0]
    fits = int(fraction * free / (per_atom * largest))
    return {'batch_size': max(1, min(n, fits)), 'bytes_per_atom': per_atom, 'free_bytes': free,
            'fraction': fraction, 'device': str(device)}


def batch_plan(model, systems: Sequence, max_batch: int | str | None) -> dict:
    """How many of ``systems`` go in one call of ``model``: ``max_batch`` when it is a number, all of them when it
    is None, and :func:`memory_batch_size`'s choice when it is ``'auto'``; the dict records which
    (``batch_size``, ``sized_by``: ``max_batch`` / ``all`` / ``memory``, and the memory figures when measured)."""
    if max_batch == 'auto':
        return {**memory_batch_size(model, systems), 'sized_by': 'memory'}
    if max_batch is None:
        return {'batch_size': max(len(systems), 1), 'sized_by': 'all'}
    return {'batch_size': int(max_batch), 'sized_by': 'max_batch'}


def min_pair_distances(positions: torch.Tensor, cell: torch.Tensor, system_idx: torch.Tensor,
                       n_systems: int) -> tuple[np.ndarray, np.ndarray]:
    """Shortest minimum-image pair distance of every system (Å, [S]) and the atoms of that pair (indices within the
    system, [S, 2]); exact below half the narrowest cell width."""
    distances, pairs = np.empty(n_systems), np.empty((n_systems, 2), dtype=int)
    for system in range(n_systems):
        pos = positions[system_idx == system]
        lattice = cell[system]
        delta = pos[:, None, :] - pos[None, :, :]
        fractional = torch.linalg.solve(lattice.T, delta.reshape(-1, 3).T).T
        delta = (fractional - torch.round(fractional)) @ lattice
        distance = torch.linalg.norm(delta, dim=1).reshape(len(pos), len(pos))
        distance.fill_diagonal_(float('inf'))
        flat = int(torch.argmin(distance))
        distances[system], pairs[system] = float(distance.flatten()[flat]), divmod(flat, len(pos))
    return distances, pairs


def blow_up(energy: float, positions: np.ndarray, closest: float, pair: str, temperature: float, target: float,
            step: int, *, stop_distance: float, max_temperature_ratio: float) -> str | None:
    """Why a replica must stop at ``step``, or None: a non-finite energy (eV) or position (Å), the ``pair`` of
    atoms (``'Ag-Ag'``) ``closest`` Å apart with ``closest`` below ``stop_distance`` (Å), or a kinetic
    ``temperature`` above ``max_temperature_ratio`` times the ``target`` (K)."""
    if not np.isfinite(energy) or not np.all(np.isfinite(positions)):
        return f'non-finite energy or positions at step {step}'
    if closest < stop_distance:
        return f'{pair} atoms {closest:.2f} Å apart at step {step}'
    if temperature > max_temperature_ratio * target:
        return f'temperature {temperature:.0f} K at step {step} (target {target:.0f} K)'
    return None


def _initial_momenta(masses: np.ndarray, temperature: float, seed: int) -> np.ndarray:
    """Maxwell-Boltzmann momenta (amu Å / ASE time) at ``temperature`` from ``seed``, total momentum zero."""
    rng = np.random.default_rng(seed)
    momenta = rng.normal(size=(len(masses), 3)) * np.sqrt(masses * units.kB * temperature)[:, None]
    return momenta - masses[:, None] * momenta.sum(axis=0) / masses.sum()


def _momenta(state) -> torch.Tensor:
    return state.momenta if hasattr(state, 'momenta') else state.velocities * state.masses.unsqueeze(-1)


def _set_momenta(state, momenta: torch.Tensor) -> None:
    if 'momenta' in {f.name for f in dataclasses.fields(state)}:
        state.momenta = momenta
    else:
        state.velocities = momenta / state.masses.unsqueeze(-1)


def _per_system(state, values: torch.Tensor) -> torch.Tensor:
    """Sum of per-atom ``values`` ([n_atoms] or [n_atoms, 3]) over the atoms of every system."""
    total = torch.zeros((state.n_systems, *values.shape[1:]), device=values.device, dtype=values.dtype)
    return total.index_add_(0, state.system_idx, values)


def _remove_drift(state, before: torch.Tensor) -> None:
    """Shift every system back by the centre-of-mass displacement of the last step (minimum image per atom: the
    positions are wrapped into the cell), so the noise of the Langevin step does not make the crystal diffuse, and
    remove its total momentum."""
    cell = state.row_vector_cell  # [S, 3, 3]
    inverse = torch.linalg.inv(cell)[state.system_idx]  # one 3x3 inverse per system, not per atom
    fractional = torch.einsum('ni,nij->nj', state.positions - before, inverse)
    delta = torch.einsum('ni,nij->nj', fractional - torch.round(fractional), cell[state.system_idx])
    mass = _per_system(state, state.masses).unsqueeze(-1)  # [S, 1]
    weights = state.masses.unsqueeze(-1)
    state.positions = state.positions - (_per_system(state, weights * delta) / mass)[state.system_idx]
    momenta = _momenta(state)
    _set_momenta(state, momenta - weights * (_per_system(state, momenta) / mass)[state.system_idx])


def init_replicas(model, systems: Sequence, temperatures: Sequence[float], seeds: Sequence[int], *,
                  timestep: float = 1.0, friction: float = 1e-3, ensemble: str = 'nvt', pressure: float = 0.0,
                  fix_com: bool = True, batch_seed: int = 0) -> ReplicaBatch:
    """The batched state of every system of ``systems`` (``ase.Atoms``) at its target temperature (K), with
    Maxwell-Boltzmann momenta from its seed, and the Langevin integrator's step (time step fs, friction 1/fs,
    ``'nvt'`` or ``'npt'`` at ``pressure`` GPa); see :func:`run_replicas`."""
    import torch_sim as ts

    n = len(systems)
    if not (len(temperatures) == len(seeds) == n) or n == 0:
        raise ValueError(f'need one temperature and one seed per system: {n} systems, {len(temperatures)} '
                         f'temperatures, {len(seeds)} seeds')
    bad = [t for t in temperatures if not (np.isfinite(t) and t > 0)]
    if bad:  # Maxwell-Boltzmann momenta would be NaN, and a NaN state never ends
        raise ValueError(f'MD temperatures must be finite and > 0 K, got {bad}')
    broken = [i for i, atoms in enumerate(systems) if not np.all(np.isfinite(atoms.positions))
              or not np.all(np.isfinite(atoms.cell[:]))]
    if broken:
        raise ValueError(f'systems {broken} have non-finite positions or cells')
    device, dtype = model.device, model.dtype
    torch.manual_seed(batch_seed)
    kt = torch.tensor([units.kB * float(t) for t in temperatures], device=device, dtype=dtype)
    dt = torch.tensor(timestep * units.fs, device=device, dtype=dtype)
    gamma = torch.tensor(friction / units.fs, device=device, dtype=dtype)
    extra = {}
    if ensemble == 'nvt':
        init, update = ts.integrators.nvt_langevin(model, dt=dt, kT=kt, gamma=gamma, seed=batch_seed)
    elif ensemble == 'npt':
        extra['external_pressure'] = torch.tensor(pressure * units.GPa, device=device, dtype=dtype)
        init, update = ts.integrators.npt_langevin(model, dt=dt, kT=kt, alpha=gamma, seed=batch_seed, **extra)
    else:
        raise ValueError(f'unknown ensemble {ensemble!r}')
    state = init(ts.io.atoms_to_state(list(systems), device, dtype), kT=kt)
    momenta = [_initial_momenta(np.asarray(atoms.get_masses(), dtype=float), t, s)
               for atoms, t, s in zip(systems, temperatures, seeds)]
    _set_momenta(state, torch.as_tensor(np.concatenate(momenta), device=device, dtype=dtype))
    return ReplicaBatch(
        state=state, update=update, kt=kt, extra=extra, targets=[float(t) for t in temperatures],
        dof=[3 * len(atoms) - (3 if fix_com else 0) for atoms in systems],
        symbols=[atoms.get_chemical_symbols() for atoms in systems], seeds=[int(seed) for seed in seeds],
        active=list(range(n)),
        records=[{name: [] for name in _SERIES} for _ in range(n)], steps_done=[0] * n, broke=[None] * n)


def replica_step(batch: ReplicaBatch, fix_com: bool = True) -> None:
    """One Langevin step of every running replica; with ``fix_com`` their centre-of-mass drift is undone."""
    before = batch.state.positions.clone() if fix_com else None
    batch.state = batch.update(batch.state, kT=batch.kt[batch.active], **batch.extra)
    if fix_com:
        _remove_drift(batch.state, before)


def record_frame(batch: ReplicaBatch, step: int, timestep: float, store_velocities: bool = False,
                 store_forces: bool = False) -> None:
    """Append the frame at ``step`` of every running replica to its record: time (fs), kinetic temperature (K),
    potential energy (eV), closest pair (Å, species), volume (Å^3), positions and cell (Å) and, when asked for,
    velocities (Å/fs) and the model's forces (eV/Å)."""
    state = batch.state
    momenta = _momenta(state)
    kinetic = _per_system(state, (momenta**2).sum(-1) / (2 * state.masses)).detach().cpu().numpy()
    energy = state.energy.detach().cpu().numpy()
    positions = state.positions.detach().cpu().numpy()
    cells = state.row_vector_cell.detach().cpu().numpy()
    velocities = (momenta / state.masses.unsqueeze(-1)).detach().cpu().numpy() * units.fs if store_velocities else None
    forces = state.forces.detach().cpu().numpy() if store_forces else None
    closest, pairs = min_pair_distances(state.positions.detach(), state.row_vector_cell.detach(), state.system_idx,
                                        state.n_systems)
    system_of_atom = state.system_idx.cpu().numpy()
    for system, replica in enumerate(batch.active):
        atoms, record, symbols = system_of_atom == system, batch.records[replica], batch.symbols[replica]
        record['time_fs'].append(step * timestep)
        record['temperature'].append(float(2 * kinetic[system] / (batch.dof[replica] * units.kB)))
        record['potential_energy'].append(float(energy[system]))
        record['min_distance'].append(float(closest[system]))
        record['closest_pair'].append('-'.join(sorted(symbols[i] for i in pairs[system])))
        record['volume'].append(float(abs(np.linalg.det(cells[system]))))
        record['positions'].append(positions[atoms])
        record['cells'].append(cells[system])
        if velocities is not None:
            record['velocities'].append(velocities[atoms])  # Å/fs
        if forces is not None:
            record['forces'].append(forces[atoms])
        batch.steps_done[replica] = step


def stop_blown_up(batch: ReplicaBatch, step: int, *, stop_distance: float = 1.0,
                  max_temperature_ratio: float = 3.0) -> bool:
    """Judge the frame just recorded at ``step`` of every running replica by :func:`blow_up` and take those that
    blew up out of the batch (the reason kept in ``batch.broke``); False when no replica is left running."""
    finished = []
    for system, replica in enumerate(batch.active):
        record = batch.records[replica]
        reason = blow_up(record['potential_energy'][-1], record['positions'][-1], record['min_distance'][-1],
                         record['closest_pair'][-1], record['temperature'][-1], batch.targets[replica], step,
                         stop_distance=stop_distance, max_temperature_ratio=max_temperature_ratio)
        if reason:
            batch.broke[replica] = reason
            finished.append(system)
    if len(finished) == len(batch.active):
        batch.active = []
        return False
    if finished:
        batch.state.pop(finished)
        batch.active = [replica for system, replica in enumerate(batch.active) if system not in set(finished)]
    return True


def run_replicas(model, systems: Sequence, temperatures: Sequence[float], seeds: Sequence[int], *, steps: int,
                 timestep: float = 1.0, friction: float = 1e-3, stride: int = 20, ensemble: str = 'nvt',
                 pressure: float = 0.0, fix_com: bool = True, store_velocities: bool = False,
                 store_forces: bool = False, stop_distance: float = 1.0, max_temperature_ratio: float = 3.0,
                 batch_seed: int = 0, batch_size: int | None = None,
                 equilibration_steps: int = 0) -> list[ReplicaTrajectory]:
    """Run every system as a replica of batched Langevin simulations; return one trajectory per system.

    All replicas run in one simulation, or with ``batch_size`` that many at a time, batch after batch (batch k's
    Langevin noise from ``batch_seed + BATCH_SEED_STRIDE * k``, recorded in each trajectory's ``batch_seed``).

    Parameters
    ----------
    model
        A TorchSim model (``MaceTorchSimModel``, :class:`HarmonicModel`, ...).
    systems
        ``ase.Atoms`` starting structures, one per replica.
    temperatures, seeds
        Target temperature (K) and seed of the initial velocities of each replica.
    steps, timestep, friction, stride
        Number of steps, time step (fs), Langevin friction (1/fs), steps between recorded frames (the last step
        is recorded too).
    ensemble, pressure
        ``'nvt'`` or ``'npt'`` (external pressure in GPa, the model must give stress).
    fix_com
        Keep every replica's centre of mass in place and its total momentum zero (3N - 3 degrees of freedom).
    store_velocities, store_forces
        Also record the velocities (Å/fs) and the model's forces (eV/Å) at every recorded frame.
    stop_distance, max_temperature_ratio
        Blow-up thresholds of :func:`blow_up`: closest pair (Å), kinetic over target temperature.
    batch_seed, batch_size
        Seed of the Langevin noise of the (first) batch; replicas per simulation (None: all).
    equilibration_steps
        Steps run first, with the same thermostat, and not kept: the frames start at step
        ``equilibration_steps + stride`` (times count from the start of the run). The blow-up check still judges
        a frame every ``stride`` steps of them, and a replica that blows up there keeps those frames for diagnosis.
    """
    size = batch_size or max(len(systems), 1)
    if size < len(systems):
        trajectories = []
        for first in range(0, len(systems), size):
            part, seed = slice(first, first + size), batch_seed + BATCH_SEED_STRIDE * (first // size)
            trajectories += run_replicas(
                model, systems[part], temperatures[part], seeds[part], steps=steps, timestep=timestep,
                friction=friction, stride=stride, ensemble=ensemble, pressure=pressure, fix_com=fix_com,
                store_velocities=store_velocities, store_forces=store_forces, stop_distance=stop_distance,
                max_temperature_ratio=max_temperature_ratio, batch_seed=seed, equilibration_steps=equilibration_steps)
        return trajectories
    batch = init_replicas(model, systems, temperatures, seeds, timestep=timestep, friction=friction,
                          ensemble=ensemble, pressure=pressure, fix_com=fix_com, batch_seed=batch_seed)
    total = equilibration_steps + steps
    for step in range(1, total + 1):
        replica_step(batch, fix_com)
        if (step - equilibration_steps) % stride and step not in (equilibration_steps, total):
            continue
        record_frame(batch, step, timestep, store_velocities, store_forces)
        if not stop_blown_up(batch, step, stop_distance=stop_distance, max_temperature_ratio=max_temperature_ratio):
            break
        if step == equilibration_steps:
            batch.forget_records()
    trajectories = [batch.trajectory(replica) for replica in range(len(systems))]
    for trajectory in trajectories:
        trajectory.batch_seed = batch_seed
    return trajectories
