"""Eg(x, T) of an alloy that is an ensemble of configurations: each configuration corrected by its own validation
(not its composition's), then the Boltzmann-weighted average, its errors and the spread of the configurations, all
against a hand calculation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aiida_capthermo.core.constants import KB_EV
from aiida_capthermo.core.error_budget import budget_rows, engine_weights, ensemble_rows, student_factor
from aiida_capthermo.core.solid_solution import class_probabilities
from aiida_capthermo.core.validation import select_frames, validation_rows


def _thermal(key: str, eg0: float, gap: float, stderr: float) -> list[dict]:
    """A thermal stage's rows of one structure at x = 1/2: Eg(0) and the MD average at 300 K."""
    return [{'key': key, 'x': 0.5, 'temperature': 0.0, 'gap': eg0, 'stderr': 0.0, 'eg0': eg0, 'n_frames': 0},
            {'key': key, 'x': 0.5, 'temperature': 300.0, 'gap': gap, 'stderr': stderr, 'eg0': eg0, 'n_frames': 200,
             'n_independent': 20.0, 'n_outside_domain': 0}]


def _validation(key: str, bias0: float, bias: float, bias_stderr: float, shift: float,
                energy_bias: float | None = None) -> list[dict]:
    """Validation rows of one structure: at 0 K the GNN's bias and, when given, the engine-minus-potential energy
    per atom of the relaxed cell; at 300 K the bias over 8 frames and the sampling shift."""
    return [{'key': key, 'x': 0.5, 'temperature': 0.0, 'n_gap': 1, 'gnn_bias': bias0, 'gnn_bias_stderr': None,
             'teacher_gap': None, 'energy_per_atom_bias': energy_bias},
            {'key': key, 'x': 0.5, 'temperature': 300.0, 'n_gap': 8, 'gnn_bias': bias, 'gnn_bias_stderr': bias_stderr,
             'teacher_gap': None, 'sampling_shift': shift, 'sampling_shift_stderr': 0.0, 'sampling_beta_sigma': 0.5,
             'n_sampling': 8}]


def test_frames_and_rows_per_configuration():
    """Two configurations of one composition are two validation points: frames picked for each, rows apart."""
    series = [{'x': 0.5, 'temperature': 300.0, 'offset': 0, 'n_frames': 40, 'start': 10, 'key': 'x_0p500_c000'},
              {'x': 0.5, 'temperature': 300.0, 'offset': 40, 'n_frames': 40, 'start': 10, 'key': 'x_0p500_c004'}]
    picked = select_frames(series, per_point=4, min_spacing=3, seed=1)
    assert sorted({f['point'] for f in picked}) == ['x_0p500_c000_T300', 'x_0p500_c004_T300']
    assert all((f['index'] < 40) == (f['key'] == 'x_0p500_c000') for f in picked) and len(picked) == 8
    gnn = np.full(8, 1.0)
    teacher = np.where([f['key'] == 'x_0p500_c000' for f in picked], 1.1, 0.7)  # biases +0.1 and -0.3
    rows = validation_rows([0.5] * 8, [300.0] * 8, teacher, gnn, [1] * 8, [np.nan] * 8, [np.nan] * 8,
                           np.full((8, 3), np.nan), np.full((8, 3), np.nan), points=[f['point'] for f in picked],
                           keys=[f['key'] for f in picked])
    assert [(r['key'], round(r['gnn_bias'], 12)) for r in rows] == [('x_0p500_c000', 0.1), ('x_0p500_c004', -0.3)]
    with pytest.raises(ValueError, match='different compositions'):
        validation_rows([0.5, 0.25], [300.0] * 2, [1.0] * 2, [1.0] * 2, [1] * 2, [np.nan] * 2, [np.nan] * 2,
                        np.full((2, 3), np.nan), np.full((2, 3), np.nan), points=['p', 'p'], keys=['a', 'a'])


