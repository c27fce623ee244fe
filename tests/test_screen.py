"""Solid-solution screen: batched MLIP relaxation and phonons, ``capthermo-mlip screen``, the screen CalcJob, its
restart workchain and SolidSolutionScreenWorkChain.

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
from aiida_capthermo.workflows.report import pdf_beside

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
    # cell degrees of freedom: the cell force |stress| * volume / N (FrechetCellFilter) bounded by fmax as well
    assert np.abs(check.get_stress()).max() * check.get_volume() / len(check) < 0.01 * 1.01
    assert not np.allclose(relaxed.cell.array, start.cell.array)
    fixed, fixed_info = relax(start, calc, fmax=0.01, steps=300, cell=False)
    assert np.allclose(fixed.cell.array, start.cell.array) and fixed_info['converged']


def test_relax_batch_against_single_points(calc, mace_model_file):
    """Batched FIRE: every structure converged by an independent re-evaluation, energies of ASE BFGS; too few steps:
    reported unconverged, not dropped; a fixed cell stays fixed."""
    from aiida_capthermo.ml.mlip import relax, relax_batch
    from aiida_capthermo.ml.thermal import load_torchsim_model

    model = load_torchsim_model(str(mace_model_file), 'cpu', 'float64', compute_stress=True)
    cells = [small_cell(bool(i % 2), seed=30 + i) for i in range(4)]
    results = relax_batch(model, cells, fmax=0.01, steps=1000, cell=True)
    assert len(results) == 4
    for start, (relaxed, info) in zip(cells, results):
        assert info['converged'] and 0 < info['steps'] < 1000 and info['energy'] < info['initial_energy']
        check = relaxed.copy()
        check.calc = calc
        assert check.get_potential_energy() == pytest.approx(info['energy'], abs=1e-8)
        assert np.linalg.norm(check.get_forces(), axis=1).max() < 0.01
        # cell force = virial / N (ASE's FrechetCellFilter convention) below fmax
        assert np.abs(check.get_stress(voigt=False)).max() * check.get_volume() / len(check) < 0.01 * np.sqrt(3)
        _, bfgs = relax(start, calc, fmax=0.01, steps=500)  # the same minimum by another optimiser
        assert info['energy_per_atom'] == pytest.approx(bfgs['energy_per_atom'], abs=2e-4)
    short = relax_batch(model, cells[:2], fmax=1e-4, steps=3, cell=False)
    assert [info['converged'] for _, info in short] == [False, False] and [i['steps'] for _, i in short] == [3, 3]
    assert all(np.allclose(relaxed.cell.array, start.cell.array) for (relaxed, _), start in zip(short, cells))


def test_harmonic_phonons_against_hand_made_hessian(calc, mace_model_file):
    from aiida_capthermo.ml.mlip import batched_forces, calculator_forces, harmonic_phonons, relax
    from aiida_capthermo.ml.thermal import load_torchsim_model

    relaxed, _ = relax(small_cell(True, seed=3), calc, fmax=0.005, steps=300)
    phonons = harmonic_phonons(relaxed, calculator_forces(calc), supercell=(1, 1, 1), displacement=0.01,
                               mesh=(2, 1, 1), imaginary_threshold=-0.1)
    batched = harmonic_phonons(relaxed, batched_forces(load_torchsim_model(str(mace_model_file), 'cpu', 'float64'),
                                                       batch_size=7), supercell=(1, 1, 1), displacement=0.01)
    assert np.allclose(batched['force_constants'], phonons['force_constants'], atol=1e-8)  # batches of 7 cells
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

    from aiida_capthermo.ml.settings import ScreenConfig

    assert ScreenConfig().fmax == 0.01 and ScreenConfig().relax_cell is True and ScreenConfig().max_batch == 'auto'
    with pytest.raises(ValidationError, match='extra'):
        ScreenConfig(fmaxx=0.1)
    with pytest.raises(ValidationError, match='phonons'):
        ScreenConfig(phonons=True)  # phonons are their own task now
    with pytest.raises(ValidationError):
        ScreenConfig(max_batch=0)
    with pytest.raises(ValidationError):
        ScreenConfig(device='tpu')


# ---------------------------------------------------------------------------------------------- console script
def test_console_script_screen(mace_model_file, calc, tmp_path, monkeypatch):
    from aiida_capthermo.compute.mlip import main

    monkeypatch.chdir(tmp_path)
    cells = [small_cell(False, seed=11), small_cell(True, seed=12), small_cell(False, seed=13)]
    LabelledSet.from_atoms_list(cells, x=np.array([0.0, 0.5, 0.0]), origin=np.array(['a', 'b', 'c'])).save('in.npz')
    pathlib.Path('config.json').write_text(json.dumps({'fmax': 0.01, 'max_steps': 500, 'device': 'cpu'}))
    assert main(['screen', str(mace_model_file), 'in.npz', '--config', 'config.json']) == 0
    summary = json.loads(pathlib.Path('summary.json').read_text())
    outputs = summary['outputs']
    assert summary['error'] is None and outputs['n_relaxed'] == 3 and outputs['complete'] and outputs['batch_size'] == 3
    records = json.loads(pathlib.Path('screen.json').read_text())
    relaxed = LabelledSet.load('relaxed.npz')
    assert len(relaxed) == 3 and np.allclose(relaxed.x, [0.0, 0.5, 0.0])
    for index, record in enumerate(records):
        assert record['converged']
        check = relaxed.atoms(index, with_labels=False)
        check.calc = calc
        assert check.get_potential_energy() == pytest.approx(record['energy'], abs=1e-8)  # a direct single point
        assert relaxed.energy[index] == pytest.approx(record['energy'], abs=1e-10)
        assert record['energy_per_atom'] == pytest.approx(record['energy'] / 10)
    assert outputs['lowest_energy_per_atom'] == pytest.approx(min(r['energy_per_atom'] for r in records))
    # a time limit: one structure per batch, no batch after the first -> the rest is `remaining`, checkpoint written
    pathlib.Path('limit.json').write_text(json.dumps({'max_batch': 1, 'max_seconds': 1e-6, 'device': 'cpu'}))
    assert main(['screen', str(mace_model_file), 'in.npz', '--config', 'limit.json', '--summary', 'limit.out',
                 '--screen', 'limit_screen.json', '--relaxed', 'limit.npz']) == 0
    limited = json.loads(pathlib.Path('limit.out').read_text())['outputs']
    assert not limited['complete'] and limited['remaining'] == [1, 2] and limited['n_relaxed'] == 1
    assert len(LabelledSet.load('limit.npz')) == 1
    assert json.loads(pathlib.Path('limit_screen.json').read_text())[0]['energy'] == pytest.approx(
        records[0]['energy'], abs=1e-8)  # batch of one: the same minimum
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
    builder.parameters = orm.Dict({'fmax': 0.01, 'max_steps': 500, 'device': 'cpu'})
    builder.metadata.options.max_wallclock_seconds = 300
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, node.exit_status
    assert set(results['relaxed']) == {'a_first', 'b_second'}
    records = results['results'].get_dict()
    for key, structure in results['relaxed'].items():
        assert records[key]['converged'] and records[key]['max_force'] < 0.01
        assert structure.get_formula() == structures[key].get_formula()
        assert structure.base.attributes.get('capthermo_x') == structures[key].base.attributes.get('capthermo_x')
    energies = results['energies']
    assert energies.base.attributes.get('keys') == ['a_first', 'b_second']
    assert np.allclose(energies.get_array('energy'), [records['a_first']['energy'], records['b_second']['energy']])
    assert results['summary']['outputs']['n_converged'] == 2
    assert results['summary']['config']['max_seconds'] == pytest.approx(0.8 * 300)  # from the walltime


def test_restart_relaxes_the_rest_after_the_time_limit(model_node, script_code):
    """MlipScreenWorkChain: each job stops after one batch of one (its time limit), the next relaxes the rest; the
    merged results equal one uninterrupted job's."""
    from aiida_capthermo.calculations.mlip import MlipScreenCalcJob
    from aiida_capthermo.workflows.screen import MlipScreenWorkChain

    structures = {f's{i}': orm.StructureData(ase=small_cell(bool(i % 2), seed=40 + i)) for i in range(3)}
    builder = MlipScreenWorkChain.get_builder()
    builder.screen.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.screen.model = model_node
    builder.screen.structures = structures
    builder.screen.parameters = orm.Dict({'max_batch': 1, 'max_seconds': 1e-6, 'device': 'cpu'})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, node.exit_status
    jobs = [child for child in node.called if isinstance(child, orm.CalcJobNode)]
    assert [job.exit_status for job in jobs] == [MlipScreenCalcJob.exit_codes.ERROR_OUT_OF_WALLTIME.status] * 2 + [0]
    assert [len(job.inputs.structures) for job in jobs] == [3, 2, 1]
    assert set(results['relaxed']) == set(structures)
    merged = results['results'].get_dict()
    single = MlipScreenCalcJob.get_builder()
    single.code, single.model, single.structures = builder.screen.code, model_node, structures
    single.parameters = orm.Dict({'device': 'cpu'})
    direct = engine.run(single)['results'].get_dict()
    for key in structures:
        assert merged[key]['energy'] == pytest.approx(direct[key]['energy'], abs=1e-6)


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
def test_screen_workchain_2x2x2(model_node, script_code, mace_model_file):
    from aiida_capthermo.core.structures import vegard_lattice_parameter
    from aiida_capthermo.ml.mlip import load_calculator
    from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

    builder = SolidSolutionScreenWorkChain.get_builder()
    builder.model = model_node
    builder.prototype = orm.Dict(PROTOTYPE)
    builder.supercell = orm.List([2, 2, 2])
    builder.compositions = orm.List([0.125, 0.25])
    builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.parameters = orm.Dict({'fmax': 0.02, 'max_steps': 300, 'device': 'cpu'})
    builder.batch_size = orm.Int(2)  # x = 0.25 (3 classes) needs two relaxation jobs
    builder.phonons = orm.Dict({'device': 'cpu'})
    builder.temperatures = orm.List([])  # harmonic only here; the finite-temperature path has its own test
    builder.options = orm.Dict({'max_wallclock_seconds': 600, 'resources': {'num_machines': 1}})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, node.exit_status
    compositions = results['compositions']
    assert set(compositions) == {'x_0p125', 'x_0p250'}
    relax_jobs = [c for c in node.called if c.process_label == 'MlipScreenWorkChain']
    assert sorted(len(job.inputs.screen.structures) for job in relax_jobs) == [1, 1, 2]
    calc = load_calculator(str(mace_model_file), 'cpu')
    expected = {'x_0p125': (0.125, [8], 8), 'x_0p250': (0.25, [4, 12, 12], 28)}
    for key, (x, multiplicities, arrangements) in expected.items():
        table = compositions[key]['configurations'].get_dict()
        assert table['n_sites'] == 8 and table['n_permutations'] == 48 and not table['sampled']
        assert sorted(c['multiplicity'] for c in table['configurations'].values()) == multiplicities
        assert table['n_arrangements'] == arrangements == sum(multiplicities)
        np.testing.assert_allclose(table['cell'], np.eye(3) * 2 * vegard_lattice_parameter(x, 4.869, 4.793))
        ranking = compositions[key]['ranking'].get_dict()
        assert len(ranking['keys']) == len(multiplicities) and not ranking['missing'] and not ranking['failed']
        assert ranking['energy_per_atom'] == sorted(ranking['energy_per_atom'])
        assert sorted(ranking['multiplicity']) == multiplicities
        # the ranking agrees with direct single points of the relaxed structures (an independent ASE calculator)
        jobs = [link.node for link in node.base.links.get_outgoing(link_label_filter=f'relax_{key}_%').all()]
        relaxed = {k: v for job in jobs for k, v in job.outputs.relaxed.items()}
        direct = []
        for name in ranking['keys']:
            atoms = relaxed[name].get_ase()
            atoms.calc = calc
            direct.append(atoms.get_potential_energy() / len(atoms))
        assert np.allclose(direct, ranking['energy_per_atom'], atol=1e-7) and direct == sorted(direct)
        # Boltzmann weights: g_i exp(-dE_cell / kT) / Z by hand
        for temperature in (300.0, 600.0):
            weights = np.array(ranking['multiplicity']) * np.exp(
                -40 * np.array(ranking['relative_energy_per_atom']) / (8.617333262e-5 * temperature))
            average = ranking['boltzmann'][f'T{temperature:.0f}']
            assert np.allclose(average['probability'], weights / weights.sum())
            assert average['energy_per_atom'] == pytest.approx(np.dot(weights / weights.sum(), direct))
        lowest = compositions[key]['lowest']
        symbols = lowest.get_ase().get_chemical_symbols()
        assert len(symbols) == 40 and symbols.count('Br') == round(8 * x) and symbols.count('I') == 8 - round(8 * x)
        assert lowest.base.attributes.get('capthermo_x') == pytest.approx(x)
        job = lowest.base.links.get_incoming(link_type=LinkType.CREATE).one().node
        assert job.outputs.results[ranking['lowest']]['energy_per_atom'] == ranking['energy_per_atom'][0]
        # harmonic phonons of the kept (lowest) configuration: bands, 0 K stability, plot
        kept = compositions[key][ranking['lowest']]
        bands = kept['bands']
        assert bands.get_bands().shape == (bands.get_kpoints().shape[0], 120)
        assert [name for _, name in bands.labels][:3] == ['Γ', 'X', 'X']
        gamma = np.array(kept['phonons']['commensurate_frequencies'][0])  # supercell [1, 1, 1]: Γ only
        assert np.sort(np.abs(gamma))[:3].max() < 0.05  # three acoustic modes
        assert kept['phonons']['n_imaginary'] == int(np.sum(gamma < -0.1))
        assert kept['phonons']['stable_0K'] == (kept['phonons']['n_imaginary'] == 0)
        assert kept['phonon_plot'].get_content('rb')[:8] == b'\x89PNG\r\n\x1a\n'
        assert pdf_beside(kept['phonon_plot']).get_content('rb')[:5] == b'%PDF-'
        dos = bands.get_array('dos')  # the total DOS on the job's mesh: 3N = 120 states per cell
        assert np.trapezoid(dos, bands.get_array('dos_frequency')) == pytest.approx(120, rel=5e-3)
        assert bands.base.attributes.get('formula') == lowest.get_formula()
    job = compositions['x_0p250']['lowest'].base.links.get_incoming(link_type=LinkType.CREATE).one().node
    for structure in job.inputs.structures.values():
        assert np.allclose(structure.cell, np.eye(3) * 2 * vegard_lattice_parameter(0.25, 4.869, 4.793))
        assert structure.base.attributes.get('capthermo_multiplicity') in (4, 12)


