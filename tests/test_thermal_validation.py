"""Validation of both models on the thermal MD frames: the frame selection and the paired statistics against hand
calculations, and ThermalValidationWorkChain run for real on localhost (MACE MD frames labelled with tblite)."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_capthermo.core.validation import (
    allocate_budget,
    force_errors,
    grid_indices,
    paired_difference,
    select_frames,
    validation_rows,
)

from test_thermal import trained_models  # noqa: F401  (module fixture: tiny GNN and MACE models, their codes)


# ---------------------------------------------------------------------------------------------- core
def test_grid_and_budget_by_hand():
    rng = np.random.default_rng(0)
    # 10 frames, spacing 3: the grid 0, 3, 6, 9 is the only one that fits four frames
    np.testing.assert_array_equal(grid_indices(0, 10, 3, 10, rng), [0, 3, 6, 9])
    np.testing.assert_array_equal(grid_indices(5, 6, 4, 3, rng), [5])
    assert grid_indices(5, 5, 1, 3, rng).size == 0
    assert allocate_budget([1, 10], 6) == [1, 5]
    assert allocate_budget([4, 4, 4], 7) == [3, 2, 2]
    assert allocate_budget([2, 1], 9) == [2, 1]


def test_select_frames_respects_equilibration_and_spacing():
    series = [
        # two replicas of one (x, T): starts 10 and 20, g = 3.2 -> spacing 4 (ceil g beats min_spacing 2)
        {'x': 0.5, 'temperature': 300.0, 'offset': 0, 'n_frames': 50, 'start': 10, 'inefficiency': 3.2, 'replica': 0},
        {'x': 0.5, 'temperature': 300.0, 'offset': 50, 'n_frames': 50, 'start': 20, 'inefficiency': 3.2,
         'replica': 1},
        # another T: g = 1.5 but min_spacing 2 wins; only 2 production frames fit -> capacity 1
        {'x': 0.5, 'temperature': 600.0, 'offset': 100, 'n_frames': 12, 'start': 10, 'inefficiency': 1.5,
         'replica': 2},
    ]
    picked = select_frames(series, per_point=6, min_spacing=2, seed=3)
    by_replica = {}
    for frame in picked:
        by_replica.setdefault(frame['replica'], []).append(frame['index'])
    assert [len(by_replica[r]) for r in (0, 1, 2)] == [3, 3, 1]
    for record in series:
        indices = np.array(by_replica[record['replica']]) - record['offset']
        assert indices.min() >= record['start'] and indices.max() < record['n_frames']
        assert np.all(np.diff(indices) >= 4)
    assert {f['spacing'] for f in picked if f['temperature'] == 300.0} == {4}
    assert {f['point'] for f in picked} == {'x0.5000_T300', 'x0.5000_T600'}
    assert picked == select_frames(series, per_point=6, min_spacing=2, seed=3)  # seeded
    # min_spacing larger than g wins: frames at least 7 apart
    wide = select_frames(series[:1], per_point=5, min_spacing=7, seed=1)
    assert len(wide) == 5 and np.all(np.diff([f['index'] for f in wide]) >= 7)
    with pytest.raises(ValueError, match='start'):
        select_frames([{**series[0], 'start': 60}], per_point=2)


def test_pressure_by_hand():
    """ASE's sign: a tensile (positive) stress is a negative pressure; 1 eV/Å^3 = 160.2176634 GPa."""
    from aiida_capthermo.core.validation import pressure

    assert pressure([-0.01, -0.01, -0.01, 0.3, 0.2, 0.1]) == pytest.approx(1.602176634)
    assert pressure([0.03, 0.0, 0.0, 0.0, 0.0, 0.0]) == pytest.approx(-1.602176634)


def test_vegard_deviations_by_hand():
    """V(x) against (1 - x) V(0) + x V(1): end members exactly on the line, a mixed cell 10 % above it, and no
    reference without both end members."""
    from aiida_capthermo.core.validation import vegard_deviations

    deviations = vegard_deviations([0.0, 0.5, 1.0], [25.0, 1.1 * 24.5, 24.0])
    assert deviations == pytest.approx([0.0, 0.1, 0.0])
    assert vegard_deviations([0.0, 0.5], [25.0, 24.0]) == [None, None]


