"""The MD stability check through the batched engine (``ml.thermal``): closest pairs, the blow-up check, the verdict on
a harmonic crystal and on a collapsing one, ``capthermo-mlip md`` (all replicas in one batched simulation) and
``MlipMdCalcJob`` on localhost."""

from __future__ import annotations

import itertools
import json
import pathlib

import numpy as np
import pytest
from aiida import engine, orm

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.ml.settings import MdConfig, MdSettings, ThermalMdConfig

from mlip_helpers import mace_model_file, small_cell  # noqa: F401 -- the module fixture; tests/ is on sys.path
from test_thermal import spring_crystal  # the harmonic crystal of the engine's known-answer test


def brute_force_closest(atoms) -> tuple[float, set]:
    """Shortest distance over all pairs and all neighbouring images (Å) and the pair of atoms."""
    cell = np.asarray(atoms.cell)
    best, best_pair = np.inf, None
    for i, j in itertools.combinations(range(len(atoms)), 2):
        for shift in itertools.product((-1, 0, 1), repeat=3):
            d = np.linalg.norm(atoms.positions[j] + np.asarray(shift) @ cell - atoms.positions[i])
            if d < best:
                best, best_pair = d, {i, j}
    return best, best_pair


def test_min_pair_distances_match_brute_force_over_images():
    """Two systems of different cells in one call: each closest pair (distance and atoms) as found over images."""
    import torch

    from aiida_capthermo.ml.thermal import min_pair_distances

    systems = [small_cell(True, seed=3, rattle=0.3), small_cell(False, seed=4, rattle=0.3)]
    systems[1].set_cell(systems[1].cell * 1.05, scale_atoms=True)
    positions = torch.as_tensor(np.concatenate([atoms.positions for atoms in systems]))
    cells = torch.as_tensor(np.array([np.asarray(atoms.cell) for atoms in systems]))
    system_idx = torch.repeat_interleave(torch.arange(2), torch.tensor([len(atoms) for atoms in systems]))
    distances, pairs = min_pair_distances(positions, cells, system_idx, 2)
    for atoms, distance, pair in zip(systems, distances, pairs):
        best, best_pair = brute_force_closest(atoms)
        assert distance == pytest.approx(best, abs=1e-10) and set(pair.tolist()) == best_pair
    assert distances[0] != pytest.approx(distances[1])


def test_blow_up_names_each_reason():
    from aiida_capthermo.ml.thermal import blow_up

    thresholds = {'stop_distance': 1.0, 'max_temperature_ratio': 3.0}
    fine = np.zeros((2, 3))
    assert blow_up(-1.0, fine, 2.0, 'Ag-S', 800.0, 300.0, 10, **thresholds) is None
    assert 'non-finite' in blow_up(np.nan, fine, 2.0, 'Ag-S', 300.0, 300.0, 10, **thresholds)
    assert 'non-finite' in blow_up(-1.0, np.full((2, 3), np.inf), 2.0, 'Ag-S', 300.0, 300.0, 10, **thresholds)
    assert blow_up(-1.0, fine, 0.9, 'Ag-S', 300.0, 300.0, 10, **thresholds) == 'Ag-S atoms 0.90 Å apart at step 10'
    assert blow_up(-1.0, fine, 2.0, 'Ag-S', 901.0, 300.0, 20, **thresholds) == (
        'temperature 901 K at step 20 (target 300 K)')


def test_batched_md_holds_each_target_temperature():
    """Eight replicas of a harmonic crystal in one batch, four at 300 K and four at 600 K: the mean kinetic
    temperature of the second half (3N - 3 degrees of freedom) is each replica's own target within 6 % over its
    four replicas (the standard error is about 1 %), every verdict says stable, and the run is reproducible."""
    import torch

    from aiida_capthermo.ml.thermal import HarmonicModel, run_replicas

    torch.set_num_threads(1)
    atoms, phi = spring_crystal()
    targets = [300.0] * 4 + [600.0] * 4
    model = HarmonicModel(atoms.positions, phi)
    run = {'timestep': 2.0, 'friction': 0.02, 'stride': 10, 'batch_seed': 1}
    trajectories = run_replicas(model, [atoms] * 8, targets, list(range(8)), steps=3000, **run)
    verdicts = [trajectory.verdict(temperature_tolerance=0.2, stable_distance=1.5) for trajectory in trajectories]
    for verdict, target in zip(verdicts, targets):
        assert verdict['stable'] and verdict['broke'] is None and verdict['steps'] == 3000
        assert verdict['target_temperature'] == target and verdict['time_ps'] == pytest.approx(6.0)
        assert 1.5 < verdict['min_distance'] < 2.45 and verdict['closest_pair'] == 'Ag-S'  # the 2.45 Å bond
    for target in (300.0, 600.0):
        mean = np.mean([v['mean_temperature'] for v in verdicts if v['target_temperature'] == target])
        assert mean == pytest.approx(target, rel=0.06)
    assert all(len(t.temperature) == 300 and np.all(np.isfinite(t.potential_energy)) for t in trajectories)
    again = run_replicas(model, [atoms] * 8, targets, list(range(8)), steps=50, **run)
    np.testing.assert_allclose(again[5].temperature, trajectories[5].temperature[:5])  # seeded: reproducible


