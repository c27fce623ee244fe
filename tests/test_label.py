"""The ``local`` labelling engine: console script, LabelCalcJob on localhost, parser, failures per structure."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import engine, orm
from aiida.plugins import CalculationFactory
from ase import Atoms

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.structures import set_structure_metadata
from aiida_capthermo.ml.labelling import CalculatorSpec, gap_from_orbitals, label_structures


def ag3si(a: float = 4.869) -> Atoms:
    return Atoms('ISAg3', scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0), (.5, 0, .5), (0, .5, .5)],
                 cell=[a, a, a], pbc=True)


def rattled(seed: int, stdev: float = 0.05) -> Atoms:
    atoms = ag3si()
    atoms.rattle(stdev, seed=seed)
    return atoms


def test_gap_from_orbitals_closed_shell():
    energies = np.array([-3.0, -2.0, 1.5, 0.5, -1.0])
    occupations = np.array([2.0, 2.0, 0.0, 0.0, 1.999])  # six electrons -> three occupied levels
    gap, vbm, cbm = gap_from_orbitals(energies, occupations)
    assert (gap, vbm, cbm) == pytest.approx((1.5, -1.0, 0.5))
    with pytest.raises(ValueError):
        gap_from_orbitals(energies, np.zeros(5))


def test_calculator_spec_rejects_unknown_keys():
    with pytest.raises(Exception, match='extra'):
        CalculatorSpec.model_validate({'method': 'GFN1-xTB', 'electronic_temprature': 300})


def test_label_structures_matches_direct_tblite():
    from tblite.ase import TBLite

    structures = LabelledSet.from_atoms_list([rattled(1), rattled(2)])
    labelled, records = label_structures(structures, CalculatorSpec())
    assert [r['status'] for r in records] == ['ok', 'ok']
    reference = rattled(2)
    reference.calc = TBLite(method='GFN1-xTB', verbosity=0, electronic_temperature=300.0)
    assert labelled.energy[1] == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(labelled.forces[5:10], reference.get_forces(), atol=1e-6)
    np.testing.assert_allclose(labelled.stress[1], reference.get_stress(), atol=1e-8)
    # Forces on a rattled periodic cell sum to zero (translational invariance).
    np.testing.assert_allclose(labelled.forces[:5].sum(axis=0), 0.0, atol=1e-6)
    assert np.all(labelled.gap > 0) and np.all(labelled.cbm - labelled.vbm == pytest.approx(labelled.gap))


def test_label_structures_records_scf_failure():
    structures = LabelledSet.from_atoms_list([rattled(1)])
    labelled, records = label_structures(structures, CalculatorSpec(max_iterations=2))
    assert records[0]['status'] == 'failed' and 'SCF' in records[0]['error']
    assert np.isnan(labelled.energy[0]) and np.isnan(labelled.gap[0])


def _structures(n: int) -> dict:
    structures = {}
    for i in range(n):
        structure = orm.StructureData(ase=rattled(10 + i))
        set_structure_metadata(structure, x=0.0, temperature=300.0, origin='phonon')
        structures[f's{i:03d}'] = structure
    return structures


def test_label_calcjob_localhost(script_code):
    code = script_code('capthermo-label', 'capthermo.label')
    results, node = engine.run_get_node(
        CalculationFactory('capthermo.label'), code=code, structures=_structures(3),
        calculator=orm.Dict({'name': 'tblite', 'method': 'GFN1-xTB'}))
    assert node.is_finished_ok, node.exit_message
    dataset = results['labels']
    assert dataset.n_structures == 3
    assert dataset.base.attributes.get('failed') == []
    assert dataset.base.attributes.get('method') == 'GFN1-xTB'
    labelled = dataset.get_labelled_set()
    assert set(labelled.structure_uuid) == {s.uuid for s in node.inputs.structures.values()}
    assert np.all(labelled.temperature == 300.0) and list(labelled.origin) == ['phonon'] * 3
    assert np.all(np.isfinite(labelled.energy)) and np.all(np.isfinite(labelled.stress))
    assert results['summary']['n_ok'] == 3


def test_label_calcjob_all_failed_exit_code(script_code):
    code = script_code('capthermo-label', 'capthermo.label')
    _, node = engine.run_get_node(
        CalculationFactory('capthermo.label'), code=code, structures=_structures(1),
        calculator=orm.Dict({'name': 'tblite', 'method': 'GFN1-xTB', 'max_iterations': 2}))
    assert node.exit_status == 410
    assert 'SCF' in node.exit_message


def test_label_calcjob_rejects_bad_calculator(script_code):
    code = script_code('capthermo-label', 'capthermo.label')
    with pytest.raises(ValueError, match='invalid calculator'):
        engine.run(CalculationFactory('capthermo.label'), code=code, structures=_structures(1),
                   calculator=orm.Dict({'method': 'DFT-D4'}))