def test_paired_difference_equals_numpy_and_hand():
    reference = np.array([1.0, 1.5, 0.7, 1.2])
    predicted = np.array([0.8, 1.6, 0.5, 1.0])
    result = paired_difference(reference, predicted)
    # d = (0.2, -0.1, 0.2, 0.2): mean 0.125, sample std 0.15, stderr 0.15 / 2
    assert result['bias'] == pytest.approx(0.125)
    assert result['stderr'] == pytest.approx(0.075)
    assert result['mae'] == pytest.approx(0.175)
    d = reference - predicted
    assert result['stderr'] == pytest.approx(np.std(d, ddof=1) / np.sqrt(d.size))
    assert result['rmse'] == pytest.approx(np.sqrt(np.mean(d**2))) and result['n'] == 4
    assert paired_difference([1.0], [0.5])['stderr'] is None
    assert paired_difference([], [])['bias'] is None


def test_validation_rows_by_hand():
    """Two points; one frame of the first has no teacher gap and no low labels (NaN): it is left out."""
    n_atoms = [2, 2, 1]
    forces_reference = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 2.0], [0, 0, 0], [np.nan] * 3])
    forces_predicted = np.array([[0.5, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 0.5], [9.0, 9, 9]])
    rows = validation_rows(x=[0.0, 0.0, 1.0], temperature=[300.0, 300.0, 300.0], teacher_gap=[1.0, 0.6, np.nan],
                           model_gap=[0.9, 0.9, 1.0], n_atoms=n_atoms, energy_reference=[-4.0, -3.0, np.nan],
                           energy_predicted=[-3.0, -3.0, 0.0], forces_reference=forces_reference,
                           forces_predicted=forces_predicted)
    assert [r['point'] for r in rows] == ['x0.0000_T300', 'x1.0000_T300']
    first, second = rows
    assert first['n_frames'] == 2 and first['n_gap'] == 2 and first['n_mlip'] == 2
    assert first['gnn_bias'] == pytest.approx(-0.1) and first['gnn_mae'] == pytest.approx(0.2)
    assert first['gnn_bias_stderr'] == pytest.approx(np.std([0.1, -0.3], ddof=1) / np.sqrt(2))
    assert first['teacher_gap'] == pytest.approx(0.8)
    assert first['force_mae'] == pytest.approx((0.5 + 1.0 + 0.5) / 12)  # 4 atoms x 3 components
    assert first['force_rmse'] == pytest.approx(np.sqrt((0.25 + 1.0 + 0.25) / 12))
    assert first['energy_per_atom_mae'] == pytest.approx(0.25)  # |(-4 + 3) / 2| and 0
    assert second['n_gap'] == 0 and second['gnn_bias'] is None and second['n_mlip'] == 0
    assert second['force_mae'] is None
    assert force_errors(np.zeros((1, 3)), np.ones((1, 3)))['mae'] == 1.0
    assert first['n_sampling'] == 2 and first['sampling_shift'] is None  # fewer than 3 frames: no estimate
    # Three frames at 300 K, gaps 1.0/0.8/0.6 and U_low - U_MLIP = 0/0.1/0.2 eV (+ an offset of 5 eV that cancels):
    # cov = -0.02 eV^2, shift = 0.02 beta; leave-one-out covariances -0.01, -0.04, -0.01: jackknife error 0.02 beta.
    beta = 1 / (8.617333262e-5 * 300.0)
    three = validation_rows(x=[0.5] * 3, temperature=[300.0] * 3, teacher_gap=[1.0, 0.8, 0.6],
                            model_gap=[0.9] * 3, n_atoms=[1] * 3, energy_reference=[5.0, 5.1, 5.2],
                            energy_predicted=[0.0] * 3, forces_reference=np.zeros((3, 3)),
                            forces_predicted=np.zeros((3, 3)))[0]
    assert three['sampling_shift'] == pytest.approx(0.02 * beta) and three['n_sampling'] == 3
    assert three['sampling_shift_stderr'] == pytest.approx(0.02 * beta)
    assert three['sampling_beta_sigma'] == pytest.approx(0.1 * beta)
    assert three['sampling_correlation'] == pytest.approx(-1.0)  # the gap falls exactly as dU rises
    assert first['sampling_correlation'] is None
    # an ensemble of two models whose mean is model_gap: each model's own bias on the frames with a teacher gap
    members = np.array([[0.8, 1.0, 0.0], [1.0, 0.8, 2.0]])
    both = validation_rows(x=[0.0, 0.0, 1.0], temperature=[300.0] * 3, teacher_gap=[1.0, 0.6, np.nan],
                           model_gap=members.mean(axis=0), n_atoms=n_atoms, energy_reference=[-4.0, -3.0, np.nan],
                           energy_predicted=[-3.0, -3.0, 0.0], forces_reference=forces_reference,
                           forces_predicted=forces_predicted, member_gaps=members)
    assert both[0]['gnn_bias_members'] == pytest.approx([-0.1, -0.1]) and both[1]['gnn_bias_members'] is None
    assert both[0]['gnn_bias'] == pytest.approx(np.mean(both[0]['gnn_bias_members']))
    with pytest.raises(ValueError, match='member_gaps'):
        validation_rows(x=[0.0], temperature=[300.0], teacher_gap=[1.0], model_gap=[1.0], n_atoms=[1],
                        energy_reference=[0.0], energy_predicted=[0.0], forces_reference=np.zeros((1, 3)),
                        forces_predicted=np.zeros((1, 3)), member_gaps=np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------- the workchain
@pytest.fixture(scope='module')
def md_frames(trained_models):
    """Frames of a short batched MACE MD (MlipThermalCalcJob): x = 0 and 1/2 at 300 and 600 K, two replicas."""
    from aiida import engine, orm

    from aiida_capthermo.calculations.mlip import MlipThermalCalcJob
    from aiida_capthermo.data.structures import set_structure_metadata

    from mlip_helpers import small_cell

    structures = {key: set_structure_metadata(orm.StructureData(ase=small_cell(bromide, seed=0, rattle=0.0)), x=x)
                  for key, bromide, x in (('x000', False, 0.0), ('x050', True, 0.5))}
    _, node = engine.run_get_node(
        MlipThermalCalcJob, code=trained_models['mlip_code'], model=trained_models['mace'], structures=structures,
        parameters=orm.Dict({'temperatures': [300.0, 600.0], 'replicas': 2, 'steps': 200, 'stride': 5,
                             'friction': 0.01, 'threads': 1, 'dtype': 'float64', 'device': 'cpu'}))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return node


@pytest.fixture(scope='module')
def validation_run(trained_models, md_frames):
    """One real run: 3 frames per (x, T), low GFN1-xTB-noXB, teacher IPEA1-xTB-noXB, with a replicas Dict."""
    import os
    import sys

    from aiida import engine, orm

    from aiida_capthermo.workflows.thermal_validation import ThermalValidationWorkChain

    bin_dir = os.path.dirname(sys.executable)
    computer = trained_models['gnn_code'].computer
    label = orm.InstalledCode(computer=computer, filepath_executable=os.path.join(bin_dir, 'capthermo-label'),
                              label='label-validation', default_calc_job_plugin='capthermo.label',
                              prepend_text='export OMP_NUM_THREADS=1').store()
    evaluate = orm.InstalledCode(computer=computer, filepath_executable=os.path.join(bin_dir, 'capthermo-mace'),
                                 label='mace-evaluate-validation', default_calc_job_plugin='capthermo.mace_evaluate',
                                 prepend_text='export OMP_NUM_THREADS=1').store()
    # the thermal stage's statistics of the replicas: production from frame 12 (of 40), g = 4.3 -> spacing 5
    rows = [{'attempt': 0, 'replica': r['replica'], 'start': 12, 'inefficiency': 4.3}
            for r in md_frames.outputs.results['replicas']]
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}
    calculator = {'name': 'tblite', 'halogen_bond': False}
    builder = ThermalValidationWorkChain.get_builder_from_protocol(
        trained_models['gnn_code'], evaluate, trained_models['mace'], trained_models['gnn'],
        frames={'md_0': md_frames.outputs.frames},
        low={'code': label, 'calculator': orm.Dict({**calculator, 'method': 'GFN1-xTB'}), 'options': orm.Dict(options)},
        high={'code': label, 'calculator': orm.Dict({**calculator, 'method': 'IPEA1-xTB'}),
              'options': orm.Dict(options)},
        replicas=orm.Dict({'replicas': rows}), protocol='demo',
        overrides={'frames_per_point': 3, 'min_spacing': 2, 'batch_size': 12, 'seed': 5},
        options=options)
    builder.evaluate_settings = orm.Dict({'device': 'cpu', 'dtype': 'float64'})
    builder.relaxed = dict(md_frames.inputs.structures)  # stand-ins for the 0 K structures: they carry their x
    builder.relax = orm.Dict({'fmax': 0.01, 'cell': False})  # the low engine relaxes them too (positions only)
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    return results, node


