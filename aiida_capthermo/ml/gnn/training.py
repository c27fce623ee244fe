"""Training of the band-gap GNN: seeded split, Adam + MSE on min-max targets, best-validation selection,
early stopping, checkpoints for restart, two-stage fine-tuning from a parent model, saving and loading.

Normalisation across the two stages: a fine-tuned model keeps its parent's node-feature and edge-distance
constants (the learned filters keep their meaning) and, by default, widens the target min/max to the union of
the parent's range and the new (high-fidelity) training split's, so that the sigmoid output covers both: a refit
on a few high-fidelity gaps of displaced structures alone would clip every prediction to their range (an
undisplaced structure's larger gap included); the choice is recorded in ``model.json`` (``normalisation_source``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time

import numpy as np
import torch

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.core.graphs import MinMaxScaler
from aiida_capthermo.ml.gnn.config import TARGET_UNITS, GnnHyperparameters
from aiida_capthermo.ml.gnn.data import Normalisation, build_graphs, target_values, to_pyg
from aiida_capthermo.ml.gnn.metrics import regression_metrics
from aiida_capthermo.ml.gnn.model import BandGapGNN

__all__ = ['NoTrainingDataError', 'NanLossError', 'WalltimeReached', 'split_indices', 'TrainResult', 'train_gnn',
           'LoadedModel', 'save_model', 'load_model', 'select_device', 'MODEL_FILE', 'MODEL_JSON']

MODEL_FILE = 'model.pt'
MODEL_JSON = 'model.json'
FORMAT_VERSION = 1


class NoTrainingDataError(ValueError):
    """No structure carries a finite label for the target (or too few for a split)."""

    error_kind = 'no_data'  # the summary's error kind (compute/summary.py) -> ERROR_NO_TRAINING_DATA


class NanLossError(FloatingPointError):
    """The training loss became NaN or infinite."""

    error_kind = 'nan_loss'


class WalltimeReached(RuntimeError):
    """The time limit was reached; a checkpoint was written to restart from."""

    error_kind = 'walltime'


def select_device(device: str = 'auto') -> torch.device:
    """``cuda`` when requested or (``auto``) available, else ``cpu``."""
    if device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('device "cuda" was requested but no CUDA device is available')
    return torch.device('cuda' if device == 'cuda' or (device == 'auto' and torch.cuda.is_available()) else 'cpu')


def split_indices(n: int, fractions=(0.7, 0.15, 0.15), seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random train/validation/test indices fixed by ``seed``; train and validation get at least one structure."""
    if n < 2:
        raise NoTrainingDataError(f'{n} labelled structure(s): a train/validation split needs at least 2')
    permutation = np.random.default_rng(seed).permutation(n)
    n_train = max(1, int(round(fractions[0] * n)))
    n_val = max(1, int(round(fractions[1] * n)))
    if n_train + n_val > n:
        n_train = n - n_val
    n_test = n - n_train - n_val if fractions[2] > 0 else 0
    n_train = n - n_val - n_test
    return (np.sort(permutation[:n_train]), np.sort(permutation[n_train:n_train + n_val]),
            np.sort(permutation[n_train + n_val:]))


@dataclasses.dataclass
class LoadedModel:
    """A model with everything needed to use it: weights, architecture, normalisation and metadata."""

    model: BandGapGNN
    normalisation: Normalisation
    metadata: dict

    @property
    def cutoff(self) -> float:
        return float(self.metadata['cutoff'])

    @property
    def target(self) -> str:
        return self.metadata['target']


