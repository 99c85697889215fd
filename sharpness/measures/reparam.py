"""Dinh et al. 2017's reparametrization: rescale a ReLU network without changing its function.

For consecutive weight layers i and i+1 separated only by positively homogeneous operations (ReLU,
LeakyReLU, max-pooling, flatten, dropout), (θ_i, θ_{i+1}) → (αθ_i, θ_{i+1}/α) with α > 0 leaves the
network's output unchanged (layer i's bias scales with α too), yet can make a minimum look
arbitrarily sharp to Hessian eigenvalues or ε-sharpness. Adaptive sharpness is invariant to it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..checks import require
from ..errors import SharpnessError
from ..objective import check_module

__all__ = ["rescale_relu_layers", "weight_layers"]

_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Unflatten, nn.Dropout,
                nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _flat_modules(model: nn.Module) -> list[nn.Module]:
    """Leaf modules in forward order, for models built as (nested) ``nn.Sequential``."""
    if not isinstance(model, nn.Sequential):
        raise SharpnessError("rescale_relu_layers needs an nn.Sequential model (the forward order must be "
                         f"known); got {type(model).__name__}")
    out = []
    for m in model:
        out.extend(_flat_modules(m) if isinstance(m, nn.Sequential) else [m])
    return out


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear/Conv layers of a Sequential model, in forward order (what ``layer`` indexes)."""
    check_module("model", model)
    return [m for m in _flat_modules(model) if isinstance(m, _WEIGHTED)]


def rescale_relu_layers(model: nn.Module, layer: int, alpha: float) -> nn.Module:
    """A function-equivalent copy with weight layer ``layer`` scaled by α and layer ``layer + 1`` by 1/α.

    Args:
        model: an ``nn.Sequential`` network (not modified).
        layer: index into :func:`weight_layers` of the first of the two layers.
        alpha: the positive scale α.

    Raises:
        SharpnessError: α not a finite number in [1e-12, 1e12], no such pair of layers, or something other than a positively homogeneous
            operation (e.g. tanh, batch norm) between them, which would change the function.
    """
    check_module("model", model)
    require("layer", layer, int, ge=0)
    # α·θ and θ/α must stay representable: beyond 1e±12 a float32 weight over/underflows to inf or 0
    require("alpha", alpha, float, ge=1e-12, le=1e12)
    alpha = float(alpha)
    new = copy.deepcopy(model)
    mods = _flat_modules(new)
    weighted = [i for i, m in enumerate(mods) if isinstance(m, _WEIGHTED)]
    if not 0 <= layer < len(weighted) - 1:
        raise SharpnessError(f"layer must be in 0..{len(weighted) - 2} (the model has {len(weighted)} weight layers)")
    a, b = weighted[layer], weighted[layer + 1]
    between = [m for m in mods[a + 1:b] if not isinstance(m, _HOMOGENEOUS)]
    if between:
        raise SharpnessError(f"layers {layer} and {layer + 1} are separated by {type(between[0]).__name__}, "
                         "which is not positively homogeneous; rescaling would change the function")
    with torch.no_grad():
        mods[a].weight.mul_(alpha)
        if mods[a].bias is not None:
            mods[a].bias.mul_(alpha)
        mods[b].weight.div_(alpha)
    return new