def test_frames_picked_from_production_and_decorrelated(validation_run, md_frames):
    results, _ = validation_run
    picked = results['frames'].base.attributes.get('picked')
    replicas = {r['replica']: r for r in md_frames.outputs.results['replicas']}
    assert len(picked) == 4 * 3 + 2  # 2 compositions x 2 temperatures x 3 frames, and the 0 K structures
    zero = [frame for frame in picked if frame['source'] == 'relaxed']
    assert sorted(frame['index'] for frame in zero) == ['x000', 'x050']
    assert sorted(frame['point'] for frame in zero) == ['x000_T0', 'x050_T0']  # per structure: its key
    assert {frame['point'] for frame in picked if frame['source'] != 'relaxed'} == {
        f'{key}_T{t}' for key in ('x000', 'x050') for t in (300, 600)}
    picked = [frame for frame in picked if frame['source'] != 'relaxed']
    by_replica = {}
    for frame in picked:
        record = replicas[int(frame['replica'].split(':')[1])]
        local = frame['index'] - record['frame_offset']
        assert 12 <= local < record['n_frames']  # production part only
        assert frame['spacing'] == 5
        by_replica.setdefault(frame['replica'], []).append(local)
    assert all(np.all(np.diff(sorted(v)) >= 5) for v in by_replica.values())
    # the picked frames are the MD's own frames
    frames = md_frames.outputs.frames.get_labelled_set()
    chosen = results['frames'].get_labelled_set()
    first = picked[0]['index']
    np.testing.assert_allclose(chosen.positions[:chosen.n_atoms[0]],
                               frames.positions[frames.offsets[first]:frames.offsets[first + 1]])


