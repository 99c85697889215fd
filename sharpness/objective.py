"""The objective every measure works on: a model's mean loss over a data set, as a function of θ.

    L(θ) = (1/N) Σ_{i=1..N} ℓ(f_θ(x_i), y_i)        (the reduction rules: :mod:`sharpness.losses`)

An :class:`Objective` holds the model, the :class:`~sharpness.losses.Loss`, the data
(:class:`~sharpness.batches.Batches`, the one data loop) and two small functions that adapt the toolkit
to the user's batches and model:

- ``batch_fn(batch) → (inputs, targets)`` or ``(inputs, targets, extra)``. Default: a tuple/list batch
  ``(x, y, *extra)``; a dict batch takes its ``"labels"`` (or ``"label"``, ``"targets"``, ``"target"``,
  ``"y"``) entry as targets and the rest as inputs. ``extra`` (e.g. sample weights) goes to the loss.
- ``forward_fn(model, inputs) → output``. Default: ``model(inputs)``, ``model(*inputs)`` for a
  tuple/list, ``model(**inputs)`` for a dict; of what the model returns, a tensor is the output, an
  object with a ``logits`` attribute (Hugging Face models) or a dict gives its ``"logits"`` (a dict
  without one: its only tensor), a tuple or list (``return_dict=False``) its first element.

θ is the parameters that require grad (``params=`` globs choose among them), so every measure of one
model works in one parameter space: frozen weights are part of the function, not of θ. Tied (shared)
parameters are one entry of θ, as ``model.named_parameters()`` lists them once.

Every analyzer — Hessian products, ε-sharpness, adaptive sharpness, the noise scale, landscapes,
interpolation — and the trainer's evaluation go through it: one data loop, one flat-parameter view
(:meth:`Objective.params`), one evaluator (:meth:`Objective.evaluate`).

Parameters at a point θ are passed with :func:`torch.func.functional_call` as views into one flat tensor
(ordered as ``model.named_parameters()``), so the caller's module is never written to.

Modes: ``"eval"`` (default: BN running statistics, no dropout) or ``"train"`` (batch statistics;
running statistics are never written — the forward runs on clones). In train mode every random draw
of a forward (dropout) is seeded with (``seed``, batch index), so two passes at the same θ see the same
masks and the objective is a deterministic function of θ: the Hessian of the loss with those masks
fixed. Without it, two products with one vector differ, and Lanczos would be meaningless.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, DistributedSampler

from .batches import Batches, cat, length
from .checks import require
from .distributed import all_sum, all_sum_floats, rank_and_world, shard
from .errors import SharpnessError, printable
from .losses import make_loss
from .model_state import preserved, set_mode

__all__ = ["Objective", "as_objective", "flat_params", "default_batch_fn", "default_forward", "model_output",
           "check_module", "SEED_MAX"]

SEED_MAX = 2**32 - 1  # every public seed: an integer in [0, SEED_MAX] (NumPy's and torch's seeds both take it)


def check_module(name: str, value: Any) -> nn.Module:
    """``value`` if it is an ``nn.Module``, else a one-line SharpnessError naming the argument."""
    if not isinstance(value, nn.Module):
        raise SharpnessError(f"{name} must be an nn.Module (got {printable(type(value).__name__, 80)})")
    return value


def check_theta(name: str, theta: Any, n: int) -> None:
    """A flat parameter vector of length ``n`` (a 1-D tensor), else a one-line SharpnessError."""
    if not isinstance(theta, torch.Tensor) or theta.dim() != 1 or theta.numel() != n:
        got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise SharpnessError(f"{name} must be a flat tensor of {n} parameters (got {printable(got, 80)})")


def _reason(e: BaseException) -> str:
    """An exception as one short line: its type and message, control characters escaped, capped."""
    return printable(f"{type(e).__name__}: {e}", 300)


_PASS_THROUGH = (SharpnessError, MemoryError, torch.OutOfMemoryError, KeyboardInterrupt, SystemExit)


def differentiable(total: torch.Tensor, loss_name: str) -> torch.Tensor:
    """``total`` if it carries a gradient graph to θ, else one line: the loss is detached from the parameters."""
    if not total.requires_grad:
        raise SharpnessError(f"loss '{printable(loss_name, 80)}' does not depend on the parameters: its value is "
                             "detached from the model's output (.detach(), .item(), NumPy or a no_grad block in the "
                             "loss or forward_fn); return a tensor computed from the output")
    return total


def denominator(norm: Any, loss_name: str, where: str) -> Any:
    """The data-set mean's denominator (N or Σ class weights), refused in one line when it is 0 or not finite."""
    value = float(norm)
    if not value > 0 or value == float("inf"):
        raise SharpnessError(f"{where}: the loss '{printable(loss_name, 80)}' has no examples to average over "
                             f"(its denominator Σ w_(y_i) is {value:g}: every class weight of the data's targets is "
                             "0, or every target is ignore_index); give nonzero class weights")
    return norm

