"""``GnnSweepWorkChain``: a grid of GNN hyper-parameters, one ``GnnTrainCalcJob`` each, the best model by
validation score and a table of all runs."""

from __future__ import annotations

import itertools

from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction

from aiida_capthermo.calculations.gnn import GnnTrainCalcJob
from aiida_capthermo.data.model import ModelData
from aiida_capthermo.exit_codes import EXIT_CODES

__all__ = ['GnnSweepWorkChain', 'expand_grid']

SCORES = ('validation_mae', 'validation_rmse', 'best_val_loss')


def expand_grid(base: dict, grid: dict) -> list[dict]:
    """The Cartesian product of ``grid`` (key -> list of values) on top of ``base``, in a fixed order."""
    keys = sorted(grid)
    return [{**base, **dict(zip(keys, values))} for values in itertools.product(*(grid[k] for k in keys))]


def validate_grid(value: orm.Dict, _) -> str | None:
    grid = value.get_dict()
    if not grid:
        return 'the grid is empty'
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            return f'grid entry {key!r} must be a non-empty list of values'
    return None


def validate_inputs(inputs, _) -> str | None:
    """Every run's hyper-parameters (the shared ones merged with its grid point) must be valid."""
    from aiida_capthermo.calculations.base import pydantic_error
    from aiida_capthermo.ml.gnn.config import GnnHyperparameters

    base = inputs['hyperparameters'].get_dict() if 'hyperparameters' in inputs else {}
    for point in expand_grid(base, inputs['grid'].get_dict()):
        error = pydantic_error(GnnHyperparameters, point, f'hyper-parameters of grid point {point}')
        if error:
            return error
    return None


@calcfunction
def tabulate_sweep(**runs: orm.Dict) -> orm.Dict:
    """Table of the sweep: one row per run with its grid values and metrics (``runs`` holds, per run ``run_NN``,
    ``run_NN__grid`` and ``run_NN__metrics``)."""
    labels = sorted({key.split('__')[0] for key in runs})
    rows = []
    for label in labels:
        metrics = runs[f'{label}__metrics'].get_dict()
        row = {'run': label, **runs[f'{label}__grid'].get_dict()}
        for split in ('train', 'validation', 'test'):
            for name in ('mae', 'rmse', 'r2'):
                row[f'{split}_{name}'] = metrics[split][name]
        row.update(best_epoch=metrics['best_epoch'], best_val_loss=metrics['best_val_loss'])
        rows.append(row)
    return orm.Dict({'rows': rows, 'units': metrics['units'], 'target': metrics['target']})


class GnnSweepWorkChain(WorkChain):
    """Train one GNN per grid point in parallel and select the best one by validation score.

    Runs that fail are reported and left out of the selection; the work chain fails only when all fail.
    """

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(GnnTrainCalcJob, namespace='train', exclude=('hyperparameters', 'checkpoint'))
        spec.input('hyperparameters', valid_type=orm.Dict, default=lambda: orm.Dict({}),
                   help='Hyper-parameters shared by all runs (GnnHyperparameters keys).')
        spec.input('grid', valid_type=orm.Dict, validator=validate_grid,
                   help='Hyper-parameter -> list of values; the sweep trains the Cartesian product, e.g. '
                        '{"hidden_channels": [32, 64], "learning_rate": [1e-3, 1e-4]}.')
        spec.input('score', valid_type=orm.Str, default=lambda: orm.Str('validation_mae'),
                   validator=lambda value, _: None if value.value in SCORES else f'score must be one of {SCORES}',
                   help='Validation score to minimise: validation_mae or validation_rmse (target units) or '
                        'best_val_loss.')
        spec.inputs.validator = validate_inputs
        spec.outline(cls.setup, cls.run_training, cls.inspect_training, cls.results)
        spec.output('best_model', valid_type=ModelData, help='The model of the run with the lowest validation score.')
        spec.output('best_metrics', valid_type=orm.Dict, help='Metrics of the best run.')
        spec.output('best_hyperparameters', valid_type=orm.Dict, help='Full hyper-parameters of the best run.')
        spec.output('table', valid_type=orm.Dict, help='All successful runs: grid values and per-split MAE/RMSE/R^2.')
        spec.exit_code(EXIT_CODES['ERROR_ALL_RUNS_FAILED'], 'ERROR_ALL_RUNS_FAILED',
                       message='All {count} training runs of the sweep failed.')

    def setup(self):
        """Expand the grid into the hyper-parameters of each run."""
        base = self.inputs.hyperparameters.get_dict()
        self.ctx.points = expand_grid(base, self.inputs.grid.get_dict())
        self.ctx.labels = [f'run_{i:02d}' for i in range(len(self.ctx.points))]
        self.report(f'sweeping {len(self.ctx.points)} hyper-parameter combinations')

    def run_training(self):
        """Submit one GnnTrainCalcJob per grid point."""
        calculations = {}
        for label, point in zip(self.ctx.labels, self.ctx.points):
            inputs = self.exposed_inputs(GnnTrainCalcJob, namespace='train')
            inputs['hyperparameters'] = orm.Dict(point)
            inputs.setdefault('metadata', {})
            inputs['metadata']['call_link_label'] = label
            calculations[label] = self.submit(GnnTrainCalcJob, **inputs)
        return ToContext(**calculations)

    def inspect_training(self):
        """Collect the successful runs; fail when none finished."""
        self.ctx.finished = []
        for label in self.ctx.labels:
            node = self.ctx[label]
            if node.is_finished_ok:
                self.ctx.finished.append(label)
            else:
                self.report(f'{label}<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}')
        if not self.ctx.finished:
            return self.exit_codes.ERROR_ALL_RUNS_FAILED.format(count=len(self.ctx.labels))
        return None

    def results(self):
        """Output the best model and the table of all runs."""
        grid_keys = sorted(self.inputs.grid.get_dict())
        score = self.inputs.score.value

        def value(label):
            metrics = self.ctx[label].outputs.metrics.get_dict()
            return metrics['best_val_loss'] if score == 'best_val_loss' else metrics['validation'][score.split('_')[1]]

        best = min(self.ctx.finished, key=value)
        node = self.ctx[best]
        self.report(f'best run {best}<{node.pk}>: {score} = {value(best):.5g}')
        table_inputs = {}
        for label in self.ctx.finished:
            point = self.ctx.points[self.ctx.labels.index(label)]
            table_inputs[f'{label}__grid'] = orm.Dict({key: point[key] for key in grid_keys})
            table_inputs[f'{label}__metrics'] = self.ctx[label].outputs.metrics
        self.out('table', tabulate_sweep(**table_inputs))
        self.out('best_model', node.outputs.model)
        self.out('best_metrics', node.outputs.metrics)
        self.out('best_hyperparameters', node.inputs.hyperparameters)
