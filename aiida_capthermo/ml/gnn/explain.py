"""Explainability: per-edge importance from torch_geometric's explain module (GNNExplainer), aggregated per
bond type (``Ag-S``, ``Ag-I``, ...) over a set of structures."""

from __future__ import annotations

import numpy as np
import torch

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.core.graphs import bond_types
from aiida_capthermo.ml.gnn.data import build_graphs, to_pyg
from aiida_capthermo.ml.gnn.training import LoadedModel

__all__ = ['explain_bond_types']


def explain_bond_types(loaded: LoadedModel, labelled: LabelledSet, epochs: int = 100, learning_rate: float = 0.01,
                       seed: int = 0) -> dict:
    """Edge-mask importance of every edge (GNNExplainer, graph-level regression), aggregated per bond type.

    For every structure the mean mask value of each bond type is taken; the result holds, per bond type,
    the ``mean`` and ``std`` of these over the structures, the number of edges ``count`` and the ``share``
    of the summed importance (fraction, summing to 1 over bond types, averaged over structures).
    """
    from torch_geometric.explain import Explainer, GNNExplainer

    torch.manual_seed(seed)
    model = loaded.model.cpu().eval()
    explainer = Explainer(model=model, algorithm=GNNExplainer(epochs=epochs, lr=learning_rate),
                          explanation_type='model', edge_mask_type='object', node_mask_type=None,
                          model_config={'mode': 'regression', 'task_level': 'graph', 'return_type': 'raw'})
    graphs = build_graphs(labelled, loaded.cutoff)
    per_structure_mean: dict[str, list[float]] = {}
    shares: list[dict[str, float]] = []  # per structure: bond type -> fraction of the summed importance
    counts: dict[str, int] = {}
    for graph, data in zip(graphs, to_pyg(graphs, loaded.normalisation)):
        batch = torch.zeros(data.num_nodes, dtype=torch.long)
        explanation = explainer(data.x, data.edge_index, edge_weight=data.edge_weight, batch=batch)
        mask = explanation.edge_mask.detach().numpy().astype(float)  # [n_edges]
        types = bond_types(graph.numbers, graph.edge_index)  # [n_edges]
        total = mask.sum()
        shares.append({})
        for bond in np.unique(types):
            selected = mask[types == bond]
            per_structure_mean.setdefault(bond, []).append(float(selected.mean()))
            shares[-1][bond] = float(selected.sum() / total) if total > 0 else 0.0
            counts[bond] = counts.get(bond, 0) + int(selected.size)
    # a bond type absent from a structure contributes a share of 0 there, so the shares sum to 1
    return {bond: {'mean': float(np.mean(values)), 'std': float(np.std(values)), 'count': counts[bond],
                   'share': float(np.mean([share.get(bond, 0.0) for share in shares])), 'n_structures': len(values)}
            for bond, values in sorted(per_structure_mean.items())}
