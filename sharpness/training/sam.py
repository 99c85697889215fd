"""Sharpness-aware minimization around any base optimizer: SAM (Foret et al. 2021), ASAM (Kwon et al. 2021).

One step, with g = ∇L_B(w) the gradient of the batch loss (already in ``.grad`` when ``step`` is called):

    ε̂ = ρ · T² g / ‖T g‖          T = I (SAM),  T = diag(|w| + η) elementwise (ASAM)
    g_SAM = ∇L_B(w + ε̂)           (``closure()``: a second forward and backward on the same batch)
    w ← base step from w with gradient g_SAM

‖·‖ is over all parameters together (Foret et al.'s Eq. 2 with p = 2). For SAM ε̂ = ρ g/‖g‖. Weight
decay and momentum are the base optimizer's, applied to g_SAM as to any gradient. m-sharpness (ε̂ per
sub-batch of m examples) is not implemented: ε̂ is computed from the whole batch's gradient (under
data parallelism, the all-reduced one).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..checks import require
from ..errors import SharpnessError
from ..errors import short as _short

__all__ = ["SAM"]


class SAM(torch.optim.Optimizer):
    """SAM / ASAM wrapping ``base``; its ``param_groups`` and ``state`` are the base optimizer's.

    Args:
        base: the optimizer that takes the step (SGD, Adam, AdamW, ...).
        rho: neighbourhood radius ρ > 0.
        adaptive: ASAM (T = |w| + η) instead of SAM (T = I).
        eta: ASAM's η (Kwon et al. use 0.01).
    """

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01):
        if not isinstance(base, torch.optim.Optimizer) or isinstance(base, SAM):
            raise SharpnessError(f"SAM: base must be a torch optimizer such as torch.optim.SGD(model.parameters()) "
                                 f"(got {_short(base)}, of type {type(base).__name__})")
        require("SAM rho", rho, float, gt=0)
        require("SAM adaptive", adaptive, bool)
        require("SAM eta", eta, float, ge=0)
        self.base, self.rho, self.adaptive, self.eta = base, float(rho), bool(adaptive), float(eta)
        self.param_groups, self.state, self.defaults = base.param_groups, base.state, base.defaults

    def perturbation(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(parameter, ε̂ part) for every parameter with a gradient."""
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        scale = [(p.detach().abs() + self.eta) if self.adaptive else None for p in params]
        tg = [p.grad * s if s is not None else p.grad for p, s in zip(params, scale)]
        norm = torch.sqrt(sum((t.double() ** 2).sum() for t in tg)) if tg else torch.zeros(())
        if not norm > 0:
            return []
        return [(p, (self.rho / norm).to(p.dtype) * (t * s if s is not None else t))
                for p, t, s in zip(params, tg, scale)]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # noqa: D102 (the module docstring)
        if closure is None:
            raise SharpnessError("SAM needs a closure that recomputes the loss and its gradients")
        eps = self.perturbation()
        for p, e in eps:
            p.add_(e)
        with torch.enable_grad():
            loss = closure()
        for p, e in eps:
            p.sub_(e)
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: D102
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:  # noqa: D102
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102
        self.base.load_state_dict(state_dict)
