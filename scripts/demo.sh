#!/usr/bin/env bash
# Install everything (scripts/setup.sh), then run the demo: VGG-16 and ResNet-34
# classified with fused tiles in-process, each checked against the whole model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${EDGECI_VENV:-.venv}
for model in vgg16 resnet34; do
    "$VENV/bin/edgeci" infer --model "$model" --tiles 3x3 "$@"
    echo
done
