"""Model zoo by name, and Ghost Batch Normalization.

Each model is built from a :class:`ModelSpec` (name + arguments, with ``input_shape`` and
``num_classes`` filled in from the data) that checkpoints store, so a checkpoint rebuilds its model
without the training code. This module imports nothing from training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import SharpnessError

__all__ = ["ModelSpec", "build_model", "model_names", "GhostBatchNorm"]


class GhostBatchNorm(_BatchNorm):
    """Batch normalization with statistics computed per *ghost batch* (Hoffer et al. 2017, §4.1).

    In training, a batch larger than ``ghost_batch_size`` is split into consecutive chunks of that size
    (the last may be smaller); each chunk is normalized with its own mean and variance, and the running
    statistics are updated once per chunk, exactly as plain BN applied to each chunk in turn would do.
    In eval mode, the running statistics are used. ``ghost_batch_size=None`` is plain BN. Works on
    (N, C), (N, C, L) and (N, C, H, W) inputs.
    """

    def __init__(self, num_features: int, ghost_batch_size: int | None = None, **kwargs: Any):
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


@dataclass(frozen=True)
class ModelSpec:
    """A model by name and arguments (``input_shape`` and ``num_classes`` included)."""

    name: str = "mlp"
    args: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain-dict form, as stored in checkpoints."""
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(name=str(d["name"]), args=dict(d.get("args", {})))


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


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "keskar-f1": keskar_f1,
    "keskar-c1": keskar_c1,
    "resnet20": lambda input_shape, num_classes, **kw: ResNetCifar(input_shape, num_classes, n=3, **kw),
    "mnist1d-cnn": mnist1d_cnn,
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def build_model(spec: ModelSpec | dict | str, **args: Any) -> nn.Module:
    """Build a freshly initialised model from its spec (seed torch first for a reproducible init).

    Args:
        spec: a :class:`ModelSpec`, its dict form, or a registered name (then ``args`` are its arguments).
            The arguments must include ``input_shape`` and ``num_classes``.
        **args: the model's arguments when ``spec`` is a name.

    Raises:
        SharpnessError: unknown name or arguments the model does not take.
    """
    if isinstance(spec, dict):
        spec = ModelSpec.from_dict(spec)
    if isinstance(spec, str):
        spec = ModelSpec(spec, args)
    if spec.name not in _REGISTRY:
        raise SharpnessError(f"unknown model '{spec.name}'; known: {', '.join(model_names())}")
    kwargs = dict(spec.args)
    for key in ("input_shape", "widths"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    try:
        return _REGISTRY[spec.name](**kwargs)
    except TypeError as e:
        raise SharpnessError(f"bad arguments for model '{spec.name}': {e}") from None
