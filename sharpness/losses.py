"""Losses by name or as any callable, summed exactly over a batch whatever their reduction.

Every measure in the toolkit is a function of the **mean loss over the data set**,

    L(θ) = (1/N) Σ_{i=1..N} ℓ_i(θ),

with ℓ_i the loss of example i. A :class:`Loss` returns, for one batch, Σ_{i ∈ batch} ℓ_i (its
:meth:`~Loss.total`); the data loop adds the totals of all batches and divides by N, so the result does
not depend on how the data are batched (uneven last batch included). What ℓ_i is follows the loss's
own reduction:

- ``reduction="mean"`` (PyTorch's default): the callable returns the batch mean, so the total is
  mean × batch size. For element-wise losses (MSE) the mean runs over outputs too: ℓ_i is the mean over
  example i's outputs.
- ``reduction="sum"``: the callable returns the batch sum, which is the total. For MSE, ℓ_i is then the
  *sum* over example i's outputs — exactly the user's definition, for any batching.
- ``reduction="none"`` or a callable returning one value per example: the per-example values (a mean
  over any further dimensions) are summed.

Class weights and ``ignore_index`` (cross-entropy, NLL; named or as ``nn.CrossEntropyLoss``/``nn.NLLLoss``)
follow PyTorch's own mean, which is not a per-example mean: L = Σᵢ w_{yᵢ} ℓᵢ / Σᵢ w_{yᵢ} over the examples
whose target is not ignored. Its numerator and denominator are both sums over examples, so the loop adds
each over all batches (:meth:`Loss.count` gives a batch's denominator, n by default) and divides once: the
result is PyTorch's loss on the whole data set as one batch, for any batching.

The reduction is read from a loss module's ``reduction`` attribute (``nn.MSELoss(reduction="sum")``),
from ``reduction`` in the arguments of a named loss, or is ``"mean"`` for a plain function unless the
caller says otherwise. Extra batch fields (sample weights) are passed on: named losses multiply each
example's loss by its weight w_i (so L = (1/N) Σ w_i ℓ_i); a callable gets them as further positional
arguments. Accuracy is defined only for classification (class-index targets with (N, C) outputs, and
0/1 targets for ``bce_with_logits``); elsewhere it is None, never a wrong number.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from .errors import SharpnessError
from .errors import short as _short
from .specs import Registry, check_int, check_number

__all__ = ["Loss", "make_loss", "register_loss", "loss_names", "loss_label", "LOSSES"]

REDUCTIONS = ("mean", "sum", "none")


def _same_shape(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # (N, 1) outputs against (N,) targets: PyTorch would broadcast to (N, N) and warn; align instead.
    return y.reshape(out.shape) if y.shape != out.shape and y.numel() == out.numel() else y


def _class_targets(name: str, out: Any, y: Any) -> None:
    """Refuse what a class loss would silently get wrong: one output, or real-valued targets.

    Cross-entropy over a single output is 0 whatever the weights (log-softmax of one logit), and real
    targets that are not class probabilities give a number with no meaning: both once trained a
    regression model to "loss 0.0000" without a word.
    """
    if not (isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor)):
        return
    if out.dim() >= 2 and out.shape[1] == 1:
        raise SharpnessError(f"loss '{name}' over a single output is 0 whatever the weights (outputs "
                             f"{tuple(out.shape)}); for regression use mse, for 0/1 labels bce_with_logits")
    if y.is_floating_point():
        if y.shape != out.shape:
            raise SharpnessError(f"loss '{name}' got real-valued targets {tuple(y.shape)} for outputs "
                                 f"{tuple(out.shape)}: class labels must be integers; for regression use mse")
        if out.dim() >= 2 and not ((y >= 0).all() and torch.allclose(y.sum(1), torch.ones((), dtype=y.dtype),
                                                                      atol=1e-3)):
            raise SharpnessError(f"loss '{name}' got real-valued targets that are not class probabilities "
                                 "(each row ≥ 0, summing to 1); for regression use mse")


def _cross_entropy(out, y, **kw):
    _class_targets("cross_entropy", out, y)
    return F.cross_entropy(out, y, **kw)


def _nll(out, y, **kw):
    _class_targets("nll", out, y)
    return F.nll_loss(out, y, **kw)


def _like_outputs(name: str, out: torch.Tensor, y: Any) -> Any:
    """Targets shaped like the outputs (see :func:`_same_shape`), else a SharpnessError.

    PyTorch would broadcast (n,) class labels against (n, C) outputs with a warning, then fail or compute
    the wrong loss.
    """
    y = _same_shape(out, y) if isinstance(y, torch.Tensor) and isinstance(out, torch.Tensor) else y
    if isinstance(y, torch.Tensor) and isinstance(out, torch.Tensor) and y.shape != out.shape:
        labels = "; for class labels use cross_entropy" if not (y.is_floating_point() or y.is_complex()) else ""
        raise SharpnessError(f"loss '{name}' needs targets shaped like the outputs (outputs {tuple(out.shape)}, "
                             f"targets {tuple(y.shape)}){labels}")
    return y


def _mse(out, y, **kw):
    return F.mse_loss(out, _like_outputs("mse", out, y).to(out.dtype), **kw)


def _square(out, y, reduction="mean"):
    """Cohen et al. 2021's square loss: ℓ_i = ½ Σ_c (f_c(x_i) − [y_i = c])², class labels as one-hot targets."""
    if not (isinstance(y, torch.Tensor) and out.dim() == 2 and y.dim() == 1 and not y.is_floating_point()):
        raise SharpnessError("loss 'square' needs class labels (n,) and outputs (n, classes); "
                             "for real-valued targets use mse")
    v = 0.5 * (out - F.one_hot(y, out.shape[1]).to(out.dtype)).pow(2).sum(1)
    return v if reduction == "none" else (v.sum() if reduction == "sum" else v.mean())