def test_gnn_bias_and_mlip_errors_match_independent_computation(validation_run, trained_models, tmp_path):
    """The GNN bias is mean(teacher - GNN) of the high labels and the prediction job; the force MAE that of the
    labelled forces against the MACE model run here, in this process."""
    from aiida_capthermo.ml.mace import load_mace_model, predict

    results, node = validation_run
    table = results['validation']
    assert table['teacher'] == 'high' and table['teacher_method'].startswith('IPEA1-xTB')
    rows = {row['point']: row for row in table['rows']}
    assert len(rows) == 6  # 2 compositions x (0 K structure, 300 K, 600 K)
    frames = results['frames'].get_labelled_set()
    # the structures made from the picked frames (frames_to_structures), in frame order
    make = next(c for c in results['frames'].base.links.get_outgoing().all_nodes()
                if getattr(c, 'process_label', None) == 'frames_to_structures')
    structures = make.base.links.get_outgoing().all()
    position = {link.node.uuid: int(link.link_label.split('_')[-1]) for link in structures}
    predict_job = node.base.links.get_outgoing(link_label_filter='predict').one().node
    gnn = predict_job.outputs.predictions.get_array('values')
    high = results['labels']['high'].get_labelled_set()
    low = results['labels']['low'].get_labelled_set()
    assert len(high) == len(low) == len(frames) == 14
    teacher = np.full(len(frames), np.nan)
    teacher[[position[u] for u in high.structure_uuid]] = high.gap
    keys = [f'{"x000" if x == 0 else "x050"}_T{t:.0f}' for x, t in zip(frames.x, frames.temperature)]
    relaxed = node.inputs.relaxed
    for row in rows.values():  # the 0 K rows carry the relaxed cell's volume; no x = 1 here, so no Vegard line
        if row['temperature'] == 0:
            structure = relaxed['x000' if row['x'] == 0 else 'x050']
            assert row['volume_per_atom'] == pytest.approx(structure.get_cell_volume() / len(structure.sites))
            assert row['vegard_deviation'] is None
    for point, row in rows.items():
        assert row['key'] == ('x000' if row['x'] == 0 else 'x050') and point.startswith(row['key'])
        mask = np.array([k == point for k in keys])
        d = teacher[mask] - gnn[mask]
        n = 1 if row['temperature'] == 0 else 3
        assert row['n_gap'] == row['n_frames'] == n
        assert row['gnn_bias'] == pytest.approx(d.mean(), abs=1e-10)
        if n > 1:
            assert row['gnn_bias_stderr'] == pytest.approx(np.std(d, ddof=1) / np.sqrt(n), abs=1e-10)
        else:
            assert row['gnn_bias_stderr'] is None
        assert row['gnn_mae'] == pytest.approx(np.abs(d).mean(), abs=1e-10)
        assert row['teacher_gap'] == pytest.approx(teacher[mask].mean(), abs=1e-10)

    # the MLIP's force errors, from the MACE model evaluated here on the labelled frames
    model = load_mace_model(str(trained_models['mace'].export_files(tmp_path)[trained_models['mace'].main_file]),
                            device='cpu')
    own = predict(model, low.to_atoms_list(with_labels=False), batch_size=4, device='cpu')
    frame_of = np.array([position[u] for u in low.structure_uuid])
    for point, row in rows.items():
        chosen = [k for k, index in enumerate(frame_of) if keys[index] == point]
        atoms = np.concatenate([np.arange(low.offsets[k], low.offsets[k + 1]) for k in chosen])
        errors = low.forces[atoms] - own['forces'][atoms]
        assert row['n_mlip'] == (1 if row['temperature'] == 0 else 3)
        assert row['force_mae'] == pytest.approx(np.abs(errors).mean(), rel=1e-6)
        assert row['force_rmse'] == pytest.approx(np.sqrt(np.mean(errors**2)), rel=1e-6)
        per_atom = (low.energy[chosen] - own['energy'][chosen]) / low.n_atoms[chosen]
        assert row['energy_per_atom_mae'] == pytest.approx(np.abs(per_atom).mean(), rel=1e-6)
        if row['temperature'] == 0:  # the teacher's and the MLIP's pressure and the teacher's force on the relaxed cell
            (k,) = chosen
            assert row['teacher_pressure'] == pytest.approx(-low.stress[k, :3].mean() * 160.2176634, rel=1e-9)
            assert row['mlip_pressure'] == pytest.approx(-own['stress'][k, :3].mean() * 160.2176634, rel=1e-5)
            forces = low.forces[low.offsets[k]:low.offsets[k + 1]]
            assert row['teacher_max_force'] == pytest.approx(np.linalg.norm(forces, axis=1).max(), rel=1e-9)
            assert np.isfinite(row['teacher_pressure']) and np.isfinite(row['mlip_pressure'])
        print(f'{point}: teacher {row["teacher_gap"]:.3f} eV, GNN bias {row["gnn_bias"]:+.3f} ± '
              f'{row["gnn_bias_stderr"] or 0.0:.3f} eV, force MAE {row["force_mae"]:.3f} eV/Å')