def save_model(directory: str | pathlib.Path, loaded: LoadedModel) -> dict[str, pathlib.Path]:
    """Write ``model.pt`` (state_dict only) and ``model.json`` (architecture, hyper-parameters, normalisation)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu() for key, value in loaded.model.state_dict().items()}
    torch.save(state, directory / MODEL_FILE)
    metadata = dict(loaded.metadata, normalisation=loaded.normalisation.to_dict(), format_version=FORMAT_VERSION)
    (directory / MODEL_JSON).write_text(json.dumps(metadata, indent=2))
    return {MODEL_FILE: directory / MODEL_FILE, MODEL_JSON: directory / MODEL_JSON}


def load_model(directory: str | pathlib.Path, device: str | torch.device = 'cpu') -> LoadedModel:
    """Load a model written by :func:`save_model` (weights with ``weights_only=True``)."""
    directory = pathlib.Path(directory)
    for name in (MODEL_FILE, MODEL_JSON):
        if not (directory / name).is_file():
            raise FileNotFoundError(f'model directory {directory} has no {name}')
    metadata = json.loads((directory / MODEL_JSON).read_text())
    model = BandGapGNN(**metadata['architecture']).float()  # float32 whatever the process default (MACE: float64)
    model.load_state_dict(torch.load(directory / MODEL_FILE, map_location='cpu', weights_only=True))
    model.to(device).eval()
    normalisation = Normalisation.from_dict(metadata.pop('normalisation'))
    digest = hashlib.sha256((directory / MODEL_FILE).read_bytes()).hexdigest()
    metadata['sha256'] = digest
    return LoadedModel(model=model, normalisation=normalisation, metadata=metadata)


@dataclasses.dataclass
class TrainResult:
    """What a training run produced (physical units in ``metrics`` and ``parity``)."""

    loaded: LoadedModel
    metrics: dict
    parity: dict  # {split}_true, {split}_pred, {split}_index arrays
    curve: dict  # epoch, train_loss, val_loss, val_mae, seconds arrays
    device: str


def _predict_normalised(model, loader, device) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    predictions, indices = [], []
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(device)
            predictions.append(model(batch.x, batch.edge_index, batch.edge_weight, batch.batch).cpu().numpy())
            indices.append(batch.structure_id.cpu().numpy())
    if not predictions:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(predictions).astype(float), np.concatenate(indices)


def _architecture_from_parent(hp: GnnHyperparameters, parent: LoadedModel) -> GnnHyperparameters:
    """Hyper-parameters with architecture and cutoff from the parent; explicit conflicting values are an error."""
    architecture = {k: v for k, v in parent.metadata['architecture'].items() if k != 'in_channels'}
    fixed = {'cutoff': parent.cutoff, **architecture}
    conflicts = {key: (getattr(hp, key), value) for key, value in fixed.items()
                 if key in hp.model_fields_set and getattr(hp, key) != value}
    if conflicts:
        raise ValueError(f'fine-tuning keeps the parent architecture; conflicting hyper-parameters (given, parent): '
                         f'{conflicts}')
    if parent.target != hp.target:
        raise ValueError(f'the parent model was trained on {parent.target!r}, not {hp.target!r}')
    return hp.model_copy(update=fixed)


def train_gnn(labelled: LabelledSet, hyperparameters: GnnHyperparameters | dict, parent: LoadedModel | None = None,
              checkpoint_path: str | pathlib.Path | None = None, restart_from: str | pathlib.Path | None = None,
              time_limit: float | None = None, log=None) -> TrainResult:
    """Train (or, with ``parent``, fine-tune all weights of) the GNN on ``labelled``.

    Parameters
    ----------
    labelled : the structures; those without a finite target label are dropped (counted in the metrics).
    hyperparameters : :class:`GnnHyperparameters` or a dict of them.
    parent : model of the first stage; its weights initialise this one, its input normalisation is kept.
    checkpoint_path : where to write the restart checkpoint every ``checkpoint_every`` epochs and at a time limit.
    restart_from : a checkpoint of an interrupted run with the same data and hyper-parameters.
    time_limit : seconds; when the next epoch would likely exceed it, write the checkpoint, raise WalltimeReached.
    log : callable taking a string, for progress lines.

    Returns
    -------
    TrainResult with the best-validation model.
    """
    start_time = time.perf_counter()
    hp = GnnHyperparameters.model_validate(hyperparameters) if isinstance(hyperparameters, dict) else hyperparameters
    if parent is not None:
        hp = _architecture_from_parent(hp, parent)
    log = log or (lambda message: None)
    device = select_device(hp.device)
    torch.manual_seed(hp.seed)
    np.random.seed(hp.seed)

    targets_all = target_values(labelled, hp.target)
    if np.any(np.isinf(targets_all)):
        raise NoTrainingDataError(f'infinite {hp.target} labels in the dataset')
    labelled_index = np.flatnonzero(np.isfinite(targets_all))  # structures of the input set that are used
    if len(labelled_index) < 2:
        raise NoTrainingDataError(f'{len(labelled_index)} of {len(labelled)} structures carry a finite {hp.target} '
                                  'label; at least 2 are needed')
    subset = labelled.subset(labelled_index)
    targets = targets_all[labelled_index]
    graphs = build_graphs(subset, hp.cutoff)
    train_idx, val_idx, test_idx = split_indices(len(subset), hp.split, hp.seed)

    fitted = Normalisation.fit(graphs, targets, train_idx)
    if parent is None:
        normalisation, source = fitted, 'fitted on the training split'
    elif hp.fine_tune_target_normalisation == 'refit':
        normalisation = Normalisation(node=parent.normalisation.node, edge=parent.normalisation.edge,
                                      target=fitted.target)
        source = 'node and edge from the parent model, target refitted on the training split'
    elif hp.fine_tune_target_normalisation == 'union':
        target = MinMaxScaler(minimum=np.minimum(parent.normalisation.target.minimum, fitted.target.minimum),
                              maximum=np.maximum(parent.normalisation.target.maximum, fitted.target.maximum))
        normalisation = Normalisation(node=parent.normalisation.node, edge=parent.normalisation.edge, target=target)
        source = 'node and edge from the parent model, target range the union of the parent\'s and the training split\'s'
    else:
        normalisation, source = parent.normalisation, 'all from the parent model'

    data = to_pyg(graphs, normalisation, targets)
    from torch_geometric.loader import DataLoader

    generator = torch.Generator().manual_seed(hp.seed)
    train_loader = DataLoader([data[i] for i in train_idx], batch_size=hp.batch_size, shuffle=True, generator=generator)
    eval_loaders = {name: DataLoader([data[i] for i in idx], batch_size=max(hp.batch_size, 256), shuffle=False)
                    for name, idx in (('train', train_idx), ('validation', val_idx), ('test', test_idx))}

    model = BandGapGNN(**hp.architecture(in_channels=graphs[0].features.shape[1]))
    if parent is not None:
        model.load_state_dict(parent.model.state_dict())
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    loss_function = torch.nn.MSELoss()

    history = {'epoch': [], 'train_loss': [], 'val_loss': [], 'val_mae': [], 'seconds': []}
    best = {'val_loss': float('inf'), 'epoch': -1, 'state': None}
    first_epoch, since_best = 0, 0
    if restart_from is not None:
        checkpoint = torch.load(restart_from, map_location='cpu', weights_only=False)
        free = ('max_epochs', 'patience', 'checkpoint_every', 'device')  # may change on restart
        same_hp = ({k: v for k, v in checkpoint['hyperparameters'].items() if k not in free}
                   == {k: v for k, v in hp.model_dump(mode='json').items() if k not in free})
        if not same_hp or checkpoint['n_structures'] != len(subset):
            raise ValueError('the checkpoint belongs to a run with other hyper-parameters or data')
        model.load_state_dict(checkpoint['model'])
        optimiser.load_state_dict(checkpoint['optimiser'])
        history, best, since_best = checkpoint['history'], checkpoint['best'], checkpoint['since_best']
        first_epoch = checkpoint['epoch'] + 1
        generator.set_state(checkpoint['generator'])
        torch.set_rng_state(checkpoint['torch_rng'])
        log(f'restarted from {restart_from} at epoch {first_epoch}')

    def write_checkpoint(epoch: int) -> None:
        if checkpoint_path is None:
            return
        torch.save({'epoch': epoch, 'model': model.state_dict(), 'optimiser': optimiser.state_dict(),
                    'history': history, 'best': best, 'since_best': since_best, 'generator': generator.get_state(),
                    'torch_rng': torch.get_rng_state(), 'hyperparameters': hp.model_dump(mode='json'),
                    'n_structures': len(subset)}, checkpoint_path)

    stopped_early = False
    epoch_seconds = 0.0
    for epoch in range(first_epoch, hp.max_epochs):
        if time_limit is not None and time.perf_counter() - start_time + 1.5 * epoch_seconds > time_limit:
            write_checkpoint(epoch - 1)
            raise WalltimeReached(f'time limit of {time_limit:.0f} s reached before epoch {epoch}; '
                                  f'checkpoint written to {checkpoint_path}')
        epoch_start = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for batch in train_loader:
            batch = batch.to(device)
            optimiser.zero_grad()
            loss = loss_function(model(batch.x, batch.edge_index, batch.edge_weight, batch.batch), batch.y)
            if not torch.isfinite(loss):
                raise NanLossError(f'the training loss became {loss.item()} at epoch {epoch}')
            loss.backward()
            optimiser.step()
            total += loss.item() * batch.num_graphs
            count += batch.num_graphs
        val_pred, val_index = _predict_normalised(model, eval_loaders['validation'], device)
        val_true = normalisation.target_to_normalised(targets[val_index])
        val_loss = float(np.mean((val_pred - val_true) ** 2))
        if not np.isfinite(val_loss):
            raise NanLossError(f'the validation loss became {val_loss} at epoch {epoch}')
        val_mae = float(np.mean(np.abs(normalisation.target_to_physical(val_pred) - targets[val_index])))
        epoch_seconds = time.perf_counter() - epoch_start
        for key, value in zip(history, (epoch, total / count, val_loss, val_mae, epoch_seconds)):
            history[key].append(value)
        if val_loss < best['val_loss']:
            best = {'val_loss': val_loss, 'epoch': epoch,
                    'state': {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            since_best = 0
        else:
            since_best += 1
        if epoch % 10 == 0 or epoch == hp.max_epochs - 1:
            log(f'epoch {epoch:4d}  train {total / count:.5f}  val {val_loss:.5f}  val MAE {val_mae:.4f}')
        if (epoch + 1) % hp.checkpoint_every == 0:
            write_checkpoint(epoch)
        if hp.patience is not None and since_best >= hp.patience:
            stopped_early = True
            break

    model.load_state_dict(best['state'])
    parity, metrics = {}, {}
    for split, idx in (('train', train_idx), ('validation', val_idx), ('test', test_idx)):
        pred, order = _predict_normalised(model, eval_loaders[split], device)
        pred_physical = normalisation.target_to_physical(pred)
        parity[f'{split}_true'], parity[f'{split}_pred'] = targets[order], pred_physical
        parity[f'{split}_index'] = labelled_index[order]  # index into the input (concatenated) set
        metrics[split] = regression_metrics(targets[order], pred_physical)
    metrics.update(target=hp.target, units=TARGET_UNITS[hp.target], best_epoch=int(best['epoch']),
                   epochs_run=len(history['epoch']), stopped_early=stopped_early, best_val_loss=best['val_loss'],
                   n_structures_input=len(labelled), n_structures_labelled=len(labelled_index),
                   n_structures_dropped=len(labelled) - len(labelled_index))

    metadata = {
        'target': hp.target, 'units': TARGET_UNITS[hp.target], 'cutoff': hp.cutoff,
        'architecture': hp.architecture(in_channels=graphs[0].features.shape[1]),
        'hyperparameters': hp.model_dump(mode='json'),
        'node_features': ['atomic_number', 'atomic_mass', 'atomic_radius', 'electronegativity'],
        'edge_feature': 'min-max normalised distance (edge weight of GraphConv)',
        'normalisation_source': source,
        'split': {'seed': hp.seed, 'fractions': list(hp.split), 'n_train': len(train_idx), 'n_val': len(val_idx),
                  'n_test': len(test_idx)},
        'parent': None if parent is None else {'sha256': parent.metadata.get('sha256'),
                                               'uuid': parent.metadata.get('uuid'),
                                               'target': parent.target},
        'best_epoch': int(best['epoch']), 'torch_version': torch.__version__,
    }
    model.cpu().eval()
    return TrainResult(loaded=LoadedModel(model=model, normalisation=normalisation, metadata=metadata),
                       metrics=metrics, parity=parity, curve={k: np.asarray(v) for k, v in history.items()},
                       device=str(device))
