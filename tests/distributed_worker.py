"""Every data-parallel analyzer on one tiny float64 problem: run by torchrun in test_distributed.py.

``compute()`` with no process group is the single-process reference; under ``torchrun`` every rank
computes the same dict from its shard, and each rank writes it to ``OUT/rank{R}.pt``.
"""

import os
import sys

import torch
from torch import nn

from sharpness.curvature import HessianOperator, hessian_eigenvalues, hessian_trace, spectral_density
from sharpness.landscape import interpolate, surface
from sharpness.measures import adaptive_sharpness, eps_sharpness, gradient_noise_scale, pacbayes_flatness
from sharpness.objective import Objective

N = 23  # three ranks hold 8, 8 and 7 examples


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    model[1].running_mean.normal_()
    model.eval()
    other = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(N, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (N,))
    return model, other, (x, y)


def compute(out: str | None = None) -> dict:
    model, other, data = problem()
    obj = Objective(model, "cross_entropy", data, batch_size=5)  # uneven batches inside each shard too
    loss, acc = obj.evaluate()
    _, g = obj.loss_at(grad=True)
    op = HessianOperator(obj)
    V = torch.randn(op.num_params, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    summed = Objective(model, nn.CrossEntropyLoss(reduction="sum"), data, batch_size=7)
    # a DataLoader per rank (a DistributedSampler; 18 examples: no padding for 2 or 3 ranks)
    few = torch.utils.data.TensorDataset(data[0][:18], data[1][:18])
    sampler = torch.utils.data.DistributedSampler(few, shuffle=False) if torch.distributed.is_initialized() else None
    loader = torch.utils.data.DataLoader(few, batch_size=4, sampler=sampler)
    return {
        "n": torch.tensor(float(obj.num_samples)),
        "loss": torch.tensor([loss, acc]),
        "grad": g,
        "hv": op.matmat(V),
        "hv_sum": HessianOperator(summed).matmat(V),
        "hv_loader": HessianOperator(Objective(model, "cross_entropy", loader)).matmat(V),
        "eig": torch.tensor(hessian_eigenvalues(op, k=3, seed=0).values.copy()),
        "trace": torch.tensor(hessian_trace(op, max_hvps=40, seed=0).value),
        "density": torch.tensor(spectral_density(op, n_runs=2, steps=10, seed=0).density),
        "eps": torch.tensor(eps_sharpness(obj, eps=1e-2, max_iter=5, seed=0).value),
        # batches of 7: the last holds 2 examples, fewer than 3 ranks
        "adaptive": torch.tensor([adaptive_sharpness(obj, rho=0.05, kind=k, n_samples=N, batch_size=7, steps=4,
                                                     seed=0).value for k in ("worst", "average")]),
        "noise": torch.tensor([gradient_noise_scale(obj, batch_sizes=b, n_batches=4, seed=0).b_simple
                               for b in ("per-example", (4, 12))]),
        "pacbayes": torch.tensor(pacbayes_flatness(obj, n_draws=4, iters=8, seed=0).value),
        "surface": torch.tensor(surface(obj, dims=2, steps=3, seed=0, progress=False).loss),
        "surface_points": torch.tensor(surface(obj, dims=2, steps=3, seed=0, progress=False, split="points",
                                               bn="recompute").loss),
        # a surface on this rank alone (distributed=False) is written by this rank, whatever its rank
        "alone": torch.tensor(surface(obj.model, "cross_entropy", data, dims=1, steps=3, seed=0, progress=False,
                                      distributed=False, out=out and os.path.join(out, f"alone{rank()}.npz")).loss),
        "interp": torch.tensor(interpolate(model, other, "cross_entropy", {"train": data}, alphas=[0.0, 0.5, 1.0],
                                           progress=False).loss["train"]),
    }


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


if __name__ == "__main__":
    torch.distributed.init_process_group("gloo")
    out = compute(sys.argv[1])
    assert os.path.exists(os.path.join(sys.argv[1], f"alone{rank()}.npz"))
    torch.save(out, os.path.join(sys.argv[1], f"rank{rank()}.pt"))
    torch.distributed.destroy_process_group()
