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
from ..distributed import all_sum
from ..errors import SharpnessError
from ..errors import short as _short
from ..model_state import preserved, set_mode
from ..objective import SEED_MAX, Objective, as_objective
from ..threads import one_blas_thread

MAX_BATCH = 10**7  # a random batch of more examples than this is a typo (its index alone: 80 MB)

__all__ = ["NoiseScaleResult", "gradient_noise_scale"]


@dataclass
class NoiseScaleResult:
    """B_simple and its parts."""

    b_simple: float          # tr(Σ)/|G|²
    trace_sigma: float       # tr(Σ)
    grad_norm_sq: float      # |G|²
    stderr: float            # of b_simple: per-example, a jackknife over groups of examples (their sampling
                             # error); two-batch, a jackknife over the pairs of random batches
    method: str              # "per-example" or "two-batch"
    batch_sizes: list
    n_batches: int
    n_samples: int
    seconds: float
    seed: int
    trace_sigma_stderr: float = 0.0   # the same jackknife's, of tr(Σ) and |G|²
    grad_norm_sq_stderr: float = 0.0

    def to_dict(self) -> dict:
        """Plain-dict form for reports."""
        return dict(self.__dict__)


def _jackknife(values: np.ndarray) -> float:
    g = len(values)
    return float(math.sqrt((g - 1) / g * np.sum((values - values.mean()) ** 2))) if g > 1 else 0.0


def _per_example(obj: Objective, chunk: int) -> tuple[float, float, int, tuple[float, float, float]]:
    """Tr Σ, |G|², N from every example's gradient (vmap over examples, ``chunk`` at a time), and errors.

    The errors are jackknife standard errors of (B_simple, tr Σ, |G|²) over up to 16 groups of examples
    (example i in group i mod g; g bounded so the groups' gradient sums take ≤ 256 MB).
    """
    params = {n: p.detach() for n, p in zip(obj.names, obj.params)}
    groups = int(max(2, min(16, 2**28 // (8 * max(1, obj.num_params)))))

    def loss_one(p, inputs, targets, extra):
        one = lambda t: t.unsqueeze(0)  # noqa: E731 - a batch of one example
        out = obj.output(0, tree_map(one, inputs), p)
        return obj.loss.total(out, tree_map(one, targets), tree_map(one, extra))

    per_grad = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))
    dev = obj.device
    sums = torch.zeros(groups, obj.num_params, dtype=torch.float64, device=dev)  # Σ g_i per group
    sq = torch.zeros(groups, dtype=torch.float64, device=dev)                    # Σ |g_i|² per group
    count = torch.zeros(groups, dtype=torch.float64, device=dev)
    seen = 0
    with preserved(obj.model):
        set_mode(obj.model, obj.mode)
        for _, inputs, targets, extra, _ in obj.batches():
            for part in split((inputs, targets, extra), chunk):
                gs = per_grad(params, *part)
                m = length(part)
                gid = (torch.arange(seen, seen + m, device=dev) + obj.rank) % groups
                at = 0
                for g in gs.values():  # per tensor: never an m × P copy in float64
                    flat = g.reshape(m, -1)
                    sq.index_add_(0, gid, flat.pow(2).sum(1, dtype=torch.float64))
                    sums[:, at:at + flat.shape[1]].index_add_(0, gid, flat.double())
                    at += flat.shape[1]
                count.index_add_(0, gid, torch.ones(m, dtype=torch.float64, device=dev))
                seen += m
    sums, sq, count = (all_sum(t, obj.world) for t in (sums, sq, count))  # data-parallel: all ranks' examples
    n = float(count.sum())
    S = sums.sum(0)
    SS, Ss, ss = float(S @ S), (sums @ S).cpu().numpy(), (sums * sums).sum(1).cpu().numpy()
    Q, q, c = float(sq.sum()), sq.cpu().numpy(), count.cpu().numpy()
    g2 = SS / n ** 2
    tr = Q / n - g2
    keep = c > 0
    nj = n - c[keep]
    g2j = (SS - 2 * Ss[keep] + ss[keep]) / nj ** 2   # |G|² without group j
    trj = (Q - q[keep]) / nj - g2j
    errs = (_jackknife(trj / g2j), _jackknife(trj), _jackknife(g2j)) if keep.sum() > 1 else (0.0, 0.0, 0.0)
    return tr, g2, int(n), errs


@one_blas_thread
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
        tr, g2, n, (se_b, se_tr, se_g2) = _per_example(obj, chunk)
        return NoiseScaleResult(b_simple=tr / g2, trace_sigma=tr, grad_norm_sq=g2, stderr=se_b,
                                method="per-example", batch_sizes=[1], n_batches=n, n_samples=n,
                                seconds=time.perf_counter() - start, seed=seed, trace_sigma_stderr=se_tr,
                                grad_norm_sq_stderr=se_g2)
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
    parts = np.array([estimate(np.delete(s, i).mean(), np.delete(l_, i).mean()) for i in range(n_batches)])
    return NoiseScaleResult(b_simple=tr / g2, trace_sigma=float(tr), grad_norm_sq=float(g2),
                            stderr=_jackknife(parts[:, 0] / parts[:, 1]),
                            method="two-batch", batch_sizes=[small, big], n_batches=n_batches, n_samples=n,
                            seconds=time.perf_counter() - start, seed=seed, trace_sigma_stderr=_jackknife(parts[:, 0]),
                            grad_norm_sq_stderr=_jackknife(parts[:, 1]))
