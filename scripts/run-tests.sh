#!/usr/bin/env bash
# Install (if needed) and run the default test suite (slow and GPU tests are excluded by pyproject's addopts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"  # verdi (daemon) and the console scripts
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Two workers (CI has two cores; much of the suite waits on subprocesses and the daemon): each test file stays on one
# worker, so its module fixtures run once, and the long files named in tests/conftest.py start first.
# TEST_WORKERS=0 runs everything in this process.
exec .venv/bin/python -m pytest -p no:cacheprovider -q -n "${TEST_WORKERS:-2}" --dist loadfile \
    --no-loadscope-reorder "$@"
