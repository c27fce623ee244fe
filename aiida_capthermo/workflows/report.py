"""The paper's Table I and Figure 7b-d from the thermal stage's gap table: a calcfunction for the provenance graph
and plain functions for ``capthermo report`` (which reads the stored nodes and re-runs nothing)."""

from __future__ import annotations

import io
import json

from aiida import orm
from aiida.engine import calcfunction

__all__ = ['table_one', 'table_rows', 'table_text', 'table_csv', 'figure_png', 'mace_parity_png', 'mace_parity_plot',
           'run_record', 'write_report', 'pyplot', 'png_bytes', 'png_node']


def table_rows(rows: list[dict]) -> list[dict]:
    """Group the thermal stage's rows (one per structure and T) into one row per composition, sorted by x: ``x``,
    ``key``, ``temperatures`` (K), ``gap`` and ``stderr`` (eV), ``delta_gap`` (eV) and ``relative_change`` per T,
    ``eg0`` (eV)."""
    grouped: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r['x'], r['temperature'])):
        entry = grouped.setdefault(row['key'], {'key': row['key'], 'x': row['x'], 'eg0': row['eg0'],
                                                'temperatures': [], 'gap': [], 'stderr': [], 'delta_gap': [],
                                                'relative_change': []})
        entry['temperatures'].append(row['temperature'])
        for name in ('gap', 'stderr', 'delta_gap', 'relative_change'):
            entry[name].append(row[name])
    return sorted(grouped.values(), key=lambda r: r['x'])


def table_text(rows: list[dict]) -> str:
    """Table I as aligned text: x, then Eg ± error at each T (eV), then ΔEg/Eg(0) at each T > 0."""
    temperatures = sorted({t for row in rows for t in row['temperatures']})
    hot = [t for t in temperatures if t > 0]
    header = f'{"x":>6} ' + ' '.join(f'{f"Eg({t:.0f} K)":>15}' for t in temperatures) + ' ' + ' '.join(
        f'{f"dEg/Eg({t:.0f} K)":>15}' for t in hot)
    lines = [header, '-' * len(header)]
    for row in rows:
        by_t = dict(zip(row['temperatures'], zip(row['gap'], row['stderr'], row['relative_change'])))
        cells = [f'{by_t[t][0]:.3f} ± {by_t[t][1]:.3f}' if t in by_t else '-' for t in temperatures]
        relative = [f'{100 * by_t[t][2]:+.1f} %' if t in by_t and by_t[t][2] is not None else '-' for t in hot]
        lines.append(f'{row["x"]:>6.3f} ' + ' '.join(f'{c:>15}' for c in cells) + ' '
                     + ' '.join(f'{c:>15}' for c in relative))
    return '\n'.join(lines)


def table_csv(rows: list[dict]) -> str:
    """Table I as CSV: one line per (x, T) with gap, stderr, ΔEg (eV) and the relative change."""
    lines = ['x,temperature_K,gap_eV,stderr_eV,eg0_eV,delta_gap_eV,relative_change']
    for row in rows:
        for index, temperature in enumerate(row['temperatures']):
            relative = row['relative_change'][index]
            lines.append(f'{row["x"]:.4f},{temperature:.1f},{row["gap"][index]:.6f},{row["stderr"][index]:.6f},'
                         f'{row["eg0"]:.6f},{row["delta_gap"][index]:.6f},'
                         f'{"" if relative is None else f"{relative:.6f}"}')
    return '\n'.join(lines) + '\n'


