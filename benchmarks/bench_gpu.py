"""Benchmark of the package's GPU path: batched MD, batched relaxations, MACE fine-tuning and the GNN, on one device.

Every number is a throughput measured here, in this run; the baselines (one replica or structure at a time, TorchSim
0.3's own MACE wrapper with its per-system CPU neighbour list, float64) run in the same process. Written to be run
once per GPU session inside a few minutes (``--budget`` seconds in all; a section whose share is spent records what
it measured so far) and, with ``--tiny``, by the test suite on the CPU.

Sections (all on 40-atom Ag3S(Br,I) 2x2x2 cells at the paper's density, ``bench_mace.antiperovskite_set``):

- ``md``: atom-steps/s of the MD engine (``ml.thermal.run_replicas``, BAOAB Langevin, the package's
  :class:`~aiida_capthermo.ml.torchsim_mace.MaceModel`) against the number of replicas in one call, 1 up to the
  memory limit, for a MACE of the demo's size and one of MACE-MPA-0-medium's size (random weights: cost, not
  physics), float32; float64 at a few sizes; TorchSim 0.3's wrapper at a few sizes. Peak memory per atom at each
  size, and what ``ml.thermal.memory_batch_size`` would choose. The paper's sweep (9 compositions x 7 temperatures
  x 50 ps of 40 atoms at 1 fs: 1.26e8 atom-steps) is projected (a) as 63 replicas run together for 50,000 steps
  and (b) at the best measured rate, i.e. each (x, T) split into as many shorter replicas as fill the best batch.
- ``relax``: batched FIRE relaxations with the cell (``ml.mlip.relax_batch``), 22 and 100 structures in one call
  against one at a time, a fixed number of steps (``fmax`` unreachable), as relaxations per minute.
- ``finetune``: MACE fine-tuning (``mace_run_train``, the medium architecture, float64 as the package trains),
  seconds per epoch per 1,000 structures.
- ``gnn``: GNN training seconds per epoch per 1,000 structures and prediction throughput with graph building.

Usage: ``python benchmarks/bench_gpu.py [--device cuda] [--budget 330] [--tiny] [--output FILE]``; writes
``benchmarks/bench_gpu.json`` by default (the committed result of the last GPU session). The facts of the device
(name, memory, driver, torch and CUDA versions, precision, kernels) are recorded with the numbers.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_mace import antiperovskite_set, time_training
from common import default_output, machine, write_result

#: 9 x x 7 T x 50 ps x 40 atoms at 1 fs.
SWEEP = {'compositions': 9, 'temperatures': 7, 'ps': 50.0, 'atoms': 40, 'timestep_fs': 1.0}
SWEEP_ATOM_STEPS = SWEEP['compositions'] * SWEEP['temperatures'] * SWEEP['ps'] * 1000 / SWEEP['timestep_fs'] * 40
NVIDIA_US_PER_ATOM_STEP = 3.0  # NVIDIA's batched MACE MD on an H100, the published anchor
#: Shares of the budget, in order of the sections.
SHARES = {'md_medium': 0.22, 'md_demo': 0.12, 'md_float64': 0.08, 'md_torchsim_wrapper': 0.08, 'relax': 0.14,
          'finetune': 0.24, 'gnn': 0.12, 'kernels': 0.0}


def sync(device: str) -> None:
    import torch

    if device.startswith('cuda'):
        torch.cuda.synchronize()


def device_facts(device: str) -> dict:
    """The device, its driver and memory, torch/CUDA, and which optional kernels are importable."""
    import torch

    from aiida_capthermo.ml.torchsim_mace import cueq_available

    facts = {'torch': torch.__version__, 'cuda': torch.version.cuda, 'cuequivariance': cueq_available()}
    for name in ('mace', 'torch_sim', 'e3nn', 'torch_geometric'):
        try:
            module = __import__(name)
            facts[name] = getattr(module, '__version__', None)
        except ImportError:
            facts[name] = None
    if device.startswith('cuda'):
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                     multiprocessors=props.multi_processor_count)
        try:
            facts['driver'] = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'],
                                             capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            facts['driver'] = f'unknown ({error})'
    return facts


def md_point(model, cells: list, replicas: int, device: str, target_seconds: float) -> dict:
    """Seconds per step of ``replicas`` replicas in one call of the MD engine (its step: the Langevin update and the
    removal of the centre-of-mass drift; the state built before the clock starts), and the peak memory."""
    import torch

    from aiida_capthermo.ml.thermal import init_replicas, replica_step

    systems = [cells[i % len(cells)] for i in range(replicas)]
    temperatures = [300.0 + 300.0 * (i % 2) for i in range(replicas)]
    if device.startswith('cuda'):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    batch = init_replicas(model, systems, temperatures, list(range(replicas)))
    start = time.perf_counter()
    for _ in range(2):  # warm-up
        replica_step(batch)
    sync(device)
    warm = (time.perf_counter() - start) / 2
    steps = int(max(2, min(50, target_seconds / max(warm, 1e-4))))
    start = time.perf_counter()
    for _ in range(steps):
        replica_step(batch)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    atoms = 40 * replicas
    point = {'replicas': replicas, 'atoms': atoms, 'steps_timed': steps, 'seconds_per_step': seconds,
             'atom_steps_per_s': atoms / seconds, 'us_per_atom_step': 1e6 * seconds / atoms}
    if device.startswith('cuda'):
        point['peak_memory_gib'] = torch.cuda.max_memory_allocated() / 2**30
        point['peak_bytes_per_atom'] = torch.cuda.max_memory_allocated() / atoms
    return point


def md_sweep(model, cells: list, sizes: list[int], device: str, budget: float, max_step_seconds: float) -> list:
    """:func:`md_point` at each size until out of memory, out of time or a step is slower than
    ``max_step_seconds``."""
    import torch

    points, start = [], time.perf_counter()
    for replicas in sizes:
        left = budget - (time.perf_counter() - start)
        if left <= 0:
            points.append({'replicas': replicas, 'skipped': 'budget spent'})
            break
        try:
            point = md_point(model, cells, replicas, device, min(1.5, left / 4))
        except RuntimeError as error:  # torch.OutOfMemoryError, or TorchScript's RuntimeError around it
            if 'out of memory' not in str(error):
                raise
            points.append({'replicas': replicas, 'out_of_memory': str(error).splitlines()[-1][:300]})
            torch.cuda.empty_cache()
            break
        points.append(point)
        print(json.dumps(point), flush=True)
        if point['seconds_per_step'] > max_step_seconds:
            break
    return points


def projection(points: list) -> dict:
    """The paper's sweep from the measured rates: 63 replicas for 50,000 steps, and at the best rate."""
    measured = [p for p in points if 'atom_steps_per_s' in p]
    if not measured:
        return {}
    best = max(measured, key=lambda p: p['atom_steps_per_s'])
    steps = SWEEP['ps'] * 1000 / SWEEP['timestep_fs']
    as_paper = min(measured, key=lambda p: abs(p['replicas'] - 63))
    return {'sweep_atom_steps': SWEEP_ATOM_STEPS,
            'best': {'replicas': best['replicas'], 'us_per_atom_step': best['us_per_atom_step'],
                     'sweep_minutes': SWEEP_ATOM_STEPS / best['atom_steps_per_s'] / 60},
            'paper_layout_63_replicas': {'replicas_measured': as_paper['replicas'],
                                         'seconds_per_step': as_paper['seconds_per_step'],
                                         'sweep_minutes': steps * as_paper['seconds_per_step']
                                         * (63 / as_paper['replicas'] if as_paper['replicas'] > 63 else 1) / 60},
            'nvidia_anchor_sweep_minutes': SWEEP_ATOM_STEPS * NVIDIA_US_PER_ATOM_STEP * 1e-6 / 60}