def test_equilibration_is_the_same_run_with_its_first_frames_dropped():
    """A harmonic crystal started 0.25 Å off its minimum in every coordinate (potential energy far above
    equipartition): ``equilibration_steps`` runs first with the same thermostat and noise, so its frames are exactly
    the later frames of a run as long without it (same times and positions); after 2 ps at a friction of 0.02/fs
    the mean potential energy is equipartition's (3N - 3) kT / 2 within its statistics, where the first frame of
    the run without equilibration is several times above it."""
    import torch
    from ase import units

    from aiida_capthermo.ml.thermal import HarmonicModel, run_replicas

    torch.set_num_threads(1)
    atoms, phi = spring_crystal()
    model = HarmonicModel(atoms.positions, phi)
    start = atoms.copy()
    start.positions += np.random.default_rng(0).choice([-0.25, 0.25], size=start.positions.shape)
    run = {'timestep': 2.0, 'friction': 0.02, 'stride': 10, 'batch_seed': 3, 'max_temperature_ratio': 100.0}
    whole = run_replicas(model, [start] * 4, [300.0] * 4, [0, 1, 2, 3], steps=3000, **run)
    kept = run_replicas(model, [start] * 4, [300.0] * 4, [0, 1, 2, 3], steps=2000, equilibration_steps=1000, **run)
    for full, part in zip(whole, kept):
        assert part.steps_done == 3000 and part.broke is None and len(part.time_fs) == 200
        np.testing.assert_allclose(part.time_fs, full.time_fs[100:])
        np.testing.assert_allclose(part.positions, full.positions[100:], atol=1e-9)
        np.testing.assert_allclose(part.potential_energy, full.potential_energy[100:], atol=1e-9)
    equipartition = (3 * len(atoms) - 3) / 2 * units.kB * 300.0
    energies = np.array([part.potential_energy for part in kept])
    assert energies.mean() == pytest.approx(equipartition, rel=0.1)
    assert min(full.potential_energy[0] for full in whole) > 3 * equipartition


def test_collapse_stops_the_replica_and_fails_the_verdict():
    """A harmonic crystal whose minimum puts an Ag atom 0.3 Å from an S atom: the pair collides, the engine stops the
    replica at the recorded frame where they are closer than stop_distance, and the verdict is unstable."""
    import torch

    from aiida_capthermo.ml.thermal import HarmonicModel, run_replicas

    torch.set_num_threads(1)
    atoms, phi = spring_crystal()
    reference = atoms.positions.copy()
    reference[2] = atoms.positions[1] - [0.0, 0.0, 0.3]  # Ag 2 (2.45 Å below S 1) pulled onto S 1
    [trajectory] = run_replicas(HarmonicModel(reference, phi), [atoms], [300.0], [0], steps=2000, timestep=1.0,
                                friction=0.01, stride=5, stop_distance=1.0, max_temperature_ratio=1e4)
    verdict = trajectory.verdict()
    assert not verdict['stable'] and verdict['broke'].startswith('Ag-S atoms') and 'apart' in verdict['broke']
    assert verdict['steps'] < 2000 and verdict['steps'] % 5 == 0 and verdict['steps'] == len(trajectory.time_fs) * 5
    assert verdict['min_distance'] < 1.0 and verdict['closest_pair'] == 'Ag-S'
    assert trajectory.min_distance[-1] < 1.0 <= trajectory.min_distance[-2]  # stopped at the first frame below


