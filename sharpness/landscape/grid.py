"""Loss and accuracy on lines and planes through parameter space; resumable grids; BatchNorm modes.

    surface:      L(θ₀ + a·δ₁ [+ b·δ₂]) on a 1D or 2D grid (Li et al. 2018: 51×51 on [−1, 1]²)
    interpolate:  L(θ(α)), θ(α) = (1−α)θ_a + αθ_b (Goodfellow et al. 2015; Keskar et al. 2017 Fig. 3),
                  or Keskar's curved path θ(α) = cos(απ/2)θ_a + sin(απ/2)θ_b (Fig. 7)

Parameters live in one flat device tensor; each point is θ₀ + a·δ₁ + b·δ₂ fed to
``torch.func.functional_call``, so the caller's model is never written to and no module is rebuilt.
Several points can share one forward through ``vmap`` (``points_per_forward``), which pays on GPUs.

BatchNorm running statistics, named in every result:
- ``frozen``: the centre model's statistics at every point (for ``interpolate``: model a's);
- ``interpolate`` (``interpolate`` only): statistics follow the path, (1−α)·buf_a + α·buf_b;
- ``recompute``: re-estimated at each point from the training data (reset, then a cumulative average
  over batches in train mode, as ``torch.optim.swa_utils.update_bn`` and mode-connectivity work do).
"""

from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..checks import require
from ..distributed import all_sum, from_main
from ..errors import SharpnessError
from ..errors import short as _short
from ..io import write_npz
from ..model_state import preserved
from ..objective import SEED_MAX, Objective, as_objective, check_module
from ..progress import progress_bar
from .directions import Directions, as_directions

__all__ = ["Surface", "Interpolation", "surface", "interpolate", "recompute_bn_buffers"]

BN_MODES = ("frozen", "interpolate", "recompute")
MAX_POINTS = 10**6  # grid points (steps^dims) or α values of one call: more is no figure, and an hour per 10⁵


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def recompute_bn_buffers(obj: Objective, theta: torch.Tensor, bn_data: Objective) -> dict[str, torch.Tensor]:
    """BN running statistics re-estimated at θ: reset, then one train-mode pass averaging all batches.

    Works on copies of the buffers (the caller's model keeps its own), batches weighted equally as in
    ``torch.optim.swa_utils.update_bn`` (momentum None: a cumulative average).
    """
    model = obj.model
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for n, _ in bns:
        prefix = f"{n}." if n else ""
        buffers[prefix + "running_mean"].zero_()
        buffers[prefix + "running_var"].fill_(1.0)
        buffers[prefix + "num_batches_tracked"].zero_()
    momenta = [(m, m.momentum) for _, m in bns]
    with preserved(model), torch.no_grad():
        try:
            for _, m in bns:
                m.momentum = None
            model.train()
            for i, inputs, _, _, _ in bn_data.batches():
                obj.output(i, inputs, {**obj.state(theta), **buffers})
        finally:
            for m, mom in momenta:
                m.momentum = mom
    return buffers


class _Evaluator:
    """(loss, accuracy) at θ over one objective, with a BN mode; several points per forward via vmap."""

    def __init__(self, obj: Objective, bn: str, bn_data: Any, points_per_forward: int | None):
        self.obj = obj
        self.bn = bn if _has_bn(obj.model) else "frozen"
        self.bn_data = None
        if self.bn == "recompute":
            self.bn_data = bn_data if isinstance(bn_data, Objective) else (
                obj if bn_data is None else obj.with_data(bn_data, batch_size=256))
        self.k = (obj.points_per_forward() if points_per_forward is None else max(1, int(points_per_forward))) \
            if self.bn == "frozen" else 1

    def evaluate(self, thetas: torch.Tensor, buffers: list | None = None) -> list[tuple[float, float | None]]:
        """(loss, acc) for each row of ``thetas``."""
        obj = self.obj
        if self.bn == "recompute":
            buffers = [recompute_bn_buffers(obj, t, self.bn_data) for t in thetas]
        if buffers is not None:
            return [obj.evaluate(t, buffers[i]) for i, t in enumerate(thetas)]
        return obj.evaluate_many(thetas, self.k)


