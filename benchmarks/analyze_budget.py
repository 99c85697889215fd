"""``analyze`` with default settings: each measure's seconds beside its arithmetic floor on this machine.

    python benchmarks/analyze_budget.py [--checkpoint CKPT]
    python benchmarks/analyze_budget.py --resnet18 50000 --device cuda --batch-size 1000 \
        --settings '{"landscape2d": {"steps": 11}}' --no-quick          # the GPU check of issue 16

Default checkpoint: the quickstart SB model (MLP 40-512-512-10, MNIST-1D, batch 32, Adam 1e-3, 30
epochs; 8000 training examples), trained on first use into ``runs/`` (about 2 minutes on 2 cores).
``--resnet18 N``: torchvision's ResNet-18 (10 classes, random weights, BN statistics from 10 training
batches) on N random CIFAR-shaped examples.

Each measure's work is counted from ``report.json`` in the passes it is made of — forwards over the
training data (a loss at one point: PAC-Bayes draws, landscape points), loss-and-gradient passes
(ε-sharpness's L-BFGS-B evaluations) and Hessian-vector products (the curvature measures) — and each
kind of pass is timed alone on the same model and data. The floor, Σ count × time per pass, is what the
measure would cost if it did nothing but those passes; measured ÷ floor is the overhead. The matrix
product rate (8000 × 512 × 512, float32) says how near a forward runs to what the cores can do.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch
from curvature import trained_mnist1d
from products import best
from torch import nn

import sharpness as sh
from sharpness.curvature import HessianOperator

# measure → (summary or details key with its count, unit); landscape counts are grid points
UNITS = {"eigenvalues": ("n_hvps", "hvp"), "trace": ("n_hvps", "hvp"), "density": ("n_hvps", "hvp"),
         "eps_sharpness": ("n_evals", "gradient"), "pacbayes": ("n_evals", "forward"),
         "landscape1d": ("points", "forward"), "landscape2d": ("points", "forward")}


def unit_costs(model, X, y, batch_size):
    """Seconds per forward, per loss-and-gradient pass and per Hessian-vector product over all of (X, y)."""
    loss = nn.CrossEntropyLoss(reduction="sum")
    device = next(model.parameters()).device
    parts = list(zip(X.split(batch_size or len(X)), y.split(batch_size or len(X))))
    params = list(model.parameters())
    model.eval()

    def timed(f):  # the best of six (the first warms up), synchronized on CUDA
        return best(f, device, rounds=6)

    with torch.no_grad():
        fwd = timed(lambda: [loss(model(x.to(device)), t.to(device)) for x, t in parts])
    grad = timed(lambda: [torch.autograd.grad(loss(model(x.to(device)), t.to(device)), params) for x, t in parts])
    op = HessianOperator(model, nn.CrossEntropyLoss(), (X, y), batch_size=batch_size)
    v = torch.randn(op.num_params, device=device)
    hvp = timed(lambda: op.matvec(v))
    a, b = torch.randn(8000, 512, device=device), torch.randn(512, 512, device=device)
    gflops = 2 * 8000 * 512 * 512 / timed(lambda: a @ b) / 1e9
    return {"forward": fwd, "gradient": grad, "hvp": hvp}, gflops


def resnet18_checkpoint(n: int, folder: str):
    """torchvision's ResNet-18 on n random CIFAR-shaped examples, as a checkpoint analyze can read."""
    import torchvision

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    sh.register_data("bench_random_cifar", lambda: ((X, y), None))
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    with torch.no_grad():  # BN running statistics of the data, as after training
        for x in X[:10 * 256].split(256):
            model(x)
    torch.save(model.state_dict(), f"{folder}/resnet18.pt")
    return sh.load_checkpoint(f"{folder}/resnet18.pt", model=model, data="bench_random_cifar")


def count(rec: dict, key: str) -> int:
    if key == "points":  # in passes over all the training examples: the surface has a subset of its own
        n = rec["details"].get("n_samples")
        share = n / rec["details"]["n_train"] if n and rec["details"].get("n_train") else 1.0
        return int(torch.tensor(rec["details"]["shape"]).prod() * share)
    return int(rec["summary"].get(key) or rec["details"].get(key))


