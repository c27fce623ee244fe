#!/usr/bin/env bash
# Install (if needed) and run the default test suite (slow and GPU tests are excluded by pyproject's addopts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"  # verdi (daemon) and the console scripts
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -p no:cacheprovider -q "$@"
