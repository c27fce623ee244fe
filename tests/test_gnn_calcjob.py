"""GnnTrainCalcJob / GnnPredictCalcJob run for real on localhost with ``capthermo-gnn`` and parsed."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import engine, orm
from aiida.plugins import CalculationFactory

from aiida_capthermo.data.dataset import DatasetData

from gnn_helpers import synthetic_set  # tests/ is on sys.path (rootdir-style test modules)

GnnTrainCalcJob = CalculationFactory('capthermo.gnn_train')
GnnPredictCalcJob = CalculationFactory('capthermo.gnn_predict')

TINY = {'max_epochs': 8, 'hidden_channels': 16, 'batch_size': 8, 'learning_rate': 5e-3, 'dropout': 0.0,
        'patience': None}


@pytest.fixture
def train_code(script_code):
    return script_code('capthermo-gnn', 'capthermo.gnn_train')


def dataset_node(n=30, seed=0, **kwargs) -> DatasetData:
    labelled = synthetic_set(n, seed=seed, **kwargs)
    return DatasetData.from_labelled_set(labelled, fidelity='low', method='synthetic').store()


def test_train_finetune_predict_on_localhost(train_code, tmp_path):
    from aiida_capthermo.ml.gnn.predict import predict
    from aiida_capthermo.ml.gnn.training import load_model

    low = dataset_node(30, seed=0)
    results, node = engine.run_get_node(GnnTrainCalcJob, code=train_code, datasets={'a': low},
                                        hyperparameters=orm.Dict(TINY))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    model, metrics, parity = results['model'], results['metrics'], results['parity']
    assert model.kind == 'gnn' and model.base.attributes.get('target') == 'gap'
    assert model.base.attributes.get('architecture')['hidden_channels'] == 16
    assert model.base.attributes.get('parent_model_uuid') is None
    assert set(model.base.attributes.get('normalisation')) == {'node', 'edge', 'target'}
    import hashlib
    assert model.sha256 == hashlib.sha256(model.get_bytes('model.pt')).hexdigest()
    # metrics recomputed from the parity arrays with numpy
    for split in ('train', 'validation', 'test'):
        true, pred = parity.get_array(f'{split}_true'), parity.get_array(f'{split}_pred')
        np.testing.assert_allclose(true, low.get_array('gap')[parity.get_array(f'{split}_index')])
        assert metrics[split]['mae'] == pytest.approx(np.abs(pred - true).mean())
    assert len(results['training_curve'].get_array('val_loss')) == 8
    assert 'parity_plot' in results
    # The headline metrics are attributes of the model: a QueryBuilder filter selects models by them.
    headline = model.base.attributes.get('metrics')
    assert set(headline) == {'train', 'validation', 'test'}
    assert headline['validation']['mae'] == pytest.approx(metrics['validation']['mae'])
    mae = headline['validation']['mae']
    selected = orm.QueryBuilder().append(type(model), filters={
        'attributes.metrics.validation.mae': {'<=': mae}, 'id': model.pk}).count()
    rejected = orm.QueryBuilder().append(type(model), filters={
        'attributes.metrics.validation.mae': {'<': mae * 0.999}, 'id': model.pk}).count()
    assert (selected, rejected) == (1, 0)

    # second stage: fine-tune on 'high-fidelity' gaps from the first model
    high = dataset_node(20, seed=1, high_fidelity=True)
    results2, node2 = engine.run_get_node(GnnTrainCalcJob, code=train_code, dataset=high, parent_model=model,
                                          hyperparameters=orm.Dict({**TINY, 'max_epochs': 4}))
    assert node2.is_finished_ok, (node2.exit_status, node2.exit_message)
    child = results2['model']
    assert child.base.attributes.get('parent_model_uuid') == model.uuid
    assert node2.inputs.parent_model.uuid == model.uuid
    assert child.sha256 != model.sha256

    # batched prediction of the child on a dataset, with explanation
    predict_code = train_code  # same executable; the plugin is chosen by the CalcJob class
    results3, node3 = engine.run_get_node(GnnPredictCalcJob, code=predict_code, model=child, dataset=high,
                                          batch_size=orm.Int(7), explain=orm.Bool(True), explain_epochs=orm.Int(3))
    assert node3.is_finished_ok, (node3.exit_status, node3.exit_message)
    values = results3['predictions'].get_array('values')
    child.export_files(tmp_path / 'child')
    np.testing.assert_allclose(values, predict(load_model(tmp_path / 'child'), high.get_labelled_set()), atol=1e-5)
    assert results3['predictions'].base.attributes.get('units') == 'eV'
    # the job flags (does not refuse) structures outside the model's domain: none here, the child trained on them
    assert results3['predictions'].base.attributes.get('n_outside_domain') == 0
    assert not results3['predictions'].get_array('outside_domain').any()
    assert 'Ag-S' in results3['bond_importance'].get_dict()

    # the models know their training domain: the parent's from its 30 structures, counted here by brute force
    frames = low.get_labelled_set().to_atoms_list(with_labels=False)
    domain = model.domain
    assert domain['elements'] == sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    closest = min(atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)].min() for atoms in frames)
    assert domain['min_distance'] == pytest.approx(closest, rel=1e-9)
    volumes = [atoms.get_volume() / len(atoms) for atoms in frames]
    assert domain['volume_per_atom'] == pytest.approx([min(volumes), max(volumes)])
    assert domain['target'] == pytest.approx([low.get_array('gap').min(), low.get_array('gap').max()])
    assert child.domain['n_structures'] == 50 and child.domain['min_distance'] <= domain['min_distance']
    assert child.domain['target'] == pytest.approx([high.get_array('gap').min(), high.get_array('gap').max()])


def test_predictions_outside_the_training_domain_are_refused_or_flagged(train_code, tmp_path):
    """An unknown element, two atoms on top of each other and a cell scaled 100 times are refused, with the
    reason, by ModelData.predict and by `capthermo predict` (one line naming the structure), or predicted and
    flagged on request; a structure inside the domain is predicted exactly as the model does directly."""
    import ase.io
    from click.testing import CliRunner

    from aiida_capthermo.cli.main import cli
    from aiida_capthermo.ml.gnn.predict import predict
    from aiida_capthermo.ml.gnn.training import load_model

    low = dataset_node(30, seed=0)
    results, _ = engine.run_get_node(GnnTrainCalcJob, code=train_code, datasets={'a': low},
                                     hyperparameters=orm.Dict({**TINY, 'max_epochs': 2}))
    model = results['model']
    inside = synthetic_set(3, seed=5)
    model.export_files(tmp_path / 'model')
    direct = predict(load_model(tmp_path / 'model'), inside)
    cells = inside.to_atoms_list(with_labels=False)
    assert [r['gap'] for r in model.predict(cells)] == pytest.approx(direct.tolist(), abs=1e-6)
    iron, collapsed, expanded = cells[0].copy(), cells[0].copy(), cells[0].copy()
    iron.symbols[0] = 'Fe'
    collapsed.positions[1] = collapsed.positions[0] + 0.05
    expanded.set_cell(expanded.cell * 100, scale_atoms=True)
    for atoms, words in ((iron, "elements ['Fe'] were not in the training set"),
                         (collapsed, 'its closest pair is 0.0866 Å apart'),
                         (expanded, 'its volume per atom is')):
        with pytest.raises(ValueError, match='outside the training domain') as refused:
            model.predict([cells[1], atoms])
        assert str(refused.value).startswith('structure 1 ') and words in str(refused.value)
        flagged = model.predict([cells[1], atoms], out_of_domain='flag')
        assert flagged[0]['outside_domain'] == [] and words in flagged[1]['outside_domain'][0]
    ase.io.write(tmp_path / 'collapsed.xyz', collapsed)
    runner = CliRunner()
    refused = runner.invoke(cli, ['predict', str(model.pk), str(tmp_path / 'collapsed.xyz')])
    assert refused.exit_code == 1 and 'Traceback' not in refused.output, refused.output
    assert f'{tmp_path / "collapsed.xyz"} lies outside the training domain' in refused.output
    assert '--out-of-domain flag' in refused.output
    flagged = runner.invoke(cli, ['predict', str(model.pk), str(tmp_path / 'collapsed.xyz'), '--out-of-domain', 'flag'])
    assert flagged.exit_code == 0 and 'OUTSIDE THE TRAINING DOMAIN: its closest pair' in flagged.output


@pytest.mark.slow
def test_predict_from_structures_and_trajectory(train_code, tmp_path):
    from aiida_capthermo.data.model import ModelData
    from aiida_capthermo.ml.gnn.training import save_model, train_gnn

    labelled = synthetic_set(12, seed=3)
    files = save_model(tmp_path, train_gnn(labelled, {**TINY, 'max_epochs': 2}).loaded)
    model = ModelData.from_files('gnn', files, main_file='model.pt').store()
    first = labelled.atoms(0, with_labels=False)
    atoms = [first.copy() for _ in range(3)]  # same composition: a trajectory needs one symbol list
    for shift, frame in enumerate(atoms):
        frame.positions[0] += 0.1 * shift
    structures = {f's{i}': orm.StructureData(ase=a) for i, a in enumerate(atoms)}
    by_structures, node = engine.run_get_node(GnnPredictCalcJob, code=train_code, model=model, structures=structures)
    assert node.is_finished_ok, node.exit_message
    trajectory = orm.TrajectoryData([orm.StructureData(ase=a) for a in atoms])
    by_trajectory, node = engine.run_get_node(GnnPredictCalcJob, code=train_code, model=model, trajectory=trajectory)
    assert node.is_finished_ok, node.exit_message
    np.testing.assert_allclose(by_structures['predictions'].get_array('values'),
                               by_trajectory['predictions'].get_array('values'), atol=1e-6)


def test_walltime_stop_and_restart_from_checkpoint(train_code):
    data = dataset_node(12, seed=4)
    hp = orm.Dict({**TINY, 'max_epochs': 3})
    _, node = engine.run_get_node(GnnTrainCalcJob, code=train_code, dataset=data, hyperparameters=hp,
                                  metadata={'options': {'max_wallclock_seconds': 1}})
    assert node.exit_status == GnnTrainCalcJob.exit_codes.ERROR_OUT_OF_WALLTIME.status
    checkpoint = node.outputs.checkpoint
    _, node = engine.run_get_node(GnnTrainCalcJob, code=train_code, dataset=data, hyperparameters=hp,
                                  checkpoint=checkpoint)
    assert node.is_finished_ok, node.exit_message
    assert 'restarted from' in node.outputs.retrieved.base.repository.get_object_content('aiida.out')


def test_input_validation(train_code):
    data = dataset_node(5, seed=5)
    with pytest.raises(ValueError, match='invalid GNN hyper-parameters'):
        engine.run(GnnTrainCalcJob, code=train_code, dataset=data, hyperparameters=orm.Dict({'hidden': 3}))
    with pytest.raises(ValueError, match='carries the `vbm` label'):
        engine.run(GnnTrainCalcJob, code=train_code, dataset=data, hyperparameters=orm.Dict({'target': 'vbm'}))
    with pytest.raises(ValueError, match='give the training data'):
        engine.run(GnnTrainCalcJob, code=train_code, hyperparameters=orm.Dict({}))


def test_no_data_exit_code(train_code):
    labelled = synthetic_set(6, seed=6)
    labelled.gap[1:] = np.nan  # one labelled structure: the script cannot split
    _, node = engine.run_get_node(GnnTrainCalcJob, code=train_code, dataset=DatasetData.from_labelled_set(labelled),
                                  hyperparameters=orm.Dict(TINY))
    assert node.exit_status == GnnTrainCalcJob.exit_codes.ERROR_NO_TRAINING_DATA.status
    assert 'summary' in node.outputs
