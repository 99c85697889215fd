"""The smallest Hessian eigenvalue on a near-zero cluster: products to converge, by strategy.

    python benchmarks/smallest.py

A trained network's Hessian has most of its eigenvalues in a cluster around zero, the smallest
(negative) one barely apart from the rest, so Lanczos needs many steps to resolve it. Measured here on
the quickstart SB model (MLP 40-512-512-10, MNIST-1D, batch 32, Adam 1e-3, 30 epochs; 8000 training
examples, one batch): products until the residual test of ``hessian_eigenvalues`` (tol 1e-3) passes,
for

- thick-restart Lanczos with a basis of 60 (the old default), 120 and no restart at all (one Krylov
  space, the most any polynomial method can do with that many products);
- a shift: Lanczos for the largest eigenvalue of σI − H, σ = λ_max (the same Krylov space: the same
  count, shown because it is the usual suggestion; it is what power iteration needs, not Lanczos);
- folding: the smallest eigenvalue of (H − τI)², τ = the estimate after 60 steps (squares the spread
  of the spectrum: slower, shown for the record).

Along each run the bound |θ − λ| ≤ ‖Hy − θy‖ (true for any symmetric H and unit y: the residual bounds
the distance from the Ritz value θ to the nearest eigenvalue) is printed, which is what ``analyze``
reports as ``error_bound`` for λ_min.
"""

from __future__ import annotations

import platform
import time

import numpy as np
import torch
from curvature import trained_mnist1d
from torch import nn

import sharpness as sh
from sharpness.curvature import HessianOperator, hessian_eigenvalues


class Shifted:
    """σI − H, or (H − τI)² with ``fold``: an operator for the same Lanczos code."""

    def __init__(self, op, sigma, fold=False):
        self.op, self.sigma, self.fold = op, sigma, fold
        self.num_params, self.device, self.dtype, self.n_hvps = op.num_params, op.device, op.dtype, 0

    def matmat(self, V):
        self.n_hvps += V.shape[1] * (2 if self.fold else 1)
        W = self.op.matmat(V) - self.sigma * V
        return self.op.matmat(W) - self.sigma * W if self.fold else -W

    def matvec(self, v):
        return self.matmat(v.reshape(-1, 1)).reshape(-1)


def main():
    sh.keep_freed_memory()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    model, data = trained_mnist1d("mlp", {"widths": [512, 512]}, 10000, epochs=30, batch_size=32)
    op = HessianOperator(model, nn.CrossEntropyLoss(), data)
    top = hessian_eigenvalues(op, k=1, tol=1e-6, progress=False)
    lam_max = float(top.values[0])
    print(f"λ_max = {lam_max:.6g}")
    rows = []
    for label, kw in (("thick restart, basis 60", {"max_basis": 60}),
                      ("thick restart, basis 120", {"max_basis": 120}),
                      ("no restart", {"max_basis": 600})):
        t = time.perf_counter()
        r = hessian_eigenvalues(op, k=1, which="smallest", tol=1e-3, max_hvps=600, progress=False, copies=False, **kw)
        rows.append((label, r.n_hvps, r.converged, float(r.values[-1]), float(r.residuals[-1]), time.perf_counter() - t))
    shifted = Shifted(op, lam_max)
    est = rows[-1][3]
    # the shifted value is σ − λ_min: its relative tolerance is set so the residual test matches the one above
    tol = 1e-3 * max(abs(est), 1e-3 * lam_max) / (lam_max - est)
    t = time.perf_counter()
    r = hessian_eigenvalues(shifted, k=1, which="largest", tol=tol, max_hvps=600, max_basis=60,
                            progress=False, copies=False)
    rows.append(("shift σI − H, basis 60", shifted.n_hvps, r.converged, lam_max - float(r.values[0]),
                 float(r.residuals[0]), time.perf_counter() - t))
    tau = rows[0][3]
    folded = Shifted(op, tau, fold=True)
    t = time.perf_counter()
    r = hessian_eigenvalues(folded, k=1, which="smallest", tol=1e-3, max_hvps=600, max_basis=60,
                            progress=False, copies=False)
    rows.append((f"fold (H − τI)², τ = {tau:.4g}, basis 60", folded.n_hvps, r.converged, float("nan"),
                 float(np.sqrt(max(r.residuals[-1], 0))), time.perf_counter() - t))
    print("\n| strategy | HVPs | converged | λ_min | residual (bounds the error) | s |")
    print("|---|---|---|---|---|---|")
    for label, n, ok, lam, res, s in rows:
        print(f"| {label} | {n} | {ok} | {lam:.6g} | {res:.1e} | {s:.1f} |")


if __name__ == "__main__":
    main()