def test_eg0_structure_error_from_the_engine_relaxed_structure(validation_run):
    """With ``relax`` the low engine relaxes each 0 K structure: checked here in this process, the relaxed structure
    is the engine's minimum (its forces below fmax), the teacher's gap there is the row's engine_relaxed_gap, and
    the row's sampling term is that gap less the teacher's at the structure given. The ideal x = 0 cell is a
    stationary point by symmetry: nothing moves and the term is zero."""
    from aiida_capthermo.ml.labelling import single_point_function
    from aiida_capthermo.ml.settings import CalculatorSpec

    results, node = validation_run
    rows = {row['point']: row for row in results['validation']['rows'] if row['temperature'] == 0}
    relaxed = results['labels']['relaxed_low'].get_labelled_set()
    assert len(relaxed) == 2 and {'relax_low', 'label_high_relaxed'} <= {
        link.link_label for link in node.base.links.get_outgoing().all()}
    low = single_point_function(CalculatorSpec(name='tblite', method='GFN1-xTB', halogen_bond=False,
                                               properties=['energy', 'forces']))
    teacher = single_point_function(CalculatorSpec(name='tblite', method='IPEA1-xTB', halogen_bond=False,
                                                   properties=['gap']))
    picked = results['frames'].get_labelled_set()
    for k in range(len(relaxed)):
        atoms = relaxed.atoms(k, with_labels=False)
        row = rows['x000_T0' if relaxed.x[k] == 0 else 'x050_T0']
        assert np.linalg.norm(low(atoms)['forces'], axis=1).max() <= 0.01 + 1e-6
        assert row['engine_relaxed_gap'] == pytest.approx(teacher(atoms)['gap'], abs=1e-6)
        assert row['sampling_shift'] == pytest.approx(row['engine_relaxed_gap'] - row['teacher_gap'], abs=1e-12)
        assert row['sampling_shift_stderr'] == 0.0 and row['n_sampling'] == 1
        (index,) = np.flatnonzero((picked.temperature == 0) & (picked.x == relaxed.x[k]))
        moved = atoms.positions - picked.positions[picked.offsets[index]:picked.offsets[index + 1]]
        assert row['engine_relaxed_displacement'] == pytest.approx(np.linalg.norm(moved, axis=1).max(), abs=1e-9)
        print(f'{row["point"]}: moved {row["engine_relaxed_displacement"]:.4f} Å, '
              f'{1000 * row["engine_relaxation_energy"]:+.3f} meV/atom, teacher gap {row["teacher_gap"]:.4f} -> '
              f'{row["engine_relaxed_gap"]:.4f} eV')
    ideal = rows['x000_T0']
    assert ideal['engine_relaxed_displacement'] < 1e-6 and abs(ideal['sampling_shift']) < 1e-6
    assert ideal['engine_relaxation_energy'] == pytest.approx(0.0, abs=1e-9)
    mixed = rows['x050_T0']
    assert mixed['engine_relaxed_displacement'] > 0.01 and mixed['engine_relaxation_energy'] < 0