def _bce_with_logits(out, y, **kw):
    return F.binary_cross_entropy_with_logits(out, _like_outputs("bce_with_logits", out, y).to(out.dtype), **kw)


# name → (function, the keyword arguments it takes besides reduction, axis label)
_NAMED = {
    "cross_entropy": (_cross_entropy, ("weight", "ignore_index", "label_smoothing"), "cross-entropy"),
    "nll": (_nll, ("weight", "ignore_index"), "negative log-likelihood"),
    "mse": (_mse, (), "mean squared error"),
    "square": (_square, (), "square loss"),  # MSE to one-hot targets, summed over classes (Cohen et al. 2021)
    "bce_with_logits": (_bce_with_logits, ("weight", "pos_weight"), "binary cross-entropy"),
}
LOSSES = Registry("loss")
for _name, (_fn, _, _) in _NAMED.items():
    LOSSES.register(_name, _fn)


def register_loss(name: str, fn: Callable | None = None):
    """Register ``fn(output, targets, *extra, **args)`` under ``name`` (usable as a decorator)."""
    return LOSSES.register(name, fn)


def loss_label(name: str) -> str:
    """The axis label of a named loss (``"cross-entropy"``), or the name itself."""
    return _NAMED[name][2] if name in _NAMED else name


def loss_names() -> list[str]:
    """Names accepted by :func:`make_loss`."""
    return LOSSES.names()


