"""The papers' band-gap GNN: GraphConv layers with distance edge weights, batch norm, global pooling, MLP head."""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import BatchNorm, GraphConv, global_max_pool, global_mean_pool

__all__ = ['BandGapGNN']


class BandGapGNN(nn.Module):
    """GraphConv(in -> h, edge weight = normalised distance) -> BN -> ReLU -> [GraphConv(h -> h) -> BN -> ReLU] x
    (conv_layers - 1) -> global max/mean pool -> dropout -> Linear(h -> head) -> ReLU -> Linear(head -> 1) -> sigmoid.

    Defaults reproduce the papers' model (4 -> 64, 2 conv layers, max pool, dropout 0.4, head 16, sigmoid).
    The output is the min-max normalised target, shape [n_graphs].
    """

    def __init__(self, in_channels: int = 4, hidden_channels: int = 64, conv_layers: int = 2, head_channels: int = 16,
                 dropout: float = 0.4, pooling: str = 'max', sigmoid_output: bool = True) -> None:
        super().__init__()
        if pooling not in ('max', 'mean'):
            raise ValueError(f'pooling must be max or mean, got {pooling!r}')
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for layer in range(conv_layers):
            self.convs.append(GraphConv(in_channels if layer == 0 else hidden_channels, hidden_channels))
            self.norms.append(BatchNorm(hidden_channels))
        self.pool = global_max_pool if pooling == 'max' else global_mean_pool
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(hidden_channels, head_channels), nn.ReLU(), nn.Linear(head_channels, 1))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None = None,
                batch: torch.Tensor | None = None) -> torch.Tensor:
        if batch is None:
            batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for conv, norm in zip(self.convs, self.norms):
            x = torch.relu(norm(conv(x, edge_index, edge_weight)))
        out = self.head(self.dropout(self.pool(x, batch))).squeeze(-1)
        return torch.sigmoid(out) if self.sigmoid_output else out
