"""SharpnessTracker's overhead in a plain training loop: the quickstart SB run, λ_max every 100 updates.

    python benchmarks/tracker.py [--epochs 5] [--every 100]

The quickstart's SB run (MLP 40-512-512-10 on MNIST-1D, 8000 training examples, batch 32, Adam 1e-3), as
a user would write it, three times from the same seed: without a tracker, with the tracker's defaults
(1000-example subset, training mode, tol 1e-3, warm start), with the warm start off, and with a
256-example subset at tol 1e-2 (what a 10 % budget asks of this fast loop). Reported: the
training time of each, the overhead, and the products per measurement. Training is the same in all three
(the tracker changes neither the model nor the random state: checked here too).
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from torch import nn

import sharpness as sh


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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--every", type=int, default=100)
    a = p.parse_args()
    sh.keep_freed_memory()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    x, y = sh.load_data("mnist1d", num_samples=10000)[0].tensors
    run(x, y, 1)  # warm-up
    base, m0 = run(x, y, a.epochs)
    print(f"\nquickstart SB loop, {a.epochs} epochs ({a.epochs * 250} updates), λ_max every {a.every} updates\n")
    print("| tracker | training s | overhead | measurements | HVPs per measurement (after the first) | s each |")
    print("|---|---|---|---|---|---|")
    print(f"| none | {base:.1f} | — | — | — | — |")
    for warm, subset, tol in ((True, 1000, 1e-3), (False, 1000, 1e-3), (True, 256, 1e-2)):
        t = sh.SharpnessTracker("cross_entropy", (x, y), every=a.every, warm_start=warm, subset=subset, tol=tol)
        secs, m = run(x, y, a.epochs, t)
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m0.parameters())), "the tracker changed training"
        h = [r["n_hvps"] for r in t.history[1:]]
        each = np.mean([r["seconds"] for r in t.history])
        what = f"{'warm' if warm else 'cold'} start, subset {subset}, tol {tol:g}"
        print(f"| {what} | {secs:.1f} | {secs / base - 1:+.1%} | "
              f"{len(t.history)} | {np.mean(h):.1f} (min {min(h)}, max {max(h)}) | {each:.2f} |")
    last = t.history[-1]
    print(f"\nlast record: λ_max {last['lambda_max']:.4g} ({last['mode']} mode), converged {last['converged']}")


if __name__ == "__main__":
    main()
