#!/usr/bin/env bash
# The peer benchmark in one command: sets up bench/.venv-peers (once), then runs
# bench/peers.py at both sizes and records the tables in bench/RESULTS.md / results.json.
# Run it with nothing else on the machine (see bench/peers.py). ResNet-50 uses fewer
# SmoothGrad samples and IG intervals (8 and 16) to keep its table under an hour.
#   bash bench/run_peers.sh                 # ResNet-18 at 128 px (batch 16), ResNet-50 at 224 px (batch 8)
#   bash bench/run_peers.sh --only pgd      # extra flags go to every peers.py run
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup_peers.sh
PY=bench/.venv-peers/bin/python
$PY bench/peers.py --arch resnet18 --size 128 --batch 16 --record "$@"
$PY bench/peers.py --arch resnet50 --size 224 --batch 8 --repeats 3 --samples 8 --ig_steps 16 --record "$@"
