"""An independent check of a finished study's Table I: the teacher itself on other frames of the same thermal MD.

The study's validation stage labels a few frames per (x, T) and Table I is corrected with them, so agreement on
those frames proves little. This script picks *other* decorrelated production frames of the same MD jobs
(``--per-point`` per (x, T), never one the validation labelled), labels them in this process with the study's
teacher (the dataset's high engine when it is the local one, else its low engine), and compares per (x, T):

* Table I's gap and its stated total error (``stderr``) with the teacher's mean on these frames and its standard
  error;
* ``within``: |Table I - teacher| <= Table I's total error; ``z``: the difference over both errors combined.
  A point with fewer than ``MIN_FRAMES`` other frames left (the validation took the rest) is no check: its
  ``within`` is None and it is left out of ``all_within`` (``n_checked`` counts the points that are checked);
* the GNN's own (uncorrected) average beside them.

Writes JSON (``--output``) with the machine, the frames and the rows; prints a Markdown table.

    python scripts/check_thermal_gaps.py STUDY_PK --per-point 12 --output docs/figures/demo/teacher_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import time

import numpy as np

#: Fewest teacher labels of a point for its comparison to count: one or two frames have no useful standard error.
MIN_FRAMES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('study', help='pk or UUID of a finished CapthermoStudyWorkChain with a validation stage')
    parser.add_argument('--per-point', type=int, default=12, help='teacher labels per (x, T)')
    parser.add_argument('--seed', type=int, default=1000, help='seed of the frame choice (not the validation\'s)')
    parser.add_argument('--output', default=None, help='JSON file to write')
    args = parser.parse_args()

    from aiida import load_profile, orm
    from aiida.common.links import LinkType

    load_profile()
    from aiida_capthermo.core.dataset import LabelledSet
    from aiida_capthermo.core.validation import mean_with_stderr, point_key, select_frames
    from aiida_capthermo.ml.labelling import single_point_function
    from aiida_capthermo.workflows.study import study_engines
    from aiida_capthermo.workflows.thermal_validation import _attempt, replica_series

    study = orm.load_node(args.study)
    thermal = study.base.links.get_outgoing(link_label_filter='thermal').one().node
    validation = study.base.links.get_outgoing(link_label_filter='validation').one().node
    jobs = {link.link_label: link.node for link in thermal.base.links.get_outgoing(
        link_type=LinkType.CALL_CALC, link_label_filter='md_%').all() if 'frames' in link.node.outputs}
    replicas = thermal.outputs.replicas.get_dict()['replicas']
    used = {(frame['source'], frame['index']) for frame in validation.outputs.frames.base.attributes.get('picked')}
    fraction = validation.inputs.equilibration_fraction.value

    series, sets, sources, offset = [], [], [], 0
    for key in sorted(jobs):
        frames = jobs[key].outputs.frames.get_labelled_set()
        for record in replica_series(frames, jobs[key].outputs.results.get_dict(), replicas, _attempt(key), fraction):
            series.append({**record, 'offset': record['offset'] + offset, 'replica': f'{key}:{record["replica"]}'})
        sets.append(frames)
        sources.extend((key, index) for index in range(len(frames)))
        offset += len(frames)
    # more than needed, then drop the validation's own frames
    picked = select_frames(series, 2 * args.per_point, seed=args.seed)
    per_point: dict[str, list[int]] = {}
    for frame in picked:
        if sources[frame['index']] not in used and len(per_point.setdefault(frame['point'], [])) < args.per_point:
            per_point[frame['point']].append(frame['index'])
    frames = LabelledSet.concatenate(sets)

    spec = study_engines(study)['teacher']
    label = single_point_function(spec)
    table = {(row['x'], t): (row, i) for row in study.outputs.table['rows'] for i, t in enumerate(row['temperatures'])}
    rows, start = [], time.perf_counter()
    for point in sorted(per_point):
        indices = per_point[point]
        x, temperature = float(frames.x[indices[0]]), float(frames.temperature[indices[0]])
        gaps = [label(frames.atoms(i, with_labels=False))['gap'] for i in indices]
        teacher, teacher_stderr = mean_with_stderr(gaps)
        row, i = table[(x, temperature)]
        difference = row['gap'][i] - teacher
        combined = math.hypot(row['stderr'][i], teacher_stderr or 0.0)
        rows.append({'point': point_key(x, temperature), 'x': x, 'temperature': temperature, 'n_frames': len(gaps),
                     'teacher_gap': teacher, 'teacher_stderr': teacher_stderr, 'table_gap': row['gap'][i],
                     'table_stderr': row['stderr'][i], 'table_stderr_statistical': row['stderr_statistical'][i],
                     'gnn_gap': row['gap_model'][i], 'difference': difference,
                     'within': abs(difference) <= row['stderr'][i] if len(gaps) >= MIN_FRAMES else None,
                     'z': difference / combined if combined else None})
    seconds = time.perf_counter() - start
    record = {'study_uuid': study.uuid, 'teacher': spec.model_dump(), 'per_point': args.per_point, 'seed': args.seed,
              'label_seconds': round(seconds, 1), 'n_labels': sum(r['n_frames'] for r in rows),
              'machine': {'platform': platform.platform(), 'processor': platform.processor(),
                          'python': platform.python_version()},
              'n_checked': sum(r['within'] is not None for r in rows),
              'all_within': all(r['within'] for r in rows if r['within'] is not None), 'rows': rows}
    print('| x | T (K) | Table I (eV) | teacher on other frames (eV) | GNN alone (eV) | difference | within |')
    print('|---|---|---|---|---|---|---|')
    verdict = {True: 'yes', False: 'no', None: f'no check (< {MIN_FRAMES} frames)'}
    for r in rows:
        print(f'| {r["x"]:g} | {r["temperature"]:.0f} | {r["table_gap"]:.3f} ± {r["table_stderr"]:.3f} | '
              f'{r["teacher_gap"]:.3f} ± {r["teacher_stderr"] or 0:.3f} ({r["n_frames"]}) | {r["gnn_gap"]:.3f} | '
              f'{r["difference"]:+.3f} | {verdict[r["within"]]} |')
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(record, indent=1, default=float) + '\n')
    print(f'{record["n_labels"]} teacher labels in {seconds:.0f} s; every one of the {record["n_checked"]} checked '
          f'points within its stated error: {record["all_within"]}')
    assert np.isfinite([r['teacher_gap'] for r in rows]).all()


if __name__ == '__main__':
    main()
