"""``capthermo-mace``: evaluate a MACE model on a dataset, or check its harmonic phonons against reference ones.

Thin console script run on the compute side: parse arguments, call one function of :mod:`aiida_capthermo.ml.mace`,
write a ``summary.json`` (inputs, units, outputs, timings, ``error`` on failure). Heavy imports happen inside the
commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ['main']


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='capthermo-mace', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)

    def common(p):
        p.add_argument('model', help='MACE .model file, or the name of a MACE-MP foundation model (e.g. medium-mpa-0)')
        p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
        p.add_argument('--dtype', default='float64', choices=['float64', 'float32'])
        p.add_argument('--summary', default='summary.json', help='where to write the JSON summary')

    evaluate = sub.add_parser('evaluate', help='energy/forces/stress MAE, RMSE, R^2 and parity arrays on a dataset')
    common(evaluate)
    evaluate.add_argument('dataset', help='LabelledSet .npz with reference labels')
    evaluate.add_argument('--parity', default='parity.npz', help='output .npz of reference/predicted arrays')
    evaluate.add_argument('--batch-size', type=int, default=8)

    phonons = sub.add_parser('phonons', help='harmonic frequencies vs reference force constants (MAE in THz)')
    common(phonons)
    phonons.add_argument('input', help='.npz with numbers, positions, cell (Å), supercell_matrix, force_constants '
                                       '(eV/Å^2)')
    phonons.add_argument('--arrays', default='phonon_frequencies.npz', help='output .npz of the frequencies (THz)')
    phonons.add_argument('--mesh', type=int, nargs=3, default=[4, 4, 4])
    phonons.add_argument('--displacement', type=float, default=0.01, help='finite displacement (Å)')
    return parser


def run_evaluate(args) -> dict:
    """Evaluate the model on the dataset; write the parity arrays; return the summary outputs."""
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.mace import evaluate_model, load_mace_model

    model = load_mace_model(args.model, args.device, args.dtype)
    metrics, parity = evaluate_model(model, LabelledSet.load(args.dataset), batch_size=args.batch_size)
    np.savez(args.parity, **parity)
    return {'metrics': metrics, 'files': {'parity': args.parity}}


def run_phonons(args) -> dict:
    """Phonon frequencies of the model vs the reference force constants; write the arrays; return the outputs."""
    import numpy as np

    from aiida_capthermo.ml.mace import load_mace_model, phonon_frequency_check

    model = load_mace_model(args.model, args.device, args.dtype)
    with np.load(args.input) as data:
        inputs = {key: data[key] for key in data.files}
    outputs, arrays = phonon_frequency_check(model, inputs['numbers'], inputs['positions'], inputs['cell'],
                                             inputs['supercell_matrix'], inputs['force_constants'], mesh=args.mesh,
                                             displacement=args.displacement)
    np.savez(args.arrays, **arrays)
    return {**outputs, 'files': {'arrays': args.arrays}}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``capthermo-mace``; returns 1 (after writing the summary) when the run failed."""
    from aiida_capthermo.compute.summary import summary_writer

    args = _parser().parse_args(argv)
    inputs = {k: v for k, v in vars(args).items() if k != 'command'}
    try:
        with summary_writer(args.summary, f'mace.{args.command}', inputs) as summary:
            summary['units'] = {'energy': 'eV', 'forces': 'eV/Å', 'stress': 'eV/Å^3', 'frequency': 'THz'}
            outputs = run_evaluate(args) if args.command == 'evaluate' else run_phonons(args)
            if args.command == 'evaluate':
                summary['metrics'] = outputs.pop('metrics')
            summary['outputs'] = outputs
    except Exception as exception:  # noqa: BLE001 -- every failure is in the summary for the parser
        print(f'{type(exception).__name__}: {exception}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
