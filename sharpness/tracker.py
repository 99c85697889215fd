"""Curvature along training, from inside any training loop: ``tracker(model, step)`` every N steps.

    tracker = sh.SharpnessTracker("cross_entropy", train_set, every=100)
    for step, (x, y) in enumerate(loader, 1):
        ...; opt.step()
        tracker(model, step)          # a record every 100 steps, else nothing (and no cost)
    tracker.history                   # [{"step": 100, "lambda_max": ..., "mode": "train", ...}, ...]

Each measurement is of the mean loss over a fixed subset of the data (drawn once, seeded), the
Hessian's top eigenvalue(s) by Lanczos (:func:`~sharpness.curvature.hessian_eigenvalues`), optionally
the trace, ε-sharpness and the user's own measures. Lanczos is warm-started from the previous
measurement's top eigenvectors (their sum is the start vector: the weights move little between
measurements, so the start already lies near the top eigenspace and a few products settle it); the
first measurement starts from ``start_vector(op, seed)``. ``max_hvps`` caps each measurement's products.

Modes. BatchNorm and dropout make the Hessian depend on the mode: the default ``mode="train"`` measures
what training descends (BN with the subset's batch statistics, dropout masks fixed per batch by the
seed; see :mod:`sharpness.objective`); ``"eval"`` measures the model as evaluated. Each record says
which. The tracker never changes the model (parameters, buffers, train/eval mode), the optimizer, or
the global random state, so a run with a tracker trains exactly as one without.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn

from .batches import Batches
from .checks import require
from .curvature import HessianOperator, hessian_eigenvalues, hessian_trace
from .curvature.lanczos import MAX_HVPS, Krylov, start_vector
from .errors import SharpnessError
from .losses import make_loss
from .objective import SEED_MAX, Objective, check_module
from .threads import one_blas_thread

__all__ = ["SharpnessTracker", "TRACKED"]

TRACKED = ("lambda_max", "trace", "eps_sharpness")  # the built-in measures a tracker can take
RECORD_KEYS = ("step", "mode", "lambda_max", "top", "converged", "n_hvps", "warm", "seconds", "trace",
               "trace_stderr", "trace_converged", "eps_sharpness")  # what a record holds besides user measures


class SharpnessTracker:
    """λ_max (and optionally more) of a model every ``every`` steps of the caller's training loop.

    Args:
        loss_fn: a loss name, ``"pkg.module:fn"``, a loss module or callable (see :mod:`sharpness.losses`).
        data: the data to measure on (any form the :class:`~sharpness.objective.Objective` takes).
        every: measure when ``step % every == 0``.
        measures: from ``"lambda_max"`` (always taken), ``"trace"``, ``"eps_sharpness"``.
        k: top eigenvalues per measurement (``top`` in the record; ``lambda_max`` is the first).
        subset: examples drawn once (seeded) from ``data`` to measure on; None: all of it.
        mode: ``"train"`` (default: what training descends) or ``"eval"``.
        tol: Lanczos residual tolerance (relative, as :func:`hessian_eigenvalues`).
        max_hvps: products per eigenvalue measurement at most (the trace, if taken: max(max_hvps, 50)).
        warm_start: start Lanczos from the previous top eigenvectors (False: every time from the seed).
        user: extra measures, name → ``fn(objective) → float``; each record gets ``name: value``.
        seed: the subset draw, the first start vector, train-mode dropout masks.
        batch_size: evaluate the subset in batches of this size (memory only).
        loss_args, reduction: for the loss (see :func:`~sharpness.losses.make_loss`).
        **objective_args: ``batch_fn``, ``forward_fn``, ``params``, ``cache_bytes`` of the Objective.
    """

    def __init__(self, loss_fn: Any, data: Any, *, every: int = 100, measures: tuple | list = ("lambda_max",),
                 k: int = 1, subset: int | None = 1000, mode: str = "train", tol: float = 1e-3,
                 max_hvps: int = 100, warm_start: bool = True, user: dict[str, Callable] | None = None,
                 seed: int = 0, batch_size: int | None = None, loss_args: dict | None = None,
                 reduction: str | None = None, **objective_args: Any):
        require("every", every, int, ge=1, le=2**63 - 1)
        require("k", k, int, ge=1, le=1024)
        require("subset", subset, int, optional=True, ge=1)
        require("mode", mode, str, choices=("train", "eval"))
        require("tol", tol, float, gt=0)
        require("max_hvps", max_hvps, int, ge=2, le=MAX_HVPS)
        require("warm_start", warm_start, bool)
        require("seed", seed, int, ge=0, le=SEED_MAX)
        require("batch_size", batch_size, int, optional=True, ge=1)
        require("user", user, dict, optional=True)
        if not isinstance(measures, (list, tuple)) or not all(m in TRACKED for m in measures):
            raise SharpnessError(f"measures must be a list from {list(TRACKED)} (got {measures!r})")
        for name, fn in (user or {}).items():
            if not callable(fn):
                raise SharpnessError(f"user measure {name!r} must be callable (got {type(fn).__name__})")
            if name in RECORD_KEYS:
                raise SharpnessError(f"user measure {name!r} would overwrite the record's own key; rename it")
        unknown = sorted(set(objective_args) - {"batch_fn", "forward_fn", "params", "cache_bytes"})
        if unknown:
            raise SharpnessError(f"unknown argument(s) {', '.join(unknown)}; the Objective's are batch_fn, "
                                 "forward_fn, params, cache_bytes (and loss_args, reduction)")
        # the loss is made here, so a bad name fails now rather than at the first measurement
        self.loss_fn = make_loss(loss_fn, loss_args, reduction=reduction)
        self.every, self.k, self.mode, self.tol = every, k, mode, tol
        self.measures, self.max_hvps, self.warm_start, self.seed = tuple(measures), max_hvps, warm_start, seed
        self.user, self.subset, self.batch_size = dict(user or {}), subset, batch_size
        self.objective_args = objective_args
        self._raw = data
        self._data: Batches | None = None  # the subset, cached on the model's device at the first call
        self._vectors: torch.Tensor | None = None  # the last top eigenvectors (k × P)
        self.history: list[dict] = []

    def _objective(self, model: nn.Module) -> Objective:
        obj = Objective(model, self.loss_fn, self._data if self._data is not None else self._raw, mode=self.mode,
                        seed=self.seed, batch_size=self.batch_size, trainable_only=True, **self.objective_args)
        if self._data is None:  # first call: draw the subset once, keep it on the model's device
            obj = obj.subset(self.subset, self.seed, batch_size=self.batch_size)
            self._data = obj.data
        return obj

    @one_blas_thread
    def __call__(self, model: nn.Module, step: int) -> dict | None:
        """Measure at ``step`` if it is a multiple of ``every``; returns the record (None otherwise)."""
        require("step", step, int, ge=0, le=2**63 - 1)
        if step % self.every:
            return None
        check_module("model", model)
        t0 = time.perf_counter()
        obj = self._objective(model)
        op = HessianOperator(obj)
        warm = self.warm_start and self._vectors is not None and self._vectors.shape[1] == op.num_params
        start = self._vectors.sum(0) if warm else start_vector(op, self.seed)
        eig = hessian_eigenvalues(op, k=self.k, tol=self.tol, max_hvps=self.max_hvps, seed=self.seed,
                                  krylov=Krylov(op, start), copies=False, progress=False)
        self._vectors = eig.vectors
        record = {"step": step, "mode": self.mode, "lambda_max": float(eig.values[0]),
                  "top": eig.values.tolist(), "converged": eig.converged, "n_hvps": eig.n_hvps, "warm": warm}
        if "trace" in self.measures:
            tr = hessian_trace(op, rtol=1e-2, max_hvps=max(self.max_hvps, 50), seed=self.seed, progress=False)
            record.update(trace=tr.value, trace_stderr=tr.stderr, trace_converged=tr.converged,
                          n_hvps=record["n_hvps"] + tr.n_hvps)
        if "eps_sharpness" in self.measures:
            from .measures.keskar import eps_sharpness

            record["eps_sharpness"] = eps_sharpness(obj, eps=1e-3, max_iter=10, seed=self.seed).value
        for name, fn in self.user.items():
            record[name] = float(fn(obj))
        record["seconds"] = time.perf_counter() - t0
        self.history.append(record)
        return record

    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly: the history and the warm-start vectors."""
        return {"history": list(self.history), "vectors": None if self._vectors is None else self._vectors.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s output."""
        if not isinstance(state, dict):
            raise SharpnessError(f"tracker state must be a dict from state_dict() (got {type(state).__name__})")
        history, v = state.get("history", []), state.get("vectors")
        if not isinstance(history, list) or not all(
                isinstance(r, dict) and isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)
                for r in history):
            raise SharpnessError("tracker state: history must be a list of records, each with an integer step")
        if v is not None and not (isinstance(v, torch.Tensor) and v.dim() == 2 and v.is_floating_point()
                                  and v.numel() > 0 and bool(torch.isfinite(v).all())):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise SharpnessError(f"tracker state: vectors must be None or a finite (k × P) tensor (got {got})")
        self.history = list(history)
        self._vectors = v
