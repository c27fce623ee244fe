"""Benchmark of the labels a study spends: out-of-sample errors on held-out thermal frames against the number of
teacher labels, for three ways of choosing the labelled structures.

A production study pays for its teacher labels (the paper: 2,200 PBEsol + 1,000 HSEsol calculations). The question
here: how many labels does the active-learning loop need to reach a given accuracy on the frames a thermal study
averages over, compared with spending the same labels on more phonon-informed cells, or on cells with random
displacements? Everything runs on the compute side of the package, with the chemistry, engine and models of a study
protocol (``--protocol``, default ``demo``: its MACE hyper-parameters, its refinement settings, its GNN's first
stage, read from the protocol files):

1. **Parents.** Ag3SI and Ag3SBr (the anti-perovskite preset) relaxed by the low engine (GFN1-xTB-noXB, cell and
   positions), and their harmonic phonons in the 2x2x2 cell by finite displacements with the same engine.
2. **Held-out thermal frames.** Langevin MD run by the engine itself (:func:`aiida_capthermo.ml.labelling.engine_md`,
   ``--held-out-timestep`` fs, friction 0.01/fs) at the refinement's compositions and temperatures (the thermal
   stage's), from a phonon-displaced Vegard cell with its own decoration; after ``--equilibration`` fs, a frame every
   ``--held-out-stride`` steps, labelled by the MD step itself (energy, forces, the engine's gap). These are the
   teacher's own thermal distribution; no model trains on them.
3. **Base set.** ``--base`` phonon-informed cells (:mod:`aiida_capthermo.core.generation`, the dataset stage's
   generator; temperatures 100-600 K, compositions on the grid), labelled. Every arm starts from it.
4. **Three arms**, each adding as many labels per round as the active arm's MD gave, for ``--rounds`` rounds:
   - ``active``: the loop of ``MlipPotentialWorkChain``: Langevin MD with the arm's current potential (the batched
     engine of ``capthermo-mlip md``, :func:`aiida_capthermo.compute.mlip.run_md`, with the protocol's ``refine``
     settings) from Vegard cells at its compositions and temperatures, a frame every ``frame_stride`` steps up to
     where a replica broke, labelled and added;
   - ``phonon``: more phonon-informed cells from the same generator (other seeds);
   - ``random``: cells with uniform random displacements (the second paper's eq. 2) whose RMS displacement is that
     of the base set.
5. **Models.** On every training set a MACE potential (the protocol's hyper-parameters, trained from scratch with the
   same seed, so the training sets are the only difference; the study's loop continues training instead) and the
   GNN (the protocol's first stage) on the low engine's gap, which every force label brings at no extra cost (the
   study's GNN learns the high engine's gap on a subset; the selection question is the same). Their errors on the
   held-out frames are recorded: force MAE (eV/Å), energy MAE (meV/atom, after removing the mean offset, which a
   reference energy absorbs), gap MAE and mean error (eV).

Labels are counted as the structures a model trained on (base + added). The loop's extra cost, the MD with the
potential, is timed but costs no label.

Usage (two worker processes: labels, engine MD and trainings run two at a time, one thread each)::

    python benchmarks/bench_labels.py                 # writes benchmarks/bench_labels.json (about 35 min here)
    python benchmarks/bench_labels.py --protocol mid --output /tmp/labels_mid.json
    python benchmarks/bench_labels.py --tiny --output /tmp/labels.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import default_output, machine, write_result

PROTOTYPE = {'host': 'I', 'guest': 'Br', 'a': 'Ag', 'b': 'S', 'a_host': 4.869, 'a_guest': 4.793}
ENGINE = {'name': 'tblite', 'method': 'GFN1-xTB', 'halogen_bond': False}
ARMS = ('active', 'phonon', 'random')


def protocol_settings(protocol: str, tiny: bool) -> dict:
    """The study protocol's MACE hyper-parameters, its refinement (``MdStageSettings``: compositions, temperatures,
    steps, time step, frame stride...) and its GNN's first-stage hyper-parameters, from the protocol files; in
    ``tiny``, two epochs each and 40 MD steps at one (x, T)."""
    from aiida_capthermo.workflows.gnn import GnnTwoStageWorkChain
    from aiida_capthermo.workflows.mlip_potential import MdStageSettings, MlipPotentialWorkChain
    from aiida_capthermo.workflows.study import CapthermoStudyWorkChain

    mlip = CapthermoStudyWorkChain.stage_protocol_inputs(protocol, 'mace', MlipPotentialWorkChain)
    gnn = CapthermoStudyWorkChain.stage_protocol_inputs(protocol, 'gnn', GnnTwoStageWorkChain)
    refine = dict(mlip['refine'])
    mace, gnn = dict(mlip['hyperparameters']), {**gnn['hyperparameters'], 'device': 'cpu'}
    if tiny:
        mace['max_num_epochs'], gnn['max_epochs'] = 2, 2
        refine.update(compositions=[0.5], temperatures=[600.0], steps=40, frame_stride=20)
    refine.update(rounds=1, force_tolerance=None, finetune_epochs=None, max_seconds=None)
    return {'mace': mace, 'gnn': gnn, 'refine': MdStageSettings.model_validate(refine)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--base', type=int, default=60, help='phonon-informed cells every arm starts from')
    parser.add_argument('--rounds', type=int, default=2, help='rounds of added labels per arm')
    parser.add_argument('--protocol', default='demo',
                        help='the study protocol whose MACE, GNN and active-learning settings are used (demo, mid)')
    parser.add_argument('--held-out-steps', type=int, default=200, help='steps of each engine MD trajectory')
    parser.add_argument('--held-out-timestep', type=float, default=4.0, help='fs, engine MD (the thermal stage\'s)')
    parser.add_argument('--held-out-stride', type=int, default=20, help='steps between held-out frames')
    parser.add_argument('--equilibration', type=float, default=400.0, help='fs of engine MD before the frames')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--tiny', action='store_true', help='a minute-sized run of every step (the test)')
    parser.add_argument('--output', default=default_output('labels'))
    return parser


# --------------------------------------------------------------------------------------------------- the engine
def _spec():
    from aiida_capthermo.ml.settings import CalculatorSpec

    return CalculatorSpec(**ENGINE)


def _label_chunk(structures):
    """Worker: label a LabelledSet with the engine (one thread)."""
    from aiida_capthermo.ml.labelling import label_structures

    return label_structures(structures, _spec())[0]


def label(pool, structures, workers: int):
    """Label ``structures`` in ``workers`` chunks of the pool; drop the structures the engine failed on."""
    from aiida_capthermo.core.dataset import LabelledSet

    chunks = [structures.subset(part) for part in np.array_split(np.arange(len(structures)), workers) if len(part)]
    labelled = LabelledSet.concatenate(list(pool.map(_label_chunk, chunks)))
    return labelled.subset(np.flatnonzero(labelled.has_label('energy') & labelled.has_label('gap')))


def _engine_md(atoms, x: float, temperature: float, steps: int, timestep: float, stride: int, seed: int,
               equilibration: float):
    """Worker: a trajectory of the engine's own MD; its production frames, labelled, as a LabelledSet."""
    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.labelling import engine_md, openmp_threads, single_point_function

    with openmp_threads(1):
        frames, series = engine_md(atoms, single_point_function(_spec()), temperature, steps, timestep=timestep,
                                   stride=stride, seed=seed)
    kept = [frame for frame, time_fs in zip(frames, series['time_fs']) if time_fs >= equilibration]
    return LabelledSet.from_atoms_list(kept, x=np.full(len(kept), x), temperature=np.full(len(kept), temperature),
                                       origin=np.array(['engine_md'] * len(kept)),
                                       gap=np.array([frame.info['gap'] for frame in kept])), series


