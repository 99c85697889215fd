"""Data parallelism over ``torch.distributed``: which examples a rank holds, and sums over the ranks.

With a process group of W > 1 ranks (``torchrun``, or the user's own ``init_process_group``), an
:class:`~sharpness.objective.Objective` over in-memory data or a Dataset keeps the examples
i ≡ rank (mod W) — ``DistributedSampler``'s split (shuffle off) without its padding, so every example
counts exactly once and shards differ by at most one example — and every sum over the data (loss,
correct predictions, gradient, Hessian-vector products, the normalizer) is all-reduced, so each rank
holds the full-data result. Dividing the all-reduced sum by the all-reduced count weights each rank by its
number of examples. A DataLoader is taken as this rank's shard already (the user's DistributedSampler; one
with padding counts its repeated examples twice).

Every rank must make the same calls in the same order (collectives): the analyzers do, because the same
seed draws the same vectors on every rank.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

__all__ = ["rank_and_world", "shard", "all_sum", "all_sum_floats", "is_main"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and without a process group): the rank that writes files."""
    return rank_and_world()[0] == 0


def shard(n: int, rank: int, world: int) -> torch.Tensor:
    """The positions of rank ``rank``'s examples among ``n`` (rank, rank + W, rank + 2W and so on)."""
    return torch.arange(n)[rank::world]


def all_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    """``t`` summed over the ranks (a new tensor; ``t`` itself when ``world`` is 1)."""
    if world == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_sum_floats(values: Sequence[float], world: int, device: torch.device | str = "cpu") -> list[float]:
    """Python numbers summed over the ranks in one all-reduce (float64, on ``device``: NCCL needs CUDA)."""
    if world == 1:
        return [float(v) for v in values]
    return all_sum(torch.tensor([float(v) for v in values], dtype=torch.float64, device=device), world).tolist()
