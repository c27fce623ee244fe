"""The stage workchains the study chains, each run on its own for real on localhost: the two-stage GNN and the
batch labelling (the potential's stage runs in tests/test_study.py and below)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import engine, orm

from aiida_capthermo.core.constants import KB_EV
from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.dataset import DatasetData

from gnn_helpers import synthetic_set


def test_gnn_two_stage_learns_the_high_fidelity_shift(script_code):
    """Low-fidelity gaps, then high-fidelity ones that are 1.25 x low + 0.4 eV: the fine-tuned model starts from the
    first (parent link), and on held-out high-fidelity structures it is closer to the high-fidelity gaps than the
    first model, whose error there is the systematic shift."""
    from aiida_capthermo.workflows.gnn import GnnTwoStageWorkChain

    low = DatasetData.from_labelled_set(synthetic_set(60, seed=0), fidelity='low', method='synthetic').store()
    high = DatasetData.from_labelled_set(synthetic_set(40, seed=1, high_fidelity=True), fidelity='high',
                                         method='synthetic-high').store()
    held_out = synthetic_set(20, seed=2, high_fidelity=True)
    hyper = {'max_epochs': 15, 'hidden_channels': 16, 'batch_size': 8, 'learning_rate': 5e-3, 'dropout': 0.0,
             'patience': None}
    builder = GnnTwoStageWorkChain.get_builder_from_protocol(
        script_code('capthermo-gnn', 'capthermo.gnn_train'), protocol='demo',
        overrides={'hyperparameters': hyper, 'finetune_hyperparameters': {**hyper, 'max_epochs': 15}},
        low=low, high=high)
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    model_low, model = results['model_low'], results['model']
    assert model.creator.inputs.parent_model.uuid == model_low.uuid
    assert model.creator.inputs.datasets.high.uuid == high.uuid and model.sha256 != model_low.sha256
    structures = [orm.StructureData(ase=held_out.atoms(i, with_labels=False)) for i in range(len(held_out))]
    error = {name: np.array([p['gap'] for p in m.predict(structures)]) - held_out.gap
             for name, m in (('low', model_low), ('high', model))}
    assert abs(np.mean(error['low'])) > 0.2  # the first model misses the high-fidelity shift
    assert np.mean(np.abs(error['high'])) < 0.5 * np.mean(np.abs(error['low']))
    # Without a high-fidelity set there is one stage and its model is the one to use.
    del builder.high
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok and results['model'].uuid == results['model_low'].uuid


def test_gnn_ensemble_members_and_their_predictions(script_code):
    """Three models: each member is trained like the model with the seed plus its index (another split) in both
    stages, its second stage from its own first; the prediction job with the members gives their mean as `values`
    and each model's gaps in `members`, the same as each model alone. The models disagree more on thermal frames
    (displacements 0.3-0.5 Å) than on the near-equilibrium cells they were trained on: the spread knows the
    domain."""
    from aiida_capthermo.calculations.gnn import GnnPredictCalcJob
    from aiida_capthermo.data.dataset import DatasetData
    from aiida_capthermo.workflows.gnn import GnnTwoStageWorkChain

    low = DatasetData.from_labelled_set(synthetic_set(60, seed=0, amplitude=(0.0, 0.15)), fidelity='low',
                                        method='synthetic').store()
    high = DatasetData.from_labelled_set(synthetic_set(30, seed=1, amplitude=(0.0, 0.15), high_fidelity=True),
                                         fidelity='high', method='synthetic-high').store()
    hyper = {'max_epochs': 12, 'hidden_channels': 16, 'batch_size': 8, 'learning_rate': 5e-3, 'dropout': 0.0,
             'patience': None, 'seed': 4}
    code = script_code('capthermo-gnn', 'capthermo.gnn_train')
    builder = GnnTwoStageWorkChain.get_builder_from_protocol(
        code, protocol='demo', overrides={'hyperparameters': hyper, 'finetune_hyperparameters': {
            **hyper, 'max_epochs': 6}, 'members': 3}, low=low, high=high)
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    models = [results['model'], results['members']['member_01'], results['members']['member_02']]
    assert len({model.sha256 for model in models}) == 3
    for index, model in enumerate(models):
        assert model.creator.inputs.hyperparameters['seed'] == 4 + index
        parent = model.creator.inputs.parent_model
        assert parent.creator.inputs.hyperparameters['seed'] == 4 + index
    metrics = results['member_metrics']
    assert [row['model'] for row in metrics['models']] == ['model', 'member_01', 'member_02']
    assert [row['seed'] for row in metrics['models']] == [4, 5, 6] and metrics['test_mae_std'] > 0

    near, thermal = synthetic_set(20, seed=7, amplitude=(0.0, 0.15)), synthetic_set(20, seed=8, amplitude=(0.3, 0.5))
    dataset = DatasetData.from_labelled_set(LabelledSet.concatenate([near, thermal]), fidelity='low',
                                            method='synthetic').store()
    predicted, job = engine.run_get_node(GnnPredictCalcJob, code=script_code('capthermo-gnn', 'capthermo.gnn_predict'),
                                         model=models[0], members={'member_01': models[1], 'member_02': models[2]},
                                         dataset=dataset)
    assert job.is_finished_ok, (job.exit_status, job.exit_message)
    arrays = predicted['predictions']
    each = arrays.get_array('members')
    structures = [dataset.get_labelled_set().atoms(i, with_labels=False) for i in range(40)]
    alone = np.array([[p['gap'] for p in model.predict(structures, out_of_domain='flag')] for model in models])
    np.testing.assert_allclose(each, alone, atol=1e-5)
    np.testing.assert_allclose(arrays.get_array('values'), alone.mean(axis=0), atol=1e-5)
    spread = each.std(axis=0, ddof=1)
    print('spread near equilibrium', spread[:20].mean(), 'on thermal frames', spread[20:].mean())
    assert spread[20:].mean() > spread[:20].mean()
    # a member of another target is refused at submission, before anything runs
    import tempfile

    from aiida_capthermo.data.model import ModelData

    with tempfile.TemporaryDirectory() as folder:
        files = models[1].export_files(folder)
        other = ModelData.from_files(kind='gnn', files=files, main_file=models[1].base.attributes.get('main_file'),
                                     target='vbm').store()
    with pytest.raises(ValueError, match='an ensemble averages one target'):
        engine.run(GnnPredictCalcJob, code=script_code('capthermo-gnn', 'capthermo.gnn_predict'), model=models[0],
                   members={'member_01': other}, dataset=dataset)


def test_batch_label_throttles_and_labels_like_a_direct_calculation(script_code):
    """Five structures in batches of two, two jobs at a time: three jobs, the third submitted only after the first
    two finished; the joined labels are in key order and equal a direct single point of the teacher."""
    from aiida_capthermo.ml.labelling import CalculatorSpec, single_point_function
    from aiida_capthermo.workflows.batch_label import BatchLabelWorkChain

    from mlip_helpers import small_cell

    structures = {f's{index}': orm.StructureData(ase=small_cell(bool(index % 2), seed=index)) for index in range(5)}
    results, node = engine.run_get_node(
        BatchLabelWorkChain, structures=structures, batch_size=orm.Int(2), max_concurrent=orm.Int(2),
        engine={'code': script_code('capthermo-label', 'capthermo.label')},
        attributes=orm.Dict({'subset': 'test'}))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    batches = sorted((c for c in node.called if c.process_label == 'LocalLabelWorkChain'), key=lambda c: c.ctime)
    assert [sum(label.startswith('label__structures__') for label in child.base.links.get_incoming().all_link_labels())
            for child in batches] == [2, 2, 1]
    assert batches[2].ctime > max(child.mtime for child in batches[:2])  # at most two at once
    labels = results['labels']
    assert labels.n_structures == 5 and labels.base.attributes.get('subset') == 'test'
    assert labels.base.attributes.get('n_failed') == 0
    labelled = labels.get_labelled_set()
    assert list(labelled.structure_uuid) == [structures[key].uuid for key in sorted(structures)]
    direct = single_point_function(CalculatorSpec())(structures['s3'].get_ase())
    assert labelled.energy[3] == pytest.approx(direct['energy'], abs=1e-6)
    np.testing.assert_allclose(labelled.forces[30:40], direct['forces'], atol=1e-6)


def potential_builder(script_code, dataset: DatasetData, overrides: dict, **inputs):
    """The potential's stage on a tiny MACE (8 channels, max_L 0, 2 epochs, float64) from 2x1x1 Ag3S(I,Br) start
    cells, with the demo protocol and ``overrides`` (md_check, refine)."""
    from aiida_capthermo.workflows.mlip_potential import MlipPotentialWorkChain

    prototype = {'a': 'Ag', 'b': 'S', 'host': 'I', 'guest': 'Br', 'a_host': 4.8, 'a_guest': 4.6}
    return MlipPotentialWorkChain.get_builder_from_protocol(
        script_code('mace_run_train', 'capthermo.mace_finetune'), protocol='demo',
        mlip_code=script_code('capthermo-mlip', 'capthermo.mlip_md'),
        evaluate_code=script_code('capthermo-mace', 'capthermo.mace_evaluate'),
        overrides={'hyperparameters': {'max_num_epochs': 2, 'num_channels': 8, 'max_L': 0, 'r_max': 4.0,
                                       'default_dtype': 'float64', 'valid_fraction': 0.1},
                   'options': {}, **overrides},
        dataset=dataset, prototype=orm.Dict(prototype), supercell=orm.List([2, 1, 1]), **inputs)


def test_mlip_potential_trains_checks_and_evaluates(script_code):
    """The potential's stage alone on Lennard-Jones labels: one held-out structure validates the potential; the
    evaluation job's errors on it are the training job's own validation errors (two independent calculations of the
    same quantity); the MD check reports a verdict for every replica of the final potential."""

    from mlip_helpers import lj_labelled_cells

    dataset = DatasetData.from_labelled_set(lj_labelled_cells(12, rattle=0.1), method='LJ').store()
    builder = potential_builder(script_code, dataset, {'md_check': {'compositions': [0.5], 'temperatures': [300.0],
                                                                    'steps': 40, 'threads': 1}})
    del builder.refine  # refinement labels MD frames with a teacher: the study's test runs it
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert results['validation_set'].n_structures == 1 and results['training_set'].n_structures == 11
    assert results['model'].creator.inputs.valid.uuid == results['validation_set'].uuid
    evaluation = results['evaluation'].get_dict()
    assert evaluation['forces']['mae'] == pytest.approx(results['metrics']['validation']['mae_f'], rel=0.02,
                                                        abs=2e-4)
    check = results['md_check'].get_dict()
    assert check['n_replicas'] == 1 and check['replicas'][0]['x'] == 0.5 and check['replicas'][0]['steps'] <= 40
    assert results['parity_plot'].get_content('rb')[:4] == b'\x89PNG'


def _xtb_labelled_cells(n: int) -> DatasetData:
    """The small LJ-test cells labelled in this process by the engine that labels the MD frames (tblite GFN1-xTB
    without the halogen-bond term): the refinement merges sets of one method only."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.ml.labelling import CalculatorSpec, single_point_function

    from mlip_helpers import lj_labelled_cells

    label = single_point_function(CalculatorSpec())
    cells = lj_labelled_cells(n, rattle=0.1)
    atoms_list, gaps = [], []
    for index in range(n):
        atoms = cells.atoms(index, with_labels=False)
        result = label(atoms)
        atoms.calc = SinglePointCalculator(atoms, energy=result['energy'], forces=result['forces'],
                                           stress=result['stress'])
        atoms_list.append(atoms)
        gaps.append(result['gap'])
    return DatasetData.from_labelled_set(LabelledSet.from_atoms_list(atoms_list, gap=np.array(gaps)),
                                         engine='local', **CalculatorSpec().describe()).store()


