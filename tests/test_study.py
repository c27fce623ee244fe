"""CapthermoStudyWorkChain run for real on localhost through the daemon of the test profile: dataset -> MACE from
scratch (refined with labelled MD frames, then checked by MD) and two-stage GNN -> screen -> thermal gaps and
mode coupling -> Table I, figures, `capthermo report`, archive round trip."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from aiida import engine, orm
from aiida.common.links import LinkType

from aiida_capthermo.workflows.study import CapthermoStudyWorkChain

BIN = pathlib.Path(sys.executable).parent


def study_codes(computer, prefix: str) -> list:
    """The label, GNN, MACE-training, MLIP and MACE-evaluation codes of the study under labels of their own
    (``prefix``-name): each test stores its codes in the one session profile."""
    return [orm.InstalledCode(computer=computer, filepath_executable=str(BIN / name), label=f'{prefix}-{name}',
                              default_calc_job_plugin=plugin).store()
            for name, plugin in (('capthermo-label', 'capthermo.label'), ('capthermo-gnn', 'capthermo.gnn_train'),
                                 ('mace_run_train', 'capthermo.mace_finetune'), ('capthermo-mlip', 'capthermo.mlip_md'),
                                 ('capthermo-mace', 'capthermo.mace_evaluate'))]


@pytest.fixture(scope='module')
def study(localhost_session, daemon_client):
    """The demo-protocol study, shrunk, submitted to the daemon as the README's demo does: its node, codes and
    overrides, shared by the tests that check it and the one that reruns it as an ensemble."""
    import time
    from types import SimpleNamespace

    *codes, mlip, evaluate = study_codes(localhost_session, 'study')
    overrides = {'dataset': {'temperatures': [300.0, 600.0], 'structures_per_temperature': 3,
                               'n_equilibrium': 1, 'high_structures': 3},
                   'gnn': {'hyperparameters': {'max_epochs': 5}, 'finetune_hyperparameters': {'max_epochs': 3}},
                   'mace': {'hyperparameters': {'max_num_epochs': 1, 'num_channels': 8, 'max_L': 0},
                            'refine': {'compositions': [0.5], 'temperatures': [300.0], 'steps': 40,
                                       'frame_stride': 20, 'max_frame_force': 1000.0, 'finetune_epochs': 1,
                                       'rounds': 2, 'force_tolerance': 0.001},
                            'md_check': {'compositions': [0.25, 0.75], 'temperatures': [300.0], 'steps': 40}},
                   'screen': {'protocol': 'demo', 'compositions': [0.0, 0.5], 'max_configurations': 2,
                              'parameters': {'fmax': 0.05, 'max_steps': 100, 'device': 'cpu'},
                              'phonons': {'steps': 200, 'equilibration_steps': 50, 'sample_stride': 2,
                                          'device': 'cpu', 'dtype': 'float32', 'threads': 1},
                              'temperatures': [100.0]},
                   'thermal': {'protocol': 'demo', 'temperatures': [0.0, 300.0],
                               'md': {'replicas': 2, 'steps': 300, 'stride': 5, 'friction': 0.01, 'device': 'cpu',
                                      'dtype': 'float32', 'threads': 1},
                               'relax': {'fmax': 0.05, 'max_steps': 100, 'device': 'cpu'},
                               'coupling': {'structures': ['x_0p500'], 'temperatures': [300.0], 'device': 'cpu'}}}
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(*codes, protocol='demo', overrides=overrides,
                                                                mlip_code=mlip, evaluate_code=evaluate)
    assert builder.gnn.hyperparameters['max_epochs'] == 5 and builder.gnn.hyperparameters['batch_size'] == 8
    assert builder.dataset.structures_per_temperature.value == 3
    if not daemon_client.is_daemon_running:
        daemon_client.start_daemon()
    node, deadline = engine.submit(builder), time.monotonic() + 1200
    while not node.is_terminated:
        assert time.monotonic() < deadline, f'the study <{node.pk}> did not finish within 1200 s'
        time.sleep(1.0)
    return SimpleNamespace(node=node, codes=codes, mlip=mlip, evaluate=evaluate, overrides=overrides)


# the module's study runs in this test's set-up: above the default timeout on CI
@pytest.mark.timeout(1800)
def test_study_end_to_end(study, tmp_path):
    node, codes, mlip, overrides = study.node, study.codes, study.mlip, study.overrides
    failed = [(n.process_label, n.exception) for n in node.called_descendants if n.is_excepted]
    assert node.is_finished_ok, (node.exit_message, failed)
    results = node.outputs
    low = results['dataset']['low']
    assert low.n_structures == 6
    # The second GNN stage starts from the first: parent link in the graph, hash and weights differ.
    model_low, model = results['gnn']['model_low'], results['gnn']['model']
    high_job = model.creator
    assert high_job.inputs.parent_model.uuid == model_low.uuid
    assert high_job.inputs.datasets.high.uuid == results['dataset']['high'].uuid
    assert model.sha256 != model_low.sha256
    # The GNN learnt from the potential's MD frames: their low gaps in the first stage, their teacher gaps (all four
    # frames: the budget of 12 is larger) in the second.
    assert model_low.creator.inputs.datasets.md.uuid == results['mace']['md_frames'].uuid
    assert high_job.inputs.datasets.md.uuid == results['gnn']['md_high'].uuid
    assert results['gnn']['md_high'].n_structures == results['mace']['md_frames'].n_structures == 4
    assert np.all(np.isfinite(results['gnn']['md_high'].get_labelled_set().gap))
    # Active learning: two rounds (tolerance out of reach), each potential measured on frames it never saw.
    curve = results['mace']['learning_curve'].get_dict()
    assert len(curve['rounds']) == 2 and curve['converged'] is False
    assert curve['rounds'][1]['model_uuid'] == results['mace']['model'].uuid
    assert all(row['n_frames'] == 2 and row['force_mae'] > 0 for row in curve['rounds'])
    # The final MACE potential was trained on the low set plus the labelled MD frames of the first potential,
    # which was trained on the low set alone; every link of that chain is in the graph.
    final_job = results['mace']['model'].creator
    assert final_job.caller.process_label == 'FinetuneMaceWorkChain'  # the restart wrapper ran it
    training_set, validation_set = results['mace']['training_set'], results['mace']['validation_set']
    assert final_job.inputs.train.uuid == training_set.uuid and final_job.inputs.valid.uuid == validation_set.uuid
    # One of the six low structures is held out (valid_fraction 0.1), the rest plus two frames (steps 20 and 40
    # of the one refinement replica) train the final potential.
    assert validation_set.n_structures == 1 and training_set.n_structures == 5 + 2
    origins = training_set.base.attributes.get('origins')
    assert origins['md'] == 2 and sum(origins.values()) == 7
    assert not set(validation_set.get_labelled_set().structure_uuid) & set(
        training_set.get_labelled_set().structure_uuid)
    assert training_set.base.attributes.get('method') == low.base.attributes.get('method') == 'GFN1-xTB-noXB'
    merge = training_set.creator
    assert merge.process_label == 'merge_datasets'
    sources = {link.link_label: link.node for link in merge.base.links.get_incoming().all()}
    split = sources['training_set'].creator
    assert split.process_label == 'split_dataset' and split.inputs.dataset.uuid == low.uuid
    assert validation_set.creator.uuid == split.uuid
    frames_labels = sources['md_frames']
    assert frames_labels.creator.process_label == 'assemble_dataset'  # BatchLabelWorkChain joins its batches
    batches = frames_labels.creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC,
                                                             link_label_filter='batch_%').all_nodes()
    assert len(batches) == 2  # two frames, one job each: as many jobs at once as the dataset runs
    label_job = batches[0].creator
    assert label_job.process_label == 'LabelCalcJob'  # every frame labelled on the first attempt
    frame_structure = next(iter(label_job.inputs.structures.values()))
    md_frames = frame_structure.creator.inputs.frames
    md_job = md_frames.creator
    assert md_job.process_label == 'MlipMdCalcJob'
    first_model = md_job.inputs.model
    assert first_model.uuid != results['mace']['model'].uuid
    assert first_model.creator.inputs.train.uuid == sources['training_set'].uuid
    assert first_model.creator.inputs.valid.uuid == validation_set.uuid
    # The refined potential continued from the first (finetune_epochs) instead of starting from scratch.
    assert final_job.inputs.foundation_model.uuid == first_model.uuid
    assert final_job.inputs.hyperparameters['max_num_epochs'] == 1
    # The final potential evaluated on the held-out structure: errors equal to the training job's own validation.
    evaluation = results['mace']['evaluation'].get_dict()
    assert evaluation['n_structures'] == 1 and evaluation['forces']['mae'] > 0
    assert evaluation['forces']['mae'] == pytest.approx(results['mace']['metrics']['validation']['mae_f'], rel=0.02,
                                                        abs=2e-4)
    assert results['mace']['evaluation'].creator.inputs.model.uuid == results['mace']['model'].uuid
    assert results['mace']['evaluation'].creator.inputs.dataset.uuid == validation_set.uuid
    # Labels of the frames are the low engine's: the same method, computed on the frames' own geometry.
    labelled_frames = frames_labels.get_labelled_set()
    assert np.all(np.isfinite(labelled_frames.energy)) and np.all(np.isfinite(labelled_frames.forces))
    # The check ran the final potential at both compositions and reports a verdict per replica.
    check = results['mace']['md_check'].get_dict()
    assert check['n_replicas'] == 2 and sorted(r['x'] for r in check['replicas']) == [0.25, 0.75]
    check_results = results['mace']['md_check'].creator.base.links.get_incoming(
        link_type=LinkType.INPUT_CALC).all_nodes()
    assert len(check_results) == 2  # one MD job per composition
    assert all(node.creator.inputs.model.uuid == results['mace']['model'].uuid for node in check_results)
    assert all(r['steps'] == 40 and r['temperature'] == 300.0 for r in check['replicas'])
    assert np.isfinite(results['mace']['metrics']['validation']['mae_f'])
    check_screen_thermal_and_report(node, results, tmp_path)
    check_rerun_from_given_nodes(node, results, codes, mlip, overrides)


def check_questions_answered(node, results):
    """`capthermo gap`, `models`, `datasets` and `predict` answer from the stored study; the in-process predictions
    equal the jobs' own."""
    from click.testing import CliRunner

    from aiida_capthermo.cli.main import cli

    runner = CliRunner()
    gap = results['gaps']['x_0p500_T300'].get_dict()  # Table I's: corrected by the teacher
    result = runner.invoke(cli, ['gap', '--x', '0.5', '--T', '300', '--study', str(node.pk)])
    assert result.exit_code == 0, result.output
    assert f'{gap["gap"]:.4f} ± {gap["stderr"]:.4f} eV' in result.output
    assert f'statistical {gap["stderr_statistical"]:.4f} eV, model {gap["stderr_model"]:.4f} eV' in result.output
    assert f'potential sampling {gap["stderr_sampling"]:.4f} eV' in result.output  # the potential's term
    zero = results['gaps']['x_0p500_T0'].get_dict()  # Eg(0) with its structure error (validation.relax)
    result = runner.invoke(cli, ['gap', '--x', '0.5', '--T', '0', '--study', str(node.pk)])
    assert result.exit_code == 0, result.output
    assert (f'potential structure {zero["stderr_sampling"]:.4f} eV (the teacher\'s gap at the low engine\'s minimum '
            f'differs by {zero["sampling_shift"]:+.4f} eV)') in result.output
    for expected in (f'gnn model ModelData<{results["gnn"]["model"].pk}>',
                     f'mace model ModelData<{results["mace"]["model"].pk}>', 'parent force constants',
                     'dataset stage: DatasetData x', f'{results["dataset"]["low"].pk} '
                     f'({results["dataset"]["low"].n_structures})', 'dataset stage: LabelCalcJob',
                     'mace stage: FinetuneMaceCalcJob', 'gnn stage: GnnTrainCalcJob',
                     'thermal stage: MlipThermalCalcJob', 'thermal stage: GnnPredictCalcJob'):
        assert expected in result.output, (expected, result.output)
    # the configuration the gap belongs to: the screen's lowest class of x = 1/2, with its rank and weight
    ranking = results['screen']['compositions']['x_0p500']['ranking'].get_dict()
    lowest = results['screen']['compositions']['x_0p500']['lowest']
    assert (f'configuration: x_0p500, StructureData<{lowest.pk}> {lowest.get_formula()}, the screen\'s class '
            f'{ranking["lowest"]} (rank 1 of {len(ranking["keys"])} relaxed, {ranking["multiplicity"][0]} '
            'arrangements') in result.output, result.output
    missing = runner.invoke(cli, ['gap', '--x', '0.25', '--T', '300', '--study', str(node.pk)])
    assert missing.exit_code == 1 and '(0.5, 300 K)' in missing.output, missing.output  # what exists is listed
    curve = runner.invoke(cli, ['gap', '--x', '0.5', '--study', node.uuid, '--json'])  # no --T: the Eg(T) curve
    assert curve.exit_code == 0, curve.output
    rows = json.loads(curve.output)
    assert [row['temperature'] for row in rows] == [0.0, 300.0] and rows[1]['gap'] == pytest.approx(gap['gap'])
    assert rows[1]['units']['gap'] == 'eV' and rows[1]['units']['temperature'] == 'K' and rows[1]['depends_on']
    assert rows[1]['configuration']['configuration'] == ranking['lowest'] and rows[1]['configuration']['rank'] == 1
    result = runner.invoke(cli, ['models'])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert 'gnn-low' in rows[str(results['gnn']['model_low'].pk)]
    assert 'gnn-high' in rows[str(results['gnn']['model'].pk)]
    assert 'mace-finetuned' in rows[str(results['mace']['model'].pk)]  # continued from the first potential
    assert f'{results["dataset"]["high"].pk}:high' in rows[str(results['gnn']['model'].pk)]
    result = runner.invoke(cli, ['datasets'])
    listed = {int(line.split()[0]) for line in result.output.splitlines()[1:]}
    assert {results['dataset']['low'].pk, results['dataset']['high'].pk, results['mace']['training_set'].pk} <= listed
    label_sets = set(orm.QueryBuilder().append(orm.CalcJobNode, filters={'attributes.process_label': 'LabelCalcJob'},
                                               tag='job').append(orm.Data, with_incoming='job', project='id')
                     .all(flat=True))
    assert not listed & set(label_sets)  # the per-batch label sets are not "datasets"
    # In-process predictions: the GNN's Eg(0) of the relaxed x = 1/2 cell as the thermal stage's GNN job gave it,
    # the potential's energy of the screen's ground state as the screen's relaxation job gave it.
    relaxed = results['thermal']['relaxed']['x_0p500']
    # the GNN's (Table I's Eg(0) is the teacher's); the thermal stage's gap is the ensemble's mean, the model's own
    # prediction its first member's
    thermal_eg0 = results['thermal']['gaps']['x_0p500_T0']
    eg0 = thermal_eg0['gap_members'][0]
    assert thermal_eg0['gap'] == pytest.approx(np.mean(thermal_eg0['gap_members']), abs=1e-9)
    result = runner.invoke(cli, ['predict', str(results['gnn']['model'].pk), str(relaxed.pk)])
    assert result.exit_code == 0 and f'gap {eg0:.4f} eV' in result.output, (eg0, result.output)
    lowest = results['screen']['compositions']['x_0p500']['lowest']
    ranking = results['screen']['compositions']['x_0p500']['ranking'].get_dict()
    energy = results['mace']['model'].predict([lowest])[0]['energy_per_atom']
    assert energy == pytest.approx(ranking['potential_energy_per_atom'][0], abs=2e-4), ranking


