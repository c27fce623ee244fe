"""Faults a production run meets, met for real through the daemon of the test profile: a labelling job killed under
the workchain (as a scheduler kills a job on a failed node) is run again, and the daemon killed while the thermal
stage's MD runs resumes the study with nothing lost or run twice."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import numpy as np
from aiida import orm

from test_thermal import trained_models  # noqa: F401  (module fixture: a tiny GNN and MACE with their datasets)


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll ``condition()`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def running_job(parent: orm.ProcessNode, label: str):
    """The CalcJob of ``parent``'s descendants with process label ``label`` that the scheduler is running."""
    for node in parent.called_descendants:
        if node.process_label == label and node.get_job_id() and not node.is_terminated \
                and node.get_scheduler_state() is not None:
            return node
    return None


def kill_process_tree(pid: int) -> None:
    """SIGKILL a job's script and every process under it (what a scheduler does to a job on a failed node)."""
    children = subprocess.run(['pgrep', '-P', str(pid)], capture_output=True, text=True).stdout.split()
    for child in children:
        kill_process_tree(int(child))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_killed_label_job_is_run_again(aiida_localhost, started_daemon_client):
    """A LabelCalcJob killed while it labels (its script and the Python under it get SIGKILL, no summary written)
    fails with 303; the labelling workchain runs it again and the dataset is complete and equal to direct labels."""
    from aiida.engine import submit

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.labelling import CalculatorSpec, label_structures
    from aiida_capthermo.workflows.label import LocalLabelWorkChain

    from mlip_helpers import small_cell

    code = orm.InstalledCode(computer=aiida_localhost, filepath_executable=str(_script('capthermo-label')),
                             label='label-faults', default_calc_job_plugin='capthermo.label',
                             prepend_text='export OMP_NUM_THREADS=1').store()
    cells = [small_cell(bool(i % 2), seed=i, rattle=0.1).repeat((2, 1, 1)) for i in range(8)]
    builder = LocalLabelWorkChain.get_builder()
    builder.label.code = code
    builder.label.structures = {f's{i}': orm.StructureData(ase=atoms) for i, atoms in enumerate(cells)}
    builder.label.calculator = orm.Dict({'name': 'tblite', 'method': 'GFN1-xTB'})
    builder.fidelity = orm.Str('low')
    node = submit(builder)
    job = wait_for(lambda: running_job(node, 'LabelCalcJob'), 120, 'the label job to run')
    time.sleep(1.0)  # inside the labelling loop: tblite on 20-atom cells takes about half a second each
    kill_process_tree(int(job.get_job_id()))
    wait_for(lambda: node.is_terminated, 300, 'the labelling workchain to finish')
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    jobs = sorted((n for n in node.called if n.process_label == 'LabelCalcJob'), key=lambda n: n.pk)
    assert len(jobs) == 2 and jobs[0].pk == job.pk
    assert jobs[0].exit_status == jobs[0].process_class.exit_codes.ERROR_SUMMARY_MISSING.status
    assert jobs[1].is_finished_ok
    labels = node.outputs.labels.get_labelled_set()
    assert len(labels) == 8
    direct, _ = label_structures(LabelledSet.from_atoms_list(cells), CalculatorSpec(name='tblite', method='GFN1-xTB'))
    np.testing.assert_allclose(labels.energy, direct.energy, atol=1e-6)


def test_daemon_killed_during_thermal_md_resumes(trained_models, started_daemon_client):
    """The daemon's workers and its supervisor are SIGKILLed while the thermal stage's MD job runs; after a restart
    the workchain finishes from its checkpoint: the MD job is the same one (same scheduler job, not run again),
    every job ran once, and the gaps are complete."""
    from aiida.engine import submit

    from aiida_capthermo.data.structures import set_structure_metadata
    from aiida_capthermo.workflows.thermal import ThermalGapWorkChain

    from mlip_helpers import small_cell

    structures = {key: set_structure_metadata(orm.StructureData(ase=small_cell(bromide, seed=0, rattle=0.0)), x=x)
                  for key, bromide, x in (('x000', False, 0.0), ('x050', True, 0.5))}
    builder = ThermalGapWorkChain.get_builder_from_protocol(
        trained_models['mlip_code'], trained_models['gnn_code'], trained_models['mace'], trained_models['gnn'],
        structures, protocol='demo', overrides={'md': {'steps': 1500, 'stride': 5, 'threads': 1},
                                                'coupling': {'structures': ['x050'], 'temperatures': [300.0],
                                                             'threads': 1}})
    node = submit(builder)
    md = wait_for(lambda: running_job(node, 'MlipThermalCalcJob'), 300, 'the thermal MD job to run')
    job_id = md.get_job_id()
    client = started_daemon_client
    pids = [*_pids(client.get_worker_info().get('info', {})), client.get_daemon_pid()]
    assert len(pids) >= 2, pids  # the supervisor and at least one worker
    for pid in pids:
        kill_process_tree(pid)
    wait_for(lambda: not any(_alive(pid) for pid in pids), 60, 'the daemon processes to be gone')
    time.sleep(2.0)  # the MD goes on without anybody watching it
    client.start_daemon()  # removes the stale PID file of the killed supervisor first
    wait_for(lambda: node.is_terminated, 600, 'the thermal workchain to finish after the restart')
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    labels = [n.process_label for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]
    assert labels.count('MlipThermalCalcJob') == 1 and labels.count('MlipScreenCalcJob') == 1
    assert labels.count('MlipModesCalcJob') == 1
    md = orm.load_node(md.pk)
    assert md.is_finished_ok and md.get_job_id() == job_id  # the same scheduler job, picked up again
    gaps = node.outputs.gaps
    assert set(gaps) == {f'{key}_T{t}' for key in structures for t in (0, 300, 600)}
    assert all(np.isfinite(gaps[key]['gap']) for key in gaps)


def _pids(info) -> list[int]:
    """Every ``pid`` in circus's worker statistics (nested dicts keyed by worker)."""
    if isinstance(info, dict):
        found = [int(info['pid'])] if str(info.get('pid', '')).isdigit() else []
        return found + [pid for value in info.values() for pid in _pids(value)]
    return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return subprocess.run(['ps', '-o', 'stat=', '-p', str(pid)], capture_output=True, text=True).stdout.strip()[:1] \
        not in ('Z', '')


def _script(name: str):
    import pathlib
    import sys

    return pathlib.Path(sys.executable).parent / name
