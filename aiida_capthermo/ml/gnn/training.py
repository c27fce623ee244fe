"""Training of the band-gap GNN: seeded split, Adam + MSE on min-max targets, best-validation selection,
early stopping, checkpoints for restart, two-stage fine-tuning from a parent model, saving and loading.

Normalisation across the two stages: a fine-tuned model keeps its parent's node-feature and edge-distance
constants (the learned filters keep their meaning) and, by default, widens the target min/max to the union of
the parent's range and the new (high-fidelity) training split's, so that the sigmoid output covers both: a refit
on a few high-fidelity gaps of displaced structures alone would clip every prediction to their range (an
undisplaced structure's larger gap included); the choice is recorded in ``model.json`` (``normalisation_source``).

Layout (as MACE's training loop): :func:`train_gnn` prepares the data, normalisation, loaders and
:class:`TrainingState`, then calls :func:`train` (the epoch loop: checkpoints, early stopping, time limit), which
calls :func:`train_one_epoch` and :func:`evaluate` (validation loss and MAE) once per epoch.
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
from aiida_capthermo.core.domain import merge_domains, training_domain
from aiida_capthermo.core.graphs import MinMaxScaler
from aiida_capthermo.ml.gnn.config import TARGET_UNITS, GnnHyperparameters
from aiida_capthermo.ml.gnn.data import Normalisation, RawGraph, build_graphs, target_values, to_pyg
from aiida_capthermo.ml.gnn.metrics import regression_metrics
from aiida_capthermo.ml.gnn.model import BandGapGNN

__all__ = ['NoTrainingDataError', 'NanLossError', 'WalltimeReached', 'split_indices', 'TrainResult', 'train_gnn',
           'LoadedModel', 'save_model', 'load_model', 'select_device', 'MODEL_FILE', 'MODEL_JSON', 'TrainingState',
           'train', 'train_one_epoch', 'evaluate']

MODEL_FILE = 'model.pt'
MODEL_JSON = 'model.json'
FORMAT_VERSION = 1


class NoTrainingDataError(ValueError):
    """No structure carries a finite label for the target (or too few for a split)."""

    error_kind = 'no_data'  # the summary's error kind (compute/summary.py) -> ERROR_NO_TRAINING_DATA


class NanLossError(FloatingPointError):
    """The training loss became NaN or infinite."""

    error_kind = 'nan_loss'


class WalltimeReached(RuntimeError):  # noqa: N818 -- public name; the run stops, a restart continues it
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


SPLITS = ('train', 'validation', 'test')
#: Hyper-parameters that may change on restart; the others must match the checkpoint's.
RESTART_FREE = ('max_epochs', 'patience', 'checkpoint_every', 'device')
#: Raw node features of :func:`aiida_capthermo.core.graphs.node_features`, in column order.
NODE_FEATURES = ('atomic_number', 'atomic_mass', 'atomic_radius', 'electronegativity')


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


def _resolve_hyperparameters(hyperparameters: GnnHyperparameters | dict,
                             parent: LoadedModel | None = None) -> GnnHyperparameters:
    """Validated hyper-parameters; with ``parent``, its architecture and cutoff (Å) replace the given ones."""
    hp = GnnHyperparameters.model_validate(hyperparameters) if isinstance(hyperparameters, dict) else hyperparameters
    return hp if parent is None else _architecture_from_parent(hp, parent)


@dataclasses.dataclass
class _PreparedData:
    """The structures of a run that carry a finite label, their raw graphs and the seeded split."""

    labelled_index: np.ndarray  # [n_used] index of each used structure in the input set
    targets: np.ndarray  # [n_used] target in its physical units (TARGET_UNITS)
    graphs: list[RawGraph]  # [n_used] periodic radius graphs before normalisation
    split: dict[str, np.ndarray]  # 'train'/'validation'/'test' -> sorted indices into the used structures

    @property
    def in_channels(self) -> int:
        """Number of raw node features."""
        return self.graphs[0].features.shape[1]


def _prepare_data(labelled: LabelledSet, hp: GnnHyperparameters) -> _PreparedData:
    """Drop the structures without a finite ``hp.target`` label, build their graphs (``hp.cutoff`` Å), split them.

    Raises
    ------
    NoTrainingDataError
        Infinite labels, fewer than 2 finite ones, all of them equal (nothing to learn), or negative band gaps.
    """
    targets_all = target_values(labelled, hp.target)
    if np.any(np.isinf(targets_all)):
        raise NoTrainingDataError(f'infinite {hp.target} labels in the dataset')
    labelled_index = np.flatnonzero(np.isfinite(targets_all))
    if len(labelled_index) < 2:
        raise NoTrainingDataError(f'{len(labelled_index)} of {len(labelled)} structures carry a finite {hp.target} '
                                  'label; at least 2 are needed')
    finite = targets_all[labelled_index]
    if np.ptp(finite) == 0:
        raise NoTrainingDataError(f'all {len(finite)} {hp.target} labels are {finite[0]:g}: a target with zero '
                                  'variance cannot be learned (check the labelling)')
    if hp.target == 'gap' and np.any(finite < 0):
        raise NoTrainingDataError(f'{int(np.sum(finite < 0))} band-gap labels are negative (down to '
                                  f'{finite.min():.3g} eV): a gap is >= 0; check the labelling')
    subset = labelled.subset(labelled_index)
    graphs = build_graphs(subset, hp.cutoff)
    split = dict(zip(SPLITS, split_indices(len(subset), hp.split, hp.seed)))
    return _PreparedData(labelled_index=labelled_index, targets=targets_all[labelled_index], graphs=graphs,
                         split=split)


def _fit_normalisation(prepared: _PreparedData, hp: GnnHyperparameters,
                       parent: LoadedModel | None = None) -> tuple[Normalisation, str]:
    """The min-max constants of the run and a sentence saying where they come from (``normalisation_source``).

    Without a parent all are fitted on the training split; a fine-tuned model keeps the parent's node and edge
    constants and treats the target as ``hp.fine_tune_target_normalisation`` says (module docstring).
    """
    fitted = Normalisation.fit(prepared.graphs, prepared.targets, prepared.split['train'])
    if parent is None:
        return fitted, 'fitted on the training split'
    node, edge = parent.normalisation.node, parent.normalisation.edge
    if hp.fine_tune_target_normalisation == 'refit':
        return (Normalisation(node=node, edge=edge, target=fitted.target),
                'node and edge from the parent model, target refitted on the training split')
    if hp.fine_tune_target_normalisation == 'union':
        target = MinMaxScaler(minimum=np.minimum(parent.normalisation.target.minimum, fitted.target.minimum),
                              maximum=np.maximum(parent.normalisation.target.maximum, fitted.target.maximum))
        return (Normalisation(node=node, edge=edge, target=target),
                "node and edge from the parent model, target range the union of the parent's and the training "
                "split's")
    return parent.normalisation, 'all from the parent model'


def _build_loaders(data: list, split: dict[str, np.ndarray],
                   hp: GnnHyperparameters) -> tuple[object, dict, torch.Generator]:
    """The shuffled training loader, one ordered loader per split, and the generator of the batch order.

    Parameters
    ----------
    data : normalised ``torch_geometric.data.Data`` objects of the used structures (:func:`to_pyg`).
    split : split name -> indices into ``data``.
    hp : ``batch_size`` (training; evaluation uses at least 256) and ``seed`` (batch order).
    """
    from torch_geometric.loader import DataLoader

    generator = torch.Generator().manual_seed(hp.seed)
    train_loader = DataLoader([data[i] for i in split['train']], batch_size=hp.batch_size, shuffle=True,
                              generator=generator)
    eval_loaders = {name: DataLoader([data[i] for i in idx], batch_size=max(hp.batch_size, 256), shuffle=False)
                    for name, idx in split.items()}
    return train_loader, eval_loaders, generator


def _empty_history() -> dict[str, list]:
    return {'epoch': [], 'train_loss': [], 'val_loss': [], 'val_mae': [], 'seconds': []}


def _no_best() -> dict:
    return {'val_loss': float('inf'), 'epoch': -1, 'state': None}


@dataclasses.dataclass
class TrainingState:
    """What a restart checkpoint holds: weights, optimiser, batch-order generator, history and the best model so far.

    ``history`` per epoch: ``train_loss`` and ``val_loss`` (MSE of the min-max normalised target), ``val_mae``
    (target units), ``seconds`` (wall time of the epoch). ``best``: the lowest ``val_loss``, its epoch and weights.
    """

    hp: GnnHyperparameters
    model: BandGapGNN
    optimiser: torch.optim.Optimizer
    generator: torch.Generator
    n_structures: int
    history: dict = dataclasses.field(default_factory=_empty_history)
    best: dict = dataclasses.field(default_factory=_no_best)
    since_best: int = 0
    first_epoch: int = 0

    @classmethod
    def initial(cls, hp: GnnHyperparameters, in_channels: int, device: torch.device, generator: torch.Generator,
                n_structures: int, parent: LoadedModel | None = None) -> TrainingState:
        """A new model (seeded by the global torch RNG, or the parent's weights) on ``device`` with its Adam."""
        model = BandGapGNN(**hp.architecture(in_channels=in_channels))
        if parent is not None:
            model.load_state_dict(parent.model.state_dict())
        model.to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        return cls(hp=hp, model=model, optimiser=optimiser, generator=generator, n_structures=n_structures)

    def restore(self, path: str | pathlib.Path) -> None:
        """Continue from the checkpoint at ``path``; it must come from a run with the same data and
        hyper-parameters (except :data:`RESTART_FREE`), else ``ValueError``."""
        checkpoint = torch.load(path, map_location='cpu', weights_only=False)
        same_hp = ({k: v for k, v in checkpoint['hyperparameters'].items() if k not in RESTART_FREE}
                   == {k: v for k, v in self.hp.model_dump(mode='json').items() if k not in RESTART_FREE})
        if not same_hp or checkpoint['n_structures'] != self.n_structures:
            raise ValueError('the checkpoint belongs to a run with other hyper-parameters or data')
        self.model.load_state_dict(checkpoint['model'])
        self.optimiser.load_state_dict(checkpoint['optimiser'])
        self.history, self.best, self.since_best = checkpoint['history'], checkpoint['best'], checkpoint['since_best']
        self.first_epoch = checkpoint['epoch'] + 1
        self.generator.set_state(checkpoint['generator'])
        torch.set_rng_state(checkpoint['torch_rng'])

    def save(self, path: str | pathlib.Path | None, epoch: int) -> None:
        """Write the checkpoint after ``epoch`` (with the global torch RNG state) to ``path``; nothing when None."""
        if path is None:
            return
        torch.save({'epoch': epoch, 'model': self.model.state_dict(), 'optimiser': self.optimiser.state_dict(),
                    'history': self.history, 'best': self.best, 'since_best': self.since_best,
                    'generator': self.generator.get_state(), 'torch_rng': torch.get_rng_state(),
                    'hyperparameters': self.hp.model_dump(mode='json'), 'n_structures': self.n_structures}, path)

    def record(self, epoch: int, train_loss: float, val_loss: float, val_mae: float, seconds: float) -> None:
        """Append an epoch to the history; keep a copy of the weights when the validation loss improved."""
        for key, value in zip(self.history, (epoch, train_loss, val_loss, val_mae, seconds)):
            self.history[key].append(value)
        if val_loss < self.best['val_loss']:
            self.best = {'val_loss': val_loss, 'epoch': epoch,
                         'state': {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
            self.since_best = 0
        else:
            self.since_best += 1


def _predict_normalised(model, loader, device) -> tuple[np.ndarray, np.ndarray]:
    """Normalised predictions of every structure of ``loader`` and their ``structure_id`` (eval mode)."""
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


def train_one_epoch(model: BandGapGNN, loader, optimiser: torch.optim.Optimizer, loss_function, device: torch.device,
                    epoch: int) -> float:
    """One pass over the shuffled training loader (train mode); returns the mean loss per structure.

    Raises
    ------
    NanLossError
        A batch loss is NaN or infinite.
    """
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        batch = batch.to(device)
        optimiser.zero_grad()
        loss = loss_function(model(batch.x, batch.edge_index, batch.edge_weight, batch.batch), batch.y)
        if not torch.isfinite(loss):
            raise NanLossError(f'the training loss became {loss.item()} at epoch {epoch}')
        loss.backward()
        optimiser.step()
        total += loss.item() * batch.num_graphs
        count += batch.num_graphs
    return total / count


def evaluate(model: BandGapGNN, loader, normalisation: Normalisation, targets: np.ndarray,
             device: torch.device) -> tuple[float, float]:
    """Loss and error of the model on the structures of ``loader`` (eval mode).

    ``targets`` are in the target's units, indexed by the ``structure_id`` of the loader's graphs.

    Returns
    -------
    loss : MSE of the min-max normalised target (dimensionless).
    mae : mean absolute error in the target's units (eV for gaps).
    """
    predicted, index = _predict_normalised(model, loader, device)
    true = targets[index]
    loss = float(np.mean((predicted - normalisation.target_to_normalised(true)) ** 2))
    mae = float(np.mean(np.abs(normalisation.target_to_physical(predicted) - true)))
    return loss, mae


def train(state: TrainingState, train_loader, validation_loader, normalisation: Normalisation, targets: np.ndarray,
          device: torch.device, *, checkpoint_path: str | pathlib.Path | None = None, time_limit: float | None = None,
          start_time: float | None = None, log=None) -> bool:
    """The epoch loop from ``state.first_epoch`` to ``hp.max_epochs``, updating ``state`` in place.

    Writes the checkpoint every ``hp.checkpoint_every`` epochs; stops after ``hp.patience`` epochs without a better
    validation loss. ``time_limit`` (s, counted from ``start_time``, a ``time.perf_counter()`` value): when the next
    epoch would likely exceed it, write the checkpoint and raise :class:`WalltimeReached`. Returns whether it
    stopped early.
    """
    hp, log = state.hp, log or (lambda message: None)
    start_time = time.perf_counter() if start_time is None else start_time
    loss_function = torch.nn.MSELoss()
    epoch_seconds = 0.0
    for epoch in range(state.first_epoch, hp.max_epochs):
        if time_limit is not None and time.perf_counter() - start_time + 1.5 * epoch_seconds > time_limit:
            state.save(checkpoint_path, epoch - 1)
            raise WalltimeReached(f'time limit of {time_limit:.0f} s reached before epoch {epoch}; '
                                  f'checkpoint written to {checkpoint_path}')
        epoch_start = time.perf_counter()
        train_loss = train_one_epoch(state.model, train_loader, state.optimiser, loss_function, device, epoch)
        val_loss, val_mae = evaluate(state.model, validation_loader, normalisation, targets, device)
        if not np.isfinite(val_loss):
            raise NanLossError(f'the validation loss became {val_loss} at epoch {epoch}')
        epoch_seconds = time.perf_counter() - epoch_start
        state.record(epoch, train_loss, val_loss, val_mae, epoch_seconds)
        if epoch % 10 == 0 or epoch == hp.max_epochs - 1:
            log(f'epoch {epoch:4d}  train {train_loss:.5f}  val {val_loss:.5f}  val MAE {val_mae:.4f}')
        if (epoch + 1) % hp.checkpoint_every == 0:
            state.save(checkpoint_path, epoch)
        if hp.patience is not None and state.since_best >= hp.patience:
            return True
    return False


def _split_results(model: BandGapGNN, eval_loaders: dict, normalisation: Normalisation, prepared: _PreparedData,
                   device: torch.device) -> tuple[dict, dict]:
    """Parity arrays and regression metrics (target units) of every split.

    Returns
    -------
    parity : ``{split}_true``, ``{split}_pred`` (target units) and ``{split}_index`` (into the input set).
    metrics : split -> :func:`regression_metrics`.
    """
    parity, metrics = {}, {}
    for split in SPLITS:
        predicted, order = _predict_normalised(model, eval_loaders[split], device)
        predicted_physical = normalisation.target_to_physical(predicted)
        parity[f'{split}_true'], parity[f'{split}_pred'] = prepared.targets[order], predicted_physical
        parity[f'{split}_index'] = prepared.labelled_index[order]
        metrics[split] = regression_metrics(prepared.targets[order], predicted_physical)
    return parity, metrics


def _model_metadata(hp: GnnHyperparameters, prepared: _PreparedData, source: str, parent: LoadedModel | None,
                    best_epoch: int, domain: dict) -> dict:
    """``model.json`` without the normalisation (added by :func:`save_model`)."""
    return {
        'domain': domain,
        'target': hp.target, 'units': TARGET_UNITS[hp.target], 'cutoff': hp.cutoff,
        'architecture': hp.architecture(in_channels=prepared.in_channels),
        'hyperparameters': hp.model_dump(mode='json'),
        'node_features': list(NODE_FEATURES),
        'edge_feature': 'min-max normalised distance (edge weight of GraphConv)',
        'normalisation_source': source,
        'split': {'seed': hp.seed, 'fractions': list(hp.split), 'n_train': len(prepared.split['train']),
                  'n_val': len(prepared.split['validation']), 'n_test': len(prepared.split['test'])},
        'parent': None if parent is None else {'sha256': parent.metadata.get('sha256'),
                                               'uuid': parent.metadata.get('uuid'),
                                               'target': parent.target},
        'best_epoch': best_epoch, 'torch_version': torch.__version__,
    }


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
    hp = _resolve_hyperparameters(hyperparameters, parent)
    log = log or (lambda message: None)
    device = select_device(hp.device)
    torch.manual_seed(hp.seed)
    np.random.seed(hp.seed)

    prepared = _prepare_data(labelled, hp)
    normalisation, source = _fit_normalisation(prepared, hp, parent)
    data = to_pyg(prepared.graphs, normalisation, prepared.targets)
    train_loader, eval_loaders, generator = _build_loaders(data, prepared.split, hp)
    state = TrainingState.initial(hp, prepared.in_channels, device, generator, len(prepared.targets), parent)
    if restart_from is not None:
        state.restore(restart_from)
        log(f'restarted from {restart_from} at epoch {state.first_epoch}')
    stopped_early = train(state, train_loader, eval_loaders['validation'], normalisation, prepared.targets, device,
                          checkpoint_path=checkpoint_path, time_limit=time_limit, start_time=start_time, log=log)

    model = state.model
    model.load_state_dict(state.best['state'])
    parity, metrics = _split_results(model, eval_loaders, normalisation, prepared, device)
    n_used = len(prepared.labelled_index)
    metrics.update(target=hp.target, units=TARGET_UNITS[hp.target], best_epoch=int(state.best['epoch']),
                   epochs_run=len(state.history['epoch']), stopped_early=stopped_early,
                   best_val_loss=state.best['val_loss'], n_structures_input=len(labelled),
                   n_structures_labelled=n_used, n_structures_dropped=len(labelled) - n_used)
    used = labelled.subset(prepared.labelled_index)
    domain = training_domain([used.atoms(i, with_labels=False) for i in range(len(used))], prepared.targets)
    if parent is not None and parent.metadata.get('domain'):  # fine-tuned: it has seen the parent's structures too
        domain = merge_domains(parent.metadata['domain'], domain)
    metadata = _model_metadata(hp, prepared, source, parent, int(state.best['epoch']), domain)
    model.cpu().eval()
    return TrainResult(loaded=LoadedModel(model=model, normalisation=normalisation, metadata=metadata),
                       metrics=metrics, parity=parity, curve={k: np.asarray(v) for k, v in state.history.items()},
                       device=str(device))
