"""Batched prediction with a trained GNN (physical units)."""

from __future__ import annotations

import numpy as np
import torch

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.ml.gnn.data import build_graphs, to_pyg
from aiida_capthermo.ml.gnn.training import LoadedModel

__all__ = ['predict', 'predict_ensemble']


def predict(loaded: LoadedModel, labelled: LabelledSet, batch_size: int = 256,
            device: str | torch.device = 'cpu') -> np.ndarray:
    """Predict the model's target for every structure of ``labelled``, [n_structures], in the target's units.

    Graphs use the model's cutoff and normalisation constants; structures are evaluated ``batch_size`` at a time.
    """
    return predict_ensemble([loaded], labelled, batch_size, device)[0]


def predict_ensemble(models: list[LoadedModel], labelled: LabelledSet, batch_size: int = 256,
                     device: str | torch.device = 'cpu') -> np.ndarray:
    """Every model's prediction for every structure of ``labelled``, [n_models, n_structures] in the target's units.

    The periodic graphs (the neighbour search, the costly part) are built once per distinct cutoff and shared by the
    models; each model then applies its own normalisation.
    """
    from torch_geometric.loader import DataLoader

    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size}')
    output = np.empty((len(models), len(labelled)))
    if len(labelled) == 0:
        return output
    device = torch.device(device)
    graphs = {}
    for index, loaded in enumerate(models):
        if loaded.cutoff not in graphs:
            graphs[loaded.cutoff] = build_graphs(labelled, loaded.cutoff)
        model = loaded.model.to(device).eval()
        data = to_pyg(graphs[loaded.cutoff], loaded.normalisation)
        with torch.no_grad():
            for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
                batch = batch.to(device)
                values = model(batch.x, batch.edge_index, batch.edge_weight, batch.batch).cpu().numpy()
                output[index, batch.structure_id.cpu().numpy()] = loaded.normalisation.target_to_physical(values)
    return output