class Loss:
    """A loss that sums exactly over a batch's examples (see the module docstring).

    Args:
        fn: ``fn(output, targets, *extra)`` → a scalar (``reduction`` says which) or per-example values.
        name: recorded in reports and on figure axes.
        reduction: ``"mean"`` or ``"sum"``: what a scalar returned by ``fn`` is over the batch; None: not
            declared, found by :meth:`resolve` on the first batch of two or more examples.
        per_example: ``fn`` accepts ``reduction="none"`` (named losses): sample weights are applied
            per example and the reduction is done here.
        label: human-readable name for axes (default: ``name``).
    """

    def __init__(self, fn: Callable | None, *, name: str, reduction: str | None = "mean", per_example: bool = False,
                 label: str | None = None, normalizer: Callable | None = None):
        if reduction is not None and reduction not in REDUCTIONS:
            raise SharpnessError(f"loss reduction must be one of {', '.join(REDUCTIONS)} (got {reduction!r})")
        self.fn, self.name, self.per_example = fn, name, per_example
        self.reduction = reduction or "mean"
        self.label = label or name
        self._normalizer = normalizer if self.reduction == "mean" else None
        # What the first batch still has to settle: "infer" (no loss named) or "reduction" (not declared).
        self.pending: str | None = "infer" if fn is None else ("reduction" if reduction is None else None)
        self.inferred = self.probed = False
        self._infer_args: tuple[dict, str] = ({}, "mean")

    def resolve(self, out: Any, targets: Any, extra: tuple = ()) -> None:
        """Settle what the first batch decides (no-op once settled); outside ``vmap``, on detached outputs.

        - No loss named: class-index targets with (n, C ≥ 2, …) outputs → cross-entropy; real-valued
          targets shaped like the outputs → MSE, said in a one-line warning; anything else is refused in
          one line that names ``loss=`` (cross-entropy on real-valued targets was silently 0).
        - A scalar-returning function with no declared reduction is evaluated on the whole batch and on its
          two halves (the batch's outputs split, no extra forward): the whole equal to the halves' sum is
          a sum (handled as ``reduction="sum"``, said in a warning), equal to their size-weighted mean is a
          mean. A batch that cannot tell (one example; losses where both hold, e.g. all zero) leaves it to
          the next; a loss that is neither (a batch-level normalization, a regularizer) is taken as a mean
          with a warning. Taken as a mean, a summing loss would give curvature ×n too large.
        """
        if self.pending == "infer":
            args, reduction = self._infer_args
            choice = _infer(out, targets)
            if choice == "mse":
                warnings.warn(f"no loss given: real-valued targets shaped like the outputs ({tuple(out.shape[1:])} "
                              "per example), so the loss is mse (pass loss= / --loss to choose another)", stacklevel=3)
            named = _named(choice, args, reduction)
            self.__dict__.update({k: v for k, v in named.__dict__.items() if k not in ("inferred", "probed")})
            self.inferred, self.pending = True, None
        elif self.pending == "reduction":
            found = _probe_reduction(self.fn, self.name, out, targets, extra)
            if found is not None:
                self.reduction, self.probed, self.pending = found, True, None

    def count(self, targets: Any, n: int) -> torch.Tensor | int:
        """The batch's share of the denominator of the data-set mean: n, or Σ w_{yᵢ} with class weights."""
        return self._normalizer(targets) if self._normalizer is not None else n

    def total(self, out: torch.Tensor, targets: Any, extra: tuple = ()) -> torch.Tensor:
        """Σ over the batch's examples of ℓ_i (a 0-dim tensor, differentiable)."""
        if self.pending:
            self.resolve(out, targets, extra)
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            raise SharpnessError(f"loss '{self.name}': the model's output must be a tensor with a batch dimension "
                                 f"(got {_describe(out)})")
        n = out.shape[0]
        if self.per_example:
            v = _real(self.name, self.fn(out, targets, reduction="none"))
            scale = v[0].numel() if self.reduction == "sum" else 1  # ℓ_i sums, not averages, its outputs
            v = v.reshape(n, -1).mean(1) * scale
            if extra:
                v = v * extra[0].reshape(n).to(v.dtype)
            return v.sum()
        v = _real(self.name, self.fn(out, targets, *extra))
        if v.dim() > 0:
            if v.shape[0] != n:
                raise SharpnessError(f"loss '{self.name}' returned shape {tuple(v.shape)} for a batch of {n}: "
                                     "expected a scalar or one value per example")
            return v.reshape(n, -1).mean(1).sum()
        return v if self.reduction == "sum" else v * n

    def mean(self, out: torch.Tensor, targets: Any, extra: tuple = ()) -> torch.Tensor:
        """(1/n) Σ_{i ∈ batch} ℓ_i: what a training step minimizes.

        A named loss with its default mean reduction and no weights calls PyTorch's own mean, so a run
        trains bit-identically to ``F.cross_entropy(out, y)``.
        """
        if self.pending:
            self.resolve(out, targets, extra)
        if self.per_example and self.reduction == "mean" and not extra:
            return self.fn(out, targets, reduction="mean")
        return self.total(out, targets, extra) / self.count(targets, out.shape[0])

    def correct(self, out: torch.Tensor, targets: Any) -> torch.Tensor | None:
        """Number of correctly classified examples in the batch, or None where accuracy is undefined."""
        if not isinstance(targets, torch.Tensor) or not isinstance(out, torch.Tensor):
            return None
        if self.name == "bce_with_logits":
            y = _same_shape(out, targets)
            if y.shape != out.shape:
                return None
            hit = (out > 0) == (y > 0.5)
            return hit.reshape(len(hit), -1).all(1).sum()
        if out.dim() == 2 and out.shape[1] > 1 and targets.dim() == 1 and not targets.is_floating_point() \
                and targets.dtype != torch.bool and len(targets) == len(out):
            return (out.argmax(1) == targets).sum()
        return None

    def to_dict(self) -> dict:
        """Name and reduction, for reports; ``inferred`` / ``reduction_probed`` where the data decided them."""
        return {"name": self.name, "reduction": self.reduction, **({"inferred": True} if self.inferred else {}),
                **({"reduction_probed": True} if self.probed else {})}

    def __repr__(self) -> str:
        return f"Loss({self.name!r}, reduction={self.reduction!r})"


