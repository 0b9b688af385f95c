#!/usr/bin/env bash
# `make load`: locust, headless, against the gateway at CYGATE_URL (default :8000). When nothing
# answers there, start one (migrate, seed demo data if empty, serve), run, and stop it again.
# LOAD_SCENARIO picks the users (browse, the default; shop; mixed: see loadtests/run.sh), e.g.
# `make load LOAD_SCENARIO=shop`; other LOAD_* variables are loadtests/run.sh's.
#
# A gateway started here gets the payment processor simulator through scripts/run.sh (on a free
# port, webhooks signed with the secret file both read, .cygate/payment-webhook-secret); after
# the run its ledger is summed up, and failed webhook deliveries (a secret mismatch, a gateway
# that refused them) are reported.
set -euo pipefail
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
export CYGATE_URL=${CYGATE_URL:-http://127.0.0.1:8000}
CYGATE_URL=${CYGATE_URL%/}
BIN=$REPO/.venv/bin
started=""
processor=""
cleanup() { [[ -n $started ]] && kill -TERM -- "-$started" 2>/dev/null || true; }
trap cleanup EXIT

if ! curl -fsS -o /dev/null "$CYGATE_URL/healthz" 2>/dev/null; then
    export CYGATE_DATABASE_URL=${CYGATE_DATABASE_URL:-${DATABASE_URL%/*}/cygate}
    export CYGATE_REDIS_URL=${CYGATE_REDIS_URL:-$REDIS_URL}
    # Every locust user comes from this one address: unless told otherwise, no default
    # per-caller limit and no registration limit on the gateway started here (explicitly).
    export CYGATE_RATE_LIMIT_DEFAULT_CLASS=${CYGATE_RATE_LIMIT_DEFAULT_CLASS-}
    export CYGATE_RATE_LIMIT_ROUTES=${CYGATE_RATE_LIMIT_ROUTES-'{"POST /api/v1/auth/register": ""}'}
    "$BIN/cygate" migrate
    "$BIN/cygate" seed --if-empty --categories 40 --products 20000 --users 50
    hostport=${CYGATE_URL#http://}
    if [[ -z ${CYGATE_PAYMENT_PROCESSOR_URL:-} ]]; then
        # Chosen here (scripts/run.sh takes SIM_PORT) so the ledger can be read after the run.
        SIM_PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        export SIM_PORT
        processor=http://127.0.0.1:$SIM_PORT
    fi
    mkdir -p .services
    # scripts/run.sh: the payment processor simulator too (stopped with the gateway's group)
    CYGATE_HOST=${hostport%:*} CYGATE_PORT=${hostport##*:} \
    setsid scripts/run.sh --host "${hostport%:*}" --port "${hostport##*:}" \
        --workers "${LOAD_WORKERS:-1}" >"$REPO/.services/load-gateway.log" 2>&1 &
    started=$!
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$CYGATE_URL/readyz" 2>/dev/null && break
        sleep 0.2
    done
    if [[ -n $processor ]] && ! curl -fsS -o /dev/null "$processor/healthz" 2>/dev/null; then
        echo "load.sh: the payment processor simulator does not answer at $processor" \
             "(.services/processor-sim.log); payments will fail" >&2
    fi
fi

rc=0
loadtests/run.sh "$@" || rc=$?

if [[ -n $processor && ${LOAD_SCENARIO:-browse} != browse ]]; then
    sleep 1.5  # webhooks go out --webhook-delay (0.5 s) after each charge
    "$BIN/python" - "$processor/v1/ledger" <<'PY' || true
import json
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as resp:
        d = json.load(resp)
except Exception as exc:  # refused, timeout, not JSON
    sys.exit(f"load.sh: could not read the simulator's ledger ({exc})")
print(
    f"load.sh: processor simulator: {d['captured']} captured, {d['declined']} declined, "
    f"{d['requests']} requests, {d['failures']} failures; webhooks: {d['webhooks_sent']} "
    f"delivered, {d['webhooks_failed']} failed deliveries"
)
if d["webhooks_failed"]:
    print(
        "load.sh: WARNING: webhook deliveries failed (a secret mismatch? the gateway down?): "
        "see .services/processor-sim.log and .services/load-gateway.log",
        file=sys.stderr,
    )
PY
fi
exit "$rc"