def test_md_settings_share_one_base():
    """The thermal stage's and ``capthermo-mlip md``'s settings derive from one base with their own defaults."""
    assert issubclass(MdConfig, MdSettings) and issubclass(ThermalMdConfig, MdSettings)
    md, thermal = MdConfig(), ThermalMdConfig()
    assert (md.temperatures, md.steps, md.friction, md.stride) == ([600.0], 5000, 0.01, 10)
    assert (thermal.temperatures, thermal.steps, thermal.friction, thermal.stride) == ([300.0, 600.0], 50000, 1e-3, 20)
    assert md.stop_distance == thermal.stop_distance == 1.0 and md.timestep == thermal.timestep == 1.0
    assert md.engine_arguments() == {'steps': 5000, 'equilibration_steps': 0, 'timestep': 1.0, 'friction': 0.01,
                                     'stride': 10, 'stop_distance': 1.0, 'max_temperature_ratio': 3.0}


def test_md_config_rejects_unknown_keys():
    with pytest.raises(Exception, match='extra'):
        MdConfig.model_validate({'temperatures': [300.0], 'frictoin': 0.1})
    with pytest.raises(Exception, match='multiple of stride'):  # frames only on recorded steps
        MdConfig.model_validate({'stride': 10, 'frame_stride': 25})
    with pytest.raises(Exception, match='> 0 K'):
        MdConfig.model_validate({'temperatures': [0.0]})


def test_cli_md_runs_replicas_and_writes_frames(mace_model_file, tmp_path, monkeypatch):
    from aiida_capthermo.compute.mlip import main

    monkeypatch.chdir(tmp_path)
    cells = [small_cell(False, seed=1, rattle=0.0), small_cell(True, seed=2, rattle=0.0)]
    LabelledSet.from_atoms_list(cells, x=np.array([0.0, 0.5])).save('start.npz')
    config = {'temperatures': [100.0, 200.0], 'steps': 60, 'equilibration_steps': 15, 'stride': 10,
              'frame_stride': 30, 'device': 'cpu', 'seed': 4}
    pathlib.Path('config.json').write_text(json.dumps(config))
    assert main(['md', str(mace_model_file), 'start.npz', '--config', 'config.json']) == 0
    summary = json.loads(pathlib.Path('summary.json').read_text())
    assert summary['error'] is None and summary['outputs']['n_replicas'] == 4
    records = json.loads(pathlib.Path('md.json').read_text())
    assert [(r['index'], r['temperature'], r['seed']) for r in records] == [
        (0, 100.0, 4), (0, 200.0, 5), (1, 100.0, 6), (1, 200.0, 7)]
    # the 15 equilibration steps are run and not recorded: the frames are every 10 steps of the 60 after them
    assert all(r['series']['time_fs'] == [25.0, 35.0, 45.0, 55.0, 65.0, 75.0] and r['steps'] == 75 for r in records)
    frames = LabelledSet.load('frames.npz')
    assert len(frames) == 8 == summary['outputs']['n_frames']  # two per replica (steps 30 and 60 after them)
    assert frames.x.tolist() == [0.0] * 4 + [0.5] * 4 and set(frames.origin) == {'md'}
    assert frames.temperature.tolist() == [100.0, 100.0, 200.0, 200.0] * 2


def test_cli_md_runs_replicas_beyond_one_batch_in_sequence(mace_model_file, tmp_path, monkeypatch):
    """``max_batch: 3`` runs 4 replicas as a batch of 3 and then a batch of 1 in the same job: every replica finishes
    all its steps with its own seed, record and frames, and the summary says how the batch was sized."""
    from aiida_capthermo.compute.mlip import main

    monkeypatch.chdir(tmp_path)
    cells = [small_cell(False, seed=1, rattle=0.0), small_cell(True, seed=2, rattle=0.0)]
    LabelledSet.from_atoms_list(cells, x=np.array([0.0, 0.5])).save('start.npz')
    config = {'temperatures': [100.0, 200.0], 'steps': 60, 'stride': 10, 'frame_stride': 30, 'device': 'cpu',
              'seed': 4, 'max_batch': 3}
    pathlib.Path('config.json').write_text(json.dumps(config))
    assert main(['md', str(mace_model_file), 'start.npz', '--config', 'config.json']) == 0
    summary = json.loads(pathlib.Path('summary.json').read_text())
    assert summary['outputs']['batching'] == {'batch_size': 3, 'sized_by': 'max_batch'}
    assert summary['outputs']['kernels'] == 'e3nn' and summary['outputs']['n_frames'] == 8
    assert summary['outputs']['precision'] == 'float64'  # dtype auto on the CPU
    records = json.loads(pathlib.Path('md.json').read_text())
    assert [r['seed'] for r in records] == [4, 5, 6, 7] and all(r['steps'] == 60 for r in records)
    assert all(len(r['series']['temperature']) == 6 for r in records)