def test_screen_finite_temperature_phonons_of_an_unstable_configuration(model_node, script_code):
    """An expanded fixed cell (4.8 Å) of the toy potential has imaginary modes at 0 K: the workchain runs MD at 200 K
    and outputs the renormalised phonons, the bands and whether the instability is stabilised."""
    from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

    builder = SolidSolutionScreenWorkChain.get_builder()
    builder.model = model_node
    builder.prototype = orm.Dict({**PROTOTYPE, 'a_host': 4.8, 'a_guest': 4.8})
    builder.compositions = orm.List([0.0])
    builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.parameters = orm.Dict({'relax_cell': False, 'device': 'cpu'})
    builder.phonons = orm.Dict({'steps': 1000, 'equilibration_steps': 300, 'timestep': 4.0, 'sample_stride': 2,
                                'device': 'cpu'})
    builder.temperatures = orm.List([200.0])
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, node.exit_status
    kept = results['compositions']['x_0p000']['c000']
    summary = kept['phonons'].get_dict()
    assert summary['n_imaginary'] > 0 and not summary['stable_0K']
    finite = summary['temperatures']['T200']
    assert finite['broke'] is None and isinstance(finite['stabilised'], bool)
    assert finite['stabilised'] == (not finite['unresolved'])
    assert set(finite['trapped']) <= set(finite['unresolved']) <= set(range(120))
    assert finite['resolution'] == pytest.approx(1 / (1000 * 4e-3))
    # the mode projections are complete: their kinetic energy is the atoms' (mean <v_s^2> / k_B T = T_kin / T)
    assert finite['equipartition'] == pytest.approx(finite['mean_temperature'] / 200.0, rel=1e-6)
    assert 0.7 < finite['equipartition'] < 1.3
    assert len(finite['imaginary_harmonic']) == summary['n_imaginary']
    renormalised = kept['renormalised_bands']['T200']
    assert renormalised.get_bands().shape == kept['bands'].get_bands().shape
    assert renormalised.base.attributes.get('temperature') == 200.0
    # the renormalised Γ frequencies of the MD cell are the fitted peaks: real, not imaginary
    assert min(finite['commensurate_frequencies'][0]) > -0.05
    finite_job = node.base.links.get_outgoing(link_label_filter='phonons_finite_temperature').one().node
    assert finite_job.outputs.spectra.get_array('x_0p000_c000_T200').shape[1] == 120


