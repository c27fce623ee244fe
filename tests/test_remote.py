"""The package's CalcJobs on a real remote computer: SSH transport (``core.ssh``) to localhost, SLURM scheduler.

Needs a SLURM controller and node and an SSH server on this machine (``bash scripts/setup-cluster.sh`` sets them up,
CI runs it); without them every test here is skipped with the reason. The jobs are the tiny ones of the localhost
tests (same helpers): EMT labels, a few GNN epochs, a 2-epoch 8-channel MACE from scratch and 20 MD steps with it.
"""

from __future__ import annotations

import getpass
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from aiida import engine, orm
from aiida.plugins import CalculationFactory

from conftest import script_path  # tests/ is on sys.path (rootdir-style test modules)
from mlip_helpers import lj_labelled_cells, small_cell
from test_gnn_calcjob import TINY as GNN_TINY
from test_gnn_calcjob import dataset_node
from test_mace import TINY as MACE_TINY
from test_mace import emt_set

COMPUTER_LABEL = 'slurm-ssh'
UP_STATES = {'idle', 'mix', 'alloc', 'comp'}
OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'max_wallclock_seconds': 900}
GPU_LINE = '#SBATCH --gres=gpu:1'
SSH_KEY = pathlib.Path('~/.ssh/id_ed25519').expanduser()


