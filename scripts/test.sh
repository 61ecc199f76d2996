#!/usr/bin/env bash
# Install everything (scripts/setup.sh), then lint, type-check and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k geometry
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${EDGECI_VENV:-.venv}
echo "== ruff" >&2
"$VENV/bin/ruff" check edgeci_mqtt tests bench
"$VENV/bin/ruff" format --check edgeci_mqtt tests bench
echo "== mypy" >&2
"$VENV/bin/mypy"
echo "== pytest" >&2
"$VENV/bin/pytest" "$@"
