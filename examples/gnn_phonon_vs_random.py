"""Phonon-informed vs random-displacement training sets for the band-gap GNN (second paper, Fig. 4), local engine.

1. Harmonic phonons of cubic Ag3SI (a = 4.869 Å) in its 2x2x2 supercell (40 atoms) with the local engine's
   tblite forces (GFN1-xTB without its halogen-bond term by default: the stock term gives ~30 eV/Å on the ideal,
   symmetric cell) and phonopy (finite displacements of 0.01 Å); near-zero modes are skipped, imaginary ones
   sampled at |f| (``--imaginary-modes absolute``, the dataset workchain's default) or skipped.
2. Two training sets of the same size on the same 40-atom supercell:
   phonon-informed (paper eq. 1, uniform eps, temperatures drawn from 100-600 K) and random
   (second paper eq. 2, u = eps * a with the amplitude a drawn per structure from 0.1-0.8 Å).
3. Γ-point xTB band gaps of every structure (tblite orbital energies), GFN1-xTB-noXB by default: GFN2-xTB SCF
   does not converge on displaced 40-atom Ag3SI cells here, while GFN1-xTB does (about 1 s each).
   The labels of both sets come from the same method, which is what the comparison needs.
4. One GNN per set (papers' architecture, seeded 70/15/15 split), tested on its own test split and
   cross-tested on the other set's test split.

Writes ``gnn_phonon_vs_random_<random-amplitude>.json`` (numbers) into ``--output`` and label caches into
``--cache`` (reused by the second run). Slow:
about 1 s of tblite per structure on one core. The runs docs/gnn.md quotes (their JSON files are in
``docs/figures/gnn_phonon_vs_random/``)::

    python examples/gnn_phonon_vs_random.py --n-per-set 80 --random-amplitude paper
    python examples/gnn_phonon_vs_random.py --n-per-set 80 --random-amplitude matched
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import numpy as np


def phonon_modes(a: float, method: str, imaginary: str, log):
    """Γ-point modes of the 2x2x2 supercell from xTB finite displacements; return (modes, ase supercell)."""
    from ase import Atoms
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    from aiida_capthermo.core.displacements import SupercellModes
    from aiida_capthermo.ml.labelling import CalculatorSpec, single_point_function

    unit = PhonopyAtoms(symbols=['I', 'S', 'Ag', 'Ag', 'Ag'], cell=np.eye(3) * a,
                        scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)])
    phonon = Phonopy(unit, supercell_matrix=np.eye(3, dtype=int) * 2)
    phonon.generate_displacements(distance=0.01)
    ideal = phonon.supercell
    single_point = single_point_function(CalculatorSpec(method=method, properties=['forces']))
    atoms = Atoms(ideal.symbols, positions=ideal.positions, cell=ideal.cell, pbc=True)
    residual = single_point(atoms)['forces']  # zero by symmetry for a sound method; subtracted to remove noise
    log(f'{method}: max residual force on the ideal supercell {np.abs(residual).max():.2e} eV/Å')
    forces = []
    for cell in phonon.supercells_with_displacements:
        atoms = Atoms(cell.symbols, positions=cell.positions, cell=cell.cell, pbc=True)
        forces.append(single_point(atoms)['forces'] - residual)
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    modes = SupercellModes.from_phonopy(phonon, imaginary=imaginary)
    log(f'phonons: {len(forces)} displaced supercells, {modes.n_imaginary} imaginary modes ({imaginary}), '
        f'frequencies {modes.frequencies.min():.2f}..{modes.frequencies.max():.2f} THz')
    supercell = phonon.supercell
    base = Atoms(supercell.symbols, positions=supercell.positions, cell=supercell.cell, pbc=True)
    return modes, base


def make_sets(modes, base, n: int, seed: int, random_amplitude: str = 'paper'):
    """Phonon-informed and random sets of ``n`` structures each.

    ``random_amplitude='paper'`` draws the random amplitude a from U[0.1, 0.8] Å (second paper);
    ``'matched'`` sets a = sqrt(mean_j zeta_j^2(T)) for a temperature T drawn like the phonon set's, so that both
    sets have the same mean-square displacement per structure (uniform eps: <u^2> = a^2/3 vs zeta^2/3).
    """
    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.core.displacements import (
        sample_phonon_displacements,
        sample_random_displacements,
        thermal_msd,
    )

    rng = np.random.default_rng(seed)
    temperatures = rng.uniform(100, 600, size=n)
    phonon_frames = []
    for temperature in temperatures:
        u = sample_phonon_displacements(modes, temperature, 1, distribution='uniform', rng=rng)[0]
        atoms = base.copy()
        atoms.positions += u
        phonon_frames.append(atoms)
    if random_amplitude == 'paper':
        amplitudes = rng.uniform(0.1, 0.8, size=n)
    else:
        amplitudes = np.array([np.sqrt(thermal_msd(modes, t).mean()) for t in rng.uniform(100, 600, size=n)])
    random_frames = []
    for amplitude in amplitudes:
        atoms = base.copy()
        atoms.positions += sample_random_displacements(len(base), amplitude, 1, rng=rng)[0]
        random_frames.append(atoms)
    phonon_set = LabelledSet.from_atoms_list(phonon_frames, temperature=temperatures, x=np.zeros(n),
                                             origin=np.full(n, 'phonon'))
    random_set = LabelledSet.from_atoms_list(random_frames, temperature=np.zeros(n), x=np.zeros(n),
                                             origin=np.full(n, 'random'))
    return phonon_set, random_set, amplitudes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n-per-set', type=int, default=150, help='Structures per training set.')
    parser.add_argument('--epochs', type=int, default=300, help='Maximum epochs per model.')
    parser.add_argument('--seed', type=int, default=0, help='Seed of sampling, split and training.')
    parser.add_argument('--phonon-method', default='GFN1-xTB', choices=('GFN1-xTB', 'GFN2-xTB'),
                        help='tblite method of the phonon forces.')
    parser.add_argument('--random-amplitude', default='paper', choices=('paper', 'matched'),
                        help='paper: a ~ U[0.1, 0.8] Å; matched: same mean-square displacement as the phonon set.')
    parser.add_argument('--label-method', default='GFN1-xTB', choices=('GFN1-xTB', 'GFN2-xTB'),
                        help='tblite method of the band-gap labels.')
    parser.add_argument('--imaginary-modes', default='absolute', choices=('absolute', 'skip'),
                        help='Imaginary parent modes: sampled at |f| (the dataset default) or skipped.')
    parser.add_argument('--output', default='docs/figures/gnn_phonon_vs_random', help='Output directory.')
    parser.add_argument('--cache', default='examples/output', help='Directory of the label caches.')
    args = parser.parse_args()
    import torch

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.gnn.metrics import regression_metrics
    from aiida_capthermo.ml.gnn.predict import predict
    from aiida_capthermo.ml.gnn.training import train_gnn
    from aiida_capthermo.ml.labelling import CalculatorSpec, label_structures

    torch.set_num_threads(1)
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda line: print(line, flush=True)  # noqa: E731
    start = time.perf_counter()
    modes, base = phonon_modes(4.869, args.phonon_method, args.imaginary_modes, log)
    phonon_set, random_set, amplitudes = make_sets(modes, base, args.n_per_set, args.seed, args.random_amplitude)
    log(f'random amplitudes {amplitudes.min():.3f}..{amplitudes.max():.3f} Å')
    spec = CalculatorSpec(method=args.label_method, properties=['gap'])
    labelled = {}
    for name, structures in (('phonon', phonon_set), ('random', random_set)):
        suffix = f'_{args.random_amplitude}' if name == 'random' else ''
        cache = pathlib.Path(args.cache) / f'{name}{suffix}_{args.label_method}_{args.imaginary_modes}.npz'
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.is_file() and len(LabelledSet.load(cache)) == args.n_per_set:
            labelled[name] = LabelledSet.load(cache)
        else:
            labelled[name], _ = label_structures(structures, spec)
            labelled[name].save(cache)
        ok = labelled[name].has_label('gap')
        log(f'{name}: {ok.sum()} gaps, {labelled[name].gap[ok].mean():.3f} +- {labelled[name].gap[ok].std():.3f} eV')

    hp = {'max_epochs': args.epochs, 'patience': 60, 'seed': args.seed, 'batch_size': 16, 'learning_rate': 1e-3}
    results, models = {}, {}
    for name in ('phonon', 'random'):
        trained = train_gnn(labelled[name], hp)
        models[name] = trained
        results[name] = {'own_test': trained.metrics['test'], 'validation': trained.metrics['validation'],
                         'best_epoch': trained.metrics['best_epoch']}
        log(f"{name}: test MAE {trained.metrics['test']['mae']:.4f} eV, R2 {trained.metrics['test']['r2']}")
    for train_name, test_name in (('phonon', 'random'), ('random', 'phonon')):
        test_index = models[test_name].parity['test_index']
        test_set = labelled[test_name].subset(test_index)
        prediction = predict(models[train_name].loaded, test_set)
        results[train_name][f'cross_test_on_{test_name}'] = regression_metrics(test_set.gap, prediction)
    summary = {
        'engine': f"tblite {spec.describe()['method']} Γ-point gaps, "
                  f"{CalculatorSpec(method=args.phonon_method).describe()['method']} phonons",
        'supercell': 'Ag3SI 2x2x2, 40 atoms, a = 4.869 Å',
        'n_per_set': args.n_per_set, 'hyperparameters': hp, 'random_amplitude': args.random_amplitude,
        'random_amplitude_range_A': [float(amplitudes.min()), float(amplitudes.max())],
        'n_imaginary_modes': int(modes.n_imaginary),
        'imaginary_modes': args.imaginary_modes, 'n_modes_displaced': int(len(modes.active)),
        'frequency_range_THz': [float(modes.frequencies.min()), float(modes.frequencies.max())],
        'gap_statistics_eV': {name: {'mean': float(np.nanmean(ls.gap)), 'std': float(np.nanstd(ls.gap)),
                                     'min': float(np.nanmin(ls.gap)), 'max': float(np.nanmax(ls.gap))}
                              for name, ls in labelled.items()},
        'n_train_test': [models['phonon'].metrics['train']['n'], models['phonon'].metrics['test']['n']],
        'machine': f'{platform.machine()}, {os.cpu_count()} cores, torch threads 1, load average at the end '
                   f'{os.getloadavg()[0]:.1f}',
        'results': results, 'wall_time_s': time.perf_counter() - start,
    }
    (out / f'gnn_phonon_vs_random_{args.random_amplitude}.json').write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == '__main__':
    main()
