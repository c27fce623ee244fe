"""``capthermo-mlip``: relax structures with a MACE potential and (optionally) check their harmonic phonons.

Thin console script run on the compute side: parse arguments, call :func:`run_screen`, which uses
:mod:`aiida_capthermo.ml.mlip`, and write ``summary.json`` (inputs, units, outputs, timings, ``error`` on failure).
Heavy imports happen inside the function so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys

from aiida_capthermo.cli.summary import summary_writer

__all__ = ['main', 'run_screen']

UNITS = {'energy': 'eV', 'energy_per_atom': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3', 'length': 'Å',
         'frequency': 'THz'}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='capthermo-mlip', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    screen = sub.add_parser('screen', help='relax every structure of a LabelledSet and rank them by energy')
    screen.add_argument('model', help='MACE .model file')
    screen.add_argument('structures', help='LabelledSet .npz of the structures to relax')
    screen.add_argument('--config', default=None, help='JSON settings (see ScreenConfig); defaults when absent')
    screen.add_argument('--relaxed', default='relaxed.npz', help='output LabelledSet of the relaxed structures')
    screen.add_argument('--screen', default='screen.json', help='output JSON: one record per structure')
    screen.add_argument('--summary', default='summary.json', help='where to write the JSON summary')
    return parser


def run_screen(model: str, structures: str, config: dict, relaxed_path: str, screen_path: str) -> dict:
    """Relax every structure of ``structures`` with the MACE ``model``; write the relaxed set and the records.

    Returns the summary outputs: number relaxed/converged, lowest energy per atom and the file names.
    A structure whose relaxation raises is recorded with its ``error`` and left out of ``relaxed_path``;
    the run fails only when no structure was relaxed.
    """
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.mlip import ScreenConfig, harmonic_phonons, load_calculator, relax

    settings = ScreenConfig.model_validate(config)
    calc = load_calculator(model, settings.device, settings.dtype)
    inputs = LabelledSet.load(structures)
    records, relaxed, kept = [], [], []
    for index in range(len(inputs)):
        atoms = inputs.atoms(index, with_labels=False)
        record = {'index': index, 'structure_uuid': str(inputs.structure_uuid[index]), 'n_atoms': len(atoms)}
        try:
            final, info = relax(atoms, calc, fmax=settings.fmax, steps=settings.max_steps, cell=settings.relax_cell)
            record.update(info)
            if settings.phonons:
                phonons = harmonic_phonons(final, calc, supercell=settings.supercell,
                                           displacement=settings.displacement, mesh=settings.mesh,
                                           imaginary_threshold=settings.imaginary_threshold)
                record.update(n_imaginary=phonons['n_imaginary'], n_imaginary_gamma=phonons['n_imaginary_gamma'],
                              min_frequency=phonons['min_frequency'],
                              gamma_frequencies=phonons['gamma_frequencies'].tolist())
            else:
                record.update(n_imaginary=None, min_frequency=None)
            relaxed.append(final)
            kept.append(index)
        except Exception as exception:  # noqa: BLE001 -- recorded per structure; the others go on
            record['error'] = f'{type(exception).__name__}: {exception}'
        records.append(record)
    if not relaxed:
        raise RuntimeError(f'no structure was relaxed: {[r.get("error") for r in records]}')
    kept = np.array(kept)
    result = LabelledSet.from_atoms_list(relaxed, x=inputs.x[kept], temperature=inputs.temperature[kept],
                                         origin=inputs.origin[kept], structure_uuid=inputs.structure_uuid[kept])
    result.save(relaxed_path)
    with open(screen_path, 'w') as handle:
        json.dump(records, handle, indent=1)
    energies = [r['energy_per_atom'] for r in records if 'energy_per_atom' in r]
    return {'n_structures': len(inputs), 'n_relaxed': len(relaxed),
            'n_converged': sum(bool(r.get('converged')) for r in records),
            'lowest_energy_per_atom': min(energies), 'relaxed_indices': kept.tolist(),
            'settings': settings.model_dump(), 'files': {'relaxed': relaxed_path, 'screen': screen_path}}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``capthermo-mlip``; returns 1 (after writing the summary) when the run failed."""
    args = _parser().parse_args(argv)
    inputs = {k: v for k, v in vars(args).items() if k != 'command'}
    try:
        with summary_writer(args.summary, f'mlip-{args.command}', inputs) as summary:
            summary['units'] = UNITS
            config = {}
            if args.config:
                with open(args.config) as handle:
                    config = json.load(handle)
            summary['config'] = config
            summary['outputs'] = run_screen(args.model, args.structures, config, args.relaxed, args.screen)
    except Exception as exception:  # noqa: BLE001 -- already in the summary
        print(f'{type(exception).__name__}: {exception}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
