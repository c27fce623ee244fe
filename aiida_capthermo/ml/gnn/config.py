"""Validated GNN hyper-parameters of ``capthermo-gnn`` (pydantic, unknown keys rejected). No torch import here: the
AiiDA layer validates with it; the settings of the other compute tasks live in :mod:`aiida_capthermo.ml.settings`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ['GnnHyperparameters', 'TARGETS', 'TARGET_UNITS']

#: Trainable targets (second paper, Table 1) and their units.
TARGET_UNITS = {'gap': 'eV', 'energy_per_atom': 'eV/atom', 'vbm': 'eV', 'hydrostatic_stress': 'eV/Angstrom^3'}
TARGETS = tuple(TARGET_UNITS)


class GnnHyperparameters(BaseModel):
    """Hyper-parameters of one training run; defaults are the papers' architecture.

    The second paper's search space: ``learning_rate`` 1e-2..1e-6, ``hidden_channels`` 32/64/128/256,
    ``dropout`` 0/0.2/0.4/0.6, six architectures = ``conv_layers`` 2..4 x ``pooling`` max/mean.
    """

    model_config = ConfigDict(extra='forbid')

    target: Literal['gap', 'energy_per_atom', 'vbm', 'hydrostatic_stress'] = Field(
        'gap', description='Label to learn: band gap (eV), energy per atom (eV/atom), VBM (eV) or '
                           'hydrostatic stress = trace(stress)/3 (eV/Å^3, ASE sign).')
    cutoff: float = Field(5.5, gt=0, le=12, description='Radius-graph cutoff in Å.')
    conv_layers: int = Field(2, ge=1, le=6, description='Number of GraphConv layers (papers: 2-4).')
    hidden_channels: int = Field(64, ge=1, le=1024, description='Width of the GraphConv layers.')
    head_channels: int = Field(16, ge=1, le=1024, description='Width of the hidden Linear layer of the head.')
    dropout: float = Field(0.4, ge=0, lt=1, description='Dropout probability after pooling.')
    pooling: Literal['max', 'mean'] = Field('max', description='Global pooling of node embeddings.')
    sigmoid_output: bool = Field(True, description='Sigmoid on the output (targets are min-max normalised).')
    learning_rate: float = Field(1e-3, gt=0, le=1, description='Adam learning rate.')
    weight_decay: float = Field(0.0, ge=0, description='Adam weight decay.')
    batch_size: int = Field(32, ge=1, description='Graphs per mini-batch.')
    max_epochs: int = Field(200, ge=1, description='Maximum number of epochs.')
    patience: int | None = Field(50, ge=1, description='Stop after this many epochs without a better '
                                                        'validation loss; None trains all epochs.')
    split: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description='Train/validation/test fractions.')
    seed: int = Field(0, description='Seed of the split, the initial weights and the batch order.')
    device: Literal['auto', 'cpu', 'cuda'] = Field('auto', description='auto = CUDA when present, else CPU.')
    checkpoint_every: int = Field(10, ge=1, description='Write checkpoint.pt every this many epochs.')
    fine_tune_target_normalisation: Literal['union', 'refit', 'parent'] = Field(
        'union', description='Second stage target min/max: the union of the parent\'s range and the new training '
                             'split\'s (default: the sigmoid covers both, so a structure outside the few '
                             'high-fidelity gaps, e.g. an undisplaced one, is not clipped to their range), refitted '
                             'on the new training split alone, or the parent model\'s.')

    @field_validator('split')
    @classmethod
    def _split_sums_to_one(cls, value):
        if any(v < 0 for v in value) or abs(sum(value) - 1) > 1e-6 or value[0] <= 0 or value[1] <= 0:
            raise ValueError('split fractions must be non-negative, train and validation > 0, and sum to 1; '
                             f'got {value}')
        return value

    def architecture(self, in_channels: int = 4) -> dict:
        """The arguments of :class:`~aiida_capthermo.ml.gnn.model.BandGapGNN`."""
        return {'in_channels': in_channels, 'hidden_channels': self.hidden_channels, 'conv_layers': self.conv_layers,
                'head_channels': self.head_channels, 'dropout': self.dropout, 'pooling': self.pooling,
                'sigmoid_output': self.sigmoid_output}
