"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

References: Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019; PyHessian (Yao et al. 2020).

For a random unit vector v, m Lanczos steps give a tridiagonal T with eigenpairs (θ_i, s_i); the nodes
θ_i and weights w_i = s_{1,i}² form an m-point Gauss quadrature of the spectral measure seen from v:
Σ_i w_i f(θ_i) ≈ vᵀ f(H) v, exact for polynomials of degree < 2m. Averaging over runs estimates the
density φ(t) = (1/P) Σ_j δ(t − λ_j); each node is broadened into a Gaussian of width ``sigma``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import trapezoid

from ..checks import require
from ..errors import SharpnessError
from ..objective import SEED_MAX
from ..progress import progress_bar
from ..threads import one_blas_thread
from .lanczos import Krylov, check_krylov, start_vector
from .operator import as_operator

__all__ = ["DensityResult", "spectral_density", "quadrature", "smooth"]

MAX_GRID = 10**6  # grid points of a density: more is no figure, and (nodes × grid) is held at once
_BLOCK = 8  # SLQ runs advanced together (one matmat per step); memory holds this many Krylov bases


@dataclass
class DensityResult:
    """A smoothed spectral density on a grid, with the per-run quadrature nodes and weights."""

    grid: np.ndarray        # eigenvalue axis
    density: np.ndarray     # integrates to 1 over grid
    nodes: np.ndarray       # (n_runs, steps) Ritz values; NaN-padded where a run stopped early
    weights: np.ndarray     # (n_runs, steps) quadrature weights; each row sums to 1
    residuals: np.ndarray   # (n_runs, steps) ‖Hy − θy‖ = β_m·|s_m| of each Ritz pair: an eigenvalue within it
    sigma: float
    n_hvps: int
    seconds: float
    seed: int

    def moment(self, p: int) -> float:
        """The p-th moment estimate (1/P)·tr(Hᵖ) ≈ mean over runs of Σ_i w_i θ_iᵖ."""
        return float(np.nanmean(np.nansum(self.weights * self.nodes ** p, axis=1)))

    def to_dict(self) -> dict:
        """Scalars for reports (arrays go to NPZ)."""
        return {"sigma": self.sigma, "n_hvps": self.n_hvps, "seconds": self.seconds, "seed": self.seed,
                "n_runs": int(self.nodes.shape[0]), "steps": int(self.nodes.shape[1]),
                "min_node": float(np.nanmin(self.nodes)), "max_node": float(np.nanmax(self.nodes))}