def test_boltzmann_ensemble_equals_a_hand_calculation():
    """Two configurations of x = 1/2 with multiplicities 6 and 24, 20 meV apart per cell, at a synthesis temperature
    of 800 K: each is corrected by its own bias, then averaged with its Boltzmann weight; the errors and the
    spread of the configurations are those computed here by hand."""
    temperature = 800.0
    weights = class_probabilities([0.0, 0.02], [6, 24], temperature)
    by_hand = np.array([6.0, 24.0 * math.exp(-0.02 / (KB_EV * temperature))])
    np.testing.assert_allclose(weights, by_hand / by_hand.sum(), rtol=1e-12)
    w_a, w_b = weights
    thermal = _thermal('c000', 0.9, 0.6, 0.01) + _thermal('c004', 0.5, 0.45, 0.02)
    validation = _validation('c000', 0.05, 0.10, 0.02, 0.03) + _validation('c004', -0.10, -0.20, 0.04, -0.01)
    flat = budget_rows(thermal, validation)
    own = {(r['key'], r['temperature']): r for r in flat}
    assert own[('c000', 300.0)]['gap'] == pytest.approx(0.70) and own[('c004', 300.0)]['gap'] == pytest.approx(0.25)
    rows = ensemble_rows(flat, {'x_0p500': {'c000': float(w_a), 'c004': float(w_b)}})
    assert [(r['key'], r['temperature']) for r in rows] == [('x_0p500', 0.0), ('x_0p500', 300.0)]
    cold, hot = rows
    assert cold['gap'] == pytest.approx(w_a * 0.95 + w_b * 0.40) and cold['stderr'] == 0.0
    gap = w_a * 0.70 + w_b * 0.25
    t = student_factor(8)
    statistical = math.sqrt((w_a * 0.01) ** 2 + (w_b * 0.02) ** 2)
    model = math.sqrt((w_a * 0.02 * t) ** 2 + (w_b * 0.04 * t) ** 2)
    sampling = w_a * 0.03 + w_b * 0.01  # |shift| of each, summed: they come from one potential
    assert hot['gap'] == pytest.approx(gap, abs=1e-12)
    assert hot['stderr_statistical'] == pytest.approx(statistical, abs=1e-12)
    assert hot['stderr_model'] == pytest.approx(model, abs=1e-12)
    assert hot['stderr_sampling'] == pytest.approx(sampling, abs=1e-12)
    assert hot['stderr'] == pytest.approx(math.sqrt(statistical**2 + model**2 + sampling**2), abs=1e-12)
    assert hot['eg0'] == pytest.approx(cold['gap']) and hot['delta_gap'] == pytest.approx(gap - cold['gap'])
    spread = math.sqrt(w_a * (0.70 - gap) ** 2 + w_b * (0.25 - gap) ** 2)
    assert hot['configuration_spread'] == pytest.approx(spread, abs=1e-12)
    assert hot['n_frames'] == 400 and hot['n_validation'] == 16 and hot['validated']
    assert [c['key'] for c in hot['configurations']] == ['c000', 'c004']
    # The composition's pooled bias (what one (x, T) validation point would give with equal frames of each) is not
    # the ensemble's: per-configuration validation is what makes the average right.
    pooled = np.mean([0.10, -0.20])
    assert abs((w_a * 0.6 + w_b * 0.45 + pooled) - hot['gap']) > 0.05


def test_weights_error_from_the_engines_relative_energies_equals_a_hand_calculation():
    """The weights come from the potential's energies; the engine puts configuration c004 0.05 eV per cell higher
    relative to c000 than the potential does (the common offset of 0.1 eV cancels). The weights' error is the change
    of the average with the engine's weights, computed here by hand: in Eg(T) and Eg(0) it is the weight moved
    times the gaps' difference; in ΔEg the shift of Eg(T) and Eg(0) largely cancel."""
    temperature = 600.0
    w_a, w_b = 0.8, 0.2
    flat = budget_rows(_thermal('c000', 0.9, 0.6, 0.01) + _thermal('c004', 0.5, 0.45, 0.02),
                       _validation('c000', 0.05, 0.10, 0.02, 0.03) + _validation('c004', -0.10, -0.20, 0.04, -0.01))
    ensemble = {'x_0p500': {'c000': w_a, 'c004': w_b}}
    bias = {'c000': 0.10, 'c004': 0.15}  # engine minus potential, eV per cell
    engine = np.array([w_a, w_b * math.exp(-0.05 / (KB_EV * temperature))])
    engine /= engine.sum()
    assert engine_weights(ensemble['x_0p500'], bias, temperature) == pytest.approx(
        {'c000': engine[0], 'c004': engine[1]}, abs=1e-15)
    moved = engine[1] - w_b  # what c000 gains, c004 loses
    cold, hot = ensemble_rows(flat, ensemble, {'x_0p500': engine_weights(ensemble['x_0p500'], bias, temperature)})
    without = {r['temperature']: r for r in ensemble_rows(flat, ensemble)}
    # corrected gaps: c000 0.95 (0 K) and 0.70 (300 K), c004 0.40 and 0.25
    assert cold['stderr_weights'] == pytest.approx(abs(moved * (0.40 - 0.95)), abs=1e-15)
    assert hot['stderr_weights'] == pytest.approx(abs(moved * (0.25 - 0.70)), abs=1e-15)
    assert hot['gap'] == without[300.0]['gap']  # an error term, not a correction
    assert hot['stderr'] == pytest.approx(math.hypot(without[300.0]['stderr'], hot['stderr_weights']), abs=1e-15)
    assert cold['stderr'] == pytest.approx(cold['stderr_weights'], abs=1e-15)  # Eg(0) had no other error
    delta = abs(moved * ((0.25 - 0.40) - (0.70 - 0.95)))
    assert hot['delta_gap_stderr'] == pytest.approx(math.hypot(without[300.0]['delta_gap_stderr'], delta), abs=1e-15)
    assert [c['weight_engine'] for c in hot['configurations']] == pytest.approx(list(engine), abs=1e-15)
    # no engine weights for the composition (table_one gives none without an engine energy of every
    # configuration): the term is not estimated, and the rows are those without it
    partial = ensemble_rows(flat, ensemble, {})
    assert [r['stderr_weights'] for r in partial] == [None, None]
    assert [r['stderr'] for r in partial] == [without[0.0]['stderr'], without[300.0]['stderr']]
    with pytest.raises(ValueError, match='no engine energy'):
        engine_weights(ensemble['x_0p500'], {'c000': 0.1, 'c004': math.nan}, temperature)
    with pytest.raises(ValueError, match='temperature'):
        engine_weights(ensemble['x_0p500'], bias, 0.0)


