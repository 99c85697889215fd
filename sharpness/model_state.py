"""Leave the caller's model exactly as it was: parameters, buffers and train/eval mode of every module."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

__all__ = ["preserved", "set_mode"]


@contextlib.contextmanager
def preserved(model: nn.Module, *, params: bool = False) -> Iterator[nn.Module]:
    """Restore each module's training flag, each buffer and optionally each parameter on exit.

    Restores also when the body raises; ``params=True`` snapshots parameter values too.

    BN running statistics change in a train-mode forward; perturbation-based measures change parameters
    in place. Snapshots are device-side clones, so nothing crosses to the host.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    values = [(p, p.detach().clone()) for p in model.parameters()] if params else []
    try:
        yield model
    finally:
        with torch.no_grad():
            for t, saved in buffers + values:
                # Only write what changed: an in-place write would invalidate autograd graphs that
                # saved this tensor (eval-mode BN saves its running statistics for backward).
                if not torch.equal(t, saved):
                    t.copy_(saved)
        for m, training in modes:
            m.training = training


def set_mode(model: nn.Module, mode: str) -> None:
    """Put ``model`` in ``"eval"`` or ``"train"`` mode (BN and dropout behaviour)."""
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train' (got {mode!r})")
    model.train(mode == "train")
