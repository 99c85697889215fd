"""The gradient noise scale B_simple of McCandlish et al. 2018 ("An Empirical Model of Large-Batch Training").

    B_simple = tr(Σ) / |G|²,

G the full-batch gradient and Σ the per-example gradient covariance. The critical batch size is
about B_simple: below it, doubling the batch nearly halves the steps needed; above it, it buys little.

Two estimators:
- ``"per-example"``: exact, from every example's gradient (``torch.func.vmap(grad)``), with
  Σ = (1/N) Σ_i (g_i − G)(g_i − G)ᵀ (the population covariance, matching batches drawn with
  replacement, for which E|G_B|² = |G|² + tr(Σ)/B exactly);
- two batch sizes (McCandlish, Appendix A): from the mean squared gradient norms of random batches
  (drawn with replacement) of sizes B_small and B_big,
      |G|² ≈ (B_big|G_big|² − B_small|G_small|²)/(B_big − B_small),
      tr Σ ≈ (|G_small|² − |G_big|²)/(1/B_small − 1/B_big);
  the standard error is a jackknife over the pairs of batches.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..curvature.operator import batches_on_device
from ..functional import FlatModel
from ..model_state import preserved, set_mode

__all__ = ["NoiseScaleResult", "gradient_noise_scale"]


@dataclass
class NoiseScaleResult:
    """B_simple and its parts."""

    b_simple: float          # tr(Σ)/|G|²
    trace_sigma: float       # tr(Σ)
    grad_norm_sq: float      # |G|²
    stderr: float            # of b_simple (0 for the exact per-example value)
    method: str              # "per-example" or "two-batch"
    batch_sizes: list
    n_batches: int
    n_samples: int
    seconds: float
    seed: int

    def to_dict(self) -> dict:
        """Plain-dict form for reports."""
        return dict(self.__dict__)


def _per_example(model, loss_fn, data, chunk: int, mode: str) -> tuple[float, float, int]:
    x_all, y_all = _stack(data, next(model.parameters()).device)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss_one(p, x, y):
        out = functional_call(model, {**p, **buffers}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_grad = vmap(grad(loss_one), in_dims=(None, 0, 0))
    n = len(y_all)
    g_sum = None
    sq_sum = 0.0
    with preserved(model):
        set_mode(model, mode)
        for xb, yb in zip(x_all.split(chunk), y_all.split(chunk)):
            gs = per_grad(params, xb, yb)
            flat = torch.cat([g.reshape(len(yb), -1) for g in gs.values()], dim=1)
            sq_sum += float((flat.double() ** 2).sum())
            s = flat.double().sum(0)
            g_sum = s if g_sum is None else g_sum + s
    G = g_sum / n
    g2 = float(G @ G)
    return sq_sum / n - g2, g2, n


def _stack(data, device) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``data`` as one (X, y) pair on ``device``, whatever form it came in."""
    batches = batches_on_device(data, None, device)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def gradient_noise_scale(model: nn.Module, loss_fn: Callable | None, data: Any, *,
                         batch_sizes: tuple[int, int] | str | None = None, n_batches: int = 32,
                         chunk: int = 256, seed: int = 0, mode: str = "eval") -> NoiseScaleResult:
    """McCandlish et al. 2018's simple noise scale B_simple = tr(Σ)/|G|² of the loss over ``data``.

    Args:
        model: the network (never modified).
        loss_fn: ``loss_fn(output, y)`` → mean loss (None: cross-entropy).
        data: training data: (X, y) tensors, a Dataset or a DataLoader.
        batch_sizes: ``"per-example"`` (exact) or (B_small, B_big) for the two-batch estimator.
            None: per-example for models up to 5 M parameters, else (32, min(N, 1024)).
        n_batches: random batches of each size for the two-batch estimator.
        chunk: examples per vmap call in the per-example estimator (memory).
        seed: seeds the random batches.
        mode: BN/dropout behaviour (eval by default; per-example gradients need eval-mode BN).
    """
    start = time.perf_counter()
    loss_fn = loss_fn or nn.functional.cross_entropy
    n_params = sum(p.numel() for p in model.parameters())
    if batch_sizes is None:
        batch_sizes = "per-example" if n_params <= 5_000_000 else None
    if batch_sizes == "per-example":
        tr, g2, n = _per_example(model, loss_fn, data, chunk, mode)
        return NoiseScaleResult(b_simple=tr / g2, trace_sigma=tr, grad_norm_sq=g2, stderr=0.0,
                                method="per-example", batch_sizes=[1], n_batches=n, n_samples=n,
                                seconds=time.perf_counter() - start, seed=seed)
    x_all, y_all = _stack(data, next(model.parameters()).device)
    n = len(y_all)
    small, big = batch_sizes if batch_sizes is not None else (32, min(n, 1024))
    if not 0 < small < big:
        raise ValueError(f"batch_sizes must be (small, big) with 0 < small < big (got {batch_sizes})")
    gen = torch.Generator().manual_seed(seed)
    norms = {small: [], big: []}
    for _ in range(n_batches):
        for b in (small, big):
            idx = torch.randint(0, n, (b,), generator=gen).to(x_all.device)
            fm = FlatModel(model, loss_fn, (x_all[idx], y_all[idx]), mode=mode)
            g = fm.loss(fm.x0, grad=True)[1]
            norms[b].append(float(g.double() @ g.double()))
    s, l_ = np.array(norms[small]), np.array(norms[big])

    def estimate(s_mean, l_mean):
        g2 = (big * l_mean - small * s_mean) / (big - small)
        tr = (s_mean - l_mean) / (1 / small - 1 / big)
        return tr, g2

    tr, g2 = estimate(s.mean(), l_.mean())
    jack = [np.divide(*estimate(np.delete(s, i).mean(), np.delete(l_, i).mean())) for i in range(n_batches)]
    stderr = float(math.sqrt((n_batches - 1) / n_batches * np.sum((np.array(jack) - np.mean(jack)) ** 2)))
    return NoiseScaleResult(b_simple=tr / g2, trace_sigma=float(tr), grad_norm_sq=float(g2), stderr=stderr,
                            method="two-batch", batch_sizes=[small, big], n_batches=n_batches, n_samples=n,
                            seconds=time.perf_counter() - start, seed=seed)
