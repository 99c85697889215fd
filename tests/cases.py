"""Seeded tiny float64 problems with their dense Hessians from torch.func (the ground truth)."""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call


@dataclass
class Case:
    name: str
    model: nn.Module
    loss_fn: Callable
    x: torch.Tensor
    y: torch.Tensor

    def dense_hessian(self, mode: str = "eval") -> torch.Tensor:
        return dense_hessian(self.model, self.loss_fn, self.x, self.y, mode)


def dense_hessian(model, loss_fn, x, y, mode="eval"):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    was = model.training
    model.train(mode == "train")

    def f(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[i:i + s.numel()].view(s)
            i += s.numel()
        return loss_fn(functional_call(model, ({**params, **{k: v.clone() for k, v in buffers.items()}},), (x,)), y)

    # Reverse-over-reverse (autograd), not torch.func.hessian: on torch 2.13 forward-over-reverse gives
    # asymmetric, wrong Hessians through train-mode BatchNorm, LayerNorm (|H − Hᵀ| = 0.056 on the
    # conv2d-ln case) and nn.Embedding. Reverse-over-reverse agrees with the operator to 1e-16 there.
    H = torch.autograd.functional.hessian(f, flat)
    model.train(was)
    return H


def _mlp(act, bn=False):
    layers = [nn.Linear(5, 7)]
    if bn:
        layers.append(nn.BatchNorm1d(7))
    layers += [act(), nn.Linear(7, 3)]
    return nn.Sequential(*layers)


class SmallConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3)
        self.fc = nn.Linear(3 * 6, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x.unsqueeze(1))).flatten(1))


class SmallConv2d(nn.Module):
    """4-D conv weights and a LayerNorm: the shapes of users' conv nets and transformers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.LayerNorm(18)
        self.fc = nn.Linear(18, 3)

    def forward(self, x):
        return self.fc(self.norm(torch.tanh(self.conv(x.view(-1, 1, 5, 5))).flatten(1)))


def make_cases(n: int = 23) -> list[Case]:
    cases = []
    for name, build, loss, ydim in [
        ("mlp-tanh-mse", lambda: _mlp(nn.Tanh), nn.MSELoss(), "reg"),
        ("mlp-relu-ce", lambda: _mlp(nn.ReLU), nn.CrossEntropyLoss(), "cls"),
        ("mlp-bn-ce", lambda: _mlp(nn.Tanh, bn=True), nn.CrossEntropyLoss(), "cls"),
        ("conv-ce", SmallConv, nn.CrossEntropyLoss(), "cls"),
        ("conv2d-ln-ce", SmallConv2d, nn.CrossEntropyLoss(), "cls"),
    ]:
        torch.manual_seed(len(cases))
        model = build().double()
        if name == "mlp-bn-ce":  # non-trivial running statistics, as after training
            model.train()
            with torch.no_grad():
                for _ in range(3):
                    model(torch.randn(16, 5, dtype=torch.float64) * 2 + 0.5)
        model.eval()
        x = torch.randn(n, {"conv-ce": 8, "conv2d-ln-ce": 25}.get(name, 5), dtype=torch.float64)
        y = torch.randn(n, 3, dtype=torch.float64) if ydim == "reg" else torch.randint(0, 3, (n,))
        cases.append(Case(name, model, loss, x, y))
    return cases
