"""Small seeded synthetic labelled sets for the GNN tests (built with ase, no other package modules)."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from aiida_capthermo.core.dataset import LabelledSet

A_AG3SI = 4.869  # Å


def ag3si_cell() -> Atoms:
    return Atoms('ISAg3', scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
                 cell=np.eye(3) * A_AG3SI, pbc=True)


def synthetic_set(n: int = 60, seed: int = 0, repeat=(2, 1, 1), high_fidelity: bool = False,
                  amplitude: tuple[float, float] = (0.0, 0.3), temperature: float = 300.0) -> LabelledSet:
    """Displaced Ag3S(Br,I) cells with a smooth synthetic 'gap' (eV) that depends on Br fraction and disorder.

    gap = 1.6 + 0.3 x - 1.5 * rms displacement (low fidelity); the 'high fidelity' gap is 1.25 * low + 0.4.
    Each cell's largest displacement per component is drawn from ``amplitude`` (Å).
    """
    rng = np.random.default_rng(seed)
    base = ag3si_cell().repeat(repeat)
    halides = np.flatnonzero(base.numbers == 53)
    frames, gaps, xs = [], [], []
    for _ in range(n):
        atoms = base.copy()
        n_br = rng.integers(0, len(halides) + 1)
        atoms.numbers[rng.choice(halides, n_br, replace=False)] = 35
        largest = rng.uniform(*amplitude)
        displacement = rng.uniform(-largest, largest, size=atoms.positions.shape)
        atoms.positions += displacement
        x = n_br / len(halides)
        gap = 1.6 + 0.3 * x - 1.5 * np.sqrt(np.mean(np.sum(displacement ** 2, axis=1)))
        if high_fidelity:
            gap = 1.25 * gap + 0.4
        frames.append(atoms)
        gaps.append(gap)
        xs.append(x)
    energy = -3.0 * np.array([len(a) for a in frames]) - np.array(gaps)
    return LabelledSet.from_atoms_list(frames, gap=np.array(gaps), x=np.array(xs), temperature=np.full(n, temperature),
                                       origin=np.full(n, 'random'), energy=energy)
