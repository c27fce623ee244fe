"""Benchmark of the screen: relaxations per minute of 40-atom Ag3S(Br,I) configurations, one at a time with ASE BFGS
(the paper's optimiser) vs all together in one batched TorchSim FIRE simulation (cell filter in both), and the
displaced supercells of a phonon calculation evaluated one by one (ASE) vs in batches.

The structures are the 22 symmetry-inequivalent configurations of the 2x2x2 cell over x = 0..1 (the paper's whole
screen), at the Vegard lattice parameter, rattled by 0.1 Å. The MACE has the demo's size (16 channels, max_L 1,
r_max 5 Å, 2 interactions), trained for two epochs on LJ labels (timing only). Same model, same fmax, same thread
count for every variant. Writes ``benchmarks/bench_screen.json`` (or ``--output``). Usage:
``python benchmarks/bench_screen.py [--threads 1] [--device cpu] [--fmax 0.01] [--max-steps 500] [--tiny]
[--output FILE]``.

``--tiny`` (the test suite's smoke run; its numbers mean nothing): the first 3 of the 22 configurations, at most 20
optimiser steps unless ``--max-steps`` is given, the MACE trained for one epoch on 8 structures, and the phonons of
the ideal (unrattled) Ag3SI cell, whose symmetry leaves a few displacements instead of 240.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_mace import antiperovskite_set, time_training
from common import default_output, machine, write_result

DEMO = {'num_channels': 16, 'max_L': 1, 'correlation': 2, 'num_interactions': 2, 'r_max': 5.0}


def screen_structures(rattle: float = 0.1) -> list:
    """The 22 inequivalent configurations of the 2x2x2 Ag3S(Br_x I_1-x) cell, Vegard cells, rattled."""
    from aiida_capthermo.core.solid_solution import enumerate_configurations, site_permutations
    from aiida_capthermo.core.structures import (
        antiperovskite,
        scale_to_lattice,
        sublattice_indices,
        substitute,
        vegard_lattice_parameter,
    )

    rng = np.random.default_rng(0)
    supercell = antiperovskite('Ag', 'S', 'I', 4.869).repeat((2, 2, 2))
    sites = sublattice_indices(supercell, 'I')
    permutations = site_permutations(supercell, sites)
    cells = []
    for k in range(9):
        lattice = vegard_lattice_parameter(k / 8, 4.869, 4.793)
        for configuration in enumerate_configurations(permutations, k, max_configurations=100, rng=0):
            atoms = substitute(scale_to_lattice(supercell, lattice / 4.869), sites, configuration.occupation_mask(),
                               'Br')
            atoms.positions += rng.normal(0, rattle, atoms.positions.shape)
            cells.append(atoms)
    return cells


def main() -> None:
    import torch

    from aiida_capthermo.ml.mlip import (
        batched_forces,
        calculator_forces,
        load_calculator,
        phonopy_from_forces,
        relax,
        relax_batch,
    )
    from aiida_capthermo.ml.thermal import load_torchsim_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--threads', type=int, default=1, help='torch threads (same for every variant)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--fmax', type=float, default=0.01)
    parser.add_argument('--max-steps', type=int, default=None, help='optimiser steps (default 500, 20 with --tiny)')
    parser.add_argument('--tiny', action='store_true', help='tiny sizes, a smoke run (see above)')
    parser.add_argument('--output', default=default_output('screen'))
    args = parser.parse_args()
    if args.max_steps is None:
        args.max_steps = 20 if args.tiny else 500
    torch.set_num_threads(args.threads)
    cells = screen_structures()
    phonon_cell = cells[5]
    n_train, epochs = 16, 2
    if args.tiny:
        cells, phonon_cell, n_train, epochs = cells[:3], screen_structures(rattle=0.0)[0], 8, 1
    with tempfile.TemporaryDirectory() as tmpdir:
        model_file = time_training(antiperovskite_set(n_train, seed=2), DEMO, pathlib.Path(tmpdir) / 'train',
                                   epochs=epochs, device=args.device)['model_file']
        calc = load_calculator(model_file, args.device)
        model = load_torchsim_model(model_file, args.device, 'float64', compute_stress=True)
        relax(cells[0], calc, fmax=args.fmax, steps=2)  # warm-up
        start = time.perf_counter()
        bfgs = [relax(atoms, calc, fmax=args.fmax, steps=args.max_steps)[1] for atoms in cells]
        bfgs_s = time.perf_counter() - start
        start = time.perf_counter()
        fire = [info for _, info in relax_batch(model, cells, fmax=args.fmax, steps=args.max_steps)]
        fire_s = time.perf_counter() - start
        start = time.perf_counter()
        one = phonopy_from_forces(phonon_cell, calculator_forces(calc))
        one_s = time.perf_counter() - start
        batched = {}
        for size in (8, 64):
            start = time.perf_counter()
            many = phonopy_from_forces(phonon_cell, batched_forces(model, size))
            batched[size] = time.perf_counter() - start
    energy_difference = np.abs(np.array([i['energy_per_atom'] for i in bfgs]) -
                               np.array([i['energy_per_atom'] for i in fire]))
    result = {
        'machine': machine(args.threads, args.device),
        'mace': DEMO, 'n_structures': len(cells), 'atoms_per_structure': 40, 'fmax': args.fmax,
        'ase_bfgs_one_at_a_time': {'seconds': bfgs_s, 'relaxations_per_minute': 60 * len(cells) / bfgs_s,
                                   'converged': sum(i['converged'] for i in bfgs),
                                   'mean_steps': float(np.mean([i['steps'] for i in bfgs]))},
        'torchsim_fire_batched': {'seconds': fire_s, 'relaxations_per_minute': 60 * len(cells) / fire_s,
                                  'converged': sum(i['converged'] for i in fire),
                                  'mean_steps': float(np.mean([i['steps'] for i in fire]))},
        'speedup': bfgs_s / fire_s,
        'energy_per_atom_difference_eV': {'max': float(energy_difference.max()),
                                          'median': float(np.median(energy_difference))},
        'phonons': {'n_displacements': len(one.supercells_with_displacements), 'ase_one_by_one_s': one_s,
                    **{f'batched_{size}_s': seconds for size, seconds in batched.items()},
                    **{f'speedup_batched_{size}': one_s / seconds for size, seconds in batched.items()},
                    'max_force_constant_difference': float(np.abs(one.force_constants - many.force_constants).max())},
    }
    if args.tiny:
        result['tiny'] = True
    write_result(result, args.output)


if __name__ == '__main__':
    main()
