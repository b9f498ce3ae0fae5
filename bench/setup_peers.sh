#!/usr/bin/env bash
# Creates bench/.venv-peers: the project's dependencies plus torch, torchvision,
# torchattacks, captum and pytorch-grad-cam (bench/requirements-peers.txt). Idempotent.
# torch 2.14.1 / torchvision 0.29.1 are the pair that import together here (a CUDA build
# that runs on the CPU, about 5.5 GB); torch 2.13.0's CPU build breaks torchvision's ops.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv-peers
STAMP=$VENV/.installed-$(cat requirements-peers.txt ../requirements.lock | cksum | cut -d' ' -f1)
[[ -e $STAMP ]] && exit 0
[[ -x $VENV/bin/python ]] || ${PYTHON:-python3} -m venv $VENV
$VENV/bin/python -m pip install -q --upgrade pip
$VENV/bin/python -m pip install -q -r requirements-peers.txt
$VENV/bin/python -m pip install -q --no-deps torchattacks==3.5.1
rm -f $VENV/.installed-*
touch "$STAMP"
