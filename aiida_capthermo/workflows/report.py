"""The paper's Table I and Figure 7b-d from the thermal stage's gap table: a calcfunction for the provenance graph
and plain functions for ``capthermo report`` (which reads the stored nodes and re-runs nothing)."""

from __future__ import annotations

import functools
import io
import json
import math

from aiida import orm
from aiida.engine import calcfunction

__all__ = ['table_one', 'table_rows', 'table_text', 'table_csv', 'table_figure', 'composition_label',
           'mace_parity_figure', 'mace_parity_plot', 'validation_figure', 'learning_curve_figure',
           'run_record', 'write_report', 'pyplot', 'styled', 'png_bytes', 'figure_bytes', 'figure_nodes', 'pdf_beside']


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (daemon workers have no display)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def styled(draw):
    """Decorator of a function that draws a figure: it draws in matplotlib's default style, so that what another
    library set in the process's rcParams (pymatgen's plotter sets ``font.size`` 8 on import) changes no figure:
    a daemon worker, a test and ``capthermo report`` on an imported archive draw the same bytes."""

    @functools.wraps(draw)
    def in_default_style(*args, **kwargs):
        with pyplot().style.context('default'):
            return draw(*args, **kwargs)

    return in_default_style


#: Per-(x, T) columns of a Table I row (lists over its temperatures), see core.error_budget.budget_rows.
ROW_COLUMNS = ('gap', 'stderr', 'stderr_statistical', 'stderr_model', 'stderr_sampling', 'sampling_shift',
               'sampling_perturbative', 'gap_model', 'bias', 'n_validation', 'teacher_gap', 'validated', 'delta_gap',
               'delta_gap_stderr', 'relative_change', 'n_frames', 'n_independent', 'n_outside_domain',
               'configuration_spread', 'stderr_weights', 'stderr_members', 'n_drifting')


def column(row: dict, name: str, index: int):
    """Value ``index`` of column ``name`` of a Table I row; None for a column a stored older table lacks."""
    return (row.get(name) or [None] * (index + 1))[index]


def table_rows(rows: list[dict]) -> list[dict]:
    """Group per-(structure, T) rows with their error budget (:func:`core.error_budget.budget_rows`) into one row
    per composition, sorted by x: ``x``, ``key``, ``temperatures`` (K), ``eg0`` and ``eg0_stderr`` (eV) and, per T,
    the :data:`ROW_COLUMNS` (eV; ``stderr`` is the total error)."""
    grouped: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r['x'], r['temperature'])):
        entry = grouped.setdefault(row['key'], {'key': row['key'], 'x': row['x'], 'eg0': row['eg0'],
                                                'eg0_stderr': row.get('eg0_stderr', 0.0), 'temperatures': [],
                                                **{name: [] for name in ROW_COLUMNS}})
        entry['temperatures'].append(row['temperature'])
        for name in ROW_COLUMNS:
            entry[name].append(row.get(name))
        if row.get('configurations'):  # an ensemble's row: its configurations and their weights
            entry['configurations'] = [{key: c[key] for key in ('key', 'weight', 'weight_engine') if key in c}
                                       for c in row['configurations']]
    return sorted(grouped.values(), key=lambda r: r['x'])