def _real(name: str, v: Any) -> torch.Tensor:
    """A loss value as returned: a real floating-point tensor, else one line saying what it is."""
    if not isinstance(v, torch.Tensor):
        raise SharpnessError(f"loss '{name}' returned {type(v).__name__}, not a tensor")
    if v.is_complex():
        raise SharpnessError(f"loss '{name}' returned a complex tensor ({v.dtype}): a loss must be real-valued "
                             "(take .real, .abs() or .abs().square() of it)")
    if not v.is_floating_point():
        raise SharpnessError(f"loss '{name}' returned a {str(v.dtype).removeprefix('torch.')} tensor: a loss must be "
                             "a floating-point tensor computed from the output (it has no gradient otherwise)")
    return v


def make_loss(spec: Any = None, args: dict | None = None, *, reduction: str | None = None,
              trusted: bool = True) -> Loss:
    """A :class:`Loss` from a name, ``"pkg.module:fn"``, a loss module, a function, or a Loss.

    Args:
        spec: None (inferred from the first batch: see :meth:`Loss.resolve`), a registered name (``cross_entropy``, ``mse``, ``nll``,
            ``bce_with_logits``, or one added with :func:`register_loss`), ``"pkg.module:fn"`` (a
            function, or an ``nn.Module`` class built with ``args``), an ``nn.Module`` instance, a callable.
        args: keyword arguments: for named losses e.g. ``label_smoothing``, ``reduction``, ``weight``; for a
            loss class, its constructor's; for a function, passed on every call — except ``reduction``,
            which declares what the function returns and is not passed to it.
        reduction: what a plain function's scalar is over a batch (a module's own ``reduction`` attribute
            takes precedence, then ``args["reduction"]``); None: probed on the first batch.
        trusted: False when the name comes from a checkpoint (see :mod:`sharpness.specs`).
    """
    if isinstance(spec, Loss):
        return spec
    if args is not None and not (isinstance(args, dict) and all(isinstance(k, str) for k in args)):
        raise SharpnessError(f"loss_args must be a dict with string keys (got {_short(args)})")
    if reduction is not None and reduction not in REDUCTIONS:
        raise SharpnessError(f"reduction must be one of {', '.join(REDUCTIONS)} (got {_short(reduction)})")
    args = dict(args or {})
    if spec is None:
        inferred = Loss(None, name="auto")
        inferred._infer_args = (args, args.pop("reduction", reduction or "mean"))
        return inferred
    if isinstance(spec, str) and spec in _NAMED and LOSSES.resolve(spec, trusted=True) is _NAMED[spec][0]:
        return _named(spec, args, args.pop("reduction", reduction or "mean"))
    if type(spec) in (nn.CrossEntropyLoss, nn.NLLLoss):  # their mean is weighted: handled as the named loss
        kind = "cross_entropy" if isinstance(spec, nn.CrossEntropyLoss) else "nll"
        own = {"ignore_index": spec.ignore_index, **({"weight": spec.weight} if spec.weight is not None else {}),
               **({"label_smoothing": spec.label_smoothing} if kind == "cross_entropy" else {})}
        return _named(kind, own, spec.reduction)
    name = spec if isinstance(spec, str) else None
    if isinstance(spec, str):
        spec = LOSSES.resolve(spec, trusted=trusted)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        try:
            spec = spec(**args)
        except TypeError as e:
            raise SharpnessError(f"bad arguments for loss '{name}': {e}") from None
        args = {}
    if not callable(spec):
        raise SharpnessError(f"loss must be a name, 'pkg.module:fn' or a callable (got {type(spec).__name__})")
    declared = args.pop("reduction", None)  # the toolkit's declaration, never passed into the user's function
    red = getattr(spec, "reduction", None) or declared or reduction
    if red is not None and red not in REDUCTIONS:
        raise SharpnessError(f"loss '{name or getattr(spec, '__name__', type(spec).__name__)}': reduction must be "
                             f"one of {', '.join(REDUCTIONS)} (got {_short(red)})")
    name = name or getattr(spec, "__name__", None) or type(spec).__name__
    fn = (lambda out, y, *extra, _f=spec, _a=args: _f(out, y, *extra, **_a)) if args else spec
    return Loss(fn, name=name, reduction=red)


