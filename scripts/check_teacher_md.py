"""The paper's end-to-end check (its Figure 7a), for one (x, T) of a finished study: MD run by the teacher itself.

Table I's Eg(x, T) rests on two models: the MACE potential's MD decides which structures are averaged over, and the
GNN (corrected on validation frames) gives their gaps. Here neither is used. From the study's own relaxed 0 K
structure of composition ``--x`` this script runs Langevin MD at ``--temperature`` with the study's low engine
(forces from the dataset's low-fidelity calculator, through ASE's integrator: an implementation independent of the
package's TorchSim engine), labels the production frames with the study's teacher (the dataset's high engine when
it is the local one, else the low one) and compares the teacher's thermal average, with its statistical error from
the series' statistical inefficiency, with Table I's gap and stated total error.

Writes JSON (``--output``: the machine, the settings, the series, the comparison) and prints a summary.

    OMP_NUM_THREADS=2 python scripts/check_teacher_md.py STUDY_PK --x 1 --temperature 600 \\
        --output docs/figures/demo/teacher_md_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('study', help='pk or UUID of a finished CapthermoStudyWorkChain with a validation stage')
    parser.add_argument('--x', type=float, required=True, help='composition (a row of Table I)')
    parser.add_argument('--temperature', type=float, required=True, help='K (a temperature of Table I)')
    parser.add_argument('--timestep', type=float, default=2.0, help='fs')
    parser.add_argument('--steps', type=int, default=800)
    parser.add_argument('--friction', type=float, default=0.01, help='Langevin friction (1/fs)')
    parser.add_argument('--stride', type=int, default=5, help='steps between recorded frames')
    parser.add_argument('--equilibration', type=float, default=300.0, help='fs discarded before the average')
    parser.add_argument('--label-every', type=int, default=2, help='teacher gap on every n-th production frame')
    parser.add_argument('--seed', type=int, default=7)
    parser.add_argument('--output', default=None, help='JSON file to write')
    args = parser.parse_args()

    from aiida import load_profile, orm

    load_profile()
    from aiida_capthermo.core.thermal import series_statistics
    from aiida_capthermo.ml.labelling import engine_md, single_point_function
    from aiida_capthermo.workflows.study import study_engines

    study = orm.load_node(args.study)
    validation = study.base.links.get_outgoing(link_label_filter='validation').one().node
    relaxed = [node for node in validation.inputs.relaxed.values()
               if abs(node.base.attributes.get('capthermo_x') - args.x) < 1e-6]
    if len(relaxed) != 1:
        raise SystemExit(f'the study has no relaxed structure of x = {args.x}')
    rows = [row for row in study.outputs.table['rows'] if abs(row['x'] - args.x) < 1e-6]
    if not rows or args.temperature not in rows[0]['temperatures']:
        raise SystemExit(f'Table I has no row for x = {args.x}, T = {args.temperature} K')
    row, column = rows[0], rows[0]['temperatures'].index(args.temperature)
    specs = study_engines(study)
    low_spec, teacher_spec = specs['low'], specs['teacher']
    low, teacher = single_point_function(low_spec), single_point_function(teacher_spec)

    start = time.perf_counter()
    frames, series = engine_md(relaxed[0].get_ase(), low, args.temperature, args.steps, timestep=args.timestep,
                               friction=args.friction, stride=args.stride, seed=args.seed)
    md_seconds = time.perf_counter() - start
    series['low_gap'] = series.pop('gap')
    first = int(np.searchsorted(series['time_fs'], args.equilibration))
    labelled = list(range(first, len(frames), args.label_every))
    start = time.perf_counter()
    gaps = [float(teacher(frames[index])['gap']) for index in labelled]
    label_seconds = time.perf_counter() - start
    statistics = series_statistics(gaps, start=0)
    table_gap, table_stderr = row['gap'][column], row['stderr'][column]
    difference = table_gap - statistics.mean
    combined = math.hypot(table_stderr, statistics.stderr)
    result = {
        'study_uuid': study.uuid, 'x': args.x, 'temperature': args.temperature,
        'relaxed_uuid': relaxed[0].uuid, 'low_engine': low_spec.model_dump(), 'teacher': teacher_spec.model_dump(),
        'md': {'integrator': 'ase.md.langevin.Langevin', 'timestep_fs': args.timestep, 'steps': args.steps,
               'friction_per_fs': args.friction, 'stride': args.stride, 'equilibration_fs': args.equilibration,
               'seed': args.seed, 'label_every': args.label_every},
        'mean_temperature': float(np.mean(series['temperature'][first:])),
        'teacher_md_gap': statistics.mean, 'teacher_md_stderr': statistics.stderr,
        'teacher_md_std': statistics.std, 'n_labels': len(gaps), 'inefficiency': statistics.inefficiency,
        'table_gap': table_gap, 'table_stderr': table_stderr,
        'table_stderr_statistical': row['stderr_statistical'][column], 'gnn_gap': row['gap_model'][column],
        'table_gap_0K': row['gap'][row['temperatures'].index(0.0)] if 0.0 in row['temperatures'] else None,
        'difference': difference, 'z': difference / combined if combined else None,
        'within_table_error': abs(difference) <= table_stderr,
        'seconds': {'md': round(md_seconds, 1), 'labels': round(label_seconds, 1),
                    'per_md_step': round(md_seconds / args.steps, 3)},
        'machine': {'platform': platform.platform(), 'processor': platform.processor(),
                    'python': platform.python_version()},
        'series': {**series, 'teacher_gap': gaps, 'labelled_frames': labelled},
    }
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(result, indent=1, default=float) + '\n')
    print(f'x = {args.x:g}, T = {args.temperature:.0f} K: Table I {table_gap:.3f} ± {table_stderr:.3f} eV; teacher MD '
          f'{statistics.mean:.3f} ± {statistics.stderr:.3f} eV ({len(gaps)} frames, inefficiency '
          f'{statistics.inefficiency:.1f}, mean T {result["mean_temperature"]:.0f} K); difference {difference:+.3f} eV '
          f'(z = {result["z"]:+.2f}); MD {md_seconds:.0f} s, labels {label_seconds:.0f} s')


if __name__ == '__main__':
    main()