def figure_png(rows: list[dict], name: str) -> bytes:
    """Figure 7b (``eg_vs_x``: Eg vs x per T), 7c (``eg_vs_t``: Eg vs T per x) or 7d (``relative_change``:
    ΔEg/Eg(0) vs x per T > 0), with error bars, as PNG bytes."""
    figure, axis = pyplot().subplots(figsize=(4.8, 3.6))
    temperatures = sorted({t for row in rows for t in row['temperatures']})
    if name == 'eg_vs_t':
        for row in rows:
            axis.errorbar(row['temperatures'], row['gap'], yerr=row['stderr'], marker='o', capsize=3,
                          label=f'x = {row["x"]:.3f}')
        axis.set_xlabel('T (K)')
        axis.set_ylabel('Eg (eV)')
    else:
        for temperature in temperatures if name == 'eg_vs_x' else [t for t in temperatures if t > 0]:
            x, y, error = [], [], []
            for row in rows:
                if temperature in row['temperatures']:
                    index = row['temperatures'].index(temperature)
                    value = row['gap'][index] if name == 'eg_vs_x' else 100 * (row['relative_change'][index] or 0)
                    scale = 1.0 if name == 'eg_vs_x' else 100 / row['eg0']
                    x.append(row['x'])
                    y.append(value)
                    error.append(row['stderr'][index] * scale)
            axis.errorbar(x, y, yerr=error, marker='o', capsize=3, label=f'{temperature:.0f} K')
        axis.set_xlabel('x (guest fraction)')
        axis.set_ylabel('Eg (eV)' if name == 'eg_vs_x' else 'ΔEg / Eg(0 K) (%)')
    axis.legend(fontsize=8)
    return png_bytes(figure)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (daemon workers have no display)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def png_bytes(figure) -> bytes:
    """The figure laid out (``tight_layout``) as PNG bytes at 120 dpi; the figure is closed."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=120)
    pyplot().close(figure)
    return buffer.getvalue()


def png_node(figure, filename: str) -> orm.SinglefileData:
    """The figure as a PNG ``SinglefileData`` named ``filename`` (see :func:`png_bytes`)."""
    return orm.SinglefileData(io.BytesIO(png_bytes(figure)), filename=filename)


def mace_parity_png(parity: dict, title: str = '') -> bytes:
    """Parity of a MACE evaluation (``capthermo-mace evaluate`` arrays): energy per atom (meV/atom, relative to the
    reference mean) and force components (eV/Å), each with its MAE, as PNG bytes."""
    import numpy as np

    figure, axes = pyplot().subplots(1, 2, figsize=(8.0, 3.8))
    n_atoms = np.asarray(parity['n_atoms'], dtype=float)
    reference, predicted = parity['energy_ref'] / n_atoms, parity['energy_pred'] / n_atoms
    shift = float(np.mean(reference))
    panels = ((1000 * (reference - shift), 1000 * (predicted - shift), 'energy − mean (meV/atom)'),
              (np.ravel(parity['forces_ref']), np.ravel(parity['forces_pred']), 'force component (eV/Å)'))
    for axis, (true, pred, label) in zip(axes, panels):
        finite = np.isfinite(true) & np.isfinite(pred)
        true, pred = true[finite], pred[finite]
        low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        axis.plot([low, high], [low, high], 'k--', lw=1)
        axis.scatter(true, pred, s=6, alpha=0.5)
        axis.set_xlabel(f'reference {label}')
        axis.set_ylabel(f'MACE {label}')
        axis.set_title(f'MAE {np.mean(np.abs(pred - true)):.3g}', fontsize=9)
    if title:
        figure.suptitle(title, fontsize=9)
    return png_bytes(figure)


@calcfunction
def mace_parity_plot(parity: orm.ArrayData) -> orm.SinglefileData:
    """The parity plot (PNG) of a MACE evaluation's ``parity`` arrays."""
    arrays = {name: parity.get_array(name) for name in parity.get_arraynames()}
    title = f'MACE on {len(arrays["energy_ref"])} held-out structures'
    return orm.SinglefileData(io.BytesIO(mace_parity_png(arrays, title)), filename='mace_parity.png')


@calcfunction
def table_one(table: orm.Dict) -> dict:
    """Table I (``table`` Dict: one row per composition; ``csv``) and Figure 7b-d (``eg_vs_x``, ``eg_vs_t``,
    ``relative_change`` PNG) from the thermal stage's ``table``."""
    rows = table_rows(table['rows'])
    outputs = {'table': orm.Dict({'rows': rows, 'units': {'gap': 'eV', 'temperature': 'K', 'x': 'guest fraction'}}),
               'csv': orm.SinglefileData(io.BytesIO(table_csv(rows).encode()), filename='table_i.csv')}
    for name in ('eg_vs_x', 'eg_vs_t', 'relative_change'):
        outputs[name] = orm.SinglefileData(io.BytesIO(figure_png(rows, name)), filename=f'{name}.png')
    return outputs


