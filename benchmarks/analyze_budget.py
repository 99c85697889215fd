"""``analyze`` with default settings: each measure's seconds beside its arithmetic floor on this machine.

    python benchmarks/analyze_budget.py [CHECKPOINT]

Default checkpoint: the quickstart SB model (MLP 40-512-512-10, MNIST-1D, batch 32, Adam 1e-3, 30
epochs; 8000 training examples), trained on first use into ``runs/`` (about 2 minutes on 2 cores).

Each measure's work is counted from ``report.json`` in the passes it is made of — forwards over the
training data (a loss at one point: PAC-Bayes draws, landscape points), loss-and-gradient passes
(ε-sharpness's L-BFGS-B evaluations) and Hessian-vector products (the curvature measures) — and each
kind of pass is timed alone on the same model and data. The floor, Σ count × time per pass, is what the
measure would cost if it did nothing but those passes; measured ÷ floor is the overhead. The matrix
product rate (8000 × 512 × 512, float32) says how near a forward runs to what the cores can do.
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time

import torch
from curvature import trained_mnist1d
from torch import nn

import sharpness as sh
from sharpness.curvature import HessianOperator

# measure → (summary or details key with its count, unit); landscape counts are grid points
UNITS = {"eigenvalues": ("n_hvps", "hvp"), "trace": ("n_hvps", "hvp"), "density": ("n_hvps", "hvp"),
         "eps_sharpness": ("n_evals", "gradient"), "pacbayes": ("n_evals", "forward"),
         "landscape1d": ("points", "forward"), "landscape2d": ("points", "forward")}


def best_of(f, n=5):
    f()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def unit_costs(model, X, y):
    """Seconds per forward, per loss-and-gradient pass and per Hessian-vector product over all of (X, y)."""
    loss = nn.CrossEntropyLoss()
    model.eval()
    with torch.no_grad():
        fwd = best_of(lambda: loss(model(X), y))
    params = list(model.parameters())
    grad = best_of(lambda: torch.autograd.grad(loss(model(X), y), params))
    op = HessianOperator(model, loss, (X, y))
    v = torch.randn(op.num_params)
    hvp = best_of(lambda: op.matvec(v))
    a, b = torch.randn(8000, 512), torch.randn(512, 512)
    gflops = 2 * 8000 * 512 * 512 / best_of(lambda: a @ b, 20) / 1e9
    return {"forward": fwd, "gradient": grad, "hvp": hvp}, gflops


def count(rec: dict, key: str) -> int:
    if key == "points":
        return int(torch.tensor(rec["details"]["shape"]).prod())
    return int(rec["summary"].get(key) or rec["details"].get(key))


def scalars(measures: dict) -> dict:
    """measure/key → value for every plain number in the measures' summaries."""
    return {f"{m}/{k}": v for m, rec in measures.items() for k, v in rec.get("summary", {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("n_")}


def main():
    sh.keep_freed_memory()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    if len(sys.argv) > 1:
        ckpt = sh.load_checkpoint(sys.argv[1])
        model, (X, y) = ckpt.model(), ckpt.datasets()[0].tensors
    else:
        model, (X, y) = trained_mnist1d("mlp", {"widths": [512, 512]}, 10000, epochs=30, batch_size=32)
        ckpt = sh.load_checkpoint("runs/bench-mlp-10000-30/final.pt")
    before, gflops = unit_costs(model, X, y)
    runs = {}
    for quick in (False, True):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            report = sh.analyze(ckpt, out=out, progress=False, figures=False, quick=quick)
            runs[quick] = next(iter(report.data["checkpoints"].values()))["measures"], time.perf_counter() - start
    after, _ = unit_costs(model, X, y)  # the machine's speed drifts: the mean of the two timings
    units = {k: (before[k] + after[k]) / 2 for k in before}
    print(f"{len(y)} training examples; per pass over them (before, after analyze): "
          + ", ".join(f"{k} {before[k] * 1e3:.1f}, {after[k] * 1e3:.1f} ms" for k in units)
          + f"; matrix products {gflops:.0f} GFLOP/s")
    measures, quick = runs[False][0], runs[True][0]
    print("\n| measure | default s | passes | floor s | default ÷ floor | --quick s |\n|---|---|---|---|---|---|")
    total = floor_total = 0.0
    for name, rec in measures.items():
        s = rec.get("seconds", float("nan"))
        total += s
        q = quick.get(name, {}).get("seconds", float("nan"))
        if name in UNITS and rec.get("status") != "failed":
            key, unit = UNITS[name]
            n = count(rec, key)
            floor = n * units[unit]
            floor_total += floor
            print(f"| {name} | {s:.1f} | {n} × {unit} | {floor:.1f} | {s / floor:.2f} | {q:.1f} |")
        else:
            print(f"| {name} | {s:.1f} | | | | {q:.1f} |")
    q_total = sum(r.get("seconds", 0.0) for r in quick.values())
    print(f"| **all measures** | **{total:.1f}** | | **{floor_total:.1f}** (counted) | | **{q_total:.1f}** |")
    print(f"\nwall of the analyze calls (figures off): default {runs[False][1]:.1f} s, --quick {runs[True][1]:.1f} s")
    print("\nWhat --quick gives up (its 1000-example subset, coarse grids, fewer products):\n")
    print("| value | default | --quick | relative difference |\n|---|---|---|---|")
    d, q = scalars(measures), scalars(quick)
    for k in d:
        if k in q and d[k]:
            print(f"| {k} | {d[k]:.4g} | {q[k]:.4g} | {(q[k] - d[k]) / abs(d[k]):+.1%} |")


if __name__ == "__main__":
    main()
