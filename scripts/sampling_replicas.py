"""The sampling term of committed study records, recomputed with the frames' replicas (nothing rerun).

The validation's first-order sampling shift ``-beta cov(g, dU)`` was computed by older code from the frames of an
(x, T) taken as independent. ``core.validation.sampling_shift`` now estimates it per replica where there are three
or more (the covariance by its variance components, its error the larger of the jackknife over replicas and over
frames: docs/thermal.md).
This script reads frame files written by ``scripts/validation_frames.py`` (teacher gap, engine and potential energy
and replica of every validation frame) beside the study's ``run.json``, and writes per (x, T):

- ``frames``: the estimate as the record made it (frames independent), checked against the record's own
  ``stderr_sampling`` (a mismatch stops the script: then the frames are not the record's);
- ``replicas``: the estimate with the replicas, and its term as the budget makes it
  (``core.error_budget.corrected_gap``);
- the record's stated total, and that total with the new term in place of the old one.

Across records it also lists every record's first-order shift per (x, T) and its stated standard error (the
validation rows of ``run*.json``) with the shifts' spread: different potentials and protocols, so the spread bounds
the estimate's noise from above; it is the independent check on the frames' jackknife error.

    python scripts/sampling_replicas.py docs/figures/mid --output docs/figures/mid/sampling_replicas.json
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('folder', type=pathlib.Path, help='folder with run*.json and validation_frames*.json')
    parser.add_argument('--output', default=None, help='JSON file to write')
    args = parser.parse_args()

    from aiida_capthermo.core.error_budget import corrected_gap
    from aiida_capthermo.core.validation import sampling_shift

    records = {}
    for frames_path in sorted(args.folder.glob('validation_frames*.json')):
        suffix = frames_path.stem.removeprefix('validation_frames')
        frames = json.loads(frames_path.read_text())
        run_path = args.folder / f'run{suffix}.json'
        if not run_path.exists() or not all('replica' in frame for frame in frames['frames']):
            continue  # frame files written before the replicas were recorded
        run = json.loads(run_path.read_text())
        if run['study_uuid'] != frames['study_uuid']:
            raise SystemExit(f'{frames_path} and {run_path} come from different studies')
        points = []
        for row in run['error_budget']:
            if not row['temperature'] or row.get('stderr_sampling') is None:
                continue
            chosen = [f for f in frames['frames'] if f['x'] == row['x'] and f['temperature'] == row['temperature']
                      and f.get('teacher_gap') is not None]
            gaps = [f['teacher_gap'] for f in chosen]
            engine = [f['engine_energy'] for f in chosen]
            potential = [f['potential_energy'] for f in chosen]
            estimates = {}
            for name, replicas in (('frames', None), ('replicas', [f['replica'] for f in chosen])):
                shift = sampling_shift(gaps, engine, potential, row['temperature'], replicas)
                term = corrected_gap(0.0, 0.0, None, None, row['temperature'], sampling=shift)['stderr_sampling']
                estimates[name] = {'shift': shift['shift'], 'shift_stderr': shift['shift_stderr'],
                                   'stderr_n': shift['stderr_n'], 'stderr_sampling': term}
            if not math.isclose(estimates['frames']['stderr_sampling'], row['stderr_sampling'], abs_tol=1e-9):
                raise SystemExit(f'x = {row["x"]}, T = {row["temperature"]}: the frames give a sampling term of '
                                 f'{estimates["frames"]["stderr_sampling"]} eV, the record {row["stderr_sampling"]}')
            rest = max(row['stderr'] ** 2 - row['stderr_sampling'] ** 2, 0.0)
            points.append({'x': row['x'], 'temperature': row['temperature'], 'n_frames': len(chosen),
                           'n_replicas': len({f['replica'] for f in chosen}), **estimates,
                           'stderr_stated': row['stderr'],
                           'stderr_with_replicas': math.sqrt(rest + estimates['replicas']['stderr_sampling'] ** 2)})
        records[run_path.name] = points

    across, stated = {}, {}
    for run_path in sorted(args.folder.glob('run*.json')):
        for row in json.loads(run_path.read_text())['validation']['rows']:
            if row['temperature'] and row.get('sampling_shift') is not None:
                point = f'x={row["x"]:g}, T={row["temperature"]:g}'
                across.setdefault(point, {})[run_path.name] = row['sampling_shift']
                stated.setdefault(point, {})[run_path.name] = row['sampling_shift_stderr']
    spread = {point: {'shifts': shifts, 'shift_stderrs': stated[point],
                      'mean': float(np.mean(list(shifts.values()))),
                      'std': float(np.std(list(shifts.values()), ddof=1)),
                      'median_shift_stderr': float(np.median(list(stated[point].values())))}
              for point, shifts in across.items()}
    result = {'what': __doc__.split('\n\n')[0], 'records': records, 'shifts_across_records': spread}
    text = json.dumps(result, indent=2)
    if args.output:
        pathlib.Path(args.output).write_text(text + '\n')
    print(text)


if __name__ == '__main__':
    main()
