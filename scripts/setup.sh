#!/usr/bin/env bash
# Install everything EdgeCI-MQTT needs on a Debian/Ubuntu machine, idempotently:
#   Mosquitto (broker + clients) from apt, a virtualenv in .venv, the CPU build of
#   torch==2.13.0 *before* anything else (a looser spec would pull a multi-GB CUDA
#   build), then this package with its dev extras in editable mode.
# Usage: scripts/setup.sh            (then use .venv/bin/edgeci, .venv/bin/pytest)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EDGECI_VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_PIN=${EDGECI_TORCH:-torch==2.13.0}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# mosquitto_ctrl (mosquitto-clients) creates the broker's admin; the plugin comes with mosquitto.
if { ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; } || ! command -v mosquitto_ctrl >/dev/null 2>&1; then
    echo "setup: installing mosquitto and mosquitto-clients from apt" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto mosquitto-clients
fi
# The Debian package enables a system broker on port 1883; the project starts its own.

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing $TORCH_PIN (CPU build)" >&2
    "${PIP[@]}" "$TORCH_PIN"
fi
echo "setup: installing edgeci-mqtt[dev]" >&2
"${PIP[@]}" -e ".[dev]"
echo "setup: done; commands are in $VENV/bin" >&2
