"""Adaptive sharpness (Kwon et al. 2021, ASAM; Andriushchenko et al. 2023), worst and average case.

With c = |w| (adaptive) or c = 1 (standard), over batches S of m training points:

    worst case   S_max^ρ = E_S [ max_{‖δ ⊙ c⁻¹‖_p ≤ ρ} L_S(w + δ) − L_S(w) ]
    average case S_avg^ρ = E_S E_δ [ L_S(w + δ) − L_S(w) ],  δ ~ N(0, ρ² diag(c²))  (p = 2)
                                                          δ ~ U([−ρc, ρc])         (p = ∞)

Because the perturbation is δ = c ⊙ u with u in a fixed ball, rescaling a ReLU network's layers
(θ_i, θ_{i+1}) → (αθ_i, θ_{i+1}/α) (Dinh et al. 2017) leaves the adaptive measures unchanged, while
Hessian eigenvalues and ε-sharpness change. The worst case is solved per batch by APGD (Croce & Hein
2020), as Andriushchenko et al. do: 20 steps, step size halved at checkpoints without progress.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..batches import split
from ..checks import require
from ..objective import SEED_MAX, Objective, as_objective
from ..threads import one_blas_thread

__all__ = ["AdaptiveSharpnessResult", "adaptive_sharpness"]


@dataclass
class AdaptiveSharpnessResult:
    """Adaptive (or standard) sharpness, averaged over batches, with per-batch values and cost."""

    value: float                  # mean over batches of (max or mean perturbed loss) − loss
    stderr: float                 # standard error over batches
    per_batch: list
    rho: float
    kind: str
    norm: str
    adaptive: bool
    n_samples: int
    batch_size: int
    steps: int                    # APGD steps (worst) or random draws per batch (average)
    n_evals: int                  # loss(+gradient) passes over a batch
    seconds: float
    seed: int

    def to_dict(self) -> dict:
        """Plain-dict form for reports."""
        return dict(self.__dict__)


def _project(u: torch.Tensor, rho: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return u.clamp(-rho, rho)
    n = u.norm()
    return u if n <= rho else u * (rho / n)


def _ascent_step(g: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return g.sign()
    return g / g.norm().clamp_min(1e-30)


def _draw(w: torch.Tensor, norm: str, gen: torch.Generator) -> torch.Tensor:
    """One average-case direction u: N(0, I) for l2, U([−1, 1]ᴾ) for linf (scaled by ρ and c by the caller)."""
    if norm == "l2":
        return torch.randn(w.numel(), generator=gen, dtype=torch.float64).to(w)
    return (torch.rand(w.numel(), generator=gen, dtype=torch.float64) * 2 - 1).to(w)


def _checkpoints(steps: int) -> set[int]:
    """APGD's step-size checkpoints: p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return {int(math.ceil(q * steps)) for q in p[1:] if q <= 1}


def _apgd(fm: Objective, w: torch.Tensor, c: torch.Tensor, rho: float, norm: str, steps: int,
          u0: torch.Tensor) -> float:
    """max_{‖u‖ ≤ ρ} L(w + c ⊙ u) by APGD (Croce & Hein 2020, Alg. 1); returns the best loss found."""
    def f_grad(u):
        f, g = fm.loss_at(w + c * u, grad=True)
        return f, c * g

    alpha, rho_check = 0.75, 0.75
    eta = 2.0 * rho
    marks = _checkpoints(steps)
    u_prev = u = _project(u0, rho, norm)
    f, g = f_grad(u)
    best_f, best_u, best_g = f, u, g
    last_mark, successes, eta_at_mark, best_at_mark = 0, 0, eta, best_f
    for k in range(steps):
        z = _project(u + eta * _ascent_step(g, norm), rho, norm)
        u_new = z if k == 0 else _project(u + alpha * (z - u) + (1 - alpha) * (u - u_prev), rho, norm)
        f_new, g_new = f_grad(u_new)
        successes += f_new > f
        u_prev, u, f, g = u, u_new, f_new, g_new
        if f > best_f:
            best_f, best_u, best_g = f, u, g
        if k + 1 in marks:
            too_few = successes < rho_check * (k + 1 - last_mark)
            stalled = eta == eta_at_mark and best_f == best_at_mark
            eta_at_mark, best_at_mark = eta, best_f
            if too_few or stalled:
                eta /= 2.0
                u, f, g = best_u, best_f, best_g  # restart from the best point with the smaller step
            successes, last_mark = 0, k + 1
    return best_f


