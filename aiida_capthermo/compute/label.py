"""``capthermo-label``: label a batch of structures with an ASE calculator (the ``local`` engine)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='capthermo-label', description=__doc__)
    parser.add_argument('--structures', default='structures.npz', help='LabelledSet .npz of the structures to label.')
    parser.add_argument('--calculator', default='calculator.json', help='JSON calculator spec (see CalculatorSpec).')
    parser.add_argument('--output', default='labels.npz', help='Where to write the labelled set.')
    parser.add_argument('--summary', default='summary.json', help='Where to write the machine-readable summary.')
    parser.add_argument('--relax', default=None,
                        help='JSON relaxation spec (see RelaxSpec): relax each structure, then label it there.')
    parser.add_argument('--max-seconds', type=float, default=None,
                        help='Wall-clock limit (s): the run stops there, wherever it is (error_kind walltime).')
    args = parser.parse_args(argv)

    import json

    import numpy as np

    from aiida_capthermo.compute.summary import summary_writer, wall_clock_limit
    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.labelling import label_structures
    from aiida_capthermo.ml.settings import CalculatorSpec, RelaxSpec

    with summary_writer(args.summary, 'label', vars(args)) as summary:
        with open(args.calculator) as handle:
            spec = CalculatorSpec.model_validate(json.load(handle))
        relax = None
        if args.relax:
            with open(args.relax) as handle:
                relax = RelaxSpec.model_validate(json.load(handle))
        structures = LabelledSet.load(args.structures)
        if len(structures) == 0:
            raise ValueError('no structures to label')
        with wall_clock_limit(args.max_seconds):
            # isolate: a segfault fails one structure
            labelled, records = label_structures(structures, spec, isolate=True, relax=relax)
        labelled.save(args.output)
        n_ok = sum(record['status'] == 'ok' for record in records)
        summary.update(
            calculator=spec.model_dump(), relax=relax.model_dump() if relax else None,
            units={'energy': 'eV', 'forces': 'eV/Angstrom', 'stress': 'eV/Angstrom^3', 'gap': 'eV'},
            threads=next((r['threads'] for r in records if r['threads'] is not None), None),
            n_structures=len(records), n_ok=n_ok, n_failed=len(records) - n_ok, records=records, output=args.output,
            seconds_per_structure=float(np.mean([r['seconds'] for r in records if r['seconds'] is not None] or [0.0])))
        if n_ok == 0:
            summary['error_kind'] = 'no_structure_labelled'
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