def table_text(rows: list[dict]) -> str:
    """Table I as aligned text: x, then Eg ± total error (statistical part) at each T (eV; Eg(0) of the relaxed
    cell without an error estimate is marked static), then ΔEg/Eg(0) at each T > 0, then the sample sizes behind
    each MD average; a gap the teacher did not validate is marked ``*``, one averaged over MD frames of which some
    lie outside the GNN's training domain ``†``, a validated one at T > 0 whose potential's sampling error is an
    order of magnitude only (its energies on the frames differ from the engine's by more than kT) or not estimated
    ``‡``, one with replicas whose potential energy still drifts where their average starts ``§``."""
    temperatures = sorted({t for row in rows for t in row['temperatures']})
    hot = [t for t in temperatures if t > 0]
    width = 24
    header = f'{"x":>6} ' + ' '.join(f'{f"Eg({t:.0f} K)":>{width}}' for t in temperatures) + ' ' + ' '.join(
        f'{f"dEg/Eg({t:.0f} K)":>15}' for t in hot)
    lines = [header, '-' * len(header)]
    unvalidated, outside, beyond_first_order, sampled, static, samples = False, [], False, False, False, []
    structural = False  # an Eg(0) with the potential's structure error
    drifting = []

    def count(value, spec: str = 'd') -> str:
        return '-' if value is None else format(value, spec)

    for row in rows:
        by_t = {t: index for index, t in enumerate(row['temperatures'])}
        cells = []
        for t in temperatures:
            if t not in by_t:
                cells.append('-')
                continue
            i = by_t[t]
            mark = '' if row['validated'][i] else '*'
            unvalidated |= not row['validated'][i]
            perturbative = column(row, 'sampling_perturbative', i)
            sampled |= perturbative is not None
            if row['validated'][i] and t > 0 and not perturbative:
                mark += '‡'
                beyond_first_order = True
            if row.get('n_outside_domain') and row['n_outside_domain'][i]:
                mark += '†'
                outside.append(f'x = {row["x"]:.3f}, {t:.0f} K: {row["n_outside_domain"][i]} of '
                               f'{row["n_frames"][i]}')
            if column(row, 'n_drifting', i):
                mark += '§'
                drifting.append(f'x = {row["x"]:.3f}, {t:.0f} K: {row["n_drifting"][i]}')
            if t == 0 and not row['stderr'][i]:  # the relaxed cell's own gap: no average, no error estimate
                cells.append(f'{row["gap"][i]:.3f} (static){mark}')
                static = True
            else:
                cells.append(f'{row["gap"][i]:.3f} ± {row["stderr"][i]:.3f} ({row["stderr_statistical"][i]:.3f})'
                             f'{mark}')
                structural |= t == 0 and column(row, 'stderr_sampling', i) is not None
            if t > 0:
                samples.append(f'x = {row["x"]:.3f}, {t:.0f} K: {count(column(row, "n_frames", i))} / '
                               f'{count(column(row, "n_independent", i), ".0f")} / '
                               f'{count(column(row, "n_validation", i))}')
        relative = [f'{100 * row["relative_change"][by_t[t]]:+.1f} %'
                    if t in by_t and row['relative_change'][by_t[t]] is not None else '-' for t in hot]
        lines.append(f'{row["x"]:>6.3f} ' + ' '.join(f'{c:>{width}}' for c in cells) + ' '
                     + ' '.join(f'{c:>15}' for c in relative))
    members = any(value is not None for row in rows for value in (row.get('stderr_members') or []))
    lines.append('Eg ± total error (statistical part), eV; the total adds the uncertainty of the GNN\'s bias '
                 'measured by the teacher on frames of the same MD' + (
                     ', the potential\'s sampling error (first-order reweighting to the low engine on those '
                     'frames)' if sampled else '') + (
                     ' and the spread of the ensemble of GNNs' if members else '') + '.')
    if static:
        lines.append('(static): Eg(0), the gap of the relaxed cell itself: the teacher\'s where validated (so no '
                     'model error), the GNN\'s where not; no average, so no statistical error.')
    if structural:
        lines.append('Eg(0) ± its structure error: the teacher\'s gap at the low engine\'s own minimum less at the '
                     'potential\'s relaxed structure (where the MD starts; its gap is the one given). '
                     'ΔEg/Eg carries it.')
    if samples:
        lines.append('Samples, MD frames averaged / independent samples / teacher-labelled frames: '
                     + '; '.join(samples) + '.')
    ensembles = [row for row in rows if row.get('configurations')]
    for row in ensembles:
        members = ', '.join(f'{c["key"]} {c["weight"]:.2f}' for c in row['configurations'])
        spread = ', '.join(f'{t:.0f} K {s:.3f} eV' for t, s in zip(row['temperatures'], row['configuration_spread'])
                           if t > 0 and s is not None)
        moved = [(t, w) for t, w in zip(row['temperatures'], row.get('stderr_weights') or []) if w is not None]
        weights = ('; the weights\' error from the low engine\'s relative energies (in the total): '
                   + ', '.join(f'{t:.0f} K {w:.2g} eV' for t, w in moved)) if moved else (
                       '; the weights\' error is not estimated (no engine energy of every configuration)')
        lines.append(f'x = {row["x"]:.3f} is the weighted average of {len(row["configurations"])} configurations '
                     f'({members}); the spread of their gaps: {spread}{weights}.')
    if unvalidated:
        lines.append('* not validated by the teacher: the model\'s own average, its error bar is statistical only.')
    if beyond_first_order:
        lines.append('‡ the potential\'s sampling error is an order of magnitude, not a bound (its energies on the '
                     'frames differ from the low engine\'s by more than kT: beta * std(dU) > 1), or not estimated.')
    if drifting:
        lines.append('§ replicas whose potential energy still drifts over the part averaged (a linear trend beyond 3 '
                     'standard errors: not equilibrated, the average holds part of a relaxation): '
                     + '; '.join(drifting) + '.')
    if outside:
        lines.append('† MD frames outside the GNN\'s training domain (extrapolated gaps): ' + '; '.join(outside) + '.')
    return '\n'.join(lines)