# -------------------------------------------------------------------------------------------------- structures
class Generator:
    """The dataset stage's generator on the relaxed parents and their phonons."""

    def __init__(self, host, guest, modes_host, modes_guest, supercell=(2, 2, 2)):
        from aiida_capthermo.core.displacements import phonopy_supercell

        self.reference = phonopy_supercell(host, supercell)
        self.guest_reference = phonopy_supercell(guest, supercell)
        self.modes = (modes_host, modes_guest)

    def make(self, scheme: str, n: int, seed: int, temperature: float = 300.0, amplitude: float = 0.1,
             x_values=None, stratum: int = 0):
        from aiida_capthermo.core.dataset import LabelledSet
        from aiida_capthermo.core.generation import GenerationSpec, generate_structures

        spec = GenerationSpec(host=PROTOTYPE['host'], guest=PROTOTYPE['guest'], n_structures=n, seed=seed,
                              scheme=scheme, temperature=temperature, amplitude=amplitude, stratum=stratum,
                              x_values=tuple(x_values) if x_values is not None else None)
        items = generate_structures(spec, self.reference, *self.modes, self.guest_reference)
        return LabelledSet.from_atoms_list([item.atoms for item in items], x=np.array([item.x for item in items]),
                                           temperature=np.array([item.temperature for item in items]),
                                           origin=np.array([item.origin for item in items]))

    def phonon_set(self, n: int, seed: int, temperatures=(100.0, 200.0, 300.0, 400.0, 500.0, 600.0)):
        """``n`` phonon-informed cells spread over ``temperatures`` (as the dataset stage does, one batch per T)."""
        from aiida_capthermo.core.dataset import LabelledSet

        counts = [len(part) for part in np.array_split(np.arange(n), len(temperatures))]
        return LabelledSet.concatenate([self.make('phonon', count, seed + 1000 * k, temperature, stratum=k)
                                        for k, (count, temperature) in enumerate(zip(counts, temperatures)) if count])

    def rms_displacement(self, structures) -> float:
        """RMS Cartesian displacement component (Å) of ``structures`` from their Vegard cells (same atom order)."""
        from aiida_capthermo.core.structures import vegard_structure

        squares = []
        for index in range(len(structures)):
            atoms = structures.atoms(index, with_labels=False)
            ideal = vegard_structure(self.reference, self.guest_reference, float(structures.x[index]))
            delta = atoms.positions - ideal.positions
            delta -= delta.mean(axis=0)
            squares.append(np.mean(delta ** 2))
        return float(np.sqrt(np.mean(squares)))


