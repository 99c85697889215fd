"""Directions in parameter space for loss landscapes (Li et al. 2018; Goodfellow et al. 2015).

Every direction is a flat tensor on the model's device over θ — the parameters that require grad, or those
``params=`` selects, ordered as ``model.named_parameters()`` (:func:`~sharpness.objective.select_params`:
the one parameter space of every measure) — and comes in
a :class:`Directions` record that says how it was made (kind, normalization, seed) so results that use
it describe themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..checks import require
from ..errors import SharpnessError
from ..objective import SEED_MAX, check_module, flat_params, select_params

MAX_DIRECTIONS = 64  # directions drawn at once (1: a line, 2: a plane; more for a user's own projections)

__all__ = ["Directions", "random_directions", "between", "eigenvector_directions", "pca_directions",
           "flat_params", "cosine"]

_NORM_LAYERS = (_NormBase, nn.LayerNorm, nn.GroupNorm)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos∠(a, b)."""
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()).clamp_min(1e-300))


@dataclass
class Directions:
    """k directions (k × P tensor) and how they were made."""

    vectors: torch.Tensor
    kind: str                          # "random", "between", "eigenvectors", "pca", "given"
    normalization: str | None = None   # "filter", "layer", "none" (random directions)
    ignore: str | None = None          # "biasbn" or None
    seed: int | None = None
    info: dict = field(default_factory=dict)   # e.g. eigenvalues, explained variance, trajectory coords

    @property
    def cosine(self) -> float | None:
        """Cosine between the two directions of a plane (None for a line)."""
        return cosine(self.vectors[0], self.vectors[1]) if len(self.vectors) >= 2 else None

    def describe(self) -> dict:
        """Everything but the vectors, for reports."""
        return {"kind": self.kind, "normalization": self.normalization, "ignore": self.ignore,
                "seed": self.seed, "n": len(self.vectors), "cosine": self.cosine,
                "norms": [float(v.norm()) for v in self.vectors], **self.info}


def _ignored(model: nn.Module, params: list[nn.Parameter]) -> list[bool]:
    """Per parameter: a bias, or a parameter of a normalization layer (Li et al.'s 'biasbn')."""
    owner = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owner[id(p)] = m
    return [p.dim() <= 1 or isinstance(owner.get(id(p)), _NORM_LAYERS) for p in params]


def random_directions(model: nn.Module, n: int = 2, *, normalization: str = "filter",
                      ignore: str | None = "biasbn", seed: int = 0,
                      params: str | Sequence[str] | None = None) -> Directions:
    """Gaussian directions normalized as in Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets").

    Args:
        model: the centre model (read only).
        n: number of directions (1 for a line, 2 for a plane).
        normalization: ``"filter"`` (each filter — slice along dim 0 of a weight with ≥ 2 dims — is
            rescaled to the norm of the matching weight filter), ``"layer"`` (each parameter tensor to
            its weight's norm) or ``"none"``.
        ignore: ``"biasbn"``: biases and normalization-layer parameters get exactly zero direction.
            None: as Li et al.'s code without that flag, their direction is a copy of the weight.
        seed: the Gaussian draws (CPU generator, so the same on every device).
        params: glob patterns of the parameters θ spans (None: every parameter that requires grad).
    """
    check_module("model", model)
    require("n", n, int, ge=1, le=MAX_DIRECTIONS)
    require("normalization", normalization, str, choices=("filter", "layer", "none"))
    require("ignore", ignore, str, optional=True, choices=("biasbn",))
    require("seed", seed, int, ge=0, le=SEED_MAX)
    gen = torch.Generator().manual_seed(seed)
    params = [p for _, p in select_params(model, params)]
    skip = _ignored(model, params)
    out = []
    for _ in range(n):
        pieces = []
        for p, is_biasbn in zip(params, skip):
            w = p.detach()
            d = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device=w.device, dtype=w.dtype)
            if is_biasbn:
                d = torch.zeros_like(w) if ignore == "biasbn" else w.clone()
            elif normalization == "filter":
                # One norm per filter (slice along dim 0), for weights of any rank: Linear (2-D),
                # Conv1d/2d/3d (3- to 5-D), embeddings. Tensor.norm takes at most two dims.
                dims = tuple(range(1, w.dim()))
                norm = lambda t: torch.linalg.vector_norm(t, dim=dims, keepdim=True)  # noqa: E731
                d = d * (norm(w) / norm(d).clamp_min(1e-30))
            elif normalization == "layer":
                d = d * (w.norm() / d.norm().clamp_min(1e-30))
            pieces.append(d.reshape(-1))
        out.append(torch.cat(pieces))
    return Directions(torch.stack(out), "random", normalization, ignore, seed)


