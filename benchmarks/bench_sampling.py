"""Benchmark: time to draw phonon-informed displacements of the 40-atom 2x2x2 Ag3SI supercell.

Usage::

    python benchmarks/bench_sampling.py [--n-structures 1000] [--output benchmarks/bench_sampling.json]

The force constants are those of a nearest-neighbour central-spring model of the anti-perovskite
(Ag-S, Ag-I and Ag-Ag springs, 1 eV/Å², acoustic sum rule exact): a real, valid force-constant
matrix of the right size. Sampling time does not depend on the values, only on the number of atoms,
so no DFT/MLIP force constants are needed to time the samplers.

Timed (wall clock, best of ``--repeat`` runs), in ms per displaced structure:

* ``uniform`` / ``gaussian``: one vectorised call of ``sample_phonon_displacements`` for all structures;
* ``*_loop``: the same one structure per call (what a per-structure calcfunction would do);
* ``mix_*``: a two-parent composition mixture;
* ``random``: ``sample_random_displacements``;
* baseline ``phonopy``: ``Phonopy.generate_displacements(number_of_snapshots=n, temperature=T)``,
  phonopy's own canonical normal-mode sampling, in the same run.

Ratios are given against the phonopy baseline. Writes JSON (numbers + machine) to ``--output``.
"""

import argparse
import json
import os
import platform
import time

import ase
import numpy as np
from ase.neighborlist import neighbor_list
from phonopy import Phonopy
from phonopy.structure.atoms import PhonopyAtoms

from aiida_capthermo.core.displacements import (
    SupercellModes,
    sample_mixed_phonon_displacements,
    sample_phonon_displacements,
    sample_random_displacements,
)
from aiida_capthermo.core.structures import antiperovskite


def spring_force_constants(atoms, cutoff: float = 3.5, k_spring: float = 1.0) -> np.ndarray:
    """Central nearest-neighbour springs: fc[i, j] = -k e e^T for each bond, fc[i, i] = -sum_j fc[i, j]."""
    n = len(atoms)
    fc = np.zeros((n, n, 3, 3))
    i, j, d = neighbor_list('ijD', atoms, cutoff)
    unit = d / np.linalg.norm(d, axis=1)[:, None]  # [n_pairs, 3]
    np.add.at(fc, (i, j), -k_spring * np.einsum('pa,pb->pab', unit, unit))
    for a in range(n):
        fc[a, a] = -fc[a].sum(axis=0) + fc[a, a]
    return fc


def best_of(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n-structures', type=int, default=1000)
    parser.add_argument('--temperature', type=float, default=300.0)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--output', default=os.path.join(os.path.dirname(__file__), 'bench_sampling.json'))
    args = parser.parse_args()
    n, temperature = args.n_structures, args.temperature

    unit = antiperovskite()
    phonon = Phonopy(
        PhonopyAtoms(
            symbols=unit.get_chemical_symbols(), cell=unit.cell.array, scaled_positions=unit.get_scaled_positions()
        ),
        supercell_matrix=np.eye(3, dtype=int) * 2,
        primitive_matrix=None,
    )
    sc = phonon.supercell
    supercell = ase.Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
    phonon.force_constants = spring_force_constants(supercell)
    modes = SupercellModes.from_phonopy(phonon, frequency_cutoff=0.1)
    stiffer = SupercellModes.from_force_constants(
        2.0 * phonon.force_constants, modes.masses, modes.numbers, frequency_cutoff=0.1
    )
    mix = [(modes, 0.625), (stiffer, 0.375)]
    rng = np.random.default_rng(0)

    timings = {}
    for distribution in ('uniform', 'gaussian'):
        timings[distribution] = best_of(
            lambda d=distribution: sample_phonon_displacements(modes, temperature, n, d, rng), args.repeat
        )
        timings[f'{distribution}_loop'] = best_of(
            lambda d=distribution: [sample_phonon_displacements(modes, temperature, 1, d, rng) for _ in range(n)],
            args.repeat,
        )
        timings[f'mix_{distribution}'] = best_of(
            lambda d=distribution: sample_mixed_phonon_displacements(mix, temperature, n, d, rng), args.repeat
        )
    timings['random'] = best_of(lambda: sample_random_displacements(len(supercell), 0.3, n, rng), args.repeat)
    force_constants = phonon.force_constants.copy()

    def phonopy_sampling():
        phonon.force_constants = force_constants  # generate_displacements resets the dataset and force constants
        phonon.generate_displacements(number_of_snapshots=n, temperature=temperature, random_seed=1)
        assert np.asarray(phonon.displacements).shape == (n, len(supercell), 3)

    timings['phonopy'] = best_of(phonopy_sampling, args.repeat)

    per_structure_ms = {key: 1e3 * value / n for key, value in timings.items()}
    result = {
        'n_structures': n,
        'n_atoms': len(supercell),
        'temperature_K': temperature,
        'n_modes_skipped': int(len(modes.skipped)),
        'n_imaginary': modes.n_imaginary,
        'ms_per_structure': per_structure_ms,
        'speedup_vs_phonopy': {
            key: per_structure_ms['phonopy'] / value for key, value in per_structure_ms.items() if key != 'phonopy'
        },
        'machine': {
            'platform': platform.platform(),
            'processor': platform.processor() or platform.machine(),
            'cpu_count': os.cpu_count(),
            'python': platform.python_version(),
            'numpy': np.__version__,
            'note': '2 shared CPU cores, no GPU',
        },
    }
    with open(args.output, 'w') as handle:
        json.dump(result, handle, indent=2)
    print('| sampler | ms / structure | speed-up vs phonopy |')
    print('|---|---|---|')
    for key, value in per_structure_ms.items():
        print(f'| {key} | {value:.4f} | {per_structure_ms["phonopy"] / value:.1f} |')
    print(f'\nwritten to {args.output}')


if __name__ == '__main__':
    main()
