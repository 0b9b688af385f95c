#!/usr/bin/env bash
# Headless load against a running gateway: `loadtests/tool.py run` (settings: LOAD_* variables,
# docs/load.md). `make load` goes through scripts/load.sh, which starts a gateway when none
# answers.
set -euo pipefail
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
PY=$REPO/.venv/bin/python
[[ -x $PY ]] || PY=python3
exec "$PY" "$REPO/loadtests/tool.py" run "$@"
