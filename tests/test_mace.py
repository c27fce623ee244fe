"""FinetuneMaceCalcJob, its parser and workchain, MaceEvaluateCalcJob and ``capthermo-mace``: real tiny MACE runs.

The data: 8-atom Cu/Ag fcc cells, randomly strained and displaced, labelled with ASE's EMT calculator (energy,
forces, stress). A tiny MACE (8 channels, max_L 0, r_max 4 Å) is trained from scratch through the CalcJob on
Cu-rich cells (module-scoped, shared), then fine-tuned through the CalcJob on Ag-richer cells with that model node as
the foundation.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest
from aiida import engine, orm

from aiida_capthermo.calculations.mace import (
    DEFAULT_FOUNDATION,
    FinetuneMaceCalcJob,
    MaceHyperParameters,
    build_mace_config,
)
from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.parsers.mace import detect_failure, parse_architecture, parse_error_table, parse_results_lines

VENV_BIN = pathlib.Path(sys.executable).parent
TINY = {'num_channels': 8, 'max_L': 0, 'r_max': 4.0, 'num_interactions': 2, 'correlation': 2, 'batch_size': 4,
        'device': 'cpu', 'default_dtype': 'float64', 'seed': 1}


def emt_set(n: int, ag_max: int, seed: int) -> LabelledSet:
    """``n`` 8-atom Cu/Ag fcc cells (0..ag_max Ag), strained by up to 2 %, displaced by up to 0.1 Å, EMT labels."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat((2, 1, 1))
        symbols = atoms.get_chemical_symbols()
        for j in rng.choice(8, size=rng.integers(0, ag_max + 1), replace=False):
            symbols[j] = 'Ag'
        atoms.set_chemical_symbols(symbols)
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
        atoms.positions += rng.uniform(-0.1, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
        frames.append(atoms)
    return LabelledSet.from_atoms_list(frames, origin=np.array(['random'] * n))


@pytest.fixture(scope='module')
def mace_code(aiida_profile, tmp_path_factory):
    """Localhost computer (direct scheduler) and the venv's ``mace_run_train`` as an InstalledCode."""
    workdir = tmp_path_factory.mktemp('mace_work')
    computer = orm.Computer(label='localhost-mace-tests', hostname='localhost', transport_type='core.local',
                            scheduler_type='core.direct', workdir=str(workdir)).store()
    computer.configure(use_login_shell=False)  # see conftest's aiida_localhost
    computer.set_minimum_job_poll_interval(0.0)
    code = orm.InstalledCode(computer=computer, filepath_executable=str(VENV_BIN / 'mace_run_train'),
                             label='mace_run_train', default_calc_job_plugin='capthermo.mace_finetune',
                             prepend_text='export OMP_NUM_THREADS=1').store()
    eval_code = orm.InstalledCode(computer=computer, filepath_executable=str(VENV_BIN / 'capthermo-mace'),
                                  label='capthermo_mace', default_calc_job_plugin='capthermo.mace_evaluate',
                                  prepend_text='export OMP_NUM_THREADS=1').store()
    return {'train': code, 'evaluate': eval_code}


@pytest.fixture(scope='module')
def scratch_run(mace_code):
    """Train the tiny foundation from scratch through the CalcJob (no foundation input) on Cu-rich cells."""
    train = DatasetData.from_labelled_set(emt_set(24, ag_max=2, seed=0), method='EMT').store()
    builder = FinetuneMaceCalcJob.get_builder()
    builder.code = mace_code['train']
    builder.train = train
    builder.hyperparameters = orm.Dict({**TINY, 'max_num_epochs': 4, 'valid_fraction': 0.2})
    builder.metadata.options.max_wallclock_seconds = 600
    results, node = engine.run_get_node(builder)
    return results, node


def test_hyperparameters_validated_with_paper_defaults():
    params = MaceHyperParameters()
    assert (params.energy_weight, params.forces_weight, params.stress_weight) == (1.0, 150.0, 10.0)
    assert params.valid_fraction == 0.05 and params.loss == 'stress'
    with pytest.raises(ValueError, match='extra'):
        MaceHyperParameters(forces_weigth=100.0)
    with pytest.raises(ValueError, match='pt_train_file'):
        MaceHyperParameters(multiheads_finetuning=True)
    config = build_mace_config(params, foundation='foundation.model', has_valid=False, has_test=False)
    assert config['foundation_model'] == 'foundation.model' and config['E0s'] == 'foundation'
    assert 'num_channels' not in config and config['valid_fraction'] == 0.05
    assert config['stress_key'] == 'REF_stress' and config['multiheads_finetuning'] is False
    scratch = build_mace_config(params.model_copy(update={'swa': True, 'start_swa': 3}), foundation=None,
                                has_valid=True, has_test=True)
    assert scratch['E0s'] == 'average' and scratch['num_channels'] == 128 and scratch['valid_file'] == 'valid.xyz'
    assert scratch['swa'] is True and scratch['start_swa'] == 3 and 'valid_fraction' not in scratch


def test_training_set_without_stress_rejected(aiida_profile, mace_code):
    ls = emt_set(3, ag_max=1, seed=5)
    ls.stress[:] = np.nan
    builder = FinetuneMaceCalcJob.get_builder()
    builder.code = mace_code['train']
    with pytest.raises(ValueError, match=r'lacks finite labels \(stress on 3 of 3'):
        builder.train = DatasetData.from_labelled_set(ls)


def test_scratch_training_outputs(scratch_run):
    results, node = scratch_run
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    model = results['model']
    assert model.kind == 'mace' and model.main_file == 'mace_model.model'
    assert 'mace_model_compiled.model' in model.base.attributes.get('files')
    assert model.base.attributes.get('foundation') is None
    arch = model.base.attributes.get('architecture')
    assert (arch['num_channels'], arch['max_L'], arch['num_interactions']) == (8, 0, 2)
    assert model.base.attributes.get('r_max') == 4.0 and model.base.attributes.get('dtype') == 'float64'
    assert len(model.sha256) == 64
    # its training domain, from the structures it trained on (train and valid), the closest pair by brute force
    frames = [a for name in ('train', 'valid') if name in node.inputs
              for a in node.inputs[name].get_labelled_set().to_atoms_list(with_labels=False)]
    assert model.domain['n_structures'] == len(frames) and model.domain['target'] is None
    assert model.domain['elements'] == sorted({s for a in frames for s in a.get_chemical_symbols()})
    closest = min(a.get_all_distances(mic=True)[np.triu_indices(len(a), 1)].min() for a in frames)
    assert model.domain['min_distance'] == pytest.approx(closest, rel=1e-9)
    metrics = results['metrics'].get_dict()
    assert {'train', 'validation'} <= set(metrics)
    for split in ('train', 'validation'):
        assert metrics[split]['mae_e_per_atom'] > 0 and metrics[split]['mae_f'] > 0 and metrics[split]['mae_stress'] > 0
        # the headline metrics are attributes of the model (QueryBuilder: attributes.metrics.validation.mae_forces)
        headline = model.base.attributes.get('metrics')[split]
        assert headline == {'mae_forces': metrics[split]['mae_f'],
                            'mae_energy_per_atom': metrics[split]['mae_e_per_atom'],
                            'mae_stress': metrics[split]['mae_stress']}
    curve = results['training_curve']
    assert list(curve.get_array('train_epoch')) == [0, 1, 2, 3]
    assert curve.get_array('eval_epoch')[0] == -1 and np.all(np.isfinite(curve.get_array('valid_loss')))
    assert 'Training complete' in results['log'].get_content()
    # The training data went with the job: the extxyz in the input folder holds the dataset's labels.
    from ase.io import read
    with node.base.repository.open('train.xyz') as handle:
        frames = read(handle, index=':', format='extxyz')
    ls = node.inputs.train.get_labelled_set()
    assert len(frames) == len(ls)
    assert np.isclose(frames[3].info['REF_energy'], ls.energy[3])
    np.testing.assert_allclose(frames[3].info['REF_stress'], ls.stress[3])


def test_finetune_from_model_node(scratch_run, mace_code):
    """Fine-tune the tiny model on Ag-richer cells: foundation link in the graph, validation error goes down."""
    foundation = scratch_run[0]['model']
    train = DatasetData.from_labelled_set(emt_set(20, ag_max=5, seed=11), method='EMT').store()
    valid = DatasetData.from_labelled_set(emt_set(6, ag_max=5, seed=12), method='EMT').store()
    builder = FinetuneMaceCalcJob.get_builder()
    builder.code = mace_code['train']
    builder.train = train
    builder.valid = valid
    builder.foundation_model = foundation
    builder.hyperparameters = orm.Dict({**TINY, 'max_num_epochs': 5, 'lr': 0.005, 'device': 'auto'})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    model = results['model']
    assert model.base.attributes.get('foundation') == {'uuid': foundation.uuid, 'sha256': foundation.sha256}
    assert model.base.attributes.get('architecture')['num_channels'] == 8  # the foundation's architecture
    # provenance: foundation -> calcjob -> model
    incoming = {link.link_label: link.node.uuid for link in node.base.links.get_incoming().all()}
    assert incoming['foundation_model'] == foundation.uuid and incoming['valid'] == valid.uuid
    assert model.base.links.get_incoming().one().node.uuid == node.uuid
    assert node.outputs.summary['remote_resolution']['device'] == 'cpu'
    metrics = results['metrics'].get_dict()
    initial, best = metrics['validation_initial'], metrics['validation_best_epoch']
    # MACE evaluates the foundation on the validation set before the first epoch: fine-tuning must beat it.
    assert best['loss'] < initial['loss']
    assert best['mae_f'] < initial['mae_f']
    assert metrics['validation']['mae_f'] < initial['mae_f']


def test_named_foundation_fails_fast_offline(mace_code):
    """``medium-mpa-0`` is resolved on the remote side; here it is neither cached nor downloadable: exit code 330."""
    import socket
    import time
    import urllib.parse

    from mace.calculators import foundations_models

    host = urllib.parse.urlsplit(foundations_models.mace_mp_urls[DEFAULT_FOUNDATION]).netloc
    try:
        socket.create_connection((host, 443), timeout=3).close()
        pytest.skip(f'{host} is reachable from this machine: the offline failure cannot be shown here')
    except OSError:
        pass

    builder = FinetuneMaceCalcJob.get_builder()
    builder.code = mace_code['train']
    builder.train = DatasetData.from_labelled_set(emt_set(4, ag_max=1, seed=3))
    builder.foundation_name = orm.Str(DEFAULT_FOUNDATION)
    builder.hyperparameters = orm.Dict({'max_num_epochs': 1, 'device': 'cpu'})
    builder.settings = orm.Dict({'download_timeout': 5.0, 'foundation_search_paths': ['/nonexistent']})
    start = time.time()
    _, node = engine.run_get_node(builder)
    assert node.exit_status == FinetuneMaceCalcJob.exit_codes.ERROR_FOUNDATION_NOT_OBTAINABLE.status
    assert 'medium-mpa-0' in node.exit_message and 'cannot be downloaded' in node.exit_message
    assert time.time() - start < 120
    # the config asked for the named model; the job never reached mace_run_train
    assert 'foundation_model: medium-mpa-0' in node.base.repository.get_object_content('config.yaml')
    assert 'mace_model_compiled.model' not in node.outputs.retrieved.base.repository.list_object_names()


# ---------------------------------------------------------------------------------------------- parser functions
LOG = """2026-11-23 09:24:11.880 INFO: Message passing with 8 channels and max_L=0 (8x0e)
2026-11-23 09:24:11 INFO: 2 layers, each with correlation order: 2 (body order: 3) and spherical harmonics up to: l=3
2026-11-23 09:24:11.880 INFO: Radial cutoff: 4.0 A (total receptive field for each atom: 8.0 A)
2026-11-23 09:24:16.432 INFO: Error-table on TRAIN and VALID:
+---------------+--------------------+-----------------+------------------+--------------------------------------+
|  config_type  | MAE E / meV / atom | MAE F / meV / A | relative F MAE % | MAE Stress (Virials) / meV / A (A^3) |
+---------------+--------------------+-----------------+------------------+--------------------------------------+
| train_Default |         363.4      |        625.7    |        57.48     |                   41.8               |
| valid_Default |         304.5      |        662.4    |        58.64     |                   44.2               |
+---------------+--------------------+-----------------+------------------+--------------------------------------+
"""


def test_parse_log_functions():
    table = parse_error_table(LOG)
    assert table['train_Default']['mae_e_per_atom'] == pytest.approx(0.3634)
    assert table['valid_Default']['mae_f'] == pytest.approx(0.6624)
    assert table['valid_Default']['mae_stress'] == pytest.approx(0.0442)
    arch = parse_architecture(LOG)
    assert arch == {'num_channels': 8, 'max_L': 0, 'hidden_irreps': '8x0e', 'num_interactions': 2, 'correlation': 2,
                    'r_max': 4.0}
    evals, opts = parse_results_lines('{"loss": NaN, "mode": "eval", "epoch": 0}\n{"loss": 1.5, "mode": "opt", '
                                      '"epoch": 0}\n')
    assert np.isnan(evals[0]['loss']) and opts[0]['loss'] == 1.5
    assert detect_failure('torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB')[0] == 'out_of_memory'
    assert detect_failure("WARNING: No forces found with key 'REF_forces' in 'train.xyz'.")[0] == 'missing_labels'
    assert detect_failure('Traceback (most recent call last):\n  x\nValueError: bad\n') == ('exception',
                                                                                        'ValueError: bad')
    assert detect_failure(LOG) is None
    finetune_arch = parse_architecture('INFO: Message passing with hidden irreps 128x0e+128x1o)\n')
    assert (finetune_arch['num_channels'], finetune_arch['max_L']) == (128, 1)


# ---------------------------------------------------------------------------------------------- evaluation
def test_evaluate_job_matches_numpy(scratch_run, mace_code):
    """MaceEvaluateCalcJob (capthermo-mace evaluate + phonons): metrics recomputed with numpy from its parity arrays;
    one prediction checked against MACE's own ASE calculator; phonons against EMT force constants of Cu."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    from aiida_capthermo.calculations.mace import MaceEvaluateCalcJob

    model = scratch_run[0]['model']
    dataset = DatasetData.from_labelled_set(emt_set(5, ag_max=3, seed=21)).store()
    unit = bulk('Cu', 'fcc', a=3.6)
    phonon = Phonopy(PhonopyAtoms(numbers=unit.numbers, positions=unit.positions, cell=unit.cell[:]),
                     supercell_matrix=2 * np.eye(3, dtype=int))
    phonon.generate_displacements(distance=0.01)
    forces = []
    for sc in phonon.supercells_with_displacements:
        from ase import Atoms
        atoms = Atoms(numbers=sc.numbers, positions=sc.positions, cell=sc.cell, pbc=True)
        atoms.calc = EMT()
        forces.append(atoms.get_forces())
    phonon.forces = forces
    phonon.produce_force_constants()
    fc = orm.ArrayData()
    fc.set_array('force_constants', phonon.force_constants)
    fc.set_array('supercell_matrix', 2 * np.eye(3))

    builder = MaceEvaluateCalcJob.get_builder()
    builder.code = mace_code['evaluate']
    builder.model = model
    builder.dataset = dataset
    builder.phonon_structure = orm.StructureData(ase=unit)
    builder.reference_force_constants = fc
    builder.settings = orm.Dict({'device': 'cpu', 'mesh': [2, 2, 2], 'batch_size': 2})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    metrics, parity = results['metrics'].get_dict(), results['parity']
    e_ref, e_pred = parity.get_array('energy_ref'), parity.get_array('energy_pred')
    np.testing.assert_allclose(e_ref, dataset.get_labelled_set().energy)
    for key, ref, pred in (('energy', e_ref, e_pred), ('forces', parity.get_array('forces_ref'),
                                                          parity.get_array('forces_pred')),
                           ('stress', parity.get_array('stress_ref'), parity.get_array('stress_pred'))):
        err = (pred - ref).ravel()
        assert metrics[key]['mae'] == pytest.approx(np.abs(err).mean(), rel=1e-10)
        assert metrics[key]['rmse'] == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-10)
        r2 = 1 - (err ** 2).sum() / ((ref.ravel() - ref.mean()) ** 2).sum()
        assert metrics[key]['r2'] == pytest.approx(r2, rel=1e-10)
    per_atom = np.abs(e_pred - e_ref) / parity.get_array('n_atoms')
    assert metrics['energy_per_atom']['mae'] == pytest.approx(per_atom.mean(), rel=1e-10)
    # independent: MACE's ASE calculator on structure 2 of the set
    from mace.calculators import MACECalculator
    with __import__('tempfile').TemporaryDirectory() as tmp:
        path = model.export_files(tmp)[model.main_file]
        calc = MACECalculator(model_paths=str(path), device='cpu', default_dtype='float64')
        atoms = dataset.get_labelled_set().atoms(2, with_labels=False)
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(e_pred[2], abs=1e-8)
        np.testing.assert_allclose(atoms.get_stress(), parity.get_array('stress_pred')[2], atol=1e-8)
        offsets = dataset.get_labelled_set().offsets
        np.testing.assert_allclose(atoms.get_forces(), parity.get_array('forces_pred')[offsets[2]:offsets[3]],
                                   atol=1e-8)
    # phonons: MAE recomputed from the returned frequencies; reference = EMT frequencies of phonopy here
    freq = results['phonon_frequencies']
    phonon.run_mesh([2, 2, 2], is_gamma_center=True)
    np.testing.assert_allclose(freq.get_array('frequencies_reference'), phonon.get_mesh_dict()['frequencies'],
                               atol=1e-8)
    mae = np.abs(freq.get_array('frequencies_model') - freq.get_array('frequencies_reference')).mean()
    assert metrics['phonons']['frequency_mae_thz'] == pytest.approx(mae, rel=1e-10)


# ---------------------------------------------------------------------------------------------- restart workchain
def _workchain_with_failed_child(aiida_profile, mace_code, exit_code, hyperparameters):
    from aiida.common import LinkType
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager
    from plumpy import ProcessState

    from aiida_capthermo.workflows.mace import FinetuneMaceWorkChain

    inputs = {'mace': {'code': mace_code['train'], 'train': DatasetData.from_labelled_set(emt_set(2, 1, seed=9)),
                       'hyperparameters': orm.Dict(hyperparameters)}}
    process = instantiate_process(get_manager().get_runner(), FinetuneMaceWorkChain, **inputs)
    process.setup()
    # a mock of a failed FinetuneMaceCalcJob (named as such): a CalcJobNode with the exit code and a remote folder
    child = orm.CalcJobNode(computer=mace_code['train'].computer,
                            process_type='aiida.calculations:capthermo.mace_finetune')
    child.set_process_state(ProcessState.FINISHED)
    child.set_exit_status(exit_code.status)
    child.set_exit_message(exit_code.message)
    child.store()
    remote = orm.RemoteData(computer=mace_code['train'].computer, remote_path='/tmp/mock-mace-run')
    remote.base.links.add_incoming(child, link_type=LinkType.CREATE, link_label='remote_folder')
    remote.store()
    process.ctx.children = [child]
    process.ctx.iteration = 1
    return process, child


def test_workchain_walltime_restarts_from_checkpoint(aiida_profile, mace_code):
    codes = FinetuneMaceCalcJob.exit_codes
    process, child = _workchain_with_failed_child(aiida_profile, mace_code, codes.ERROR_OUT_OF_WALLTIME,
                                                  {'batch_size': 8})
    assert process.inspect_process().status == 0
    assert process.ctx.inputs['parent_folder'].uuid == child.outputs.remote_folder.uuid
    assert process.ctx.inputs['hyperparameters']['restart_latest'] is True


def test_workchain_oom_halves_batch_size(aiida_profile, mace_code):
    codes = FinetuneMaceCalcJob.exit_codes
    process, _ = _workchain_with_failed_child(aiida_profile, mace_code, codes.ERROR_OUT_OF_MEMORY, {'batch_size': 8})
    assert process.inspect_process().status == 0
    assert process.ctx.inputs['hyperparameters']['batch_size'] == 4
    process, _ = _workchain_with_failed_child(aiida_profile, mace_code, codes.ERROR_OUT_OF_MEMORY, {'batch_size': 1})
    assert process.inspect_process() == process.exit_codes.ERROR_UNRECOVERABLE_FAILURE
    process, _ = _workchain_with_failed_child(aiida_profile, mace_code, codes.ERROR_NAN_LOSS, {'batch_size': 8})
    assert process.inspect_process() == process.exit_codes.ERROR_UNHANDLED_FAILURE


def test_reference_force_constants_from_aiida_phonopy_node():
    """The phonon check accepts the package's own phonon node (aiida-phonopy ForceConstantsData)."""
    from aiida.plugins import DataFactory
    from ase.build import bulk

    from aiida_capthermo.calculations.mace import _reference_force_constants

    ForceConstantsData = DataFactory('phonopy.force_constants')
    unit = orm.StructureData(ase=bulk('Cu', 'fcc', a=3.6, cubic=True))
    node = ForceConstantsData(structure=unit, supercell_matrix=[[2, 0, 0], [0, 2, 0], [0, 0, 2]])
    fc = np.random.default_rng(0).normal(size=(32, 32, 3, 3))
    node.set_force_constants(fc)
    arrays = _reference_force_constants(node)
    np.testing.assert_array_equal(arrays['supercell_matrix'], 2 * np.eye(3))
    np.testing.assert_array_equal(arrays['force_constants'], fc)
    node.set_force_constants(fc[:len(node.get_phonopy_instance().primitive)])  # compact format: not accepted
    with pytest.raises(ValueError, match='full format'):
        _reference_force_constants(node)


# ---------------------------------------------------------------------------------------------- remote resolution
def test_resolution_script_is_the_compute_module_and_needs_only_the_standard_library(tmp_path):
    """The job copies ``compute/mace_resolve.py`` into its folder and runs it with the remote python. Run here the way
    the job does, with ``python -S`` (no site-packages: neither this package nor AiiDA), it resolves a fixed device
    and leaves the config as it was."""
    import subprocess

    import aiida_capthermo.compute.mace_resolve as module
    from aiida_capthermo.calculations.mace import RESOLVE_SCRIPT, resolve_script_text

    assert resolve_script_text() == pathlib.Path(module.__file__).read_text(encoding='utf-8')
    (tmp_path / RESOLVE_SCRIPT).write_text(resolve_script_text())
    (tmp_path / 'config.yaml').write_text('device: cpu\nname: mace_model\n')
    result = subprocess.run([sys.executable, '-S', RESOLVE_SCRIPT, 'config.yaml', 'result.json', '{"device": "cpu"}'],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / 'result.json').read_text())
    assert report['error'] is None and report['device'] is None and report['foundation'] is None
    assert (tmp_path / 'config.yaml').read_text() == 'device: cpu\nname: mace_model\n'


