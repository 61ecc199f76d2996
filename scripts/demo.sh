#!/usr/bin/env bash
# Install everything (scripts/setup.sh), then run the demo: a broker, four device agents
# and an orchestrator on this machine; VGG-16 and ResNet-34 with every strategy, each
# result checked against the local run. Extra arguments go to `edgeci demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${EDGECI_VENV:-.venv}
"$VENV/bin/edgeci" demo "$@"
