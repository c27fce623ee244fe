"""GPU checks (marker ``gpu``): run with ``pytest -m gpu`` on a machine with CUDA; skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gnn_helpers import synthetic_set

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')]


def test_gnn_trains_on_cuda_and_predicts_like_cpu():
    """Training selects CUDA with device='auto'; the CUDA model's predictions agree on CPU and on GPU."""
    from aiida_capthermo.ml.gnn.predict import predict
    from aiida_capthermo.ml.gnn.training import train_gnn

    labelled = synthetic_set(40, seed=3)
    result = train_gnn(labelled, {'max_epochs': 20, 'batch_size': 8, 'device': 'auto', 'seed': 1})
    assert result.device.startswith('cuda')
    on_cpu = predict(result.loaded, labelled, device='cpu')
    on_gpu = predict(result.loaded, labelled, device='cuda')
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(on_gpu))
