"""The aiida-capthermo pipeline at demo scale, submitted to the daemon of the loaded profile.

Run through ``scripts/run-demo.sh`` (which makes the isolated profile and starts the daemon), or on any profile
with a running daemon: ``python examples/demo.py [--protocol demo] [--timeout 1800]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from aiida import load_profile, orm
from aiida.engine import submit

from aiida_capthermo.workflows.progress import progress_line


def wait(node: orm.ProcessNode, timeout: float) -> orm.ProcessNode:
    start, last = time.monotonic(), None
    while not node.is_terminated:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f'{node.process_label}<{node.pk}> did not finish within {timeout} s')
        line = progress_line(node)
        if line != last:
            print(f'  [{time.monotonic() - start:5.0f} s] {line}', flush=True)
            last = line
        time.sleep(3)
    if not node.is_finished_ok:
        raise RuntimeError(f'{node.process_label}<{node.pk}> failed: [{node.exit_status}] {node.exit_message}; '
                           f'see `verdi process report {node.pk}`')
    return node


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--protocol', default='demo',
                        help='Protocol of the study (demo, mid, fast, paper; protocols/study.yaml).')
    parser.add_argument('--timeout', type=float, default=3600.0, help='Seconds to wait for the study.')
    parser.add_argument('--figures', default='demo-output', help='Folder for Table I (CSV) and the figures.')
    parser.add_argument('-o', '--override', action='append', default=[], metavar='KEY=VALUE',
                        help='Protocol override, as `capthermo submit study -o` (e.g. ensemble.configurations=3).')
    parser.add_argument('--parent', default=None, help="Your own parent structure (CIF, POSCAR...) instead of the "
                                                       "anti-perovskite, as `capthermo submit study --parent`.")
    parser.add_argument('--site', default=None, help='With --parent: its species on the substituted sublattice.')
    parser.add_argument('--guest', default=None, help='With --parent: the species that takes those sites.')
    args = parser.parse_args()
    if (args.parent is None) != (args.site is None) or (args.site is None) != (args.guest is None):
        parser.error('--parent, --site and --guest go together')
    load_profile()

    from aiida_capthermo.cli.main import _parse_override, ensure_codes, set_parent
    from aiida_capthermo.workflows.study import CapthermoStudyWorkChain

    codes = {name: code for name, (code, _) in ensure_codes('localhost').items()}
    label_code, gnn_code, mace_code = codes['capthermo-label'], codes['capthermo-gnn'], codes['mace_run_train']
    builder = CapthermoStudyWorkChain.get_builder_from_protocol(label_code, gnn_code, mace_code,
                                                                protocol=args.protocol,
                                                                overrides=_parse_override(tuple(args.override)),
                                                                mlip_code=codes['capthermo-mlip'],
                                                                evaluate_code=codes['capthermo-mace'])
    if args.parent is not None:
        try:
            set_parent(builder, 'study', args.parent, args.site, args.guest)
        except ValueError as exception:
            parser.error(str(exception))
    start = time.monotonic()
    node = submit(builder)
    print(f'Submitted CapthermoStudyWorkChain<{node.pk}> ({args.protocol}); waiting for the daemon...')
    wait(node, args.timeout)
    print(f'Study finished in {time.monotonic() - start:.0f} s')
    for name in ('low', 'equilibrium', 'high'):
        if name in node.outputs.dataset:
            dataset = node.outputs.dataset[name]
            gap = dataset.base.attributes.get('statistics')['gap']
            print(f'  dataset.{name:12s} DatasetData<{dataset.pk}>: {dataset.n_structures} structures, '
                  f'{dataset.base.attributes.get("method")}, x {dataset.base.attributes.get("compositions")}, '
                  f'T {dataset.base.attributes.get("temperatures")} K, gap {gap.get("mean", float("nan")):.3f} '
                  f'+- {gap.get("std", float("nan")):.3f} eV')
    for stage in ('metrics_low', 'metrics'):
        if stage in node.outputs.gnn:
            metrics = node.outputs.gnn[stage].get_dict()
            print(f'  gnn.{stage}: ' + ', '.join(f'{split} MAE {values["mae"]:.4f} eV'
                                                 for split, values in metrics.items()
                                                 if isinstance(values, dict) and 'mae' in values))
    if 'model' in node.outputs.mace:
        model = node.outputs.mace.model
        valid = node.outputs.mace.metrics.get_dict().get('validation', {})
        print(f'  mace.model ModelData<{model.pk}> sha256 {model.sha256[:12]}; validation MAE: '
              + ', '.join(f'{key} {value:.4g}' for key, value in valid.items()))
    if 'evaluation' in node.outputs.mace:
        evaluation = node.outputs.mace.evaluation.get_dict()
        print(f'  mace.evaluation on {evaluation["n_structures"]} held-out structures: force MAE '
              f'{evaluation["forces"]["mae"]:.4f} eV/Å, energy MAE {1000 * evaluation["energy_per_atom"]["mae"]:.2f} '
              f'meV/atom ({args.figures}/mace_parity.png)')
    if 'training_set' in node.outputs.mace:
        origins = node.outputs.mace.training_set.base.attributes.get('origins')
        print(f'  mace.training_set: {node.outputs.mace.training_set.n_structures} structures {origins}')
    if 'learning_curve' in node.outputs.mace:
        curve = node.outputs.mace.learning_curve.get_dict()
        for row in curve['rounds']:
            print(f'  mace active learning, round {row["round"]}: force MAE {row["force_mae"]:.3f} eV/Å on '
                  f'{row["n_frames"]} fresh MD frames (trained on {row["n_training"]})')
        print(f'  mace active learning converged (tolerance {curve["force_tolerance"]} eV/Å): {curve["converged"]} '
              f'({args.figures}/mace_learning_curve.png)')
    if 'md_check' in node.outputs.mace:
        check = node.outputs.mace.md_check.get_dict()
        print(f'  mace.md_check: stable={check["stable"]} ({check["n_stable"]}/{check["n_replicas"]} replicas)')
        for r in check['replicas']:
            print(f'    x={r["x"]:.3f} T={r["temperature"]:.0f} K, {r.get("time_ps", 0):.1f} ps: mean T '
                  f'{r.get("mean_temperature", float("nan")):.0f} K, closest pair {r.get("closest_pair")} '
                  f'{r.get("min_distance", float("nan")):.2f} Å' + (f', broke: {r["broke"]}' if r.get('broke') else ''))
    if 'table' in node.outputs:
        from aiida_capthermo.workflows.report import write_report

        text, files = write_report(node, args.figures)
        if 'validation' in node.outputs and 'validation' in node.outputs.validation:
            validation = node.outputs.validation.validation.get_dict()
            print(f'\nValidation on frames of the thermal MD (teacher {validation["teacher_method"]}; '
                  f'{args.figures}/validation.png):')
            for row in validation['rows']:
                bias = row['gnn_bias_stderr']
                nan = float('nan')
                print(f'  x = {row["x"]:.3f}, T = {row["temperature"]:3.0f} K, {row["n_frames"]} frames: teacher '
                      f'{row["teacher_gap"] or nan:.3f} eV, GNN bias {row["gnn_bias"] or nan:+.3f}'
                      + (f' ± {bias:.3f}' if bias is not None else '') + f' eV, MLIP force MAE '
                      f'{row["force_mae"] or nan:.3f} eV/Å')
        print(f'\nTable I (Eg in eV: the GNN\'s MD average corrected by the teacher, docs/thermal.md):\n{text}')
        record = json.loads((pathlib.Path(args.figures) / 'run.json').read_text())
        print(f'Stages (wall seconds from the nodes; {args.figures}/run.json has every job):')
        for stage in record['stages']:
            print(f'  {stage["label"]:18s} {stage["seconds"]:6.0f} s, from {stage["start_s"]:4.0f} s'
                  + (f', {stage["n_calcjobs"]} jobs' if 'n_calcjobs' in stage else ''))
        print(f'Table I (CSV), the run record and {len(files) - 2} figures in {args.figures}/: {", ".join(files)}')
        print(f'Again at any time, also from an archive: capthermo report {node.pk}')
    print(f'Provenance: verdi node graph generate {node.pk}; share: verdi archive create --all study.aiida')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
