"""The band-gap GNN trained for real on small seeded synthetic sets: metrics against numpy, determinism,
two-stage fine-tuning, checkpoint restart, prediction, explanation and the ``capthermo-gnn`` script."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aiida_capthermo.compute.gnn import main as gnn_main
from aiida_capthermo.ml.gnn.config import GnnHyperparameters
from aiida_capthermo.ml.gnn.predict import predict
from aiida_capthermo.ml.gnn.training import evaluate, load_model, save_model, split_indices, train_gnn

from gnn_helpers import synthetic_set  # tests/ is on sys.path (rootdir-style test modules)

torch.set_num_threads(1)

TINY = dict(max_epochs=30, hidden_channels=16, batch_size=8, learning_rate=5e-3, dropout=0.0, patience=None)


@pytest.fixture(scope='module')
def stage_one(tmp_path_factory):
    """A tiny first-stage model trained on 60 low-fidelity structures, saved to disk."""
    labelled = synthetic_set(60, seed=0)
    result = train_gnn(labelled, TINY)
    directory = tmp_path_factory.mktemp('stage1')
    save_model(directory, result.loaded)
    return labelled, result, directory


def test_split_is_seeded_and_complete():
    train, val, test = split_indices(100, (0.7, 0.15, 0.15), seed=3)
    assert (len(train), len(val), len(test)) == (70, 15, 15)
    assert sorted(np.concatenate([train, val, test])) == list(range(100))
    again = split_indices(100, (0.7, 0.15, 0.15), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again))
    assert not np.array_equal(train, split_indices(100, (0.7, 0.15, 0.15), seed=4)[0])


def test_metrics_against_numpy_and_prediction(stage_one):
    labelled, result, directory = stage_one
    parity, metrics = result.parity, result.metrics
    assert metrics['train']['n'] + metrics['validation']['n'] + metrics['test']['n'] == 60
    assert (metrics['train']['n'], metrics['validation']['n'], metrics['test']['n']) == (42, 9, 9)
    for split in ('train', 'validation', 'test'):
        true, pred = parity[f'{split}_true'], parity[f'{split}_pred']
        np.testing.assert_allclose(true, labelled.gap[parity[f'{split}_index']])
        residual = pred - true
        assert metrics[split]['mae'] == pytest.approx(np.abs(residual).mean(), rel=1e-10)
        assert metrics[split]['rmse'] == pytest.approx(np.sqrt((residual ** 2).mean()), rel=1e-10)
        r2 = 1 - (residual ** 2).sum() / ((true - true.mean()) ** 2).sum()
        assert metrics[split]['r2'] == pytest.approx(r2, rel=1e-10)
    # it learned something: better than predicting the training mean on the test split
    baseline = np.abs(parity['test_true'] - parity['train_true'].mean()).mean()
    assert metrics['test']['mae'] < 0.8 * baseline
    # the saved model reloads and predicts the same numbers, batched in any batch size
    loaded = load_model(directory)
    test_set = labelled.subset(parity['test_index'])
    np.testing.assert_allclose(predict(loaded, test_set, batch_size=2), parity['test_pred'], atol=1e-5)
    np.testing.assert_allclose(predict(loaded, test_set, batch_size=100), parity['test_pred'], atol=1e-5)
    assert loaded.metadata['normalisation_source'] == 'fitted on the training split'
    assert loaded.metadata['split'] == {'seed': 0, 'fractions': [0.7, 0.15, 0.15], 'n_train': 42, 'n_val': 9,
                                        'n_test': 9}
    # target normalisation: min/max of the training split
    train_gaps = labelled.gap[parity['train_index']]
    assert loaded.normalisation.target.minimum[0] == pytest.approx(train_gaps.min())
    assert loaded.normalisation.target.maximum[0] == pytest.approx(train_gaps.max())


def test_training_is_deterministic_on_cpu(stage_one):
    labelled, result, _ = stage_one
    again = train_gnn(labelled, TINY)
    for key, value in result.loaded.model.state_dict().items():
        assert torch.equal(value, again.loaded.model.state_dict()[key]), key
    np.testing.assert_array_equal(result.curve['val_loss'], again.curve['val_loss'])


def test_early_stopping_keeps_the_best_epoch():
    """Patience 2 at a high learning rate stops early; the model returned is the best epoch's, and ``evaluate``
    on the validation split gives back its validation loss (MSE of the normalised target) and MAE (eV)."""
    from torch_geometric.loader import DataLoader

    from aiida_capthermo.ml.gnn.data import build_graphs, to_pyg

    labelled = synthetic_set(30, seed=0)
    result = train_gnn(labelled, dict(TINY, max_epochs=40, patience=2, learning_rate=5e-2, hidden_channels=8,
                                      dropout=0.2))
    metrics, curve = result.metrics, result.curve
    assert metrics['stopped_early'] and metrics['epochs_run'] == metrics['best_epoch'] + 3 < 40
    assert curve['val_loss'][metrics['best_epoch']] == curve['val_loss'].min() == metrics['best_val_loss']
    validation = labelled.subset(result.parity['validation_index'])
    loaded = result.loaded
    loader = DataLoader(to_pyg(build_graphs(validation, loaded.cutoff), loaded.normalisation, validation.gap),
                        batch_size=256)
    loss, mae = evaluate(loaded.model, loader, loaded.normalisation, validation.gap, torch.device('cpu'))
    assert loss == pytest.approx(metrics['best_val_loss'], rel=1e-6)
    assert mae == pytest.approx(curve['val_mae'][metrics['best_epoch']], rel=1e-6)
    assert mae == pytest.approx(metrics['validation']['mae'], rel=1e-6)


def test_papers_default_architecture():
    from aiida_capthermo.ml.gnn.model import BandGapGNN

    model = BandGapGNN(**GnnHyperparameters().architecture())
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes['convs.0.lin_rel.weight'] == (64, 4) and shapes['convs.1.lin_rel.weight'] == (64, 64)
    assert shapes['head.0.weight'] == (16, 64) and shapes['head.2.weight'] == (1, 16)
    assert model.dropout.p == 0.4 and model.sigmoid_output
    with pytest.raises(ValueError, match='extra'):
        GnnHyperparameters.model_validate({'learning_rat': 1e-3})
    with pytest.raises(ValueError, match='sum to 1'):
        GnnHyperparameters(split=(0.5, 0.2, 0.2))


def test_two_stage_fine_tuning(stage_one):
    _, _, directory = stage_one
    parent = load_model(directory)
    high = synthetic_set(40, seed=1, high_fidelity=True)
    second = train_gnn(high, dict(TINY, max_epochs=15), parent=parent)
    meta = second.loaded.metadata
    assert meta['parent']['sha256'] == parent.metadata['sha256']
    assert meta['architecture'] == parent.metadata['architecture']
    # node/edge constants inherited; the target range is the union of the parent's and the high-fidelity
    # training split's, so nothing the parent could predict is clipped
    np.testing.assert_array_equal(second.loaded.normalisation.node.minimum, parent.normalisation.node.minimum)
    np.testing.assert_array_equal(second.loaded.normalisation.edge.maximum, parent.normalisation.edge.maximum)
    train_gaps = high.gap[second.parity['train_index']]
    target = second.loaded.normalisation.target
    assert target.maximum[0] == pytest.approx(max(train_gaps.max(), parent.normalisation.target.maximum[0]))
    assert target.minimum[0] == pytest.approx(min(train_gaps.min(), parent.normalisation.target.minimum[0]))
    assert target.maximum[0] - target.minimum[0] > train_gaps.max() - train_gaps.min()
    refit = train_gnn(high, dict(TINY, max_epochs=1, fine_tune_target_normalisation='refit'), parent=parent)
    assert refit.loaded.normalisation.target.maximum[0] == pytest.approx(train_gaps.max())
    changed = [not torch.equal(v, parent.model.state_dict()[k]) for k, v in second.loaded.model.state_dict().items()
               if v.dtype.is_floating_point]
    assert all(changed)  # every weight tensor was fine-tuned
    with pytest.raises(ValueError, match='parent architecture'):
        train_gnn(high, dict(TINY, hidden_channels=32), parent=parent)


def test_checkpoint_restart_reproduces_uninterrupted_run(tmp_path):
    labelled = synthetic_set(30, seed=2)
    hp = dict(TINY, max_epochs=6, checkpoint_every=3, dropout=0.2)
    full = train_gnn(labelled, hp)
    train_gnn(labelled, dict(hp, max_epochs=3), checkpoint_path=tmp_path / 'checkpoint.pt')
    resumed = train_gnn(labelled, hp, restart_from=tmp_path / 'checkpoint.pt')
    np.testing.assert_array_equal(full.curve['val_loss'], resumed.curve['val_loss'])
    for key, value in full.loaded.model.state_dict().items():
        assert torch.equal(value, resumed.loaded.model.state_dict()[key]), key


def test_explanation_per_bond_type(stage_one):
    from aiida_capthermo.ml.gnn.explain import explain_bond_types

    labelled, result, _ = stage_one
    importance = explain_bond_types(result.loaded, labelled.subset([0, 1]), epochs=5)
    assert {'Ag-S', 'Ag-Ag', 'Ag-I'} <= set(importance)
    assert sum(v['share'] for v in importance.values()) == pytest.approx(1.0)
    assert all(0 <= v['mean'] <= 1 for v in importance.values())


def test_console_script_train_predict_explain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    synthetic_set(24, seed=5).save('data.npz')
    import yaml

    (tmp_path / 'hp.yaml').write_text(yaml.safe_dump(dict(TINY, max_epochs=5)))  # YAML here, JSON below
    assert gnn_main(['train', '--dataset', 'data.npz', '--hyperparameters', 'hp.yaml', '--output-dir', 'out']) == 0
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['error'] is None
    for name in summary['outputs']:
        assert (tmp_path / 'out' / name).is_file(), name
    metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
    assert metrics == summary['metrics']
    assert gnn_main(['predict', '--model', 'out', '--dataset', 'data.npz', '--batch-size', '5']) == 0
    values = np.load('predictions.npz')['values']
    assert values.shape == (24,) and np.all(np.isfinite(values))
    assert gnn_main(['explain', '--model', 'out', '--dataset', 'data.npz', '--epochs', '3',
                     '--max-structures', '1']) == 0
    assert 'Ag-S' in json.loads((tmp_path / 'explanation.json').read_text())
    assert (tmp_path / 'explanation.png').is_file()


@pytest.mark.parametrize('case, kind', [('typo', 'invalid_input'), ('no_labels', 'no_data'), ('walltime', 'walltime'),
                                        ('nan_loss', 'nan_loss'), ('constant', 'no_data'), ('negative_gap', 'no_data')])
def test_console_script_failures(tmp_path, monkeypatch, case, kind):
    monkeypatch.chdir(tmp_path)
    labelled = synthetic_set(10, seed=6)
    hp, extra = dict(TINY, max_epochs=3), []
    if case == 'typo':
        hp['hiden_channels'] = 8
    if case == 'no_labels':
        labelled.gap[:] = np.nan
    if case == 'walltime':
        extra = ['--time-limit', '0']
    if case == 'nan_loss':
        # labels at the edge of float64: max - min overflows, the normalised targets and the loss become NaN
        hp['target'] = 'vbm'  # may be negative, unlike a gap
        labelled.vbm = np.where(np.arange(10) % 2, 1e308, -1e308)
    if case == 'constant':  # nothing to learn
        labelled.gap[:] = 1.25
    if case == 'negative_gap':
        labelled.gap[3] = -0.2
    labelled.save('data.npz')
    (tmp_path / 'hp.json').write_text(json.dumps(hp))
    assert gnn_main(['train', '--dataset', 'data.npz', '--hyperparameters', 'hp.json', *extra]) == 1
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['error_kind'] == kind, summary['error']
    words = {'constant': 'all 10 gap labels are 1.25: a target with zero variance',
             'negative_gap': '1 band-gap labels are negative (down to -0.2 eV)'}
    assert words.get(case, '') in summary['error']
    if case == 'walltime':
        assert (tmp_path / 'checkpoint.pt').is_file()


def test_console_script_predict_flags_structures_outside_the_domain(tmp_path, monkeypatch):
    """`capthermo-gnn predict` predicts every structure and flags those outside the model's training domain: a cell
    scaled 1.5 times (volume 3.4x) and one with an Fe atom, counted by reason."""
    monkeypatch.chdir(tmp_path)
    synthetic_set(12, seed=6).save('data.npz')
    (tmp_path / 'hp.json').write_text(json.dumps(dict(TINY, max_epochs=2)))
    assert gnn_main(['train', '--dataset', 'data.npz', '--hyperparameters', 'hp.json', '--output-dir', 'out']) == 0
    cells = synthetic_set(3, seed=7).to_atoms_list(with_labels=False)
    cells[1].set_cell(cells[1].cell * 1.5, scale_atoms=True)
    cells[2].symbols[0] = 'Fe'
    from aiida_capthermo.core.dataset import LabelledSet

    LabelledSet.from_atoms_list(cells).save('new.npz')
    assert gnn_main(['predict', '--model', 'out', '--dataset', 'new.npz']) == 0
    with np.load('predictions.npz') as data:
        assert data['outside_domain'].tolist() == [False, True, True] and np.all(np.isfinite(data['values']))
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert summary['n_outside_domain'] == 2 and summary['outside_domain_reasons'] == {'volume': 1, 'elements': 1}
