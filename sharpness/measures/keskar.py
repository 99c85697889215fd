"""Keskar et al. (ICLR 2017) ε-sharpness, Metric 2.1 (Eq. 3).

For parameters x ∈ ℝⁿ, training loss f and an n × p matrix A,

    C_ε = { z ∈ ℝᵖ : −ε(|(A⁺x)_i| + 1) ≤ z_i ≤ ε(|(A⁺x)_i| + 1) }
    φ_{x,f}(ε, A) = 100 · ( max_{y ∈ C_ε} f(x + A y) − f(x) ) / ( 1 + f(x) )

Full space: A = Iₙ. Random subspace: A has p random columns (p = 100 in the paper). The inner maximum
is solved inexactly, as in the paper, by L-BFGS-B with bounds, a fixed number of iterations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import nn

from ..checks import require
from ..objective import SEED_MAX, Objective, as_objective
from ..threads import one_blas_thread

__all__ = ["EpsSharpnessResult", "eps_sharpness"]


@dataclass
class EpsSharpnessResult:
    """φ_{x,f}(ε, A) with the values it was computed from and what it cost."""

    value: float                 # φ: 100·(f_max − f0)/(1 + f0)
    f0: float                    # f(x)
    f_max: float                 # best f(x + Ay) found in the box
    perturbation_norm: float     # ‖A y*‖ of the maximizing perturbation
    eps: float
    subspace_dim: int | None     # p, or None for the full space
    max_iter: int
    n_evals: int                 # loss+gradient passes over the data (f0 included)
    n_samples: int               # examples the loss was averaged over
    max_samples: int | None
    seconds: float
    seed: int
    start: str = "uniform random point in the box"
    subspace_draw: str = "normal"   # entries of A: N(0, 1) ("normal") or N(0, 1/n) ("unit")

    def to_dict(self) -> dict:
        """Plain-dict form for reports."""
        return dict(self.__dict__)


@one_blas_thread
def eps_sharpness(model: nn.Module | Objective, loss_fn: Callable | str | None = None, data: Any = None, *,
                  eps: float = 1e-3, subspace_dim: int | None = None, subspace_draw: str = "normal",
                  max_iter: int = 10, seed: int = 0,
                  max_samples: int | None = None, batch_size: int | None = None,
                  mode: str = "eval", **objective_args: Any) -> EpsSharpnessResult:
    """Keskar et al. 2017's ε-sharpness φ_{x,f}(ε, A) (Metric 2.1, Eq. 3) of ``model`` at its weights.

    The box constraint is C_ε above; f is the mean loss over all of ``data`` (or over a fixed, seeded
    subset of ``max_samples`` examples), computed on the model's device. The maximum over the box is
    found with scipy's L-BFGS-B (``maxiter=max_iter``; 10 in the paper), maximizing f(x + Ay).

    L-BFGS-B starts from a uniformly random point of the box, not from y = 0: at a minimizer the
    gradient at y = 0 vanishes and the optimizer would stop at once, reporting φ ≈ 0. The value
    returned is the largest f seen at any evaluated (feasible) point, so it is a lower bound on the
    true maximum, as in the paper.

    For the random subspace, A ∈ ℝ^{n×p} has i.i.d. N(0, 1) entries (seeded); A⁺ is its Moore–Penrose
    pseudo-inverse. The paper does not say how A is drawn ("randomly generated"); N(0, 1) entries are the
    plain reading of a random matrix, and the scale its Table 4 values (φ ≈ 0.1 for SB, ≈ 9 for LB at
    ε = 1e-3) suggest: a corner of the box ±ε(|A⁺x| + 1) moves the weights by ‖Ay‖ up to ≈ ε√(np). This
    reading is an inference, checked by the keskar experiment (figures/README.md). ``subspace_draw="unit"``
    draws N(0, 1/n) entries instead (columns of unit expected norm, like those of A = I; the default
    before), which keeps the subspace box on the scale of the full-space one and gives values ~10⁵
    smaller.

    Args:
        model: the network (never modified), or an :class:`~sharpness.objective.Objective`.
        loss_fn: a loss name, ``"pkg.module:fn"`` or callable (None: cross-entropy).
        data: training data: (X, y) tensors, a list of batches, a Dataset or a DataLoader.
        eps: ε (the paper uses 1e-3 and 5e-4).
        subspace_dim: p for a random subspace; None for the full space (A = I).
        subspace_draw: the entries of A: ``"normal"`` N(0, 1) (default) or ``"unit"`` N(0, 1/n).
        max_iter: L-BFGS-B iterations.
        seed: seeds the start point, the subspace and the data subset.
        max_samples: evaluate f on a fixed random subset of this many examples (None: all).
        batch_size: evaluate in batches of this size (memory only; the loss is the full mean).
        mode: BN/dropout behaviour, ``"eval"`` (default) or ``"train"``.
        **objective_args: ``batch_fn``, ``forward_fn``, ``loss_args`` of the Objective.
    """
    require("eps", eps, float, gt=0, le=1e3)  # beyond, the "neighbourhood" is 1000× the weights themselves
    require("subspace_dim", subspace_dim, int, optional=True, ge=1, le=10**6)
    require("subspace_draw", subspace_draw, str, choices=("normal", "unit"))
    require("max_iter", max_iter, int, ge=1, le=10**6)
    require("max_samples", max_samples, int, optional=True, ge=1)
    require("seed", seed, int, ge=0, le=SEED_MAX)
    require("batch_size", batch_size, int, optional=True, ge=1)
    require("mode", mode, str, choices=("eval", "train"))
    start = time.perf_counter()
    obj = as_objective(model, loss_fn, data, batch_size=batch_size, mode=mode, **objective_args)
    fm = obj.subset(max_samples, seed, batch_size=batch_size)
    require("subspace_dim", subspace_dim, int, optional=True, le=fm.num_params)  # A is n × p with p ≤ n
    x = fm.flat()
    gen = torch.Generator().manual_seed(seed)
    if subspace_dim is None:
        A = None
        half_width = eps * (x.abs() + 1)
    else:
        A = torch.randn(fm.num_params, subspace_dim, generator=gen, dtype=torch.float64)
        if subspace_draw == "unit":  # unit expected column norm, like the columns of A = I
            A /= math.sqrt(fm.num_params)
        A = A.to(fm.device)
        Ax_coords = torch.linalg.lstsq(A, x.double().unsqueeze(1)).solution.squeeze(1)  # A⁺x
        half_width = eps * (Ax_coords.abs() + 1)
        A = A.to(fm.dtype)
    hw = half_width.double().cpu().numpy()
    f0, _ = fm.loss_at(x)
    best = {"f": f0, "y": np.zeros_like(hw)}

    def perturb(y: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(y, device=fm.device, dtype=fm.dtype)
        return t if A is None else A @ t

    def neg_f(y: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = fm.loss_at(x + perturb(y), grad=True)
        if A is not None:
            g = A.T @ g
        if f > best["f"]:
            best["f"], best["y"] = f, y.copy()
        return -f, -g.double().cpu().numpy()

    rng = np.random.default_rng(seed)
    y0 = rng.uniform(-hw, hw)
    minimize(neg_f, y0, jac=True, method="L-BFGS-B", bounds=Bounds(-hw, hw),
             options={"maxiter": max_iter})
    f_max = best["f"]
    return EpsSharpnessResult(
        value=100.0 * (f_max - f0) / (1.0 + f0), f0=f0, f_max=f_max,
        perturbation_norm=float(perturb(best["y"]).norm()), eps=eps, subspace_dim=subspace_dim,
        max_iter=max_iter, n_evals=fm.n_evals, n_samples=fm.num_samples, max_samples=max_samples,
        seconds=time.perf_counter() - start, seed=seed, subspace_draw=subspace_draw)

