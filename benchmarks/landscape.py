"""2D loss landscape: sharpness.surface vs loss-landscapes' random_plane vs a plain loop, in one process.

    python benchmarks/landscape.py                  # CPU: 41×41, MNIST-1D MLP 40-256-256-10, 4000 samples
    python benchmarks/landscape.py --device cuda    # GPU: the same grid, vmapped points vs a per-point loop

The plain loop is the floor: for each grid point, write θ₀ + aδ₁ + bδ₂ into the model in place and run
one full-data forward (loss and accuracy). loss-landscapes computes the loss only. Needs the ``peers``
extra (loss-landscapes).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch
from torch import nn

import sharpness as sh
from sharpness.landscape import random_directions, surface


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=1):
    best, out = np.inf, None
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return out, best


@torch.no_grad()
def plain_loop(model, x, y, D, axis):
    """The floor: in-place parameters, one forward per point."""
    m = copy.deepcopy(model).eval()
    theta0 = torch.nn.utils.parameters_to_vector(m.parameters())
    loss = np.zeros((len(axis), len(axis)))
    acc = np.zeros_like(loss)
    for i, a in enumerate(axis):
        for j, b in enumerate(axis):
            torch.nn.utils.vector_to_parameters(theta0 + a * D[0] + b * D[1], m.parameters())
            out = m(x)
            loss[i, j] = nn.functional.cross_entropy(out, y).item()
            acc[i, j] = (out.argmax(1) == y).float().mean().item()
    return loss, acc


def main():
    sh.keep_freed_memory()  # one process, one allocator setting for ours and the peers alike
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=41)
    p.add_argument("--vmap", action="store_true", help="the vmapped-points comparison (default on cuda)")
    a = p.parse_args()
    dev = a.device
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}" if dev == "cuda" else ""))
    cfg = sh.TrainConfig(dataset="mnist1d", model="mlp", model_args={"widths": [256, 256]}, batch_size=64,
                         epochs=10, seed=0)
    ckpt = sh.train_model(cfg, "runs/bench-landscape", progress=False)
    train, _ = ckpt.datasets()
    model = ckpt.model(dev)
    x, y = (t.to(dev) for t in train.tensors)
    steps = a.steps
    D = random_directions(model, 2, normalization="filter", seed=0)
    axis = np.linspace(-1, 1, steps)
    print(f"{steps}×{steps} grid, {sum(p.numel() for p in model.parameters()):,} parameters, {len(y)} samples, {dev}")

    surface(model, None, (x, y), directions=D, steps=3, progress=False)  # warm-up
    if dev == "cpu" and not a.vmap:
        import loss_landscapes
        import loss_landscapes.metrics

        metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), x, y)
        methods = {
            "sharpness.surface (loss + accuracy)":
                lambda: surface(model, None, (x, y), directions=D, steps=steps, progress=False),
            "plain loop of full-data forwards (floor)": lambda: plain_loop(model, x, y, D.vectors.to(dev), axis),
            "loss-landscapes random_plane (loss only)":
                lambda: loss_landscapes.random_plane(copy.deepcopy(model), metric, distance=1, steps=steps,
                                                     normalization="filter", deepcopy_model=True),
        }
        # Interleaved rounds, best of each: this 2-core machine's speed drifts by ±15 % minute to minute.
        best, outs = {k: np.inf for k in methods}, {}
        for _ in range(3):
            for name, fn in methods.items():
                outs[name], t = timed(fn, dev)
                best[name] = min(best[name], t)
        names = list(methods)
        assert np.allclose(outs[names[1]][0], outs[names[0]].loss, rtol=1e-4, atol=1e-5), "floor and ours disagree"
        t_ours, t_floor, t_ll = (best[n] for n in names)
        print("\n| method | seconds (best of 3) | × ours |\n|---|---|---|")
        for name in names:
            print(f"| {name} | {best[name]:.2f} | {best[name] / t_ours:.2f} |")
        print(f"\nours / floor = {t_ours / t_floor:.3f} (target ≤ 1.15); loss-landscapes / ours = {t_ll / t_ours:.2f}")
    else:
        per_point, t_pp = timed(lambda: surface(model, None, (x, y), directions=D, steps=steps,
                                                points_per_forward=1, progress=False), dev, 2)
        (l_floor, _), t_floor = timed(lambda: plain_loop(model, x, y, D.vectors.to(dev), axis), dev, 2)
        print("\n| method | seconds | × vmapped |\n|---|---|---|")
        results = {}
        for k in (16, 64, 256):
            s, t = timed(lambda: surface(model, None, (x, y), directions=D, steps=steps, points_per_forward=k,
                                         progress=False), dev, 2)
            assert np.allclose(s.loss, per_point.loss, rtol=1e-3, atol=1e-4)
            results[k] = t
        best_k = min(results, key=results.get)
        for k, t in results.items():
            print(f"| surface, {k} points per forward (vmap) | {t:.3f} | {t / results[best_k]:.2f} |")
        print(f"| surface, 1 point per forward | {t_pp:.3f} | {t_pp / results[best_k]:.2f} |")
        print(f"| plain per-point loop (in-place parameters) | {t_floor:.3f} | {t_floor / results[best_k]:.2f} |")
        print(f"\nper-point loop / vmapped = {t_floor / results[best_k]:.1f}× (target ≥ 5)")


if __name__ == "__main__":
    main()