_TARGET_KEYS = ("labels", "label", "targets", "target", "y")


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """``torch.backends.mha`` fast path off inside, restored after."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def flat_params(model: nn.Module, params: str | Iterable[str] | None = None,
                trainable_only: bool = True) -> torch.Tensor:
    """θ of ``model`` as one flat (detached, copied) tensor on its device.

    The parameters :func:`select_params` takes (default: every parameter that requires grad, in
    ``named_parameters`` order).
    """
    return torch.cat([p.detach().reshape(-1) for _, p in select_params(model, params, trainable_only)]).clone()


def default_batch_fn(batch: Any) -> tuple[Any, Any, tuple]:
    """``(x, y, *extra)`` or a dict with a labels/targets key → (inputs, targets, extra)."""
    if isinstance(batch, dict):
        for key in _TARGET_KEYS:
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key], ()
        raise SharpnessError(f"a dict batch needs one of the keys {', '.join(_TARGET_KEYS)} for the targets "
                             f"(keys: {', '.join(map(str, batch))}); or pass batch_fn=")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1], tuple(batch[2:])
    raise SharpnessError(f"cannot split a batch of type {type(batch).__name__} into inputs and targets; "
                         "pass batch_fn=")


def model_output(out: Any) -> Any:
    """The tensor a loss takes from what a model returned (see the module docstring), else a SharpnessError."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)  # Hugging Face ModelOutput (a dict too: its attribute first)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        tensors = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return out[tensors[0]]
        raise SharpnessError(f"the model returned a dict without 'logits' and with {len(tensors)} tensors "
                             f"({', '.join(map(str, tensors)) or 'none'}): pass forward_fn= to say which is the output")
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise SharpnessError(f"the model returned {type(out).__name__}, not a tensor, a dict with 'logits' or a tuple "
                         "starting with one: pass forward_fn= to say which is the output")


def default_forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """``model(x)``, ``model(*inputs)`` or ``model(**inputs)``, its output read by :func:`model_output`."""
    if isinstance(inputs, dict):
        out = model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        out = model(*inputs)
    else:
        out = model(inputs)
    return model_output(out)


class _Forward(nn.Module):
    """``forward_fn(model, inputs)`` as a module, so functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, forward_fn: Callable):
        super().__init__()
        self.m = model
        self.forward_fn = forward_fn

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.forward_fn(self.m, inputs)


def select_params(model: nn.Module, params: str | Iterable[str] | None,
                  trainable_only: bool = True) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs: those requiring grad (or all), or those of them matching glob patterns.

    Tied parameters come once (``named_parameters`` lists a shared tensor under its first name).
    """
    every = list(model.named_parameters())
    named = [(n, p) for n, p in every if p.requires_grad or not trainable_only]
    if not named:
        raise SharpnessError("the model has no parameters" + (" that require grad (all are frozen)"
                                                              if every else ""))
    if params is None:
        return named
    patterns = [params] if isinstance(params, str) else list(params)

    def matches(n: str) -> bool:
        return any(fnmatch.fnmatchcase(n, pat) for pat in patterns)

    chosen = [(n, p) for n, p in named if matches(n)]
    if not chosen:
        frozen = [n for n, p in every if matches(n) and not p.requires_grad]
        if frozen:
            raise SharpnessError(f"params {patterns} match only frozen parameters (requires_grad=False: "
                                 f"{', '.join(frozen[:5])}); unfreeze them to measure them")
        raise SharpnessError(f"no parameter matches {patterns}; names are e.g. {[n for n, _ in named[:5]]}")
    return chosen