def check_validation(node, results):
    """The validation stage labelled frames of every thermal MD job with the teacher: one row per (x, T > 0) of
    Table I, and the GNN bias it reports is the mean of teacher minus GNN over the frames it labelled."""
    validation = node.base.links.get_outgoing(link_label_filter='validation').one().node
    assert validation.inputs.gnn_model.uuid == results['gnn']['model'].uuid
    members = {key: model.uuid for key, model in results['gnn']['members'].items()}
    assert len(members) == 3  # the demo's ensemble of four GNNs: the model and three members
    assert {key: model.uuid for key, model in validation.inputs.gnn_members.items()} == members
    assert validation.inputs.mace_model.uuid == results['mace']['model'].uuid
    md_jobs = {link.link_label: link.node for link in
               node.base.links.get_outgoing(link_label_filter='thermal').one().node.base.links.get_outgoing(
                   link_type=LinkType.CALL_CALC, link_label_filter='md_%').all()}
    assert {key: frames.uuid for key, frames in validation.inputs.frames.items()} == {
        key: job.outputs.frames.uuid for key, job in md_jobs.items()}
    rows = results['validation']['validation'].get_dict()['rows']
    assert sorted((row['x'], row['temperature']) for row in rows) == [(0.0, 0.0), (0.0, 300.0), (0.5, 0.0),
                                                                      (0.5, 300.0)]
    for row in rows:
        assert row['n_frames'] >= (2 if row['temperature'] else 1) and np.isfinite(row['gnn_bias'])
        assert row['force_mae'] > 0
    from aiida_capthermo.core.error_budget import student_factor

    # Table I: the GNN's average plus the bias the teacher measured; the error in quadrature: statistical, the GNN's
    # (Student t of its bias: over the frames, or over the replicas where their mean biases spread more) and, at
    # T > 0, the potential's sampling term from the same frames.
    checks = {(row['x'], row['temperature']): row for row in rows}
    for key, gap in results['gaps'].items():
        gap, thermal = gap.get_dict(), results['thermal']['gaps'][key].get_dict()
        check = checks[(gap['x'], gap['temperature'])]
        assert gap['validated'] and gap['gap'] == pytest.approx(thermal['gap'] + check['gnn_bias'], abs=1e-12)
        if gap['temperature']:
            larger = max(check['gnn_bias_stderr_frames'], check['gnn_bias_stderr_replicas'] or 0.0)
            assert check['gnn_bias_stderr'] == larger and check['gnn_bias_n'] == (
                check['n_gap'] if larger == check['gnn_bias_stderr_frames'] else check['n_bias_replicas'])
        model = check['gnn_bias_stderr'] * student_factor(check['gnn_bias_n']) if gap['temperature'] else 0.0
        sampling = 0.0
        if gap['temperature']:
            sampling = np.hypot(check['sampling_shift'],
                                check['sampling_shift_stderr'] * student_factor(check['sampling_shift_n']))
            assert check['sampling_shift_n'] <= check['n_sampling']  # replicas or frames
            if check['n_bias_replicas'] < 3:  # fewer than three replicas: the frames, taken as independent
                assert check['sampling_shift_n'] == check['n_sampling']
            assert gap['stderr_sampling'] == pytest.approx(sampling, rel=1e-12)
            assert gap['sampling_perturbative'] == (check['sampling_beta_sigma'] <= 1.0)
        else:  # Eg(0)'s structure error: the teacher at the low engine's own minimum (the demo's validation.relax)
            sampling = abs(check['engine_relaxed_gap'] - check['teacher_gap'])
            assert check['sampling_shift'] == pytest.approx(check['engine_relaxed_gap'] - check['teacher_gap'],
                                                            abs=1e-12)
            assert gap['stderr_sampling'] == pytest.approx(sampling, abs=1e-12) and gap['sampling_perturbative']
            assert check['engine_relaxed_displacement'] >= 0 and check['engine_relaxation_energy'] <= 1e-9
        # every GNN of the ensemble corrected by its own bias on the same frames; their spread is a term
        corrected = np.array(thermal['gap_members']) + np.array(check['gnn_bias_members'])
        assert thermal['gap'] == pytest.approx(np.mean(thermal['gap_members']), abs=1e-9)
        spread = np.std(corrected, ddof=1) if gap['temperature'] else 0.0
        assert gap['stderr_members'] == pytest.approx(spread, abs=1e-9)
        assert gap['stderr'] == pytest.approx(np.sqrt(thermal['stderr']**2 + model**2 + sampling**2 + spread**2),
                                              rel=1e-9)
        if gap['temperature'] == 0:
            assert gap['gap'] == pytest.approx(check['teacher_gap'], abs=1e-6)  # GNN in float32
    # the study's engines as the checks in scripts/ label with them: the teacher's gap of the relaxed x = 0 cell,
    # computed here directly, is the validated Eg(0) of Table I
    from aiida_capthermo.ml.labelling import single_point_function
    from aiida_capthermo.workflows.study import study_engines

    engines = study_engines(node)
    assert (engines['low'].method, engines['teacher'].method) == ('GFN1-xTB', 'IPEA1-xTB')
    relaxed = next(s for s in validation.inputs.relaxed.values() if s.base.attributes.get('capthermo_x') == 0.0)
    eg0 = next(gap['gap'] for gap in (g.get_dict() for g in results['gaps'].values())
               if gap['x'] == 0.0 and gap['temperature'] == 0.0)
    assert single_point_function(engines['teacher'])(relaxed.get_ase())['gap'] == pytest.approx(eg0, abs=1e-6)


