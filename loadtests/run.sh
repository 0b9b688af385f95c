#!/usr/bin/env bash
# Headless load against a running gateway, with reports and an SLO gate.
#
#   loadtests/run.sh [extra locust options...]
#
# Environment (defaults):
#   CYGATE_URL            http://127.0.0.1:8000   the gateway (only loopback/test hosts, please)
#   LOAD_SCENARIO         browse                  browse: catalog browsers (CatalogBrowser);
#                                                 shop: shoppers who register, search, order, pay
#                                                 or cancel (Shopper, loadtests/shoppers.py; the
#                                                 gateway needs a payment processor); mixed: both,
#                                                 3 browsers to 1 shopper
#   LOAD_USERS            50                      peak concurrent users
#   LOAD_SPAWN_RATE       10                      users started per second
#   LOAD_RUN_TIME         30s                     e.g. 45s, 5m
#   LOAD_MAX_FAIL_RATIO   0.01                    SLO: failed/total requests must not exceed it
#   LOAD_MAX_P95_MS       0                       SLO: aggregated p95 in ms (0 = not checked)
#   LOAD_REPORT_DIR       loadtests/reports/<UTC timestamp>
#   LOCUST                .venv/bin/locust (else locust on PATH)
#
# Writes <dir>/locust_stats.csv, _stats_history.csv, _failures.csv, _exceptions.csv (locust's
# --csv), report.html (--html), slo.json (exact final totals and the verdict) and locust.log;
# loadtests/reports/latest points at the newest run.
# Exit status is locust's, which the locustfile's quitting hook sets from the final totals
# (locust's own --exit-code-on-error would fail the run on any single failed request):
# 0 the SLO holds; 1 it does not (failure ratio above the limit, p95 too slow, no request at
# all); 2 the locustfile raised, or the gateway did not answer /healthz before the run.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
URL=${CYGATE_URL:-http://127.0.0.1:8000}
URL=${URL%/}
USERS=${LOAD_USERS:-50}
SPAWN_RATE=${LOAD_SPAWN_RATE:-10}
RUN_TIME=${LOAD_RUN_TIME:-30s}
MAX_FAIL_RATIO=${LOAD_MAX_FAIL_RATIO:-0.01}
MAX_P95_MS=${LOAD_MAX_P95_MS:-0}
SCENARIO=${LOAD_SCENARIO:-browse}
case $SCENARIO in
    browse) CLASSES=(CatalogBrowser) ;;
    shop) CLASSES=(Shopper) ;;
    mixed) CLASSES=(CatalogBrowser Shopper) ;;
    *) echo "run.sh: LOAD_SCENARIO=$SCENARIO: expected browse, shop or mixed" >&2; exit 2 ;;
esac
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
REPORTS=$REPO/loadtests/reports
OUT=${LOAD_REPORT_DIR:-$REPORTS/$STAMP}

if [[ -n ${LOCUST:-} ]]; then :
elif [[ -x $REPO/.venv/bin/locust ]]; then LOCUST=$REPO/.venv/bin/locust
elif command -v locust >/dev/null 2>&1; then LOCUST=$(command -v locust)
else echo "run.sh: locust not found (pip install -e '.[dev]')" >&2; exit 127
fi
# Python beside locust (for the pre-flight check and the summary); any python3 will do.
PY=$(dirname -- "$LOCUST")/python
[[ -x $PY ]] || PY=python3

# Pre-flight: a gateway that is not there would only produce a run full of connection errors.
if ! "$PY" - "$URL/healthz" <<'PY'
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as resp:
        sys.exit(0 if 200 <= resp.status < 300 else 1)
except Exception as exc:  # refused, timeout, non-2xx
    print(f"run.sh: {sys.argv[1]}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
then
    echo "run.sh: the gateway at $URL does not answer /healthz; start it first (make run)" >&2
    exit 2
fi

mkdir -p "$OUT"
if [[ -z ${LOAD_REPORT_DIR:-} ]]; then ln -sfn "$STAMP" "$REPORTS/latest"; fi

slo="failure ratio <= $MAX_FAIL_RATIO"
if [[ $MAX_P95_MS != 0 ]]; then slo+=", p95 <= $MAX_P95_MS ms"; fi
echo "run.sh: $SCENARIO (${CLASSES[*]}), $USERS users (+$SPAWN_RATE/s) for $RUN_TIME against $URL; SLO: $slo"
echo "run.sh: reports in $OUT"

rc=0
"$LOCUST" \
    -f "$REPO/loadtests/locustfile.py" \
    --headless \
    --host "$URL" \
    --users "$USERS" \
    --spawn-rate "$SPAWN_RATE" \
    --run-time "$RUN_TIME" \
    --stop-timeout 5 \
    --only-summary \
    --csv "$OUT/locust" \
    --html "$OUT/report.html" \
    --max-fail-ratio "$MAX_FAIL_RATIO" \
    --max-p95-ms "$MAX_P95_MS" \
    --slo-report "$OUT/slo.json" \
    "${CLASSES[@]}" \
    "$@" 2>&1 | tee "$OUT/locust.log" || rc=$?   # pipefail: locust's own status

# Summary from the exact final totals the locustfile wrote at quit (the CSVs are snapshots that
# locust rewrites every second, so they can miss the last second of the run).
"$PY" - "$OUT/slo.json" <<'PY' || true
import json
import sys

try:
    with open(sys.argv[1], encoding="utf-8") as fh:
        report = json.load(fh)
except OSError as exc:
    print(f"run.sh: no SLO report ({exc})", file=sys.stderr)
    sys.exit(1)


def ms(value: object) -> str:
    return "-" if value is None else f"{value:.0f}"


print()
print(f"{'endpoint':<44} {'reqs':>8} {'fails':>7} {'req/s':>8} {'p50':>6} {'p95':>6} {'p99':>6} (ms)")
for e in [*report["endpoints"], {**report["total"], "method": "", "name": "TOTAL"}]:
    print(
        f"{(e['method'] + ' ' + e['name']).strip():<44} {e['requests']:>8} {e['failures']:>7} "
        f"{e['rps']:>8.1f} {ms(e['p50_ms']):>6} {ms(e['p95_ms']):>6} {ms(e['p99_ms']):>6}"
    )
if report.get("outcomes"):
    print("\nshoppers: " + ", ".join(f"{k} {v}" for k, v in report["outcomes"].items()))
total = report["total"]
if report["passed"]:
    verdict = f"PASS: failure ratio {total['fail_ratio']:.4f} <= {report['max_fail_ratio']}"
else:
    verdict = "FAIL: " + "; ".join(report["problems"])
print(f"\nSLO {verdict} ({total['requests']} requests)")
PY

echo "run.sh: locust exit $rc; reports in $OUT"
exit "$rc"
