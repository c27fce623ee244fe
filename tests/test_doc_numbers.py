"""The docs quote figures from committed results (benchmark JSON, the demo's run record and Table I, example runs):
each quoted figure is recomputed here from its source and must appear in the page, formatted as the page writes
it. A rerun of a benchmark that changes a figure fails this test until the page is updated."""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
import statistics

import pytest

ROOT = pathlib.Path(__file__).parent.parent


def _json(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def _get(data, path: str):
    for key in path.split('/'):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return data


def _table_i(name: str = 'table_i.csv', folder: str = 'docs/figures/demo') -> dict:
    with open(ROOT / folder / name) as handle:
        return {(float(r['x']), float(r['temperature_K'])): r for r in csv.DictReader(handle)}


def _table_rows(table: dict) -> list[str]:
    """Table I's Markdown rows as docs/study.md prints them, from a table_i.csv read by :func:`_table_i`."""
    lines = []
    for x in sorted({x for x, _ in table}):
        rows = [table[key] for key in sorted(table) if key[0] == x]
        cells = [f'{float(rows[0]["gap_eV"]):.3f}']
        cells += [f'{float(r["gap_eV"]):.3f} ± {float(r["stderr_eV"]):.3f}' for r in rows[1:]]
        cells += [f'{100 * float(r["relative_change"]):.1f} %'.replace('-', '−') for r in rows[1:]]
        lines.append(f'| {x:g} | ' + ' | '.join(cells) + ' |')
    return lines


def _against_teacher_md(row: dict) -> tuple[float, float]:
    """A Table I row (x = 1, 600 K) against the teacher's own MD there (docs/figures/demo/teacher_md_check.json):
    the difference (eV) and the two stated errors combined (eV)."""
    teacher = _json('docs/figures/demo/teacher_md_check.json')
    return (float(row['gap_eV']) - teacher['teacher_md_gap'],
            math.hypot(float(row['stderr_eV']), teacher['teacher_md_stderr']))


def _core_stderr(row: dict) -> float:
    """A Table I row's statistical and model errors in quadrature (eV): its stated total less the sampling term."""
    return math.hypot(float(row['stderr_statistical_eV']), float(row['stderr_model_eV']))


# (page, source JSON, key path, how the page writes it)
CLAIMS = [
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_medium_cueq/projection/best/sweep_minutes', '{:.1f} min'),
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_medium_cueq/projection/best/us_per_atom_step', '| {:.2f} ('),
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_medium/projection/best/sweep_minutes', '{:.1f} min'),
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_medium/projection/best/us_per_atom_step', '| {:.2f} ('),
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_demo/projection/best/us_per_atom_step', '| {:.2f} ('),
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_demo_cueq/projection/best/us_per_atom_step', '| {:.2f} ('),
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_medium_cueq/projection/paper_layout_63_replicas/sweep_minutes',
     '{:.1f} min'),
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_torchsim_wrapper/points/3/seconds_per_step', '{:.3f} s'),
    ('docs/thermal.md', 'benchmarks/bench_gpu.json', 'md_demo/points/5/seconds_per_step', '{:.4f} s'),
    ('docs/screen.md', 'benchmarks/bench_gpu.json', 'relax/one_at_a_time/relaxations_per_minute', '| {:.1f} |'),
    ('docs/screen.md', 'benchmarks/bench_gpu.json', 'relax/batched_100/relaxations_per_minute', '| {:.1f} |'),
    ('docs/screen.md', 'benchmarks/bench_gpu.json', 'relax/batched_22/speedup_vs_one_at_a_time', '{:.1f}x'),
    ('docs/mace.md', 'benchmarks/bench_gpu.json', 'finetune/epoch_seconds_1000', '{:.1f} s per epoch'),
    ('docs/gnn.md', 'benchmarks/bench_gpu.json', 'gnn/train_seconds_per_epoch_per_1000', '{:.2f} s per epoch'),
    ('docs/dataset.md', 'benchmarks/bench_dataset.json', 'sampling_ms_per_structure', '{:.3f} ms'),
    ('docs/dataset.md', 'benchmarks/bench_dataset.json', 'sampling_and_storing_ms_per_structure', '{:.1f} ms'),
    ('docs/dataset.md', 'benchmarks/bench_dataset.json', 'storing_over_sampling', '{:.0f}x'),
    ('docs/dataset.md', 'benchmarks/bench_dataset.json', 'labelling_s_per_structure', '{:.2f} s'),
    ('docs/dataset.md', 'benchmarks/bench_label_methods.json', 'rows/1/seconds_per_label', '| {:.2f} |'),
    ('docs/gnn.md', 'benchmarks/bench_gnn_graphs.json', 'loop_s', '{:.1f} s'),
    ('docs/gnn.md', 'benchmarks/bench_gnn_graphs.json', 'speedup', '{:.0f}x'),
    ('docs/gnn.md', 'benchmarks/bench_gnn_graphs.json', 'mean_edges_per_structure', '{:.0f} edges'),
    ('docs/gnn.md', 'benchmarks/bench_gnn_model.json', 'end_to_end_prediction_structures_per_s', '{:.0f} structures/s'),
    ('docs/gnn.md', 'benchmarks/bench_gnn_model.json', 'train_seconds_per_epoch_700_train_structures', '{:.2f} s'),
    ('docs/gnn.md', 'docs/figures/gnn_phonon_vs_random/gnn_phonon_vs_random_paper.json',
     'results/phonon/cross_test_on_random/mae', '{:.3f} eV'),
    ('docs/gnn.md', 'docs/figures/gnn_phonon_vs_random/gnn_phonon_vs_random_matched.json',
     'results/random/cross_test_on_phonon/mae', '{:.3f} eV'),
    ('docs/gnn.md', 'docs/figures/gnn_phonon_vs_random/gnn_phonon_vs_random_matched.json',
     'gap_statistics_eV/random/mean', '{:.3f} ± '),
    ('docs/cluster.md', 'benchmarks/bench_load.json', 'results/0/wall_s', '{:.0f} s'),
    ('docs/cluster.md', 'benchmarks/bench_load.json', 'results/0/aiida_ms_per_structure', '{:.0f} ms'),
    ('docs/cluster.md', 'benchmarks/bench_load.json', 'results/1/database_mb', '{:.1f} MB'),
    ('docs/thermal.md', 'benchmarks/bench_thermal.json', 'md/ase_one_replica/seconds_per_step', '{:.3f}'),
    ('docs/thermal.md', 'benchmarks/bench_thermal.json', 'md/torchsim_8/replica_steps_per_s', '{:.1f}'),
    ('docs/screen.md', 'benchmarks/bench_screen.json', 'ase_bfgs_one_at_a_time/seconds', '{:.1f} s'),
    ('docs/screen.md', 'benchmarks/bench_screen.json', 'speedup', '{:.1f}x'),
    ('docs/mace.md', 'benchmarks/bench_mace.json', 'tiny/evaluation/structures_per_second', '| {:.0f} |'),
    ('docs/mace.md', 'benchmarks/bench_mace.json', 'ratio_medium_over_tiny/training_seconds_per_structure', '{:.0f}x'),
    ('docs/mace.md', 'benchmarks/bench_mace_width.json', 'ratio_64_over_32', '{:.2f}x slower'),
    ('docs/mace.md', 'benchmarks/bench_mace_width.json', 'widths/64/seconds_per_structure', '({:.3f} against'),
    ('docs/mace.md', 'benchmarks/bench_mace_width.json', 'widths/32/seconds_per_structure', 'against {:.3f} s per'),
    ('docs/mace.md', 'benchmarks/bench_mace_width.json', 'mid_record/training_seconds', 'spent {:.0f} s of its'),
    ('docs/mace.md', 'benchmarks/bench_mace_width.json', 'mid_record/potential_stage_seconds', 'of its {:.0f} s'),
    ('docs/mace.md', 'benchmarks/bench_mace_width.json', 'projected_mid_study_seconds', 'least {:.0f} s ('),
    ('docs/mace.md', 'benchmarks/bench_mace_width.json', 'mid_record/study_seconds', '(the record: {:.0f} s)'),
    ('docs/displacements.md', 'benchmarks/bench_sampling.json', 'ms_per_structure/uniform', '{:.4f}'),
    ('docs/study.md', 'docs/figures/demo/run.json', 'study_seconds', '{:.0f} s'),
    ('docs/study.md', 'docs/figures/demo/label_time.json', 'rows/0/seconds_per_label', '{:.2f} s that day'),
    ('docs/study.md', 'docs/figures/demo/run.json', 'mace_evaluation/force_mae_eV_per_A', '{:.3f} eV/Å'),
    ('docs/study.md', 'docs/figures/demo/run.json', 'mace_training_set/origins/md', '{} frames'),
    ('docs/study.md', 'docs/figures/demo/run.json', 'screen_phonons/x_0p000.c000/n_imaginary', '{} imaginary modes'),
    ('docs/thermal.md', 'docs/figures/demo/sampling_term.json', 'min_beta_sigma', 'is {:.1f} to '),
    ('docs/thermal.md', 'docs/figures/demo/sampling_term.json', 'max_beta_sigma', 'to {:.1f} at every'),
    ('docs/thermal.md', 'docs/figures/demo/sampling_term.json', 'min_stderr', 'now {:.3f} to '),
    ('docs/thermal.md', 'docs/figures/demo/sampling_term.json', 'max_stderr', 'to {:.3f} eV, where'),
    ('docs/thermal.md', 'docs/figures/demo/sampling_term.json', 'x1_600K_shift', '600 K, {:+.3f} ± '),
    ('docs/thermal.md', 'docs/figures/demo/sampling_term.json', 'x1_600K_shift_stderr', '± {:.3f} eV, has'),
    ('docs/thermal.md', 'docs/figures/demo/teacher_md_check.json', 'teacher_md_gap', '{:.3f} ± '),
    ('docs/thermal.md', 'docs/figures/demo/teacher_md_check.json', 'teacher_md_stderr', '± {:.3f} |'),
    ('docs/thermal.md', 'docs/figures/demo/teacher_md_check.json', 'table_gap', '| {:.3f} ± '),
    ('docs/thermal.md', 'docs/figures/demo/teacher_md_check.json', 'gnn_gap', '| {:.3f} |'),
    ('docs/thermal.md', 'docs/figures/demo/teacher_md_check.json', 'difference',
     "minus the teacher's own MD is {:.3f} eV"),
    ('docs/thermal.md', 'docs/figures/demo/teacher_md_check.json', 'z', 'z = {:.1f} (over'),
    ('docs/thermal.md', 'docs/figures/demo/teacher_md_check.json', 'inefficiency', 'inefficiency {:.1f}'),
    ('docs/study.md', 'docs/figures/teacher_gaps.json', 'rows/0/gap_high_eV', '{:.2f}'),
    ('docs/study.md', 'docs/figures/demo/run_other_day.json', 'study_seconds', '{:.0f} s, with a label'),
    ('docs/study.md', 'docs/figures/demo/label_time_other_day.json', 'rows/0/seconds_per_label',
     '{:.2f} s that afternoon'),
    ('docs/study.md', 'docs/figures/demo/run_other_day.json', 'mace_learning_curve/rounds/0/force_mae',
     'first MD frames is {:.3f} eV/Å'),
    ('docs/study.md', 'docs/figures/demo/run.json', 'mace_learning_curve/rounds/0/force_mae',
     'against {:.3f}.\n- Every job'),
    ('docs/study.md', 'docs/figures/teacher_gaps.json', 'rows/9/gap_high_eV', '{:.2f}'),
]


@pytest.mark.parametrize('page, source, key, pattern', CLAIMS, ids=[f'{c[0]}:{c[2]}' for c in CLAIMS])
def test_quoted_figure_matches_its_source(page, source, key, pattern):
    expected = pattern.format(_get(_json(source), key))
    assert expected in (ROOT / page).read_text(), f'{page} should quote {expected!r} ({source}: {key})'


def test_demo_table_i_matches_its_csv():
    """Every row of Table I in docs/study.md (Eg with its error bar, the relative changes) is the CSV's, rounded as
    printed; the run-to-run sentence quotes the largest difference of the relative changes between the two CSVs."""
    text = (ROOT / 'docs/study.md').read_text()
    table = _table_i()
    for expected in _table_rows(table):
        assert expected in text, expected
    previous = _table_i('table_i_previous_run.csv')
    ends = [key for key in table if key[0] in (0.0, 1.0) and key[1] > 0]
    largest = max(abs(float(table[k]['gap_eV']) - float(previous[k]['gap_eV']))
                  / math.hypot(float(table[k]['stderr_eV']), float(previous[k]['stderr_eV'])) for k in ends)
    assert f'agree within {largest:.1f} combined standard errors' in text, largest


def test_demo_teacher_check_matches_its_json():
    """The independent check of Table I against the teacher on other frames: the range of the differences, how
    many points lie within Table I's stated error and the largest |z| are the JSON's."""
    text = (ROOT / 'docs/study.md').read_text()
    rows = _json('docs/figures/demo/teacher_check.json')['rows']
    differences = [row['difference'] for row in rows]
    assert f'the differences are {min(differences):+.3f} to {max(differences):+.3f} eV' in text.replace('−', '-')
    within = sum(row['within'] for row in rows)
    assert f'{["No", "One", "Two", "Three", "Four", "Five", "Six"][within]} of the six points lie within' in text
    largest = max(abs(row['z']) for row in rows)
    assert largest <= 1.5 and 'all six within 1.5 of the two errors' in text, largest
    assert f'{sum(row["n_frames"] for row in rows)} other' in text


def test_md_settings_quoted_from_the_protocols():
    """The MD settings that docs/thermal.md and docs/study.md quote are the protocol files' (the thermal stage's own
    protocols, and the study's `demo` override of them), computed here from the YAML."""
    import yaml

    protocols = ROOT / 'aiida_capthermo/workflows/protocols'
    thermal = yaml.safe_load((protocols / 'thermal.yaml').read_text())
    study = yaml.safe_load((protocols / 'study.yaml').read_text())
    page = (ROOT / 'docs/thermal.md').read_text()
    for name, protocol in thermal['protocols'].items():
        md = {**thermal['default_inputs']['md'], **protocol.get('md', {})}
        picoseconds = md['steps'] * md['timestep'] / 1000
        frames = md['stride'] * md['timestep']
        assert (f'| `{name}` |' in page and f'| {md["replicas"]} | {picoseconds:g} ps, frames every {frames:g} fs'
                in page and f'| {md["friction"]:g} |' in page), (name, md)
    demo = study['protocols']['demo']['thermal']['md']
    picoseconds, frames = demo['steps'] * demo['timestep'] / 1000, demo['stride'] * demo['timestep']
    replicas = {1: 'one', 2: 'two', 3: 'three'}[demo['replicas']]
    assert f'{replicas} {picoseconds:g} ps replica at {demo["timestep"]:g} fs per composition and temperature' in page
    assert (f'{replicas} {picoseconds:g} ps replica per composition and temperature at {demo["timestep"]:g} fs, '
            f'friction {demo["friction"]:g} fs⁻¹, frames every {frames:g} fs') in (ROOT / 'docs/study.md').read_text()


def test_ensemble_side_by_side_matches_its_run():
    """The ground-state-versus-ensemble table in docs/study.md: every configuration's weight, relative energies (the
    potential's from the screen's ranking, the teacher's from the validation's 0 K rows) and gaps, and the ensemble's
    row, from docs/figures/demo_ensemble/run.json; the largest distance of ensemble and ground state as quoted."""
    record = _json('docs/figures/demo_ensemble/run.json')
    text = (ROOT / 'docs/study.md').read_text()
    rows = {(row['key'], row['temperature']): row for row in record['configurations']}
    ensemble = {row['temperature']: row for row in record['error_budget'] if row['x'] == 0.5}
    weights = record['ensemble']['weights']['x_0p500']
    ranking = record['screen_ranking']['x_0p500']
    validation = {row['point']: row for row in record['validation']['rows']}
    lowest = validation['x_0p500_c000_T0']['energy_per_atom_bias']

    def gaps(row_of) -> str:
        return ' | '.join([f'{row_of(0.0)["gap"]:.3f}'] + [f'{row_of(t)["gap"]:.3f} ± {row_of(t)["stderr"]:.3f}'
                                                            for t in (300.0, 600.0)])

    for name, relative in zip(ranking['keys'], ranking['relative_energy_per_atom']):
        key = f'x_0p500_{name}'
        if key not in weights:
            continue
        teacher = 1000 * (relative + validation[f'{key}_T0']['energy_per_atom_bias'] - lowest)
        weight = f'{weights[key]:.7f}' if weights[key] > 0.5 else f'{weights[key]:.1e}'
        label = f'{name} (ground state)' if name == ranking['lowest'] else name
        expected = (f'| {label} | {weight} | {1000 * relative:.1f} / {teacher:.1f} | '
                    + gaps(lambda t, key=key: rows[(key, t)]) + ' |')
        assert expected in text, expected
    assert '| ensemble of the three | | | ' + gaps(lambda t: ensemble[t]) + ' |' in text
    distance = max(abs(ensemble[t]['gap'] - rows[('x_0p500_c000', t)]['gap']) for t in (0.0, 300.0, 600.0))
    assert f'{distance:.1e} eV apart at most' in text, distance


def test_ensemble_weights_error_quoted_from_its_run():
    """docs/study.md's weights' error of the demo ensemble, recomputed from its run.json: the weights with the
    teacher's energies of the relaxed cells (the validation's 0 K rows, 40-atom cells, 600 K) against the run's."""
    from aiida_capthermo.core.error_budget import engine_weights

    record = _json('docs/figures/demo_ensemble/run.json')
    weights = record['ensemble']['weights']['x_0p500']
    assert record['ensemble']['settings']['temperature'] == 600
    bias = {row['key']: 40 * row['energy_per_atom_bias'] for row in record['validation']['rows']
            if row['temperature'] == 0.0 and row['key'] in weights}
    engine = engine_weights(weights, bias, 600.0)
    gaps = {(row['key'], row['temperature']): row['gap'] for row in record['configurations']}
    error = {t: abs(sum((engine[key] - w) * gaps[(key, t)] for key, w in weights.items())) for t in (0.0, 300, 600)}
    text = ' '.join((ROOT / 'docs/study.md').read_text().split())
    assert (f'is at most {max(error.values()):.1e} eV (at 0 K; {error[300]:.1e} and {error[600]:.1e} eV at 300 and '
            '600 K)') in text, error


def test_other_day_run_matches_its_csv():
    """docs/study.md's second-day Table I is its CSV's, and the run-to-run figures quoted beside it (the largest
    difference over the statistical and model parts, x = 1/2's Eg(0) in both runs) are recomputed from the CSVs."""
    text = (ROOT / 'docs/study.md').read_text()
    recorded, other = _table_i(), _table_i('table_i_other_day.csv')
    for line in _table_rows(other):
        assert line in text, line
    hot = [key for key in other if key[1] > 0]
    z = {key: (float(other[key]['gap_eV']) - float(recorded[key]['gap_eV']))
         / math.hypot(_core_stderr(other[key]), _core_stderr(recorded[key])) for key in hot}
    worst = max(z, key=lambda key: abs(z[key]))
    difference = float(other[worst]['gap_eV']) - float(recorded[worst]['gap_eV'])
    assert (f'x = {worst[0]:g} at {worst[1]:.0f} K differs by {abs(z[worst]):.1f} standard\n  errors '
            f'({difference:+.3f} eV)').replace('-', '−') in text, (worst, z[worst])
    half = f"x = 1/2's Eg(0) is {float(other[(0.5, 0.0)]['gap_eV']):.3f} eV instead of " \
           f"{float(recorded[(0.5, 0.0)]['gap_eV']):.3f}"
    assert half in text, half
    total = max(abs(float(other[k]['gap_eV']) - float(recorded[k]['gap_eV']))
                / math.hypot(float(other[k]['stderr_eV']), float(recorded[k]['stderr_eV'])) for k in hot)
    assert f'(at most {total:.2f} of them)' in text, total


def _mid_record_quoted(study: str, run: str, table_csv: str) -> tuple[dict, dict]:
    """A `mid` run's record (docs/figures/mid/``run``) and Table I (``table_csv``), after checking that docs/study.md
    quotes its Table I, its time and the time of every stage."""
    record = _json(f'docs/figures/mid/{run}')
    table = _table_i(table_csv, 'docs/figures/mid')
    for line in _table_rows(table):
        assert line in study, line
    assert f'**{record["study_seconds"]:.0f} s**' in study
    names = {'mace': 'potential', 'gnn': 'GNN', 'thermal': 'thermal stage'}
    for stage in record['stages']:
        line = f'- {names.get(stage["label"], stage["label"])} {stage["seconds"]:.0f} s;'
        assert line in study.replace(' s.\n', ' s;\n'), line
    return record, table


def test_mid_forces_only_run_quoted_from_its_record():
    """docs/study.md's section on the `mid` run whose active learning stopped on forces alone, and docs/thermal.md's
    mention of it in the end-to-end check: Table I, the
    learning curve, the ranges of the validation and of the error parts, the teacher check on other frames, the
    choice of the model and the comparison with the teacher's own MD, all recomputed from docs/figures/mid/."""
    study, thermal = (ROOT / 'docs/study.md').read_text(), (ROOT / 'docs/thermal.md').read_text()
    record, table = _mid_record_quoted(study, 'run_forces_only.json', 'table_i_forces_only.csv')
    for row in record['mace_learning_curve']['rounds']:
        assert (f'| {row["round"]} | {row["n_training"]} | {row["n_frames"]} | {row["force_mae"]:.3f} | '
                f'{1000 * row["energy_per_atom_mae"]:.1f} |') in study, row
    evaluation = record['mace_evaluation']
    assert (f'has {evaluation["force_mae_eV_per_A"]:.3f} eV/Å and {1000 * evaluation["energy_mae_eV_per_atom"]:.1f} '
            'meV/atom') in study

    def span(values, fmt='{:.3f}') -> str:
        return f'{fmt.format(min(values))}-{fmt.format(max(values))}'

    hot = [row for row in record['validation']['rows'] if row['temperature'] > 0]
    assert f'the force MAE is {span([r["force_mae"] for r in hot])} eV/Å at every (x, T)' in study
    assert f'`β·std(dU)` is {span([r["sampling_beta_sigma"] for r in hot], "{:.1f}")}. The demo' in study
    bias = [1000 * r['energy_per_atom_bias'] for r in hot]
    assert f'within {min(bias):.1f} to {max(bias):+.1f} meV/atom' in study
    budget = [row for row in record['error_budget'] if row['temperature'] > 0]
    parts = (f'statistical part {span([r["stderr_statistical"] for r in budget])} eV, model part '
             f'{span([r["stderr_model"] for r in budget])} eV, sampling term')
    assert parts in study.replace('\n', ' '), parts
    assert f'{span([r["stderr_sampling"] for r in budget])} eV):' in study.replace('\n', ' ')

    check = _json('docs/figures/mid/teacher_check_forces_only.json')['rows']
    differences = [row['difference'] for row in check]
    assert f'Table I are {min(differences):+.3f} to {max(differences):+.3f} eV' in study.replace('\n  ', ' ')
    assert all(row['within'] for row in check) and 'six of the six points lie within' in study
    assert f'off by up to {max(abs(r["gnn_gap"] - r["teacher_gap"]) for r in check):.3f} eV there' in study

    trainings = _json('docs/figures/mid/model_choice.json')['trainings']
    baseline = next(row for row in trainings if row['name'] == 'baseline')
    chosen = next(row for row in trainings if row['name'].startswith('ScaleShiftMACE'))
    assert f'the force MAE was {span([r["force_mae"] for r in baseline["rows"]])} eV/Å' in study
    assert f'had {span([r["force_mae"] for r in chosen["rows"]])} eV/Å, at' in study
    assert f'at {chosen["train_seconds"] / baseline["train_seconds"]:.1f} times the training time' in study

    row = table[(1.0, 600.0)]
    difference, combined = _against_teacher_md(row)
    assert f'+{difference:.3f} eV, {difference / combined:.1f} combined standard errors' in study
    point = next(r for r in record['validation']['rows'] if r['point'] == 'x_1p000_T600')
    flat = thermal.replace('\n', ' ')
    assert f'stated {float(row["gap_eV"]):.3f} ± {float(row["stderr_eV"]):.3f} eV: its first-order shift, ' \
           f'{point["sampling_shift"]:+.3f} ± {point["sampling_shift_stderr"]:.3f} eV' in flat
    assert f'(`β·std(dU)` = {point["sampling_beta_sigma"]:.1f} there)' in flat

    members = record['gnn_member_metrics']['models']
    assert f'Four GNNs (the ensemble) had test MAEs of {span([m["test_mae"] for m in members])} eV' in study
    assert f'`stderr_members`, is {span([r["stderr_members"] for r in budget])} eV' in study.replace('\n', ' ')
    label = _json('docs/figures/mid/label_time_forces_only.json')['rows'][0]['seconds_per_label']
    assert f'a label took {label:.2f} s against the quiet' in study


def test_mid_run_quoted_from_its_record():
    """docs/study.md's section on the `mid` run with 2.4 ps of equilibration before the averaged MD, docs/thermal.md's
    end-to-end check with it and the README's summary: Table I, the learning curve, the validation, the error
    parts, the teacher on other frames and its own MD, the replicas' drift by both tests and the comparison with
    the run without the segment, all recomputed from docs/figures/mid/."""
    import numpy as np

    study, thermal = (ROOT / 'docs/study.md').read_text(), (ROOT / 'docs/thermal.md').read_text()
    flat, thermal_flat = ' '.join(study.split()), ' '.join(thermal.split())
    readme = ' '.join((ROOT / 'README.md').read_text().split())
    record, table = _mid_record_quoted(study, 'run.json', 'table_i.csv')

    def span(values, fmt='{:.3f}') -> str:
        return f'{fmt.format(min(values))}-{fmt.format(max(values))}'

    curve = record['mace_learning_curve']
    assert curve['sampling_tolerance'] == 1.0 and curve['converged'] is False
    for row in curve['rounds']:
        assert (f'| {row["round"]} | {row["n_training"]} | {row["n_frames"]} | {row["force_mae"]:.3f} | '
                f'{1000 * row["energy_per_atom_mae"]:.1f} | {row["max_beta_sigma"]:.1f} |') in study, row
    before = _json('docs/figures/mid/run_no_equilibration.json')['mace_learning_curve']['rounds'][-1]
    assert (f'largest `β·std(dU)` of the last round fell from {before["max_beta_sigma"]:.1f} (the run below) to '
            f'{curve["rounds"][-1]["max_beta_sigma"]:.1f}') in flat
    evaluation = record['mace_evaluation']
    assert (f'has {evaluation["force_mae_eV_per_A"]:.3f} eV/Å and {1000 * evaluation["energy_mae_eV_per_atom"]:.1f} '
            'meV/atom') in flat
    hot = [row for row in record['validation']['rows'] if row['temperature'] > 0]
    assert f'the force MAE is {span([r["force_mae"] for r in hot])} eV/Å at every (x, T)' in flat
    kt = {r['point']: 8.617333e-5 * r['temperature'] for r in hot}
    per_atom = [1000 * r['sampling_beta_sigma'] * kt[r['point']] / 40 for r in hot]
    assert (f'`β·std(dU)` is {span([r["sampling_beta_sigma"] for r in hot], "{:.1f}")}, i.e. `std(dU)` '
            f'{span(per_atom, "{:.1f}")} meV/atom') in flat
    assert f'`std(dU)` on its thermal frames is {span(per_atom, "{:.1f}")} meV/atom' in thermal_flat
    assert (f'32 per (x, T), {min(r["n_frames"] for r in hot)} and {sorted(r["n_frames"] for r in hot)[1]} at x = 0 '
            'and 1/2, 300 K') in flat
    budget = [row for row in record['error_budget'] if row['temperature'] > 0]
    assert (f'statistical part {span([r["stderr_statistical"] for r in budget])} eV, model part '
            f'{span([r["stderr_model"] for r in budget])} eV, sampling term '
            f'{span([r["stderr_sampling"] for r in budget])} eV):') in flat
    members = record['gnn_member_metrics']['models']
    assert f'Four GNNs had test MAEs of {span([m["test_mae"] for m in members])} eV' in flat
    assert f'their spread after the correction is {span([r["stderr_members"] for r in budget])} eV' in flat
    label = _json('docs/figures/mid/label_time.json')['rows'][0]['seconds_per_label']
    assert f'A label took {label:.2f} s that day against the quiet 1.15 s' in flat
    quiet = record['study_seconds'] * 1.15 / label / 60
    assert f'about {quiet:.0f} minutes on a quiet day' in flat and f'about {quiet:.0f} minutes at the quiet' in readme

    # the teacher on other frames of the same MD: every point within
    check = _json('docs/figures/mid/teacher_check.json')
    rows = check['rows']
    assert check['n_checked'] == 6 and check['all_within'] and all(r['within'] for r in rows)
    differences = [r['difference'] for r in rows]
    assert (f'The teacher on {check["n_labels"]} other frames of the same MD, '
            f'{min(r["n_frames"] for r in rows)}-{max(r["n_frames"] for r in rows)} per (x, T)') in flat
    assert f'Table I are {min(differences):+.3f} to {max(differences):+.3f} eV' in flat
    assert (f'agrees with the teacher on {check["n_labels"]} other frames of the same MD at all six points '
            f'(differences {min(differences):+.3f} to {max(differences):+.3f} eV)').replace('+-', '-') in readme
    totals = {key: float(row['stderr_eV']) for key, row in table.items() if key[1] > 0}
    wide = max(totals, key=totals.get)
    assert wide == (1.0, 300.0) and sum(value <= 0.1 for value in totals.values()) == 5
    rest = [value for key, value in totals.items() if key != wide]
    assert f'at five of the six points ({span(rest)} eV); at x = 1, 300 K it is {totals[wide]:.3f}' in flat
    assert f'Its stated errors are {span(totals.values())} eV' in readme
    point = next(r for r in hot if r['point'] == 'x_1p000_T300')
    assert (f'of which the sampling term is {float(table[wide]["stderr_sampling_eV"]):.3f} eV (a first-order shift of '
            f'{point["sampling_shift"]:+.3f} ± {point["sampling_shift_stderr"]:.3f} eV, r = '
            f'{point["sampling_correlation"]:.2f}') in flat
    assert f'by {span([r["sampling_beta_sigma"] for r in hot], "{:.1f}")} kT per 40-atom cell' in readme
    assert f'thermal frames is {span([r["force_mae"] for r in hot])} eV/Å' in readme

    # the teacher's own MD at x = 1, 600 K (docs/thermal.md)
    row = table[(1.0, 600.0)]
    difference, combined = _against_teacher_md(row)
    assert f'| Table I of the `mid` study | {float(row["gap_eV"]):.3f} ± {float(row["stderr_eV"]):.3f} |' in thermal
    assert f'| the GNN alone on the same MD | {float(row["gap_model_eV"]):.3f} |' in thermal
    assert f'Table I minus the teacher\'s own MD is {difference:+.3f} eV, {difference / combined:.1f}' in thermal_flat
    assert f'teacher\'s own MD at x = 1, 600 K (`docs/thermal.md`): {difference:+.3f} eV' in flat
    assert f'the teacher\'s own MD at x = 1, 600 K ({difference:+.3f} eV)' in readme
    earlier = _table_i('table_i_no_equilibration.csv', 'docs/figures/mid')
    before_difference, before_combined = _against_teacher_md(earlier[(1.0, 600.0)])
    assert (f'stated {float(earlier[(1.0, 600.0)]["gap_eV"]):.3f} ± {float(earlier[(1.0, 600.0)]["stderr_eV"]):.3f} '
            f'eV there: {before_difference:+.3f} eV from the teacher\'s MD, '
            f'{before_difference / before_combined:.1f} standard errors') in thermal_flat

    # the replicas: no fall through the average; the old drift test's flags and the trend test's
    replicas = _json('docs/figures/mid/validation_frames.json')['replicas']
    flagged = sum(r['drifting'] for r in replicas)
    assert flagged == sum(int(r['n_drifting']) for r in table.values())  # the run's own test, in its Table I
    assert f'marked {flagged} of the {len(replicas)} replicas `§`' in flat
    largest = [max(r['energy_block_means']) for r in replicas]
    assert f'is {span(largest, "{:.2f}")} eV per 40-atom cell, with no trend' in flat
    old = _json('docs/figures/mid/validation_frames_no_equilibration.json')['replicas']
    falls = [r['energy_block_means'][0] for r in old if r['x'] in (0.0, 1.0)]
    assert f'against falls of {min(falls):.1f}-{max(falls):.1f} eV in the first tenth of the run below' in flat
    recomputed = _json('docs/figures/mid/table_i_drift_trend.json')
    assert not any(r['drifting'] for r in recomputed['replicas'])
    assert [r['start'] for r in recomputed['replicas']] == [r['start'] for r in replicas]
    largest_z = max(abs(r['energy_trend'][1]) for r in recomputed['replicas'])
    assert f'at most {largest_z:.1f} standard errors' in flat
    again = {(float(r['x']), float(r['temperature_K'])): r for r in csv.DictReader(io.StringIO(recomputed['csv']))}
    for key, row in again.items():
        assert row['gap_eV'] == table[key]['gap_eV'] and row['stderr_eV'] == table[key]['stderr_eV']
        assert row['n_drifting'] == '0'

    # against the run without the equilibration segment
    finite = [key for key in table if key[1] > 0]
    moved = {k: float(table[k]['gap_eV']) - float(earlier[k]['gap_eV']) for k in finite}
    z = {k: abs(moved[k]) / math.hypot(float(table[k]['stderr_eV']), float(earlier[k]['stderr_eV'])) for k in finite}
    worst = max(z, key=z.get)
    assert worst == (1.0, 600.0)
    assert (f'agree within {z[worst]:.2f} of the two stated totals combined (x = 1, 600 K moved by '
            f'{moved[worst]:+.3f} eV)') in flat
    assert (f'moved from {float(earlier[(0.5, 0.0)]["gap_eV"]):.3f} to {float(table[(0.5, 0.0)]["gap_eV"]):.3f} '
            'eV') in flat
    assert record['screen_ranking']['x_0p500']['lowest'] == 'c003'
    assert np.isclose(float(table[(1.0, 0.0)]['gap_eV']), float(earlier[(1.0, 0.0)]['gap_eV']))
    ranked = {r['key']: r for r in _json('docs/figures/mid/ranking_check.json')['compositions']['x_0p500']['rows']}
    lowest, second = ranked['c003'], ranked['c002']
    assert min(ranked.values(), key=lambda r: r['relaxed_meV_per_atom']) is lowest
    assert min(ranked.values(), key=lambda r: r['engine_meV_per_atom']) is lowest
    assert (f'The next, c002, is {second["engine_meV_per_atom"]:.1f} meV/atom above it on the potential\'s cells and '
            f'{second["relaxed_meV_per_atom"]:.1f} at the engine\'s minimum (the potential: '
            f'{second["potential_meV_per_atom"]:.1f})') in flat
    assert lowest['teacher_gap'] == pytest.approx(float(table[(0.5, 0.0)]['gap_eV']), abs=5e-4)
    assert (f'moves an atom by {lowest["relaxed_displacement"]:.2f} Å and its teacher gap from '
            f'{lowest["teacher_gap"]:.3f} to {lowest["relaxed_teacher_gap"]:.3f}') in flat


def test_mid_train_on_last_run_quoted_from_its_record():
    """docs/study.md's section on the `mid` run with refine.train_on_last, and docs/mace.md's summary of it: Table I,
    the time, the learning curve and its final potential, the validation's ranges against the four-round run, the
    error parts, the points over 0.1 eV, Eg(0)'s structure error, the agreement with the four-round run and the
    teacher on other frames, all recomputed from docs/figures/mid/."""
    study = (ROOT / 'docs/study.md').read_text()
    flat = ' '.join(study.split())
    mace = ' '.join((ROOT / 'docs/mace.md').read_text().split())
    record, table = _mid_record_quoted(study, 'run_train_on_last.json', 'table_i_train_on_last.csv')
    four = _json('docs/figures/mid/run.json')

    def span(values, fmt='{:.3f}') -> str:
        return f'{fmt.format(min(values))}-{fmt.format(max(values))}'

    label = _json('docs/figures/mid/label_time_train_on_last.json')['rows'][0]['seconds_per_label']
    assert f'on a day when a label took {label:.2f} s (`label_time_train_on_last.json`)' in flat
    curve = record['mace_learning_curve']
    final = curve['final']
    assert final['trained_on_last_round'] is True and curve['converged'] is False
    rounds = curve['rounds']
    for row in rounds:
        assert (f'| {row["round"]} | {row["n_training"]} | {row["n_frames"]} | {row["force_mae"]:.3f} | '
                f'{1000 * row["energy_per_atom_mae"]:.1f} | {row["max_beta_sigma"]:.1f} |') in study, row
    assert final['n_training'] == rounds[-1]['n_training'] + rounds[-1]['n_frames']
    assert f'| final | {final["n_training"]} | (none: the thermal validation checks it) |' in study
    assert (f'so the final potential learned from {final["n_training"]} structures against '
            f'{four["mace_learning_curve"]["rounds"][-1]["n_training"]}') in flat

    def validation(run):
        hot = [r for r in run['validation']['rows'] if r['temperature'] > 0]
        per_atom = [1000 * r['sampling_beta_sigma'] * 8.617333e-5 * r['temperature'] / 40 for r in hot]
        return (span([r['force_mae'] for r in hot]), span([r['sampling_beta_sigma'] for r in hot], '{:.1f}'),
                span(per_atom, '{:.1f}'))

    (force, beta, per_atom), (force_four, beta_four, _) = validation(record), validation(four)
    assert f'a force MAE of {force} eV/Å (the four-round run above: {force_four});' in flat
    assert f'`β·std(dU)` of {beta} (above: {beta_four})' in flat
    assert f'`std(dU)` is {per_atom} meV/atom and 60 more frames' in flat
    assert f'(`β·std(dU)` {beta} against {beta_four} on the thermal validation\'s frames' in mace
    budget = [row for row in record['error_budget'] if row['temperature'] > 0]
    assert (f'statistical part {span([r["stderr_statistical"] for r in budget])} eV, model part '
            f'{span([r["stderr_model"] for r in budget])} eV, sampling term '
            f'{span([r["stderr_sampling"] for r in budget])} eV):') in flat
    totals = {key: float(row['stderr_eV']) for key, row in table.items() if key[1] > 0}
    over = sorted(key for key, value in totals.items() if value > 0.1)
    assert over == [(0.5, 300.0), (1.0, 300.0)]
    points = {(r['x'], r['temperature']): r for r in record['validation']['rows']}
    for key, name in zip(over, ('x = 1/2', 'x = 1')):
        point = points[key]
        assert (f'{name} has {totals[key]:.3f} eV (sampling shift {point["sampling_shift"]:+.3f} ± '
                f'{point["sampling_shift_stderr"]:.3f} eV, r = {point["sampling_correlation"]:.2f})') in flat
    eg0 = table[(0.5, 0.0)]  # the CSV has six digits
    assert float(eg0['stderr_eV']) == pytest.approx(abs(points[(0.5, 0.0)]['sampling_shift']), abs=1e-6)
    assert (f'Eg(0) of x = 1/2 (the same ground state, {record["screen_ranking"]["x_0p500"]["lowest"]}) is '
            f'{float(eg0["gap_eV"]):.3f} ± {float(eg0["stderr_eV"]):.3f} eV') in flat
    assert f'teacher\'s gap by {points[(0.5, 0.0)]["sampling_shift"]:+.3f} eV' in flat
    assert record['screen_ranking']['x_0p500']['lowest'] == four['screen_ranking']['x_0p500']['lowest']
    old = _table_i('table_i.csv', 'docs/figures/mid')
    ratios = {key: abs(float(table[key]['gap_eV']) - float(old[key]['gap_eV'])) / math.hypot(
        float(table[key]['stderr_eV']), float(old[key]['stderr_eV'])) for key in totals}
    worst = max(ratios, key=ratios.get)
    assert f'agrees within {ratios[worst]:.2f} of the two stated totals combined' in flat
    assert f'x = 1/2, 600 K ({float(table[worst]["gap_eV"]) - float(old[worst]["gap_eV"]):+.3f} eV)' in flat
    assert worst == (0.5, 600.0)
    check = _json('docs/figures/mid/teacher_check_train_on_last.json')
    rows = check['rows']
    assert check['study_uuid'] == record['study_uuid'] and check['all_within'] and check['n_checked'] == 6
    differences = [r['difference'] for r in rows]
    assert (f'The teacher on {check["n_labels"]} other frames of the same MD, '
            f'{min(r["n_frames"] for r in rows)}-{max(r["n_frames"] for r in rows)} per (x, T)') in flat
    assert f'the differences from Table I are {min(differences):+.3f} to {max(differences):+.3f} eV' in flat


def test_mid_run_without_equilibration_quoted_from_its_record():
    """docs/study.md's section on the `mid` run with the energy criterion and the engine's ranking and no
    equilibration segment: Table I, the learning curve with its energy spreads, the validation, the error parts, the
    teacher on other frames, the teacher's own MD, the ranking and the comparison with the forces-only run, all
    recomputed from docs/figures/mid/*_no_equilibration.*."""
    import numpy as np

    from aiida_capthermo.core.validation import energy_spread, sampling_shift

    study, thermal = (ROOT / 'docs/study.md').read_text(), (ROOT / 'docs/thermal.md').read_text()
    flat, thermal_flat = ' '.join(study.split()), ' '.join(thermal.split())
    record, table = _mid_record_quoted(study, 'run_no_equilibration.json', 'table_i_no_equilibration.csv')
    curve = record['mace_learning_curve']
    assert curve['sampling_tolerance'] == 1.0 and curve['converged'] is False
    for row in curve['rounds']:
        assert (f'| {row["round"]} | {row["n_training"]} | {row["n_frames"]} | {row["force_mae"]:.3f} | '
                f'{1000 * row["energy_per_atom_mae"]:.1f} | {row["max_beta_sigma"]:.1f} |') in study, row
        assert row['max_beta_sigma'] == max(point['beta_sigma'] for point in row['sampling'])
        assert row['converged'] is False  # after round 0 the forces were within tolerance: the energies kept it going
        assert row['round'] == 0 or row['force_mae'] <= curve['force_tolerance']

    def span(values, fmt='{:.3f}') -> str:
        return f'{fmt.format(min(values))}-{fmt.format(max(values))}'

    last = curve['rounds'][-1]['sampling']
    at = {t: [p for p in last if p['temperature'] == t] for t in (300.0, 600.0)}
    assert (f'{span([p["beta_sigma"] for p in at[600.0]], "{:.1f}")} at 600 K and '
            f'{span([p["beta_sigma"] for p in at[300.0]], "{:.1f}")} at 300 K (`std(dU)` '
            f'{span([1000 * p["std_dU"] for p in at[300.0]], "{:.0f}")} meV per 40-atom cell there)') in flat
    later = [row['max_beta_sigma'] for row in curve['rounds'][1:]]
    assert f'stayed at {span(later, "{:.1f}")} after the first retraining' in flat
    evaluation = record['mace_evaluation']
    assert (f'has {evaluation["force_mae_eV_per_A"]:.3f} eV/Å and {1000 * evaluation["energy_mae_eV_per_atom"]:.1f} '
            'meV/atom') in flat
    hot = [row for row in record['validation']['rows'] if row['temperature'] > 0]
    assert f'the force MAE is {span([r["force_mae"] for r in hot])} eV/Å at every (x, T)' in flat
    assert f'`β·std(dU)` is {span([r["sampling_beta_sigma"] for r in hot], "{:.1f}")};' in flat
    correlation = {r['temperature']: r['sampling_correlation'] for r in hot if r['x'] == 1.0}
    assert f'(r = {correlation[300.0]:+.2f} and {correlation[600.0]:+.2f} at 300 and 600 K)' in flat
    # the per-frame record gives the run's sampling shifts, and its energy spreads by the criterion's function
    frames = _json('docs/figures/mid/validation_frames_no_equilibration.json')['frames']
    spreads = {(r['x'], r['temperature']): r for r in energy_spread(
        [f['x'] for f in frames], [f['temperature'] for f in frames], [f['engine_energy'] for f in frames],
        [f['potential_energy'] for f in frames])}
    for row in hot:
        point = [f for f in frames if f['x'] == row['x'] and f['temperature'] == row['temperature']]
        result = sampling_shift([f['teacher_gap'] for f in point], [f['engine_energy'] for f in point],
                                [f['potential_energy'] for f in point], row['temperature'])
        assert result['shift'] == pytest.approx(row['sampling_shift'], abs=1e-9)
        assert spreads[(row['x'], row['temperature'])]['beta_sigma'] == pytest.approx(row['sampling_beta_sigma'])
    budget = [row for row in record['error_budget'] if row['temperature'] > 0]
    parts = (f'statistical part {span([r["stderr_statistical"] for r in budget])} eV, model part '
             f'{span([r["stderr_model"] for r in budget])} eV, sampling term '
             f'{span([r["stderr_sampling"] for r in budget])} eV):')
    assert parts in flat, parts
    members = record['gnn_member_metrics']['models']
    assert f'Four GNNs had test MAEs of {span([m["test_mae"] for m in members])} eV' in flat
    assert f'their spread after the correction is {span([r["stderr_members"] for r in budget])} eV' in flat
    label = _json('docs/figures/mid/label_time_no_equilibration.json')['rows'][0]['seconds_per_label']
    assert f'A label took {label:.2f} s that day against the quiet 1.15 s' in flat

    check = _json('docs/figures/mid/teacher_check_no_equilibration.json')['rows']
    differences = [row['difference'] for row in check]
    assert (f'The teacher on {sum(r["n_frames"] for r in check)} other frames of the same MD, '
            f'{min(r["n_frames"] for r in check)}-{max(r["n_frames"] for r in check)} per (x, T)') in flat
    assert f'Table I are {min(differences):+.3f} to {max(differences):+.3f} eV' in flat
    within = sum(row['within'] for row in check)
    assert f'{["no", "one", "two", "three", "four", "five", "six"][within]} of the six points lie within' in flat
    missed = {(r['x'], r['temperature']): r for r in check if not r['within']}
    assert set(missed) == {(0.0, 300.0), (1.0, 300.0)} and missed[(0.0, 300.0)]['n_frames'] == 1
    cold = missed[(1.0, 300.0)]
    assert (f'{cold["difference"]:+.3f} eV against a stated {cold["table_stderr"]:.3f} eV ({cold["z"]:.2f} standard '
            'errors with the check\'s own)') in flat
    assert f'One misses by {cold["difference"] - cold["table_stderr"]:.3f} eV at a `§` point' in flat
    per_replica = {}
    for frame in frames:
        if (frame['x'], frame['temperature']) == (1.0, 300.0):
            per_replica.setdefault(frame['replica'], []).append(frame['teacher_gap'])
    means, counts = [float(np.mean(g)) for g in per_replica.values()], [len(g) for g in per_replica.values()]
    assert len(means) == 3
    assert (f'is {means[0]:.3f}, {means[1]:.3f} and {means[2]:.3f} eV ({counts[0]}, {counts[1]} and {counts[2]} '
            'frames)') in flat
    # the same run's Table I with the bias error that sees the replicas (scripts/recompute_table.py)
    recomputed = _json('docs/figures/mid/table_i_replica_bias_no_equilibration.json')
    again = {(float(r['x']), float(r['temperature_K'])): r for r in csv.DictReader(io.StringIO(recomputed['csv']))}
    changed = {}
    for key, row in again.items():
        assert float(row['gap_eV']) == pytest.approx(float(table[key]['gap_eV']), abs=1e-6)
        if abs(float(row['stderr_eV']) - float(table[key]['stderr_eV'])) > 5e-4:
            changed[key] = float(row['stderr_eV'])
    assert set(changed) == {(0.0, 300.0), (0.5, 300.0), (1.0, 300.0)}
    names = {0.0: 'x = 0', 0.5: 'x = 1/2', 1.0: 'x = 1'}
    for (x, t), total in changed.items():
        assert f'- {names[x]}, {t:.0f} K: {total:.3f} eV' in study, (x, t)
    wider = {v['point']: v for v in recomputed['validation']}['x_0p500_T300']
    assert (f'the replicas\' spread gives {wider["gnn_bias_stderr_replicas"]:.3f} eV, the frames '
            f'{wider["gnn_bias_stderr_frames"]:.3f} eV') in flat
    assert sum(wider['gnn_bias_stderr_replicas'] > wider['gnn_bias_stderr_frames'] for wider in
               recomputed['validation'] if wider['temperature'] > 0) == 3
    new_totals = [float(r['stderr_eV']) for k, r in again.items() if k[1] > 0]
    assert f'({min(new_totals):.3f}-{max(new_totals):.3f} eV with the bias error that sees the replicas)' in flat
    inside = sum(abs(r['difference']) <= float(again[(r['x'], r['temperature'])]['stderr_eV']) for r in check)
    assert inside == 5 and 'within the stated total at five of the six points' in flat
    totals = {key: float(row['stderr_eV']) for key, row in table.items() if key[1] > 0}
    assert max(totals.values()) <= 0.1
    assert f'The stated totals are at most 0.1 eV at every point: yes, {span(totals.values())} eV (' in flat

    # the teacher's own MD at x = 1, 600 K (docs/thermal.md)
    row = table[(1.0, 600.0)]
    difference, combined = _against_teacher_md(row)
    core = math.hypot(_core_stderr(row), _json('docs/figures/demo/teacher_md_check.json')['teacher_md_stderr'])
    point = next(r for r in hot if r['point'] == 'x_1p000_T600')
    shift = f'{point["sampling_shift"]:+.3f} ± {point["sampling_shift_stderr"]:.3f} eV'
    implied = f'{-difference:+.3f} ± {core:.3f}'
    gap = abs(point['sampling_shift'] + difference) / math.hypot(point['sampling_shift_stderr'], core)
    assert f'Against the teacher\'s own MD at x = 1, 600 K: {difference:+.3f} eV, {difference / combined:.1f} ' \
           'combined standard errors' in flat
    assert (f'first-order sampling shift there, {shift}, is {gap:.1f} standard errors from the one the teacher\'s MD '
            f'implies ({implied})') in flat

    # the replicas that had not equilibrated (the per-replica record) and the earlier run of the same MD
    replicas = _json('docs/figures/mid/validation_frames_no_equilibration.json')['replicas']
    drifting = {}
    for replica in replicas:
        assert replica['start'] == max(replica['start_gap'], replica['start_energy'])
        drifting.setdefault((replica['x'], replica['temperature']), []).append(replica['drifting'])
    assert f'The potential energy of {sum(map(sum, drifting.values()))} of the {len(replicas)} replicas' in flat
    for (x, t), flags in drifting.items():
        assert int(table[(x, t)]['n_drifting']) == sum(flags)
    names = {0.0: 'x = 0', 0.5: 'x = 1/2', 1.0: 'x = 1'}
    for x, name in names.items():
        parts = [f'{sum(drifting[(x, t)])} of {len(drifting[(x, t)])} at {t:.0f} K' for t in (300.0, 600.0)
                 if sum(drifting[(x, t)])]
        assert f'- {name}: ' + ' and '.join(parts) in study, (name, parts)
    falls = [r['energy_block_means'][0] for r in replicas if r['x'] in (0.0, 1.0)]
    assert f'fall from there by {min(falls):.1f}-{max(falls):.1f} eV per 40-atom cell' in flat
    assert all(r['energy_block_means'][0] == 0 for r in replicas if r['x'] == 0.5)  # it heats up from its minimum
    earlier = _table_i('table_i_gap_only_start.csv', 'docs/figures/mid')
    finite = [key for key in table if key[1] > 0]
    moved = max(abs(float(table[k]['gap_eV']) - float(earlier[k]['gap_eV'])) for k in finite)
    moved_z = max(abs(float(table[k]['gap_eV']) - float(earlier[k]['gap_eV']))
                  / math.hypot(float(table[k]['stderr_eV']), float(earlier[k]['stderr_eV'])) for k in finite)
    assert f'the gaps moved by at most {moved:.3f} eV, {moved_z:.2f} of the two stated totals combined' in flat
    assert (f'the totals at x = 1 fell from {float(earlier[(1.0, 300.0)]["stderr_eV"]):.3f} and '
            f'{float(earlier[(1.0, 600.0)]["stderr_eV"]):.3f} eV to {totals[(1.0, 300.0)]:.3f} and '
            f'{totals[(1.0, 600.0)]:.3f} eV') in flat
    before_rows = {r['point']: r for r in _json('docs/figures/mid/run_gap_only_start.json')['validation']['rows']}
    now_rows = {r['point']: r for r in hot}
    cold = 'x_1p000_T300'
    assert (f'the first-order sampling shift at x = 1, 300 K fell from {before_rows[cold]["sampling_shift"]:+.3f} ± '
            f'{before_rows[cold]["sampling_shift_stderr"]:.3f} to {now_rows[cold]["sampling_shift"]:+.3f} ± '
            f'{now_rows[cold]["sampling_shift_stderr"]:.3f} eV') in flat
    assert (f'r was {before_rows[cold]["sampling_correlation"]:+.2f} and '
            f'{before_rows["x_1p000_T600"]["sampling_correlation"]:+.2f}') in flat
    hot_row = before_rows['x_1p000_T600']
    assert (f'stated {float(earlier[(1.0, 600.0)]["gap_eV"]):.3f} ± {float(earlier[(1.0, 600.0)]["stderr_eV"]):.3f} '
            f'eV. Its first-order shift was {hot_row["sampling_shift"]:+.3f} ± {hot_row["sampling_shift_stderr"]:.3f} '
            'eV') in thermal_flat

    # the ranking: the screen's (the engine's) and the teacher check at the engine's minimum
    ranking = record['screen_ranking']['x_0p500']
    assert ranking['ranked_by'] == 'engine' and ranking['lowest'] == ranking['potential_lowest'] == 'c003'
    check_rows = _json('docs/figures/mid/ranking_check_no_equilibration.json')['compositions']['x_0p500']['rows']
    rows = {r['key']: r for r in check_rows}
    for key, energy, potential in zip(ranking['keys'], ranking['relative_energy_per_atom'],
                                      ranking['potential_relative_energy_per_atom']):
        assert abs(rows[key]['engine_meV_per_atom'] - 1000 * energy) < 0.05, key  # the check relabels the cells
        assert abs(rows[key]['potential_meV_per_atom'] - 1000 * potential) < 1e-9, key
    second = rows[ranking['keys'][1]]
    assert (f'The next, {second["key"]}, is {second["engine_meV_per_atom"]:.1f} meV/atom above it on the potential\'s '
            f'cells and {second["relaxed_meV_per_atom"]:.1f} at the engine\'s minimum (the potential: '
            f'{second["potential_meV_per_atom"]:.1f})') in flat

    # against the forces-only run of the same morning
    before = _table_i('table_i_forces_only.csv', 'docs/figures/mid')
    hot_keys = [key for key in table if key[1] > 0]
    total = max(abs(float(table[k]['gap_eV']) - float(before[k]['gap_eV']))
                / math.hypot(float(table[k]['stderr_eV']), float(before[k]['stderr_eV'])) for k in hot_keys)
    core_z = max(abs(float(table[k]['gap_eV']) - float(before[k]['gap_eV']))
                 / math.hypot(_core_stderr(table[k]), _core_stderr(before[k])) for k in hot_keys)
    assert f'agrees within {total:.2f} of the two stated totals combined, and within {core_z:.1f} standard' in flat
    assert (f"Eg(0) ({float(table[(0.5, 0.0)]['gap_eV']):.3f} against {float(before[(0.5, 0.0)]['gap_eV']):.3f} "
            'eV)') in flat
    assert np.isclose(float(table[(0.0, 0.0)]['gap_eV']), float(before[(0.0, 0.0)]['gap_eV']))


def test_mid_ranking_check_quoted_from_its_record():
    """docs/study.md's teacher check of the `mid` screen's x = 1/2 ranking (scripts/check_ranking.py): the engine's
    lowest on the potential's cells and at its own minimum, and the energies and gaps quoted, from its JSON; the
    potential's energies in it are the run's screen ranking."""
    flat = ' '.join((ROOT / 'docs/study.md').read_text().split())
    record = _json('docs/figures/mid/ranking_check_forces_only.json')['compositions']['x_0p500']
    ranking = _json('docs/figures/mid/run_forces_only.json')['screen_ranking']['x_0p500']
    rows = {row['key']: row for row in record['rows']}
    for key, energy in zip(ranking['keys'], ranking['relative_energy_per_atom']):
        assert abs(rows[key]['potential_meV_per_atom'] - 1000 * energy) < 1e-9, key
    lowest = ranking['lowest']
    assert record['potential_lowest'] == record['engine_lowest'] == record['relaxed_lowest'] == lowest
    assert f'Both rank {lowest} lowest, as the potential does' in flat
    second = sorted(record['rows'], key=lambda row: row['relaxed_meV_per_atom'])[1]
    assert (f'{second["key"]}, is {second["engine_meV_per_atom"]:.1f} meV/atom above it on the potential\'s cells and '
            f'{second["relaxed_meV_per_atom"]:.1f} at the engine\'s minimum (the potential: '
            f'{second["potential_meV_per_atom"]:.1f})') in flat
    assert f'c001 is {rows["c001"]["relaxed_meV_per_atom"]:.1f} meV/atom above {lowest}' in flat
    assert (f'{rows[lowest]["teacher_gap"]:.3f} eV on the potential\'s cell and '
            f'{rows[lowest]["relaxed_teacher_gap"]:.3f} eV at the engine\'s minimum') in flat
    earlier = _json('docs/figures/mid/run_12frames.json')['screen_ranking']['x_0p500']
    assert earlier['lowest'] == 'c001' and 'put 0.15 meV/atom below c003' in flat


def test_mid_sampling_frames_match_the_run_and_the_correlation_quoted():
    """The per-frame energies and gaps of the forces-only `mid` run's validation
    (docs/figures/mid/validation_frames_forces_only.json) give the run's own sampling shifts
    (core.validation.sampling_shift, recomputed), and the correlation of the potential's energy error with the
    teacher's gap at x = 1, 600 K that docs/study.md quotes."""
    import numpy as np

    from aiida_capthermo.core.validation import sampling_shift

    frames = _json('docs/figures/mid/validation_frames_forces_only.json')['frames']
    rows = {(r['x'], r['temperature']): r for r in _json('docs/figures/mid/run_forces_only.json')['validation']['rows']
            if r['temperature'] > 0}
    for (x, temperature), row in rows.items():
        point = [f for f in frames if f['x'] == x and f['temperature'] == temperature]
        assert len(point) == row['n_sampling']
        result = sampling_shift([f['teacher_gap'] for f in point], [f['engine_energy'] for f in point],
                                [f['potential_energy'] for f in point], temperature)
        assert result['shift'] == pytest.approx(row['sampling_shift'], abs=1e-9)
        assert result['beta_sigma'] == pytest.approx(row['sampling_beta_sigma'], abs=1e-9)
    hot = [f for f in frames if f['x'] == 1.0 and f['temperature'] == 600.0]
    r = np.corrcoef([f['teacher_gap'] for f in hot], [f['engine_energy'] - f['potential_energy'] for f in hot])[0, 1]
    flat = ' '.join((ROOT / 'docs/study.md').read_text().split())
    assert f'on the {len(hot)} frames at 600 K it correlates with the teacher\'s gap (r = {r:.2f})' in flat, r


def test_mid_second_seed_quoted_from_its_record():
    """docs/study.md's second seed of the `mid` potential: its Table I, its teacher check, its learning curve and the
    comparison with the first seed (largest difference over the stated totals, over the statistical and model parts,
    x = 1/2's Eg(0) and ranking), recomputed from docs/figures/mid/."""
    study = (ROOT / 'docs/study.md').read_text()
    flat = study.replace('\n  ', ' ').replace('\n', ' ')

    first = _table_i('table_i_12frames.csv', 'docs/figures/mid')  # the first seed, at the same protocol sizes
    second = _table_i('table_i_seed7.csv', 'docs/figures/mid')
    for line in _table_rows(first):
        assert line in study, line
    for line in _table_rows(second):
        assert line in study, line
    record = _json('docs/figures/mid/run_seed7.json')
    assert f'({record["study_seconds"]:.0f} s)' in study
    rounds = record['mace_learning_curve']['rounds']
    assert f'{rounds[0]["force_mae"]:.3f} and then {rounds[1]["force_mae"]:.3f} eV/Å on fresh frames' in flat
    hot = [row['force_mae'] for row in record['validation']['rows'] if row['temperature'] > 0]
    assert f'{min(hot):.3f}-{max(hot):.3f} eV/Å on the thermal frames' in flat
    assert f'{1000 * record["mace_evaluation"]["energy_mae_eV_per_atom"]:.1f} meV/atom on the held-out' in flat
    check = _json('docs/figures/mid/teacher_check_seed7.json')['rows']
    differences = [row['difference'] for row in check]
    assert (f'{sum(r["n_frames"] for r in check)} other frames of its MD: {min(differences):+.3f} to '
            f'{max(differences):+.3f} eV') in flat
    assert all(row['within'] for row in check)

    hot_keys = [key for key in first if key[1] > 0]
    total = max(abs(float(second[k]['gap_eV']) - float(first[k]['gap_eV']))
                / math.hypot(float(first[k]['stderr_eV']), float(second[k]['stderr_eV'])) for k in hot_keys)
    assert f'the largest difference is {total:.2f} of the two combined' in flat, total
    z = {k: (float(second[k]['gap_eV']) - float(first[k]['gap_eV']))
         / math.hypot(_core_stderr(first[k]), _core_stderr(second[k])) for k in hot_keys}
    worst = max(z, key=lambda k: abs(z[k]))
    difference = float(second[worst]['gap_eV']) - float(first[worst]['gap_eV'])
    assert (f'x = {"1/2" if worst[0] == 0.5 else f"{worst[0]:g}"} at {worst[1]:.0f} K differs by {abs(z[worst]):.1f} '
            f'standard errors ({difference:+.3f} eV)') in flat, (worst, z[worst])
    assert (f"x = 1/2's Eg(0) does not agree: {float(second[(0.5, 0.0)]['gap_eV']):.3f} eV against "
            f"{float(first[(0.5, 0.0)]['gap_eV']):.3f}") in flat
    rankings = [_json(f'docs/figures/mid/{name}')['screen_ranking']['x_0p500'] for name in ('run_seed7.json',
                                                                                          'run_12frames.json')]
    for ranking, other in zip(rankings, reversed(rankings)):
        gap = dict(zip(ranking['keys'], ranking['relative_energy_per_atom']))[other['lowest']]
        assert f'ranks {ranking["lowest"]} lowest, with {other["lowest"]} {1000 * gap:.{0 if gap > 0.01 else 2}f}' \
               in flat, (ranking['lowest'], gap)


def test_labels_benchmark_quoted_from_its_json():
    """docs/mace.md's table of the labels-spent benchmark and the figures around it are those of
    benchmarks/bench_labels.json."""
    text = (ROOT / 'docs/mace.md').read_text()
    flat = text.replace('\n  ', ' ').replace('\n', ' ')
    record = _json('benchmarks/bench_labels.json')
    arms = record['arms']
    for index, row in enumerate(arms['active']):
        cells = [f'{p["force_mae"]:.3f} / {p["energy_per_atom_mae_meV"]:.1f} / {p["gap_mae"]:.3f} '
                 f'({p["gap_mean_error"]:+.3f})' for p in (arms[arm][index] for arm in ('active', 'phonon', 'random'))]
        line = f'| {row["n_labels"]} | ' + ' | '.join(cells) + ' |'
        assert line in text, line
    first, last = arms['active'][0], arms['active'][-1]
    added = last['n_labels'] - first['n_labels']
    assert f'{added} frames of the potential\'s own MD bring the force error' in flat
    assert f'from {first["force_mae"]:.3f} to {last["force_mae"]:.3f} eV/Å' in flat
    assert f'leave it at {arms["phonon"][-1]["force_mae"]:.3f} eV/Å' in flat
    assert f'worse ({arms["random"][-1]["force_mae"]:.3f} eV/Å)' in flat
    md = record['active_md']
    assert f'only {md[0]["n_frames"]} frames came out' in flat and md[0]['n_stable'] == 0
    assert f'{md[1]["n_stable"]} of the {md[1]["n_replicas"]} replicas stayed stable and gave {md[1]["n_frames"]}' \
        in flat
    held = record['held_out']
    assert f'{held["n_frames"]} frames, mean temperatures {min(held["mean_temperatures"]):.0f}-' \
           f'{max(held["mean_temperatures"]):.0f} K' in flat
    assert f'(amplitude {record["random_amplitude"]:.3f} Å)' in flat
    assert f'{record["seconds"]["total"]:,.0f} s)' in flat
    readme = (ROOT / 'README.md').read_text().replace('\n  ', ' ')
    assert (f'{added} labelled frames of the potential\'s MD take that potential from {first["force_mae"]:.3f} to '
            f'{last["force_mae"]:.3f} eV/Å, where the same labels spent on phonon-informed cells leave it at '
            f'{arms["phonon"][-1]["force_mae"]:.3f} and on random displacements at '
            f'{arms["random"][-1]["force_mae"]:.3f}') in readme
    worst = max(abs(p['gap_mae'] - abs(p['gap_mean_error'])) for arm in arms.values() for p in arm)
    assert worst <= 0.02 and 'absolute mean error to 0.02 eV' in flat


def test_demo_gnn_ensemble_quoted_from_its_record():
    """docs/thermal.md's demo run with the GNN ensemble: the models' test errors, the ensemble and model parts of
    the error at T > 0, the GNN stage's time, the teacher check on other frames and the range of the totals, from
    docs/figures/demo/*_members.*."""
    flat = (ROOT / 'docs/thermal.md').read_text().replace('\n', ' ')
    record = _json('docs/figures/demo/run_members.json')
    tests = [row['test_mae'] for row in record['gnn_member_metrics']['models']]
    assert len(tests) == 4 and f'four GNNs had test MAEs of {min(tests):.3f}-{max(tests):.3f} eV' in flat
    hot = [row for key, row in _table_i('table_i_members.csv').items() if key[1] > 0]
    members = [float(row['stderr_members_eV']) for row in hot]
    model = [float(row['stderr_model_eV']) for row in hot]
    assert f'is {min(members):.3f}-{max(members):.3f} eV at every (x, T > 0)' in flat
    assert f'the model part is {min(model):.3f}-{max(model):.3f} eV' in flat
    totals = [float(row['stderr_eV']) for row in hot]
    assert f'({min(totals):.2f}-{max(totals):.2f} eV, ‡)' in flat
    gnn = next(stage for stage in record['stages'] if stage['label'] == 'gnn')
    assert f'The GNN stage took {gnn["seconds"]:.0f} s' in flat
    check = _json('docs/figures/demo/teacher_check_members.json')['rows']
    differences = [row['difference'] for row in check]
    assert f'{sum(r["n_frames"] for r in check)} other frames of the same MD differs from this Table I by ' \
           f'{min(differences):+.3f} to {max(differences):+.3f} eV'.replace('+-', '-') in flat.replace('−', '-')
    assert all(row['within'] for row in check) and 'six of six within the stated errors' in flat


def test_demo_eg0_structure_error_quoted_from_its_record():
    """docs/study.md's demo run with the validation's engine relaxation of the 0 K structures: each Eg(0), how far the
    engine moved it and what it gained, the teacher's gap at its minimum, and Table I's Eg(0) error that is the
    difference; the run's time and the day's label time, from docs/figures/demo/*_eg0_structure.*."""
    study = (ROOT / 'docs/study.md').read_text()
    flat = ' '.join(study.split())
    record = _json('docs/figures/demo/run_eg0_structure.json')
    table = _table_i('table_i_eg0_structure.csv')
    zero = {row['x']: row for row in record['validation']['rows'] if row['temperature'] == 0}
    for x, row in zero.items():
        eg0 = table[(x, 0.0)]
        shift = row['engine_relaxed_gap'] - row['teacher_gap']
        assert row['sampling_shift'] == pytest.approx(shift, abs=1e-12)
        assert float(eg0['stderr_eV']) == pytest.approx(abs(shift), abs=1e-6)  # the whole error of Eg(0)
        assert float(eg0['gap_eV']) == pytest.approx(row['teacher_gap'], abs=1e-6)  # not moved
        moved = row['engine_relaxed_displacement']
        moved = f'{moved:.3f}' if moved > 1e-3 else f'{moved:.0e}'
        gain = f'{1000 * row["engine_relaxation_energy"]:.2f}'.replace('-0.00', '0.00')
        assert (f'| {x:g} | {float(eg0["gap_eV"]):.3f} ± {float(eg0["stderr_eV"]):.3f} | {moved} | {gain} | '
                f'{row["engine_relaxed_gap"]:.3f} |') in study
    mixed = zero[0.5]
    assert (f'is {mixed["engine_relaxed_displacement"]:.3f} Å from the engine\'s minimum. The teacher\'s gap there is '
            f'{mixed["engine_relaxed_gap"] - mixed["teacher_gap"]:.3f} eV higher') in flat
    assert max(abs(zero[x]['sampling_shift']) for x in (0.0, 1.0)) < 1e-7
    readme = ' '.join((ROOT / 'README.md').read_text().split())
    assert f'(x = 1/2: {mixed["sampling_shift"]:.3f} eV in the first such run' in readme
    thermal = ' '.join((ROOT / 'docs/thermal.md').read_text().split())
    assert (f'the engine moved x = 1/2\'s ground state by {mixed["engine_relaxed_displacement"]:.3f} Å and its gap by '
            f'{mixed["sampling_shift"]:+.3f} eV') in thermal
    assert record['screen_ranking']['x_0p500']['lowest'] == 'c002'
    label = _json('docs/figures/demo/label_time_eg0_structure.json')['rows'][0]['seconds_per_label']
    assert f'It ran in {record["study_seconds"]:,.0f} s on a slow day: a label took {label:.2f} s' in flat
    gnn = next(stage for stage in record['stages'] if stage['label'] == 'gnn')
    assert f'The GNN stage took {gnn["seconds"]:.0f} s' in flat


def test_energy_weight_check_quoted_from_its_record():
    """docs/mace.md's energy-weight check on the demo run (scripts/energy_weight_check.py): the largest beta * std(dU)
    per arm and seed, the force MAE ranges and how many points each weight wins, from
    docs/figures/demo/energy_weight_check.json."""
    flat = ' '.join((ROOT / 'docs/mace.md').read_text().split())
    record = _json('docs/figures/demo/energy_weight_check.json')
    arms = {(arm['energy_weight'], arm['seed']): arm for arm in record['arms']}
    assert (f'{record["epochs"]} epochs, {record["n_train"]} training structures, {record["n_frames"]} frames at '
            'T > 0') in flat

    def largest(arm):
        return f'{max(p["beta_sigma"] for p in arm["points"]):.2f}'

    final = next(arm for arm in record['arms'] if arm['seed'] is None)
    assert f'| none (the final potential) | {largest(final)} | {largest(final)} |' in flat
    for weight in (1.0, 1000.0):
        assert f'| energy weight {weight:g} | {largest(arms[(weight, 0)])} | {largest(arms[(weight, 1)])} |' in flat
    light = [p for seed in (0, 1) for p in arms[(1.0, seed)]['points']]
    heavy = [p for seed in (0, 1) for p in arms[(1000.0, seed)]['points']]
    assert all(p['x'] == q['x'] and p['temperature'] == q['temperature'] for p, q in zip(light, heavy))
    assert all(q['force_mae'] > p['force_mae'] for p, q in zip(light, heavy))
    worse = sum(q['beta_sigma'] > p['beta_sigma'] for p, q in zip(light, heavy))
    assert (f'({min(p["force_mae"] for p in heavy):.3f}-{max(p["force_mae"] for p in heavy):.3f} against '
            f'{min(p["force_mae"] for p in light):.3f}-{max(p["force_mae"] for p in light):.3f} eV/Å), and '
            f'`β·std(dU)` higher at {worse} of the {len(light)} points') in flat


def test_mid_sampling_terms_with_replicas_quoted_from_their_record():
    """docs/study.md's table of the `mid` record's sampling terms with the frames taken as independent and per
    replica, the cross-record spread of the shifts, and README's range, all from
    docs/figures/mid/sampling_replicas.json (scripts/sampling_replicas.py); the frames' column is the record's own."""
    study = (ROOT / 'docs/study.md').read_text()
    flat = ' '.join(study.split())
    readme = ' '.join((ROOT / 'README.md').read_text().split())
    data = _json('docs/figures/mid/sampling_replicas.json')
    record = _json('docs/figures/mid/run.json')
    points = data['records']['run.json']
    stated = {(r['x'], r['temperature']): r for r in record['error_budget'] if r['temperature'] > 0}
    assert len(points) == len(stated) == 6
    names = {0.0: '0', 0.5: '1/2', 1.0: '1'}
    for point in points:
        frames, replicas = point['frames'], point['replicas']
        row = stated[(point['x'], point['temperature'])]
        assert frames['stderr_sampling'] == pytest.approx(row['stderr_sampling'], abs=1e-9)
        assert point['stderr_stated'] == row['stderr']
        assert (f'| {names[point["x"]]} | {point["temperature"]:.0f} | {point["n_frames"]} / {point["n_replicas"]} | '
                f'{frames["shift"]:+.3f} ± {frames["shift_stderr"]:.3f} | {frames["stderr_sampling"]:.3f} | '
                f'{replicas["shift"]:+.3f} ± {replicas["shift_stderr"]:.3f} | {replicas["stderr_sampling"]:.3f} | '
                f'{point["stderr_stated"]:.3f} | {point["stderr_with_replicas"]:.3f} |') in study
    cold = [p for p in points if p['temperature'] == 300.0]
    span = (f'{min(p["stderr_with_replicas"] for p in cold):.3f}-'
            f'{max(p["stderr_with_replicas"] for p in cold):.3f} eV')
    assert f'300 K rows should have carried is {span}' in flat and f'300 K totals would be {span}' in readme
    assert sum(p['replicas']['stderr_sampling'] <= 0.1 for p in points) == 3
    assert sum(p['frames']['stderr_sampling'] <= 0.1 for p in points) == 5
    hot_one = next(p for p in cold if p['x'] == 1.0)
    assert f'its estimate, {hot_one["replicas"]["shift"]:+.3f} eV, is over 0.1 eV' in flat
    frames = [f for f in _json('docs/figures/mid/validation_frames.json')['frames']
              if f['x'] == 1.0 and f['temperature'] == 300.0]
    means = {}
    for frame in frames:
        means.setdefault(frame['replica'], []).append(frame['teacher_gap'])
    gaps = sorted(sum(values) / len(values) for values in means.values())
    assert f'mean teacher gaps on them are {gaps[0]:.3f}, {gaps[1]:.3f} and {gaps[2]:.3f} eV' in flat
    thermal = ' '.join((ROOT / 'docs/thermal.md').read_text().split())
    hot = next(p for p in points if (p['x'], p['temperature']) == (1.0, 300.0))
    assert 1.9 < hot['replicas']['stderr_sampling'] / hot['frames']['stderr_sampling'] < 2.1
    assert f'replicas\' mean teacher gaps differ by {gaps[2] - gaps[0]:.2f} eV and the term doubles' in thermal
    across = data['shifts_across_records']
    assert all(len(v['shifts']) == 7 for v in across.values())
    one, half = across['x=1, T=300'], across['x=0.5, T=300']
    assert (f'x = 1, 300 K spread with a standard deviation of {one["std"]:.3f} eV, and at x = 1/2, 300 K of '
            f'{half["std"]:.3f} eV, where the median error the records stated was {one["median_shift_stderr"]:.3f} '
            f'and {half["median_shift_stderr"]:.3f} eV') in flat
    cold0, hot0 = across['x=0, T=300'], across['x=0, T=600']
    assert (f'At x = 0 the spread ({cold0["std"]:.3f} and {hot0["std"]:.3f} eV) is within the stated errors '
            f'({cold0["median_shift_stderr"]:.3f} and {hot0["median_shift_stderr"]:.3f} eV)') in flat
    assert cold0['std'] <= cold0['median_shift_stderr'] and hot0['std'] <= hot0['median_shift_stderr']
    hot_one = across['x=1, T=600']
    outlier = 'run_forces_only.json'
    others = [value for name, value in hot_one['shifts'].items() if name != outlier]
    assert (f'At x = 1, 600 K the spread is {hot_one["std"]:.3f} eV against {hot_one["median_shift_stderr"]:.3f} eV, '
            f'but one record makes it: the run on forces alone, {hot_one["shifts"][outlier]:+.3f} ± '
            f'{hot_one["shift_stderrs"][outlier]:.3f} eV; without it the six others spread by '
            f'{statistics.stdev(others):.3f} eV') in flat