def test_enumeration_sampling_and_parent(aiida_profile):
    """More classes than ``max_configurations``: a seeded sample of distinct classes; the cell is Vegard's between
    the end members given."""
    from aiida_capthermo.workflows.screen import enumerate_structures

    settings = {'host': 'I', 'guest': 'Br', 'supercell': [2, 2, 2], 'x': 0.5, 'max_configurations': 3, 'seed': 4}
    host = orm.StructureData(ase=antiperovskite('Ag', 'S', 'I', 5.0))
    guest = orm.StructureData(ase=antiperovskite('Ag', 'S', 'Br', 4.8))
    first = enumerate_structures(orm.Dict(settings), host, guest)
    again = enumerate_structures(orm.Dict(settings), host, guest)
    table = first['configurations'].get_dict()
    assert table['n_classes'] > 3 and table['sampled'] and len(table['configurations']) == 3
    assert table == again['configurations'].get_dict()  # same seed, same sample
    assert table['n_arrangements'] == 70
    for key in table['configurations']:
        atoms = first[key].get_ase()
        assert atoms.get_chemical_symbols().count('Br') == 4
        assert np.allclose(atoms.cell.lengths(), 2 * 4.9)  # (5.0 + 4.8) / 2 per cell
    # multiplicities of the sample are true orbit sizes: all 70 arrangements split into the Burnside count
    full = enumerate_structures(orm.Dict({**settings, 'max_configurations': 100}), host, guest)
    full_table = full['configurations'].get_dict()
    assert not full_table['sampled'] and len(full_table['configurations']) == table['n_classes']
    assert sum(c['multiplicity'] for c in full_table['configurations'].values()) == 70
    by_sites = {tuple(c['occupied_sites']): c['multiplicity'] for c in full_table['configurations'].values()}
    for c in table['configurations'].values():
        assert by_sites[tuple(c['occupied_sites'])] == c['multiplicity']


