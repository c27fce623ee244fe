"""What a wider `mid` potential would cost: MACE training time per structure at the `mid` protocol's shape with 32
(the protocol) and 64 channels, in the same run, as the protocol trains (ScaleShiftMACE, max_L 1, correlation 3,
r_max 5 Å, float32, one thread, batch 4).

Timing only, on the 40-atom Ag3S(Br,I) cells of ``bench_mace.py`` with its Lennard-Jones labels. The ratio of the two
widths is the result; ``projected_mid_potential_stage_seconds`` scales the `mid` record's own training times
(docs/figures/mid/run.json: the first training and the three retrainings of its potential stage) by it, the stage's
MD and labels unchanged (the MD also slows with the width; not counted, so the projection is a lower bound).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_mace_width.py [--n 60] [--epochs 3]``; writes
``benchmarks/bench_mace_width.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

from bench_mace import antiperovskite_set, time_training
from common import default_output, machine, write_result

ROOT = pathlib.Path(__file__).parent.parent
MID = {'model': 'ScaleShiftMACE', 'max_L': 1, 'correlation': 3, 'num_interactions': 2, 'r_max': 5.0}
WIDTHS = (32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=60, help='structures (5 %% of them are the validation set)')
    parser.add_argument('--epochs', type=int, default=3, help='epochs; the last one is timed')
    parser.add_argument('--output', default=default_output('mace_width'))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = {'machine': machine(1, 'cpu'), 'structure': '40-atom Ag3S(Br,I) 2x2x2, LJ labels (timing only)',
               'dtype': 'float32', 'batch_size': 4, 'threads': 1, 'architecture': MID, 'widths': {}}
    labelled = antiperovskite_set(args.n, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        for width in WIDTHS:
            train = time_training(labelled, {**MID, 'num_channels': width}, pathlib.Path(tmp) / str(width),
                                  epochs=args.epochs, dtype='float32')
            train.pop('model_file')
            results['widths'][str(width)] = train
            print(width, json.dumps(train), flush=True)
    ratio = results['widths']['64']['seconds_per_structure'] / results['widths']['32']['seconds_per_structure']
    results['ratio_64_over_32'] = ratio
    record = json.loads((ROOT / 'docs/figures/mid/run.json').read_text())
    stage = next(s for s in record['stages'] if s['process'] == 'MlipPotentialWorkChain')
    training = sum(c['seconds'] for c in stage['called'] if c['process'] == 'FinetuneMaceWorkChain')
    results['mid_record'] = {'potential_stage_seconds': stage['seconds'], 'training_seconds': training,
                             'study_seconds': record['study_seconds']}
    results['projected_mid_potential_stage_seconds'] = stage['seconds'] + (ratio - 1) * training
    results['projected_mid_study_seconds'] = record['study_seconds'] + (ratio - 1) * training
    write_result(results, args.output)
    print(f'64 / 32 channels: {ratio:.2f} x per structure; the mid record trained for {training:.0f} s of its '
          f'{stage["seconds"]:.0f} s potential stage; with 64 channels at least '
          f'{results["projected_mid_study_seconds"]:.0f} s for the study ({record["study_seconds"]:.0f} s recorded)')


if __name__ == '__main__':
    main()
