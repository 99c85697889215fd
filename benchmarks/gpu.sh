#!/usr/bin/env bash
# The GPU benchmarks in one go (run from the repo root on a CUDA machine with torch and torchvision):
# curvature (torchvision ResNet-18, batch 1024) and landscape (vmapped grid points vs a per-point loop).
# Peers come as wheels in .whl/ when the machine has no index to install from.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python3 benchmarks/curvature.py --device cuda
python3 benchmarks/landscape.py --device cuda
