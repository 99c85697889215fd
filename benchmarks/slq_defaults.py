"""SLQ settings (runs × steps) against a long run: the curve behind ``spectral_density``'s defaults.

    python benchmarks/slq_defaults.py

Trains an MLP 40-256-256-10 on MNIST-1D (4000 examples, 5 epochs, seed 0), takes a 24 × 120 SLQ run as
the reference, and prints for each setting (mean over 3 seeds): the Wasserstein-1 distance between the
node measures (over the reference's node range), the relative error of the top node, and of the mass
above 1 % of λ_max (the outliers, a few per thousand of the spectrum).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np
from scipy.stats import wasserstein_distance

import sharpness as sh
from sharpness.curvature import HessianOperator, spectral_density

SETTINGS = [(2, 30), (3, 50), (5, 50), (10, 50), (2, 80), (3, 80), (4, 80), (10, 80), (2, 100)]


def measure(d):
    ok = ~np.isnan(d.nodes) & (d.weights > 0)
    return d.nodes[ok], (d.weights / len(d.nodes))[ok]


def main() -> None:
    cfg = sh.TrainConfig(dataset="mnist1d", data_args={"num_samples": 5000}, model="mlp",
                         model_args={"widths": [256, 256]}, epochs=5, batch_size=64, save_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = sh.train_model(cfg, tmp, progress=False)
    train, _ = sh.data.load_data(sh.specs.Spec("mnist1d", {"num_samples": 5000}))
    op = HessianOperator(ckpt.model("cpu"), "cross_entropy", train.tensors)
    rt, rw = measure(spectral_density(op, n_runs=24, steps=120, seed=100))
    top, span = rt.max(), rt.max() - rt.min()
    mass = rw[rt > 0.01 * top].sum()
    print(f"reference 24 × 120: top node {top:.4f}, mass above 1 % of it {mass:.2e}\n")
    print("| runs × steps | HVPs | W1 / range | top node rel err | outlier mass rel err | s |\n|---|---|---|---|---|---|")
    for runs, steps in SETTINGS:
        w1, tn, om, secs = [], [], [], []
        for seed in range(3):
            t = time.perf_counter()
            th, w = measure(spectral_density(op, n_runs=runs, steps=steps, seed=seed))
            secs.append(time.perf_counter() - t)
            w1.append(wasserstein_distance(th, rt, w, rw) / span)
            tn.append(abs(th.max() - top) / top)
            om.append(abs(w[th > 0.01 * top].sum() - mass) / mass)
        print(f"| {runs} × {steps} | {runs * steps} | {np.mean(w1):.2e} | {np.mean(tn):.1e} | {np.mean(om):.2f} | "
              f"{np.mean(secs):.1f} |")


if __name__ == "__main__":
    main()
