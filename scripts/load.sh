#!/usr/bin/env bash
# `make load`: locust, headless, against the gateway at CYGATE_URL (default :8000). When nothing
# answers there, start one (migrate, seed demo data if empty, serve), run, and stop it again.
set -euo pipefail
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
export CYGATE_URL=${CYGATE_URL:-http://127.0.0.1:8000}
BIN=$REPO/.venv/bin
started=""
cleanup() { [[ -n $started ]] && kill -TERM -- "-$started" 2>/dev/null || true; }
trap cleanup EXIT

if ! curl -fsS -o /dev/null "$CYGATE_URL/healthz" 2>/dev/null; then
    export CYGATE_DATABASE_URL=${CYGATE_DATABASE_URL:-${DATABASE_URL%/*}/cygate}
    export CYGATE_REDIS_URL=${CYGATE_REDIS_URL:-$REDIS_URL}
    "$BIN/cygate" migrate
    "$BIN/cygate" seed --if-empty --categories 40 --products 20000 --users 50
    hostport=${CYGATE_URL#http://}
    # scripts/run.sh: the payment processor simulator too (stopped with the gateway's group)
    CYGATE_HOST=${hostport%:*} CYGATE_PORT=${hostport##*:} \
    setsid scripts/run.sh --host "${hostport%:*}" --port "${hostport##*:}" \
        --workers "${LOAD_WORKERS:-1}" >"$REPO/.services/load-gateway.log" 2>&1 &
    started=$!
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$CYGATE_URL/readyz" 2>/dev/null && break
        sleep 0.2
    done
fi
loadtests/run.sh "$@"