def test_resolution_of_device_and_foundation(tmp_path):
    """``device: auto`` becomes what torch sees; a named model is found in ``search_paths`` (path and sha256 in the
    result, path in the config); an unknown name and a broken request fail with the kinds the parser maps to exit
    codes 330 and 331, exit status 1, and the config untouched."""
    import hashlib
    import os

    import torch
    from mace.calculators import foundations_models

    from aiida_capthermo.compute.mace_resolve import FAILED, NOT_OBTAINABLE, main
    from aiida_capthermo.compute.summary import ERROR_KINDS

    assert (ERROR_KINDS[NOT_OBTAINABLE], ERROR_KINDS[FAILED]) == ('ERROR_FOUNDATION_NOT_OBTAINABLE',
                                                                  'ERROR_REMOTE_RESOLUTION_FAILED')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    config, result = tmp_path / 'config.yaml', tmp_path / 'result.json'
    original = 'name: mace_model\ndevice: auto\nfoundation_model: small\n'

    config.write_text(original)
    assert main([str(config), str(result), json.dumps({'device': 'auto', 'foundation_name': 'no-such-model'})]) == 1
    report = json.loads(result.read_text())
    assert report['error_kind'] == NOT_OBTAINABLE and 'unknown MACE foundation model name' in report['error']
    assert report['device'] == device  # resolved before the failure, and reported
    assert config.read_text() == original

    assert main([str(config), str(result), '{not json']) == 1
    assert json.loads(result.read_text())['error_kind'] == FAILED and config.read_text() == original

    folder = tmp_path / 'models'
    folder.mkdir()
    model = folder / os.path.basename(foundations_models.mace_mp_urls['small'])
    model.write_bytes(b'stand-in for the small MACE-MP model')
    request = {'device': 'auto', 'foundation_name': 'small', 'search_paths': [str(folder)], 'allow_download': False}
    assert main([str(config), str(result), json.dumps(request)]) == 0
    report = json.loads(result.read_text())
    assert report['error'] is None and report['device'] == device
    assert report['foundation'] == {'name': 'small', 'path': str(model),
                                    'sha256': hashlib.sha256(model.read_bytes()).hexdigest()}
    assert config.read_text() == f'name: mace_model\ndevice: {device}\nfoundation_model: {json.dumps(str(model))}\n'


