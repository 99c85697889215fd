"""The model's loss as a function of a flat parameter vector, evaluated without touching the model.

Every measure that moves the weights (ε-sharpness, adaptive sharpness, landscapes) evaluates
L(θ) through :func:`torch.func.functional_call` with parameters that are views into one flat
device tensor, so the caller's module is never written to, and the data stay on the device.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from .curvature.operator import batches_on_device
from .model_state import preserved, set_mode

__all__ = ["FlatModel", "subset"]


def subset(data: Any, n: int | None, seed: int) -> Any:
    """A fixed, seeded random subset of ``n`` examples of (X, y) tensors or a TensorDataset (None: all)."""
    from .data import as_tensors

    pair = as_tensors(data)
    if n is None or pair is None or n >= len(pair[1]):
        return data
    idx = torch.randperm(len(pair[1]), generator=torch.Generator().manual_seed(seed))[:n]
    return pair[0][idx], pair[1][idx]


class FlatModel:
    """L(θ) and accuracy for a flat parameter vector θ, over all of ``data`` (batches weighted by size).

    Args:
        model: the caller's module (read, never modified: buffers and mode are restored).
        loss_fn: ``loss_fn(output, y)`` → mean batch loss.
        data: (X, y) tensors, a Dataset or a DataLoader; moved to the model's device once.
        batch_size: split the data into batches of this size (memory); None = one batch.
        mode: ``"eval"`` (default) or ``"train"`` behaviour of BN and dropout.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable | None, data: Any, *, batch_size: int | None = None,
                 mode: str = "eval"):
        self.model = model
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.mode = mode
        named = [(n, p) for n, p in model.named_parameters()]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.x0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        self.device, self.dtype = self.x0.device, self.x0.dtype
        self.batches = batches_on_device(data, batch_size, self.device, self.dtype)
        self.num_samples = sum(len(y) for _, y in self.batches)
        self.n_evals = 0

    @property
    def num_params(self) -> int:
        """Length of θ."""
        return self.x0.numel()

    def params(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name → view of ``theta`` shaped like the model's parameter."""
        return {n: t.view(s) for n, t, s in zip(self.names, theta.split(self.sizes), self.shapes)}

    def forward(self, theta: torch.Tensor, x: torch.Tensor,
                buffers: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Model output at parameters θ, with the model's buffers or the given ones.

        In train mode the buffers are cloned first, so BN running statistics stay put.
        """
        state: dict[str, torch.Tensor] = self.params(theta)
        if buffers is not None:
            state.update(buffers)
        elif self.mode == "train":
            state.update({n: b.clone() for n, b in self.model.named_buffers()})
        return functional_call(self.model, state, (x,))

    def loss(self, theta: torch.Tensor, *, grad: bool = False) -> tuple[float, torch.Tensor | None]:
        """Mean loss at θ over the data, and (if ``grad``) its gradient as a flat tensor. One pass."""
        total = 0.0
        g = torch.zeros_like(theta) if grad else None
        with preserved(self.model):
            set_mode(self.model, self.mode)
            for x, y in self.batches:
                w = len(y) / self.num_samples
                if grad:
                    t = theta.detach().requires_grad_(True)
                    with torch.enable_grad():
                        val = self.loss_fn(self.forward(t, x), y)
                        (gt,) = torch.autograd.grad(val, t)
                    g += w * gt
                else:
                    with torch.no_grad():
                        val = self.loss_fn(self.forward(theta, x), y)
                total += w * float(val.detach())
        self.n_evals += 1
        return total, g

    @torch.no_grad()
    def loss_and_accuracy(self, theta: torch.Tensor,
                          buffers: dict[str, torch.Tensor] | None = None) -> tuple[float, float]:
        """Mean loss and accuracy (argmax = label) at θ over the data. One forward pass."""
        total, correct = 0.0, 0
        with preserved(self.model):
            set_mode(self.model, self.mode)
            for x, y in self.batches:
                out = self.forward(theta, x, buffers)
                total += len(y) / self.num_samples * float(self.loss_fn(out, y))
                if out.dim() == 2 and y.dim() == 1:
                    correct += int((out.argmax(1) == y).sum())
        self.n_evals += 1
        return total, correct / self.num_samples
