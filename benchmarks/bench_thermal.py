"""Benchmark of the thermal-gap stage: MD replica-steps per second, one ASE Langevin run (:func:`ase_langevin`, the
baseline, defined here only) vs the package's batched MD engine (TorchSim) with batches of 1, 8 and 63 replicas
(same MACE, same 40-atom Ag3S(Br,I) cells, same run), and GNN gap predictions per second including graph building.

The MACE has the demo's size (16 channels, max_L 1, r_max 5 Å, 2 interactions), trained for one epoch on LJ labels
(timing only; its physics is irrelevant here). The GNN has the papers' architecture (64 hidden channels, 2 GraphConv
layers) with random weights. Writes ``benchmarks/bench_thermal.json`` (or ``--output``). Usage:
``python benchmarks/bench_thermal.py [--threads 1] [--device cpu] [--n-gnn 5000] [--tiny] [--output FILE]``.

``--tiny`` (the test suite's smoke run; its numbers mean nothing): an ASE run of 4 steps, TorchSim runs of 1 replica
x 4 steps and 2 replicas x 2 steps, and 200 GNN structures unless ``--n-gnn`` is given.
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


def ase_langevin(atoms, calculator, temperature: float, steps: int, timestep: float = 1.0, friction: float = 0.01,
                 seed: int = 0):
    """Baseline for benchmarks only: ASE Langevin NVT of a copy of ``atoms`` (one structure, the centre of mass
    fixed) at ``temperature`` (K) for ``steps`` steps of ``timestep`` (fs), friction in 1/fs. The package's MD (the
    thermal stage, ``capthermo-mlip md``, the finite-temperature phonons) runs through the batched engine
    ``aiida_capthermo.ml.thermal.run_replicas``, never through this. Returns the final ``ase.Atoms``."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = atoms.copy()
    atoms.calc = calculator
    atoms.set_constraint(FixCom())
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs, rng=rng,
             fixcm=False).run(steps)
    return atoms


def time_ase(model_file: str, atoms, steps: int, device: str) -> float:
    """Seconds per step of one ASE Langevin run with the MACE calculator (the single-replica baseline)."""
    from aiida_capthermo.ml.mlip import load_calculator

    calc = load_calculator(model_file, device, 'float64')
    ase_langevin(atoms, calc, 300.0, steps=5)  # warm-up
    start = time.perf_counter()
    ase_langevin(atoms, calc, 300.0, steps=steps)
    return (time.perf_counter() - start) / steps


def time_torchsim(model_file: str, cells: list, replicas: int, steps: int, device: str) -> float:
    """Seconds per step of one batched TorchSim simulation of ``replicas`` replicas."""
    from aiida_capthermo.ml.thermal import load_torchsim_model, run_replicas

    model = load_torchsim_model(model_file, device, 'float64')
    systems = [cells[i % len(cells)] for i in range(replicas)]
    temperatures = [300.0 + 300.0 * (i % 2) for i in range(replicas)]
    run_replicas(model, systems, temperatures, list(range(replicas)), steps=3, stride=3)  # warm-up
    start = time.perf_counter()
    run_replicas(model, systems, temperatures, list(range(replicas)), steps=steps, stride=10)
    return (time.perf_counter() - start) / steps


def time_gnn(n: int, device: str) -> dict:
    """GNN gap predictions per second of ``n`` 40-atom structures, graphs built inside the timing."""
    import torch

    from aiida_capthermo.ml.gnn.data import Normalisation, build_graphs
    from aiida_capthermo.ml.gnn.model import BandGapGNN
    from aiida_capthermo.ml.gnn.predict import predict
    from aiida_capthermo.ml.gnn.training import LoadedModel

    labelled = antiperovskite_set(n, seed=1, labels=False)
    torch.manual_seed(0)
    graphs = build_graphs(labelled.subset(range(50)), 5.5)
    normalisation = Normalisation.fit(graphs, np.linspace(1.0, 2.0, 50), np.arange(50))
    loaded = LoadedModel(model=BandGapGNN(hidden_channels=64, conv_layers=2), normalisation=normalisation,
                         metadata={'cutoff': 5.5, 'target': 'gap'})
    predict(loaded, labelled.subset(range(100)), batch_size=1024, device=device)  # warm-up
    start = time.perf_counter()
    values = predict(loaded, labelled, batch_size=1024, device=device)
    seconds = time.perf_counter() - start
    assert np.all(np.isfinite(values))
    return {'n_structures': n, 'seconds': seconds, 'structures_per_second': n / seconds}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--threads', type=int, default=1, help='torch threads (same for every variant)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--n-gnn', type=int, default=None, help='GNN structures (default 5000, 200 with --tiny)')
    parser.add_argument('--tiny', action='store_true', help='tiny sizes, a smoke run (see above)')
    parser.add_argument('--output', default=default_output('thermal'))
    args = parser.parse_args()
    if args.n_gnn is None:
        args.n_gnn = 200 if args.tiny else 5000
    ase_steps, torchsim_runs = (4, ((1, 4), (2, 2))) if args.tiny else (60, ((1, 60), (8, 30), (63, 10)))
    torch.set_num_threads(args.threads)
    cells = antiperovskite_set(8, seed=0).to_atoms_list(with_labels=False)
    with tempfile.TemporaryDirectory() as tmpdir:
        model_file = time_training(antiperovskite_set(8, seed=2), DEMO, pathlib.Path(tmpdir) / 'train', epochs=1,
                                   device=args.device)['model_file']
        ase_step = time_ase(model_file, cells[0], ase_steps, args.device)
        batched = {replicas: time_torchsim(model_file, cells, replicas, steps, args.device)
                   for replicas, steps in torchsim_runs}
    md = {'ase_one_replica': {'seconds_per_step': ase_step, 'replica_steps_per_s': 1.0 / ase_step}}
    for replicas, seconds in batched.items():
        md[f'torchsim_{replicas}'] = {'replicas': replicas, 'seconds_per_step': seconds,
                                      'replica_steps_per_s': replicas / seconds,
                                      'speedup_per_replica_step_vs_ase': replicas / seconds * ase_step}
    result = {'machine': machine(args.threads, args.device),
              'mace': DEMO, 'atoms_per_replica': 40, 'md': md, 'gnn': time_gnn(args.n_gnn, args.device)}
    if args.tiny:
        result['tiny'] = True
    write_result(result, args.output)


if __name__ == '__main__':
    main()
