"""Data parallelism over ``torch.distributed``: which examples a rank holds, and sums over the ranks.

With a process group of W > 1 ranks (``torchrun``, or the user's own ``init_process_group``), an
:class:`~sharpness.objective.Objective` over in-memory data or a Dataset keeps the examples
i ≡ rank (mod W) — ``DistributedSampler``'s split (shuffle off) without its padding, so every example
counts exactly once and shards differ by at most one example (fewer examples than ranks: every rank
takes them all, nothing is split) — and every sum over the data (loss,
correct predictions, gradient, Hessian-vector products, the normalizer) is all-reduced, so each rank
holds the full-data result. Dividing the all-reduced sum by the all-reduced count weights each rank by its
number of examples. A DataLoader is taken as this rank's shard already (the user's DistributedSampler; one
with padding counts its repeated examples twice).

Every rank must make the same calls in the same order (collectives): the analyzers do, because the same
seed draws the same vectors on every rank.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from .errors import SharpnessError

__all__ = ["rank_and_world", "shard", "all_sum", "all_sum_floats", "is_main", "from_main", "per_rank",
           "launched", "launched_world"]


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


def from_main(value):
    """Rank 0's ``value`` on every rank (a decision all ranks must share, e.g. whether a result is cached)."""
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def per_rank(n: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's ``n`` (e.g. its number of examples), in rank order."""
    rank, world = rank_and_world()
    counts = [0.0] * world
    counts[rank] = float(n)
    return [int(c) for c in all_sum_floats(counts, world, device)]


def launched_world() -> int:
    """The world size torchrun gave this process (``WORLD_SIZE``; 1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _check_cuda(device: str, local: int) -> None:
    """Refuse ``--device cuda`` under torchrun where this process has no GPU ``local`` to take.

    Rank 0 says why in one line (:class:`SharpnessError`); the other ranks exit with code 2 silently, so
    the log holds one line rather than a traceback per rank.

    Raises:
        SharpnessError: on rank 0; ``SystemExit(2)`` on the others.
    """
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        return
    if not torch.cuda.is_available():
        why = ("this torch is built without CUDA" if torch.version.cuda is None
               else f"torch {torch.__version__} sees no GPU")
    else:
        why = f"LOCAL_RANK {local} but {torch.cuda.device_count()} GPU(s) visible: one GPU per process"
    if int(os.environ.get("RANK", "0") or 0) != 0:
        raise SystemExit(2)
    raise SharpnessError(f"--device {device} under torchrun: {why}; use --device cpu (gloo) or a CUDA build")


@contextlib.contextmanager
def launched(device: str) -> Iterator[str]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): the default process group for the command, and its device.

    gloo for CPU, NCCL for CUDA with each rank on ``cuda:LOCAL_RANK``. Collectives time out after
    ``SHARPNESS_DIST_TIMEOUT`` seconds (default 300), so a rank that died stops the others with an error
    instead of a hang (torchrun also stops the job when a rank exits with an error). Without torchrun, or
    with a group the caller made: nothing is done and ``device`` comes back as it was.
    """
    if launched_world() == 1 or (dist.is_available() and dist.is_initialized()):
        yield device
        return
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        _check_cuda(device, local)
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    timeout = datetime.timedelta(seconds=float(os.environ.get("SHARPNESS_DIST_TIMEOUT", "300")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    try:
        yield device
    finally:
        dist.destroy_process_group()