def check_rerun_from_given_nodes(node, results, codes, mlip, overrides):
    """A second study from the first one's models and ground states runs the thermal stage alone; with caching on,
    its jobs are the first study's (nothing recomputed) and its gaps are identical."""
    from aiida.manage.caching import enable_caching

    builder = CapthermoStudyWorkChain.get_builder_from_protocol(*codes, protocol='demo', overrides=overrides,
                                                                mlip_code=mlip)
    del builder['screen']
    del builder['validation']
    compositions = results['screen']['compositions']
    builder.given = {'mace_model': results['mace']['model'], 'gnn_model': results['gnn']['model'],
                     'gnn_members': dict(results['gnn']['members']),
                     'structures': {key: compositions[key]['lowest'] for key in compositions}}
    with enable_caching():
        outputs, rerun = engine.run_get_node(builder)
    assert rerun.is_finished_ok, rerun.exit_message
    called = [n for n in rerun.called_descendants if isinstance(n, orm.CalcJobNode)]
    assert {n.process_label for n in called} == {'MlipScreenCalcJob', 'MlipThermalCalcJob', 'GnnPredictCalcJob',
                                                 'MlipModesCalcJob'}  # no dataset, no training, no screen
    assert all(n.base.caching.is_created_from_cache for n in called), [n.process_label for n in called
                                                                       if not n.base.caching.is_created_from_cache]
    assert outputs['thermal']['table']['rows'] == results['thermal']['table']['rows']