def table_csv(rows: list[dict]) -> str:
    """Table I as CSV: one line per (x, T) with the gap, its total, statistical and model errors, the model's own
    average and the bias removed, Eg(0), ΔEg and its error (eV), the relative change, and the samples behind it
    (teacher frames, MD frames averaged, those outside the GNN's domain, independent samples), the configurations'
    spread, the weights' error and the spread over an ensemble of GNNs (eV), and the replicas still relaxing."""
    lines = ['x,temperature_K,gap_eV,stderr_eV,stderr_statistical_eV,stderr_model_eV,stderr_sampling_eV,'
             'sampling_shift_eV,sampling_perturbative,gap_model_eV,bias_eV,'
             'n_validation,validated,eg0_eV,delta_gap_eV,delta_gap_stderr_eV,relative_change,n_frames,n_outside_domain,'
             'n_independent,configuration_spread_eV,stderr_weights_eV,stderr_members_eV,n_drifting']

    def number(value) -> str:
        return '' if value is None else f'{value:.6f}'

    def count(row: dict, name: str, index: int) -> str:
        return '' if column(row, name, index) is None else str(column(row, name, index))

    def flag(state) -> str:
        return '' if state is None else str(bool(state)).lower()

    for row in rows:
        for i, temperature in enumerate(row['temperatures']):
            lines.append(','.join([
                f'{row["x"]:.4f}', f'{temperature:.1f}', number(row['gap'][i]), number(row['stderr'][i]),
                number(row['stderr_statistical'][i]), number(row['stderr_model'][i]),
                number(column(row, 'stderr_sampling', i)), number(column(row, 'sampling_shift', i)),
                flag(column(row, 'sampling_perturbative', i)), number(row['gap_model'][i]),
                number(row['bias'][i]), str(row['n_validation'][i]), str(bool(row['validated'][i])).lower(),
                number(row['eg0']), number(row['delta_gap'][i]), number(row['delta_gap_stderr'][i]),
                number(row['relative_change'][i]), count(row, 'n_frames', i), count(row, 'n_outside_domain', i),
                number(column(row, 'n_independent', i)), number(column(row, 'configuration_spread', i)),
                number(column(row, 'stderr_weights', i)), number(column(row, 'stderr_members', i)),
                count(row, 'n_drifting', i)]))
    return '\n'.join(lines) + '\n'


def composition_label(guest: str | None = None) -> str:
    """Axis and legend name of the composition: ``x_Br`` (the guest's fraction on its sublattice) when the guest
    species is known, else ``x``."""
    return rf'$x_{{\mathrm{{{guest}}}}}$' if guest else '$x$'


