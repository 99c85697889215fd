"""ε-sharpness cost and an SB-vs-LB table on MNIST-1D (MLP 40-512-512-10, 8000 training samples).

    python benchmarks/measures.py [--sb-epochs 30 --lb-epochs 100]

Trains one small-batch (B=32) and one large-batch (B=800, 10 % of the training set, as in Keskar et al.)
model with Adam 1e-3 (one seed), then reports for each: train loss, test accuracy, ε-sharpness at
ε = 1e-3 and 5e-4 in the full space and a p = 100 random subspace (seconds and loss+gradient passes),
adaptive sharpness, and B_simple.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import sharpness as sh
from sharpness.measures import adaptive_sharpness, eps_sharpness, gradient_noise_scale


def run(batch_size: int, epochs: int):
    cfg = sh.TrainConfig(dataset="mnist1d", data_args={"num_samples": 10000}, model="mlp",
                         model_args={"widths": [512, 512]}, batch_size=batch_size, lr=1e-3, optimizer="adam",
                         epochs=epochs, seed=0, save_every=0)
    t = time.perf_counter()
    ckpt = sh.train_model(cfg, f"runs/bench-measures-B{batch_size}-E{epochs}", progress=False)
    return ckpt, time.perf_counter() - t


def main():
    sh.keep_freed_memory()  # one process, one allocator setting for ours and the peers alike
    p = argparse.ArgumentParser()
    p.add_argument("--sb-epochs", type=int, default=30)
    p.add_argument("--lb-epochs", type=int, default=100)
    a = p.parse_args()
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows = []
    for label, bs, ep in (("SB", 32, a.sb_epochs), ("LB", 800, a.lb_epochs)):
        ckpt, t_train = run(bs, ep)
        model = ckpt.model()
        train, _ = ckpt.datasets()
        last = ckpt.history[-1]
        print(f"\n## {label}: B={bs}, {ep} epochs ({ckpt.step} updates, trained in {t_train:.0f} s): "
              f"train loss {last['train_loss']:.4f}, train acc {last['train_acc']:.3f}, "
              f"test acc {last['test_acc']:.3f}")
        row = {"label": label, "B": bs, "train_loss": last["train_loss"], "test_acc": last["test_acc"]}
        print("| measure | value | seconds | loss+grad passes |\n|---|---|---|---|")
        for eps in (1e-3, 5e-4):
            for p_dim in (None, 100):
                r = eps_sharpness(model, None, train, eps=eps, subspace_dim=p_dim, max_iter=10, seed=0)
                where = "full space" if p_dim is None else f"p = {p_dim}"
                print(f"| ε-sharpness ε={eps:g}, {where} | {r.value:.3f} | {r.seconds:.1f} | {r.n_evals} |")
                row[f"eps{eps:g}_{'full' if p_dim is None else 'sub'}"] = r.value
        for kind in ("worst", "average"):
            r = adaptive_sharpness(model, None, train, rho=0.05 if kind == "worst" else 0.1, kind=kind, norm="l2")
            print(f"| adaptive sharpness {kind} (l2, ρ={r.rho}) | {r.value:.4f} ± {r.stderr:.4f} | {r.seconds:.1f} | {r.n_evals} (batch passes) |")
            row[f"adaptive_{kind}"] = r.value
        g = gradient_noise_scale(model, None, train)
        print(f"| gradient noise scale B_simple (per-example) | {g.b_simple:.1f} | {g.seconds:.1f} | 1 |")
        row["b_simple"] = g.b_simple
        rows.append(row)
    print("\n| run | B | train loss | test acc | φ ε=1e-3 full | φ ε=5e-4 full | φ ε=1e-3 p=100 | φ ε=5e-4 p=100 "
          "| adaptive worst | adaptive avg | B_simple |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['B']} | {r['train_loss']:.4f} | {100 * r['test_acc']:.1f} % | "
              f"{r['eps0.001_full']:.2f} | {r['eps0.0005_full']:.2f} | {r['eps0.001_sub']:.3f} | "
              f"{r['eps0.0005_sub']:.3f} | {r['adaptive_worst']:.4f} | {r['adaptive_average']:.4f} | "
              f"{r['b_simple']:.1f} |")


if __name__ == "__main__":
    main()