def test_ensemble_needs_every_configuration_and_sane_weights():
    thermal = _thermal('c000', 0.9, 0.6, 0.01) + _thermal('c004', 0.5, 0.45, 0.02)[:1]  # c004 lost its 300 K MD
    rows = ensemble_rows(budget_rows(thermal, None), {'x_0p500': {'c000': 0.5, 'c004': 0.5}})
    assert [(r['key'], r['temperature']) for r in rows] == [('x_0p500', 0.0)]  # no partial average at 300 K
    assert not rows[0]['validated']
    alone = ensemble_rows(budget_rows(_thermal('x000', 1.0, 0.8, 0.01), None), {})
    assert [r['key'] for r in alone] == ['x000', 'x000']  # structures in no ensemble pass unchanged
    with pytest.raises(ValueError, match='positive sum'):
        ensemble_rows([], {'x_0p500': {'c000': 0.0}})
    with pytest.raises(ValueError, match='configuration of'):
        ensemble_rows([], {'a': {'c000': 1.0}, 'b': {'c000': 1.0}})


def test_table_one_averages_the_ensemble_and_keeps_the_configurations(aiida_profile):
    """Table I from a thermal stage with two configurations of x = 1/2 and one structure of x = 0: the x = 1/2 row
    is the ensemble's, the configurations' rows and gap nodes are kept, the text names the weights and spread."""
    from aiida import orm

    from aiida_capthermo.workflows.report import table_text

    weights = {'c000': 0.75, 'c004': 0.25}
    thermal = _thermal('c000', 0.9, 0.6, 0.01) + _thermal('c004', 0.5, 0.45, 0.02) + [
        {**row, 'x': 0.0} for row in _thermal('x000', 1.2, 0.9, 0.01)]
    # the engine's energies per atom of the relaxed cells: c004 1 meV/atom (40 meV per 40-atom cell) higher
    # relative to c000 than the potential has it
    validation = _validation('c000', 0.05, 0.10, 0.02, 0.03, energy_bias=0.100) + _validation(
        'c004', -0.10, -0.20, 0.04, -0.01, energy_bias=0.101)
    from aiida_capthermo.workflows.report import table_one

    outputs = table_one(orm.Dict({'rows': thermal}), orm.Dict({'rows': validation, 'teacher_method': 'teacher'}),
                        ensemble=orm.Dict({'x_0p500': weights}),
                        ensemble_settings=orm.Dict({'configurations': 2, 'temperature': 600.0,
                                                    'n_atoms': {'x_0p500': 40}}))
    engine = engine_weights(weights, {'c000': 4.0, 'c004': 4.04}, 600.0)
    moved = engine['c004'] - 0.25
    assert outputs['gap_x_0p500_T300']['stderr_weights'] == pytest.approx(abs(moved * (0.25 - 0.70)), rel=1e-9)
    rows = outputs['table']['rows']
    assert [row['key'] for row in rows] == ['x000', 'x_0p500']
    assert rows[1]['gap'][1] == pytest.approx(0.75 * 0.70 + 0.25 * 0.25)
    assert [(c['key'], c['weight']) for c in rows[1]['configurations']] == [('c000', 0.75), ('c004', 0.25)]
    assert not rows[0]['validated'][1] and rows[1]['validated'][1]  # x = 0 has no validation row
    assert [row['key'] for row in outputs['table']['configurations']] == ['c000', 'c004']
    assert {'gap_c000_T300', 'gap_c004_T300', 'gap_x_0p500_T300', 'gap_x000_T300'} <= set(outputs)
    assert outputs['gap_x_0p500_T300']['configuration_spread'] == pytest.approx(
        math.sqrt(0.75 * (0.70 - 0.5875) ** 2 + 0.25 * (0.25 - 0.5875) ** 2))
    text = table_text(rows)
    gap = outputs['gap_x_0p500_T300']
    assert 'x = 0.500 is the weighted average of 2 configurations (c000 0.75, c004 0.25); the spread of their ' \
           f'gaps: 300 K {gap["configuration_spread"]:.3f} eV; the weights\' error from the low engine\'s relative ' \
           f'energies (in the total): 0 K {abs(moved * 0.55):.2g} eV, 300 K {gap["stderr_weights"]:.2g} eV.' in text
    header, *lines = outputs['csv'].get_content().splitlines()
    assert header.endswith('configuration_spread_eV,stderr_weights_eV,stderr_members_eV,n_drifting')
    assert lines[-1].endswith(  # one GNN: no ensemble spread; rows without the replicas' drift: not counted
        f'{gap["configuration_spread"]:.6f},{gap["stderr_weights"]:.6f},,')
    assert rows[1]['configurations'][1]['weight_engine'] == pytest.approx(engine['c004'])
    # one configuration without an engine energy: the term is not estimated, and the text says so
    partial = _validation('c000', 0.05, 0.10, 0.02, 0.03, energy_bias=0.100) + _validation(
        'c004', -0.10, -0.20, 0.04, -0.01)
    outputs = table_one(orm.Dict({'rows': thermal}), orm.Dict({'rows': partial, 'teacher_method': 'teacher'}),
                        ensemble=orm.Dict({'x_0p500': weights}),
                        ensemble_settings=orm.Dict({'configurations': 2, 'temperature': 600.0,
                                                    'n_atoms': {'x_0p500': 40}}))
    assert outputs['gap_x_0p500_T300']['stderr_weights'] is None
    assert 'the weights\' error is not estimated' in table_text(outputs['table']['rows'])
    with pytest.raises(ValueError, match='the engine\'s weights are of'):
        ensemble_rows(budget_rows(thermal, None), {'x_0p500': weights}, {'x_0p500': {'c000': 1.0}})


