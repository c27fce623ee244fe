"""From a :class:`LabelledSet` to PyTorch Geometric graphs: targets, periodic graphs, min-max normalisation."""

from __future__ import annotations

import dataclasses

import numpy as np

from aiida_capthermo.core.dataset import LabelledSet
from aiida_capthermo.core.graphs import MinMaxScaler, node_features, radius_graphs_pbc

__all__ = ['target_values', 'RawGraph', 'build_graphs', 'Normalisation', 'to_pyg']


def target_values(labelled: LabelledSet, target: str) -> np.ndarray:
    """The training target of every structure, [n_structures], NaN where the label is missing.

    ``gap``/``vbm`` in eV, ``energy_per_atom`` = energy / n_atoms in eV/atom, ``hydrostatic_stress`` =
    trace(stress) / 3 in eV/Å^3 (ASE sign, positive = tensile).
    """
    if target in ('gap', 'vbm'):
        return np.asarray(labelled[target], dtype=float).copy()
    if target == 'energy_per_atom':
        return labelled.energy / labelled.n_atoms
    if target == 'hydrostatic_stress':
        return labelled.stress[:, :3].mean(axis=1)
    raise ValueError(f'unknown target {target!r}')


@dataclasses.dataclass
class RawGraph:
    """A structure's graph before normalisation."""

    features: np.ndarray  # [n_atoms, 4] raw node features
    edge_index: np.ndarray  # [2, n_edges]
    distances: np.ndarray  # [n_edges] Å
    numbers: np.ndarray  # [n_atoms]


def build_graphs(labelled: LabelledSet, cutoff: float) -> list[RawGraph]:
    """Periodic radius graph and raw node features of every structure of the set."""
    graphs = []
    offsets = labelled.offsets
    table_numbers = labelled.numbers
    all_features = node_features(table_numbers)  # [n_atoms_total, 4], one table lookup for the whole set
    periodic = radius_graphs_pbc([labelled.positions[offsets[i]:offsets[i + 1]] for i in range(len(labelled))],
                                 labelled.cells, cutoff)
    for index, graph in enumerate(periodic):
        start, stop = offsets[index], offsets[index + 1]
        graphs.append(RawGraph(features=all_features[start:stop], edge_index=graph.edge_index,
                               distances=graph.distances, numbers=labelled.numbers[start:stop]))
    return graphs


@dataclasses.dataclass
class Normalisation:
    """Min-max constants of the node features, the edge distances and the target; saved with the model."""

    node: MinMaxScaler
    edge: MinMaxScaler
    target: MinMaxScaler

    @classmethod
    def fit(cls, graphs: list[RawGraph], targets: np.ndarray, indices: np.ndarray) -> Normalisation:
        """Fit all three on the structures at ``indices`` (the training split)."""
        return cls(node=MinMaxScaler.fit(np.concatenate([graphs[i].features for i in indices])),
                   edge=MinMaxScaler.fit(np.concatenate([graphs[i].distances for i in indices])[:, None]),
                   target=MinMaxScaler.fit(np.asarray(targets)[indices][:, None]))

    def to_dict(self) -> dict:
        return {'node': self.node.to_dict(), 'edge': self.edge.to_dict(), 'target': self.target.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Normalisation:
        return cls(**{key: MinMaxScaler.from_dict(data[key]) for key in ('node', 'edge', 'target')})

    def target_to_physical(self, values: np.ndarray) -> np.ndarray:
        return self.target.inverse(np.asarray(values, dtype=float)[:, None])[:, 0]

    def target_to_normalised(self, values: np.ndarray) -> np.ndarray:
        return self.target.transform(np.asarray(values, dtype=float)[:, None])[:, 0]


def to_pyg(graphs: list[RawGraph], normalisation: Normalisation, targets: np.ndarray | None = None) -> list:
    """Normalised ``torch_geometric.data.Data`` objects.

    Each has ``x``, ``edge_index``, ``edge_weight``, ``y`` (when ``targets`` are given) and ``structure_id``.
    """
    import torch
    from torch_geometric.data import Data

    data = []
    normalised_targets = None if targets is None else normalisation.target_to_normalised(targets)
    for index, graph in enumerate(graphs):
        item = Data(x=torch.tensor(normalisation.node.transform(graph.features), dtype=torch.float32),
                    edge_index=torch.as_tensor(graph.edge_index, dtype=torch.long),
                    edge_weight=torch.tensor(normalisation.edge.transform(graph.distances[:, None])[:, 0],
                                             dtype=torch.float32),
                    structure_id=torch.tensor([index]))
        if normalised_targets is not None:
            item.y = torch.tensor([normalised_targets[index]], dtype=torch.float32)
        data.append(item)
    return data
