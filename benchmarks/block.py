"""Block Lanczos against single-vector Lanczos: products, passes over the data, seconds, accuracy.

    python benchmarks/block.py

Trained MNIST-1D MLP 40-256-256-10, 8000 examples in batches of 1000, top-5 at tol 1e-3, residual test
alone (``copies=False`` on both sides: the copy check is the same single-vector run after either). Two
data regimes: graphs kept (the default when they fit the memory budget: a product is a backward through a
stored graph, no pass over the data) and streamed (``graph_bytes=0``, what data past the budget or a
``DataLoader`` that reorders costs: every ``matmat`` runs a forward and a double backward per batch, for
all its columns at once), and streamed from a ``DataLoader`` that takes 20 ms to produce each batch of
1000 (a sleep standing in for image decoding and augmentation, where a pass costs more than its
products). Reference: ARPACK on the float64 operator (tol 1e-10). Each setting runs three
times, interleaved; the best time is kept.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch
from curvature import reference_eigs, trained_mnist1d
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

import sharpness as sh
from sharpness.curvature import HessianOperator, hessian_eigenvalues


def slow_collate(batch):
    time.sleep(0.02)  # decoding stand-in
    return default_collate(batch)


def run(model, data, graph_bytes, method, block_size):
    loader = isinstance(data, DataLoader)
    op = HessianOperator(model, nn.CrossEntropyLoss(), data, batch_size=None if loader else 1000,
                         graph_bytes=graph_bytes)
    calls = []
    matmat = op.matmat
    op.matmat = lambda X: (calls.append(X.shape[1]), matmat(X))[1]
    start = time.perf_counter()
    r = hessian_eigenvalues(op, k=5, tol=1e-3, method=method, block_size=block_size, copies=False)
    return time.perf_counter() - start, r, len(calls)


def main():
    sh.keep_freed_memory()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    model, data = trained_mnist1d("mlp", {"widths": [256, 256]}, 10000, epochs=10)
    ref = reference_eigs(model, data, 1000, 5)
    print(f"reference top-5: {np.array2string(ref, precision=6)}")
    settings = [("lanczos", None)] + [("block-lanczos", b) for b in (2, 4, 5, 8)]
    slow = DataLoader(TensorDataset(*data), batch_size=1000, collate_fn=slow_collate)
    for regime, d, gb in (("graphs kept", data, None), ("streamed (graph_bytes=0)", data, 0.0),
                          ("DataLoader, 20 ms per batch to load, streamed", slow, 0.0)):
        best = {}
        for _ in range(3):
            for method, b in settings:
                t, r, passes = run(model, d, gb, method, b)
                if (method, b) not in best or t < best[(method, b)][0]:
                    best[(method, b)] = (t, r, passes)
        base = best[("lanczos", None)][0]
        print(f"\n### {regime}\n\n| method | block | HVPs | passes | s | × lanczos | max rel err | converged |\n"
              "|---|---|---|---|---|---|---|---|")
        for (method, b), (t, r, passes) in best.items():
            err = np.max(np.abs(np.sort(r.values)[::-1] - ref) / np.abs(ref))
            print(f"| {method} | {b or 1} | {r.n_hvps} | {passes} | {t:.2f} | {t / base:.2f} | {err:.1e} | "
                  f"{r.converged} |")


if __name__ == "__main__":
    main()