@styled
def table_figure(rows: list[dict], name: str, guest: str | None = None):
    """Figure 7b (``eg_vs_x``: Eg vs x per T), 7c (``eg_vs_t``: Eg vs T per x) or 7d (``relative_change``:
    ΔEg/Eg(0) vs x per T > 0) of Table I ``rows`` as a matplotlib figure.

    Eg(T) draws the thermal averages (T > 0) as a line with two error bars per point, the total (thin, capped) and
    its statistical part (thick, translucent), and Eg(0), the static gap of the relaxed cell, as an open square that
    no line joins to the MD averages; the compositions are set 1 % of the T range apart so that their bars show.
    ``guest`` names the species of x in the labels (``x_Br``).
    """
    import numpy as np

    def pick(values: list | None, indices: list[int]) -> np.ndarray:
        return np.array([np.nan if values is None or values[i] is None else values[i] for i in indices], dtype=float)

    plt = pyplot()
    xname = composition_label(guest)
    figure, axis = plt.subplots(figsize=(5.2, 3.9))
    temperatures = sorted({t for row in rows for t in row['temperatures']})
    if name == 'eg_vs_t':
        dodge = 0.01 * max(temperatures)  # compositions side by side at each T, so that their bars do not overlap
        for number, row in enumerate(rows):
            hot = [i for i, t in enumerate(row['temperatures']) if t > 0]
            cold = [i for i, t in enumerate(row['temperatures']) if t == 0]
            colour = None
            if hot:
                t_hot = pick(row['temperatures'], hot) + dodge * (number - (len(rows) - 1) / 2)
                gap = pick(row['gap'], hot)
                line = axis.errorbar(t_hot, gap, yerr=pick(row['stderr'], hot), marker='o', markersize=4,
                                     capsize=5, elinewidth=1.0, zorder=3, label=f'{xname} = {row["x"]:.3f}')
                colour = line[0].get_color()
                statistical = np.nan_to_num(pick(row.get('stderr_statistical'), hot))  # older tables: none
                axis.errorbar(t_hot, gap, yerr=statistical, fmt='none', elinewidth=4, color=colour, alpha=0.4,
                              zorder=2)
            for i in cold:
                axis.errorbar([0.0], [row['gap'][i]], yerr=[row['stderr'][i] or 0.0], fmt='s', markersize=6,
                              markerfacecolor='white', color=colour, capsize=5, zorder=4,
                              label=None if hot else f'{xname} = {row["x"]:.3f}')
        axis.plot([], [], 's', markerfacecolor='white', color='grey', label='Eg(0): relaxed cell (static)')
        axis.set_title('bars: total error (thin, capped), statistical part (thick)', fontsize=8)
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
            label = f'{temperature:.0f} K' + (' (static, relaxed cell)' if temperature == 0 else '')
            axis.errorbar(x, y, yerr=error, marker='o', markersize=4, capsize=5, label=label)
        if name == 'relative_change':
            axis.axhline(0.0, color='grey', lw=0.8)
        axis.set_xlabel(f'{xname} (guest fraction)')
        axis.set_ylabel('Eg (eV)' if name == 'eg_vs_x' else 'ΔEg / Eg(0 K) (%)')
    axis.legend(fontsize=7)
    return figure


#: Resolution of every PNG figure (dots per inch).
DPI = 200


@styled
def figure_bytes(figure, *formats: str) -> list[bytes]:
    """The figure laid out (``tight_layout``) in each of ``formats``: PNG at :data:`DPI`, vector PDF without a
    creation date (the same figure gives the same bytes); the figure is closed."""
    figure.tight_layout()
    files = []
    for file_format in formats:
        buffer = io.BytesIO()
        metadata = {'CreationDate': None} if file_format == 'pdf' else None
        figure.savefig(buffer, format=file_format, dpi=DPI, metadata=metadata)
        files.append(buffer.getvalue())
    pyplot().close(figure)
    return files


def png_bytes(figure, file_format: str = 'png') -> bytes:
    """The figure as PNG bytes at :data:`DPI` (``file_format='pdf'``: vector PDF); see :func:`figure_bytes`."""
    return figure_bytes(figure, file_format)[0]


def figure_nodes(figure, stem: str) -> tuple[orm.SinglefileData, orm.SinglefileData]:
    """The figure as a PNG and a PDF ``SinglefileData`` (``stem.png``, ``stem.pdf``). A process that makes a figure
    stores the PNG as output ``<link>`` and the PDF as ``<link>_pdf`` beside it, where :func:`pdf_beside` finds it."""
    png, pdf = figure_bytes(figure, 'png', 'pdf')
    return (orm.SinglefileData(io.BytesIO(png), filename=f'{stem}.png'),
            orm.SinglefileData(io.BytesIO(pdf), filename=f'{stem}.pdf'))


def pdf_beside(png: orm.SinglefileData) -> orm.SinglefileData | None:
    """The vector PDF that the process which made the PNG figure ``png`` stored beside it (its output
    ``<link>_pdf``); None where it made none (figures of runs older than the PDFs)."""
    from aiida.common.links import LinkType

    created = png.base.links.get_incoming(link_type=LinkType.CREATE).all()
    if not created:
        return None
    label = created[0].link_label
    pdfs = created[0].node.base.links.get_outgoing(link_type=LinkType.CREATE,
                                                   link_label_filter=f'{label}_pdf').all()
    return pdfs[0].node if pdfs else None


