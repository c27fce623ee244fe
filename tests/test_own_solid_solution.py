"""A second family through the whole study: CsPb(Br,I)3 from a CIF the test writes, on localhost through the daemon,
with the demo protocol shrunk as in test_study.py, to Table I (`-m slow`: about as long as test_study's study)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from aiida import engine

from aiida_capthermo.workflows.study import CapthermoStudyWorkChain

from parent_helpers import CSPBI3_CIF  # tests/ is on sys.path (rootdir-style test modules)

pytestmark = pytest.mark.slow


@pytest.mark.timeout(3600)
def test_cspb_br_i_3_study_from_a_cif_to_table_one(localhost_session, daemon_client, tmp_path):
    """The user's path: a CIF, `set_parent` (what `capthermo submit study --parent --site --guest` does), the demo
    protocol. The end members are relaxed with the low engine (zero forces by symmetry and zero stress), the screen
    samples the 8,798 classes of x = 1/2 on 24 halide sites, and Table I has both compositions at both temperatures
    with finite gaps and errors; `capthermo report` writes it."""
    from click.testing import CliRunner

    from aiida_capthermo.cli.main import cli, set_parent
    from aiida_capthermo.ml.labelling import CalculatorSpec, single_point_function

    from test_study import study_codes

    path = tmp_path / 'CsPbI3.cif'
    path.write_text(CSPBI3_CIF)
    *codes, mlip, evaluate = study_codes(localhost_session, 'family')
    overrides = {'dataset': {'temperatures': [300.0, 600.0], 'structures_per_temperature': 3,
                             'n_equilibrium': 1, 'high_structures': 3, 'x_values': [0.0, 0.5, 1.0]},
                 'gnn': {'hyperparameters': {'max_epochs': 5}, 'finetune_hyperparameters': {'max_epochs': 3}},
                 'mace': {'hyperparameters': {'max_num_epochs': 1, 'num_channels': 8, 'max_L': 0},
                          'refine': {'compositions': [0.5], 'temperatures': [300.0], 'steps': 40,
                                     'frame_stride': 20, 'max_frame_force': 1000.0, 'finetune_epochs': 1,
                                     'rounds': 1},
                          'md_check': {'compositions': [0.5], 'temperatures': [300.0], 'steps': 40}},
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
    set_parent(builder, 'study', str(path), 'I', 'Br')
    assert builder.dataset.prototype.get_dict() == {'host': 'I', 'guest': 'Br'} and 'relax' in builder.dataset
    if not daemon_client.is_daemon_running:
        daemon_client.start_daemon()
    node, deadline = engine.submit(builder), time.monotonic() + 3000
    while not node.is_terminated:
        assert time.monotonic() < deadline, f'the study <{node.pk}> did not finish within 3000 s'
        time.sleep(2.0)
    failed = [(n.process_label, n.exit_status, n.exit_message) for n in node.called_descendants if n.is_failed]
    assert node.is_finished_ok, (node.exit_status, node.exit_message, failed)
    results = node.outputs

    # the relaxed end members: cubic, zero stress, and lattice parameters of this engine
    single_point = single_point_function(CalculatorSpec())
    parents = {role: results['dataset']['parents'][role].get_ase() for role in ('host', 'guest')}
    assert parents['host'].get_chemical_formula() == 'CsI3Pb' and parents['guest'].get_chemical_formula() == 'Br3CsPb'
    for atoms in parents.values():
        assert np.abs(single_point(atoms.repeat((2, 2, 2)))['stress']).max() < 1e-4
    assert parents['host'].cell.lengths()[0] == pytest.approx(6.266, abs=0.01)
    assert parents['guest'].cell.lengths()[0] == pytest.approx(5.804, abs=0.01)
    # the screen: 24 halide sites, x = 1/2 sampled from its 8,798 classes, cells between the relaxed end members
    table = results['screen']['compositions']['x_0p500']['configurations'].get_dict()
    assert (table['n_sites'], table['n_guest'], table['n_classes'], table['n_permutations']) == (24, 12, 8798, 384)
    assert table['sampled'] and len(table['configurations']) == 2
    vegard = 0.5 * (parents['host'].cell.array + parents['guest'].cell.array) * 2
    np.testing.assert_allclose(table['cell'], vegard, atol=1e-8)
    # Table I: both compositions at both temperatures, finite, ΔEg(0) = 0
    rows = results['table']['rows']
    assert [row['x'] for row in rows] == [0.0, 0.5]
    for row in rows:
        assert row['temperatures'] == [0.0, 300.0] and np.all(np.isfinite(row['gap']))
        assert row['delta_gap'][0] == 0.0 and np.isfinite(row['stderr'][1])
    # the report of the study, as a user asks for it
    result = CliRunner().invoke(cli, ['report', str(node.pk), '-o', str(tmp_path / 'report')])
    assert result.exit_code == 0, result.output
    print(result.output)