def parents(tiny: bool):
    """The relaxed end members and their harmonic modes (2x2x2), by the engine."""
    from aiida_capthermo.core.displacements import SupercellModes
    from aiida_capthermo.core.structures import end_members
    from aiida_capthermo.ml.labelling import relax_atoms, single_point_function
    from aiida_capthermo.ml.mlip import harmonic_phonons
    from aiida_capthermo.ml.settings import RelaxSpec

    single_point = single_point_function(_spec())
    relaxed, modes, records = [], [], []
    for atoms in end_members(PROTOTYPE):
        atoms, record = relax_atoms(atoms, single_point, RelaxSpec(fmax=0.02 if tiny else 0.005))
        phonons = harmonic_phonons(atoms, lambda cells: [single_point(cell)['forces'] for cell in cells],
                                   supercell=(2, 2, 2))
        relaxed.append(atoms)
        modes.append(SupercellModes.from_phonopy(phonons['phonopy']))
        records.append({'formula': atoms.get_chemical_formula(), 'a': float(atoms.cell.lengths()[0]),
                        'relax_steps': record['steps'], 'min_frequency_THz': phonons['min_frequency'],
                        'n_displacements': phonons['n_displacements']})
    return relaxed, modes, records


# ---------------------------------------------------------------------------------------------------- the models
def train_mace(labelled, workdir: pathlib.Path, hyperparameters: dict) -> str:
    """Train MACE from scratch on ``labelled`` with ``mace_run_train`` (one thread); the model file."""
    import yaml

    from aiida_capthermo.calculations.mace import MODEL_NAME, TRAIN_FILE, MaceHyperParameters, build_mace_config

    workdir.mkdir(parents=True, exist_ok=True)
    labelled.write_extxyz(workdir / TRAIN_FILE)
    params = MaceHyperParameters(**hyperparameters)
    config = build_mace_config(params, foundation=None, has_valid=False, has_test=False)
    (workdir / 'config.yaml').write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, '-m', 'mace.cli.run_train', '--config', 'config.yaml'], cwd=workdir,
                         capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    if run.returncode:
        raise RuntimeError(f'mace_run_train failed ({run.returncode}): {run.stderr[-1500:]}')
    return str(workdir / f'{MODEL_NAME}.model')


def mace_errors(model_file: str, held_out) -> dict:
    """The potential's errors on the held-out frames: force MAE (eV/Å), energy per atom MAE about the mean offset
    (meV/atom) and the offset itself."""
    from aiida_capthermo.ml.mace import evaluate_model, load_mace_model

    _, parity = evaluate_model(load_mace_model(model_file, 'cpu', 'float64'), held_out)
    error = (parity['energy_pred'] - parity['energy_ref']) / parity['n_atoms']
    return {'force_mae': float(np.mean(np.abs(parity['forces_pred'] - parity['forces_ref']))),
            'energy_per_atom_mae_meV': float(1000 * np.mean(np.abs(error - error.mean()))),
            'energy_per_atom_offset_meV': float(1000 * error.mean())}


