"""``capthermo-mlip``: relax structures with a MACE potential (batched), compute their harmonic and finite-temperature
phonons, run Langevin MD (a stability check, or batched thermal sampling), or freeze Γ phonons at their thermal
amplitudes.

Thin console script run on the compute side: parse arguments, call :func:`run_screen` (``screen``, which uses
:mod:`aiida_capthermo.ml.mlip`), :func:`run_phonons` (``phonons``, :mod:`aiida_capthermo.ml.phonons`),
:func:`run_md` (``md``: stability verdicts and frames) or :func:`run_thermal` (``thermal``: sampling for the
band-gap model), both many replicas in one batched simulation of the MD engine :mod:`aiida_capthermo.ml.thermal`,
or :func:`run_modes` (``modes``), and write ``summary.json`` (inputs, units, outputs, timings, ``error`` on
failure). The settings of every task are in :mod:`aiida_capthermo.ml.settings`. Heavy imports happen inside the
functions so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys

from aiida_capthermo.compute.summary import summary_writer, wall_clock_limit

__all__ = ['main', 'run_screen', 'run_md', 'run_thermal', 'run_phonons', 'run_modes']

UNITS = {'energy': 'eV', 'energy_per_atom': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3', 'length': 'Å',
         'frequency': 'THz', 'time': 'fs', 'temperature': 'K', 'velocity': 'Å/fs', 'amplitude': 'amu^1/2 Å'}


#: Task -> (help, what the structures are, settings model, output files (option, default, help) in the order the
#: task's ``run_*`` function takes them).
TASKS = {
    'screen': ('relax every structure of a LabelledSet and rank them by energy', 'the structures to relax',
               'ScreenConfig', [('relaxed', 'relaxed.npz', 'output LabelledSet of the relaxed structures'),
                                ('screen', 'screen.json', 'output JSON: one record per structure')]),
    'md': ('batched Langevin MD of every structure at every temperature: stability and frames',
           'the starting structures',
           'MdConfig', [('frames', 'frames.npz', 'output LabelledSet of the kept frames (if frame_stride)'),
                        ('md', 'md.json', 'output JSON: one record per replica, with its series')]),
    'thermal': ('batched Langevin MD: every structure x temperature x seed in one TorchSim simulation; frames for '
                'the band-gap model', 'the starting (relaxed) structures', 'ThermalMdConfig',
                [('frames', 'frames.npz', 'output LabelledSet of the recorded frames of the replicas that finished, '
                                          'replica by replica'),
                 ('series', 'series.npz', 'output arrays per replica (time, T, E, ...)'),
                 ('md', 'md.json', 'output JSON: one record per replica')]),
    'phonons': ('harmonic phonons of each structure (batched displaced supercells, bands along the cubic path) and, '
                'with temperatures, renormalised phonons from MD by normal-mode decomposition of the velocities',
                'the (relaxed) structures', 'PhononConfig',
                [('bands', 'bands.npz', 'output arrays: bands, commensurate frequencies and spectra per structure'),
                 ('phonons', 'phonons.json', 'output JSON: one record per structure')]),
    'modes': ('Γ phonons of each structure with the MLIP, every mode frozen at its thermal amplitude with both signs',
              'the (relaxed) structures', 'ModesConfig',
              [('distorted', 'distorted.npz', 'output LabelledSet of the frozen-mode cells'),
               ('modes', 'modes.json', 'output JSON: modes per structure')]),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='capthermo-mlip', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)
    for name, (help_text, structures, settings, outputs) in TASKS.items():
        task = sub.add_parser(name, help=help_text)
        task.add_argument('model', help='MACE .model file')
        task.add_argument('structures', help=f'LabelledSet .npz of {structures}')
        task.add_argument('--config', default=None, help=f'JSON settings (see {settings}); defaults when absent')
        for option, default, option_help in outputs:
            task.add_argument(f'--{option}', default=default, help=option_help)
        task.add_argument('--summary', default='summary.json', help='where to write the JSON summary')
    return parser


def run_screen(model: str, structures: str, config: dict, relaxed_path: str, screen_path: str) -> dict:
    """Relax every structure of ``structures`` with the MACE ``model`` in batched TorchSim FIRE simulations.

    Structures are relaxed ``max_batch`` at a time (``auto``: as many as half the free GPU memory holds, all on the
    CPU; None: all at once; the summary's ``batching`` records the size and why); after every batch the relaxed set and
    the records written so far are saved, so a job killed by the scheduler leaves a checkpoint. With ``max_seconds``
    no batch starts after that time: the structures not reached are listed in ``remaining`` and the summary says
    ``complete: false`` (the CalcJob then exits with ERROR_OUT_OF_WALLTIME and a restart relaxes the rest).
    When a batch raises, its structures are relaxed one by one and those that still raise are recorded with their
    ``error``; running out of memory is fatal (the summary's ``error_kind`` says so, and a restart uses smaller
    batches).
    """
    import time

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.mlip import relax_batch
    from aiida_capthermo.ml.settings import ScreenConfig
    from aiida_capthermo.ml.thermal import batch_plan

    start = time.perf_counter()
    settings = ScreenConfig.model_validate(config)
    settings.apply_threads()
    potential = settings.load_model(model, compute_stress=settings.relax_cell)
    inputs = LabelledSet.load(structures)
    structures_in = [inputs.atoms(i, with_labels=False) for i in range(len(inputs))]
    batching = batch_plan(potential, structures_in, settings.max_batch)
    size = batching['batch_size']
    records, relaxed, kept, remaining = [], [], [], []
    for first in range(0, len(inputs), size):
        indices = list(range(first, min(first + size, len(inputs))))
        if settings.max_seconds is not None and first and time.perf_counter() - start > settings.max_seconds:
            remaining.extend(range(first, len(inputs)))
            break
        systems = [structures_in[index] for index in indices]
        try:
            outcome = relax_batch(potential, systems, fmax=settings.fmax, steps=settings.max_steps,
                                  cell=settings.relax_cell)
        except Exception as exception:
            if 'out of memory' in str(exception).lower():
                raise
            outcome = [_relax_alone(potential, atoms, settings) for atoms in systems]
        for index, (final, info) in zip(indices, outcome):
            records.append({'index': index, 'structure_uuid': str(inputs.structure_uuid[index]),
                            'n_atoms': len(systems[index - first]), **info})
            if final is not None:
                relaxed.append(final)
                kept.append(index)
        _write_screen(inputs, relaxed, kept, records, relaxed_path, screen_path)
    if not relaxed:
        raise RuntimeError(f'no structure was relaxed: {[r.get("error") for r in records]}')
    energies = [r['energy_per_atom'] for r in records if 'energy_per_atom' in r]
    return {'n_structures': len(inputs), 'n_relaxed': len(relaxed),
            'n_converged': sum(bool(r.get('converged')) for r in records),
            'lowest_energy_per_atom': min(energies), 'relaxed_indices': kept, 'remaining': remaining,
            'complete': not remaining, 'batch_size': size, 'batching': batching, 'kernels': potential.kernels,
            'precision': potential.precision,
            'settings': settings.model_dump(),
            'relaxations_per_minute': 60.0 * len(records) / (time.perf_counter() - start),
            'files': {'relaxed': relaxed_path, 'screen': screen_path}}


def _relax_alone(potential, atoms, settings) -> tuple:
    """Relax one structure of a batch that raised; (None, {'error': ...}) when it raises on its own too."""
    from aiida_capthermo.ml.mlip import relax_batch

    try:
        return relax_batch(potential, [atoms], fmax=settings.fmax, steps=settings.max_steps,
                           cell=settings.relax_cell)[0]
    except Exception as exception:
        if 'out of memory' in str(exception).lower():
            raise
        return None, {'error': f'{type(exception).__name__}: {exception}'}


def _write_screen(inputs, relaxed: list, kept: list, records: list, relaxed_path: str, screen_path: str) -> None:
    """Checkpoint of ``run_screen``: the relaxed structures and the records so far."""
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet

    if relaxed:
        index = np.array(kept)
        LabelledSet.from_atoms_list(relaxed, x=inputs.x[index], temperature=inputs.temperature[index],
                                    origin=inputs.origin[index],
                                    structure_uuid=inputs.structure_uuid[index]).save(relaxed_path)
    with open(screen_path, 'w') as handle:
        json.dump(records, handle, indent=1)


def run_md(model: str, structures: str, config: dict, frames_path: str, md_path: str) -> dict:
    """Run one Langevin replica per (structure, temperature) with the MACE ``model``, all of them in one batched
    simulation of the MD engine; write one record per replica and the frames.

    Each record holds the replica's verdict (stable, mean temperature K, closest pair Å, why it broke) and its
    series (time fs, temperature K, potential energy eV, shortest distance Å); a replica that blows up is stopped
    and the others go on. Every ``frame_stride`` steps a replica's frame (its model forces below
    ``max_frame_force``) goes to ``frames_path``, replica by replica, up to the step where it broke. The run fails
    (``no replica ran``) when the batched simulation itself raises.
    """
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.settings import MdConfig
    from aiida_capthermo.ml.thermal import batch_plan, run_replicas

    settings = MdConfig.model_validate(config)
    settings.apply_threads()
    potential = settings.load_model(model)
    inputs = LabelledSet.load(structures)
    runs = [(index, temperature) for index in range(len(inputs)) for temperature in settings.temperatures]
    records = [{'replica': replica, 'index': index, 'structure_uuid': str(inputs.structure_uuid[index]),
                'x': float(inputs.x[index]), 'temperature': float(temperature), 'seed': settings.seed + replica}
               for replica, (index, temperature) in enumerate(runs)]
    systems = [inputs.atoms(r['index'], with_labels=False) for r in records]
    batching = batch_plan(potential, systems, settings.max_batch)
    try:
        trajectories = run_replicas(
            potential, systems, [r['temperature'] for r in records], [r['seed'] for r in records],
            **settings.engine_arguments(), store_forces=settings.frame_stride is not None, batch_seed=settings.seed,
            batch_size=batching['batch_size'])
    except Exception as exception:
        raise RuntimeError(f'no replica ran: {type(exception).__name__}: {exception}') from exception
    frames, frame_x, frame_t = [], [], []
    for record, trajectory in zip(records, trajectories):
        record.update(trajectory.verdict(settings.temperature_tolerance, settings.stable_distance))
        record['series'] = {name: getattr(trajectory, name)
                            for name in ('time_fs', 'temperature', 'potential_energy', 'min_distance')}
        kept = _md_frames(inputs.atoms(record['index'], with_labels=False), trajectory, settings)
        record['n_frames'] = len(kept)
        frames.extend(kept)
        frame_x.extend([record['x']] * len(kept))
        frame_t.extend([record['temperature']] * len(kept))
    if frames:
        LabelledSet.from_atoms_list(frames, x=np.array(frame_x), temperature=np.array(frame_t),
                                    origin=np.array(['md'] * len(frames))).save(frames_path)
    with open(md_path, 'w') as handle:
        json.dump(records, handle, default=lambda value: value.tolist() if hasattr(value, 'tolist') else str(value))
    return {'n_replicas': len(records), 'n_stable': sum(bool(r['stable']) for r in records),
            'stable': all(bool(r['stable']) for r in records), 'n_frames': len(frames),
            'batching': batching, 'kernels': potential.kernels, 'precision': potential.precision,
            'settings': settings.model_dump(),
            'files': {'frames': frames_path if frames else None, 'md': md_path}}


def _md_frames(atoms, trajectory, settings) -> list:
    """The frames of ``trajectory`` (a replica of ``atoms``) every ``settings.frame_stride`` steps whose largest
    model force component is at most ``settings.max_frame_force`` (eV/Å), as unlabelled ``ase.Atoms``."""
    import numpy as np

    if not settings.frame_stride:
        return []
    frames = []
    steps = np.rint(trajectory.time_fs / settings.timestep).astype(int) - settings.equilibration_steps
    for step, positions, cell, forces in zip(steps, trajectory.positions, trajectory.cells, trajectory.forces):
        if step % settings.frame_stride or (settings.max_frame_force is not None
                                            and np.abs(forces).max() > settings.max_frame_force):
            continue
        frame = atoms.copy()
        frame.set_cell(cell)
        frame.positions = positions
        frames.append(frame)
    return frames


def run_thermal(model: str, structures: str, config: dict, frames_path: str, series_path: str, md_path: str) -> dict:
    """Run every (structure, temperature, seed) replica with the MACE ``model`` in batched simulations of the MD
    engine (``max_batch`` replicas each; ``auto``: as many as half the free GPU memory holds, all on the CPU; the
    summary's ``batching`` records the size chosen and why, ``kernels`` the MACE kernels).

    Writes the frames of the replicas that finished (replica by replica, in id order) as a LabelledSet (x, target
    temperature, potential energy per frame), the per-replica series and one record per replica (id, structure,
    x, temperature, seed, steps, why it broke, its frames' offset and count). Broken replicas keep their series
    for diagnosis but contribute no frames.
    """
    import time

    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.settings import ThermalMdConfig
    from aiida_capthermo.ml.thermal import batch_plan, run_replicas

    settings = ThermalMdConfig.model_validate(config)
    settings.apply_threads()
    potential = settings.load_model(model, compute_stress=settings.ensemble == 'npt')
    inputs = LabelledSet.load(structures)
    table = settings.replica_table(len(inputs))
    systems = [inputs.atoms(row['index'], with_labels=False) for row in table]
    batching = batch_plan(potential, systems, settings.max_batch)
    start = time.perf_counter()
    trajectories = run_replicas(
        potential, systems, [row['temperature'] for row in table], [row['seed'] for row in table],
        **settings.engine_arguments(), ensemble=settings.ensemble, pressure=settings.pressure,
        fix_com=settings.fix_com, store_velocities=settings.store_velocities, batch_seed=settings.seed,
        batch_size=batching['batch_size'])
    series = {}
    for row, trajectory in zip(table, trajectories):
        row.update(structure_uuid=str(inputs.structure_uuid[row['index']]), x=float(inputs.x[row['index']]),
                   batch_seed=trajectory.batch_seed, timestep=settings.timestep, steps=trajectory.steps_done,
                   broke=trajectory.broke, time_ps=trajectory.steps_done * settings.timestep / 1000.0,
                   mean_temperature=trajectory.mean_temperature(), min_distance=float(trajectory.min_distance.min()))
        series[row['replica']] = trajectory
    wall = time.perf_counter() - start
    n_frames = _write_thermal_frames(inputs, table, series, frames_path)
    np.savez_compressed(series_path, **{f'{name}_{replica}': values for replica, trajectory in series.items()
                                        for name, values in _thermal_series(trajectory).items()})
    with open(md_path, 'w') as handle:
        json.dump(table, handle, indent=1)
    replica_steps = sum(row['steps'] for row in table)
    broken = [row['replica'] for row in table if row['broke']]
    return {'n_replicas': len(table), 'n_broken': len(broken), 'broken': broken, 'n_frames': n_frames,
            'wall_time_s': wall, 'replica_steps_per_s': replica_steps / wall if wall > 0 else None,
            'batching': batching, 'kernels': potential.kernels, 'precision': potential.precision,
            'settings': settings.model_dump(),
            'files': {'frames': frames_path if n_frames else None, 'series': series_path, 'md': md_path}}


def _thermal_series(trajectory) -> dict:
    """The arrays of one replica in ``series.npz``: time (fs), temperature (K), potential energy (eV), closest
    distance (Å), volume (Å^3) and, when stored, velocities (Å/fs)."""
    arrays = {name: getattr(trajectory, name)
              for name in ('time_fs', 'temperature', 'potential_energy', 'min_distance', 'volume')}
    if trajectory.velocities is not None:
        arrays['velocities'] = trajectory.velocities
    return arrays


def _write_thermal_frames(inputs, table: list[dict], series: dict, frames_path: str) -> int:
    """Write the recorded frames of the replicas of ``table`` that finished (replica by replica) to
    ``frames_path`` and set every row's ``frame_offset`` and ``n_frames``; return the number of frames."""
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet

    frames, offset = [], 0
    for row in table:
        trajectory = series[row['replica']]
        kept = trajectory.broke is None
        row.update(frame_offset=offset, n_frames=len(trajectory.time_fs) if kept else 0)
        offset += row['n_frames']
        if kept:
            frames.append((row, trajectory))
    if frames:
        counts = [len(t.time_fs) for _, t in frames]  # frames per replica; a frame has the replica's atoms
        LabelledSet(
            numbers=np.concatenate([np.tile(inputs.atoms(r['index']).numbers, n) for (r, _), n in zip(frames, counts)]),
            positions=np.concatenate([t.positions.reshape(-1, 3) for _, t in frames]),
            cells=np.concatenate([t.cells for _, t in frames]),
            n_atoms=np.concatenate([np.full(n, t.positions.shape[1]) for (_, t), n in zip(frames, counts)]),
            energy=np.concatenate([t.potential_energy for _, t in frames]),
            x=np.repeat([r['x'] for r, _ in frames], counts),
            temperature=np.repeat([r['temperature'] for r, _ in frames], counts),
            origin=np.array(['md'] * sum(counts)),
        ).save(frames_path)
    return offset


def run_modes(model: str, structures: str, config: dict, distorted_path: str, modes_path: str) -> dict:
    """Γ modes of every structure with the MACE ``model`` (phonopy finite displacements of the cell itself), each
    active mode frozen at its thermal amplitude at every temperature with both signs.

    The distorted cells are written structure by structure, temperature by temperature, mode by mode, ``+`` then
    ``-``; the records give per structure the frequencies (THz), the active modes, their amplitudes per temperature
    (amu^1/2 Å) and the share of each species in each mode.
    """
    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.core.displacements import SupercellModes
    from aiida_capthermo.core.thermal import frozen_mode_displacements, species_participation
    from aiida_capthermo.ml.mlip import batched_forces, harmonic_phonons
    from aiida_capthermo.ml.settings import ModesConfig

    settings = ModesConfig.model_validate(config)
    settings.apply_threads()
    forces = batched_forces(settings.load_model(model))
    inputs = LabelledSet.load(structures)
    records, distorted, x, temperature = [], [], [], []
    for index in range(len(inputs)):
        atoms = inputs.atoms(index, with_labels=False)
        phonons = harmonic_phonons(atoms, forces, displacement=settings.displacement)
        modes = SupercellModes.from_force_constants(phonons['force_constants'], atoms.get_masses(), atoms.numbers,
                                                    frequency_cutoff=settings.frequency_cutoff,
                                                    imaginary=settings.imaginary)
        record = {'index': index, 'structure_uuid': str(inputs.structure_uuid[index]), 'x': float(inputs.x[index]),
                  'frequencies': modes.frequencies.tolist(), 'n_imaginary': modes.n_imaginary,
                  'participation': {k: v.tolist() for k, v in species_participation(
                      modes, atoms.get_chemical_symbols()).items()}, 'amplitudes': {}}
        for value in settings.temperatures:
            indices, amplitudes, displacements = frozen_mode_displacements(modes, value)
            record['active'] = indices.tolist()
            record['amplitudes'][str(float(value))] = amplitudes.tolist()
            for displacement in displacements:
                for sign in (1.0, -1.0):
                    frozen = atoms.copy()
                    frozen.positions += sign * displacement
                    distorted.append(frozen)
                    x.append(record['x'])
                    temperature.append(float(value))
        records.append(record)
    LabelledSet.from_atoms_list(distorted, x=np.array(x), temperature=np.array(temperature),
                                origin=np.array(['mode'] * len(distorted))).save(distorted_path)
    with open(modes_path, 'w') as handle:
        json.dump(records, handle)
    return {'n_structures': len(inputs), 'n_distorted': len(distorted), 'settings': settings.model_dump(),
            'n_imaginary': [r['n_imaginary'] for r in records],
            'files': {'distorted': distorted_path, 'modes': modes_path}}


def run_phonons(model: str, structures: str, config: dict, bands_path: str, phonons_path: str) -> dict:
    """Harmonic phonons of every structure and, at the configured temperatures, renormalised phonons from MD.

    ``phonons.json`` holds one record per structure (harmonic commensurate frequencies, number of imaginary modes,
    band labels; per temperature: harmonic and renormalised supercell-mode frequencies, linewidths, the
    renormalised commensurate frequencies, whether the 0 K instabilities are stabilised); ``bands.npz`` the bands
    (``distance_i``, ``qpoints_i``, ``harmonic_i``, ``T300.0_i``), the total DOS (``dos_frequency_i``, ``dos_i``,
    ``dos_frequency_i_T300.0``, ``dos_i_T300.0``) and the mode spectra (``spectrum_i_T300.0``,
    ``spectrum_frequency_i_T300.0``) of structure i.
    """
    import time

    import numpy as np

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.mlip import band_structure, batched_forces, phonopy_from_forces, total_dos
    from aiida_capthermo.ml.phonons import commensurate_frequencies, finite_temperature_phonons
    from aiida_capthermo.ml.settings import PhononConfig

    start = time.perf_counter()
    settings = PhononConfig.model_validate(config)
    settings.apply_threads()
    potential = settings.load_model(model)
    forces = batched_forces(potential, settings.batch_size)
    inputs = LabelledSet.load(structures)
    records, arrays, phonons = [], {}, []
    for index in range(len(inputs)):
        phonon = phonopy_from_forces(inputs.atoms(index, with_labels=False), forces, settings.supercell,
                                     settings.displacement)
        phonons.append(phonon)
        points, frequencies = commensurate_frequencies(phonon)
        bands = band_structure(phonon, settings.band_points)
        arrays.update({f'distance_{index}': bands['distances'], f'qpoints_{index}': bands['qpoints'],
                       f'harmonic_{index}': bands['frequencies']})
        arrays[f'dos_frequency_{index}'], arrays[f'dos_{index}'] = total_dos(phonon, settings.dos_mesh,
                                                                             settings.dos_sigma)
        records.append({
            'index': index, 'structure_uuid': str(inputs.structure_uuid[index]), 'x': float(inputs.x[index]),
            'n_atoms': int(inputs.n_atoms[index]), 'supercell': settings.supercell,
            'n_displacements': len(phonon.supercells_with_displacements),
            'commensurate_points': points.tolist(), 'commensurate_frequencies': frequencies.tolist(),
            'n_imaginary': int(np.sum(frequencies < settings.imaginary_threshold)),
            'min_frequency': float(frequencies.min()), 'band_labels': bands['labels'], 'temperatures': {}})
    harmonic_s = time.perf_counter() - start
    for index, (record, by_temperature) in enumerate(zip(records, finite_temperature_phonons(potential, phonons,
                                                                                           settings))):
        for key, result in by_temperature.items():
            if result['broke']:
                record['temperatures'][key] = {'broke': result['broke']}
                continue
            arrays[f'T{key}_{index}'] = band_structure(result['phonopy'], settings.band_points)['frequencies']
            arrays[f'dos_frequency_{index}_T{key}'], arrays[f'dos_{index}_T{key}'] = total_dos(
                result['phonopy'], settings.dos_mesh, settings.dos_sigma)
            arrays[f'spectrum_frequency_{index}_T{key}'], arrays[f'spectrum_{index}_T{key}'] = result['spectrum']
            imaginary = result['imaginary_harmonic']
            record['temperatures'][key] = {
                'broke': None, 'stabilised': result['stabilised'], 'unresolved': result['unresolved'],
                'trapped': result['trapped'], 'displacement_ratio': result['displacement_ratio'],
                'harmonic': result['harmonic'].tolist(), 'renormalised': result['renormalised'].tolist(),
                'linewidth': result['linewidth'].tolist(), 'fitted': result['fitted'].tolist(),
                'acoustic': result['acoustic'].tolist(), 'imaginary_harmonic': imaginary,
                'imaginary_renormalised': [result['renormalised'][m] for m in imaginary],
                'commensurate_frequencies': result['commensurate_frequencies'].tolist(),
                'equipartition': result['equipartition'], 'mean_temperature': result['mean_temperature'],
                'resolution': result['resolution']}
    np.savez_compressed(bands_path, **arrays)
    with open(phonons_path, 'w') as handle:
        json.dump(records, handle)
    return {'n_structures': len(inputs), 'n_imaginary': [r['n_imaginary'] for r in records],
            'settings': settings.model_dump(), 'harmonic_wall_time_s': harmonic_s,
            'wall_time_s': time.perf_counter() - start,
            'broken': [[r['index'], key] for r in records for key, t in r['temperatures'].items() if t['broke']],
            'files': {'bands': bands_path, 'phonons': phonons_path}}


#: Tasks stopped by an alarm at ``max_seconds`` wherever they are; the screen stops itself between batches.
HARD_LIMIT_TASKS = ('md', 'thermal', 'phonons')


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
            run = globals()[f'run_{args.command}']  # one run_<task> per entry of TASKS
            files = [getattr(args, option) for option, _, _ in TASKS[args.command][3]]
            with wall_clock_limit(config.get('max_seconds') if args.command in HARD_LIMIT_TASKS else None):
                summary['outputs'] = run(args.model, args.structures, config, *files)
    except Exception as exception:  # noqa: BLE001 -- already in the summary
        print(f'{type(exception).__name__}: {exception}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
