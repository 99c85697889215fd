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
import numbers
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.func import grad, vmap

from ..batches import index, length, split, tree_map
from ..checks import require
from ..distributed import all_sum, all_sum_floats
from ..errors import SharpnessError
from ..errors import short as _short
from ..model_state import preserved, set_mode
from ..objective import SEED_MAX, Objective, as_objective

MAX_BATCH = 10**7  # a random batch of more examples than this is a typo (its index alone: 80 MB)

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


def _per_example(obj: Objective, chunk: int) -> tuple[float, float, int]:
    """Tr Σ, |G|² and N from every example's gradient (vmap over examples, ``chunk`` at a time)."""
    params = {n: p.detach() for n, p in zip(obj.names, obj.params)}

    def loss_one(p, inputs, targets, extra):
        one = lambda t: t.unsqueeze(0)  # noqa: E731 - a batch of one example
        out = obj.output(0, tree_map(one, inputs), p)
        return obj.loss.total(out, tree_map(one, targets), tree_map(one, extra))

    per_grad = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))
    g_sum, sq_sum, n = None, 0.0, 0
    with preserved(obj.model):
        set_mode(obj.model, obj.mode)
        for _, inputs, targets, extra, _ in obj.batches():
            for part in split((inputs, targets, extra), chunk):
                gs = per_grad(params, *part)
                m = length(part)
                flat = torch.cat([g.reshape(m, -1) for g in gs.values()], dim=1).double()
                sq_sum += float((flat ** 2).sum())
                g_sum = flat.sum(0) if g_sum is None else g_sum + flat.sum(0)
                n += m
    sq_sum, n = all_sum_floats([sq_sum, n], obj.world, obj.device)  # data-parallel: all ranks' examples
    G = all_sum(g_sum, obj.world) / n
    g2 = float(G @ G)
    return sq_sum / n - g2, g2, n


def gradient_noise_scale(model: nn.Module | Objective, loss_fn: Callable | str | None = None, data: Any = None, *,
                         batch_sizes: tuple[int, int] | str | None = None, n_batches: int = 32,
                         chunk: int = 256, seed: int = 0, mode: str = "eval",
                         **objective_args: Any) -> NoiseScaleResult:
    """McCandlish et al. 2018's simple noise scale B_simple = tr(Σ)/|G|² of the loss over ``data``.

    Args:
        model: the network (never modified), or an :class:`~sharpness.objective.Objective`.
        loss_fn: a loss name, ``"pkg.module:fn"`` or callable (None: cross-entropy).
        data: training data: (X, y) tensors, a list of batches, a Dataset or a DataLoader.
        batch_sizes: ``"per-example"`` (exact) or (B_small, B_big) for the two-batch estimator.
            None: per-example for models up to 5 M parameters, else (32, min(N, 1024)).
        n_batches: random batches of each size for the two-batch estimator.
        chunk: examples per vmap call in the per-example estimator (memory).
        seed: seeds the random batches.
        mode: BN/dropout behaviour (eval by default; per-example gradients need eval-mode BN).
        **objective_args: ``batch_fn``, ``forward_fn``, ``loss_args`` of the Objective.
    """
    if not (batch_sizes is None or batch_sizes == "per-example" or (
            isinstance(batch_sizes, (tuple, list)) and len(batch_sizes) == 2
            and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in batch_sizes)
            and 1 <= batch_sizes[0] < batch_sizes[1] <= MAX_BATCH)):
        raise SharpnessError(f"batch_sizes must be None, 'per-example' or (small, big) integers with "
                             f"1 ≤ small < big ≤ {MAX_BATCH} (got {_short(batch_sizes)})")
    require("n_batches", n_batches, int, ge=2, le=10**5)  # the jackknife needs two pairs of batches
    require("chunk", chunk, int, ge=1, le=10**6)
    require("seed", seed, int, ge=0, le=SEED_MAX)
    require("mode", mode, str, choices=("eval", "train"))
    start = time.perf_counter()
    obj = as_objective(model, loss_fn, data, mode=mode, **objective_args)
    n_params = obj.num_params
    if batch_sizes is None:
        batch_sizes = "per-example" if n_params <= 5_000_000 else None
    if batch_sizes == "per-example":
        if obj.mode == "train":
            raise SharpnessError("per-example gradients need mode='eval' (train-mode BN mixes examples)")
        tr, g2, n = _per_example(obj, chunk)
        return NoiseScaleResult(b_simple=tr / g2, trace_sigma=tr, grad_norm_sq=g2, stderr=0.0,
                                method="per-example", batch_sizes=[1], n_batches=n, n_samples=n,
                                seconds=time.perf_counter() - start, seed=seed)
    examples = obj.examples()
    n = length(examples)
    small, big = batch_sizes if batch_sizes is not None else (32, min(n, 1024))
    if not 0 < small < big:
        raise SharpnessError(f"batch_sizes must be (small, big) with 0 < small < big (got {batch_sizes}; the data "
                             f"hold {n} examples)")
    gen = torch.Generator().manual_seed(seed)
    norms = {small: [], big: []}
    for _ in range(n_batches):
        for b in (small, big):
            idx = torch.randint(0, n, (b,), generator=gen)
            g = obj.with_data(index(examples, idx)).gradient()
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
