"""Model zoo by name, user factories, and Ghost Batch Normalization.

Each model is built from a :class:`ModelSpec` (a :class:`~sharpness.specs.Spec`: name + arguments, with
``input_shape`` and ``num_classes`` filled in from the data) that checkpoints store, so a checkpoint
rebuilds its model without the training code. The name is a registered one (the zoo below, or one added
with :func:`register_model`) or ``"pkg.module:factory"`` (see :mod:`sharpness.specs` for when a name read
from a checkpoint may be imported). This module imports nothing from training.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import SharpnessError, printable
from .errors import short as _short
from .specs import Registry, Spec, as_spec, check_args, check_int, check_number

__all__ = ["ModelSpec", "build_model", "model_names", "register_model", "MODELS", "GhostBatchNorm"]

ModelSpec = Spec  # the name this module used before specs were shared; kept for existing imports


class GhostBatchNorm(_BatchNorm):
    """Batch normalization with statistics computed per *ghost batch* (Hoffer et al. 2017, §4.1).

    In training, a batch larger than ``ghost_batch_size`` is split into consecutive chunks of that size
    (the last may be smaller); each chunk is normalized with its own mean and variance, and the running
    statistics are updated once per chunk, exactly as plain BN applied to each chunk in turn would do.
    In eval mode, the running statistics are used. ``ghost_batch_size=None`` is plain BN. Works on
    (N, C), (N, C, L) and (N, C, H, W) inputs.
    """

    def __init__(self, num_features: int, ghost_batch_size: int | None = None, **kwargs: Any):
        check_int("GhostBatchNorm", "num_features", num_features, 1)
        if ghost_batch_size is not None:
            check_int("GhostBatchNorm", "ghost_batch_size", ghost_batch_size, 1, why=" or None")
        for key in ("eps", "momentum"):  # BN's own numbers: NaN or a negative value would poison every output
            if kwargs.get(key) is not None:
                check_number("GhostBatchNorm", key, kwargs[key], 0, open_low=key == "eps", high=None)
        super().__init__(num_features, **kwargs)
        self.ghost_batch_size = ghost_batch_size

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x``; per ghost batch in training mode."""
        g = self.ghost_batch_size
        if not self.training or g is None or x.shape[0] <= g:
            return super().forward(x)
        return torch.cat([super(GhostBatchNorm, self).forward(c) for c in x.split(g)], dim=0)

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", ghost_batch_size={self.ghost_batch_size}"


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise SharpnessError(f"unknown activation '{name}'; known: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def mlp(input_shape, num_classes, widths=(256, 256), bn=False, activation="relu", ghost_batch_size=None,
        dropout=0.0) -> nn.Sequential:
    """Fully connected net: flatten → [Linear(w), (BN), act, (dropout)] per width → Linear(classes)."""
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for w in widths:
        layers.append(nn.Linear(fan_in, w))
        if bn:
            layers.append(GhostBatchNorm(w, ghost_batch_size))
        layers.append(_activation(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
        fan_in = w
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)


def keskar_f1(input_shape, num_classes, ghost_batch_size=None) -> nn.Sequential:
    """Keskar et al. 2017's F1: input → 5×(Linear 512, BN, ReLU) → classes."""
    return mlp(input_shape, num_classes, widths=(512,) * 5, bn=True, ghost_batch_size=ghost_batch_size)


def keskar_c1(input_shape, num_classes, ghost_batch_size=None, dropout=0.5) -> nn.Sequential:
    """Keskar et al. 2017's C1, a shallow AlexNet-like conv net.

    conv64 5×5 → maxpool 3/2 → conv64 5×5 → maxpool 3/2 → FC384 → FC192 → classes, with BN after every
    conv/FC layer and dropout 0.5 on the FC layers.
    """
    c = input_shape[0]
    body = nn.Sequential(
        nn.Conv2d(c, 64, 5, padding=2), GhostBatchNorm(64, ghost_batch_size), nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(64, 64, 5, padding=2), GhostBatchNorm(64, ghost_batch_size), nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(),
    )
    flat = _flat_size(body, input_shape)
    head = [nn.Linear(flat, 384), GhostBatchNorm(384, ghost_batch_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(384, 192), GhostBatchNorm(192, ghost_batch_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(192, num_classes)]
    return nn.Sequential(*body, *head)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, ghost_batch_size):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = GhostBatchNorm(cout, ghost_batch_size)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = GhostBatchNorm(cout, ghost_batch_size)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          GhostBatchNorm(cout, ghost_batch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet (He et al. 2016, §4.2): 3 stages of ``n`` basic blocks, 16/32/64 channels.

    ``n=3`` is ResNet-20. Shortcuts that change shape use a 1×1 conv + BN (option B).
    """

    def __init__(self, input_shape, num_classes, n: int = 3, width: int = 16, ghost_batch_size=None):
        super().__init__()
        c = input_shape[0]
        self.conv = nn.Conv2d(c, width, 3, 1, 1, bias=False)
        self.bn = GhostBatchNorm(width, ghost_batch_size)
        blocks, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(_BasicBlock(cin, cout, 2 if (i == 0 and stage > 0) else 1, ghost_batch_size))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def mnist1d_cnn(input_shape, num_classes, channels=25, ghost_batch_size=None, bn=False) -> nn.Sequential:
    """The small 1-D conv net of the MNIST-1D paper: three stride-2 convs (5, 3, 3) with ReLU, then linear."""
    norm = (lambda: GhostBatchNorm(channels, ghost_batch_size)) if bn else nn.Identity
    length = input_shape[-1]
    body = nn.Sequential(
        nn.Unflatten(1, (1, length)) if len(input_shape) == 1 else nn.Identity(),
        nn.Conv1d(1 if len(input_shape) == 1 else input_shape[0], channels, 5, 2, 1), norm(), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, 2, 1), norm(), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, 2, 1), norm(), nn.ReLU(),
        nn.Flatten(),
    )
    return nn.Sequential(*body, nn.Linear(_flat_size(body, input_shape), num_classes))


def _flat_size(body: nn.Module, input_shape) -> int:
    with torch.no_grad():
        return int(body.eval()(torch.zeros(1, *input_shape)).shape[1])


def resnet20(input_shape, num_classes, width: int = 16, ghost_batch_size=None) -> ResNetCifar:
    """ResNet-20 for CIFAR (He et al. 2016): :class:`ResNetCifar` with ``n=3``."""
    return ResNetCifar(input_shape, num_classes, n=3, width=width, ghost_batch_size=ghost_batch_size)


_ZOO: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "keskar-f1": keskar_f1,
    "keskar-c1": keskar_c1,
    "resnet20": resnet20,
    "mnist1d-cnn": mnist1d_cnn,
}
MODELS = Registry("model")
for _name, _fn in _ZOO.items():
    MODELS.register(_name, _fn)


def _ints(what: str, key: str, value: Any, *, lengths: tuple[int, ...] | None = None, empty: bool = True) -> None:
    """``value`` is a list (or tuple) of integers ≥ 1, of one of ``lengths`` entries if given."""
    ok = isinstance(value, (list, tuple)) and (empty or len(value) > 0) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if ok and lengths is not None and len(value) not in lengths:
        shape = " or ".join(str(n) for n in lengths)
        raise SharpnessError(f"{what}: {key} must have {shape} entries (got {value!r})")
    if not ok:
        raise SharpnessError(f"{what}: {key} must be a {'' if empty else 'non-empty '}list of integers ≥ 1 "
                             f"(got {value!r})")


# The input dimensions each zoo model works on: an MLP flattens anything; the conv nets need (C, H, W),
# MNIST-1D's (L,) or (C, L).
_INPUT_DIMS = {"keskar-c1": (3,), "resnet20": (3,), "mnist1d-cnn": (1, 2)}


# Sizes a spec may ask the zoo for (a checkpoint's spec must not exhaust memory before anything runs).
MAX_WIDTH = 10**5          # a layer's width, channels or classes
MAX_INPUT = 10**7          # values in one input example
MAX_PARAMETERS = 10**9     # parameters of a built-in model (an estimate from its arguments)
MAX_ACTIVATIONS = 10**8    # values a built-in conv net computes in its first layer for one example


def _pooled(n: int) -> int:  # MaxPool2d(3, 2, padding=1)
    return (n - 1) // 2 + 1


def _conv1d(n: int, k: int) -> int:  # Conv1d(kernel k, stride 2, padding 1)
    return max(0, (n + 2 - k) // 2 + 1)


def _zoo_size(name: str, kw: dict) -> tuple[int, int] | None:
    """(parameters, first-layer activations per example) of a zoo model, from its arguments; None if unknown."""
    shape, classes = tuple(kw.get("input_shape", ())), kw.get("num_classes")
    if not shape or classes is None:
        return None  # the factory reports the missing argument itself
    if name in ("mlp", "keskar-f1"):
        widths = tuple(kw.get("widths", (256, 256))) if name == "mlp" else (512,) * 5
        fan_in, total = math.prod(shape), 0
        for w in widths:
            total += fan_in * w + 3 * w  # weight, bias, and BN's scale and shift where present
            fan_in = w
        return total + fan_in * classes + classes, max(widths, default=0)
    if name == "keskar-c1":
        c, h, w = shape
        flat = 64 * _pooled(_pooled(h)) * _pooled(_pooled(w))
        total = c * 64 * 25 + 64 * 64 * 25 + flat * 384 + 384 * 192 + 192 * classes + 2000
        return total, 64 * h * w
    if name == "resnet20":
        c, h, w = shape
        k = kw.get("width", 16)
        blocks = 3 * 2 * 9 * (k * k + 4 * k * k + 16 * k * k) + 2 * k * k + 8 * k * k  # 3×3 convs, shortcuts
        return 9 * c * k + blocks + 4 * k * classes + 40 * k, k * h * w
    if name == "mnist1d-cnn":
        ch = kw.get("channels", 25)
        cin = 1 if len(shape) == 1 else shape[0]
        n1 = _conv1d(shape[-1], 5)
        n3 = _conv1d(_conv1d(n1, 3), 3)
        return cin * ch * 5 + 6 * ch * ch + ch * n3 * classes + 10 * ch, ch * n1
    return None


def _check_zoo_args(name: str, kwargs: dict) -> None:
    """Check the arguments of a zoo model before it is built: one line naming the argument and value."""
    what = f"model '{name}'"
    if "input_shape" in kwargs:
        _ints(what, "input_shape", kwargs["input_shape"], lengths=_INPUT_DIMS.get(name), empty=False)
        size = math.prod(kwargs["input_shape"])
        if size > MAX_INPUT:
            raise SharpnessError(f"{what}: input_shape {list(kwargs['input_shape'])} holds {size:.3g} values per "
                                 f"example; the built-in models take at most {MAX_INPUT:.0e}")
    if "num_classes" in kwargs:
        check_int(what, "num_classes", kwargs["num_classes"], 1, MAX_WIDTH)
    if kwargs.get("ghost_batch_size") is not None:
        check_int(what, "ghost_batch_size", kwargs["ghost_batch_size"], 1, why=" or None")
    if "widths" in kwargs:
        _ints(what, "widths", kwargs["widths"])
        if any(w > MAX_WIDTH for w in kwargs["widths"]):
            raise SharpnessError(f"{what}: widths must each be ≤ {MAX_WIDTH} (got {_short(kwargs['widths'])})")
    for key in ("width", "channels"):
        if key in kwargs:
            check_int(what, key, kwargs[key], 1, MAX_WIDTH)
    if "dropout" in kwargs:
        check_number(what, "dropout", kwargs["dropout"], 0, 1)
    if "bn" in kwargs and not isinstance(kwargs["bn"], bool):
        raise SharpnessError(f"{what}: bn must be true or false (got {kwargs['bn']!r})")
    if "activation" in kwargs and kwargs["activation"] not in _ACTIVATIONS:
        raise SharpnessError(f"{what}: unknown activation {kwargs['activation']!r}; known: {', '.join(_ACTIVATIONS)}")
    size = _zoo_size(name, kwargs)
    if size is not None:
        params, activations = size
        if params > MAX_PARAMETERS:
            raise SharpnessError(f"{what}: these arguments make about {params:.2g} parameters; the built-in models "
                                 f"are limited to {MAX_PARAMETERS:.0e} (an estimate from input_shape, num_classes "
                                 "and the widths)")
        if activations > MAX_ACTIVATIONS:
            raise SharpnessError(f"{what}: these arguments make about {activations:.2g} values in the first layer "
                                 f"per example; the built-in models are limited to {MAX_ACTIVATIONS:.0e}")

# Arguments the trainer fills in from the data; a factory gets them only if it takes them.
_DATA_ARGS = ("input_shape", "num_classes")


def register_model(name: str, fn: Callable[..., nn.Module] | None = None) -> Callable:
    """Register a model factory under ``name`` (replacing any earlier one); without ``fn``, a decorator.

    ``fn(**args)`` returns an ``nn.Module``; it gets ``input_shape`` and ``num_classes`` if it takes them.
    """
    return MODELS.register(name, fn)


def model_names() -> list[str]:
    """Names accepted by :func:`build_model` (besides ``"pkg.module:factory"``)."""
    return MODELS.names()


def _takes(fn: Callable, name: str) -> bool:
    """Whether ``fn`` accepts the keyword argument ``name`` (as a named parameter or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no readable signature (a C function): pass everything
        return True
    p = params.get(name)
    return (p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or any(
        q.kind is q.VAR_KEYWORD for q in params.values())


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def build_model(spec: ModelSpec | dict | str | Callable[..., nn.Module], *, trusted: bool = True,
                **args: Any) -> nn.Module:
    """Build a freshly initialised model from its spec (seed torch first for a reproducible init).

    Args:
        spec: a :class:`ModelSpec`, its dict form, a registered name or ``"pkg.module:factory"`` (then
            ``args`` are its arguments, laid over the spec's own), or a factory callable.
        trusted: False when the spec was read from a checkpoint: ``"pkg.module:factory"`` must then be
            the user's own code (see :mod:`sharpness.specs`).
        **args: the model's arguments. ``input_shape`` and ``num_classes`` are passed to a factory only if
            its signature takes them (a named parameter or ``**kwargs``).

    Raises:
        SharpnessError: unknown or refused name, arguments the model does not take (the accepted ones
            listed), a bad value for a zoo model (``widths``, ``input_shape``: lists of integers ≥ 1;
            ``num_classes``: an integer ≥ 1; checked before anything is built), a factory that fails
            (the cause chained) or does not return an ``nn.Module``.
    """
    if callable(spec) and not isinstance(spec, (str, dict, Spec)):
        fn, name, kwargs = spec, getattr(spec, "__name__", type(spec).__name__), dict(args)
    else:
        spec = as_spec(spec, args, "model")
        fn, name, kwargs = MODELS.resolve(spec.name, trusted=trusted), spec.name, dict(spec.args)
    for key in _DATA_ARGS:
        if key in kwargs and not _takes(fn, key):
            del kwargs[key]
    check_args(fn, kwargs, f"model '{name}'")
    if _ZOO.get(name) is fn:  # the toolkit's own model (not one registered over its name)
        _check_zoo_args(name, kwargs)
    for key in ("input_shape", "widths"):  # stored as JSON lists; the zoo wants tuples
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    try:
        model = fn(**kwargs)
    except TypeError as e:
        raise SharpnessError(f"bad arguments for model '{name}': {' '.join(str(e).split())}") from None
    except SharpnessError:
        raise
    except Exception as e:  # the factory's own failure, e.g. a bad value: one line, the cause kept
        raise SharpnessError(f"model factory '{printable(name, 200)}' failed: {type(e).__name__}: "
                             f"{printable(_first_line(e), 300)}") from e
    except SystemExit as e:  # sys.exit() in a factory must not end the caller's program as a success
        raise SharpnessError(f"model factory '{printable(name, 200)}' called sys.exit({printable(e.code, 60)}) "
                             "instead of returning a model") from None
    if not isinstance(model, nn.Module):
        raise SharpnessError(f"model factory '{name}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
