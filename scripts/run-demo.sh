#!/usr/bin/env bash
# The main job at demo scale on the embedded default: an isolated `verdi presto` profile (SQLite + ZeroMQ broker)
# under .aiida/ in the project folder, the localhost computer and the package's codes, the daemon, the pipeline
# submitted to it and the results printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH"  # verdi (daemon) and the console scripts
export AIIDA_PATH="$PWD/.aiida"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
VERDI=verdi
PROFILE=capthermo-demo
if ! $VERDI profile show "$PROFILE" >/dev/null 2>&1; then
    $VERDI presto --use-zeromq --profile-name "$PROFILE" --email demo@capthermo.local >/dev/null
fi
$VERDI profile set-default "$PROFILE" >/dev/null
$VERDI daemon start 2 >/dev/null 2>&1 || $VERDI daemon restart --reset >/dev/null
trap '$VERDI daemon stop >/dev/null 2>&1 || true' EXIT
python examples/demo.py "$@"