@styled
def mace_parity_figure(parity: dict, title: str = ''):
    """Parity of a MACE evaluation (``capthermo-mace evaluate`` arrays): energy per atom (meV/atom, relative to the
    reference mean), force components (eV/Å) and, where the reference has stresses, stress components (GPa), each
    with its MAE, R² and number of values."""
    import numpy as np

    from aiida_capthermo.core.constants import EV_PER_A3_TO_GPA
    from aiida_capthermo.ml.gnn.metrics import parity_caption, regression_metrics

    n_atoms = np.asarray(parity['n_atoms'], dtype=float)
    reference, predicted = parity['energy_ref'] / n_atoms, parity['energy_pred'] / n_atoms
    shift = float(np.nanmean(reference))
    panels = [(1000 * (reference - shift), 1000 * (predicted - shift), 'energy − mean', 'meV/atom', 'structures'),
              (np.ravel(parity['forces_ref']), np.ravel(parity['forces_pred']), 'force component', 'eV/Å',
               'force components')]
    stress_ref = np.asarray(parity.get('stress_ref', []), dtype=float)
    if stress_ref.size and np.isfinite(stress_ref).any():
        panels.append((EV_PER_A3_TO_GPA * np.ravel(stress_ref),
                       EV_PER_A3_TO_GPA * np.ravel(np.asarray(parity['stress_pred'], dtype=float)),
                       'stress component', 'GPa', 'stress components'))
    figure, axes = pyplot().subplots(1, len(panels), figsize=(4.0 * len(panels), 3.9), squeeze=False)
    for axis, (true, pred, label, unit, what) in zip(axes[0], panels):
        finite = np.isfinite(true) & np.isfinite(pred)
        true, pred = true[finite], pred[finite]
        low, high = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
        axis.plot([low, high], [low, high], 'k--', lw=1)
        axis.scatter(true, pred, s=6, alpha=0.5)
        axis.set_xlabel(f'reference {label} ({unit})')
        axis.set_ylabel(f'MACE {label} ({unit})')
        axis.set_title(parity_caption(regression_metrics(true, pred), unit, what), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


@calcfunction
def mace_parity_plot(parity: orm.ArrayData) -> dict:
    """The parity plot of a MACE evaluation's ``parity`` arrays: ``plot`` (PNG) and ``plot_pdf``."""
    arrays = {name: parity.get_array(name) for name in parity.get_arraynames()}
    title = f'MACE on {len(arrays["energy_ref"])} held-out structures'
    png, pdf = figure_nodes(mace_parity_figure(arrays, title), 'mace_parity')
    return {'plot': png, 'plot_pdf': pdf}


#: Table I's figures (Figure 7b-d), stored by the study as PNG and PDF nodes.
TABLE_FIGURES = ('eg_vs_x', 'eg_vs_t', 'relative_change')


def _engine_weights(weights: dict, ensemble_settings: orm.Dict | None, validation: orm.Dict | None) -> dict:
    """Per composition of ``weights``, the weights the low engine's energies of the relaxed configurations give
    (the validation's 0 K rows, engine minus potential per atom, times the cell's atoms), where every configuration
    has one; the random alloy's weights use no energy and are their own, and so are those of a composition the
    engine ranked (``settings['ranked_by'][composition] == 'engine'``: the weights are already the engine's)."""
    from aiida_capthermo.core.error_budget import engine_weights

    if ensemble_settings is None:
        return {}
    settings = ensemble_settings.get_dict()
    if settings.get('weighting') == 'random':
        return weights
    ranked = {key for key, by in settings.get('ranked_by', {}).items() if by == 'engine'}
    own = {composition: members for composition, members in weights.items() if composition in ranked}
    if validation is None:
        return own
    per_atom = {row['key']: row.get('energy_per_atom_bias') for row in validation['rows']
                if row.get('temperature') == 0.0}
    engine = dict(own)
    for composition, members in weights.items():
        if composition in own:
            continue
        bias = {key: per_atom.get(key) for key in members}
        if all(value is not None and math.isfinite(value) for value in bias.values()):
            engine[composition] = engine_weights(
                members, {key: value * settings['n_atoms'][composition] for key, value in bias.items()},
                float(settings['temperature']))
    return engine


@calcfunction
def table_one(table: orm.Dict, validation: orm.Dict | None = None, species: orm.Dict | None = None,
              ensemble: orm.Dict | None = None, ensemble_settings: orm.Dict | None = None) -> dict:
    """Table I (``table`` Dict: one row per composition; ``csv``), Figure 7b-d (``eg_vs_x``, ``eg_vs_t``,
    ``relative_change`` PNG) and one ``gap_<key>_T<T>`` Dict per (structure, T), from the thermal stage's
    ``table`` and, when given, the validation stage's ``validation`` rows: the gaps are then the control-variate
    estimates of the teacher's thermal average with their error budget (:mod:`aiida_capthermo.core.error_budget`).
    ``species`` (``host``, ``guest``: the substituted and the substituting element) names x in the figures and is
    kept in the table. ``ensemble`` (``{composition key: {structure key: weight}}``) makes each such composition's
    row the weighted average of its configurations (:func:`core.error_budget.ensemble_rows`); the table then keeps
    the configurations' own rows as ``configurations``, and every configuration keeps its gap nodes.
    ``ensemble_settings`` (the weights' ``temperature``, K, and ``n_atoms`` per composition, as the study's
    ``ensemble_weights`` got them) with the validation's 0 K rows (the low engine's energy of each relaxed
    configuration) add the weights' error, ``stderr_weights``; it is 0 for a composition whose screen the engine
    ranked (``ranked_by``: its weights are the engine's already).
    """
    from aiida_capthermo.core.error_budget import ESTIMATOR, budget_rows, ensemble_rows

    flat = budget_rows(table['rows'], validation['rows'] if validation is not None else None)
    weights = ensemble.get_dict() if ensemble is not None else {}
    combined = ensemble_rows(flat, weights, _engine_weights(weights, ensemble_settings, validation)) if weights \
        else flat
    gaps = flat + [row for row in combined if 'configurations' in row]  # every structure's, and the averages
    rows = table_rows(combined)
    names = species.get_dict() if species is not None else {}
    units = {'gap': 'eV', 'stderr': 'eV', 'temperature': 'K', 'x': 'guest fraction'}
    members = {key for composition in weights.values() for key in composition}
    extra = {'configurations': table_rows([row for row in flat if row['key'] in members]),
             'ensemble': weights} if weights else {}
    outputs = {'table': orm.Dict({'rows': rows, 'units': units, 'estimator': ESTIMATOR, 'species': names,
                                  'teacher': validation['teacher_method'] if validation is not None else None,
                                  **extra}),
               'csv': orm.SinglefileData(io.BytesIO(table_csv(rows).encode()), filename='table_i.csv')}
    for row in gaps:
        outputs[f'gap_{row["key"]}_T{row["temperature"]:.0f}'] = orm.Dict({**row, 'units': units})
    for name in TABLE_FIGURES:
        outputs[name], outputs[f'{name}_pdf'] = figure_nodes(table_figure(rows, name, names.get('guest')), name)
    return outputs


def write_report(node: orm.ProcessNode, folder) -> tuple[str, list[str]]:
    """Table I of a finished study ``node`` as text, and its CSV, figures (the stored PNGs, and Table I's figures
    again as vector PDF) and run record written to ``folder``; returns the text and the file names. Reads stored
    nodes only, so it works the same on a study imported from an archive."""
    import pathlib

    outputs = node.outputs
    rows = outputs.table['rows']
    text = table_text(rows)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {'table_i.csv': outputs.table_csv} if 'table_csv' in outputs else {}
    for name, value in (outputs.figures.items() if 'figures' in outputs else []):
        files[f'{name}.png'] = value
        pdf = pdf_beside(value)
        if pdf is not None:
            files[f'{name}.pdf'] = pdf
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


def _ensemble_coverage(node: orm.ProcessNode) -> dict | None:
    """The ``coverage`` of the study's ``ensemble_weights`` calcfunction (the weight its kept classes hold among all
    the screen's relaxed ones, per composition), None when it made none."""
    from aiida.common.links import LinkType

    for link in node.base.links.get_outgoing(link_type=LinkType.CALL_CALC).all():
        if getattr(link.node, 'process_label', None) == 'ensemble_weights' and 'coverage' in link.node.outputs:
            return link.node.outputs.coverage.get_dict()
    return None


def run_record(node: orm.ProcessNode) -> dict:
    """What a finished study did, from its stored nodes: wall time, every stage's timing (each process the study
    called, and the processes its workchains called), dataset sizes, the end members and their imaginary modes,
    model errors,
    the screen's 0 K phonons, the validation on the thermal frames and Table I's error budget (with an ensemble:
    every configuration's row, the weights and their coverage). ``capthermo report``
    and the demo write it as ``run.json`` beside Table I, so every figure quoted about a run comes from the run
    itself."""
    import numpy as np

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
        if 'parents' in outputs.dataset:  # the end members every cell was built from (relaxed where the study did)
            record['end_members'] = {
                role: {'formula': atoms.get_chemical_formula(), 'cellpar': np.round(atoms.cell.cellpar(), 6).tolist(),
                       'volume_per_atom': round(atoms.get_volume() / len(atoms), 6)}
                for role, atoms in ((role, structure.get_ase()) for role, structure in outputs.dataset.parents.items())}
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
        if 'learning_curve' in mace:
            curve = mace.learning_curve.get_dict()
            record['mace_learning_curve'] = {key: curve.get(key) for key in (
                'rounds', 'force_tolerance', 'sampling_tolerance', 'converged', 'final')}
    if 'gnn' in outputs:
        record['gnn_mae_eV'] = {stage: {split: values['mae'] for split, values in outputs.gnn[stage].get_dict().items()
                                        if isinstance(values, dict) and 'mae' in values}
                                for stage in ('metrics_low', 'metrics') if stage in outputs.gnn}
        if 'member_metrics' in outputs.gnn:  # an ensemble of GNNs: each model's seed and errors
            record['gnn_member_metrics'] = outputs.gnn.member_metrics.get_dict()
    if 'validation' in outputs and 'validation' in outputs.validation:
        validation = outputs.validation.validation.get_dict()
        record['validation'] = {key: validation.get(key) for key in ('teacher', 'teacher_method', 'units', 'rows')}
    if 'table' in outputs:
        record['error_budget'] = [
            {'x': row['x'], 'temperature': t, **{name: column(row, name, i) for name in ROW_COLUMNS}}
            for row in outputs.table['rows'] for i, t in enumerate(row['temperatures'])]
        if outputs.table.get('configurations'):  # an ensemble: every configuration's own row, and the weights
            record['configurations'] = [
                {'key': row['key'], 'x': row['x'], 'temperature': t,
                 **{name: column(row, name, i) for name in ROW_COLUMNS}}
                for row in outputs.table['configurations'] for i, t in enumerate(row['temperatures'])]
            record['ensemble'] = {'weights': outputs.table.get('ensemble'),
                                  'settings': node.inputs.ensemble.get_dict() if 'ensemble' in node.inputs else None,
                                  'coverage': _ensemble_coverage(node)}
    if 'screen' in outputs and 'compositions' in outputs.screen:
        record['screen_phonons'] = {
            f'{composition}.{key}': {name: value['phonons'].get_dict().get(name)
                                     for name in ('n_imaginary', 'min_frequency', 'stable_0K')}
            for composition, entries in outputs.screen.compositions.items()
            for key, value in entries.items() if hasattr(value, 'items') and 'phonons' in value}
        record['screen_ranking'] = {  # the relaxed classes by energy: what the ground state and the weights rest on
            composition: {name: entries['ranking'].get_dict().get(name)
                          for name in ('keys', 'relative_energy_per_atom', 'multiplicity', 'lowest', 'ranked_by',
                                       'potential_relative_energy_per_atom', 'potential_lowest', 'not_reranked')}
            for composition, entries in outputs.screen.compositions.items() if 'ranking' in entries}
    return record


@styled
def validation_figure(frames: dict):
    """The validation on the thermal frames (a figure): the GNN's gap against the teacher's (eV) and the MLIP's
    force components against the low engine's (eV/Å), one colour per (x, T), with the MAE of each (x, T).

    ``frames``: per-frame arrays ``x``, ``temperature`` (K), ``teacher_gap``, ``gnn_gap`` (eV) and per-atom arrays
    ``force_x``, ``force_temperature``, ``forces_reference``, ``forces_predicted`` ([n, 3], eV/Å).
    """
    import numpy as np

    figure, axes = pyplot().subplots(1, 2, figsize=(9.0, 4.0))
    points = sorted({(round(float(x), 4), float(t)) for x, t in zip(frames['x'], frames['temperature'])})
    colours = pyplot().get_cmap('viridis')(np.linspace(0.0, 0.9, max(len(points), 1)))
    for colour, (x, t) in zip(colours, points):
        mask = (np.round(frames['x'], 4) == x) & (frames['temperature'] == t)
        teacher, gnn = frames['teacher_gap'][mask], frames['gnn_gap'][mask]
        keep = np.isfinite(teacher) & np.isfinite(gnn)
        if keep.any():
            mae = np.mean(np.abs(teacher[keep] - gnn[keep]))
            axes[0].scatter(teacher[keep], gnn[keep], s=18, color=colour,
                            label=f'x = {x:g}, {t:.0f} K: {mae:.3f} eV ({keep.sum()})')
        atoms = (np.round(frames['force_x'], 4) == x) & (frames['force_temperature'] == t)
        reference, predicted = frames['forces_reference'][atoms].ravel(), frames['forces_predicted'][atoms].ravel()
        keep = np.isfinite(reference) & np.isfinite(predicted)
        if keep.any():
            mae = np.mean(np.abs(reference[keep] - predicted[keep]))
            axes[1].scatter(reference[keep], predicted[keep], s=4, alpha=0.5, color=colour,
                            label=f'x = {x:g}, {t:.0f} K: {mae:.3f} eV/Å')
    for axis, title, unit in ((axes[0], 'GNN gap vs teacher, frames of the thermal MD', 'eV'),
                              (axes[1], 'MLIP forces vs low engine, same frames', 'eV/Å')):
        low, high = axis.get_xlim()
        bottom, top = axis.get_ylim()
        span = (min(low, bottom), max(high, top))
        axis.plot(span, span, color='grey', linewidth=0.8)
        axis.set_xlabel(f'teacher ({unit})')
        axis.set_ylabel(f'model ({unit})')
        axis.set_title(title, fontsize=9)
        axis.legend(fontsize=6, title='MAE per (x, T)', title_fontsize=6)
    return figure


@styled
def learning_curve_figure(curve: dict):
    """The potential's active learning (a figure): force MAE and RMSE (eV/Å) of each round's potential on that
    round's fresh MD frames against the size of its training set, with the tolerance; on a second axis the largest
    ``beta * std(U_engine - U_MLIP)`` over the (x, T) of the round's frames (with its tolerance, where set); a
    final potential trained on the last round's frames too is a vertical line at its training-set size."""
    figure, axis = pyplot().subplots(figsize=(4.8, 3.6))
    rows = curve['rounds']
    sizes = [row['n_training'] for row in rows]
    axis.plot(sizes, [row['force_mae'] for row in rows], marker='o', label='force MAE')
    axis.plot(sizes, [row['force_rmse'] for row in rows], marker='s', label='force RMSE')
    for row in rows:
        axis.annotate(f'round {row["round"]} ({row["n_frames"]} frames)', (row['n_training'], row['force_mae']),
                      fontsize=7, textcoords='offset points', xytext=(4, 4))
    if curve.get('force_tolerance') is not None:
        axis.axhline(curve['force_tolerance'], color='grey', linestyle='--', label='force tolerance')
    final = curve.get('final') or {}
    if final.get('trained_on_last_round'):  # no fresh frames of its own: the thermal validation checks it
        axis.axvline(final['n_training'], color='tab:red', linestyle=':', label='final potential (no point)')
    axis.margins(x=0.3)  # room for the last round's annotation
    axis.set_xlabel('structures the potential was trained on')
    axis.set_ylabel('error on fresh MD frames (eV/Å)')
    axis.set_title('out-of-sample ' + ('(converged)' if curve.get('converged') else '(not converged)'), fontsize=9)
    handles, labels = axis.get_legend_handles_labels()
    spread = [(row['n_training'], row['max_beta_sigma']) for row in rows if row.get('max_beta_sigma') is not None]
    if spread:
        twin = axis.twinx()
        twin.plot(*zip(*spread), marker='^', color='tab:green', linestyle=':', label='largest β·std(dU)')
        if curve.get('sampling_tolerance') is not None:
            twin.axhline(curve['sampling_tolerance'], color='tab:green', linestyle='--', alpha=0.5,
                         label='β·std(dU) tolerance')
        twin.set_yscale('log')  # from tens (the first potential) to about 1
        twin.set_ylabel('largest β·std(U_engine − U_MLIP)')
        more, names = twin.get_legend_handles_labels()
        handles, labels = handles + more, labels + names
    axis.legend(handles, labels, fontsize=8)
    return figure

