"""SharpnessTracker's overhead in a plain training loop: the quickstart SB run, λ_max every N updates.

    python benchmarks/tracker.py [--epochs 5] [--every 50 100 500]

The quickstart's SB run (MLP 40-512-512-10 on MNIST-1D, 8000 training examples, batch 32, Adam 1e-3), as
a user would write it, from the same seed: without a tracker; then, for each ``every``, with the
tracker's defaults (1000-example subset, training mode, tol 1e-3, warm start), with the warm start off,
and with a 256-example subset at tol 1e-2. Reported: the training time of each, the overhead, the
products per measurement, and two floors beside them:

- *one product*: the overhead if each measurement cost a single product over the subset (the least any
  check of the previous vector can cost);
- *oracle*: the products a warm-started Krylov space needs before its top Ritz value is within tol of
  the true λ_max (from a separate run at tol 1e-7) — what a stopping rule that knew the answer would
  spend. No residual test can certify tol with fewer; the warm start's own residual after the updates is
  printed beside it.

Training is the same in every run (the tracker changes neither the model nor the random state: checked).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from scipy.linalg import eigvalsh_tridiagonal
from torch import nn

import sharpness as sh
from sharpness.curvature import HessianOperator, hessian_eigenvalues
from sharpness.curvature.lanczos import Krylov


def run(x, y, epochs, tracker=None):
    torch.manual_seed(0)
    model = sh.build_model("mlp", input_shape=(40,), num_classes=10, widths=[512, 512])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    step, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
            if tracker is not None:
                tracker(model, step)
    return time.perf_counter() - t0, model


def krylov_to_truth(op, start, lam, tol, cap=30):
    """Products until the top Ritz value of span{start, Hstart, …} is within tol·λ of λ (the project's
    :class:`Krylov` run from ``start``), and the start's relative residual ‖Hv − αv‖/|α| = β₁/|α₁|."""
    K = Krylov(op, start)
    for steps in range(1, cap + 1):
        K.extend(steps)
        alphas = K.alphas()
        top = eigvalsh_tridiagonal(alphas, K.betas())[-1] if steps > 1 else alphas[0]
        if lam - top <= tol * abs(lam) or K.stopped[0]:
            break
    return steps, float(K.norms[0][0]) / abs(float(K.alphas()[0]))


def oracle(x, y, epochs, every, tol=1e-3):
    """Per warm measurement of the default tracker: (oracle products, start residual); untimed."""
    prev, rows = [None], []

    def measure(obj):
        op = HessianOperator(obj)
        ref = hessian_eigenvalues(op, k=1, tol=1e-7, max_hvps=400, copies=False, progress=False)
        if prev[0] is not None:
            rows.append(krylov_to_truth(op, prev[0], float(ref.values[0]), tol))
        prev[0] = ref.vectors[0]
        return float(ref.values[0])

    run(x, y, epochs, sh.SharpnessTracker("cross_entropy", (x, y), every=every, tol=tol, user={"ref": measure}))
    return np.array(rows)


def one_product_seconds(x, y, model, subset):
    t = sh.SharpnessTracker("cross_entropy", (x, y), subset=subset)
    op = HessianOperator(t._objective(model))
    v = torch.randn(op.num_params)
    op.matvec(v)
    t0 = time.perf_counter()
    for _ in range(10):
        op.matvec(v)
    return (time.perf_counter() - t0) / 10


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--every", type=int, nargs="+", default=[50, 100, 500])
    a = p.parse_args()
    sh.keep_freed_memory()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    x, y = sh.load_data("mnist1d", num_samples=10000)[0].tensors
    run(x, y, 1)  # warm-up
    base, m0 = run(x, y, a.epochs)
    product = {s: one_product_seconds(x, y, m0, s) for s in (1000, 256)}
    print(f"\nquickstart SB loop, {a.epochs} epochs ({a.epochs * 250} updates); no tracker: {base:.1f} s; "
          f"one product: {product[1000] * 1e3:.0f} ms on 1000 examples, {product[256] * 1e3:.0f} ms on 256\n")
    print("| every | tracker | training s | overhead | floor: one product | measurements "
          "| HVPs per warm measurement: median (min–max) | s each |")
    print("|---|---|---|---|---|---|---|---|")
    for every in a.every:
        for warm, subset, tol in ((True, 1000, 1e-3), (False, 1000, 1e-3), (True, 256, 1e-2)):
            t = sh.SharpnessTracker("cross_entropy", (x, y), every=every, warm_start=warm, subset=subset, tol=tol)
            secs, m = run(x, y, a.epochs, t)
            assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m0.parameters())), "tracker changed training"
            h = [r["n_hvps"] for r in t.history[1:]]
            each = np.mean([r["seconds"] for r in t.history])
            floor = len(t.history) * product[subset] / base
            what = f"{'warm' if warm else 'cold'} start, subset {subset}, tol {tol:g}"
            print(f"| {every} | {what} | {secs:.1f} | {secs / base - 1:+.1%} | {floor:+.1%} | {len(t.history)} | "
                  f"{np.median(h):g} ({min(h)}–{max(h)}) | {each:.2f} |", flush=True)
    print("\noracle (default tracker, tol 1e-3): products from the warm start until the top Ritz value is within "
          "1e-3 of the true λ_max\n")
    print("| every | warm measurements | oracle products: median (min–max) | start residual: median (min–max) |")
    print("|---|---|---|---|")
    for every in a.every:
        rows = oracle(x, y, a.epochs, every)
        n, r = rows[:, 0], rows[:, 1]
        print(f"| {every} | {len(rows)} | {np.median(n):g} ({n.min():g}–{n.max():g}) | "
              f"{np.median(r):.2f} ({r.min():.2f}–{r.max():.2f}) |", flush=True)


if __name__ == "__main__":
    main()