class Objective:
    """The mean loss of ``model`` over all of ``data``, as a function of the (selected) parameters.

    Args:
        model: any ``nn.Module``; never modified (parameters, buffers and modes are as they were).
        loss: a name (``"cross_entropy"``, ``"mse"``, …), ``"pkg.module:fn"``, a loss module or any
            callable ``loss(output, targets, *extra)``; None: cross-entropy (see :mod:`sharpness.losses`).
        data: tensors, a list of batches, a Dataset or a DataLoader (see :mod:`sharpness.batches`).
        loss_args: keyword arguments of a named loss (e.g. ``{"label_smoothing": 0.1}``).
        batch_fn: batch → ``(inputs, targets[, extra])`` (default: see the module docstring).
        forward_fn: ``(model, inputs)`` → output (default: see the module docstring).
        batch_size: split in-memory data into batches of this size (memory only).
        mode: ``"eval"`` or ``"train"`` (see the module docstring).
        seed: seeds the per-batch random draws of train-mode forwards.
        params: parameter names or glob patterns to take as θ (None: every parameter that requires grad).
        trainable_only: take only parameters that require grad (default; False: frozen ones too).
        cache_bytes: device-memory budget for caching the data (see :class:`Batches`).
        reduction: for a plain-function loss: what its scalar is over a batch, ``"mean"`` or ``"sum"``.
        distributed: split the data over the ranks of the default process group and all-reduce every sum
            (see :mod:`sharpness.distributed`); None: when a group of more than one rank is initialized.
        name: what the data are called in messages (``"test data"``): a model that fails on them says so in
            one line naming them.
    """

    def __init__(self, model: nn.Module, loss: Any = None, data: Any = None, *, loss_args: dict | None = None,
                 batch_fn: Callable | None = None, forward_fn: Callable | None = None,
                 batch_size: int | None = None, mode: str = "eval", seed: int = 0,
                 params: str | Iterable[str] | None = None, trainable_only: bool = True,
                 cache_bytes: float | None = None, reduction: str | None = None, distributed: bool | None = None,
                 name: str = "data"):
        check_module("model", model)
        require("mode", mode, str, choices=("eval", "train"))
        if data is None:
            raise SharpnessError("no data given")
        require("name", name, str)
        require("loss_args", loss_args, dict, optional=True)
        require("batch_size", batch_size, int, optional=True, ge=1)
        require("seed", seed, int, ge=0, le=SEED_MAX)
        require("trainable_only", trainable_only, bool)
        require("cache_bytes", cache_bytes, float, optional=True, ge=0)
        require("distributed", distributed, bool, optional=True)
        if params is not None and not (isinstance(params, str) or (
                isinstance(params, (list, tuple)) and all(isinstance(p, str) for p in params))):
            raise SharpnessError(f"params must be a name pattern or a list of them (got {params!r})")
        for arg, fn in (("batch_fn", batch_fn), ("forward_fn", forward_fn)):
            if fn is not None and not callable(fn):
                raise SharpnessError(f"{arg} must be callable (got {type(fn).__name__})")
        self.model, self.mode, self.seed, self.name = model, mode, int(seed), name
        self.named_params = select_params(model, params, trainable_only)
        self.names = [n for n, _ in self.named_params]
        self.shapes = [p.shape for _, p in self.named_params]
        self.sizes = [p.numel() for _, p in self.named_params]
        first = self.named_params[0][1]
        self.device, self.dtype = first.device, first.dtype
        self.loss = make_loss(loss, loss_args, reduction=reduction)
        self.rank, self.world = rank_and_world() if distributed is not False else (0, 1)
        self.all = data if isinstance(data, Batches) else Batches(
            data, batch_size=batch_size, device=self.device, dtype=self.dtype, cache_bytes=cache_bytes)
        self.data = self.all
        self.per_rank_loader = self.world > 1 and isinstance(self.all.source, DataLoader)
        if self.per_rank_loader and not isinstance(self.all.source.sampler, DistributedSampler):
            warnings.warn("a DataLoader without a DistributedSampler under torch.distributed: every rank reads "
                          "all of it (means are right, but nothing is split); give the data or the Dataset "
                          "instead and each rank takes its share", stacklevel=2)
        if self.world > 1 and not self.per_rank_loader:
            # This rank's examples; a user's DataLoader is this rank's shard already (its sampler's).
            n = len(self.all.source) if self.all.num_samples is None else self.all.num_samples  # a Dataset
            if n < self.world:  # nothing worth splitting (a tail batch, say): every rank takes them all
                self.rank, self.world = 0, 1
            else:
                idx = shard(n, self.rank, self.world)
                self.data = Batches(self.all.examples(idx), batch_size=batch_size, device=self.device,
                                    dtype=self.dtype, cache_bytes=cache_bytes)
        self.batch_fn = batch_fn or default_batch_fn
        self.forward_fn = forward_fn or default_forward
        self._module = _Forward(model, self.forward_fn)
        self._settings = dict(loss=self.loss, batch_fn=batch_fn, forward_fn=forward_fn, mode=mode, seed=seed,
                              params=params, trainable_only=trainable_only, cache_bytes=cache_bytes,
                              distributed=distributed)
        self.n_evals = 0

    # --- parameters -------------------------------------------------------------------------------

    @property
    def params(self) -> list[nn.Parameter]:
        """The selected parameters of the model (θ), in order."""
        return [p for _, p in self.named_params]

    @property
    def num_params(self) -> int:
        """Length of θ."""
        return sum(self.sizes)

    def flat(self) -> torch.Tensor:
        """θ at the model's current weights, as one flat detached copy."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    def state(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name → view of ``theta`` shaped like the model's parameter."""
        return {n: t.view(s) for n, t, s in zip(self.names, theta.split(self.sizes), self.shapes)}

    # --- data -------------------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        """N, the number of examples over all ranks (a DataLoader is counted on its first pass)."""
        if self.data.num_samples is None:
            for _ in self.data:
                pass
        if self.world == 1:
            return self.data.num_samples
        return int(all_sum_floats([self.data.num_samples], self.world, self.device)[0])

    def split(self, raw: Any) -> tuple[Any, Any, tuple]:
        """A batch as ``(inputs, targets, extra)`` through ``batch_fn`` (its 2- or 3-tuple checked)."""
        parts = self.batch_fn(raw)
        if not isinstance(parts, (tuple, list)) or len(parts) not in (2, 3):
            raise SharpnessError("batch_fn must return (inputs, targets) or (inputs, targets, extra)")
        return parts[0], parts[1], tuple(parts[2]) if len(parts) == 3 else ()

    def batches(self) -> Iterator[tuple[int, Any, Any, tuple, int]]:
        """(index, inputs, targets, extra, n) per batch, on the device.

        While the loss has something to settle from the data (:meth:`~sharpness.losses.Loss.resolve`: no
        loss named, or a reduction not declared), each batch's output is computed once more, without
        gradients, to settle it before the batch is used: outside any ``vmap``, on one batch in practice.
        """
        for i, raw in enumerate(self.data):
            inputs, targets, extra = self.split(raw)
            if self.loss.pending:
                with torch.no_grad(), preserved(self.model):
                    set_mode(self.model, self.mode)
                    self.loss.resolve(self.output(i, inputs), targets, extra)
            yield i, inputs, targets, extra, length(targets if targets is not None else inputs)

    def with_data(self, data: Any, *, batch_size: int | None = None, name: str | None = None) -> "Objective":
        """The same model, loss, functions and mode over other data (called ``name``; None: as these)."""
        return Objective(self.model, data=data, batch_size=batch_size, name=self.name if name is None else name,
                         **self._settings)

    def subset(self, n: int | None, seed: int, *, batch_size: int | None = None) -> "Objective":
        """The objective over a fixed, seeded random subset of ``n`` examples (None or ≥ N: all)."""
        require("max_samples", n, int, optional=True, ge=1)
        require("seed", seed, int, ge=0, le=2**63 - 1)
        require("batch_size", batch_size, int, optional=True, ge=1)
        total = self.num_samples
        if n is None or n >= total:
            return self
        if self.per_rank_loader:
            raise SharpnessError("max_samples: a subset of data held as one DataLoader per rank is not defined; "
                                 "give the data in memory or as a Dataset (each rank then takes its share)")
        idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
        return self.with_data(self.all.examples(idx), batch_size=batch_size)

    def examples(self) -> Any:
        """All examples (every rank's: data-parallel code splits them again) as one batch tree on the device."""
        return cat(list(self.all)) if len(self.all) > 1 else next(iter(self.all))

    # --- evaluation -------------------------------------------------------------------------------

    def output(self, i: int, inputs: Any, state: dict | None = None, *, double_backward: bool = False) -> Any:
        """The model's output on batch ``i`` with parameters/buffers ``state`` (None: the model's own)."""
        state = dict(state or {})
        with contextlib.ExitStack() as stack:
            # Any random draw of the forward (dropout in train mode, a model's own noise) comes from a generator
            # seeded by (seed, batch): the objective is a function of θ, and the caller's random state is untouched.
            stack.enter_context(torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []))
            torch.manual_seed(self.seed * 1_000_003 + i)
            if self.mode == "train":
                # Train-mode BN writes running statistics in the forward: give it clones.
                state.update({n: b.clone() for n, b in self.model.named_buffers() if n not in state})
            if double_backward:
                # The fused attention kernels have no double backward; the math kernel does.
                stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
            # Attention's inference fast path (taken only without gradients) zeroes padded positions that the
            # plain path computes, and has no vmap rule: without it, a loss, a gradient and a Hessian product
            # at θ see one and the same function.
            stack.enter_context(_no_mha_fastpath())
            try:
                return functional_call(self._module, {f"m.{k}": v for k, v in state.items()}, (inputs,))
            except _PASS_THROUGH:
                raise
            except Exception as e:  # the user's model (or forward_fn) raising on these data: one line naming them
                raise SharpnessError(f"{printable(self.name, 80)}: the model ({printable(type(self.model).__name__, 80)}) "
                                     f"fails on batch {i} ({_describe_inputs(inputs)}): {_reason(e)}") from e

    def evaluate(self, theta: torch.Tensor | None = None, buffers: dict | None = None) -> tuple[float, float | None]:
        """(L(θ), accuracy) over all the data; accuracy None where it is undefined. One forward pass.

        ``theta`` None: the model's weights. ``buffers``: BN statistics to use instead of the model's.
        """
        if theta is not None:
            check_theta("theta", theta, self.num_params)
        if buffers is not None and not isinstance(buffers, dict):
            raise SharpnessError(f"buffers must be a dict of name → tensor (got {type(buffers).__name__})")
        state = {} if theta is None else self.state(theta)
        state.update(buffers or {})
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        defined, n_all, norm = True, 0, 0
        with torch.no_grad(), preserved(self.model):
            set_mode(self.model, self.mode)
            for i, inputs, targets, extra, n in self.batches():
                out = self.output(i, inputs, state)
                total += self._total(out, targets, extra).double()
                c = self.loss.correct(out, targets)
                defined = defined and c is not None
                if defined:
                    correct += c
                n_all += n
                norm += self.loss.count(targets, n)
        self.n_evals += 1
        total, correct, n_all, norm = all_sum_floats([total, correct, n_all, norm], self.world, self.device)
        return total / denominator(norm, self.loss.name, self.name), (correct / n_all if defined else None)

    def _total(self, out: Any, targets: Any, extra: tuple) -> torch.Tensor:
        """The loss's batch total in an evaluation; a loss that raises on these data says so in one line."""
        try:
            return self.loss.total(out, targets, extra)
        except _PASS_THROUGH:
            raise
        except Exception as e:  # e.g. test targets of another shape or range than the training data's
            raise SharpnessError(f"{printable(self.name, 80)}: the loss '{printable(self.loss.name, 80)}' fails on the "
                                 f"model's output {_describe_inputs(out).removeprefix('inputs ')}: {_reason(e)}") from e

    def points_per_forward(self) -> int:
        """How many parameter points :meth:`evaluate_many` puts in one vmapped forward by default.

        CUDA: enough that a forward sees about 2²⁰ examples, at most 256 (kernel launches dominate small
        forwards: 9× faster on an H100 for a 41×41 surface). CPU: 1; a forward over the full data already
        runs its matrix products at the cores' speed, and vmapped points were measured level with a loop.
        """
        if self.device.type != "cuda":
            return 1
        return min(256, max(1, 2 ** 20 // max(1, self.num_samples // max(1, len(self.data)))))

    def evaluate_many(self, thetas: torch.Tensor, per_forward: int | None = None) -> list[tuple[float, float | None]]:
        """(L(θ), accuracy) for each row θ of ``thetas``, as :meth:`evaluate` gives them one at a time.

        Rows in groups of ``per_forward`` (None: :meth:`points_per_forward`) share one pass over the data
        and one forward per batch through ``torch.func.vmap``. In train mode every row is evaluated alone:
        its forward draws seeded dropout masks and computes BN batch statistics per point.
        """
        require("per_forward", per_forward, int, optional=True, ge=1)
        if not isinstance(thetas, torch.Tensor) or thetas.dim() != 2 or thetas.shape[1] != self.num_params:
            got = tuple(thetas.shape) if isinstance(thetas, torch.Tensor) else type(thetas).__name__
            raise SharpnessError(f"thetas must be a (points × {self.num_params}) tensor (got {got})")
        k = per_forward or self.points_per_forward()
        if k == 1 or len(thetas) == 1 or self.mode == "train":
            return [self.evaluate(t) for t in thetas]
        return [r for s in range(0, len(thetas), k) for r in self._vmapped(thetas[s:s + k])]

    @torch.no_grad()
    def _vmapped(self, thetas: torch.Tensor) -> list[tuple[float, float | None]]:
        buffers = dict(self.model.named_buffers())
        loss = torch.zeros(len(thetas), device=self.device, dtype=torch.float64)
        correct = torch.zeros(len(thetas), device=self.device, dtype=torch.float64)
        defined, n_all, norm = [True], 0, 0

        def one(theta, i, inputs, targets, extra):
            out = self.output(i, inputs, {**self.state(theta), **buffers})
            c = self.loss.correct(out, targets)
            defined[0] = defined[0] and c is not None  # runs once per vmap call: a plain flag is enough
            return self._total(out, targets, extra), (c if c is not None else out.new_zeros(()))

        with preserved(self.model):
            set_mode(self.model, self.mode)
            for i, inputs, targets, extra, n in self.batches():
                # The fused SDPA kernels have no vmap batching rule (vmap would loop point by point and
                # warn); the math kernel gives the same values, batched.
                with sdpa_kernel([SDPBackend.MATH]):
                    l_, c = vmap(lambda th: one(th, i, inputs, targets, extra))(thetas)
                loss += l_.double()
                correct += c.double()
                n_all += n
                norm += self.loss.count(targets, n)
        self.n_evals += len(thetas)
        loss, correct = all_sum(loss, self.world), all_sum(correct, self.world)  # data-parallel: all ranks' sums
        n_all, norm = all_sum_floats([n_all, norm], self.world, self.device)
        acc = (correct / n_all).tolist() if defined[0] else [None] * len(thetas)
        return list(zip((loss / denominator(norm, self.loss.name, self.name)).tolist(), acc))

    def loss_at(self, theta: torch.Tensor | None = None, *, grad: bool = False) -> tuple[float, torch.Tensor | None]:
        """L(θ) and, if ``grad``, ∇L(θ) as a flat tensor. One pass over the data."""
        if theta is not None:
            check_theta("theta", theta, self.num_params)
        if not grad:
            return self.evaluate(theta)[0], None
        t = (self.flat() if theta is None else theta).detach().requires_grad_(True)
        total, g, norm = 0.0, torch.zeros_like(t), 0
        with preserved(self.model):
            set_mode(self.model, self.mode)
            for i, inputs, targets, extra, n in self.batches():
                with torch.enable_grad():
                    val = differentiable(self.loss.total(self.output(i, inputs, self.state(t)), targets, extra),
                                         self.loss.name)
                    (gt,) = torch.autograd.grad(val, t)
                g += gt
                total += float(val.detach())
                norm += self.loss.count(targets, n)
        self.n_evals += 1
        total, norm = all_sum_floats([total, norm], self.world, self.device)
        norm = denominator(norm, self.loss.name, self.name)
        return total / norm, all_sum(g, self.world) / norm

    def gradient(self) -> torch.Tensor:
        """∇L at the model's weights, flat."""
        return self.loss_at(None, grad=True)[1]


def _describe_inputs(inputs: Any) -> str:
    """The shapes of a batch's input tensors, for a message: ``inputs (8, 5) float32``."""
    from .batches import leaves

    shapes = [f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in leaves(inputs)[:3]]
    return "inputs " + (", ".join(shapes) if shapes else type(inputs).__name__)


def as_objective(model: Any, loss: Any = None, data: Any = None, **kwargs: Any) -> Objective:
    """Pass an :class:`Objective` through (then ``loss`` and ``data`` must be None); else build one."""
    if isinstance(model, Objective):
        if loss is not None or data is not None:
            raise SharpnessError("given an Objective, pass no separate loss or data (they are in the Objective)")
        return model
    return Objective(model, loss, data, **kwargs)


def with_dtype(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model`` itself, or a copy converted to ``dtype`` (the caller's model is never converted)."""
    first = next(model.parameters(), None)
    if dtype is None or first is None or first.dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)