@pytest.mark.timeout(1800)  # the module's study, when this test runs alone, and a second one
def test_study_ensemble_from_given_models(study, submit_and_await):
    """The study with `ensemble`: every composition is its screen's two lowest configurations (x = 0 has one),
    weighted by their Boltzmann probabilities at 600 K from the screen's own energies and multiplicities; the thermal
    stage and the validation run each configuration apart, and Table I's x = 1/2 is their weighted average."""
    import copy

    from aiida_capthermo.core.solid_solution import class_probabilities

    assert study.node.is_finished_ok, study.node.exit_message
    results, codes, mlip, evaluate = study.node.outputs, study.codes, study.mlip, study.evaluate
    overrides = copy.deepcopy(study.overrides)
    overrides['screen']['keep'] = 2
    overrides['screen']['rerank'] = 0  # the potential's weights, whose error the engine's 0 K energies give
    overrides['ensemble'] = {'configurations': 2, 'temperature': 600.0}
    overrides['validation'] = {'frames_per_point': 2}
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(*codes, protocol='demo', overrides=overrides,
                                                                mlip_code=mlip, evaluate_code=evaluate)
    builder.given = {'mace_model': results['mace']['model'], 'gnn_model': results['gnn']['model'],
                     'gnn_members': dict(results['gnn']['members'])}
    with pytest.raises(ValueError, match='skip the dataset stage, and its relaxation with it'):
        engine.run(builder)  # the protocol relaxes; without the dataset stage it needs the relaxed end members
    builder.dataset.parents = dict(results['dataset']['parents'])
    ensemble = submit_and_await(builder, timeout=900)  # through the daemon, as the README's demo
    assert ensemble.is_finished_ok, ensemble.exit_message
    outputs = ensemble.outputs
    weights = outputs['ensemble'].get_dict()
    for key in ('x_0p000', 'x_0p500'):
        ranking = outputs['screen']['compositions'][key]['ranking'].get_dict()
        n_atoms = len(outputs['screen']['compositions'][key]['lowest'].sites)
        k = min(2, len(ranking['keys']))
        expected = class_probabilities(np.array(ranking['energy_per_atom'][:k]) * n_atoms,
                                       ranking['multiplicity'][:k], 600.0)
        assert weights[key] == pytest.approx({f'{key}_{name}': w for name, w in zip(ranking['keys'][:k], expected)})
    assert len(weights['x_0p000']) == 1 and len(weights['x_0p500']) == 2
    members = {member for composition in weights.values() for member in composition}
    assert set(outputs['thermal']['relaxed']) == members
    assert {row['key'] for row in outputs['validation']['validation']['rows']} == members  # validated apart
    rows = {row['key']: row for row in outputs['table']['rows']}
    assert sorted(rows) == ['x_0p000', 'x_0p500'] and rows['x_0p500']['configurations']
    configurations = {row['key']: row for row in outputs['table']['configurations']}
    for i, temperature in enumerate(rows['x_0p500']['temperatures']):
        average = sum(w * configurations[m]['gap'][configurations[m]['temperatures'].index(temperature)]
                      for m, w in weights['x_0p500'].items())
        assert rows['x_0p500']['gap'][i] == pytest.approx(average, abs=1e-12)
    assert rows['x_0p500']['configuration_spread'][1] >= 0 and outputs['gaps']['x_0p500_T300']['configurations']
    # the weights' error: the same average with the weights of the low engine's energies of the relaxed cells
    from aiida_capthermo.core.error_budget import engine_weights

    n_atoms = len(outputs['screen']['compositions']['x_0p500']['lowest'].sites)
    bias = {row['key']: row['energy_per_atom_bias'] * n_atoms for row in outputs['validation']['validation']['rows']
            if row['temperature'] == 0.0 and row['key'] in weights['x_0p500']}
    by_engine = engine_weights(weights['x_0p500'], bias, 600.0)
    for i, temperature in enumerate(rows['x_0p500']['temperatures']):
        moved = sum((by_engine[m] - w) * configurations[m]['gap'][configurations[m]['temperatures'].index(temperature)]
                    for m, w in weights['x_0p500'].items())
        assert rows['x_0p500']['stderr_weights'][i] == pytest.approx(abs(moved), abs=1e-12)
    assert {'phonons_x_0p500', 'phonons_x_0p000'} <= set(outputs['figures'])
    assert any(label.startswith('phonons_x_0p500_c') for label in outputs['figures'])  # the second configuration
    from aiida_capthermo.workflows.report import run_record

    record = run_record(ensemble)  # run.json keeps the weights, their coverage and every configuration's rows
    assert record['ensemble']['weights'] == weights and record['ensemble']['coverage']['x_0p500'] <= 1.0 + 1e-12
    assert {row['key'] for row in record['configurations']} == members
    assert set(record['screen_ranking']['x_0p500']['keys'][:2]) == {m.split('_')[-1] for m in weights['x_0p500']}