def section_md(name: str, architecture: str, dtype: str, sizes: list[int], device: str, budget: float,
               wrapper: bool = False, cueq: bool = False) -> dict:
    """One MD throughput curve (see the module docstring)."""
    import torch

    from aiida_capthermo.ml.mace import random_mace
    from aiida_capthermo.ml.thermal import memory_batch_size
    from aiida_capthermo.ml.torchsim_mace import MaceModel

    module = random_mace(architecture, [16, 35, 47, 53] if architecture == 'demo' else tuple(range(1, 90)))
    if wrapper:
        from torch_sim.models.mace import MaceModel as TorchSimMace

        model = TorchSimMace(model=module, device=torch.device(device), dtype=getattr(torch, dtype))
    else:
        model = MaceModel(module, device, getattr(torch, dtype), enable_cueq=cueq)
    cells = antiperovskite_set(8, seed=0, labels=False).to_atoms_list(with_labels=False)
    result = {'architecture': architecture, 'dtype': dtype,
              'model': 'torch_sim.models.mace.MaceModel (per-system CPU neighbour list)' if wrapper
              else 'aiida_capthermo MaceModel (batched neighbour list)',
              'kernels': getattr(model, 'kernels', 'e3nn')}
    if not wrapper:
        result['memory_batch_size_1000_replicas'] = memory_batch_size(model, cells * 125)
    result['points'] = md_sweep(model, cells, sizes, device, budget, max_step_seconds=2.0)
    result['projection'] = projection(result['points'])
    return result


