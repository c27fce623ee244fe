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
    # Jobs are submitted and polled without a login shell: `bash -l` would run the user's profile every time (a
    # `pyenv rehash` there can wait 60 s on a lock another shell left behind).
    $VERDI -p "$PROFILE" computer configure core.local localhost -n --safe-interval 0 --no-use-login-shell \
        >/dev/null
fi
$VERDI profile set-default "$PROFILE" >/dev/null
$VERDI daemon start 2 >/dev/null 2>&1 || $VERDI daemon restart --reset >/dev/null
trap '$VERDI daemon stop >/dev/null 2>&1 || true' EXIT
python examples/demo.py "$@"
