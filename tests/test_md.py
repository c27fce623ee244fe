"""Langevin MD and the stability verdict (``ml.md``), ``capthermo-mlip md`` and ``MlipMdCalcJob`` on localhost."""

from __future__ import annotations

import itertools
import json
import pathlib

import numpy as np
import pytest
from aiida import engine, orm
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.ml.md import MdConfig, langevin_stability, min_pair_distance
from mlip_helpers import mace_model_file, small_cell  # noqa: F401 -- the module fixture; tests/ is on sys.path


class PairCollapse(Calculator):
    """A constant attraction of 5 eV/Å between atoms 0 and 1 along their (minimum-image) bond: they must collide."""

    implemented_properties = ['energy', 'forces']

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        vector = self.atoms.get_distance(0, 1, mic=True, vector=True)
        unit = vector / np.linalg.norm(vector)
        forces = np.zeros((len(self.atoms), 3))
        forces[0], forces[1] = 5.0 * unit, -5.0 * unit
        self.results = {'energy': 5.0 * float(np.linalg.norm(vector)), 'forces': forces}


def test_min_pair_distance_matches_brute_force_over_images():
    atoms = small_cell(True, seed=3, rattle=0.3)
    distance, pair = min_pair_distance(atoms)
    cell = np.asarray(atoms.cell)
    best, best_pair = np.inf, None
    symbols = atoms.get_chemical_symbols()
    for i, j in itertools.combinations(range(len(atoms)), 2):
        for shift in itertools.product((-1, 0, 1), repeat=3):
            d = np.linalg.norm(atoms.positions[j] + np.asarray(shift) @ cell - atoms.positions[i])
            if d < best:
                best, best_pair = d, '-'.join(sorted((symbols[i], symbols[j])))
    assert distance == pytest.approx(best, abs=1e-10) and pair == best_pair


def test_langevin_holds_the_target_temperature():
    """108 Cu atoms (EMT) at 300 K: the mean kinetic temperature of the second half is the target within 8 % (the
    standard error of the mean is about 2 % here), no pair comes close, and the verdict says stable."""
    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat((3, 3, 3))
    result = langevin_stability(atoms, EMT(), 300.0, steps=3000, timestep=2.0, friction=0.02, seed=1, stride=10)
    verdict = result.verdict()
    assert verdict['stable'] and verdict['broke'] is None and verdict['steps'] == 3000
    assert verdict['time_ps'] == pytest.approx(6.0)
    assert abs(verdict['mean_temperature'] - 300.0) < 24.0
    assert 2.0 < verdict['min_distance'] < 2.55 and verdict['closest_pair'] == 'Cu-Cu'
    assert len(result.temperature) == 300 and np.all(np.isfinite(result.potential_energy))
    again = langevin_stability(atoms, EMT(), 300.0, steps=50, timestep=2.0, friction=0.02, seed=1, stride=10)
    np.testing.assert_allclose(again.temperature, result.temperature[:5])  # seeded: reproducible


def test_collapse_stops_the_run_and_fails_the_verdict():
    atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
    result = langevin_stability(atoms, PairCollapse(), 300.0, steps=2000, timestep=1.0, seed=0, stride=5,
                                min_distance=1.0)
    verdict = result.verdict()
    assert not verdict['stable'] and 'Cu-Cu atoms' in verdict['broke'] and verdict['steps'] < 2000
    assert verdict['min_distance'] < 1.0


def test_md_config_rejects_unknown_keys():
    with pytest.raises(Exception, match='extra'):
        MdConfig.model_validate({'temperatures': [300.0], 'frictoin': 0.1})
    with pytest.raises(Exception, match='multiple of stride'):  # frames only on recorded steps
        MdConfig.model_validate({'stride': 10, 'frame_stride': 25})


def test_cli_md_runs_replicas_and_writes_frames(mace_model_file, tmp_path, monkeypatch):
    from aiida_capthermo.compute.mlip import main

    monkeypatch.chdir(tmp_path)
    cells = [small_cell(False, seed=1, rattle=0.0), small_cell(True, seed=2, rattle=0.0)]
    LabelledSet.from_atoms_list(cells, x=np.array([0.0, 0.5])).save('start.npz')
    config = {'temperatures': [100.0, 200.0], 'steps': 60, 'stride': 10, 'frame_stride': 30, 'device': 'cpu',
              'seed': 4}
    pathlib.Path('config.json').write_text(json.dumps(config))
    assert main(['md', str(mace_model_file), 'start.npz', '--config', 'config.json']) == 0
    summary = json.loads(pathlib.Path('summary.json').read_text())
    assert summary['error'] is None and summary['outputs']['n_replicas'] == 4
    records = json.loads(pathlib.Path('md.json').read_text())
    assert [(r['index'], r['temperature'], r['seed']) for r in records] == [
        (0, 100.0, 4), (0, 200.0, 5), (1, 100.0, 6), (1, 200.0, 7)]
    assert all(len(r['series']['temperature']) == 6 for r in records)
    frames = LabelledSet.load('frames.npz')
    assert len(frames) == 8 == summary['outputs']['n_frames']  # two per replica (steps 30 and 60)
    assert frames.x.tolist() == [0.0] * 4 + [0.5] * 4 and set(frames.origin) == {'md'}
    assert frames.temperature.tolist() == [100.0, 100.0, 200.0, 200.0] * 2


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
