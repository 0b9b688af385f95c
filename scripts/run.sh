#!/usr/bin/env bash
# `make run`: the payment processor simulator in the background on a free port, then the gateway
# in the foreground, pointed at it (CYGATE_PAYMENT_PROCESSOR_URL). The simulator stops with the
# gateway. An explicit CYGATE_PAYMENT_PROCESSOR_URL (a real processor, or a simulator of your
# own) is used as it is and nothing is started. SIM_PORT: the simulator's port (default: a free one).
#
# Both read the webhook secret from the same file (CYGATE_PAYMENT_WEBHOOK_SECRET_FILE, default
# .cygate/payment-webhook-secret), created with a random secret at first start and ignored by git;
# the simulator signs its webhooks to the gateway's /api/v1/payments/webhook with it.
set -euo pipefail
REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
BIN=$REPO/.venv/bin
sim=""
cleanup() { [[ -n $sim ]] && kill -TERM "$sim" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

if [[ -z ${CYGATE_PAYMENT_PROCESSOR_URL:-} ]]; then
    port=${SIM_PORT:-$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    mkdir -p .services
    "$BIN/cygate" processor-sim --port "$port" \
        --webhook-url "http://${CYGATE_HOST:-127.0.0.1}:${CYGATE_PORT:-8000}/api/v1/payments/webhook" \
        --webhook-delay "${SIM_WEBHOOK_DELAY:-0.5}" >.services/processor-sim.log 2>&1 &
    sim=$!
    export CYGATE_PAYMENT_PROCESSOR_URL=http://127.0.0.1:$port
    for _ in $(seq 1 50); do
        curl -fsS -o /dev/null "$CYGATE_PAYMENT_PROCESSOR_URL/healthz" 2>/dev/null && break
        sleep 0.1
    done
    echo "payment processor simulator: $CYGATE_PAYMENT_PROCESSOR_URL (log: .services/processor-sim.log)"
fi
"$BIN/cygate" serve "$@"
