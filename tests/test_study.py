"""CapthermoStudyWorkChain run for real on localhost: dataset -> MACE from scratch and two-stage GNN."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from aiida import engine, orm

from aiida_capthermo.workflows.study import CapthermoStudyWorkChain

BIN = pathlib.Path(sys.executable).parent


def code(computer, name, plugin):
    return orm.InstalledCode(computer=computer, filepath_executable=str(BIN / name), label=f'study-{name}',
                             default_calc_job_plugin=plugin).store()


def test_study_end_to_end(localhost_session):
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(
        code(localhost_session, 'capthermo-label', 'capthermo.label'),
        code(localhost_session, 'capthermo-gnn', 'capthermo.gnn_train'),
        code(localhost_session, 'mace_run_train', 'capthermo.mace_finetune'),
        protocol='demo',
        overrides={'dataset': {'scheme': 'random', 'random_amplitudes': [0.05, 0.1], 'structures_per_temperature': 3,
                               'n_equilibrium': 1, 'high_structures': 3},
                   'gnn': {'hyperparameters': {'max_epochs': 5}, 'finetune_hyperparameters': {'max_epochs': 3}},
                   'mace': {'hyperparameters': {'max_num_epochs': 1}}})
    assert builder.gnn.hyperparameters['max_epochs'] == 5 and builder.gnn.hyperparameters['batch_size'] == 8
    assert builder.dataset.structures_per_temperature.value == 3
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    assert results['dataset']['low'].n_structures == 6
    # The second GNN stage starts from the first: parent link in the graph, hash and weights differ.
    model_low, model = results['gnn']['model_low'], results['gnn']['model']
    high_job = model.creator
    assert high_job.inputs.parent_model.uuid == model_low.uuid
    assert high_job.inputs.datasets.high.uuid == results['dataset']['high'].uuid
    assert model.sha256 != model_low.sha256
    # The MACE potential was trained on the low set (its extxyz went up with the job).
    mace_job = results['mace']['model'].creator
    assert mace_job.inputs.train.uuid == results['dataset']['low'].uuid
    assert mace_job.caller.process_label == 'FinetuneMaceWorkChain'  # the restart wrapper ran it
    assert np.isfinite(results['mace']['metrics']['valid']['mae_f'])
