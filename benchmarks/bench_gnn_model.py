"""Benchmark: GNN inference throughput (structures/s) and training time per epoch on 1000 40-atom structures.

Default (papers') architecture, CPU (CUDA when present). Inference is timed model-only (graphs prebuilt) at batch
sizes 1, 32 and 256 (the ratio to batch size 1 is the gain of batching) and end-to-end with graph building.
Writes ``benchmarks/bench_gnn_model.json`` (or ``--output``). Usage:
``python benchmarks/bench_gnn_model.py [--n 1000] [--threads 1] [--epochs 3] [--output FILE]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.ml.gnn.data import Normalisation, build_graphs, to_pyg
from aiida_capthermo.ml.gnn.model import BandGapGNN
from aiida_capthermo.ml.gnn.predict import predict
from aiida_capthermo.ml.gnn.training import LoadedModel, train_gnn

from common import default_output, machine, write_result


def dataset(n: int, seed: int = 0) -> LabelledSet:
    from ase import Atoms

    base = Atoms('ISAg3', scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)],
                 cell=np.eye(3) * 4.869, pbc=True).repeat(2)
    rng = np.random.default_rng(seed)
    frames, gaps = [], []
    for _ in range(n):
        atoms = base.copy()
        atoms.numbers[rng.choice(np.flatnonzero(atoms.numbers == 53), rng.integers(0, 9), replace=False)] = 35
        u = rng.uniform(-0.3, 0.3, size=atoms.positions.shape)
        atoms.positions += u
        frames.append(atoms)
        gaps.append(1.6 + 0.3 * np.mean(atoms.numbers == 35) * 5 - np.sqrt(np.mean(u ** 2)))
    return LabelledSet.from_atoms_list(frames, gap=np.array(gaps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--n', type=int, default=1000, help='Number of 40-atom structures.')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads.')
    parser.add_argument('--epochs', type=int, default=3, help='Epochs to time.')
    parser.add_argument('--output', default=default_output('gnn_model'), help='JSON file to write.')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    labelled = dataset(args.n)
    start = time.perf_counter()
    graphs = build_graphs(labelled, 5.5)
    t_graphs = time.perf_counter() - start
    normalisation = Normalisation.fit(graphs, labelled.gap, np.arange(len(graphs)))
    torch.manual_seed(0)
    loaded = LoadedModel(model=BandGapGNN().eval(), normalisation=normalisation,
                         metadata={'cutoff': 5.5, 'target': 'gap'})
    data = to_pyg(graphs, normalisation)
    from torch_geometric.loader import DataLoader

    inference = {}
    model = loaded.model.to(device)
    for batch_size in (1, 32, 256):
        start = time.perf_counter()
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=batch_size):
                batch = batch.to(device)
                model(batch.x, batch.edge_index, batch.edge_weight, batch.batch)
        if device.type == 'cuda':
            torch.cuda.synchronize()
        inference[batch_size] = args.n / (time.perf_counter() - start)
    start = time.perf_counter()
    predict(loaded, labelled, batch_size=256, device=device)
    end_to_end = args.n / (time.perf_counter() - start)

    result = train_gnn(labelled, {'max_epochs': args.epochs, 'patience': None, 'batch_size': 32,
                                  'split': (0.7, 0.15, 0.15)})
    per_epoch = float(np.mean(result.curve['seconds']))
    summary = {
        'n_structures': args.n, 'n_atoms': 40, 'device': str(device), 'torch_threads': args.threads,
        'graph_building_s': t_graphs,
        'inference_structures_per_s': {str(k): v for k, v in inference.items()},
        'batching_speedup_256_vs_1': inference[256] / inference[1],
        'end_to_end_prediction_structures_per_s': end_to_end,
        'train_seconds_per_epoch_700_train_structures': per_epoch,
        'train_seconds_per_epoch_per_1000_structures': per_epoch * 1000 / result.metrics['train']['n'],
        'machine': machine(args.threads, str(device)),
    }
    write_result(summary, args.output)
    print(
        '| quantity | value |\n|---|---|\n'
        + ''.join(f'| inference, batch {k} (structures/s) | {v:.0f} |\n' for k, v in inference.items())
        + f'| batching speed-up 256 vs 1 | {summary["batching_speedup_256_vs_1"]:.1f}x |\n'
        + f'| end-to-end prediction incl. graphs (structures/s) | {end_to_end:.0f} |\n'
        + f'| graph building, {args.n} structures (s) | {t_graphs:.2f} |\n'
        + f'| training, s per epoch ({result.metrics["train"]["n"]} train + '
          f'{result.metrics["validation"]["n"]} validation) | {per_epoch:.2f} |\n')


if __name__ == '__main__':
    main()
