"""A labelled set of periodic structures held as flat numpy arrays.

This is the in-memory and on-disk form of every dataset of the package: the AiiDA
``DatasetData`` node stores exactly these arrays, the console scripts read and write them
as ``.npz`` files, and the exporters turn them into extxyz (MACE) or graphs (GNN).

Units: positions and cells in Å, energies and band edges in eV, forces in eV/Å, stress in
eV/Å^3 as a Voigt 6-vector ``(xx, yy, zz, yz, xz, xy)`` with ASE's sign convention
(positive = tensile), composition ``x`` as the fraction of the substituting species on the
disordered sublattice, temperature in K (0 for equilibrium structures). Missing labels are
NaN, never zero.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ['LabelledSet', 'PER_STRUCTURE_FLOAT', 'PER_ATOM_FLOAT']

#: Per-structure float labels and metadata, each of shape [n_structures].
PER_STRUCTURE_FLOAT = ('energy', 'gap', 'vbm', 'cbm', 'x', 'temperature')
#: Per-atom float arrays, each of shape [n_atoms_total, 3].
PER_ATOM_FLOAT = ('positions', 'forces')
#: Per-structure string metadata, each of shape [n_structures].
PER_STRUCTURE_STR = ('origin', 'structure_uuid')


@dataclasses.dataclass
class LabelledSet:
    """Structures and their labels, concatenated over structures.

    Atoms of structure ``i`` are the slice ``offsets[i]:offsets[i + 1]`` of the per-atom arrays.
    ``origin`` says how a structure was made (``phonon``, ``random``, ``equilibrium``, ...),
    ``structure_uuid`` links it to its ``StructureData`` node when it has one.
    """

    numbers: np.ndarray  # [n_atoms_total] int
    positions: np.ndarray  # [n_atoms_total, 3] Å
    cells: np.ndarray  # [n_structures, 3, 3] Å
    n_atoms: np.ndarray  # [n_structures] int
    energy: np.ndarray | None = None  # [n_structures] eV
    forces: np.ndarray | None = None  # [n_atoms_total, 3] eV/Å
    stress: np.ndarray | None = None  # [n_structures, 6] eV/Å^3
    gap: np.ndarray | None = None  # [n_structures] eV
    vbm: np.ndarray | None = None  # [n_structures] eV
    cbm: np.ndarray | None = None  # [n_structures] eV
    x: np.ndarray | None = None  # [n_structures]
    temperature: np.ndarray | None = None  # [n_structures] K
    origin: np.ndarray | None = None  # [n_structures] str
    structure_uuid: np.ndarray | None = None  # [n_structures] str

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=float).reshape(-1, 3)
        self.cells = np.asarray(self.cells, dtype=float).reshape(-1, 3, 3)
        self.n_atoms = np.asarray(self.n_atoms, dtype=np.int64).reshape(-1)
        n_struct, n_total = len(self.n_atoms), int(self.n_atoms.sum())
        if len(self.cells) != n_struct:
            raise ValueError(f'{len(self.cells)} cells for {n_struct} structures')
        if len(self.numbers) != n_total or len(self.positions) != n_total:
            raise ValueError(f'per-atom arrays have {len(self.numbers)}/{len(self.positions)} rows, expected {n_total}')
        shapes = {'forces': (n_total, 3), 'stress': (n_struct, 6)}
        shapes.update({name: (n_struct,) for name in PER_STRUCTURE_FLOAT})
        for name, shape in shapes.items():
            value = getattr(self, name)
            if value is None:
                value = np.full(shape, np.nan)
            value = np.asarray(value, dtype=float).reshape(shape)
            setattr(self, name, value)
        for name in PER_STRUCTURE_STR:
            value = getattr(self, name)
            value = np.full(n_struct, '', dtype='<U36') if value is None else np.asarray(value, dtype=str)
            if value.shape != (n_struct,):
                raise ValueError(f'{name} has shape {value.shape}, expected ({n_struct},)')
            setattr(self, name, value)

    # ------------------------------------------------------------------ structure access
    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def offsets(self) -> np.ndarray:
        """Start index of every structure in the per-atom arrays, plus the total: [n_structures + 1]."""
        return np.concatenate([[0], np.cumsum(self.n_atoms)])

    def atoms(self, index: int, with_labels: bool = True):
        """Return structure ``index`` as an ``ase.Atoms`` (labels on a single-point calculator)."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        start, stop = self.offsets[index], self.offsets[index + 1]
        atoms = Atoms(numbers=self.numbers[start:stop], positions=self.positions[start:stop],
                      cell=self.cells[index], pbc=True)
        atoms.info.update({'x': float(self.x[index]), 'temperature': float(self.temperature[index]),
                           'origin': str(self.origin[index])})
        for name in ('gap', 'vbm', 'cbm'):
            if np.isfinite(self[name][index]):
                atoms.info[name] = float(self[name][index])
        if with_labels:
            results = {}
            if np.isfinite(self.energy[index]):
                results['energy'] = float(self.energy[index])
            forces = self.forces[start:stop]
            if np.all(np.isfinite(forces)):
                results['forces'] = forces.copy()
            if np.all(np.isfinite(self.stress[index])):
                results['stress'] = self.stress[index].copy()
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def __getitem__(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def to_atoms_list(self, with_labels: bool = True) -> list:
        return [self.atoms(i, with_labels) for i in range(len(self))]

    @classmethod
    def from_atoms_list(cls, atoms_list: Sequence, **per_structure) -> LabelledSet:
        """Build a set from ``ase.Atoms`` objects; labels come from attached calculators where present.

        ``per_structure`` may give any per-structure array (``x``, ``temperature``, ``origin``, ``gap``...)
        and overrides what the atoms carry in ``info``.
        """
        if len(atoms_list) == 0:
            raise ValueError('cannot build a LabelledSet from an empty list of structures')
        n_atoms = np.array([len(a) for a in atoms_list])
        arrays = {
            'numbers': np.concatenate([a.numbers for a in atoms_list]),
            'positions': np.concatenate([a.positions for a in atoms_list]),
            'cells': np.stack([np.asarray(a.cell) for a in atoms_list]),
            'n_atoms': n_atoms,
        }
        energy, stress, forces = [], [], []
        for atoms in atoms_list:
            results = getattr(atoms.calc, 'results', {}) if atoms.calc is not None else {}
            energy.append(results.get('energy', np.nan))
            stress.append(np.asarray(results['stress']).reshape(-1)[:6] if 'stress' in results else np.full(6, np.nan))
            forces.append(results['forces'] if 'forces' in results else np.full((len(atoms), 3), np.nan))
        arrays.update(energy=np.array(energy, float), stress=np.array(stress, float), forces=np.concatenate(forces))
        for name in ('gap', 'vbm', 'cbm', 'x', 'temperature', 'origin'):
            values = [a.info.get(name, np.nan if name != 'origin' else '') for a in atoms_list]
            arrays[name] = np.asarray(values)
        arrays.update(per_structure)
        return cls(**arrays)

    # ------------------------------------------------------------------ set algebra
    def subset(self, indices: Iterable[int]) -> LabelledSet:
        """Return the structures at ``indices`` (in that order) as a new set."""
        indices = np.asarray(list(indices), dtype=np.int64)
        offsets = self.offsets
        atom_index = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in indices]) if len(indices) else \
            np.zeros(0, dtype=np.int64)
        per_struct = {name: self[name][indices] for name in (*PER_STRUCTURE_FLOAT, *PER_STRUCTURE_STR, 'stress')}
        return LabelledSet(numbers=self.numbers[atom_index], positions=self.positions[atom_index],
                           forces=self.forces[atom_index], cells=self.cells[indices], n_atoms=self.n_atoms[indices],
                           **per_struct)

    @classmethod
    def concatenate(cls, sets: Sequence[LabelledSet]) -> LabelledSet:
        """Join several sets, keeping their order."""
        if not sets:
            raise ValueError('nothing to concatenate')
        arrays = {name: np.concatenate([s[name] for s in sets]) for name in cls.array_names()}
        return cls(**arrays)

    @staticmethod
    def array_names() -> tuple[str, ...]:
        return ('numbers', 'positions', 'cells', 'n_atoms', 'forces', 'stress', *PER_STRUCTURE_FLOAT,
                *PER_STRUCTURE_STR)

    def has_label(self, name: str) -> np.ndarray:
        """Boolean mask [n_structures]: which structures carry label ``name`` (energy, forces, stress, gap, ...)."""
        value = self[name]
        if name == 'forces':
            return np.array([np.all(np.isfinite(value[a:b])) for a, b in zip(self.offsets[:-1], self.offsets[1:])])
        if value.ndim == 2:
            return np.all(np.isfinite(value), axis=1)
        return np.isfinite(value)

    def statistics(self) -> dict:
        """Counts and label statistics (JSON-serialisable) for node attributes and reports."""
        stats: dict = {'n_structures': len(self), 'n_atoms_total': int(self.n_atoms.sum())}
        for name in ('energy', 'gap', 'vbm', 'cbm'):
            mask = self.has_label(name)
            entry = {'count': int(mask.sum())}
            if mask.any():
                values = self[name][mask]
                if name == 'energy':
                    values = values / self.n_atoms[mask]
                    name = 'energy_per_atom'
                entry.update(mean=float(values.mean()), std=float(values.std()), min=float(values.min()),
                             max=float(values.max()))
            stats[name] = entry
        for name in ('forces', 'stress'):
            stats[name] = {'count': int(self.has_label(name).sum())}
        finite_x = self.x[np.isfinite(self.x)]
        finite_t = self.temperature[np.isfinite(self.temperature)]
        stats['compositions'] = sorted({round(float(v), 6) for v in finite_x})
        stats['temperatures'] = sorted({round(float(v), 6) for v in finite_t})
        stats['origins'] = {str(k): int(v) for k, v in zip(*np.unique(self.origin, return_counts=True))}
        return stats

    # ------------------------------------------------------------------ files
    def save(self, path: str | pathlib.Path) -> None:
        """Write all arrays to a compressed ``.npz`` file (no pickles)."""
        np.savez_compressed(path, **{name: self[name] for name in self.array_names()})

    @classmethod
    def load(cls, path: str | pathlib.Path) -> LabelledSet:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{name: data[name] for name in cls.array_names() if name in data.files})

    def write_extxyz(self, path: str | pathlib.Path, indices: Iterable[int] | None = None,
                     energy_key: str = 'REF_energy', forces_key: str = 'REF_forces',
                     stress_key: str = 'REF_stress') -> int:
        """Write structures with their labels as extended XYZ under MACE-style keys; return the count written.

        Labels are written as plain info/arrays entries (not a calculator), so MACE reads them with
        ``--energy_key REF_energy --forces_key REF_forces --stress_key REF_stress``.
        """
        from ase.io import write

        indices = range(len(self)) if indices is None else indices
        frames = []
        for i in indices:
            atoms = self.atoms(i, with_labels=False)
            # An empty string (``origin=``) makes ASE's extxyz reader swallow the next key, and NaN metadata
            # carries no information: leave both out of the file.
            for key in [k for k, v in atoms.info.items() if v == '' or (isinstance(v, float) and not np.isfinite(v))]:
                del atoms.info[key]
            start, stop = self.offsets[i], self.offsets[i + 1]
            if np.isfinite(self.energy[i]):
                atoms.info[energy_key] = float(self.energy[i])
            if np.all(np.isfinite(self.stress[i])):
                atoms.info[stress_key] = self.stress[i].copy()
            if np.all(np.isfinite(self.forces[start:stop])):
                atoms.arrays[forces_key] = self.forces[start:stop].copy()
            frames.append(atoms)
        write(path, frames, format='extxyz')
        return len(frames)