def check_screen_thermal_and_report(node, results, tmp_path):
    """The screen and thermal stages: Table I, figures, the provenance of a gap, `capthermo report`."""
    from click.testing import CliRunner

    from aiida_capthermo.cli.main import cli

    rows = results['table']['rows']
    assert [row['x'] for row in rows] == [0.0, 0.5] and all(row['temperatures'] == [0.0, 300.0] for row in rows)
    for row in rows:
        # Eg(0) of the relaxed cell: its only error is the structure error (the demo's validation.relax); MD's more
        assert row['stderr'][0] == pytest.approx(abs(row['sampling_shift'][0]), abs=1e-12) and row['stderr'][1] > 0
        assert row['delta_gap'][1] == pytest.approx(row['gap'][1] - row['gap'][0], abs=1e-12)
    csv = results['table_csv'].get_content().splitlines()
    assert csv[0].startswith('x,temperature_K,gap_eV') and len(csv) == 1 + 4
    figures = results['figures']
    assert {'eg_vs_x', 'eg_vs_t', 'relative_change', 'coupling_x_0p500', 'phonons_x_0p000', 'phonons_x_0p500',
            'gnn_parity_low', 'gnn_parity', 'mace_parity'} <= set(figures)
    assert all(f.get_content('rb')[:4] == b'\x89PNG' for f in figures.values())
    # The thermal structures are the screen's ground states, relaxed with the study's final potential.
    lowest = results['screen']['compositions']['x_0p500']['lowest']
    thermal = node.base.links.get_outgoing(link_label_filter='thermal').one().node
    assert thermal.inputs.structures['x_0p500'].uuid == lowest.uuid
    # ... which the study's low engine chose (the protocol's rerank): its energy of the cell, recomputed here
    from aiida_capthermo.ml.labelling import single_point_function
    from aiida_capthermo.workflows.study import study_engines

    ranking = results['screen']['compositions']['x_0p500']['ranking'].get_dict()
    assert ranking['ranked_by'] == 'engine' and ranking['lowest'] == ranking['keys'][0]
    energy = single_point_function(study_engines(node)['low'])(lowest.get_ase())['energy']
    assert energy / len(lowest.sites) == pytest.approx(ranking['energy_per_atom'][0], abs=1e-6)
    assert thermal.inputs.mace_model.uuid == results['mace']['model'].uuid
    assert thermal.inputs.gnn_model.uuid == results['gnn']['model'].uuid
    assert {key: m.uuid for key, m in thermal.inputs.gnn_members.items()} == {
        key: m.uuid for key, m in results['gnn']['members'].items()}
    # Walk the provenance back from the 300 K gap of x = 0.5: MD, both models, their datasets, the labelling jobs
    # and the parent phonons must all be ancestors.
    gap = results['thermal']['gaps']['x_0p500_T300']
    seen, stack, labels = set(), [gap], set()
    while stack:
        current = stack.pop()
        for link in current.base.links.get_incoming().all():
            if link.node.pk not in seen and link.link_type.value in ('create', 'input_calc', 'input_work'):
                seen.add(link.node.pk)
                stack.append(link.node)
                labels.add(getattr(link.node, 'process_label', None) or type(link.node).__name__)
    for expected in ('thermal_gaps', 'GnnPredictCalcJob', 'MlipThermalCalcJob', 'FinetuneMaceCalcJob',
                     'GnnTrainCalcJob', 'LabelCalcJob', 'force_constants_from_labels', 'MlipScreenCalcJob'):
        assert expected in labels, (expected, sorted(labels))
    assert {results['mace']['model'].pk, results['gnn']['model'].pk, results['dataset']['low'].pk,
            results['dataset']['high'].pk} <= seen
    # `capthermo report` prints Table I and writes the CSV and the figures, from the stored nodes only.
    result = CliRunner().invoke(cli, ['report', str(node.pk), '-o', str(tmp_path / 'report')])
    assert result.exit_code == 0, result.output
    assert '0.500' in result.output and 'Eg(300 K)' in result.output
    written = sorted(path.name for path in (tmp_path / 'report').iterdir())
    assert 'table_i.csv' in written and 'eg_vs_x.png' in written and 'eg_vs_t.pdf' in written
    assert len(written) == 2 + 2 * len(figures)  # CSV, run.json, and every figure as PNG and PDF
    assert all((tmp_path / 'report' / f'{name}.pdf').read_bytes()[:5] == b'%PDF-' for name in figures)
    # run.json: the run's own record (timings from the nodes, sizes, errors) that the docs quote about a run.
    record = json.loads((tmp_path / 'report' / 'run.json').read_text())
    labels = [stage['label'] for stage in record['stages']]
    assert labels[0] == 'dataset' and {'gnn', 'mace', 'screen', 'thermal'} <= set(labels), labels
    assert all(stage['start_s'] >= 0 and stage['start_s'] + stage['seconds'] <= record['study_seconds'] + 1
               for stage in record['stages'])
    dataset_stage = record['stages'][0]
    assert dataset_stage['n_calcjobs'] >= sum(c['label'].startswith('label_') for c in dataset_stage['called']) > 0
    assert record['datasets']['low']['n_structures'] == results['dataset']['low'].n_structures
    # the end members, relaxed by the low engine (GFN1-xTB-noXB's zero pressure; test_label.py's independent root
    # search gives 4.9509 and 4.8664 Å), and every later cell built from them: the screen's x = 0 cell is the host's
    ends = record['end_members']
    assert ends['host']['formula'] == 'Ag3IS' and ends['host']['cellpar'][0] == pytest.approx(4.9509, abs=1e-3)
    assert ends['guest']['formula'] == 'Ag3BrS' and ends['guest']['cellpar'][0] == pytest.approx(4.8664, abs=1e-3)
    np.testing.assert_allclose(results['screen']['compositions']['x_0p000']['configurations']['cell'],
                               2 * np.asarray(results['dataset']['parents']['host'].cell), atol=1e-8)
    assert record['mace_evaluation']['force_mae_eV_per_A'] == results['mace']['evaluation']['forces']['mae']
    assert all(entry['n_imaginary'] >= 0 for entry in record['screen_phonons'].values())
    check_questions_answered(node, results)
    check_validation(node, results)
    # An archive of the study imported into a fresh profile gives the same report.
    from aiida.tools.archive import create_archive

    archive = tmp_path / 'study.aiida'
    create_archive([node], filename=archive)
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'fresh')}
    verdi = str(BIN / 'verdi')
    subprocess.run([verdi, 'presto', '--profile-name', 'fresh'], env=env, check=True, capture_output=True)
    subprocess.run([verdi, '-p', 'fresh', 'archive', 'import', str(archive)], env=env, check=True,
                   capture_output=True)
    imported = subprocess.run([str(BIN / 'capthermo'), '-p', 'fresh', 'report', node.uuid, '-o',
                               str(tmp_path / 'imported')], env=env, check=True, capture_output=True, text=True)
    first = [line for line in result.output.splitlines() if not line.startswith(('Table I', '1', '2', '3', '4', '5',
                                                                                  '6', '7', '8', '9'))]
    again = [line for line in imported.stdout.splitlines() if not line.startswith(('Table I', '1', '2', '3', '4',
                                                                                    '5', '6', '7', '8', '9'))]
    assert first == again  # the table itself (the header names the pk, the file line the folder)
    for name in written:
        assert (tmp_path / 'imported' / name).read_bytes() == (tmp_path / 'report' / name).read_bytes()