def test_cli_md_is_one_batched_run_with_a_verdict_per_replica(mace_model_file, tmp_path, monkeypatch):
    """Three structures x two temperatures: ``capthermo-mlip md`` gives exactly the series of one batched run of all
    six replicas (the Langevin noise of a batch is drawn for all its atoms at once, so replicas run apart would
    differ), the structure with two atoms 0.5 Å apart breaks at both temperatures, the others finish, and only
    replicas that reached a frame step contribute frames."""
    import torch

    from aiida_capthermo.compute.mlip import main
    from aiida_capthermo.ml.thermal import load_torchsim_model, run_replicas

    monkeypatch.chdir(tmp_path)
    squeezed = small_cell(False, seed=2, rattle=0.0)
    squeezed.positions[3] = squeezed.positions[2] + [0.5, 0.0, 0.0]  # Ag 3 onto Ag 2
    cells = [small_cell(False, seed=1, rattle=0.0), squeezed, small_cell(True, seed=3, rattle=0.0)]
    LabelledSet.from_atoms_list(cells, x=np.array([0.0, 0.0, 0.5])).save('start.npz')
    config = {'temperatures': [150.0, 300.0], 'steps': 20, 'stride': 1, 'frame_stride': 10, 'device': 'cpu',
              'seed': 2, 'threads': 1}
    pathlib.Path('config.json').write_text(json.dumps(config))
    assert main(['md', str(mace_model_file), 'start.npz', '--config', 'config.json']) == 0
    records = json.loads(pathlib.Path('md.json').read_text())
    assert [(r['index'], r['temperature'], r['target_temperature']) for r in records] == [
        (i, t, t) for i in range(3) for t in (150.0, 300.0)]
    for record in records:
        if record['index'] == 1:
            assert not record['stable'] and record['steps'] == 1 and 'Ag-Ag atoms' in record['broke']
            assert record['min_distance'] < 1.0 and record['n_frames'] == 0
        else:
            assert record['broke'] is None and record['steps'] == 20 and record['n_frames'] == 2
            assert record['min_distance'] > 2.0
    assert LabelledSet.load('frames.npz').x.tolist() == [0.0] * 4 + [0.5] * 4

    torch.set_num_threads(1)
    trajectories = run_replicas(
        load_torchsim_model(str(mace_model_file), 'cpu', 'float64'), [cells[r['index']] for r in records],
        [r['temperature'] for r in records], [r['seed'] for r in records], steps=20, timestep=1.0, friction=0.01,
        stride=1, batch_seed=2)
    for record, trajectory in zip(records, trajectories):
        np.testing.assert_allclose(record['series']['temperature'], trajectory.temperature, rtol=1e-10)
        np.testing.assert_allclose(record['series']['potential_energy'], trajectory.potential_energy, rtol=1e-10)


def test_mlip_md_calcjob_localhost(aiida_profile, script_code, mace_model_file):
    from aiida.plugins import CalculationFactory

    model = ModelData.from_files(kind='mace', files={'tiny.model': mace_model_file}, main_file='tiny.model').store()
    structures = {'a': orm.StructureData(ase=small_cell(False, seed=1, rattle=0.0)),
                  'b': orm.StructureData(ase=small_cell(True, seed=1, rattle=0.0))}
    parameters = orm.Dict({'temperatures': [150.0], 'steps': 40, 'stride': 10, 'frame_stride': 20, 'device': 'cpu'})
    results, node = engine.run_get_node(CalculationFactory('capthermo.mlip_md'), code=script_code(
        'capthermo-mlip', 'capthermo.mlip_md'), model=model, structures=structures, parameters=parameters)
    assert node.is_finished_ok, node.exit_message
    verdict = results['results'].get_dict()
    assert verdict['n_replicas'] == 2 and [r['key'] for r in verdict['replicas']] == ['a', 'b']
    assert all(r['steps'] == 40 for r in verdict['replicas'])
    trajectories = results['trajectories']
    assert trajectories.get_array('temperature_1').shape == (4,)
    assert results['frames'].n_structures == 4 and results['frames'].base.attributes.get('origin') == 'md'
    # Bad settings are refused before submission with the MdConfig message.
    with pytest.raises(ValueError, match='frictoin'):
        engine.run(CalculationFactory('capthermo.mlip_md'), code=script_code('capthermo-mlip'), model=model,
                   structures=structures, parameters=orm.Dict({'frictoin': 0.1}))


