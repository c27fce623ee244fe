"""What every compute-side task settings model shares: unknown keys rejected, where and in which precision the model
runs, and how many CPU threads torch may use."""

from __future__ import annotations

import contextlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ['ModelRunSettings', 'torch_default_dtype']


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


@contextlib.contextmanager
def torch_default_dtype(name: str | None = None):
    """Run a block with torch's default dtype set to ``name`` (``float32``...), or as it is when None, and restore
    the caller's default afterwards: loading a MACE model sets float64 for the whole process, which CHGNet (float32
    throughout) and callers of in-process predictions must not inherit."""
    import torch

    previous = torch.get_default_dtype()
    if name is not None:
        torch.set_default_dtype(getattr(torch, name))
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