def write_report(node: orm.ProcessNode, folder) -> tuple[str, list[str]]:
    """Table I of a finished study ``node`` as text, and its CSV and figures written to ``folder``; returns the text
    and the file names. Reads stored nodes only, so it works the same on a study imported from an archive."""
    import pathlib

    outputs = node.outputs
    text = table_text(outputs.table['rows'])
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {'table_i.csv': outputs.table_csv} if 'table_csv' in outputs else {}
    files.update({f'{name}.png': value for name, value in (outputs.figures.items() if 'figures' in outputs else [])})
    for filename, value in files.items():
        (folder / filename).write_bytes(value.get_content('rb'))
    (folder / 'run.json').write_text(json.dumps(run_record(node), indent=1, sort_keys=True, default=str) + '\n')
    return text, sorted([*files, 'run.json'])


def _timing(node: orm.ProcessNode, origin) -> dict:
    """Label, process, start (s after ``origin``) and wall seconds (creation to last modification) of a process,
    with the number of CalcJobs it ran."""
    from aiida.common.links import LinkType

    call = node.base.links.get_incoming(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all()
    entry = {'label': call[0].link_label if call else node.process_label,
             'process': node.process_label, 'start_s': round((node.ctime - origin).total_seconds(), 1),
             'seconds': round((node.mtime - node.ctime).total_seconds(), 1), 'exit_status': node.exit_status}
    if isinstance(node, orm.WorkflowNode):
        entry['n_calcjobs'] = sum(isinstance(n, orm.CalcJobNode) for n in node.called_descendants)
    return entry


def run_record(node: orm.ProcessNode) -> dict:
    """What a finished study did, from its stored nodes: wall time, every stage's timing (each process the study
    called, and the processes its workchains called), dataset sizes and the parents' imaginary modes, model errors,
    the screen's 0 K phonons. ``capthermo report`` and the demo write it as ``run.json`` beside Table I, so every
    figure quoted about a run comes from the run itself."""
    origin = node.ctime
    stages = []
    for child in sorted(node.called, key=lambda n: n.ctime):
        if not isinstance(child, (orm.WorkflowNode, orm.CalcJobNode)):
            continue
        entry = _timing(child, origin)
        if isinstance(child, orm.WorkChainNode):
            entry['called'] = [_timing(sub, origin) for sub in sorted(child.called, key=lambda n: n.ctime)
                               if isinstance(sub, (orm.WorkflowNode, orm.CalcJobNode))]
        stages.append(entry)
    record = {'study_uuid': node.uuid, 'process_state': node.process_state.value,
              'exit_status': node.exit_status, 'study_seconds': round((node.mtime - node.ctime).total_seconds(), 1),
              'stages': stages}
    outputs = node.outputs
    if 'dataset' in outputs:
        record['datasets'] = {name: {'n_structures': dataset.n_structures,
                                     'method': dataset.base.attributes.get('method')}
                              for name, dataset in outputs.dataset.items() if hasattr(dataset, 'n_structures')}
        modes = outputs.dataset.low.base.attributes.get('phonon_modes', None) if 'low' in outputs.dataset else None
        if modes:
            record['parent_phonon_modes'] = {
                role: {key: entry[key] for key in ('n_modes', 'n_imaginary', 'n_skipped', 'min_frequency_thz')}
                for role, entry in modes.items()}
    if 'mace' in outputs:
        mace = outputs.mace
        if 'training_set' in mace:
            record['mace_training_set'] = {'n_structures': mace.training_set.n_structures,
                                           'origins': mace.training_set.base.attributes.get('origins')}
        if 'evaluation' in mace:
            evaluation = mace.evaluation.get_dict()
            record['mace_evaluation'] = {'n_structures': evaluation['n_structures'],
                                         'force_mae_eV_per_A': evaluation['forces']['mae'],
                                         'energy_mae_eV_per_atom': evaluation['energy_per_atom']['mae']}
    if 'gnn' in outputs:
        record['gnn_mae_eV'] = {stage: {split: values['mae'] for split, values in outputs.gnn[stage].get_dict().items()
                                        if isinstance(values, dict) and 'mae' in values}
                                for stage in ('metrics_low', 'metrics') if stage in outputs.gnn}
    if 'screen' in outputs and 'compositions' in outputs.screen:
        record['screen_phonons'] = {
            f'{composition}.{key}': {name: value['phonons'].get_dict().get(name)
                                     for name in ('n_imaginary', 'min_frequency', 'stable_0K')}
            for composition, entries in outputs.screen.compositions.items()
            for key, value in entries.items() if hasattr(value, 'items') and 'phonons' in value}
    return record
