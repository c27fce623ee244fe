"""Tests of the ``vasp`` labelling engine (``VaspLabelWorkChain``).

VASP cannot run here, so the work chain runs for real on localhost with aiida-vasp's own ``mock-vasp``
executable (MOCK), fed by a registry of VASP-format outputs that the tests own
(``tests/fixtures/vasp_registry``, written by ``tests/vasp_double.py`` through ``mock-vasp``'s recorder,
see ``tests/generate_vasp_registry.py``) and fake POTCARs uploaded as a family. The labels in the
output dataset are compared with the double's independent model (Lennard-Jones energy/forces/stress,
toy band edges) evaluated here on the same structures.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from ase.units import GPa

from aiida_capthermo.workflows.vasp import (
    FIDELITY_LABELS,
    kpoint_mesh_from_length,
    load_vasp_presets,
    vasp_stress_to_voigt,
)

import vasp_double
import vasp_setup


# ---------------------------------------------------------------------------------------------- no profile
def test_kpoint_mesh_reproduces_paper_meshes():
    """R_k = 58 Å: 12x12x12 on the 5-atom cells and 6x6x6 on the 2x2x2 cells of Ag3SI and Ag3SBr."""
    length = load_vasp_presets()['kpoints_length']
    for a in (4.869, 4.793):
        assert kpoint_mesh_from_length(np.eye(3) * a, length) == [12, 12, 12]
        assert kpoint_mesh_from_length(np.eye(3) * 2 * a, length) == [6, 6, 6]
    # Non-cubic cell: divisions follow 1/d of each family of planes.
    cell = np.array([[4.0, 0.0, 0.0], [0.0, 8.0, 0.0], [0.0, 0.0, 16.0]])
    assert kpoint_mesh_from_length(cell, 40.0) == [10, 5, 3]
    with pytest.raises(ValueError):
        kpoint_mesh_from_length(cell, 0.0)


def test_stress_conversion_matches_ase_vasp_convention():
    """VASP kBar (compressive > 0) -> eV/Å^3 with ASE's sign, as ase.io.vasp does (-0.1 GPa * sigma)."""
    vasp = np.array([[10.0, 1.0, 2.0], [1.0, 20.0, 3.0], [2.0, 3.0, 30.0]])
    voigt = vasp_stress_to_voigt(vasp)
    expected = -0.1 * GPa * np.array([10.0, 20.0, 30.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(voigt, expected, rtol=1e-8)


def test_presets_carry_the_papers_incar():
    presets = load_vasp_presets()
    pbesol, hsesol = presets['presets']['PBEsol']['incar'], presets['presets']['HSEsol']['incar']
    for incar in (pbesol, hsesol):
        assert incar['gga'] == 'ps' and incar['encut'] == 550 and incar['ediff'] == 1e-7
        assert incar['ismear'] == 0 and incar['lreal'] is False and incar['sigma'] == 0.01
    assert 'lhfcalc' not in pbesol
    assert hsesol['lhfcalc'] is True and hsesol['hfscreen'] == 0.2 and hsesol['algo'] == 'all'
    assert presets['default_preset'] == {'low': 'PBEsol', 'high': 'HSEsol'}
    assert tuple(presets['presets']['HSEsol']['labels']) == FIDELITY_LABELS['high']


# ---------------------------------------------------------------------------------------------- workchain
@pytest.fixture
def vasp_engine(aiida_localhost, tmp_path):
    """The mock-vasp code and the fake potential family."""
    family = vasp_setup.upload_fake_family(tmp_path / 'potcars')
    return {'code': vasp_setup.mock_vasp_code(aiida_localhost), 'family': family}


def _builder(vasp_engine, structures, fidelity, options, **extra):
    from aiida import orm

    from aiida_capthermo.workflows.vasp import VaspLabelWorkChain

    builder = VaspLabelWorkChain.get_builder()
    builder.structures = structures
    builder.fidelity = orm.Str(fidelity)
    builder.code = vasp_engine['code']
    builder.potential_family = orm.Str(vasp_engine['family'])
    builder.potential_mapping = orm.Dict(vasp_setup.MAPPING)
    builder.kpoints_length = orm.Float(vasp_setup.KPOINTS_LENGTH)
    builder.options = orm.Dict(options)
    builder.clean_workdir = orm.Bool(False)
    for key, value in extra.items():
        builder[key] = value
    return builder


def _check_labels(dataset, structures, keys, hybrid, fidelity, energy_type='energy_extrapolated'):
    """Labels of ``dataset`` equal the double's model on the same structures, in sorted key order."""
    ls = dataset.get_labelled_set()
    assert list(dataset.base.attributes.get('keys')) == sorted(keys)
    assert len(ls) == len(keys)
    for row, key in enumerate(sorted(keys)):
        node = structures[key]
        model = vasp_double.model_labels(node.get_ase(), hybrid=hybrid)
        assert ls.structure_uuid[row] == node.uuid
        np.testing.assert_allclose(ls.positions[ls.offsets[row]:ls.offsets[row + 1]], node.get_ase().positions)
        assert ls.gap[row] == pytest.approx(model['gap'], abs=1.1e-4)
        assert ls.vbm[row] == pytest.approx(model['vbm'], abs=0.6e-4)
        assert ls.cbm[row] == pytest.approx(model['cbm'], abs=0.6e-4)
        if fidelity == 'low':
            assert ls.energy[row] == pytest.approx(model[energy_type], abs=1e-7)
            np.testing.assert_allclose(ls.forces[ls.offsets[row]:ls.offsets[row + 1]], model['forces'], atol=1e-7)
            # stress written in kBar with 8 decimals: 1e-8 kBar = 6e-13 eV/Å^3
            np.testing.assert_allclose(ls.stress[row], model['stress'], atol=1e-11)
        else:
            assert np.isnan(ls.energy[row]) and np.all(np.isnan(ls.stress[row]))
            assert np.all(np.isnan(ls.forces[ls.offsets[row]:ls.offsets[row + 1]]))
    return ls


def test_record_mode_hsesol(vasp_engine, tmp_path):
    """High fidelity with the HSEsol preset: mock-vasp records the double's outputs, the gaps are the model's."""
    from aiida.engine import run_get_node

    registry = tmp_path / 'registry'
    registry.mkdir()
    structures = vasp_setup.structure_nodes({'ag3si_300k', 'ag3sbr_600k'})
    options = vasp_setup.mock_options(registry, vasp_setup.double_command(tmp_path))
    results, node = run_get_node(_builder(vasp_engine, structures, 'high', options))
    assert node.is_finished_ok, node.exit_message
    dataset = results['labels']
    _check_labels(dataset, structures, list(structures), hybrid=True, fidelity='high')
    assert dataset.base.attributes.get('method') == 'HSEsol'
    assert dataset.base.attributes.get('n_failed') == 0


REGISTERED = ('ag3si_300k', 'ag3sbr_600k')


def _vasp_calculations(workchain_node):
    from aiida import orm

    return [n for n in workchain_node.called_descendants if isinstance(n, orm.CalcJobNode)]


def test_replay_pbesol_from_committed_registry(vasp_engine):
    """Low fidelity, PBEsol: mock-vasp answers from tests/fixtures/vasp_registry by input hash (strict).

    The third structure is not in the registry, so mock-vasp refuses to run it: its failure is recorded and
    the batch still yields the two labelled structures, whose labels equal the model's numbers.
    """
    from aiida import orm
    from aiida.engine import run_get_node

    assert (vasp_setup.REGISTRY / 'pbesol-ag3si_300k' / 'out' / 'vasprun.xml').is_file()
    structures = vasp_setup.structure_nodes({*REGISTERED, 'unregistered'})
    options = vasp_setup.mock_options(vasp_setup.REGISTRY)
    results, node = run_get_node(_builder(vasp_engine, structures, 'low', options))
    assert node.is_finished_ok, node.exit_message
    dataset = results['labels']
    ls = _check_labels(dataset, structures, REGISTERED, hybrid=False, fidelity='low')
    attributes = dataset.base.attributes.all
    assert attributes['engine'] == 'vasp' and attributes['method'] == 'PBEsol' and attributes['fidelity'] == 'low'
    assert attributes['n_failed'] == 1 and attributes['failed'] == ['unregistered']
    assert attributes['energy_type'] == 'energy_extrapolated'
    # metadata copied from the structures, rows in sorted key order: ag3sbr_600k, ag3si_300k
    np.testing.assert_array_equal(ls.temperature, [600.0, 300.0])
    np.testing.assert_array_equal(ls.x, [1.0, 0.0])
    assert list(ls.origin) == ['phonon', 'phonon']

    # every registered run was answered from the committed registry (mock-vasp says so in its output)
    for key in REGISTERED:
        child = node.base.links.get_outgoing(link_label_filter=f'vasp_{key}').one().node
        assert child.is_finished_ok
        calc = _vasp_calculations(child)[-1]
        assert f'pbesol-{key}' in calc.outputs.retrieved.get_object_content('vasp_output')
        incar = calc.base.repository.get_object_content('INCAR')
        for line in ('GGA = ps', 'ENCUT = 550', 'EDIFF = 1e-07', 'ISMEAR = 0', 'SIGMA = 0.01', 'LREAL = .FALSE.'):
            assert line in incar
        assert 'LHFCALC' not in incar
    failed_child = node.base.links.get_outgoing(link_label_filter='vasp_unregistered').one().node
    assert not failed_child.is_finished_ok

    # provenance: the dataset is made by the calcfunction from the structures and the runs' misc outputs
    creator = dataset.creator
    assert creator.process_label == 'collect_vasp_labels'
    inputs = {link.link_label: link.node for link in creator.base.links.get_incoming().all()}
    for key in REGISTERED:
        assert inputs[f'structure_{key}'].uuid == structures[key].uuid
        child = node.base.links.get_outgoing(link_label_filter=f'vasp_{key}').one().node
        assert inputs[f'misc_{key}'].uuid == child.outputs.misc.uuid
    assert 'structure_unregistered' not in inputs
    assert isinstance(dataset, orm.ArrayData)


def test_parameters_override_and_failure_exit_code(vasp_engine, tmp_path):
    """INCAR overrides land in the INCAR; a batch where nothing is labelled ends with exit code 300."""
    from aiida import orm
    from aiida.engine import run_get_node

    structures = vasp_setup.structure_nodes({'unregistered'})
    options = vasp_setup.mock_options(tmp_path / 'empty-registry')
    builder = _builder(vasp_engine, structures, 'low', options, parameters=orm.Dict({'encut': 600, 'lreal': None}),
                       max_iterations=orm.Int(1))
    _, node = run_get_node(builder)
    assert node.exit_status == 410
    assert 'unregistered' in node.exit_message
    calc = _vasp_calculations(node)[0]
    incar = calc.base.repository.get_object_content('INCAR')
    assert 'ENCUT = 600' in incar and 'LREAL' not in incar and 'GGA = ps' in incar


def test_invalid_inputs_fail_before_submission(vasp_engine):
    from aiida import orm
    from aiida.engine import run

    structures = vasp_setup.structure_nodes({'ag3si_300k'})
    with pytest.raises(ValueError, match='potential_mapping has no POTCAR'):
        builder = _builder(vasp_engine, structures, 'low', vasp_setup.mock_options(vasp_setup.REGISTRY))
        builder.potential_mapping = orm.Dict({'Ag': 'Ag', 'S': 'S'})
        run(builder)
    with pytest.raises(ValueError, match='preset must be one of'):
        run(_builder(vasp_engine, structures, 'low', vasp_setup.mock_options(vasp_setup.REGISTRY),
                     preset=orm.Str('HSE06')))
    with pytest.raises(ValueError, match='lower-case'):
        run(_builder(vasp_engine, structures, 'low', vasp_setup.mock_options(vasp_setup.REGISTRY),
                     parameters=orm.Dict({'ENCUT': 500})))


@pytest.mark.skipif(not os.environ.get('CAPTHERMO_RECORD_VASP_REGISTRY'),
                    reason='writes the committed registry; run `python tests/generate_vasp_registry.py`')
def test_generate_registry(vasp_engine, tmp_path):
    """Record the PBEsol runs of the registered structures into the registry folder (via mock-vasp's recorder)."""
    from aiida.engine import run_get_node
    from aiida_vasp.utils.mock_code import VaspMockRegistry

    target = pathlib.Path(os.environ['CAPTHERMO_RECORD_VASP_REGISTRY'])
    target.mkdir(parents=True, exist_ok=True)
    structures = vasp_setup.structure_nodes(set(REGISTERED))
    options = vasp_setup.mock_options(target, vasp_setup.double_command(tmp_path))
    results, node = run_get_node(_builder(vasp_engine, structures, 'low', options))
    assert node.is_finished_ok, node.exit_message
    _check_labels(results['labels'], structures, REGISTERED, hybrid=False, fidelity='low')
    for key in REGISTERED:
        child = node.base.links.get_outgoing(link_label_filter=f'vasp_{key}').one().node
        calc = _vasp_calculations(child)[-1]
        workdir = pathlib.Path(calc.outputs.remote_folder.get_remote_path())
        entry = target / VaspMockRegistry.compute_hash(workdir)
        named = target / f'pbesol-{key}'
        entry.rename(named)
        for name in ('_aiidasubmit.sh', '_scheduler-stdout.txt', '_scheduler-stderr.txt'):
            (named / 'out' / name).unlink(missing_ok=True)


def test_dataset_workchain_with_vasp_engine(vasp_engine, tmp_path):
    """PhononInformedDatasetWorkChain labelling through the vasp engine (mock-vasp recording the test double)."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_capthermo.workflows.dataset import PhononInformedDatasetWorkChain

    registry = tmp_path / 'registry'
    registry.mkdir()
    options = vasp_setup.mock_options(registry, vasp_setup.double_command(tmp_path))
    builder = PhononInformedDatasetWorkChain.get_builder_from_protocol(
        vasp_engine['code'], protocol='demo', engine='vasp', options=options, overrides={
            'supercell': [1, 1, 1], 'scheme': 'random', 'random_amplitudes': [0.05], 'structures_per_temperature': 2,
            'n_equilibrium': 0, 'high_structures': 0,
            'low': {'vasp': {'potential_family': vasp_engine['family'], 'potential_mapping': vasp_setup.MAPPING,
                             'kpoints_length': vasp_setup.KPOINTS_LENGTH, 'clean_workdir': False}}})
    assert builder.low.engine.value == 'vasp' and 'calculator' not in builder.low
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    dataset = results['low']
    assert dataset.base.attributes.get('engine') == 'vasp' and dataset.base.attributes.get('method') == 'PBEsol'
    labelled = dataset.get_labelled_set()
    assert len(labelled) == 2
    for row, uuid in enumerate(labelled.structure_uuid):
        model = vasp_double.model_labels(orm.load_node(uuid).get_ase(), hybrid=False)
        assert labelled.energy[row] == pytest.approx(model['energy_extrapolated'], abs=1e-7)
        assert labelled.gap[row] == pytest.approx(model['gap'], abs=1.1e-4)