def test_random_alloy_ensemble_weights_and_table(aiida_profile):
    """`ensemble` with `weighting: random`: the study's validator takes it without a temperature, the weights are
    the classes' multiplicities over their sum (the screen's energies unused), the coverage their share of the
    ranked classes' arrangements, and Table I's weights' error is zero: no energy enters the weights."""
    from aiida import orm

    from aiida_capthermo.workflows.report import table_one
    from aiida_capthermo.workflows.study import ensemble_error, ensemble_weights

    assert ensemble_error({'configurations': 2, 'weighting': 'random'}, keep=2) is None
    ranking = orm.Dict({'keys': ['c000', 'c004', 'c001'], 'lowest': 'c000', 'multiplicity': [6, 24, 8],
                        'energy_per_atom': [-3.0, -2.999, -2.99]})
    settings = orm.Dict({'configurations': 2, 'weighting': 'random', 'n_atoms': {'x_0p500': 40}})
    made = ensemble_weights(settings, x_0p500=ranking)
    assert made['weights'].get_dict() == {'x_0p500': pytest.approx({'x_0p500_c000': 0.2, 'x_0p500_c004': 0.8})}
    assert made['coverage']['x_0p500'] == pytest.approx(30 / 38)
    thermal = [{**row, 'key': f'x_0p500_{row["key"]}'} for row in
               _thermal('c000', 0.9, 0.6, 0.01) + _thermal('c004', 0.5, 0.45, 0.02)]
    validation = [{**row, 'key': f'x_0p500_{row["key"]}'} for row in
                  _validation('c000', 0.05, 0.10, 0.02, 0.03, energy_bias=0.100)
                  + _validation('c004', -0.10, -0.20, 0.04, -0.01, energy_bias=0.130)]
    outputs = table_one(orm.Dict({'rows': thermal}), orm.Dict({'rows': validation, 'teacher_method': 'teacher'}),
                        ensemble=made['weights'], ensemble_settings=settings)
    row = outputs['table']['rows'][0]
    assert row['gap'][1] == pytest.approx(0.2 * 0.70 + 0.8 * 0.25) and row['stderr_weights'] == [0.0, 0.0]