@dataclass
class Surface:
    """Loss and accuracy on a 1D or 2D grid around a centre model."""

    coords: list                  # [a] or [a, b]: the grid axes
    loss: np.ndarray              # shape (len(a),) or (len(a), len(b)); loss[i, j] at (a_i, b_j)
    acc: np.ndarray
    directions: Directions
    bn: str
    center_loss: float
    center_acc: float
    n_evals: int
    seconds: float
    path: str | None = None
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Scalars and settings for reports (arrays go to NPZ)."""
        return {"shape": list(self.loss.shape), "span": [float(self.coords[0][0]), float(self.coords[0][-1])],
                "bn": self.bn, "center_loss": self.center_loss, "center_acc": self.center_acc,
                "min_loss": float(np.nanmin(self.loss)), "max_loss": float(np.nanmax(self.loss)),
                "n_evals": self.n_evals, "seconds": self.seconds, "directions": self.directions.describe()}


def _axis(span: float | tuple[float, float], steps: int) -> np.ndarray:
    lo, hi = (-span, span) if np.isscalar(span) else span
    lo, hi = float(lo), float(hi)
    ax = np.linspace(lo, hi, steps)
    ax[np.abs(ax) < 1e-9 * (hi - lo)] = 0.0  # a grid point at the centre is the model itself, exactly
    return ax


def _check_grid(dims: Any, steps: Any, span: Any) -> None:
    require("dims", dims, int, choices=(1, 2))
    require("steps", steps, int, ge=2, le=100_001)
    if steps ** dims > MAX_POINTS:
        raise SharpnessError(f"steps={steps} with dims={dims} is a grid of {steps ** dims} points, more than "
                             f"{MAX_POINTS}; lower steps (Li et al. use 51 × 51)")
    pair = isinstance(span, (tuple, list)) and len(span) == 2
    lo, hi = (span if pair else (None, None)) if not isinstance(span, numbers.Real) else (-span, span)
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and abs(v) <= 1e6 for v in (lo, hi)) \
            or not lo < hi:  # 1e6 directions away is no landscape of this model: a typo, say so
        raise SharpnessError(f"span must be a number in (0, 1e6] or a pair lo < hi within ±1e6 (got {span!r})")


def surface(model: nn.Module | Objective, loss_fn: Callable | str | None = None, data: Any = None, *,
            directions: Any = "filter",
            dims: int = 2, span: float | tuple[float, float] = 1.0, steps: int = 51, bn: str = "frozen",
            bn_data: Any = None, batch_size: int | None = None, points_per_forward: int | None = None,
            out: str | Path | None = None, save_every: float = 10.0, seed: int = 0,
            progress: bool | None = None, split: str = "data", **objective_args: Any) -> Surface:
    """Loss and accuracy of ``model`` on a grid θ₀ + a·δ₁ (+ b·δ₂), a, b ∈ ``span``.

    Args:
        model: the centre model θ₀ (never modified), or an :class:`~sharpness.objective.Objective`.
        loss_fn: a loss name, ``"pkg.module:fn"`` or callable (None: cross-entropy).
        data: (X, y) tensors, a list of batches, a Dataset or a DataLoader: the loss is the mean over all.
        directions: ``"filter"`` (default), ``"layer"`` or ``"none"`` random directions (seeded,
            biases/BN ignored), a :class:`Directions`, or a (k × P) tensor.
        dims: 1 (a line) or 2 (a plane) when directions are drawn here.
        span: the grid covers [−span, span] (or the given (lo, hi)) on every axis.
        steps: points per axis (Li et al. use 51).
        bn: ``"frozen"`` or ``"recompute"`` (see the module docstring); ignored for models without BN.
        bn_data: data for ``recompute`` (default: ``data``).
        batch_size: evaluate in batches of this size (memory only).
        points_per_forward: grid points per forward via vmap (default on CUDA: up to 256, so that a
            forward sees about 2²⁰ examples; 1 on CPU, where batching points does not pay).
        out: an NPZ file for the results; a rerun with the same settings continues where it stopped.
        save_every: seconds between saves of ``out`` while the grid runs.
        seed: seed of random directions.
        progress: show a progress bar (None: only on a terminal).
        split: under torch.distributed, ``"data"`` (every rank evaluates every point on its share of the
            examples: large models) or ``"points"`` (every rank evaluates its share of the points on all
            the examples, vmapped: small models; BN ``recompute`` then sees all of ``bn_data`` as in one
            process; with ``"data"`` it is each rank's share). The grid is gathered on every rank and
            rank 0 writes ``out``.
        **objective_args: ``batch_fn``, ``forward_fn``, ``loss_args`` of the Objective.
    """
    require("split", split, str, choices=("data", "points"))
    if not isinstance(bn, str) or bn not in ("frozen", "recompute"):
        raise SharpnessError(f"surface supports bn='frozen' or 'recompute' (got {_short(bn)}); "
                             "'interpolate' belongs to interpolate()")
    _check_grid(dims, steps, span)
    require("batch_size", batch_size, int, optional=True, ge=1)
    require("points_per_forward", points_per_forward, int, optional=True, ge=1, le=MAX_POINTS)
    require("save_every", save_every, float, ge=0)
    require("seed", seed, int, ge=0, le=SEED_MAX)
    require("progress", progress, bool, optional=True)
    if out is not None and not (isinstance(out, (str, Path)) and str(out)):
        raise SharpnessError(f"out must be None or a file path (got {_short(out)})")
    start = time.perf_counter()
    obj = as_objective(model, loss_fn, data, batch_size=batch_size, **objective_args)
    model = obj.model
    D = as_directions(directions, model, dims, seed, params=obj.names)
    theta0 = obj.flat()
    V = D.vectors.to(device=theta0.device, dtype=theta0.dtype)
    if V.shape[1] != theta0.numel() or len(V) not in (1, 2):
        raise SharpnessError(f"need 1 or 2 directions of length {theta0.numel()} (got {tuple(V.shape)})")
    if not bool(torch.isfinite(V).all()) or bool((V.norm(dim=1) == 0).any()):  # a flat, meaningless surface
        raise SharpnessError("directions must be finite and nonzero (a zero direction draws a flat surface)")
    if steps ** len(V) > MAX_POINTS:
        raise SharpnessError(f"steps={steps} with {len(V)} directions is a grid of {steps ** len(V)} points, more "
                             f"than {MAX_POINTS}; lower steps")
    rank, world = obj.rank, obj.world
    by_points = split == "points" and world > 1
    if by_points:  # this rank: all the examples, a share of the points
        local = Objective(obj.model, data=obj.all, **{**obj._settings, "distributed": False})  # same batches
        ev = _Evaluator(local, bn, bn_data, points_per_forward)
    else:
        ev = _Evaluator(obj, bn, bn_data, points_per_forward)
    axes = [_axis(span, steps) for _ in range(len(V))]
    shape = tuple(len(a) for a in axes)
    loss, acc = np.full(shape, np.nan), np.full(shape, np.nan)
    done = np.zeros(shape, dtype=bool)
    meta = json.dumps({"axes": [a.tolist() for a in axes], "bn": ev.bn, "directions": D.describe(),
                       "num_samples": obj.num_samples})
    if out is not None and Path(out).exists():
        if not Path(out).is_file():
            raise SharpnessError(f"out {out}: not a file (the grid is saved as an NPZ file)")
        try:
            with np.load(out, allow_pickle=False) as z:
                if str(z["meta"]) == meta and np.array_equal(z["directions"], V.cpu().numpy()):
                    loss, acc, done = z["loss"].copy(), z["acc"].copy(), z["done"].copy()
        except Exception:  # not a grid this function wrote (or cut short): start afresh, overwrite it
            pass

    def save():
        if out is not None and obj.rank == 0:  # data-parallel: every rank holds the same grid; one writes it
            write_npz(out, {"loss": loss, "acc": acc, "done": done, "directions": V.cpu().numpy(),
                            "meta": np.array(meta), **{f"axis{i}": a for i, a in enumerate(axes)}})

    def gather():
        # by points: each rank holds its own points; sum the disjoint parts (NaN-free) into every rank's grid
        nonlocal loss, acc, done
        mine = done & ~seen
        parts = [np.where(mine, loss, 0.0), np.where(mine & ~np.isnan(acc), acc, 0.0), mine, mine & np.isnan(acc)]
        t = all_sum(torch.from_numpy(np.stack(parts).astype(np.float64)), world).numpy()
        new = t[2] > 0
        loss, acc = np.where(new, t[0], loss), np.where(new, np.where(t[3] > 0, np.nan, t[1]), acc)
        done = done | new
        seen[:] = done

    todo = [idx for idx in np.ndindex(*shape) if not done[idx]]
    seen = done.copy()
    coeffs = torch.tensor(np.array([[axes[d][i] for d, i in enumerate(idx)] for idx in todo]).reshape(-1, len(V)),
                          device=theta0.device, dtype=theta0.dtype)
    last_save = time.perf_counter()
    bar = progress_bar(progress if rank == 0 else False, total=done.size, initial=int(done.sum()),
                       desc="landscape", unit="pt")
    starts = list(range(0, len(todo), ev.k))
    rounds = [starts[r:r + world] for r in range(0, len(starts), world)] if by_points else [[s] for s in starts]
    try:
        for group in rounds:  # by points: one chunk per rank per round, then (maybe) a gather
            for s in group[rank:rank + 1] if by_points else group:
                thetas = theta0 + coeffs[s:s + ev.k] @ V
                for idx, (l_, a_) in zip(todo[s:s + ev.k], ev.evaluate(thetas)):
                    loss[idx], acc[idx], done[idx] = l_, np.nan if a_ is None else a_, True
            bar.update(sum(len(todo[s:s + ev.k]) for s in group))
            due = time.perf_counter() - last_save > save_every
            if from_main(due) if by_points else due:  # a gather is a collective: rank 0's clock decides
                if by_points:
                    gather()
                save()
                last_save = time.perf_counter()
    finally:  # Ctrl-C keeps what finished; the next run continues from it
        bar.close()
        if by_points:
            gather()
        save()
    zero = [np.flatnonzero(a == 0) for a in axes]
    centre = tuple(int(z[0]) for z in zero) if all(len(z) for z in zero) else None
    c_loss, c_acc = (loss[centre], acc[centre]) if centre else obj.evaluate(theta0)
    return Surface(coords=axes, loss=loss, acc=acc, directions=D, bn=ev.bn, center_loss=float(c_loss),
                   center_acc=float(np.nan if c_acc is None else c_acc), n_evals=obj.n_evals, seconds=time.perf_counter() - start,
                   path=None if out is None else str(out))


@dataclass
class Interpolation:
    """Loss and accuracy along the path between two models, per named data set."""

    alphas: np.ndarray
    loss: dict                    # name → array over alphas
    acc: dict
    path: str
    bn: str
    n_evals: int
    seconds: float

    def to_dict(self) -> dict:
        """Settings and endpoint values for reports (arrays go to NPZ)."""
        i0, i1 = int(np.flatnonzero(self.alphas == 0)[0]), int(np.flatnonzero(self.alphas == 1)[0])
        return {"path": self.path, "bn": self.bn, "n_points": len(self.alphas),
                "alpha_range": [float(self.alphas[0]), float(self.alphas[-1])],
                **{f"{k}_loss_at_0": float(v[i0]) for k, v in self.loss.items()},
                **{f"{k}_loss_at_1": float(v[i1]) for k, v in self.loss.items()},
                **{f"{k}_max_loss_between": float(v[i0:i1 + 1].max()) for k, v in self.loss.items()},
                "n_evals": self.n_evals, "seconds": self.seconds}


def _check_alphas(alphas: Any) -> np.ndarray:
    """The α values as a 1-D float array: 1 to 10⁶ finite real numbers, else one line naming ``alphas``."""
    values = alphas.detach().cpu().numpy() if isinstance(alphas, torch.Tensor) else alphas
    if isinstance(values, (str, bytes, dict)) or values is None:
        raise SharpnessError(f"alphas must be a 1-D list of finite numbers (got {_short(alphas)})")
    try:
        a = np.asarray(values)
        ok = a.ndim == 1 and a.dtype.kind in "fiu"
        a = a.astype(float) if ok else a
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok or not 1 <= len(a) <= MAX_POINTS or not np.isfinite(a).all() or np.abs(a).max() > 1e6:
        raise SharpnessError(f"alphas must be a 1-D list of 1 to {MAX_POINTS} finite numbers within ±1e6 "
                             f"(got {_short(alphas)})")
    return a


def _path_coefficients(alphas: np.ndarray, path: str) -> np.ndarray:
    """(c_a, c_b) per α with θ(α) = c_a·θ_a + c_b·θ_b; exact 0/1 at the endpoints."""
    if path == "linear":
        c = np.stack([1 - alphas, alphas], 1)
    elif path == "sin":
        c = np.stack([np.cos(alphas * math.pi / 2), np.sin(alphas * math.pi / 2)], 1)
        c[np.abs(c) < 1e-12] = 0.0  # cos(π/2) is 6e-17 in floating point: make the endpoint exact
        c[np.abs(c - 1) < 1e-12] = 1.0
    else:
        raise SharpnessError(f"path must be 'linear' or 'sin' (got {path!r})")
    return c


def _mix(name: str, a: torch.Tensor, b: torch.Tensor, ca: float, cb: float) -> torch.Tensor:
    """A buffer on the path; counters stay a's, and extrapolated variances are kept ≥ 0."""
    if not a.is_floating_point():
        return a
    mixed = ca * a + cb * b
    return mixed.clamp_min(0.0) if name.endswith("running_var") else mixed


def _endpoints(obj: Objective, model_b: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """θ_a and θ_b over the objective's parameters; the parameters outside θ (frozen) must agree."""
    named_b = dict(model_b.named_parameters())
    named_a = dict(obj.model.named_parameters())
    if set(named_a) != set(named_b) or any(named_a[k].shape != named_b[k].shape for k in named_a):
        raise SharpnessError(f"models differ in their parameters ({sum(p.numel() for p in named_a.values())} vs "
                             f"{sum(p.numel() for p in named_b.values())} values, or other names or shapes)")
    outside = [k for k in named_a if k not in obj.names and not torch.equal(named_a[k].detach(),
                                                                               named_b[k].detach().to(named_a[k]))]
    if outside:
        raise SharpnessError(f"parameters outside θ (frozen, or not in params=) differ between the models: "
                             f"{', '.join(outside[:5])}; the line would not join the two models")
    tb = torch.cat([named_b[k].detach().reshape(-1).to(named_a[k]) for k in obj.names])
    return obj.flat(), tb


def interpolate(model_a: nn.Module, model_b: nn.Module, loss_fn: Callable | str | None, datasets: dict[str, Any], *,
                alphas: Any = None, path: str = "linear", bn: str = "interpolate",
                batch_size: int | None = None, points_per_forward: int | None = None,
                progress: bool | None = None, **objective_args: Any) -> Interpolation:
    """Loss and accuracy along θ(α) between two models on every named data set (Keskar et al. 2017, Fig. 3).

    Args:
        model_a: θ_a (α = 0), e.g. the small-batch solution. Never modified.
        model_b: θ_b (α = 1), e.g. the large-batch solution. Never modified.
        loss_fn: a loss name, ``"pkg.module:fn"`` or callable (None: cross-entropy).
        datasets: name → data, e.g. ``{"train": train_set, "test": test_set}``; whole sets are used. A value
            may be an :class:`~sharpness.objective.Objective` of ``model_a`` (its loss and batching are used).
        alphas: the α values (default: 25 points on [−1, 2], as in Keskar et al.'s code); 0 and 1 are
            always included, so each endpoint reproduces its model's own loss exactly.
        path: ``"linear"`` ((1−α)θ_a + αθ_b) or ``"sin"`` (cos(απ/2)θ_a + sin(απ/2)θ_b, Fig. 7).
        bn: ``"interpolate"`` (default: buffers follow the same path), ``"frozen"`` (model a's) or
            ``"recompute"`` (re-estimated at each α on the first data set).
        batch_size: evaluate in batches of this size (memory only).
        points_per_forward: points per forward via vmap (frozen BN only; default as in :func:`surface`).
        progress: show a progress bar (None: only on a terminal).
        **objective_args: ``batch_fn``, ``forward_fn``, ``loss_args`` of the Objective.
    """
    check_module("model_a", model_a)
    check_module("model_b", model_b)
    require("bn", bn, str, choices=BN_MODES)
    require("path", path, str, choices=("linear", "sin"))
    require("batch_size", batch_size, int, optional=True, ge=1)
    require("points_per_forward", points_per_forward, int, optional=True, ge=1, le=MAX_POINTS)
    require("progress", progress, bool, optional=True)
    start = time.perf_counter()
    alphas = np.linspace(-1, 2, 25) if alphas is None else _check_alphas(alphas)
    alphas = np.union1d(alphas, [0.0, 1.0])
    if not isinstance(datasets, dict) or not datasets or not all(isinstance(n, str) for n in datasets):
        raise SharpnessError("datasets must be a non-empty dict: name → data, e.g. {'train': train_set}")
    objs = {n: d if isinstance(d, Objective) else Objective(model_a, loss_fn, d, batch_size=batch_size,
                                                            name=f"datasets[{n!r}]", **objective_args)
            for n, d in datasets.items()}
    for n, o in objs.items():
        if o.model is not model_a:
            raise SharpnessError(f"datasets[{n!r}]: an Objective of another model than model_a")
    evs = {n: _Evaluator(o, bn, objs[next(iter(objs))], points_per_forward) for n, o in objs.items()}
    ta, tb = _endpoints(objs[next(iter(objs))], model_b)
    coeff = _path_coefficients(alphas, path)
    C = torch.tensor(coeff, device=ta.device, dtype=ta.dtype)
    thetas = C[:, :1] * ta + C[:, 1:] * tb
    names = list(datasets)
    buffers = None
    if evs[names[0]].bn == "interpolate":
        ba, bb = dict(model_a.named_buffers()), dict(model_b.named_buffers())
        buffers = [{k: _mix(k, ba[k], bb[k], ca, cb) for k in ba} for ca, cb in coeff]
    loss = {n: np.zeros(len(alphas)) for n in names}
    acc = {n: np.zeros(len(alphas)) for n in names}
    bar = progress_bar(progress, total=len(alphas) * len(names), desc="interpolate", unit="pt")
    for n, ev in evs.items():
        k = ev.k if buffers is None else 1
        for s in range(0, len(alphas), k):
            res = ev.evaluate(thetas[s:s + k], None if buffers is None else buffers[s:s + k])
            for i, (l_, a_) in enumerate(res):
                loss[n][s + i], acc[n][s + i] = l_, np.nan if a_ is None else a_
            bar.update(len(res))
    bar.close()
    return Interpolation(alphas=alphas, loss=loss, acc=acc, path=path, bn=evs[names[0]].bn,
                         n_evals=sum(ev.obj.n_evals for ev in evs.values()), seconds=time.perf_counter() - start)