@one_blas_thread
def adaptive_sharpness(model: nn.Module | Objective, loss_fn: Callable | str | None = None, data: Any = None,
                       rho: float = 0.05, *, kind: str = "worst", norm: str = "linf", adaptive: bool = True,
                       n_samples: int = 1024, batch_size: int = 128, steps: int = 20, seed: int = 0,
                       mode: str = "eval", **objective_args: Any) -> AdaptiveSharpnessResult:
    """Worst- or average-case (adaptive) sharpness, as defined by Andriushchenko et al. 2023.

    Args:
        model: the network (never modified), or an :class:`~sharpness.objective.Objective`.
        loss_fn: a loss name, ``"pkg.module:fn"`` or callable (None: cross-entropy).
        data: training data: (X, y) tensors, a list of batches, a Dataset or a DataLoader.
        rho: radius ρ of the perturbation ball in the c-scaled coordinates.
        kind: ``"worst"`` (APGD ascent per batch) or ``"average"`` (random perturbations).
        norm: ``"linf"`` or ``"l2"``.
        adaptive: c = |w| (True) or c = 1 (False).
        n_samples: a fixed, seeded subset of this many training points (1024 in the paper).
        batch_size: m, the batch the maximum/average is taken on (128 in the paper).
        steps: APGD steps (worst case) or random draws per batch (average case).
        seed: seeds the data subset and the random starts/draws.
        mode: BN/dropout behaviour, ``"eval"`` (default) or ``"train"``.
        **objective_args: ``batch_fn``, ``forward_fn``, ``loss_args`` of the Objective.
    """
    require("kind", kind, str, choices=("worst", "average"))
    require("norm", norm, str, choices=("linf", "l2"))
    require("rho", rho, float, gt=0, le=1e3)  # in units of |w|: beyond, not a neighbourhood of w
    require("adaptive", adaptive, bool)
    for name, v in (("n_samples", n_samples), ("batch_size", batch_size)):
        require(name, v, int, ge=1)
    require("steps", steps, int, ge=1, le=10**6)
    require("seed", seed, int, ge=0, le=SEED_MAX)
    require("mode", mode, str, choices=("eval", "train"))
    start = time.perf_counter()
    full = as_objective(model, loss_fn, data, mode=mode, **objective_args).subset(n_samples, seed)
    w = full.flat()
    c = w.abs() if adaptive else torch.ones_like(w)
    gen = torch.Generator().manual_seed(seed)
    values, evals = [], 0
    for chunk in split(full.examples(), batch_size):
        fm = full.with_data(chunk)
        f0, _ = fm.loss_at(w)
        if kind == "worst":
            u0 = torch.randn(w.numel(), generator=gen, dtype=torch.float64).to(w) * (rho * 1e-3)
            values.append(_apgd(fm, w, c, rho, norm, steps, u0) - f0)
        else:
            draws, k = [], fm.points_per_forward()
            for j in range(0, steps, k):  # k draws share a vmapped forward where that pays (CUDA)
                U = torch.stack([_draw(w, norm, gen) for _ in range(min(k, steps - j))]) * rho
                draws += [loss - f0 for loss, _ in fm.evaluate_many(w + c * U, k)]
            values.append(float(np.mean(draws)))
        evals += fm.n_evals
    v = np.array(values)
    return AdaptiveSharpnessResult(
        value=float(v.mean()), stderr=float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan,
        per_batch=v.tolist(), rho=rho, kind=kind, norm=norm, adaptive=adaptive,
        n_samples=full.num_samples, batch_size=batch_size, steps=steps, n_evals=evals,
        seconds=time.perf_counter() - start, seed=seed)
