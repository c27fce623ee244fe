#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv with everything installed from the project's own files.
# torch comes first, pinned to the CPU build this project's machines carry on disk (pip finds it there); a bare
# `torch` would pull a multi-GB CUDA build. Override with TORCH_SPEC='torch==X' on a cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import aiida_capthermo, torch, torch_geometric, mace, tblite, chgnet, aiida_vasp, pytest, xdist, ruff" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086  # TORCH_SPEC may carry extra pip arguments
    .venv/bin/python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
    .venv/bin/python -m pip install --quiet -e '.[tests]'
fi
