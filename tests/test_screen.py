"""Solid-solution screen: MLIP relaxation/phonons, ``capthermo-mlip screen``, MlipScreenCalcJob and the workchain.

The potential is a real tiny MACE (8 channels, max_L 0, r_max 4 Å, 2 epochs, float64, CPU), trained once per
module by ``mace_run_train`` on twelve rattled 10-atom Ag3S(I,Br) cells labelled with ASE's Lennard-Jones
calculator. It is no physical model of Ag3SBr_xI_(1-x); the tests check the machinery against independent numbers
(energies and forces re-evaluated, a hand-made Hessian, the configuration counts of the 2x2x2 cell).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from aiida import engine, orm
from aiida.common.links import LinkType

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.core.structures import antiperovskite
from aiida_capthermo.data.model import ModelData
from mlip_helpers import mace_model_file, small_cell  # noqa: F401 -- the module fixture; tests/ is on sys.path

PROTOTYPE = {'a': 'Ag', 'b': 'S', 'host': 'I', 'guest': 'Br', 'a_host': 4.869, 'a_guest': 4.793}
THZ_PER_SQRT_EV_A2_AMU = 15.633302  # sqrt(eV / (Å^2 amu)) / (2 pi) in THz


@pytest.fixture(scope='module')
def calc(mace_model_file):
    import torch

    from aiida_capthermo.ml.mlip import load_calculator

    torch.set_num_threads(1)
    return load_calculator(str(mace_model_file), device='cpu', dtype='float64')


@pytest.fixture
def model_node(aiida_profile, mace_model_file):
    return ModelData.from_files(kind='mace', files={'tiny.model': mace_model_file}, main_file='tiny.model',
                                r_max=4.0).store()


# ---------------------------------------------------------------------------------------------- compute side
def test_relax_lowers_energy_and_forces(calc, mace_model_file):
    from aiida_capthermo.ml.mlip import load_calculator, relax

    start = small_cell(True, seed=7)
    relaxed, info = relax(start, calc, fmax=0.01, steps=300, cell=True)
    assert info['converged'] and 0 < info['steps'] < 300
    assert info['energy'] < info['initial_energy'] - 1e-3
    assert np.allclose(start.positions, small_cell(True, seed=7).positions)  # input untouched
    # independent re-evaluation with a fresh calculator at the relaxed geometry
    check = relaxed.copy()
    check.calc = load_calculator(str(mace_model_file), 'cpu')
    assert check.get_potential_energy() == pytest.approx(info['energy'], abs=1e-8)
    assert np.linalg.norm(check.get_forces(), axis=1).max() < 0.01
    # cell degrees of freedom: |stress| * volume bounded by fmax as well
    assert np.abs(check.get_stress()).max() * check.get_volume() < 0.01 * 1.01
    assert not np.allclose(relaxed.cell.array, start.cell.array)
    fixed, fixed_info = relax(start, calc, fmax=0.01, steps=300, cell=False)
    assert np.allclose(fixed.cell.array, start.cell.array) and fixed_info['converged']


def test_harmonic_phonons_against_hand_made_hessian(calc):
    from aiida_capthermo.ml.mlip import harmonic_phonons, relax

    relaxed, _ = relax(small_cell(True, seed=3), calc, fmax=0.005, steps=300)
    phonons = harmonic_phonons(relaxed, calc, supercell=(1, 1, 1), displacement=0.01, mesh=(2, 1, 1),
                               imaginary_threshold=-0.1)
    gamma = phonons['gamma_frequencies']
    assert gamma.shape == (30,)
    assert np.sort(np.abs(gamma))[:3].max() < 0.01  # three acoustic modes at zero
    # independent Γ frequencies: central-difference Hessian of the periodic cell, mass weighted
    n = len(relaxed)
    hessian = np.zeros((3 * n, 3 * n))
    h = 0.01
    work = relaxed.copy()
    work.calc = calc
    for i in range(n):
        for a in range(3):
            forces = []
            for sign in (1, -1):
                work.positions = relaxed.positions.copy()
                work.positions[i, a] += sign * h
                forces.append(work.get_forces().reshape(-1))
            hessian[3 * i + a] = -(forces[0] - forces[1]) / (2 * h)
    hessian = 0.5 * (hessian + hessian.T)
    masses = np.repeat(relaxed.get_masses(), 3)
    eigenvalues = np.linalg.eigvalsh(hessian / np.sqrt(np.outer(masses, masses)))
    reference = np.sort(np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * THZ_PER_SQRT_EV_A2_AMU)
    assert np.allclose(gamma, reference, atol=0.05)
    assert phonons['n_imaginary_gamma'] == int(np.sum(reference < -0.1))
    assert phonons['mesh_frequencies'].shape == (2, 30)
    assert phonons['n_imaginary'] == int(np.sum(phonons['mesh_frequencies'] < -0.1))
    assert phonons['min_frequency'] == pytest.approx(phonons['mesh_frequencies'].min())


def test_screen_config_validation():
    from pydantic import ValidationError

    from aiida_capthermo.ml.mlip import ScreenConfig

    assert ScreenConfig().fmax == 0.01 and ScreenConfig().relax_cell is True
    with pytest.raises(ValidationError, match='extra'):
        ScreenConfig(fmaxx=0.1)
    with pytest.raises(ValidationError, match='three positive integers'):
        ScreenConfig(supercell=[2, 2])
    with pytest.raises(ValidationError):
        ScreenConfig(device='tpu')


# ---------------------------------------------------------------------------------------------- console script
def test_console_script_screen(mace_model_file, calc, tmp_path, monkeypatch):
    from aiida_capthermo.cli.mlip import main
    from aiida_capthermo.ml.mlip import relax

    monkeypatch.chdir(tmp_path)
    cells = [small_cell(False, seed=11), small_cell(True, seed=12)]
    LabelledSet.from_atoms_list(cells, x=np.array([0.0, 0.5]), origin=np.array(['a', 'b'])).save('in.npz')
    pathlib.Path('config.json').write_text(json.dumps({'fmax': 0.01, 'max_steps': 200, 'phonons': True,
                                                       'device': 'cpu'}))
    assert main(['screen', str(mace_model_file), 'in.npz', '--config', 'config.json']) == 0
    summary = json.loads(pathlib.Path('summary.json').read_text())
    assert summary['error'] is None and summary['outputs']['n_relaxed'] == 2 and summary['units']['frequency'] == 'THz'
    records = json.loads(pathlib.Path('screen.json').read_text())
    relaxed = LabelledSet.load('relaxed.npz')
    assert len(relaxed) == 2 and np.allclose(relaxed.x, [0.0, 0.5])
    for index, record in enumerate(records):
        assert record['converged'] and record['n_imaginary'] is not None and len(record['gamma_frequencies']) == 30
        _, direct = relax(cells[index], calc, fmax=0.01, steps=200)  # the same relaxation in-process
        assert record['energy'] == pytest.approx(direct['energy'], abs=1e-6)
        assert relaxed.energy[index] == pytest.approx(record['energy'], abs=1e-10)
        assert record['energy_per_atom'] == pytest.approx(record['energy'] / 10)
    assert summary['outputs']['lowest_energy_per_atom'] == pytest.approx(min(r['energy_per_atom'] for r in records))
    # failures: unknown config key, missing model -> exit 1 with the error in the summary
    pathlib.Path('bad.json').write_text(json.dumps({'fmax': 0.01, 'stepz': 3}))
    assert main(['screen', str(mace_model_file), 'in.npz', '--config', 'bad.json', '--summary', 'bad.json.out']) == 1
    assert 'stepz' in json.loads(pathlib.Path('bad.json.out').read_text())['error']
    assert main(['screen', 'missing.model', 'in.npz', '--summary', 'missing.json']) == 1
    assert json.loads(pathlib.Path('missing.json').read_text())['error']


# ---------------------------------------------------------------------------------------------- CalcJob
def test_calcjob_on_localhost(model_node, script_code):
    from aiida_capthermo.calculations.mlip import MlipScreenCalcJob
    from aiida_capthermo.data.structures import set_structure_metadata

    structures = {'b_second': set_structure_metadata(orm.StructureData(ase=small_cell(True, seed=21)), x=0.5),
                  'a_first': set_structure_metadata(orm.StructureData(ase=small_cell(False, seed=22)), x=0.0)}
    builder = MlipScreenCalcJob.get_builder()
    builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.model = model_node
    builder.structures = structures
    builder.parameters = orm.Dict({'fmax': 0.01, 'max_steps': 200, 'device': 'cpu', 'phonons': True,
                                   'imaginary_threshold': -0.1})
    builder.metadata.options.max_wallclock_seconds = 300
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, node.exit_status
    assert set(results['relaxed']) == {'a_first', 'b_second'}
    records = results['results'].get_dict()
    for key, structure in results['relaxed'].items():
        assert records[key]['converged'] and records[key]['max_force'] < 0.01
        assert isinstance(records[key]['n_imaginary'], int) and 'gamma_frequencies' not in records[key]
        assert records[key]['n_imaginary'] == records[key]['n_imaginary_gamma']  # no mesh: Γ only
        assert (records[key]['min_frequency'] < -0.1) == (records[key]['n_imaginary'] > 0)
        assert structure.get_formula() == structures[key].get_formula()
        assert structure.base.attributes.get('capthermo_x') == structures[key].base.attributes.get('capthermo_x')
    energies = results['energies']
    assert energies.base.attributes.get('keys') == ['a_first', 'b_second']
    assert np.allclose(energies.get_array('energy'), [records['a_first']['energy'], records['b_second']['energy']])
    assert results['summary']['outputs']['n_converged'] == 2


def test_calcjob_failed_structures(model_node, script_code):
    """An element the model does not know fails its structure only; when all fail the job exits 311."""
    from ase.build import bulk

    from aiida_capthermo.calculations.mlip import MlipScreenCalcJob

    alien = orm.StructureData(ase=bulk('Cu', 'fcc', a=3.6, cubic=True))
    builder = MlipScreenCalcJob.get_builder()
    builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.model = model_node
    builder.structures = {'alien': alien, 'ok': orm.StructureData(ase=small_cell(False, seed=5))}
    builder.parameters = orm.Dict({'max_steps': 100, 'device': 'cpu'})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok
    assert set(results['relaxed']) == {'ok'} and 'error' in results['results']['alien']
    assert results['energies'].base.attributes.get('keys') == ['ok']
    builder.structures = {'alien': alien}
    _, node = engine.run_get_node(builder)
    assert node.exit_status == MlipScreenCalcJob.exit_codes.ERROR_NO_STRUCTURE_RELAXED.status
    assert 'no structure was relaxed' in node.exit_message


def test_calcjob_input_validation(aiida_profile, model_node, tmp_path, script_code):
    from aiida_capthermo.calculations.mlip import MlipScreenCalcJob

    (tmp_path / 'state.pt').write_bytes(b'not a mace model')
    gnn = ModelData.from_files(kind='gnn', files={'state.pt': tmp_path / 'state.pt'}, main_file='state.pt').store()
    builder = MlipScreenCalcJob.get_builder()
    builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.structures = {'a': orm.StructureData(ase=small_cell(False, seed=1))}
    with pytest.raises(ValueError, match='MACE potential'):  # port validators run on assignment
        builder.model = gnn
    with pytest.raises(ValueError, match='invalid parameters'):
        builder.parameters = orm.Dict({'fmax': -1.0})
    with pytest.raises(ValueError, match='at least one structure'):
        builder.structures = {}


# ---------------------------------------------------------------------------------------------- workchain
def test_screen_workchain_2x2x2(model_node, script_code):
    from aiida_capthermo.core.structures import vegard_lattice_parameter
    from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

    builder = SolidSolutionScreenWorkChain.get_builder()
    builder.model = model_node
    builder.prototype = orm.Dict(PROTOTYPE)
    builder.supercell = orm.List([2, 2, 2])
    builder.compositions = orm.List([0.125, 0.25])
    builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.parameters = orm.Dict({'fmax': 0.05, 'max_steps': 100, 'device': 'cpu'})
    builder.options = orm.Dict({'max_wallclock_seconds': 600, 'resources': {'num_machines': 1}})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, node.exit_status
    compositions = results['compositions']
    assert set(compositions) == {'x_0p125', 'x_0p250'}
    expected = {'x_0p125': (0.125, [8], 8), 'x_0p250': (0.25, [4, 12, 12], 28)}
    for key, (x, multiplicities, arrangements) in expected.items():
        table = compositions[key]['configurations'].get_dict()
        assert table['n_sites'] == 8 and table['n_permutations'] == 48 and not table['sampled']
        assert sorted(c['multiplicity'] for c in table['configurations'].values()) == multiplicities
        assert table['n_arrangements'] == arrangements == sum(multiplicities)
        assert table['lattice_parameter'] == pytest.approx(vegard_lattice_parameter(x, 4.869, 4.793))
        ranking = compositions[key]['ranking'].get_dict()
        assert len(ranking['keys']) == len(multiplicities)
        assert ranking['energy_per_atom'] == sorted(ranking['energy_per_atom'])
        assert sorted(ranking['multiplicity']) == multiplicities
        lowest = compositions[key]['lowest']
        symbols = lowest.get_ase().get_chemical_symbols()
        assert len(symbols) == 40 and symbols.count('Br') == round(8 * x) and symbols.count('I') == 8 - round(8 * x)
        assert lowest.base.attributes.get('capthermo_x') == pytest.approx(x)
        # the lowest structure is the relaxed output of the job, with the energy the ranking reports
        job = lowest.base.links.get_incoming(link_type=LinkType.CREATE).one().node
        assert job.outputs.results[ranking['lowest']]['energy_per_atom'] == ranking['energy_per_atom'][0]
    # the enumerated inputs of the job: Vegard cell and multiplicity attribute
    job = compositions['x_0p250']['lowest'].base.links.get_incoming(link_type=LinkType.CREATE).one().node
    for structure in job.inputs.structures.values():
        assert np.allclose(structure.cell, np.eye(3) * 2 * vegard_lattice_parameter(0.25, 4.869, 4.793))
        assert structure.base.attributes.get('capthermo_multiplicity') in (4, 12)


def test_enumeration_sampling_and_parent(aiida_profile):
    """More classes than ``max_configurations``: a seeded sample of distinct classes; a given parent is rescaled."""
    from aiida_capthermo.core.structures import vegard_lattice_parameter
    from aiida_capthermo.workflows.screen import enumerate_structures

    settings = {**PROTOTYPE, 'supercell': [2, 2, 2], 'x': 0.5, 'max_configurations': 3, 'seed': 4}
    parent = orm.StructureData(ase=antiperovskite('Ag', 'S', 'I', 5.0))
    first = enumerate_structures(orm.Dict(settings), parent=parent)
    again = enumerate_structures(orm.Dict(settings), parent=parent)
    table = first['configurations'].get_dict()
    assert table['n_classes'] > 3 and table['sampled'] and len(table['configurations']) == 3
    assert table == again['configurations'].get_dict()  # same seed, same sample
    assert table['n_arrangements'] == 70
    for key in table['configurations']:
        atoms = first[key].get_ase()
        assert atoms.get_chemical_symbols().count('Br') == 4
        assert np.allclose(atoms.cell.lengths(), 2 * vegard_lattice_parameter(0.5, 4.869, 4.793))
    # multiplicities of the sample are true orbit sizes: all 70 arrangements split into the Burnside count
    full = enumerate_structures(orm.Dict({**settings, 'max_configurations': 100}))
    full_table = full['configurations'].get_dict()
    assert not full_table['sampled'] and len(full_table['configurations']) == table['n_classes']
    assert sum(c['multiplicity'] for c in full_table['configurations'].values()) == 70
    by_sites = {tuple(c['occupied_sites']): c['multiplicity'] for c in full_table['configurations'].values()}
    for c in table['configurations'].values():
        assert by_sites[tuple(c['occupied_sites'])] == c['multiplicity']


def test_screen_workchain_validation(model_node, script_code, tmp_path):
    from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

    def builder_with(**changes):
        builder = SolidSolutionScreenWorkChain.get_builder()
        builder.model = model_node
        builder.prototype = orm.Dict(PROTOTYPE)
        builder.compositions = orm.List([0.25])
        builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
        for key, value in changes.items():
            builder[key] = value
        return builder

    with pytest.raises(ValueError, match='not a multiple of 1/8'):
        engine.run(builder_with(compositions=orm.List([0.3])))
    with pytest.raises(ValueError, match='compositions is empty'):
        engine.run(builder_with(compositions=orm.List([])))
    with pytest.raises(ValueError, match=r'not a fraction in \[0, 1\]'):
        engine.run(builder_with(compositions=orm.List([1.5])))
    with pytest.raises(ValueError, match='misses'):
        engine.run(builder_with(prototype=orm.Dict({'a': 'Ag', 'b': 'S', 'host': 'I'})))
    tetragonal = antiperovskite('Ag', 'S', 'I', 4.869)
    tetragonal.set_cell(tetragonal.cell.array * [1, 1, 1.05], scale_atoms=True)
    with pytest.raises(ValueError, match='parent: space group'):
        engine.run(builder_with(parent=orm.StructureData(ase=tetragonal)))
    (tmp_path / 'state.pt').write_bytes(b'not a mace model')
    gnn = ModelData.from_files(kind='gnn', files={'state.pt': tmp_path / 'state.pt'}, main_file='state.pt').store()
    with pytest.raises(ValueError, match='needs a MACE potential'):
        engine.run(builder_with(model=gnn))


def test_screen_workchain_job_failure(model_node, script_code):
    """A species the model does not know: the job fails (311) and the workchain says which composition (400)."""
    from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

    builder = SolidSolutionScreenWorkChain.get_builder()
    builder.model = model_node
    builder.prototype = orm.Dict({**PROTOTYPE, 'a': 'Cu'})
    builder.supercell = orm.List([1, 1, 1])
    builder.compositions = orm.List([1.0])
    builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.parameters = orm.Dict({'device': 'cpu'})
    _, node = engine.run_get_node(builder)
    assert node.exit_status == SolidSolutionScreenWorkChain.exit_codes.ERROR_SCREEN_FAILED.status
    assert 'x_1p000' in node.exit_message and '311' in node.exit_message