def section_kernels(device: str, replicas: int = 63) -> dict:
    """Forces of the medium-size model on ``replicas`` displaced cells in float32 on e3nn's and on cuEquivariance's
    kernels, against float64 on e3nn's: the largest component difference, relative to the largest force."""
    import torch
    import torch_sim as ts

    from aiida_capthermo.ml.mace import random_mace
    from aiida_capthermo.ml.torchsim_mace import MaceModel

    cells = antiperovskite_set(replicas, seed=4, labels=False).to_atoms_list(with_labels=False)
    module = random_mace('medium', tuple(range(1, 90)), scale=1.0)
    forces, kernels = {}, {}
    for name, dtype, cueq in (('e3nn_float64', torch.float64, False), ('e3nn_float32', torch.float32, False),
                              ('cueq_float32', torch.float32, True)):
        model = MaceModel(module, device, dtype, enable_cueq=cueq)
        kernels[name] = model.kernels
        forces[name] = model(ts.io.atoms_to_state(cells, device, dtype))['forces'].double().cpu()
        del model
    reference = forces['e3nn_float64']
    scale = float(reference.abs().max())
    return {'replicas': replicas, 'kernels': kernels, 'largest_force_ev_per_a': scale,
            **{f'{name}_max_abs_difference': float((forces[name] - reference).abs().max())
               for name in ('e3nn_float32', 'cueq_float32')},
            **{f'{name}_relative': float((forces[name] - reference).abs().max()) / scale
               for name in ('e3nn_float32', 'cueq_float32')}}


def section_relax(device: str, budget: float, sizes: tuple[int, ...], steps: int, singles: int) -> dict:
    """Batched FIRE + cell filter relaxations per minute against one structure at a time (fixed step count)."""
    import torch

    from aiida_capthermo.ml.mace import random_mace
    from aiida_capthermo.ml.mlip import relax_batch
    from aiida_capthermo.ml.torchsim_mace import MaceModel

    model = MaceModel(random_mace('medium', tuple(range(1, 90))), device, torch.float32, compute_stress=True)
    cells = antiperovskite_set(max(sizes), seed=3, labels=False).to_atoms_list(with_labels=False)
    relax_batch(model, cells[:2], fmax=1e-12, steps=2)  # warm-up
    result, start = {'architecture': 'medium', 'dtype': 'float32', 'fire_steps_each': steps}, time.perf_counter()
    t0 = time.perf_counter()
    for atoms in cells[:singles]:
        relax_batch(model, [atoms], fmax=1e-12, steps=steps)
    sync(device)
    one = (time.perf_counter() - t0) / singles
    result['one_at_a_time'] = {'structures_timed': singles, 'seconds_per_relaxation': one,
                               'relaxations_per_minute': 60.0 / one}
    for n in sizes:
        if time.perf_counter() - start > budget:
            result[f'batched_{n}'] = {'skipped': 'budget spent'}
            continue
        t0 = time.perf_counter()
        relax_batch(model, cells[:n], fmax=1e-12, steps=steps)
        sync(device)
        seconds = time.perf_counter() - t0
        result[f'batched_{n}'] = {'structures': n, 'seconds': seconds, 'relaxations_per_minute': 60.0 * n / seconds,
                                  'speedup_vs_one_at_a_time': one * n / seconds}
        print(json.dumps(result[f'batched_{n}']), flush=True)
    return result


def section_finetune(device: str, n: int, dtype: str, batch_size: int) -> dict:
    """Seconds per epoch of ``mace_run_train`` (medium architecture) per 1,000 structures."""
    from aiida_capthermo.ml.mace import ARCHITECTURES

    with tempfile.TemporaryDirectory() as tmp:
        timing = time_training(antiperovskite_set(n, seed=1), ARCHITECTURES['medium'], pathlib.Path(tmp) / 'train',
                               epochs=2, batch_size=batch_size, device=device, dtype=dtype)
    timing.pop('model_file')
    return {'architecture': 'medium', 'dtype': dtype, 'batch_size': batch_size, **timing}