def test_md_job_stops_at_its_wall_clock_limit_with_an_exit_code(aiida_profile, script_code, mace_model_file):
    """Nothing hangs: an MD job of ten million steps with a walltime of 6 s gets max_seconds 4.8 (80 %) in its
    config, also where its parameters give another (a protocol's 3600 s), stops there with the walltime exit
    code (400) and its summary says why, well before the direct scheduler (which enforces no walltime) would ever
    end it. A unit check: the alarm interrupts a loop that never returns."""
    import time

    from aiida.plugins import CalculationFactory

    from aiida_capthermo.compute.summary import WallClockLimitError, wall_clock_limit

    start = time.perf_counter()
    with pytest.raises(WallClockLimitError, match='wall-clock limit of 0 s'), wall_clock_limit(0.3):
        while True:
            pass
    assert time.perf_counter() - start < 2.0
    model = ModelData.from_files(kind='mace', files={'tiny.model': mace_model_file}, main_file='tiny.model').store()
    structures = {'a': orm.StructureData(ase=small_cell(False, seed=1, rattle=0.0))}
    parameters = orm.Dict({'temperatures': [150.0], 'steps': 10_000_000, 'stride': 1000, 'device': 'cpu',
                           'max_seconds': 3600})
    start = time.perf_counter()
    _, node = engine.run_get_node(
        CalculationFactory('capthermo.mlip_md'), code=script_code('capthermo-mlip', 'capthermo.mlip_md'), model=model,
        structures=structures, parameters=parameters, metadata={'options': {'max_wallclock_seconds': 6}})
    assert node.exit_status == 400, (node.exit_status, node.exit_message)
    assert time.perf_counter() - start < 60
    summary = json.loads(node.outputs.retrieved.get_object_content('summary.json'))
    assert summary['config']['max_seconds'] == pytest.approx(4.8) and summary['error_kind'] == 'walltime'
    assert 'wall-clock limit of 5 s' in summary['error']


@pytest.mark.parametrize('temperatures', [[-100.0], [float('nan')], [0.0]])
def test_md_refuses_temperatures_it_would_hang_on(temperatures):
    """A negative, zero or NaN target temperature gives NaN momenta and a run that never ends: refused at once, by
    the settings and by the engine itself."""
    from pydantic import ValidationError

    from aiida_capthermo.ml.settings import MdConfig, ThermalMdConfig
    from aiida_capthermo.ml.thermal import HarmonicModel, run_replicas

    for config in (MdConfig, ThermalMdConfig):
        with pytest.raises(ValidationError):
            config(temperatures=temperatures)
    atoms = small_cell(False, seed=0, rattle=0.0)
    model = HarmonicModel(atoms.positions, np.eye(3 * len(atoms)))
    with pytest.raises(ValueError, match='finite and > 0 K'):
        run_replicas(model, [atoms], temperatures, [0], steps=5)


def test_every_model_settings_round_trips_through_its_dump():
    """Workchains store settings as Dicts and the jobs validate them again: a dump of the defaults (max_batch
    'auto', dtype 'auto'...) must validate to the same settings, and an explicit 'auto' must be accepted."""
    from aiida_capthermo.ml.settings import MdConfig, ModesConfig, PhononConfig, ScreenConfig, ThermalMdConfig

    for config in (MdConfig, ThermalMdConfig, ScreenConfig, PhononConfig, ModesConfig):
        assert config.model_validate(config().model_dump()) == config()
    for config in (MdConfig, ThermalMdConfig, ScreenConfig):
        assert config.model_validate({'max_batch': 'auto', 'dtype': 'auto'}).max_batch == 'auto'
    assert PhononConfig.model_validate({'batch_size': 'auto'}).batch_size == 'auto'