def _run(*command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def _cluster_problem() -> str | None:
    """Why the SLURM node or the SSH login to localhost is not usable here, or None."""
    hint = ' (bash scripts/setup-cluster.sh sets it up)'
    if shutil.which('sinfo') is None:
        return 'sinfo not found: SLURM is not installed' + hint
    try:
        sinfo = _run('sinfo', '-h', '-N', '-o', '%N %t')
    except subprocess.TimeoutExpired:
        return 'sinfo timed out: slurmctld does not answer' + hint
    if sinfo.returncode != 0:
        return f'sinfo failed ({sinfo.stderr.strip()[-200:]}): slurmctld is not running' + hint
    states = [line.split()[-1] for line in sinfo.stdout.splitlines() if line.strip()]
    if not any(state in UP_STATES for state in states):
        return f'no SLURM node is up (sinfo: {sinfo.stdout.strip() or "no nodes"})' + hint
    if shutil.which('ssh') is None:
        return 'ssh not found' + hint
    try:
        ssh = _run('ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', 'localhost', 'true')
    except subprocess.TimeoutExpired:
        return '`ssh -o BatchMode=yes localhost true` timed out' + hint
    if ssh.returncode != 0:
        return f'`ssh -o BatchMode=yes localhost true` fails ({ssh.stderr.strip()[-200:]})' + hint
    return None


@pytest.fixture(scope='module')
def slurm_computer(aiida_profile, tmp_path_factory):
    """The ``slurm-ssh`` computer: core.ssh to localhost with the user's key, core.slurm, workdir in a tmp folder."""
    from aiida.common.exceptions import NotExistent

    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    try:
        computer = orm.load_computer(COMPUTER_LABEL)
    except NotExistent:
        computer = orm.Computer(label=COMPUTER_LABEL, hostname='localhost', transport_type='core.ssh',
                                scheduler_type='core.slurm', workdir=str(tmp_path_factory.mktemp('slurm-ssh-work')),
                                description='SLURM on localhost through SSH (scripts/setup-cluster.sh)').store()
        computer.set_default_mpiprocs_per_machine(1)
    key = {'key_filename': str(SSH_KEY), 'look_for_keys': False} if SSH_KEY.is_file() else {'look_for_keys': True}
    computer.configure(username=getpass.getuser(), port=22, allow_agent=False, load_system_host_keys=True,
                       key_policy='RejectPolicy', safe_interval=0.0, timeout=30, use_login_shell=False, **key)
    computer.set_minimum_job_poll_interval(1.0)
    return computer


@pytest.fixture(scope='module')
def remote_code(slurm_computer):
    """Factory: the venv's console script ``name`` as an InstalledCode on the SLURM computer (one OpenMP thread)."""

    codes = {}

    def factory(name: str, plugin: str) -> orm.InstalledCode:
        if (name, plugin) not in codes:
            codes[name, plugin] = orm.InstalledCode(
                computer=slurm_computer, filepath_executable=script_path(name), default_calc_job_plugin=plugin,
                label=f'{name.replace("-", "_")}_{plugin.split(".")[-1]}',
                prepend_text='export OMP_NUM_THREADS=1').store()
        return codes[name, plugin]

    return factory


def slurm_job_record(job_id: str) -> str:
    """``scontrol show job`` of a job (kept by slurmctld for MinJobAge after it ends), else its ``sacct`` line."""
    record = _run('scontrol', 'show', 'job', job_id)
    if record.returncode == 0 and f'JobId={job_id}' in record.stdout:
        return record.stdout
    accounting = _run('sacct', '-n', '-P', '-X', '-j', job_id, '-o', 'JobID,State,ExitCode,WorkDir')
    assert accounting.returncode == 0 and accounting.stdout.strip(), \
        f'SLURM knows no job {job_id}: {record.stderr.strip()} / {accounting.stderr.strip()}'
    job, state, exit_code, workdir = accounting.stdout.splitlines()[0].split('|')
    return f'JobId={job} JobState={state} ExitCode={exit_code} WorkDir={workdir}'


def assert_ran_through_slurm(node: orm.CalcJobNode) -> str:
    """The job was submitted with sbatch on the SLURM computer and SLURM ran it to completion; returns its record."""
    assert node.computer.label == COMPUTER_LABEL and node.computer.scheduler_type == 'core.slurm'
    job_id = node.get_job_id()
    assert job_id is not None and job_id.isdigit(), job_id
    record = slurm_job_record(job_id)
    assert 'JobState=COMPLETED' in record and 'ExitCode=0:0' in record, record
    assert f'WorkDir={node.get_remote_workdir()}' in record.split(), record
    assert '_scheduler-stdout.txt' in node.outputs.retrieved.base.repository.list_object_names()
    assert '#SBATCH --job-name=' in node.base.repository.get_object_content('_aiidasubmit.sh')
    return record


def _label_builder(code, n: int, options: dict | None = None):
    """A LabelCalcJob of ``n`` EMT-labelled Cu/Ag cells of test_mace's ``emt_set`` (its EMT labels: the reference)."""
    reference = emt_set(n, ag_max=2, seed=11)
    builder = CalculationFactory('capthermo.label').get_builder()
    builder.code = code
    builder.structures = {f's{i}': orm.StructureData(ase=reference.atoms(i, with_labels=False)) for i in range(n)}
    builder.calculator = orm.Dict({'name': 'emt'})
    builder.metadata.options = {**OPTIONS, **(options or {})}
    return builder, reference


@pytest.fixture(scope='module')
def label_run(remote_code):
    builder, reference = _label_builder(remote_code('capthermo-label', 'capthermo.label'), 2)
    results, node = engine.run_get_node(builder)
    return results, node, reference


def test_label_calcjob_through_slurm(label_run):
    results, node, reference = label_run
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    dataset = results['labels']
    assert dataset.n_structures == 2 and dataset.base.attributes.get('method') == 'EMT'
    labelled = dataset.get_labelled_set()
    np.testing.assert_allclose(labelled.energy, reference.energy, atol=1e-8)  # same EMT labels as computed here
    np.testing.assert_allclose(labelled.forces, reference.forces, atol=1e-8)
    assert results['summary']['n_ok'] == 2


def test_job_went_through_slurm(label_run):
    """SLURM ran the job: a numeric job id, slurmctld's record of it (completed, in the job's remote workdir, on
    the node that sinfo lists), the scheduler's stdout retrieved and the engine's last view of the job from squeue."""
    _, node, _ = label_run
    record = assert_ran_through_slurm(node)
    nodes = _run('sinfo', '-h', '-N', '-o', '%N').stdout.split()
    fields = dict(item.split('=', 1) for item in record.split() if '=' in item)
    if 'BatchHost' in fields:
        assert fields['BatchHost'] in nodes, (fields['BatchHost'], nodes)
        assert fields['Command'] == f'{node.get_remote_workdir()}/_aiidasubmit.sh'
    job_info = node.get_last_job_info()
    assert job_info is not None and job_info.job_id == node.get_job_id()
    assert pathlib.Path(node.get_remote_workdir(), '_scheduler-stdout.txt').is_file()  # the remote is this machine


def test_gnn_train_calcjob_through_slurm(remote_code):
    results, node = engine.run_get_node(
        CalculationFactory('capthermo.gnn_train'), code=remote_code('capthermo-gnn', 'capthermo.gnn_train'),
        datasets={'a': dataset_node(16, seed=0)}, hyperparameters=orm.Dict({**GNN_TINY, 'max_epochs': 3}),
        metadata={'options': OPTIONS})
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert results['model'].kind == 'gnn' and len(results['model'].sha256) == 64
    assert len(results['training_curve'].get_array('val_loss')) == 3
    assert np.isfinite(results['metrics']['test']['mae'])
    assert_ran_through_slurm(node)


@pytest.fixture(scope='module')
def mace_run(remote_code):
    """A MACE trained from scratch through SLURM: the tiny model of mlip_helpers (its LJ cells and settings)."""
    from aiida_capthermo.calculations.mace import FinetuneMaceCalcJob
    from aiida_capthermo.data.dataset import DatasetData

    builder = FinetuneMaceCalcJob.get_builder()
    builder.code = remote_code('mace_run_train', 'capthermo.mace_finetune')
    builder.train = DatasetData.from_labelled_set(lj_labelled_cells(12, rattle=0.08), method='LJ').store()
    builder.hyperparameters = orm.Dict({**MACE_TINY, 'max_num_epochs': 2, 'valid_fraction': 0.2,
                                        'pair_repulsion': True})
    builder.metadata.options = OPTIONS
    return engine.run_get_node(builder)


def test_mace_finetune_calcjob_from_scratch_through_slurm(mace_run):
    results, node = mace_run
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    model = results['model']
    assert model.kind == 'mace' and model.main_file == 'mace_model.model'
    assert model.base.attributes.get('foundation') is None
    assert list(results['training_curve'].get_array('train_epoch')) == [0, 1]
    assert 'Training complete' in results['log'].get_content()
    assert_ran_through_slurm(node)


def test_mlip_md_calcjob_through_slurm(mace_run, remote_code):
    model = mace_run[0].get('model')
    if model is None:
        pytest.skip('the MACE training job gave no model (see test_mace_finetune_calcjob_from_scratch_through_slurm)')
    structures = {'a': orm.StructureData(ase=small_cell(False, seed=1, rattle=0.0)),
                  'b': orm.StructureData(ase=small_cell(True, seed=1, rattle=0.0))}
    parameters = orm.Dict({'temperatures': [150.0], 'steps': 20, 'stride': 10, 'frame_stride': 10, 'device': 'cpu'})
    results, node = engine.run_get_node(
        CalculationFactory('capthermo.mlip_md'), code=remote_code('capthermo-mlip', 'capthermo.mlip_md'), model=model,
        structures=structures, parameters=parameters, metadata={'options': OPTIONS})
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    verdict = results['results'].get_dict()
    assert verdict['n_replicas'] == 2 and all(r['steps'] == 20 for r in verdict['replicas'])
    assert results['trajectories'].get_array('temperature_1').shape == (2,)  # steps 10 and 20
    assert results['frames'].n_structures == 4
    assert node.inputs.model.uuid == model.uuid
    assert_ran_through_slurm(node)


def _default_partition() -> str:
    partitions = _run('sinfo', '-h', '-o', '%P').stdout.split()
    return next((p.rstrip('*') for p in partitions if p.endswith('*')), partitions[0].rstrip('*'))


def test_gpu_options_reach_the_job_script(remote_code, tmp_path, monkeypatch):
    """A dry run on the SLURM computer: the GRES request and the partition are #SBATCH lines of _aiidasubmit.sh."""
    monkeypatch.chdir(tmp_path)  # a dry run writes its submit_test/ folder in the working directory
    partition = _default_partition()
    builder, _ = _label_builder(remote_code('capthermo-label', 'capthermo.label'), 1,
                                {'custom_scheduler_commands': GPU_LINE, 'queue_name': partition})
    builder.metadata.dry_run = True
    _, node = engine.run_get_node(builder)
    folder = pathlib.Path(node.dry_run_info['folder'])
    lines = (folder / node.dry_run_info['script_filename']).read_text().splitlines()
    assert GPU_LINE in lines and f'#SBATCH --partition={partition}' in lines
    assert lines.index(GPU_LINE) < next(i for i, line in enumerate(lines) if 'capthermo-label' in line)


def test_gpu_job_runs_through_slurm(remote_code):
    """With a `gpu` GRES on the node (scripts/setup-cluster.sh declares one), a --gres=gpu:1 job runs through SLURM
    and slurmctld records the GRES request."""
    gres = _run('sinfo', '-h', '-N', '-o', '%G').stdout
    if 'gpu' not in gres:
        pytest.skip(f'the SLURM node declares no gpu GRES (sinfo %G: {gres.strip() or "none"})')
    builder, _ = _label_builder(remote_code('capthermo-label', 'capthermo.label'), 1,
                                {'custom_scheduler_commands': GPU_LINE, 'queue_name': _default_partition()})
    _, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert GPU_LINE in node.base.repository.get_object_content('_aiidasubmit.sh').splitlines()
    remote_script = pathlib.Path(node.get_remote_workdir(), '_aiidasubmit.sh').read_text()  # remote = this machine
    assert GPU_LINE in remote_script.splitlines()
    record = assert_ran_through_slurm(node)
    if 'JobState=' in record and 'TresPerNode' in record:  # scontrol's record (not the sacct fallback)
        assert 'gres:gpu:1' in record or 'gres/gpu:1' in record, record


def test_transport_failure_is_retried(remote_code):
    """The SSH server goes away while a job is submitted: AiiDA's transport tasks fail, are retried with back-off,
    and the job finishes once the server is back (sshd stopped for a few seconds, then started again)."""
    import threading

    from aiida.manage import get_manager

    pid_file = pathlib.Path('/run/sshd.pid')
    sshd = shutil.which('sshd') or '/usr/sbin/sshd'
    if not pid_file.is_file() or not pathlib.Path(sshd).is_file():
        pytest.skip('sshd was not started by scripts/setup-cluster.sh (no /run/sshd.pid)')
    config = get_manager().get_config()
    profile = get_manager().get_profile().name
    for option, value in (('transport.task_retry_initial_interval', 1), ('transport.task_maximum_attempts', 8)):
        config.set_option(option, value, scope=profile)  # seconds, not the default 20: the test stays short
    try:
        subprocess.run(['pkill', '-F', str(pid_file)], check=True)  # the listener; nothing answers on port 22
        builder, reference = _label_builder(remote_code('capthermo-label', 'capthermo.label'), 1)
        restart = threading.Timer(5.0, lambda: subprocess.run([sshd], check=True))
        restart.start()
        results, node = engine.run_get_node(builder)
        restart.join()
    finally:
        if _run('ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=5', 'localhost', 'true').returncode != 0:
            subprocess.run([sshd], check=False)
        for option in ('transport.task_retry_initial_interval', 'transport.task_maximum_attempts'):
            config.unset_option(option, scope=profile)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    logs = ' '.join(log.message for log in orm.Log.collection.get_logs_for(node))
    assert 'exponential_backoff_retry' in logs and 'do_upload' in logs, logs  # the failed uploads were logged
    np.testing.assert_allclose(results['labels'].get_labelled_set().energy, reference.energy[:1], atol=1e-8)