def between(model_a: nn.Module, model_b: nn.Module) -> Directions:
    """The direction θ_b − θ_a (for the line from a to b, or one axis of a plane)."""
    check_module("model_a", model_a)
    check_module("model_b", model_b)
    a, b = flat_params(model_a), flat_params(model_b)
    if a.shape != b.shape:
        raise SharpnessError(f"models differ in size ({a.numel()} vs {b.numel()} parameters)")
    return Directions((b - a).unsqueeze(0), "between")


def eigenvector_directions(model: nn.Module, loss_fn: Callable | None, data: Any, n: int = 2, *,
                           seed: int = 0, **eig_kwargs: Any) -> Directions:
    """The top-n Hessian eigenvectors (unit norm) from the curvature engine, eigenvalues in ``info``."""
    from ..curvature import HessianOperator, hessian_eigenvalues

    check_module("model", model)
    require("n", n, int, ge=1, le=MAX_DIRECTIONS)
    require("seed", seed, int, ge=0, le=SEED_MAX)
    r = hessian_eigenvalues(HessianOperator(model, loss_fn, data), k=n, seed=seed, **eig_kwargs)
    return Directions(r.vectors, "eigenvectors", seed=seed,
                      info={"eigenvalues": r.values.tolist(), "converged": r.converged})


def pca_directions(trajectory: Sequence[nn.Module | torch.Tensor], n: int = 2,
                   center: nn.Module | torch.Tensor | None = None) -> Directions:
    """PCA of a training trajectory (Li et al. 2018, §7): the top-n principal directions of θ_i − θ_final.

    ``info`` holds the explained-variance ratios and the coordinates of every trajectory point projected
    onto the (orthonormal) directions, for the trajectory-over-contours plot.
    """
    if not isinstance(trajectory, (list, tuple)) or len(trajectory) < 2 or not all(
            isinstance(t, (nn.Module, torch.Tensor)) for t in trajectory):
        raise SharpnessError("trajectory must be a list of at least two models or flat parameter tensors "
                             f"(got {type(trajectory).__name__})")
    require("n", n, int, ge=1, le=len(trajectory))
    if center is not None and not isinstance(center, (nn.Module, torch.Tensor)):
        raise SharpnessError(f"center must be None, a model or a flat tensor (got {type(center).__name__})")
    flats = [t.detach().reshape(-1) if isinstance(t, torch.Tensor) else flat_params(t) for t in trajectory]
    c = flats[-1] if center is None else (center.detach().reshape(-1) if isinstance(center, torch.Tensor)
                                          else flat_params(center))
    if any(f.shape != c.shape for f in flats) or not all(f.is_floating_point() for f in flats):
        raise SharpnessError(f"trajectory: every point must have the centre's {c.numel()} real parameters "
                             f"(got {sorted({f.numel() for f in flats})})")
    M = torch.stack([f - c for f in flats]).double()
    _, S, Vh = torch.linalg.svd(M, full_matrices=False)
    var = (S ** 2).cpu().numpy()
    ratio = var / var.sum() if var.sum() > 0 else var
    D = Vh[:n].to(flats[0].dtype)
    coords = (M @ Vh[:n].T).cpu().numpy()
    return Directions(D, "pca", info={"explained_variance_ratio": ratio[:n].tolist(),
                                      "trajectory_coords": coords.tolist()})


def as_directions(directions: Any, model: nn.Module, n: int, seed: int,
                  params: str | Sequence[str] | None = None) -> Directions:
    """Accept a normalization name ("filter", "layer", "none"), a Directions, or tensors (k × P)."""
    if isinstance(directions, Directions):
        return directions
    if isinstance(directions, str):
        return random_directions(model, n, normalization=directions, seed=seed, params=params)
    try:
        if isinstance(directions, (list, tuple)):
            directions = torch.stack([torch.as_tensor(d).reshape(-1) for d in directions])
        if isinstance(directions, (torch.Tensor, np.ndarray)):
            t = torch.as_tensor(directions)
        else:
            t = None
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or not t.is_floating_point() or t.dim() not in (1, 2) or t.numel() == 0:
        raise SharpnessError("directions must be 'filter', 'layer', 'none', a Directions or a (k × P) tensor of "
                             f"real numbers (got {type(directions).__name__})")
    if not bool(torch.isfinite(t).all()):
        raise SharpnessError("directions hold NaN or Inf values")
    return Directions(t.reshape(1, -1) if t.dim() == 1 else t, "given")
