"""Data-parallel Hessian products: HVP throughput and top-5 eigenvalue time for 1, 2, … processes.

    python benchmarks/distributed.py                   # CPU: gloo processes on this machine
    python benchmarks/distributed.py --device cuda     # one process per GPU (NCCL)

Each size is a ``torchrun --standalone --nproc_per_node=W`` job of this file; its ranks split the data
(:mod:`sharpness.distributed`) and all-reduce every product. Model: MLP 40-256-256-10 on MNIST-1D
(8000 examples, batches of 1000; untrained weights: the cost of a product does not depend on them); on
CUDA a torchvision ResNet-50 on random ImageNet-shaped data. Then a paper estimate of ResNet-50 /
ImageNet top-5 eigenvalues on 8 and 64 GPUs from a per-GPU HVP cost and an all-reduce bandwidth, both
given on the command line (their defaults are stated assumptions, not measurements of this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch


def worker(device: str, n_hvps: int) -> None:
    from sharpness.curvature import HessianOperator, hessian_eigenvalues
    from sharpness.distributed import launched, rank_and_world
    from sharpness.objective import Objective

    with launched(device) as dev:
        torch.manual_seed(0)
        if dev.startswith("cuda"):
            import torchvision

            model = torchvision.models.resnet50(num_classes=1000).to(dev).eval()
            x, y = torch.randn(512, 3, 224, 224), torch.randint(0, 1000, (512,))
            batch = 64
        else:
            import sharpness as sh

            model = sh.models.build_model(sh.specs.Spec("mlp", {"widths": [256, 256], "input_shape": [40],
                                                                 "num_classes": 10})).eval()
            train, _ = sh.data.load_data(sh.specs.Spec("mnist1d", {"num_samples": 10000}))
            x, y = train.tensors
            batch = 1000
        op = HessianOperator(Objective(model, "cross_entropy", (x, y), batch_size=batch))
        v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(1)).to(op.device)
        op.matvec(v)  # warm-up
        sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
        sync()
        t = time.perf_counter()
        for _ in range(n_hvps):
            op.matvec(v)
        sync()
        hvp = (time.perf_counter() - t) / n_hvps
        t = time.perf_counter()
        eig = hessian_eigenvalues(op, k=5, tol=1e-3, seed=0)
        sync()
        top5 = time.perf_counter() - t
        rank, world = rank_and_world()
        if rank == 0:
            print(json.dumps({"world": world, "hvp_s": hvp, "top5_s": top5, "top5_hvps": eig.n_hvps,
                              "lambda_max": float(eig.values[0]), "params": op.num_params,
                              "examples": len(y)}), flush=True)


def run(world: int, device: str, n_hvps: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}", __file__,
           "--worker", "--device", device, "--hvps", str(n_hvps)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def estimate(hvp_gpu_img_s: float, busbw_gbs: float, top5_hvps: int) -> list[tuple[int, float, float, float]]:
    """(GPUs, compute s, all-reduce s, total s) per top-5 run on ImageNet (1.28 M images) with ResNet-50."""
    images, params = 1_281_167, 25_557_032
    rows = []
    for g in (8, 64):
        compute = images / (hvp_gpu_img_s * g)
        # ring all-reduce of the fp32 product: each GPU moves 2 (G−1)/G of the vector at the bus bandwidth
        comm = 2 * (g - 1) / g * params * 4 / (busbw_gbs * 1e9)
        rows.append((g, top5_hvps * compute, top5_hvps * comm, top5_hvps * (compute + comm)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hvps", type=int, default=20)
    p.add_argument("--worlds", default="1,2")
    p.add_argument("--threads", type=int, default=1, help="threads per process (OMP_NUM_THREADS)")
    p.add_argument("--hvp-img-per-s", type=float, default=400.0,
                   help="ResNet-50 HVP throughput of one GPU in images/s (assumption: an fp32 gradient at "
                        "~700 img/s on an A100/H100-class GPU, and an HVP costing ~1.6–1.8 gradients as "
                        "measured for ResNet-18 on an H100 in results_gpu_h100.txt)")
    p.add_argument("--busbw", type=float, default=100.0,
                   help="NCCL all-reduce bus bandwidth in GB/s (assumption: NVLink within a node reaches "
                        "~200, InfiniBand across nodes ~25–50; 100 is between)")
    a = p.parse_args()
    if a.worker:
        worker(a.device, a.hvps)
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"device {a.device}, {a.threads} thread(s) per process")
    rows = [run(int(w), a.device, a.hvps, a.threads) for w in a.worlds.split(",")]
    base = rows[0]
    print("\n| processes | examples per rank | HVP s | HVPs/s | speed-up | top-5 s (HVPs) | λ_max |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['world']} | {r['examples'] // r['world']} | {r['hvp_s']:.4f} | {1 / r['hvp_s']:.1f} | "
              f"{base['hvp_s'] / r['hvp_s']:.2f}× | {r['top5_s']:.2f} ({r['top5_hvps']}) | {r['lambda_max']:.6g} |")
    print(f"\nEstimate, ResNet-50 / ImageNet top-5 eigenvalues ({base['top5_hvps']} HVPs as measured above; "
          f"{a.hvp_img_per_s:g} img/s per GPU per HVP and {a.busbw:g} GB/s all-reduce: assumptions):")
    print("| GPUs | compute | all-reduce | total |\n|---|---|---|---|")
    for g, c, m, t in estimate(a.hvp_img_per_s, a.busbw, base["top5_hvps"]):
        print(f"| {g} | {c / 60:.1f} min | {m:.2f} s | {t / 60:.1f} min |")


if __name__ == "__main__":
    main()
