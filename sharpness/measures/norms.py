"""Norm-based baselines of Jiang et al. 2020 (§C.1): products of the weights' norms, distance from init.

Over the weight tensors W_l (parameters with two or more dimensions — Linear, Conv, Embedding weights;
a convolution's kernel reshaped to (out channels) × (the rest), the common reading; Jiang et al. do not
spell the reshape out):

    log_prod_fro  = Σ_l log ‖W_l‖_F         ("log.prod.of.fro")
    log_prod_spec = Σ_l log ‖W_l‖₂          ("log.prod.of.spec", ‖·‖₂ the largest singular value)
    sum_fro_sq    = Σ_l ‖W_l‖_F²            (the squared ℓ2 norm of the weights, weight decay's quantity)

θ is the parameters every measure of an analysis takes (those that require grad, or ``params=``; see
:mod:`sharpness.objective`): frozen layers and unselected ones are not in these sums. Over a whole trained
network (nothing frozen, no ``params=``) this is Jiang et al.'s definition.

Logarithms, because the products overflow for deep networks. Jiang et al. found several of these
correlate *negatively* with the generalization gap.

Distance from the initialization w₀ (Nagarajan & Kolter 2019; Jiang et al.'s "frob.distance" and
"dist.spec.init"):

    distance      = ‖w − w₀‖₂ over every parameter of θ (biases and norm layers too: the trainer's ‖w − w₀‖)
    relative      = ‖w − w₀‖₂ / ‖w₀‖₂
    spec_dist_sq  = Σ_l ‖W_l − W_l⁰‖₂²      (weight tensors only, reshaped as above)
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
from torch import nn

from ..errors import SharpnessError
from ..objective import check_module, select_params

__all__ = ["norm_baselines", "distance_from_init"]


def _matrices(named: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The weight tensors (two or more dimensions) as float64 matrices (out channels) × (the rest)."""
    for name, p in named:
        if p.dim() >= 2:
            yield name, p.detach().double().reshape(p.shape[0], -1)


def norm_baselines(model: nn.Module, params: str | Iterable[str] | None = None) -> dict[str, float]:
    """{log_prod_fro, log_prod_spec, sum_fro_sq, n_layers} of the weight tensors of θ (read only).

    ``params``: glob patterns choosing θ among the parameters that require grad (None: all of them).
    """
    check_module("model", model)
    logs_fro, logs_spec, sq = 0.0, 0.0, 0.0
    n = 0
    with torch.no_grad():
        for _, W in _matrices(iter(select_params(model, params))):
            fro = float(torch.linalg.matrix_norm(W, "fro"))
            spec = float(torch.linalg.matrix_norm(W, 2))
            logs_fro += math.log(fro) if fro > 0 else -math.inf
            logs_spec += math.log(spec) if spec > 0 else -math.inf
            sq += fro ** 2
            n += 1
    return {"log_prod_fro": logs_fro, "log_prod_spec": logs_spec, "sum_fro_sq": sq, "n_layers": n}


def distance_from_init(model: nn.Module, init: dict[str, torch.Tensor], *, where: str = "init",
                       params: str | Iterable[str] | None = None) -> dict[str, float]:
    """{distance, relative, spec_dist_sq} of θ from ``init`` (a state dict; read only).

    ``params``: glob patterns choosing θ among the parameters that require grad (None: all of them).

    Raises:
        SharpnessError: ``init`` lacks one of θ's parameters or holds it with another shape.
    """
    check_module("model", model)
    if not isinstance(init, dict):
        raise SharpnessError(f"{where}: expected a state dict of name → tensor (got {type(init).__name__})")
    params = dict(select_params(model, params))
    for name, p in params.items():
        if name in init and not isinstance(init[name], torch.Tensor):
            raise SharpnessError(f"{where}: parameter {name} is a {type(init[name]).__name__} there, not a tensor")
        if name in init and not (init[name].is_floating_point() and bool(torch.isfinite(init[name]).all())):
            raise SharpnessError(f"{where}: parameter {name} is not a tensor of finite real numbers there")
        if name not in init or tuple(init[name].shape) != tuple(p.shape):
            got = "missing" if name not in init else f"shape {tuple(init[name].shape)}"
            raise SharpnessError(f"{where}: does not fit the model: parameter {name} of shape {tuple(p.shape)} "
                                 f"is {got} there")
    with torch.no_grad():
        diff = {n: p.detach().double() - init[n].detach().to(p.device, torch.float64) for n, p in params.items()}
        dist = math.sqrt(sum(float(d.square().sum()) for d in diff.values()))
        norm0 = math.sqrt(sum(float(init[n].detach().double().square().sum()) for n in params))
        spec = sum(float(torch.linalg.matrix_norm(W, 2)) ** 2 for _, W in _matrices(iter(diff.items())))
    return {"distance": dist, "relative": dist / norm0 if norm0 > 0 else math.inf, "spec_dist_sq": spec}