def gnn_errors(labelled, held_out, hyperparameters: dict) -> dict:
    """Train the GNN on the engine's gaps of ``labelled``; its gap MAE and mean error (eV) on the frames."""
    from aiida_capthermo.ml.gnn.predict import predict
    from aiida_capthermo.ml.gnn.training import train_gnn

    result = train_gnn(labelled, hyperparameters)
    error = predict(result.loaded, held_out) - held_out.gap
    return {'gap_mae': float(np.mean(np.abs(error))), 'gap_mean_error': float(np.mean(error))}


def active_frames(model_file: str, starts, refine, seed_offset: int, workdir: pathlib.Path):
    """Frames of Langevin MD with the potential (the refinement MD of MlipPotentialWorkChain, with its settings
    ``refine``: every start cell at every temperature in one job), unlabelled."""
    from aiida_capthermo.compute.mlip import run_md
    from aiida_capthermo.core.dataset import LabelledSet

    workdir.mkdir(parents=True, exist_ok=True)
    starts.save(workdir / 'starts.npz')
    config = {**refine.md_parameters(seed_offset), 'device': 'cpu', 'threads': 1}
    summary = run_md(model_file, str(workdir / 'starts.npz'), config, str(workdir / 'frames.npz'),
                     str(workdir / 'md.json'))
    frames = LabelledSet.load(workdir / 'frames.npz') if summary['n_frames'] else None
    return frames, summary


