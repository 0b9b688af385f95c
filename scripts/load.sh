#!/usr/bin/env bash
# `make load` / `make capacity`: locust, headless, against the gateway at CYGATE_URL (default
# :8000): `scripts/load.sh run|capacity` runs `loadtests/tool.py run|capacity` (its LOAD_*
# variables: docs/load.md). When nothing answers there, start one (migrate, seed demo data if
# empty: LOAD_SEED_PRODUCTS, default 20000, LOAD_SEED_CATEGORIES, default 40), run, and stop
# it again. A gateway started here also gets an admin account (CYGATE_ADMIN_EMAIL/PASSWORD,
# a fresh password unless both are set) that the mix's catalog manager signs in as
# (LOAD_MANAGER_EMAIL/PASSWORD).
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
# The settings first: a bad one is one line and exit 2 before any gateway is started.
"$BIN/python" loadtests/tool.py check "${@:-run}" || exit 2
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
    "$BIN/cygate" seed --if-empty --categories "${LOAD_SEED_CATEGORIES:-40}" \
        --products "${LOAD_SEED_PRODUCTS:-20000}" --users 50
    if [[ -z ${CYGATE_ADMIN_EMAIL:-} || -z ${CYGATE_ADMIN_PASSWORD:-} ]]; then
        export CYGATE_ADMIN_EMAIL=load-admin@load.example.com
        CYGATE_ADMIN_PASSWORD=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(18))')
        export CYGATE_ADMIN_PASSWORD
    fi
    export LOAD_MANAGER_EMAIL=${LOAD_MANAGER_EMAIL:-$CYGATE_ADMIN_EMAIL}
    export LOAD_MANAGER_PASSWORD=${LOAD_MANAGER_PASSWORD:-$CYGATE_ADMIN_PASSWORD}
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
"$BIN/python" loadtests/tool.py "${@:-run}" || rc=$?

if [[ -n $processor && ${LOAD_SCENARIO:-mix} != browse ]]; then
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