def scalars(measures: dict) -> dict:
    """measure/key → value for every plain number in the measures' summaries."""
    return {f"{m}/{k}": v for m, rec in measures.items() for k, v in rec.get("summary", {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("n_")}


SHOWN = ("eigenvalues/lambda_max", "trace/value", "eps_sharpness/eps0.001_full", "adaptive/worst",
         "noise_scale/b_simple", "pacbayes/flatness", "landscape2d/max_loss")


def sweep(ckpt, budgets, full, a):
    """analyze(budget=S), figures on, per S: wall time, the values with their error bars against the default
    run's, and what the budget skipped or stepped down."""
    print("\nThe budget sweep (wall time of analyze(budget=S) with figures; values ± their error bars; the "
          "default run's beside them):\n")
    print("| budget s | wall s | wall ÷ budget | curvature examples | skipped | "
          + " | ".join(SHOWN) + " |\n|" + "---|" * (5 + len(SHOWN)))
    print("| default | | | all | | " + " | ".join(_cell(full, k) for k in SHOWN) + " |")
    for b in budgets:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            report = sh.analyze(ckpt, out=out, progress=False, budget=b, device=a.device, batch_size=a.batch_size)
            wall = time.perf_counter() - start
        ms = next(iter(report.data["checkpoints"].values()))["measures"]
        skipped = [n for n, r in ms.items() if r.get("status") == "skipped"]
        n = report.data["plan"]["curvature_examples"][0]
        print(f"| {b:g} | {wall:.1f} | {wall / b:.2f} | {n} | {', '.join(skipped) or '—'} | "
              + " | ".join(_cell(ms, k) for k in SHOWN) + " |")


def _cell(measures: dict, key: str) -> str:
    m, k = key.split("/")
    r = measures.get(m, {})
    v, e = r.get("summary", {}).get(k), r.get("errors", {}).get(k)
    if not isinstance(v, (int, float)):
        return "—"
    return f"{v:.4g}" + (f" ± {e:.2g}" if isinstance(e, (int, float)) and e > 0 else "")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", help="a checkpoint to analyze (default: the quickstart SB model)")
    p.add_argument("--resnet18", type=int, metavar="N", help="ResNet-18 on N random CIFAR-shaped examples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="analyze's batch size (memory)")
    p.add_argument("--settings", default="{}", help="per-measure settings over the defaults, as JSON")
    p.add_argument("--measures", default=None, help="comma-separated measures (default: all)")
    p.add_argument("--no-quick", action="store_true", help="skip the --quick comparison")
    p.add_argument("--budgets", default="", metavar="S,S,...",
                   help="the budget sweep: analyze(budget=S) for each, against the default run (figures on)")
    a = p.parse_args()
    sh.keep_freed_memory()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}" if a.device.startswith("cuda") else ""))
    tmp = tempfile.TemporaryDirectory()
    if a.resnet18:
        ckpt = resnet18_checkpoint(a.resnet18, tmp.name)
    elif a.checkpoint:
        ckpt = sh.load_checkpoint(a.checkpoint)
    else:
        trained_mnist1d("mlp", {"widths": [512, 512]}, 10000, epochs=30, batch_size=32)
        ckpt = sh.load_checkpoint("runs/bench-mlp-10000-30/final.pt")
    model, (X, y) = ckpt.model(a.device), ckpt.datasets()[0].tensors
    settings = json.loads(a.settings)
    before, gflops = unit_costs(model, X, y, a.batch_size)
    runs = {}
    for quick in (False,) if a.no_quick else (False, True):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            report = sh.analyze(ckpt, out=out, progress=False, figures=False, quick=quick, device=a.device,
                                batch_size=a.batch_size, settings=settings or None,
                                measures=a.measures.split(",") if a.measures else None)
            runs[quick] = next(iter(report.data["checkpoints"].values()))["measures"], time.perf_counter() - start
    after, _ = unit_costs(model, X, y, a.batch_size)  # the machine's speed drifts: the mean of the two timings
    units = {k: (before[k] + after[k]) / 2 for k in before}
    print(f"{len(y)} training examples; per pass over them (before, after analyze): "
          + ", ".join(f"{k} {before[k] * 1e3:.1f}, {after[k] * 1e3:.1f} ms" for k in units)
          + f"; matrix products {gflops:.0f} GFLOP/s" + (f"; settings {settings}" if settings else ""))
    runs.setdefault(True, ({}, float("nan")))
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
            ratio = f"{s / floor:.2f}" if floor > 0 else "—"  # none: the density reading the shared run
            print(f"| {name} | {s:.1f} | {n} × {unit} | {floor:.1f} | {ratio} | {q:.1f} |")
        else:
            print(f"| {name} | {s:.1f} | | | | {q:.1f} |")
    q_total = sum(r.get("seconds", 0.0) for r in quick.values())
    print(f"| **all measures** | **{total:.1f}** | | **{floor_total:.1f}** (counted) | | **{q_total:.1f}** |")
    print(f"\nwall of the analyze calls (figures off): default {runs[False][1]:.1f} s, --quick {runs[True][1]:.1f} s")
    if a.budgets:
        sweep(ckpt, [float(b) for b in a.budgets.split(",")], measures, a)
    if a.no_quick:
        return
    print("\nWhat --quick gives up (its 1000-example subset, coarse grids, fewer products):\n")
    print("| value | default | --quick | relative difference |\n|---|---|---|---|")
    d, q = scalars(measures), scalars(quick)
    for k in d:
        if k in q and d[k]:
            print(f"| {k} | {d[k]:.4g} | {q[k]:.4g} | {(q[k] - d[k]) / abs(d[k]):+.1%} |")


if __name__ == "__main__":
    main()