def test_predict_mace_gives_forces_per_atom_and_refuses_nan(aiida_profile, mace_model_file, tmp_path):
    """`capthermo predict` with a MACE model: energy, stress and every atom's force as the MD engine's model and
    MACE's own ASE calculator give them (1e-6 eV/Å), written to JSON and extxyz; atoms on top of each other are an
    error (one line), not "energy nan"."""
    import ase.io
    import torch
    import torch_sim as ts
    from click.testing import CliRunner

    from aiida_capthermo.cli.main import cli
    from aiida_capthermo.data.model import ModelData
    from aiida_capthermo.ml.thermal import load_torchsim_model

    model = ModelData.from_files(kind='mace', files={'m.model': mace_model_file}, main_file='m.model').store()
    cells = [small_cell(True, seed=3, rattle=0.05), small_cell(False, seed=4, rattle=0.05)]
    ase.io.write(tmp_path / 'cells.extxyz', cells)
    runner = CliRunner()
    result = runner.invoke(cli, ['predict', str(model.pk), str(tmp_path / 'cells.extxyz'), '--output',
                                 str(tmp_path / 'p.json')])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / 'p.json').read_text())
    reference = load_torchsim_model(str(mace_model_file), 'cpu', 'float64')(
        ts.io.atoms_to_state(cells, 'cpu', torch.float64))
    np.testing.assert_allclose(np.concatenate([r['forces'] for r in records]), reference['forces'].numpy(),
                               atol=1e-8)
    np.testing.assert_allclose([r['energy'] for r in records], reference['energy'].numpy(), atol=1e-8)
    from mace.calculators import MACECalculator  # MACE's own ASE calculator, independent of the MD engine's path

    calculator = MACECalculator(model_paths=str(mace_model_file), device='cpu', default_dtype='float64')
    for record, cell in zip(records, cells):
        cell = cell.copy()
        cell.calc = calculator
        np.testing.assert_allclose(record['forces'], cell.get_forces(), atol=1e-6)
        assert record['energy'] == pytest.approx(cell.get_potential_energy(), abs=1e-6)
    assert records[0]['structure'].endswith('cells.extxyz@0') and records[0]['units']['forces'] == 'eV/Å'
    result = runner.invoke(cli, ['predict', model.uuid, str(tmp_path / 'cells.extxyz'), '--output',
                                 str(tmp_path / 'p.extxyz')])
    frames = ase.io.read(tmp_path / 'p.extxyz', ':')
    np.testing.assert_allclose(frames[1].arrays['predicted_forces'], records[1]['forces'], atol=1e-7)  # extxyz digits
    assert frames[0].info['predicted_energy'] == pytest.approx(records[0]['energy'])
    collapsed = cells[0].copy()
    collapsed.positions[1] = collapsed.positions[0]
    ase.io.write(tmp_path / 'collapsed.extxyz', collapsed)
    result = runner.invoke(cli, ['predict', str(model.pk), str(tmp_path / 'collapsed.extxyz')])
    assert result.exit_code == 1 and 'non-finite' in result.output and 'Traceback' not in result.output, \
        result.output


def test_a_truncated_or_corrupted_model_is_refused_in_one_line(aiida_profile, mace_model_file, tmp_path):
    """A MACE model file cut in half, or with one byte changed, is refused before any job runs: by the ports that
    take a potential (the MD, screen and thermal jobs' validator) and by ModelData.predict, in one line naming the
    node, not with torch's UnpicklingError. The intact file passes."""
    from aiida_capthermo.calculations.mlip import validate_mace_model
    from aiida_capthermo.data.model import ModelData

    content = mace_model_file.read_bytes()
    intact = ModelData.from_files(kind='mace', files={'m.model': mace_model_file}, main_file='m.model').store()
    assert intact.integrity_error() is None and validate_mace_model(intact, None) is None
    (tmp_path / 'half.model').write_bytes(content[:len(content) // 2])
    half = ModelData.from_files(kind='mace', files={'m.model': tmp_path / 'half.model'}, main_file='m.model').store()
    message = validate_mace_model(half, None)
    assert message.startswith(f'model {half.pk} (mace): its file ') and 'not a readable torch archive' in message
    flipped = bytearray(content)
    archive_member = content.find(b'data.pkl') + 200  # inside the pickled model, not the zip directory
    flipped[archive_member] ^= 0xFF
    (tmp_path / 'flipped.model').write_bytes(bytes(flipped))
    corrupted = ModelData.from_files(kind='mace', files={'m.model': tmp_path / 'flipped.model'},
                                     main_file='m.model').store()
    assert 'fails its CRC check' in validate_mace_model(corrupted, None)
    with pytest.raises(ValueError, match=f'model {half.pk} \\(mace\\)'):
        half.predict([small_cell(True, seed=3)])