def test_provenance_and_no_frames_exit_code(validation_run, md_frames, trained_models):
    from aiida import engine, orm

    results, node = validation_run
    ancestors = orm.QueryBuilder().append(orm.Dict, filters={'id': results['validation'].pk}, tag='v').append(
        orm.Node, with_descendants='v', project='uuid').all(flat=True)
    for required in (md_frames.outputs.frames, trained_models['gnn'], trained_models['mace'],
                     results['labels']['high'], results['labels']['low']):
        assert required.uuid in ancestors
    calls = {link.link_label for link in node.base.links.get_outgoing().all()}
    assert {'label_low', 'label_high', 'predict', 'evaluate'} <= calls

    # replicas whose equilibration takes all their frames leave nothing to validate: exit 410, no job run
    builder = node.get_builder_restart()
    builder.replicas = orm.Dict({'replicas': [{'attempt': 0, 'replica': r['replica'], 'start': r['n_frames'],
                                               'inefficiency': 1.0} for r in md_frames.outputs.results['replicas']]})
    _, failed = engine.run_get_node(builder)
    assert failed.exit_status == failed.process_class.exit_codes.ERROR_NO_FRAMES.status == 591
    assert not [c for c in failed.called if c.process_label != 'pick_validation_frames']


def test_inputs_rejected_with_a_clear_message(validation_run, md_frames):
    from aiida import orm

    from aiida_capthermo.workflows.thermal_validation import validate_inputs

    frames = {'md_0': md_frames.outputs.frames}
    assert validate_inputs({'frames': frames}, None) is None
    assert 'at least one thermal MD' in validate_inputs({'frames': {}}, None)
    assert 'frames_per_point' in validate_inputs({'frames': frames, 'frames_per_point': orm.Int(0)}, None)
    assert 'attempt' in validate_inputs({'frames': {'last': md_frames.outputs.frames},
                                         'replicas': orm.Dict({'replicas': []})}, None)
    assert 'replicas' in validate_inputs({'frames': frames, 'replicas': orm.Dict({'rows': []})}, None)
    vasp = {'engine': orm.Str('vasp')}
    assert 'vasp engine does not relax' in validate_inputs({'frames': frames, 'relax': orm.Dict({}), 'low': vasp},
                                                           None)

