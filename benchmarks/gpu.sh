#!/usr/bin/env bash
# The GPU benchmarks in one go (run from the repo root on a CUDA machine with torch and torchvision):
# curvature (torchvision ResNet-18, batch 1024), landscape (vmapped grid points vs a per-point loop),
# block products (H·V for m = 1, 4, 16, 64 vs m single products) and the full default analysis of a
# ResNet-18 on 50,000 CIFAR-shaped examples with its per-measure times (each step time-limited, so a
# slow one leaves the others their time).
# Peers come as wheels in .whl/ when the machine has no index to install from.
set -uo pipefail
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
timeout 150 python3 benchmarks/curvature.py --device cuda
timeout 60 python3 benchmarks/landscape.py --device cuda
timeout 90 python3 benchmarks/products.py --device cuda
timeout 400 python3 benchmarks/analyze_budget.py --resnet18 50000 --device cuda --batch-size 1000 --no-quick
