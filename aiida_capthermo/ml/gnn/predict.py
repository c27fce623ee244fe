"""Batched prediction with a trained GNN (physical units)."""

from __future__ import annotations

import numpy as np
import torch

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.ml.gnn.data import build_graphs, to_pyg
from aiida_capthermo.ml.gnn.training import LoadedModel

__all__ = ['predict']


def predict(loaded: LoadedModel, labelled: LabelledSet, batch_size: int = 256,
            device: str | torch.device = 'cpu') -> np.ndarray:
    """Predict the model's target for every structure of ``labelled``, [n_structures], in the target's units.

    Graphs use the model's cutoff and normalisation constants; structures are evaluated ``batch_size`` at a time.
    """
    from torch_geometric.loader import DataLoader

    if len(labelled) == 0:
        return np.zeros(0)
    if batch_size < 1:
        raise ValueError(f'batch_size must be positive, got {batch_size}')
    device = torch.device(device)
    model = loaded.model.to(device).eval()
    data = to_pyg(build_graphs(labelled, loaded.cutoff), loaded.normalisation)
    output = np.empty(len(labelled))
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            batch = batch.to(device)
            values = model(batch.x, batch.edge_index, batch.edge_weight, batch.batch).cpu().numpy()
            output[batch.structure_id.cpu().numpy()] = loaded.normalisation.target_to_physical(values)
    return output
