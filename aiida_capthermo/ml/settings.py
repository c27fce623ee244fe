"""What every compute-side task settings model shares: unknown keys rejected, where and in which precision the model
runs, and how many CPU threads torch may use."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ['ModelRunSettings']


class ModelRunSettings(BaseModel):
    """Base of the settings of the ``capthermo-mlip`` tasks (unknown keys are rejected)."""

    model_config = ConfigDict(extra='forbid')

    device: Literal['auto', 'cpu', 'cuda'] = Field('auto', description='auto: CUDA when present, else the CPU.')
    dtype: Literal['float64', 'float32'] = Field('float64', description='Precision of the model.')
    threads: int | None = Field(None, ge=1, description='CPU threads of torch; default: torch decides.')

    def apply_threads(self) -> None:
        """Set torch's CPU thread count when ``threads`` is given (imports torch only then)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