def _mace_labels(model, dataset: DatasetData) -> tuple[float, np.ndarray]:
    """Force MAE (eV/Å, over components) of ``model`` on ``dataset`` and its energies (eV) of the structures, by
    MACE's own ASE calculator."""
    import tempfile

    from mace.calculators import MACECalculator

    labelled = dataset.get_labelled_set()
    with tempfile.TemporaryDirectory() as folder:
        calc = MACECalculator(model_paths=str(model.export_files(folder)[model.main_file]), device='cpu',
                              default_dtype='float64')
        errors, energies = [], []
        for index in range(len(labelled)):
            atoms = labelled.atoms(index, with_labels=False)
            atoms.calc = calc
            errors.append(np.abs(atoms.get_forces() - labelled.forces[labelled.offsets[index]:
                                                                      labelled.offsets[index + 1]]).ravel())
            energies.append(atoms.get_potential_energy())
    return float(np.mean(np.concatenate(errors))), np.array(energies)


def test_mlip_potential_active_learning_learning_curve(script_code):
    """Refinement as active learning: each round the current potential is evaluated on freshly labelled frames of its
    own MD before it trains on them. A huge tolerance stops after round 0 (converged, no retraining); a tiny one runs
    both rounds with one retraining in between, and each row of the learning curve is the force MAE of that round's
    potential on that round's frames, recomputed here with MACE's ASE calculator; the frames were not in the set that
    potential trained on. The energy criterion keeps refining a potential whose forces are within their tolerance:
    with sampling_tolerance 1e-6 both rounds run, and each round's beta * std(U_engine - U_MLIP) is recomputed from
    the engine's labels and MACE's own energies. With train_on_last the last round's frames are trained on too."""

    dataset = _xtb_labelled_cells(12)
    refine = {'rounds': 2, 'compositions': [0.5], 'temperatures': [300.0], 'steps': 40, 'frame_stride': 20,
              'max_frame_force': 1000.0, 'finetune_epochs': 1, 'threads': 1, 'dtype': 'float64'}
    builder = potential_builder(script_code, dataset, {'refine': {**refine, 'force_tolerance': 100.0}},
                                engine={'code': script_code('capthermo-label', 'capthermo.label')})

    def called(node, label):
        return [link.node for link in node.base.links.get_outgoing().all() if link.link_label.startswith(label)]

    def trainings(node):
        return sorted((n for n in node.called if n.process_label == 'FinetuneMaceWorkChain'), key=lambda n: n.ctime)

    # (a) converged after round 0: one evaluation on fresh frames, no retraining, the first potential is final.
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    curve = results['learning_curve'].get_dict()
    assert curve['converged'] is True and curve['force_tolerance'] == 100.0 and len(curve['rounds']) == 1
    assert len(trainings(node)) == 1
    assert len(called(node, 'refine0_evaluation')) == 1 and not called(node, 'refine1')
    first = trainings(node)[0]
    assert results['model'].uuid == first.outputs.model.uuid == curve['rounds'][0]['model_uuid']
    assert results['training_set'].uuid == first.inputs.mace.train.uuid  # the frames were not trained on
    assert results['md_frames'].n_structures == curve['rounds'][0]['n_frames'] > 0
    reports = [log.message.split(']: ', 1)[-1] for log in orm.Log.collection.get_logs_for(node)]
    assert any(m.startswith('refinement round 0: force MAE') and m.endswith('(tolerance 100.0)') for m in reports)
    assert any(m.startswith('refinement converged in round 0') for m in reports)

    # (b) not converged (the forces are within 100 eV/Å, their energies' spread is not within 1e-6 kT): two rounds,
    # two evaluations, one retraining between them.
    builder.refine = orm.Dict({**refine, 'force_tolerance': 100.0, 'sampling_tolerance': 1e-6,
                               'finetune_hyperparameters': {'energy_weight': 1000.0}})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    curve = results['learning_curve'].get_dict()
    rows = curve['rounds']
    assert curve['converged'] is False and len(rows) == 2 and [row['round'] for row in rows] == [0, 1]
    assert curve['sampling_tolerance'] == 1e-6 and [row['converged'] for row in rows] == [False, False]
    trained_in = trainings(node)
    assert len(trained_in) == 2
    # the retraining continues from the first potential with the fine-tuning hyper-parameters, the first trained
    # with the stage's own
    first_hyper, then_hyper = (t.inputs.mace.hyperparameters.get_dict() for t in trained_in)
    assert then_hyper == {**first_hyper, 'energy_weight': 1000.0, 'max_num_epochs': 1}
    assert first_hyper.get('energy_weight', 1.0) == 1.0
    assert trained_in[1].inputs.mace.foundation_model.uuid == trained_in[0].outputs.model.uuid
    assert [n.process_label for n in called(node, 'refine')].count('MaceEvaluateCalcJob') == 2
    models = [training.outputs.model for training in trained_in]
    assert [row['model_uuid'] for row in rows] == [model.uuid for model in models]
    assert results['model'].uuid == models[1].uuid and rows[0]['model_uuid'] != rows[1]['model_uuid']
    frames = []
    for k, (row, model, training) in enumerate(zip(rows, models, trained_in)):
        evaluation = called(node, f'refine{k}_evaluation')[0]
        round_frames = evaluation.inputs.dataset
        frames.append(round_frames)
        assert evaluation.inputs.model.uuid == model.uuid
        assert row['n_frames'] == round_frames.n_structures > 0
        assert row['n_training'] == training.inputs.mace.train.n_structures
        force_mae, energies = _mace_labels(model, round_frames)
        assert row['force_mae'] == pytest.approx(force_mae, rel=1e-4) and force_mae <= 100.0
        fresh = round_frames.get_labelled_set()
        [point] = row['sampling']
        assert (point['x'], point['temperature'], point['n']) == (0.5, 300.0, len(fresh))
        assert point['beta_sigma'] == pytest.approx(np.std(fresh.energy - energies, ddof=1) / (KB_EV * 300.0),
                                                    rel=1e-3) and row['max_beta_sigma'] == point['beta_sigma']
        # out of sample: none of the round's frames is in the set its potential trained on
        trained = training.inputs.mace.train.get_labelled_set()
        assert all(fresh.structure_uuid)
        assert not set(fresh.structure_uuid) & set(trained.structure_uuid)
        assert not any(fresh.n_atoms[j] == trained.n_atoms[i] and np.allclose(
            fresh.positions[fresh.offsets[j]:fresh.offsets[j + 1]],
            trained.positions[trained.offsets[i]:trained.offsets[i + 1]], atol=1e-6)
            for j in range(len(fresh)) for i in range(len(trained)))
    # the retrained potential learned round 0's frames; the final training set lacks round 1's
    assert set(frames[0].get_labelled_set().structure_uuid) <= set(
        trained_in[1].inputs.mace.train.get_labelled_set().structure_uuid)
    assert results['training_set'].uuid == trained_in[1].inputs.mace.train.uuid
    assert results['training_set'].n_structures == rows[0]['n_training'] + rows[0]['n_frames']
    reports = [log.message.split(']: ', 1)[-1] for log in orm.Log.collection.get_logs_for(node)]
    assert sum(m.startswith('refinement round ') and 'fresh MD frames (tolerance 100.0)' in m for m in reports) == 2
    assert sum(m.startswith('refinement round ') and 'beta * std(U_engine - U_MLIP) per (x, T): x 0.5 300 K' in m
               and m.endswith('(tolerance 1e-06)') for m in reports) == 2
    assert any(m.startswith('WARNING: refinement did not converge in 2 round(s)') for m in reports)
    assert list(results['md_frames'].get_labelled_set().structure_uuid) == [
        uuid for dataset in frames for uuid in dataset.get_labelled_set().structure_uuid]
    assert curve['final'] == {'model_uuid': models[1].uuid, 'n_training': results['training_set'].n_structures,
                              'trained_on_last_round': False}

    # (c) train_on_last: one unconverged round, then a retraining with its frames; the final potential is not the
    # one on the learning curve, and its training set holds every labelled frame.
    builder.refine = orm.Dict({**refine, 'rounds': 1, 'force_tolerance': 100.0, 'sampling_tolerance': 1e-6,
                               'train_on_last': True})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    curve = results['learning_curve'].get_dict()
    [row] = curve['rounds']
    first, final = trainings(node)
    assert curve['converged'] is False and row['model_uuid'] == first.outputs.model.uuid
    assert final.inputs.mace.foundation_model.uuid == first.outputs.model.uuid
    assert results['model'].uuid == final.outputs.model.uuid != row['model_uuid']
    assert results['training_set'].uuid == final.inputs.mace.train.uuid
    assert results['training_set'].n_structures == row['n_training'] + row['n_frames']
    fresh = called(node, 'refine0_evaluation')[0].inputs.dataset.get_labelled_set()
    assert set(fresh.structure_uuid) <= set(results['training_set'].get_labelled_set().structure_uuid)
    assert not called(node, 'refine1')
    assert curve['final'] == {'model_uuid': results['model'].uuid, 'n_training': results['training_set'].n_structures,
                              'trained_on_last_round': True}
    reports = [log.message.split(']: ', 1)[-1] for log in orm.Log.collection.get_logs_for(node)]
    assert any(m.startswith(f'potential {results["model"].pk} is final: trained also on round 0\'s frames')
               for m in reports)
    # refine without the evaluation code is refused before anything runs
    del builder.evaluate_code
    with pytest.raises(ValueError, match='it needs evaluate_code'):
        engine.run(builder)


