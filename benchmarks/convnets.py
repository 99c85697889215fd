"""Conv nets: a product's cost ÷ a gradient's, and ``analyze --quick`` / the default on a new user's CNN.

    python benchmarks/convnets.py [--device cuda] [--skip-analyze]

The new user's case of issue 26: a Conv2d+BN net of 9.5k parameters (width 20) on 1,200 images of 16×16×3 (trained
for 3 epochs on a seeded synthetic task, so its Hessian is a trained network's, not a random one's), and
two larger Conv2d+BN nets (widths 32 and 64). For each: seconds of a forward, a loss-and-gradient pass and
a Hessian-vector product over all examples (best of five after a warm-up, one batch), product ÷ gradient
beside the MLP's 1.86 (``products.py``). Then ``analyze(quick=True)`` and ``analyze()`` of the small CNN,
wall time (figures on, into a temporary folder) and per measure.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch
from products import best
from torch import nn

import sharpness as sh
from sharpness.curvature import HessianOperator


def cnn(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, 10))


def data(n: int = 1200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 16, 16, generator=g)
    W = torch.randn(10, 3 * 16 * 16, generator=g)
    y = (X.reshape(n, -1) @ W.T).argmax(1)  # a learnable, seeded labelling
    return X, y


def train(model: nn.Module, X, y, epochs: int = 3) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def unit_costs(model: nn.Module, X, y, device: str) -> dict:
    model = model.to(device)
    X, y = X.to(device), y.to(device)
    params = list(model.parameters())
    with torch.no_grad():
        fwd = best(lambda: nn.functional.cross_entropy(model(X), y), device, rounds=6)
    grad = best(lambda: torch.autograd.grad(nn.functional.cross_entropy(model(X), y), params), device, rounds=6)
    op = HessianOperator(model, "cross_entropy", (X, y))
    v = torch.randn(op.num_params, device=device)
    hvp = best(lambda: op.matvec(v), device, rounds=6)
    return {"params": op.num_params, "forward": fwd, "gradient": grad, "hvp": hvp}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-analyze", action="store_true")
    a = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}" + (f", {torch.cuda.get_device_name()}" if a.device.startswith("cuda") else ""))
    X, y = data()
    print("\n| net | parameters | forward ms | gradient ms | product ms | product ÷ gradient |\n|---|---|---|---|---|---|")
    small = None
    for width in (20, 32, 64):
        torch.manual_seed(0)
        model = train(cnn(width), X, y)
        small = small or model
        c = unit_costs(model, X, y, a.device)
        print(f"| Conv2d+BN width {width} (1200 × 3×16×16) | {c['params']} | {1e3 * c['forward']:.1f} | "
              f"{1e3 * c['gradient']:.1f} | {1e3 * c['hvp']:.1f} | {c['hvp'] / c['gradient']:.2f} |")
    if a.skip_analyze:
        return
    sh.register_data("bench_cnn_1200", lambda: ((X[:1000], y[:1000]), (X[1000:], y[1000:])))
    small = small.cpu()
    for quick in (True, False):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            rep = sh.analyze(small, data="bench_cnn_1200", out=out, quick=quick, device=a.device, progress=False)
            wall = time.perf_counter() - start
        ms = rep.data["checkpoints"]["model"]["measures"]
        parts = ", ".join(f"{n} {r.get('seconds', 0):.1f}" for n, r in ms.items() if r.get("seconds", 0) >= 0.05)
        print(f"\nanalyze({'quick=True' if quick else 'defaults'}) of the width-20 net "
              f"({ms['eigenvalues']['summary']['lambda_max']:.4g} λ_max): {wall:.1f} s wall, figures on; {parts}; "
              f"planned {rep.data['plan']['total_seconds']:.1f} s")


if __name__ == "__main__":
    main()