def test_study_rejects_bad_md_stages(localhost_session):
    """MD stages need the capthermo-mlip code and compositions the supercell can hold; caught before submission."""
    import pytest

    *codes, mlip, _ = study_codes(localhost_session, 'validation')
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(
        *codes, protocol='demo', mlip_code=mlip, overrides={'mace': {'md_check': {'compositions': [0.3]}}})
    with pytest.raises(ValueError, match='multiples of 1/8'):
        engine.run(builder)
    with pytest.raises(ValueError, match='stepz'):  # refused as the builder is filled
        CapthermoStudyWorkChain.get_builder_from_protocol(
            *codes, protocol='demo', mlip_code=mlip, overrides={'mace': {'refine': {'stepz': 10}}})
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(*codes, protocol='demo', mlip_code=mlip)
    del builder.mace['mlip_code']
    with pytest.raises(ValueError, match='mlip_code'):
        engine.run(builder)


def test_study_stage_settings_checked_at_submission(localhost_session, tmp_path):
    """Screen and thermal settings are checked by the stages' own rules before anything runs, also when the study
    starts from given models and structures."""
    from aiida_capthermo.core.structures import antiperovskite
    from aiida_capthermo.data.model import ModelData
    from aiida_capthermo.data.structures import set_structure_metadata

    *codes, mlip, _ = study_codes(localhost_session, 'given')
    for override, message in (({'screen': {'compositions': [0.3]}}, 'screen: composition 0.3'),
                              ({'screen': {'parameters': {'fmaxx': 1}}}, 'fmaxx'),
                              ({'thermal': {'md': {'stepz': 5}}}, 'thermal: invalid md'),
                              ({'thermal': {'coupling': {'structures': 'some'}}}, 'coupling.structures'),
                              ({'ensemble': {'configurations': 3, 'temperature': 600.0}}, r'screen.keep >= 3'),
                              ({'ensemble': {'configurations': 1, 'temperature': 0.0}}, 'synthesis temperature'),
                              ({'ensemble': {'configurations': 1}}, 'needed for Boltzmann weights'),
                              ({'ensemble': {'configurations': 1, 'temperature': 600.0, 'weighting': 'uniform'}},
                               "weighting must be one of \\['boltzmann', 'random'\\]"),
                              ({'ensemble': {'configurations': 1, 'temperature': 600.0, 'weighting': 'random'}},
                               'remove ensemble.temperature'),
                              ({'ensemble': {'configurations': 1, 'tempreature': 600.0}}, "unknown keys \\['tempr"),
                              ({'ensemble': {'weighting': 'random'}}, 'ensemble needs configurations')):
        builder = CapthermoStudyWorkChain.get_builder_from_protocol(*codes, protocol='demo', mlip_code=mlip,
                                                                    overrides=override)
        with pytest.raises(ValueError, match=message):
            engine.run(builder)
    # given models and structures: the thermal stage alone; without structures or a screen it is refused
    import zipfile

    # a torch-archive-shaped file (nothing here loads it): another test of the session may take the newest MACE model
    # for a dry run, whose integrity check refuses a file that is no archive
    with zipfile.ZipFile(tmp_path / 'm.model', 'w') as archive:
        archive.writestr('m/data.pkl', b'weights')
    mace = ModelData.from_files(kind='mace', files={'m.model': tmp_path / 'm.model'}, main_file='m.model').store()
    gnn = ModelData.from_files(kind='gnn', files={'m.model': tmp_path / 'm.model'}, main_file='m.model').store()
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(*codes, protocol='demo', mlip_code=mlip)
    del builder['screen']
    builder.given = {'mace_model': mace, 'gnn_model': gnn}
    with pytest.raises(ValueError, match='the thermal stage needs structures'):
        engine.run(builder)
    structure = set_structure_metadata(orm.StructureData(ase=antiperovskite('Ag', 'S', 'I', 4.869).repeat(2)), x=0.0)
    builder.given = {'mace_model': mace, 'gnn_model': gnn, 'structures': {'x_0p000': structure}}
    builder.ensemble = orm.Dict({'configurations': 1, 'temperature': 600.0})
    with pytest.raises(ValueError, match='ensemble averages the screen'):  # no screen, no configurations
        engine.run(builder)
    del builder['ensemble']
    builder.thermal.md = orm.Dict({'stepz': 5})
    with pytest.raises(ValueError, match='thermal: invalid md'):
        engine.run(builder)


