"""Benchmarks that cannot rot: every ``benchmarks/bench_*.py`` runs end to end at tiny sizes.

Each script runs as its own process (as a user runs it: ``python benchmarks/bench_<name>.py``, from the repository
root, one thread) with ``--output`` in a temporary folder. The test checks that it exits 0, that the JSON it wrote
holds finite positive numbers for its main timings/throughputs, and that the committed result
``benchmarks/bench_<name>.json`` (the numbers the docs quote) is byte for byte what it was. The numbers of a tiny run
mean nothing; only that the code path still runs and still measures something.

Services: ``bench_dataset`` and ``bench_load`` make their own throwaway profiles (``verdi presto``: SQLite + ZeroMQ,
in a temporary ``AIIDA_PATH``), so no PostgreSQL or RabbitMQ is needed; ``bench_load`` runs its ``sqlite`` backend
only (its ``postgres`` backend needs the services of ``tests/test_services.py``).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / 'benchmarks'

#: name -> (tiny arguments, key paths of finite positive numbers in the JSON, key paths -> exact values)
CASES: dict[str, tuple[list[str], list[tuple], dict[tuple, object]]] = {
    'dataset': (['--n', '10', '--n-label', '1'],
                [('sampling_ms_per_structure',), ('sampling_and_storing_ms_per_structure',),
                 ('labelling_s_per_structure',)],
                {('n_structures',): 10, ('labelling_converged',): '1/1'}),
    'gnn_graphs': (['--n', '50'], [('vectorised_s',), ('loop_s',), ('mean_edges_per_structure',)],
                   {('n_structures',): 50, ('identical_edge_sets',): True}),
    'gnn_model': (['--n', '40', '--epochs', '1'],
                  [('inference_structures_per_s', '32'), ('end_to_end_prediction_structures_per_s',),
                   ('train_seconds_per_epoch_per_1000_structures',)],
                  {('n_structures',): 40}),
    'labels': (['--tiny'], [('arms', 'active', 1, 'force_mae'), ('arms', 'phonon', 1, 'gap_mae'),
                            ('arms', 'random', 1, 'force_mae'), ('seconds', 'total')],
               {('tiny',): True, ('held_out', 'n_frames'): 3, ('arms', 'phonon', 0, 'n_labels'): 8}),
    'label_methods': (['--tiny'], [('rows', 0, 'seconds_per_label'), ('rows', 0, 'lattice_Ag3SI')],
                      {('rows', 0, 'method'): 'GFN1-xTB-noXB', ('rows', 0, 'n_failed_displaced'): 0}),
    'load': (['--backends', 'sqlite', '--n', '16', '--batch-size', '8', '--max-concurrent', '2'],
             [('results', 0, 'wall_s'), ('results', 0, 'aiida_ms_per_structure')],
             {('results', 0, 'exit_status'): 0, ('results', 0, 'n_structures'): 16}),
    'mace': (['--n-tiny', '8', '--n-medium', '8'],
             [('tiny', 'training', 'epoch_seconds'), ('medium', 'training', 'epoch_seconds'),
              ('medium', 'evaluation', 'structures_per_second')],
             {}),
    'mace_width': (['--n', '8', '--epochs', '2'],
                   [('widths', '32', 'seconds_per_structure'), ('widths', '64', 'seconds_per_structure'),
                    ('ratio_64_over_32',), ('projected_mid_study_seconds',)],
                   {('threads',): 1, ('architecture', 'model'): 'ScaleShiftMACE'}),
    'sampling': (['--n-structures', '20', '--repeat', '1'],
                 [('ms_per_structure', 'uniform'), ('ms_per_structure', 'phonopy')],
                 {('n_structures',): 20}),
    'screen': (['--tiny'],
               [('ase_bfgs_one_at_a_time', 'relaxations_per_minute'),
                ('torchsim_fire_batched', 'relaxations_per_minute'), ('phonons', 'batched_8_s')],
               {('n_structures',): 3}),
    'thermal': (['--tiny'],
                [('md', 'ase_one_replica', 'replica_steps_per_s'), ('md', 'torchsim_2', 'replica_steps_per_s'),
                 ('gnn', 'structures_per_second')],
                {('gnn', 'n_structures'): 200}),
    # Every section but ``finetune``: it is bench_mace's ``time_training`` of the medium architecture again (covered
    # by the ``mace`` case) and alone would take a minute on two CPU cores.
    'gpu': (['--tiny', '--device', 'cpu', '--budget', '20', '--sections',
             'md_medium,md_demo,md_float64,md_torchsim_wrapper,relax,gnn,kernels'],
            [('md_demo', 'points', 0, 'atom_steps_per_s'), ('md_medium', 'points', 0, 'atom_steps_per_s'),
             ('relax', 'one_at_a_time', 'relaxations_per_minute'), ('gnn', 'prediction_structures_per_s')],
            {('tiny',): True}),
}


def _get(result, path: tuple):
    value = result
    for key in path:
        value = value[key]
    return value


def _committed(name: str) -> bytes | None:
    path = BENCHMARKS / f'bench_{name}.json'
    return path.read_bytes() if path.exists() else None


def test_every_benchmark_has_a_case():
    """A new ``bench_*.py`` gets a tiny run here, and a case does not outlive its script."""
    assert {path.stem.removeprefix('bench_') for path in BENCHMARKS.glob('bench_*.py')} == set(CASES)


@pytest.mark.timeout(600)
@pytest.mark.parametrize('name', sorted(CASES))
def test_benchmark_runs_tiny(name, tmp_path):
    arguments, positive, exact = CASES[name]
    output = tmp_path / f'bench_{name}.json'
    before = _committed(name)
    env = {key: value for key, value in os.environ.items() if key != 'AIIDA_PROFILE'}
    env.update(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    run = subprocess.run([sys.executable, str(BENCHMARKS / f'bench_{name}.py'), *arguments, '--output', str(output)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=570)
    assert run.returncode == 0, f'bench_{name}.py exited {run.returncode}:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}'
    assert _committed(name) == before, f'the run modified the committed benchmarks/bench_{name}.json'
    result = json.loads(output.read_text())
    for path in positive:
        value = _get(result, path)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (path, value)
        assert math.isfinite(value) and value > 0, (path, value)
    for path, expected in exact.items():
        assert _get(result, path) == expected, (path, _get(result, path), expected)