def quadrature(alphas: np.ndarray, betas: np.ndarray, beta_next: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gauss quadrature nodes and weights from a Lanczos tridiagonal (α diagonal, β off-diagonal), and residuals.

    The Ritz residuals are β_next·|last component of each eigenvector| (Parlett 1998, §13.1;
    ``beta_next``: the norm of the step's remainder, 0 when the Krylov space closed).
    """
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, S = np.linalg.eigh(T)
    return theta, S[0] ** 2, abs(beta_next) * np.abs(S[-1])


def smooth(nodes: np.ndarray, weights: np.ndarray, sigma: float,
           grid: np.ndarray | None = None, grid_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density): SLQ nodes (runs × steps, NaN where a run stopped) broadened by Gaussians of width σ.

    Densities drawn side by side must share one absolute σ: a width relative to each model's own node
    range widens the density of the model with the larger spectrum and draws tails that are not there.
    Without ``grid``: the nodes' range ± 5σ. The density integrates to 1 over the grid.
    """
    require("sigma", sigma, float, gt=0)
    require("grid_size", grid_size, int, ge=2, le=MAX_GRID)
    try:
        nodes, weights = np.asarray(nodes, dtype=float), np.asarray(weights, dtype=float)
    except (TypeError, ValueError):
        raise SharpnessError("nodes and weights must be arrays of numbers (runs × steps)") from None
    if nodes.shape != weights.shape or nodes.ndim == 0:
        raise SharpnessError(f"nodes and weights must be two arrays of one shape, runs × steps (got "
                             f"{nodes.shape} and {weights.shape})")
    if grid is not None:
        grid = np.asarray(grid, dtype=float)
        if grid.ndim != 1 or not 2 <= len(grid) <= MAX_GRID or not np.isfinite(grid).all():
            raise SharpnessError(f"grid must be 2 to {MAX_GRID} finite values (got shape {grid.shape})")
    ok = ~np.isnan(nodes) & (weights > 0)
    if not ok.any():
        raise SharpnessError("no quadrature node with a positive weight to smooth")
    if grid is None:
        grid = np.linspace(nodes[ok].min() - 5 * sigma, nodes[ok].max() + 5 * sigma, grid_size)
    th, wt = nodes[ok], weights[ok] / len(nodes)
    density = (wt[:, None] * np.exp(-0.5 * ((grid[None, :] - th[:, None]) / sigma) ** 2)).sum(0)
    return grid, density / trapezoid(density, grid)


@one_blas_thread
def spectral_density(op, *, n_runs: int = 2, steps: int = 80, sigma: float | None = None,
                     grid_size: int = 1000, seed: int = 0, krylov: Krylov | None = None,
                     progress: bool | None = None) -> DensityResult:
    """Estimate the Hessian's eigenvalue density by SLQ.

    Defaults, from a measured accuracy-vs-cost curve (trained MLP 40-256-256-10 on 4000 MNIST-1D examples,
    against a 24 × 120 run, 3 seeds): the number of steps sets how well the few outliers are resolved
    (the mass above 1 % of λ_max: 33–36 % error at 30–50 steps whatever the runs, 6–10 % at 80), the
    runs matter little (2 × 80 = 160 products ≈ 10 × 80 = 800 on every error measured: Wasserstein
    distance to the reference, top node, outlier mass). So 2 × 80, in the library and in ``analyze``.

    Args:
        op: a :class:`HessianOperator`, an object with ``matvec``/``num_params``, or a square matrix.
        n_runs: independent runs (averaged), run r from ``start_vector(op, seed + r)`` (Gaussian, unit
            norm, so E[vvᵀ] = I/P); all runs are advanced together, one ``matmat`` per step.
        steps: Lanczos steps per run (products per run); capped at the dimension.
        sigma: Gaussian broadening; default 1 % of the node range.
        grid_size: points of the eigenvalue grid (which spans the nodes ± 5σ).
        seed: seed of the start vectors.
        krylov: a :class:`~sharpness.curvature.lanczos.Krylov` run on this operator from
            ``start_vector(op, seed)`` (shared with the eigenvalues and the trace): it stands in for the
            first run(s), extended to ``steps`` if shorter; the result is the one computed without it, to
            rounding.
        progress: show a progress bar (None: only on a terminal).
    """
    op = as_operator(op)
    require("n_runs", n_runs, int, ge=1, le=100_000)
    require("steps", steps, int, ge=2, le=100_000)  # the r × steps node arrays and r Krylov bases are held
    require("sigma", sigma, float, optional=True, gt=0)
    require("grid_size", grid_size, int, ge=2, le=MAX_GRID)
    require("seed", seed, int, ge=0, le=SEED_MAX)
    require("progress", progress, bool, optional=True)
    start, hvps0 = time.perf_counter(), getattr(op, "n_hvps", 0)
    check_krylov(krylov, op)
    steps = min(steps, op.num_params)
    nodes = np.full((n_runs, steps), np.nan)
    weights = np.zeros((n_runs, steps))
    residuals = np.full((n_runs, steps), np.nan)
    shared = min(krylov.runs, n_runs) if krylov is not None else 0
    bar = progress_bar(progress, total=steps * n_runs, desc="spectral density", unit="hvp")

    def blocks():  # the shared run(s), then blocks of runs advanced together (memory: _BLOCK bases)
        if shared:
            yield krylov, shared
        for first in range(shared, n_runs, _BLOCK):
            yield Krylov(op, torch.stack([start_vector(op, seed + r)
                                          for r in range(first, min(first + _BLOCK, n_runs))])), None

    i = 0
    for K, runs in blocks():
        for j in range(len(K), steps):
            K.extend(j + 1)
            bar.update(K.runs)
        for r in range(runs or K.runs):
            a = K.alphas(r)[:steps]
            theta, w, res = quadrature(a, K.betas(r)[:steps - 1], K.norms[len(a) - 1][r])
            nodes[i, :len(theta)], weights[i, :len(theta)], residuals[i, :len(theta)] = theta, w, res
            i += 1
    bar.close()
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    sigma = sigma or max(0.01 * (hi - lo), 1e-12 * max(1.0, abs(hi)))
    grid, density = smooth(nodes, weights, sigma, np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size))
    return DensityResult(grid=grid, density=density, nodes=nodes, weights=weights, residuals=residuals, sigma=float(sigma),
                         n_hvps=getattr(op, "n_hvps", 0) - hvps0, seconds=time.perf_counter() - start,
                         seed=seed)
