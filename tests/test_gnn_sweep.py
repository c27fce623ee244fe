"""GnnSweepWorkChain over a two-point grid on localhost: best model by validation score and the table of runs."""

from __future__ import annotations

import pytest
from aiida import engine, orm
from aiida.plugins import WorkflowFactory

from aiida_capthermo.data.dataset import DatasetData
from aiida_capthermo.workflows.gnn_sweep import expand_grid

from gnn_helpers import synthetic_set  # tests/ is on sys.path (rootdir-style test modules)

GnnSweepWorkChain = WorkflowFactory('capthermo.gnn_sweep')


def test_expand_grid():
    points = expand_grid({'max_epochs': 3}, {'hidden_channels': [8, 16], 'pooling': ['max', 'mean']})
    assert len(points) == 4 and all(p['max_epochs'] == 3 for p in points)
    assert {(p['hidden_channels'], p['pooling']) for p in points} == {(8, 'max'), (8, 'mean'), (16, 'max'),
                                                                      (16, 'mean')}


def test_sweep_selects_best_by_validation(script_code):
    code = script_code('capthermo-gnn', 'capthermo.gnn_train')
    data = DatasetData.from_labelled_set(synthetic_set(16, seed=8)).store()
    base = {'max_epochs': 4, 'batch_size': 8, 'dropout': 0.0, 'patience': None, 'hidden_channels': 8}
    results, node = engine.run_get_node(
        GnnSweepWorkChain, train={'code': code, 'dataset': data}, hyperparameters=orm.Dict(base),
        grid=orm.Dict({'learning_rate': [1e-2, 1e-4]}))
    assert node.is_finished_ok, node.exit_message
    rows = results['table']['rows']
    assert [row['learning_rate'] for row in rows] == [1e-2, 1e-4]
    best_row = min(rows, key=lambda row: row['validation_mae'])
    assert results['best_metrics']['validation']['mae'] == pytest.approx(best_row['validation_mae'])
    assert results['best_hyperparameters']['learning_rate'] == best_row['learning_rate']
    assert results['best_model'].base.attributes.get('hyperparameters')['learning_rate'] == best_row['learning_rate']
    children = node.base.links.get_outgoing(link_label_filter='run_%').all()
    assert len(children) == 2


def test_sweep_rejects_bad_grid(script_code):
    code = script_code('capthermo-gnn', 'capthermo.gnn_train')
    data = DatasetData.from_labelled_set(synthetic_set(4, seed=9)).store()
    with pytest.raises(ValueError, match='invalid'):
        engine.run(GnnSweepWorkChain, train={'code': code, 'dataset': data}, grid=orm.Dict({'hidden_chanels': [8]}))
    with pytest.raises(ValueError, match='invalid hyper-parameters'):  # a typo in the shared hyper-parameters
        engine.run(GnnSweepWorkChain, train={'code': code, 'dataset': data}, grid=orm.Dict({'hidden_channels': [8]}),
                   hyperparameters=orm.Dict({'learning_rat': 1e-3}))
    with pytest.raises(ValueError, match='non-empty list'):
        engine.run(GnnSweepWorkChain, train={'code': code, 'dataset': data}, grid=orm.Dict({'hidden_channels': []}))
