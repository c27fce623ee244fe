"""Regression metrics and the parity plot (numpy + matplotlib, no torch)."""

from __future__ import annotations

import numpy as np

__all__ = ['regression_metrics', 'parity_caption', 'plot_parity', 'plot_bond_importance']

#: Resolution of the parity plots (dots per inch).
DPI = 200


def regression_metrics(true: np.ndarray, predicted: np.ndarray) -> dict:
    """MAE, RMSE (target units) and R^2 = 1 - SS_res / SS_tot of one split; NaN entries when the split is empty."""
    true, predicted = np.asarray(true, dtype=float), np.asarray(predicted, dtype=float)
    if true.size == 0:
        return {'n': 0, 'mae': None, 'rmse': None, 'r2': None}
    residual = predicted - true
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual ** 2)) / ss_tot if ss_tot > 0 else None
    return {'n': int(true.size), 'mae': float(np.mean(np.abs(residual))),
            'rmse': float(np.sqrt(np.mean(residual ** 2))), 'r2': r2}


def parity_caption(metrics: dict, units: str, what: str) -> str:
    """``MAE 0.049 eV/Å, R² 0.930 (n = 1200 force components)`` from :func:`regression_metrics`: R² only where it
    is defined (a reference with spread)."""
    r2 = '' if metrics['r2'] is None else f', R² {metrics["r2"]:.3f}'
    return f'MAE {metrics["mae"]:.3g} {units}{r2} (n = {metrics["n"]} {what})'


def plot_parity(parity: dict, metrics: dict, path: str, target: str = 'gap', units: str = 'eV',
                title: str = '') -> None:
    """Parity plot (true vs predicted) of the train/validation/test splits, each with its MAE, R² (where defined)
    and size in the legend, written to ``path`` (PNG) and beside it as vector PDF (``.pdf``, no creation date);
    ``title`` names the model (e.g. its training stage)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    with plt.style.context('default'):  # whatever the process's rcParams
        _draw_parity(plt, parity, metrics, target, units, title, path)


def _draw_parity(plt, parity, metrics, target, units, title, path) -> None:
    import pathlib

    figure, axis = plt.subplots(figsize=(4.8, 4.8), dpi=DPI)
    values = []
    for split, colour in (('train', 'tab:blue'), ('validation', 'tab:orange'), ('test', 'tab:green')):
        true, pred = parity[f'{split}_true'], parity[f'{split}_pred']
        if len(true) == 0:
            continue
        caption = parity_caption(metrics[split], units, 'structures')
        axis.scatter(true, pred, s=8, alpha=0.6, color=colour, label=f'{split}: {caption}')
        values.extend([true, pred])
    low, high = float(np.min(np.concatenate(values))), float(np.max(np.concatenate(values)))
    axis.plot([low, high], [low, high], 'k--', lw=1)
    axis.set_xlabel(f'reference {target} ({units})')
    axis.set_ylabel(f'GNN {target} ({units})')
    if title:
        axis.set_title(title, fontsize=8)
    axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path)
    figure.savefig(pathlib.Path(path).with_suffix('.pdf'), metadata={'CreationDate': None})
    plt.close(figure)


def plot_bond_importance(importance: dict, path: str) -> None:
    """Bar chart of the mean edge importance per bond type (from :func:`explain.explain_bond_types`)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(importance)
    figure, axis = plt.subplots(figsize=(4.5, 3.2), dpi=DPI)
    axis.bar(names, [importance[n]['mean'] for n in names], yerr=[importance[n]['std'] for n in names], capsize=3)
    axis.set_ylabel('mean edge importance')
    axis.set_xlabel('bond type')
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
