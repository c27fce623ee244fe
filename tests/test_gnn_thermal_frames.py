"""The band-gap GNN learns from MD frames: the gaps of frames of the potential's MD join its first stage, and a
budget of them, spread over their (x, T), is labelled by the high engine for its second stage."""

from __future__ import annotations

import numpy as np
from aiida import engine, orm

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.data.dataset import DatasetData

from gnn_helpers import synthetic_set

HYPER = {'max_epochs': 25, 'hidden_channels': 16, 'batch_size': 8, 'learning_rate': 5e-3, 'dropout': 0.0,
         'patience': None}


def test_md_frames_teach_the_gnn_the_disorder_it_is_averaged_over(script_code):
    """Trained on near-equilibrium cells (displacements up to 0.15 Å), a GNN extrapolates badly to the larger
    displacements of thermal frames (0.3-0.5 Å, where the synthetic gap is 0.3-0.6 eV lower); with 40 labelled
    MD frames in its first stage, its error on 30 other thermal frames falls by more than half."""
    from aiida_capthermo.workflows.gnn import GnnTwoStageWorkChain

    code = script_code('capthermo-gnn', 'capthermo.gnn_train')
    low = DatasetData.from_labelled_set(synthetic_set(60, seed=0, amplitude=(0.0, 0.15)), fidelity='low',
                                        method='synthetic').store()
    md = DatasetData.from_labelled_set(synthetic_set(40, seed=3, amplitude=(0.3, 0.5)), fidelity='low',
                                       method='synthetic', subset='md').store()
    thermal = synthetic_set(30, seed=4, amplitude=(0.3, 0.5))
    structures = [orm.StructureData(ase=thermal.atoms(i, with_labels=False)) for i in range(len(thermal))]
    errors = {}
    for name, extra in (('phonon-informed only', {}), ('with MD frames', {'md_frames': md})):
        builder = GnnTwoStageWorkChain.get_builder_from_protocol(code, protocol='demo',
                                                                 overrides={'hyperparameters': HYPER}, low=low,
                                                                 **extra)
        results, node = engine.run_get_node(builder)
        assert node.is_finished_ok, (node.exit_status, node.exit_message)
        if extra:
            assert results['model'].creator.inputs.datasets.md.uuid == md.uuid
            assert 'md_high' not in results  # no high-fidelity set: the budget is not spent
        # the thermal frames lie outside the phonon-informed model's domain, on purpose: flagged, not refused
        predicted = np.array([p['gap'] for p in results['model'].predict(structures, out_of_domain='flag')])
        errors[name] = np.mean(np.abs(predicted - thermal.gap))
    print(errors)
    assert errors['phonon-informed only'] > 0.15
    assert errors['with MD frames'] < 0.5 * errors['phonon-informed only']


def test_md_high_labels_spread_over_temperatures_and_join_the_second_stage(script_code):
    """12 of 24 MD frames at 300 and 600 K are labelled by the high engine (IPEA1-xTB-noXB here): 6 per
    temperature, each label the engine's own gap of that frame, and the second stage trains on them."""
    from aiida_capthermo.ml.labelling import CalculatorSpec, single_point_function
    from aiida_capthermo.workflows.gnn import GnnTwoStageWorkChain

    from mlip_helpers import small_cell

    sets = []
    for index, temperature in enumerate((300.0, 600.0)):  # "MD frames": rattled 10-atom cells with low gaps
        cells = [small_cell(bool(k % 2), seed=10 * index + k, rattle=0.05 * (index + 1)) for k in range(12)]
        sets.append(LabelledSet.from_atoms_list(cells, gap=synthetic_set(12, seed=index).gap,
                                                x=np.array([0.5 * (k % 2) for k in range(12)]),
                                                temperature=np.full(12, temperature)))
    md = DatasetData.from_labelled_set(LabelledSet.concatenate(sets), fidelity='low', method='synthetic').store()
    low = DatasetData.from_labelled_set(synthetic_set(30, seed=0), fidelity='low', method='synthetic').store()
    high = DatasetData.from_labelled_set(synthetic_set(20, seed=1, high_fidelity=True), fidelity='high',
                                         method='synthetic-high').store()
    teacher = {'name': 'tblite', 'method': 'IPEA1-xTB', 'halogen_bond': False}
    builder = GnnTwoStageWorkChain.get_builder_from_protocol(
        script_code('capthermo-gnn', 'capthermo.gnn_train'), protocol='demo',
        overrides={'hyperparameters': {**HYPER, 'max_epochs': 3}, 'md_high_labels': 12, 'seed': 2},
        low=low, high=high, md_frames=md,
        high_engine={'code': script_code('capthermo-label', 'capthermo.label'), 'calculator': orm.Dict(teacher)})
    results, node = engine.run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    labels = results['md_high'].get_labelled_set()
    assert len(labels) == 12 and sorted(np.unique(labels.temperature, return_counts=True)[1]) == [6, 6]
    assert results['model'].creator.inputs.datasets.md.uuid == results['md_high'].uuid
    assert results['model'].creator.inputs.datasets.high.uuid == high.uuid
    # each label is the teacher's gap of that very frame
    direct = single_point_function(CalculatorSpec(**teacher))(labels.atoms(0, with_labels=False))
    assert abs(labels.gap[0] - direct['gap']) < 1e-6