def test_screen_reranks_by_the_engine(model_node, script_code):
    """With ``rerank`` the engine labels the relaxed configurations and ranks them: the ranking's energies are the
    engine's own single points of the relaxed cells (recomputed here with the labeller's function, outside AiiDA),
    in ascending order; the potential's energies stay beside and equal its first ranking's; the Boltzmann weights
    are the engine's; the ground state, the kept configuration and the phonons are of the engine's lowest. An engine
    that labels none of them stops the screen with 562. Without the engine, or covering fewer configurations than
    are kept, rerank is refused before anything runs."""
    from aiida_capthermo.ml.labelling import single_point_function
    from aiida_capthermo.ml.settings import CalculatorSpec
    from aiida_capthermo.workflows.screen import SolidSolutionScreenWorkChain

    builder = SolidSolutionScreenWorkChain.get_builder()
    builder.model = model_node
    builder.prototype = orm.Dict(PROTOTYPE)
    builder.compositions = orm.List([0.0, 0.25])
    builder.code = script_code('capthermo-mlip', 'capthermo.mlip_screen')
    builder.parameters = orm.Dict({'fmax': 0.02, 'max_steps': 300, 'device': 'cpu'})
    builder.phonons = orm.Dict({'device': 'cpu'})
    builder.temperatures = orm.List([])
    builder.rerank = orm.Int(3)
    builder.engine = {'code': script_code('capthermo-label', 'capthermo.label')}
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    [labelling] = [c for c in node.called if c.process_label == 'BatchLabelWorkChain']
    assert len(labelling.inputs.structures) == 3  # x = 0 has one configuration: nothing to rank
    assert 'ranked_by' not in results['compositions']['x_0p000']['ranking'].get_dict()
    ranking = results['compositions']['x_0p250']['ranking'].get_dict()
    [reranking] = [n for n in node.called if n.process_label == 'rerank_configurations']
    potential = reranking.inputs.ranking.get_dict()  # the potential's ranking of x = 0.25
    assert potential['keys'] != ['c000'] and reranking.outputs.result.uuid == \
        results['compositions']['x_0p250']['ranking'].uuid
    assert ranking['ranked_by'] == 'engine' and ranking['potential_lowest'] == potential['lowest']
    assert sorted(ranking['keys']) == sorted(potential['keys']) and not ranking['not_reranked']
    jobs = [link.node for link in node.base.links.get_outgoing(link_label_filter='relax_x_0p250_%').all()]
    relaxed = {k: v for job in jobs for k, v in job.outputs.relaxed.items()}
    label = single_point_function(CalculatorSpec())
    direct = [label(relaxed[name].get_ase())['energy'] / 40 for name in ranking['keys']]
    assert np.allclose(direct, ranking['energy_per_atom'], atol=1e-6) and direct == sorted(direct)
    by_key = dict(zip(potential['keys'], potential['energy_per_atom']))
    assert ranking['potential_energy_per_atom'] == [by_key[name] for name in ranking['keys']]
    weights = np.array(ranking['multiplicity']) * np.exp(-40 * np.array(ranking['relative_energy_per_atom'])
                                                          / (8.617333262e-5 * 300.0))
    assert np.allclose(ranking['boltzmann']['T300']['probability'], weights / weights.sum())
    assert results['compositions']['x_0p250']['lowest'].uuid == relaxed[ranking['lowest']].uuid
    assert set(results['compositions']['x_0p250']) >= {ranking['lowest']}
    assert results['compositions']['x_0p250'][ranking['lowest']]['structure'].uuid == relaxed[ranking['lowest']].uuid

    # an engine that cannot label these cells (EMT has no S or I): the screen stops with its exit code
    builder.engine = {'code': script_code('capthermo-label', 'capthermo.label'),
                      'calculator': orm.Dict({'name': 'emt'})}
    builder.compositions = orm.List([0.25])
    _, failed = engine.run_get_node(builder)
    assert failed.exit_status == SolidSolutionScreenWorkChain.exit_codes.ERROR_RERANK_FAILED.status == 562
    assert 'rank the relaxed configurations' in failed.exit_message

    del builder.engine
    with pytest.raises(ValueError, match='rerank labels the relaxed configurations'):
        engine.run(builder)
    builder.engine = {'code': script_code('capthermo-label', 'capthermo.label')}
    builder.keep = orm.Int(2)
    builder.rerank = orm.Int(1)
    with pytest.raises(ValueError, match=r'rerank \(1\) must cover the kept configurations'):
        engine.run(builder)


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
    bromide = antiperovskite('Ag', 'S', 'Br', 4.869)  # a parent without the host species
    with pytest.raises(ValueError, match=r'parents\.host: the structure Ag3BrS has no I to substitute'):
        engine.run(builder_with(parents={'host': orm.StructureData(ase=bromide)}))
    slab = antiperovskite('Ag', 'S', 'I', 4.869)
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match='periodic in all three directions'):
        engine.run(builder_with(parents={'host': orm.StructureData(ase=slab)}))
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
    assert 'x_1p000' in node.exit_message and 'status 311' in node.exit_message


def test_band_path_follows_the_parents_lattice():
    """The screen's phonon bands: the simple-cubic path for (near-)cubic cells, as before; a hexagonal (wurtzite)
    parent gets the hexagonal path, with K at (1/3, 1/3, 0) of its reciprocal lattice."""
    from ase.build import bulk

    from aiida_capthermo.ml.mlip import CUBIC_PATH, special_path

    assert special_path(np.eye(3) * 9.9)[1] == CUBIC_PATH
    assert special_path(np.diag([9.90, 9.91, 9.89]))[1] == CUBIC_PATH  # a relaxed alloy cell of a cubic parent
    points, pieces = special_path(bulk('ZnO', 'wurtzite', a=3.25, c=5.2).cell.array * 2)
    assert pieces[0][:4] == ['Γ', 'M', 'K', 'Γ'] and 'A' in pieces[0]
    assert points['K'] == pytest.approx([1 / 3, 1 / 3, 0.0]) and points['A'] == pytest.approx([0.0, 0.0, 0.5])
