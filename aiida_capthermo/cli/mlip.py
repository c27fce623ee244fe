"""``capthermo-mlip``: relax structures with a MACE potential (optionally with harmonic phonons), or run Langevin MD.

Thin console script run on the compute side: parse arguments, call :func:`run_screen` (``screen``, which uses
:mod:`aiida_capthermo.ml.mlip`) or :func:`run_md` (``md``, :mod:`aiida_capthermo.ml.md`), and write ``summary.json`` (inputs, units, outputs, timings, ``error`` on failure).
Heavy imports happen inside the function so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys

from aiida_capthermo.cli.summary import summary_writer

__all__ = ['main', 'run_screen', 'run_md']

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
    md = sub.add_parser('md', help='Langevin MD of every structure at every temperature: stability and frames')
    md.add_argument('model', help='MACE .model file')
    md.add_argument('structures', help='LabelledSet .npz of the starting structures')
    md.add_argument('--config', default=None, help='JSON settings (see MdConfig); defaults when absent')
    md.add_argument('--frames', default='frames.npz', help='output LabelledSet of the kept frames (if frame_stride)')
    md.add_argument('--md', default='md.json', help='output JSON: one record per replica, with its series')
    md.add_argument('--summary', default='summary.json', help='where to write the JSON summary')
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


def run_md(model: str, structures: str, config: dict, frames_path: str, md_path: str) -> dict:
    """Run one Langevin replica per (structure, temperature) with the MACE ``model``; write records and frames.

    Each record holds the replica's verdict (stable, mean temperature K, closest pair Å, why it broke) and its
    series (time fs, temperature K, potential energy eV, shortest distance Å). A replica that raises is recorded
    with its ``error``; the others go on. The run fails only when no replica ran.
    """
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.md import MdConfig, langevin_stability
    from aiida_capthermo.ml.mlip import load_calculator

    settings = MdConfig.model_validate(config)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    calc = load_calculator(model, settings.device, settings.dtype)
    inputs = LabelledSet.load(structures)
    records, frames, frame_x, frame_t = [], [], [], []
    for index in range(len(inputs)):
        for temperature in settings.temperatures:
            replica = len(records)
            record = {'replica': replica, 'index': index, 'structure_uuid': str(inputs.structure_uuid[index]),
                      'x': float(inputs.x[index]), 'temperature': float(temperature), 'seed': settings.seed + replica}
            try:
                result = langevin_stability(
                    inputs.atoms(index, with_labels=False), calc, temperature, steps=settings.steps,
                    timestep=settings.timestep, friction=settings.friction, seed=record['seed'], stride=settings.stride,
                    min_distance=settings.stop_distance, frame_stride=settings.frame_stride)
            except Exception as exception:  # noqa: BLE001 -- recorded per replica; the others go on
                record.update(stable=False, error=f'{type(exception).__name__}: {exception}')
                records.append(record)
                continue
            record.update(result.verdict(settings.temperature_tolerance, settings.stable_distance))
            record['series'] = {'time_fs': result.time_fs, 'temperature': result.temperature,
                                'potential_energy': result.potential_energy, 'min_distance': result.min_distance}
            kept = [frame for frame in result.frames if settings.max_frame_force is None
                    or np.abs(frame.get_forces()).max() <= settings.max_frame_force]
            record['n_frames'] = len(kept)
            frames.extend(kept)
            frame_x.extend([record['x']] * len(kept))
            frame_t.extend([float(temperature)] * len(kept))
            records.append(record)
    if all('error' in record for record in records):
        raise RuntimeError(f'no replica ran: {[record["error"] for record in records]}')
    if frames:
        for frame in frames:
            frame.calc = None
        LabelledSet.from_atoms_list(frames, x=np.array(frame_x), temperature=np.array(frame_t),
                                    origin=np.array(['md'] * len(frames))).save(frames_path)
    with open(md_path, 'w') as handle:
        json.dump(records, handle, default=lambda value: value.tolist() if hasattr(value, 'tolist') else str(value))
    return {'n_replicas': len(records), 'n_stable': sum(bool(r.get('stable')) for r in records),
            'stable': all(bool(r.get('stable')) for r in records), 'n_frames': len(frames),
            'settings': settings.model_dump(), 'files': {'frames': frames_path if frames else None, 'md': md_path}}


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
            if args.command == 'screen':
                summary['outputs'] = run_screen(args.model, args.structures, config, args.relaxed, args.screen)
            else:
                summary['outputs'] = run_md(args.model, args.structures, config, args.frames, args.md)
    except Exception as exception:  # noqa: BLE001 -- already in the summary
        print(f'{type(exception).__name__}: {exception}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