def _class_normalizer(weight: torch.Tensor | None, ignore_index: int) -> Callable:
    """Σ_i w_{y_i} over the examples whose class-index target is not ignored (PyTorch's mean denominator)."""
    def count(targets: Any) -> Any:
        if not isinstance(targets, torch.Tensor) or targets.is_floating_point():  # class probabilities
            return len(targets)
        keep = targets != ignore_index
        w = torch.ones_like(targets, dtype=torch.float64) if weight is None else \
            weight.to(targets.device, torch.float64)[targets.clamp(min=0) * keep]
        return (w * keep).sum()
    return count


def _class_weights(name: str, key: str, value: Any) -> torch.Tensor:
    """``weight`` / ``pos_weight`` of a named loss as a tensor: a 1-D list or tensor of finite real numbers."""
    bad = SharpnessError(f"loss '{name}': loss_args.{key} must be a 1-D list of finite numbers, one per class "
                         f"(got {_short(value)})")
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            raise bad
        t = torch.as_tensor(value)
    elif isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        raise bad
    if t.dim() != 1 or t.numel() == 0 or not (t.is_floating_point() or t.dtype in _INTEGER_DTYPES) \
            or not torch.isfinite(t.double()).all():
        raise bad
    if key == "weight" and (bool((t < 0).any()) or not bool((t != 0).any())):
        # PyTorch's weighted mean divides by Σ w_(y_i): all zero is 0/0, negative weights can cancel to it
        raise SharpnessError(f"loss '{name}': loss_args.weight must be ≥ 0 with at least one class weight > 0 "
                             f"(got {_short(value)}): the weighted mean divides by the sum of the weights")
    return t


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_classes(name: str, key: str, w: torch.Tensor, out: Any) -> None:
    """The class weights have one entry per class of the outputs (one, or one per output, for BCE)."""
    if not isinstance(out, torch.Tensor):
        return
    if name in ("cross_entropy", "nll"):
        classes = out.shape[1] if out.dim() >= 2 else None
        ok = classes is None or w.numel() == classes
    else:  # bce_with_logits: broadcast over the outputs' last dimension
        classes = out.shape[-1] if out.dim() >= 2 else 1
        ok = w.numel() in (1, classes)
    if not ok:
        raise SharpnessError(f"loss '{name}': loss_args.{key} has {w.numel()} entries, but the outputs have "
                             f"{classes} classes (outputs {tuple(out.shape)})")