def test_ground_state_warning_from_the_boltzmann_weights():
    """The study warns when the lowest configuration carries under 90 % of the Boltzmann weight at a temperature of
    the screen (its weight computed here by hand: g_i exp(-40 dE_i / kT) for a 40-atom cell), and not when it
    dominates."""
    import numpy as np

    from aiida_capthermo.workflows.study import ground_state_warning

    def ranking(margin_per_atom):
        weights = {t: np.array([1.0, 1.0]) * np.exp(-40 * np.array([0.0, margin_per_atom]) / (8.617333262e-5 * t))
                   for t in (300.0, 600.0)}
        return {'keys': ['c001', 'c000'], 'lowest': 'c001', 'relative_energy_per_atom': [0.0, margin_per_atom],
                'boltzmann': {f'T{t:.0f}': {'probability_lowest': float(w[0] / w.sum())} for t, w in weights.items()}}

    close = ground_state_warning('x_0p500', ranking(0.0005))  # 0.5 meV/atom: 68 % at 300 K
    assert close.startswith('WARNING: x_0p500: the lowest configuration c001 is 0.5 meV/atom below the next')
    assert '68 % at 300 K, 60 % at 600 K' in close
    assert ground_state_warning('x_0p500', ranking(0.01)) is None  # 10 meV/atom: over 99.9 % at 600 K


def test_refinement_round_converges_on_forces_and_on_every_points_energy_spread():
    """A round's potential is final when its force MAE is within the tolerance and, with a sampling tolerance, every
    (x, T) of its fresh frames has beta * std(dU) within it: one point outside, or one that cannot show it (a single
    frame), keeps the loop going; without a force tolerance there is no verdict."""
    from aiida_capthermo.workflows.mlip_potential import round_converged

    points = [{'x': 0.0, 'temperature': 300.0, 'beta_sigma': 0.6}, {'x': 1.0, 'temperature': 600.0, 'beta_sigma': 3.2}]
    assert round_converged(0.05, points, 0.10, None) is True
    assert round_converged(0.12, points, 0.10, None) is False
    assert round_converged(0.05, points, 0.10, 1.0) is False
    assert round_converged(0.05, points, 0.10, 4.0) is True
    assert round_converged(0.12, points, 0.10, 4.0) is False
    single = {'x': 0.5, 'temperature': 300.0, 'beta_sigma': None}
    assert round_converged(0.05, [*points, single], 0.10, 4.0) is False
    assert round_converged(0.05, [], 0.10, 4.0) is False
    assert round_converged(0.05, points, None, 1.0) is None
