"""Benchmark MACE fine-tuning (time per epoch) and evaluation throughput on 40-atom Ag3S(Br,I) 2x2x2 cells.

Timing only: the cells have the anti-perovskite geometry and density of the paper's supercells (a = 9.6 Å,
Br/I disorder, 0.1 Å random displacements) so neighbour counts are realistic, but the labels come from ASE's
Lennard-Jones calculator (no DFT here); the numbers are not meant as accuracy.

Two architectures are trained from scratch with ``mace_run_train`` for two epochs: ``medium`` (the shape of
mace-mpa-0-medium: 128x0e+128x1o, correlation 3, 2 interactions, r_max 6 Å; a foundation of that shape costs the
same per epoch to fine-tune) and ``tiny`` (8x0e, r_max 4 Å; the tests' model) as the baseline of the ratio. Time per
epoch is the sum of MACE's per-batch optimisation times of the second epoch (the first includes warm-up),
extrapolated linearly to 1000 structures. Evaluation throughput: batched prediction with
:func:`aiida_capthermo.ml.mace.predict`.

Usage: ``python benchmarks/bench_mace.py [--n-medium 40] [--n-tiny 200]``; writes ``benchmarks/bench_mace.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import default_output, machine, write_result

ARCHITECTURES = {
    'medium': {'num_channels': 128, 'max_L': 1, 'correlation': 3, 'num_interactions': 2, 'r_max': 6.0},
    'tiny': {'num_channels': 8, 'max_L': 0, 'correlation': 2, 'num_interactions': 2, 'r_max': 4.0},
}


def antiperovskite_set(n: int, seed: int = 0, labels: bool = True):
    """``n`` 40-atom Ag3S(Br_x I_1-x) 2x2x2 cells with random Br/I and displacements, LJ labels unless ``labels``
    is False (timing only)."""
    from ase import Atoms
    from ase.calculators.lj import LennardJones

    from aiida_capthermo.core.dataset import LabelledSet

    rng = np.random.default_rng(seed)
    a = 4.8
    basis = [('I', (0, 0, 0)), ('S', (0.5, 0.5, 0.5)), ('Ag', (0.5, 0.5, 0)), ('Ag', (0.5, 0, 0.5)),
             ('Ag', (0, 0.5, 0.5))]
    unit = Atoms([s for s, _ in basis], scaled_positions=[p for _, p in basis], cell=[a, a, a], pbc=True)
    frames = []
    for _ in range(n):
        atoms = unit.repeat((2, 2, 2))
        symbols = atoms.get_chemical_symbols()
        halides = [i for i, s in enumerate(symbols) if s == 'I']
        for i in rng.choice(halides, size=rng.integers(0, len(halides) + 1), replace=False):
            symbols[i] = 'Br'
        atoms.set_chemical_symbols(symbols)
        atoms.positions += rng.uniform(-0.1, 0.1, atoms.positions.shape)
        if labels:
            atoms.calc = LennardJones(sigma=2.5, epsilon=0.05, rc=6.0, smooth=True)
            atoms.get_potential_energy()
            atoms.get_stress()
        frames.append(atoms)
    return LabelledSet.from_atoms_list(frames)


def time_training(labelled, arch: dict, workdir: pathlib.Path, epochs: int = 2, batch_size: int = 4,
                  device: str = 'cpu', dtype: str = 'float64') -> dict:
    """Train for ``epochs`` with ``mace_run_train``; return seconds per epoch (last epoch) and per structure."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    labelled.write_extxyz(workdir / 'train.xyz')
    config = {'name': 'bench', 'seed': 1, 'train_file': 'train.xyz', 'valid_fraction': 0.05,
              'energy_key': 'REF_energy', 'forces_key': 'REF_forces', 'stress_key': 'REF_stress',
              'compute_stress': True, 'loss': 'stress', 'energy_weight': 1.0, 'forces_weight': 150.0,
              'stress_weight': 10.0, 'E0s': 'average', 'model': 'MACE', **arch, 'max_num_epochs': epochs,
              'batch_size': batch_size, 'valid_batch_size': batch_size, 'default_dtype': dtype, 'device': device,
              'save_cpu': True, 'plot': False, 'error_table': 'PerAtomMAEstressvirials'}
    (workdir / 'config.yaml').write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    run = subprocess.run([sys.executable, '-m', 'mace.cli.run_train', '--config', 'config.yaml'], cwd=workdir,
                         capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f'mace_run_train failed ({run.returncode}): {run.stderr[-1500:]}')
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in next((workdir / 'results').glob('*_train.txt')).read_text().splitlines()
               if line.strip()]
    opt = [r for r in records if r.get('mode') == 'opt']
    last_epoch = max(r['epoch'] for r in opt)
    epoch_seconds = sum(r['time'] for r in opt if r['epoch'] == last_epoch)
    n_train = len(labelled) - int(round(0.05 * len(labelled)))
    return {'n_train': n_train, 'epoch_seconds': epoch_seconds, 'seconds_per_structure': epoch_seconds / n_train,
            'epoch_seconds_1000': epoch_seconds / n_train * 1000, 'wall_seconds_total': wall,
            'model_file': str(workdir / 'bench.model')}


def time_evaluation(model_file: str, labelled, batch_size: int = 8, device: str = 'cpu') -> dict:
    """Structures per second of batched prediction (energy, forces, stress), after one warm-up batch."""
    from aiida_capthermo.ml.mace import load_mace_model, predict

    model = load_mace_model(model_file, device, 'float64')
    atoms_list = labelled.to_atoms_list(with_labels=False)
    predict(model, atoms_list[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    predict(model, atoms_list, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {'n_structures': len(atoms_list), 'seconds': seconds, 'structures_per_second': len(atoms_list) / seconds,
            'atoms_per_second': 40 * len(atoms_list) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n-medium', type=int, default=40)
    parser.add_argument('--n-tiny', type=int, default=200)
    parser.add_argument('--output', default=default_output('mace'))
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '2')))
    results = {'machine': machine(torch.get_num_threads(), args.device),
               'structure': '40-atom Ag3S(Br,I) 2x2x2, LJ labels (timing only)', 'dtype': 'float64',
               'batch_size': 4, 'device': args.device}
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in (('tiny', args.n_tiny), ('medium', args.n_medium)):
            labelled = antiperovskite_set(n, seed=1)
            train = time_training(labelled, ARCHITECTURES[name], pathlib.Path(tmp) / name, device=args.device)
            evaluation = time_evaluation(train.pop('model_file'), labelled, device=args.device)
            results[name] = {'architecture': ARCHITECTURES[name], 'n_structures': n, 'training': train,
                             'evaluation': evaluation}
            print(name, json.dumps(results[name], indent=1), flush=True)
    results['ratio_medium_over_tiny'] = {
        'training_seconds_per_structure': results['medium']['training']['seconds_per_structure']
        / results['tiny']['training']['seconds_per_structure'],
        'evaluation_seconds_per_structure': results['tiny']['evaluation']['structures_per_second']
        / results['medium']['evaluation']['structures_per_second']}
    write_result(results, args.output)
    lines = ['| model | structures timed | s/epoch (timed) | s/epoch extrapolated to 1000 | eval structures/s |',
             '|---|---|---|---|---|']
    for name in ('tiny', 'medium'):
        r = results[name]
        lines.append(f"| {name} | {r['training']['n_train']} | {r['training']['epoch_seconds']:.1f} | "
                     f"{r['training']['epoch_seconds_1000']:.0f} | {r['evaluation']['structures_per_second']:.1f} |")
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