def test_demo_training_is_bit_reproducible_under_load(tmp_path):
    """The demo protocol's training job environment gives the same potential bit for bit whether the machine is
    quiet or busy. On two OpenMP threads it does not: under load a float32 rounding difference appears in the first
    epochs and grows, over 20 epochs, into another potential (two README demo runs with the same inputs and seed
    gave different potentials and different x = 1/2 ground states). The training runs twice, the second time beside
    two processes that keep both cores busy."""
    import hashlib
    import os
    import subprocess

    import yaml

    from aiida_capthermo.calculations.mace import MaceHyperParameters, build_mace_config
    from aiida_capthermo.workflows.mlip_potential import MlipPotentialWorkChain

    protocol = MlipPotentialWorkChain.get_protocol_inputs('demo')
    environment = protocol['options']['environment_variables']
    hyperparameters = {**protocol['hyperparameters'], 'max_num_epochs': 3}
    config = build_mace_config(MaceHyperParameters.model_validate(hyperparameters), foundation=None,
                               has_valid=False, has_test=False)
    hashes = []
    for run, busy in (('quiet', 0), ('busy', 2)):
        folder = tmp_path / run
        folder.mkdir()
        emt_set(20, ag_max=4, seed=3).write_extxyz(folder / 'train.xyz')
        (folder / 'config.yaml').write_text(yaml.safe_dump(config))
        hogs = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(busy)]
        try:
            subprocess.run([str(VENV_BIN / 'mace_run_train'), '--config', 'config.yaml'], cwd=folder, check=True,
                           capture_output=True, env={**os.environ, **environment}, timeout=600)
        finally:
            for hog in hogs:
                hog.kill()
        hashes.append(hashlib.sha256((folder / 'mace_model.model').read_bytes()).hexdigest())
    assert hashes[0] == hashes[1]