# ----------------------------------------------------------------------------------------------------- the run
def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.tiny:
        args.base, args.rounds, args.held_out_steps, args.held_out_stride, args.equilibration = 8, 1, 12, 4, 8.0
    settings = protocol_settings(args.protocol, args.tiny)
    refine = settings['refine']
    import torch

    torch.set_num_threads(1)
    from aiida_capthermo.core.dataset import LabelledSet

    begin = time.perf_counter()
    seconds: dict[str, float] = {}
    context = multiprocessing.get_context('spawn')
    with (concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool,
          tempfile.TemporaryDirectory() as tmp):
        tmp = pathlib.Path(tmp)
        start = time.perf_counter()
        (host, guest), modes, parent_records = parents(args.tiny)
        generator = Generator(host, guest, *modes)
        seconds['parents'] = time.perf_counter() - start

        # Held-out frames: the engine's own MD, one trajectory per (x, T), each from its own decoration.
        start = time.perf_counter()
        jobs = []
        for i, x in enumerate(refine.compositions):
            for j, temperature in enumerate(refine.temperatures):
                cell = generator.make('phonon', 1, 9000 + 10 * i + j, temperature, x_values=[x])
                jobs.append(pool.submit(_engine_md, cell.atoms(0, with_labels=False), x, temperature,
                                        args.held_out_steps, args.held_out_timestep, args.held_out_stride,
                                        7 + 10 * i + j,
                                        args.equilibration))
        trajectories = [job.result() for job in jobs]
        held_out = LabelledSet.concatenate([frames for frames, _ in trajectories])
        held_out_temperatures = [float(np.mean(series['temperature'][len(series['temperature']) // 2:]))
                                 for _, series in trajectories]
        seconds['held_out_engine_md'] = time.perf_counter() - start

        # The base set, and the pools of the phonon and random arms.
        start = time.perf_counter()
        base = label(pool, generator.phonon_set(args.base, seed=1), args.workers)
        extra = args.rounds * _round_size(refine)
        amplitude = float(np.sqrt(3.0) * generator.rms_displacement(base))  # uniform [-a, a]: RMS a / sqrt(3)
        pools = {'phonon': label(pool, generator.phonon_set(extra, seed=2), args.workers),
                 'random': label(pool, LabelledSet.concatenate([
                     generator.make('random', count, 3 + k, amplitude=amplitude, stratum=k)
                     for k, count in enumerate(len(part) for part in np.array_split(np.arange(extra), 6))
                     if count]), args.workers)}
        seconds['labels_base_and_pools'] = time.perf_counter() - start
        starts = LabelledSet.concatenate([generator.make('equilibrium', 1, 500 + i, x_values=[x])
                                          for i, x in enumerate(refine.compositions)])

        points = {arm: [] for arm in ARMS}
        training = {arm: base for arm in ARMS}
        md_seconds, label_seconds, train_seconds, md_records = 0.0, 0.0, 0.0, []
        for round_ in range(args.rounds + 1):
            # Train every arm's current set (the base set once), two trainings at a time.
            start = time.perf_counter()
            arms = ARMS if round_ else ('active',)
            with concurrent.futures.ThreadPoolExecutor(args.workers) as threads:
                jobs = {arm: threads.submit(train_mace, training[arm], tmp / f'{arm}_{round_}', settings['mace'])
                        for arm in arms}
                files = {arm: job.result() for arm, job in jobs.items()}
            for arm in arms:
                point = {'round': round_, 'n_labels': len(training[arm]), **mace_errors(files[arm], held_out),
                         **gnn_errors(training[arm], held_out, settings['gnn'])}
                points[arm].append(point)
                print(f'{arm:7s} round {round_}: {point}', flush=True)
            if not round_:  # one base set: its models and their errors are every arm's first point
                files = dict.fromkeys(ARMS, files['active'])
                for arm in ARMS[1:]:
                    points[arm].append(dict(points['active'][0]))
            train_seconds += time.perf_counter() - start
            if round_ == args.rounds:
                break
            # The next labels: the active arm's from MD with its current potential, the others from their pools.
            start = time.perf_counter()
            frames, summary = active_frames(files['active'], starts, refine, seed_offset=100 * (round_ + 1),
                                            workdir=tmp / f'md_{round_}')
            md_records.append({'round': round_ + 1, 'n_frames': summary['n_frames'],
                               'n_replicas': summary['n_replicas'], 'n_stable': summary['n_stable']})
            md_seconds += time.perf_counter() - start
            start = time.perf_counter()
            new = label(pool, frames, args.workers) if frames is not None else None
            label_seconds += time.perf_counter() - start
            if new is None or not len(new):
                raise RuntimeError(f'round {round_}: the MD of the active arm gave no labelled frame ({summary})')
            n_new = len(new)
            training['active'] = LabelledSet.concatenate([training['active'], new])
            for arm in ('phonon', 'random'):
                added = np.arange(round_ * _round_size(refine), round_ * _round_size(refine) + n_new)
                training[arm] = LabelledSet.concatenate([training[arm], pools[arm].subset(
                    added[added < len(pools[arm])])])
        seconds.update(active_md=md_seconds, active_labels=label_seconds, training_and_errors=train_seconds)

    seconds['total'] = time.perf_counter() - begin
    result = {
        'machine': machine(1), 'engine': ENGINE, 'tiny': args.tiny,
        'settings': {key: value for key, value in vars(args).items() if key not in ('output', 'tiny')},
        'mace_hyperparameters': settings['mace'], 'gnn_hyperparameters': settings['gnn'],
        'refine': refine.model_dump(exclude={'rounds', 'force_tolerance', 'finetune_epochs', 'max_seconds'}),
        'active_md': md_records,
        'parents': parent_records, 'random_amplitude': amplitude,
        'held_out': {'n_frames': len(held_out), 'compositions': refine.compositions,
                     'temperatures': refine.temperatures, 'mean_temperatures': held_out_temperatures,
                     'gap_mean': float(np.mean(held_out.gap)), 'gap_std': float(np.std(held_out.gap)),
                     'force_rms': float(np.sqrt(np.mean(held_out.forces ** 2)))},
        'arms': points,
        'labels_to_reach': _labels_to_reach(points),
        'seconds': {key: round(value, 1) for key, value in seconds.items()},
        'units': {'force_mae': 'eV/Å', 'energy_per_atom_mae_meV': 'meV/atom', 'gap_mae': 'eV', 'seconds': 's'},
    }
    write_result(result, args.output)
    return 0


def _round_size(refine) -> int:
    """Frames the active arm's MD gives per round (compositions x temperatures x frames per replica), at most."""
    return len(refine.compositions) * len(refine.temperatures) * (refine.steps // refine.frame_stride)


#: Accuracy targets of the summary: force MAE (eV/Å) and gap MAE (eV).
TARGETS = {'force_mae': (0.15, 0.10, 0.05), 'gap_mae': (0.10, 0.05)}


def _labels_to_reach(points: dict) -> dict:
    """Per arm and target, the fewest labels whose model is within it on the held-out frames (None: never)."""
    return {key: {str(target): {arm: next((p['n_labels'] for p in points[arm] if p[key] <= target), None)
                                for arm in ARMS} for target in targets} for key, targets in TARGETS.items()}


if __name__ == '__main__':
    sys.exit(main())