def _named(name: str, args: dict, reduction: str) -> Loss:
    fn, allowed, label = _NAMED[name]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise SharpnessError(f"unknown argument(s) {', '.join(unknown)} for loss '{name}'; "
                             f"it takes reduction{''.join(', ' + a for a in allowed)}")
    if "label_smoothing" in args:
        check_number(f"loss '{name}'", "loss_args.label_smoothing", args["label_smoothing"], 0, 1, open_high=False)
    if "ignore_index" in args:
        check_int(f"loss '{name}'", "loss_args.ignore_index", args["ignore_index"], -2**63, 2**63 - 1)
    args = {k: _class_weights(name, k, v) if k in ("weight", "pos_weight") else v for k, v in args.items()}
    weights = [k for k in ("weight", "pos_weight") if k in args]

    def bound(out, y, **kw):  # class weights follow the output's device and dtype
        for k in weights:
            _check_classes(name, k, args[k], out)
        return fn(out, y, **{k: v.to(out) if isinstance(v, torch.Tensor) else v for k, v in args.items()}, **kw)

    normalizer = _class_normalizer(args.get("weight"), args.get("ignore_index", -100)) \
        if name in ("cross_entropy", "nll") else None
    return Loss(bound, name=name, reduction=reduction, per_example=True, label=label, normalizer=normalizer)


def _describe(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
    return type(t).__name__


def _infer(out: Any, y: Any) -> str:
    """The loss the data imply (see :meth:`Loss.resolve`), else a SharpnessError naming ``loss=``."""
    if isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor) and out.is_floating_point():
        labels = not (y.is_floating_point() or y.is_complex()) and y.dtype != torch.bool
        if labels and out.dim() >= 2 and out.shape[1] >= 2 and tuple(y.shape) == (out.shape[0], *out.shape[2:]):
            return "cross_entropy"
        if y.is_floating_point() and _same_shape(out, y).shape == out.shape:
            return "mse"
    raise SharpnessError(f"no loss given, and none follows from the outputs {_describe(out)} and targets "
                         f"{_describe(y)}: pass loss= (--loss), e.g. cross_entropy for class indices, mse for "
                         "real-valued targets shaped like the outputs, or your own function")


def _probe_reduction(fn: Callable, name: str, out: Any, targets: Any, extra: tuple) -> str | None:
    """"sum" or "mean" from the loss of a batch and of its two halves (see :meth:`Loss.resolve`); None: undecided."""
    from .batches import length, tree_map  # batches imports nothing from here; at call time: no import cycle

    n = length(out)
    if n < 2:
        return None
    h = n // 2

    def part(tree: Any, sl: slice) -> Any:
        return tree_map(lambda t: t.detach()[sl], tree)

    with torch.no_grad():
        values = [fn(part(out, sl), part(targets, sl), *part(extra, sl))
                  for sl in (slice(None), slice(0, h), slice(h, None))]
    if not all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in values):
        return "mean"  # per-example values: summed by Loss.total whatever the reduction
    whole, a, b = (float(v) for v in values)
    mean, total = (h * a + (n - h) * b) / n, a + b
    tol = 1e-4 * max(abs(whole), abs(mean), abs(total), 1e-30)
    is_mean, is_sum = abs(whole - mean) <= tol, abs(whole - total) <= tol
    if is_mean and is_sum:
        return None
    if is_sum:
        warnings.warn(f"loss '{name}' returns a sum over the batch (whole batch {whole:.6g} = the sum of its halves' "
                      f"{a:.6g} + {b:.6g}): handled as reduction='sum'; pass reduction='sum' (--loss-arg "
                      "reduction=sum) to declare it", stacklevel=4)
        return "sum"
    if not is_mean:
        warnings.warn(f"loss '{name}' is neither the mean nor the sum of its examples' losses (whole batch "
                      f"{whole:.6g}, halves {a:.6g} and {b:.6g}): taken as a mean over the batch; pass "
                      "reduction='mean' or 'sum' to declare it", stacklevel=4)
    return "mean"