def section_gnn(device: str, n: int, epochs: int) -> dict:
    """GNN training seconds per epoch per 1,000 structures and prediction throughput (graphs built inside)."""
    import torch

    from aiida_capthermo.ml.gnn.data import Normalisation, build_graphs
    from aiida_capthermo.ml.gnn.model import BandGapGNN
    from aiida_capthermo.ml.gnn.predict import predict
    from aiida_capthermo.ml.gnn.training import LoadedModel, train_gnn

    from bench_gnn_model import dataset

    labelled = dataset(n)
    result = train_gnn(labelled, {'max_epochs': epochs, 'patience': None, 'batch_size': 32,
                                  'split': (0.7, 0.15, 0.15), 'device': 'cuda' if device.startswith('cuda') else 'cpu'})
    seconds = np.asarray(result.curve['seconds'], dtype=float)
    per_epoch = float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))  # the first epoch warms up
    graphs = build_graphs(labelled.subset(range(50)), 5.5)
    torch.manual_seed(0)
    loaded = LoadedModel(model=BandGapGNN().eval(), normalisation=Normalisation.fit(graphs, labelled.gap[:50],
                                                                                    np.arange(50)),
                         metadata={'cutoff': 5.5, 'target': 'gap'})
    predict(loaded, labelled.subset(range(min(64, n))), batch_size=1024, device=device)  # warm-up
    start = time.perf_counter()
    predict(loaded, labelled, batch_size=1024, device=device)
    seconds = time.perf_counter() - start
    return {'n_structures': n, 'train_structures': result.metrics['train']['n'], 'epochs': epochs,
            'train_seconds_per_epoch': per_epoch,
            'train_seconds_per_epoch_per_1000': per_epoch * 1000 / result.metrics['train']['n'],
            'prediction_structures_per_s': n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--budget', type=float, default=330.0, help='seconds for all sections together')
    parser.add_argument('--tiny', action='store_true', help='tiny sizes (the CPU test)')
    parser.add_argument('--cueq', action='store_true', help='MD on cuEquivariance kernels where installed')
    parser.add_argument('--sections', default=','.join(SHARES), help='comma-separated subset of ' + ','.join(SHARES))
    parser.add_argument('--output', default=default_output('gpu'))
    args = parser.parse_args()
    import torch

    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error('--device cuda but no CUDA device is visible')
    tiny = args.tiny
    big = [1, 4, 16, 63, 256, 1024, 2048, 4096, 8192]
    plan = {
        'md_medium': lambda b: section_md('md_medium', 'medium', 'float32',
                                          [1, 2] if tiny else [1, 4, 16, 63, 128, 256, 512, 768, 1024], args.device, b,
                                          cueq=args.cueq),
        'md_demo': lambda b: section_md('md_demo', 'demo', 'float32', [1, 2] if tiny else big, args.device, b,
                                        cueq=args.cueq),
        'md_float64': lambda b: section_md('md_float64', 'medium', 'float64', [1] if tiny else [63, 1024],
                                           args.device, b),
        'md_torchsim_wrapper': lambda b: section_md('md_torchsim_wrapper', 'demo', 'float32',
                                                    [1, 2] if tiny else [1, 63, 256, 1024], args.device, b,
                                                    wrapper=True),
        'relax': lambda b: section_relax(args.device, b, (2, 3) if tiny else (22, 100), 3 if tiny else 50,
                                         1 if tiny else 4),
        'finetune': lambda b: section_finetune(args.device, 12 if tiny else 400, 'float64', 4 if tiny else 8),
        'kernels': lambda b: section_kernels(args.device, 2 if tiny else 63),
        'gnn': lambda b: section_gnn(args.device, 60 if tiny else 2000, 2 if tiny else 4),
    }
    wanted = [name for name in args.sections.split(',') if name]
    unknown = sorted(set(wanted) - set(plan))
    if unknown:
        parser.error(f'unknown sections {unknown}; known: {list(plan)}')
    result = {'machine': machine(None, args.device), 'device': device_facts(args.device), 'tiny': tiny,
              'budget_seconds': args.budget, 'sweep': SWEEP, 'nvidia_us_per_atom_step': NVIDIA_US_PER_ATOM_STEP}
    start = time.perf_counter()
    for name in wanted:
        t0 = time.perf_counter()
        print(f'== {name}', flush=True)
        try:
            result[name] = plan[name](args.budget * SHARES[name])
        except Exception as error:  # noqa: BLE001 -- a broken section is recorded and the others still run
            result[name] = {'error': f'{type(error).__name__}: {error}', 'traceback': traceback.format_exc()[-2000:]}
            print(result[name]['traceback'], flush=True)
        result[name]['section_seconds'] = time.perf_counter() - t0
        result['total_seconds'] = time.perf_counter() - start
        pathlib.Path(args.output).write_text(json.dumps(result, indent=1) + '\n')  # what is done so far
    write_result(result, args.output)
    broken = [name for name in wanted if 'error' in result[name]]
    if broken:
        sys.exit(f'sections failed: {broken}')


if __name__ == '__main__':
    main()