def test_study_paper_protocol_labels_with_vasp(localhost_session):
    """The `paper` protocol: the papers' dataset sizes through the VASP engine (PBEsol low, HSEsol high), the named
    MACE foundation, every composition and the paper's MD; the POTCAR family is the user's and is asked for."""
    *codes, mlip, evaluate = study_codes(localhost_session, 'paper')
    vasp = orm.InstalledCode(computer=localhost_session, filepath_executable='/usr/bin/true', label='paper-vasp',
                             default_calc_job_plugin='vasp.vasp').store()
    with pytest.raises(ValueError, match='potential_family'):  # the POTCAR family is the user's
        CapthermoStudyWorkChain.get_builder_from_protocol(vasp, *codes[1:], protocol='paper', mlip_code=mlip)
    family = {'vasp': {'potential_family': 'PBE.54'}}
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(
        vasp, *codes[1:], protocol='paper', mlip_code=mlip, evaluate_code=evaluate,
        overrides={'dataset': {'low': family, 'high': family}})
    dataset = builder.dataset
    assert dataset.structures_per_temperature.value * len(dataset.temperatures.get_list()) \
        + dataset.n_equilibrium.value == 2200 and dataset.high_structures.value == 1000
    assert dataset.low.engine.value == dataset.high.engine.value == 'vasp'
    assert dataset.low.vasp['preset'] == 'PBEsol' and dataset.high.vasp['preset'] == 'HSEsol'
    assert dataset.low.vasp['potential_mapping'] == {'Ag': 'Ag', 'S': 'S', 'I': 'I', 'Br': 'Br'}
    assert 'calculator' not in dataset.low and dataset.low.code.uuid == vasp.uuid
    assert builder.mace.foundation_name.value == 'medium-mpa-0' and builder.mace.hyperparameters['swa']
    assert builder.screen.compositions.get_list() == [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    assert builder.thermal.md['steps'] * builder.thermal.md.get('timestep', 1.0) == 50_000  # 50 ps
    assert builder.thermal.temperatures.get_list() == [0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
    assert builder._process_class.spec().inputs.validate(builder._inputs(prune=True)) is None
    # VASP does not relax the 0 K structures here: Eg(0) gets no structure error, and asking for one is refused
    assert 'relax' not in builder.validation
    builder.validation.relax = orm.Dict({'fmax': 0.02, 'cell': False})
    error = builder._process_class.spec().inputs.validate(builder._inputs(prune=True))
    assert error is not None and 'validation.relax: the vasp engine does not relax' in error.message


def test_study_mid_protocol_learns_from_the_thermal_md(localhost_session):
    """The `mid` protocol runs offline (MACE from scratch, no foundation to download) and its active learning runs
    the MD the thermal stage runs: the same time step, friction, length and equilibration, at every composition the
    screen ranks and every finite temperature of Table I, so the frames the potential learns from are of the
    distribution it is used on."""
    *codes, mlip, evaluate = study_codes(localhost_session, 'mid')
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(*codes, protocol='mid', mlip_code=mlip,
                                                                evaluate_code=evaluate)
    assert 'foundation_name' not in builder.mace and 'foundation_model' not in builder.mace
    refine, md = builder.mace.refine.get_dict(), builder.thermal.md.get_dict()
    for key in ('timestep', 'friction', 'steps', 'equilibration_steps'):
        assert refine[key] == md[key], key
    assert md['equilibration_steps'] >= md['steps']  # the end members' energy settles over more than 2.4 ps
    assert set(builder.screen.compositions.get_list()) <= set(refine['compositions'])
    assert {t for t in builder.thermal.temperatures.get_list() if t > 0} <= set(refine['temperatures'])
    assert refine['force_tolerance'] == 0.10 and refine['rounds'] > 2
    assert refine['sampling_tolerance'] == 1.0  # and until its energies follow the engine's to within kT
    assert builder.screen.rerank.value == 7  # the low engine picks every composition's ground state
    assert builder.validation.frames_per_point.value > 8  # more teacher frames per (x, T) than the demo
    # the low engine relaxes the 0 K structures as the screen did (positions): Eg(0)'s structure error
    assert builder.validation.relax.get_dict() == {'fmax': 0.02, 'cell': False}
    assert builder._process_class.spec().inputs.validate(builder._inputs(prune=True)) is None
    # the plain values a script reads (benchmarks/bench_labels.py, scripts/study_costs.py) are the builder's
    from aiida_capthermo.workflows.gnn import GnnTwoStageWorkChain
    from aiida_capthermo.workflows.mlip_potential import MlipPotentialWorkChain

    mace = CapthermoStudyWorkChain.stage_protocol_inputs('mid', 'mace', MlipPotentialWorkChain)
    assert mace['refine'] == refine and mace['hyperparameters'] == builder.mace.hyperparameters.get_dict()
    gnn = CapthermoStudyWorkChain.stage_protocol_inputs('mid', 'gnn', GnnTwoStageWorkChain)
    assert gnn['hyperparameters'] == builder.gnn.hyperparameters.get_dict() and gnn['members'] == 4
