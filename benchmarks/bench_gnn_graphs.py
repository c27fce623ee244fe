"""Benchmark: vectorised periodic radius graph vs a plain per-pair, per-image Python loop, same run, same data.

1000 randomly displaced 40-atom Ag3SI cells (2x2x2, a = 9.738 Å, displacements U[-0.3, 0.3] Å), cutoff 5.5 Å.
Writes ``benchmarks/bench_gnn_graphs.json`` (or ``--output``). Usage:
``python benchmarks/bench_gnn_graphs.py [--n 1000] [--output FILE]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from ase import Atoms

from aiida_capthermo.core.graphs import radius_graph_pbc, radius_graph_pbc_loop, radius_graphs_pbc

from common import default_output, machine, write_result


def structures(n: int, seed: int = 0) -> list[Atoms]:
    base = Atoms('ISAg3', scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)],
                 cell=np.eye(3) * 4.869, pbc=True).repeat(2)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.uniform(-0.3, 0.3, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--n', type=int, default=1000, help='Number of structures.')
    parser.add_argument('--cutoff', type=float, default=5.5, help='Cutoff in Å.')
    parser.add_argument('--output', default=default_output('gnn_graphs'), help='JSON file to write.')
    args = parser.parse_args()
    frames = structures(args.n)
    positions, cells = [a.positions for a in frames], [a.cell[:] for a in frames]
    # Interleave the three methods over chunks of 100 structures so that all see the same machine load
    # (this machine is shared); the totals over the chunks are the times reported.
    t_fast = t_single = t_slow = 0.0
    fast, single, slow = [], [], []
    for start in range(0, args.n, 100):
        stop = min(start + 100, args.n)
        tic = time.perf_counter()
        fast += radius_graphs_pbc(positions[start:stop], cells[start:stop], args.cutoff)
        t_fast += time.perf_counter() - tic
        tic = time.perf_counter()
        single += [radius_graph_pbc(p, c, args.cutoff) for p, c in zip(positions[start:stop], cells[start:stop])]
        t_single += time.perf_counter() - tic
        tic = time.perf_counter()
        slow += [radius_graph_pbc_loop(p, c, args.cutoff) for p, c in zip(positions[start:stop], cells[start:stop])]
        t_slow += time.perf_counter() - tic
    tic = time.perf_counter()
    radius_graphs_pbc(positions, cells, args.cutoff)
    t_fast_one_call = time.perf_counter() - tic
    identical = all(f.edge_set() == s.edge_set() == o.edge_set() for f, s, o in zip(fast, slow, single))
    result = {
        'n_structures': args.n, 'n_atoms': 40, 'cutoff_A': args.cutoff,
        'mean_edges_per_structure': float(np.mean([g.n_edges for g in fast])),
        'vectorised_s': t_fast, 'vectorised_single_call_all_structures_s': t_fast_one_call,
        'vectorised_one_call_per_structure_s': t_single, 'loop_s': t_slow, 'speedup': t_slow / t_fast,
        'speedup_one_call_per_structure': t_slow / t_single, 'identical_edge_sets': identical,
        'machine': machine(1),
    }
    write_result(result, args.output)
    print(
        '| structures | edges/structure | batched (s) | one call per structure (s) | loop (s) | speed-up batched '
        '| speed-up per structure | identical |\n|---|---|---|---|---|---|---|---|\n'
        f"| {args.n} x 40 atoms | {result['mean_edges_per_structure']:.0f} | {t_fast:.3f} | {t_single:.2f} | "
        f"{t_slow:.1f} | {result['speedup']:.0f}x | {result['speedup_one_call_per_structure']:.0f}x | {identical} |\n")


if __name__ == '__main__':
    main()
