"""Hessian-vector products: block routes and kept graphs, against single products and a gradient.

    python benchmarks/products.py                  # CPU: MNIST-1D MLP 40-256-256-10
    python benchmarks/products.py --device cuda    # GPU: torchvision ResNet-18, CIFAR-shaped data

1. Cost per vector of ``matmat`` with m = 1, 4, 16, 64 columns, for the two block routes ("loop": m
   backward passes through one graph; "vmap": one vectorized backward, ``is_grads_batched``), relative to
   m separate ``matvec`` calls, with the data in one batch and in several (graphs kept and not kept).
   The two routes' products are compared too (max relative difference).
2. One product over data in several batches, relative to one gradient over the same data: graphs not
   kept (``graph_bytes=0``: a forward and a double backward per batch and product) and kept (default).

Timings are the best of three rounds (this machine's speed drifts); the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

import sharpness as sh
from sharpness.curvature import HessianOperator


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best(fn, device, rounds=3):
    times = []
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def model_and_data(device, n):
    if torch.device(device).type == "cuda":
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10)
        x, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
        return model.to(device).eval(), (x, y), "torchvision ResNet-18, random CIFAR-shaped data"
    data = sh.load_data("mnist1d", num_samples=n + n // 4)[0].tensors
    torch.manual_seed(0)
    model = sh.build_model("mlp", input_shape=(40,), num_classes=10, widths=[256, 256])
    return model, (data[0][:n], data[1][:n]), "MNIST-1D MLP 40-256-256-10 (random init)"


def blocks(model, data, device, batch_size, widths, graph_bytes):
    loss = nn.CrossEntropyLoss()
    ops = {r: HessianOperator(model, loss, data, batch_size=batch_size, block=r, graph_bytes=graph_bytes)
           for r in ("loop", "vmap")}
    P = ops["loop"].num_params
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for m in widths:
        V = torch.randn(P, m, device=device, generator=gen)
        for op in ops.values():
            op.matmat(V[:, :1])  # warm-up; keeps the graphs where they are kept
        single = best(lambda: [ops["loop"].matvec(V[:, j]) for j in range(m)], device)
        times = {r: best(lambda: op.matmat(V), device) for r, op in ops.items()}
        a, b = ops["loop"].matmat(V), ops["vmap"].matmat(V)
        diff = float((a - b).norm() / a.norm())
        rows.append((m, single / m, times["loop"] / single, times["vmap"] / single, diff))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--samples", type=int, default=None, help="examples (CPU 4000, CUDA 8192)")
    p.add_argument("--widths", default="1,4,16,64")
    a = p.parse_args()
    sh.keep_freed_memory()
    cuda = torch.device(a.device).type == "cuda"
    n = a.samples or (8192 if cuda else 4000)
    widths = [int(w) for w in a.widths.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}" + (f", {torch.cuda.get_device_name()}" if cuda else ""))
    model, (x, y), name = model_and_data(a.device, n)
    data = (x.to(a.device), y.to(a.device))
    batch = n // 4
    print(f"\n## {name}, {n} examples: cost per vector of matmat(m), × m single products\n")
    print("| data | graphs | m | one product, ms | loop route | vmap route | routes differ by |")
    print("|---|---|---|---|---|---|---|")
    for label, bs, gb in (("one batch", None, None), (f"4 batches of {batch}", batch, None),
                          (f"4 batches of {batch}", batch, 0.0)):
        kept = "kept" if gb is None else "not kept"
        for m, one, loop, vmap, diff in blocks(model, data, a.device, bs, widths, gb):
            print(f"| {label} | {kept} | {m} | {one * 1e3:.1f} | {loop:.2f}× | {vmap:.2f}× | {diff:.1e} |")

    print(f"\n## one product over {2 * n} examples in batches of {n // 4}, × one gradient\n")
    x2, y2 = torch.cat([x, x.flip(0)]), torch.cat([y, y.flip(0)])
    data2 = (x2.to(a.device), y2.to(a.device))
    print("| graphs | HVP / gradient | HVP ms | gradient ms | kept MB |")
    print("|---|---|---|---|---|")
    for gb in (0.0, None):
        op = HessianOperator(model, nn.CrossEntropyLoss(), data2, batch_size=n // 4, graph_bytes=gb)
        v = torch.randn(op.num_params, device=a.device)
        op.matvec(v), op.gradient()
        reps = 5
        t_grad = best(lambda: [op.gradient() for _ in range(reps)], a.device) / reps
        t_hvp = best(lambda: [op.matvec(v) for _ in range(reps)], a.device) / reps
        mb = op._kept["bytes"] / 2**20
        print(f"| {'not kept (graph_bytes=0)' if gb == 0 else 'kept (default budget)'} | {t_hvp / t_grad:.2f}× | "
              f"{t_hvp * 1e3:.1f} | {t_grad * 1e3:.1f} | {mb:.0f} |")


if __name__ == "__main__":
    main()
