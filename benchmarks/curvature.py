"""Curvature engine vs PyHessian 0.1, side by side in one process, on the same model and data.

    python benchmarks/curvature.py                 # CPU cases (MNIST-1D MLP full batch / batched, conv+BN)
    python benchmarks/curvature.py --device cuda   # torchvision ResNet-18, CIFAR-shaped random data, B=1024

Prints a table per case: wall time, Hessian-vector products, relative error against a reference
(scipy ARPACK ``eigsh`` at tol 1e-10 in float64 for eigenvalues; a long Hutch++ run for the trace),
and the ratios. Needs the ``peers`` extra (pyhessian).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch
from torch import nn

import sharpness as sh
from sharpness.curvature import HessianOperator, hessian_eigenvalues, hessian_trace

SEEDS = 10  # trace errors are random: compare means over seeds


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


class CountingPyHessian:
    """PyHessian's hessian class with its Hessian-vector products counted (patched once, globally)."""

    count = 0
    _patched = False

    def __init__(self, model, criterion, data=None, dataloader=None, cuda=False):
        import sys

        import pyhessian  # noqa: F401

        ph = sys.modules["pyhessian.hessian"]
        if not CountingPyHessian._patched:
            orig_hvp, orig_dl = ph.hessian_vector_product, ph.hessian.dataloader_hv_product

            def hvp(*a, **k):
                CountingPyHessian.count += 1
                return orig_hvp(*a, **k)

            def dl(this, v):
                CountingPyHessian.count += 1
                return orig_dl(this, v)

            ph.hessian_vector_product, ph.hessian.dataloader_hv_product = hvp, dl
            CountingPyHessian._patched = True
        CountingPyHessian.count = 0
        self.h = ph.hessian(model, criterion, data=data, dataloader=dataloader, cuda=cuda)

    @property
    def n_hvps(self):
        return CountingPyHessian.count


def trained_mnist1d(model_name, model_args, num_samples, epochs, batch_size=64):
    cfg = sh.TrainConfig(dataset="mnist1d", data_args={"num_samples": num_samples}, model=model_name,
                         model_args=model_args, batch_size=batch_size, epochs=epochs, lr=1e-3, seed=0)
    out = f"runs/bench-{model_name}-{num_samples}-{epochs}"
    ckpt = sh.train_model(cfg, out, progress=False)
    train, _ = ckpt.datasets()
    return ckpt.model(), train.tensors


def reference_eigs(model, data, batch_size, k):
    """Independent reference: ARPACK (scipy eigsh) on the float64 operator, tol 1e-10."""
    from scipy.sparse.linalg import eigsh

    op = HessianOperator(model, nn.functional.cross_entropy, data, batch_size=batch_size, dtype=torch.float64)
    vals = eigsh(op.as_linear_operator(), k=k, which="LA", tol=1e-10, return_eigenvectors=False)
    return np.sort(vals)[::-1]


def bench_case(name, model, data, batch_size, device, k=5, tol=1e-3, ref=True):
    model = model.to(device)
    x, y = data[0].to(device), data[1].to(device)
    loss_fn = nn.CrossEntropyLoss()
    rows = []
    print(f"\n## {name}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(y)} samples, "
          f"{'full batch' if batch_size is None else f'batches of {batch_size}'}, {device}")

    # --- cost of one product vs one gradient ---
    op = HessianOperator(model, loss_fn, (x, y), batch_size=batch_size)
    v = torch.randn(op.num_params, device=device)
    op.matvec(v), op.gradient()  # warm-up
    reps = 10  # best of 3 rounds of 10, so a busy moment on the machine doesn't decide the ratio
    t_grad = min(timed(lambda: [op.gradient() for _ in range(reps)], device)[1] for _ in range(3))
    t_hvp = min(timed(lambda: [op.matvec(v) for _ in range(reps)], device)[1] for _ in range(3))
    print(f"one HVP = {t_hvp / t_grad:.2f}× one gradient ({t_hvp / reps * 1e3:.1f} ms vs {t_grad / reps * 1e3:.1f} ms)")

    # --- top-k eigenvalues ---
    reference = reference_eigs(model.cpu(), (x.cpu(), y.cpu()), batch_size, k) if ref else None
    model.to(device)

    def ours():
        op, t_op = timed(lambda: HessianOperator(model, loss_fn, (x, y), batch_size=batch_size), device)
        r, t_eig = timed(lambda: hessian_eigenvalues(op, k=k, tol=tol, seed=0, progress=False), device)
        print(f"ours: operator built in {t_op:.3f} s, Lanczos {t_eig:.3f} s for {r.n_hvps} HVPs "
              f"({t_eig / r.n_hvps * 1e3:.1f} ms per HVP incl. orthogonalization)")
        return r

    ours()  # warm-up: first-call kernel selection is not what either method costs
    mine, t_mine = timed(ours, device)

    def make_peer(seed):
        """PyHessian on a copy (its constructor leaves .grad on the model), same data and batching."""
        torch.manual_seed(seed)
        m = copy.deepcopy(model)
        if batch_size is None:
            return CountingPyHessian(m, loss_fn, data=(x, y), cuda=device != "cpu")
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
        return CountingPyHessian(m, loss_fn, dataloader=loader, cuda=device != "cpu")

    def peer():
        ph = make_peer(0)
        vals, _ = ph.h.eigenvalues(top_n=k)
        return np.array(vals), ph.n_hvps

    (theirs, their_hvps), t_theirs = timed(peer, device)
    if reference is None:  # no reference (GPU case): a tight run of ours stands in
        reference = hessian_eigenvalues(HessianOperator(model, loss_fn, (x, y), batch_size=batch_size),
                                        k=k, tol=1e-6, max_hvps=500, progress=False).values
    err_mine = np.max(np.abs(mine.values - reference) / np.abs(reference))
    err_theirs = np.max(np.abs(theirs - reference) / np.abs(reference))
    sorted_theirs = bool(np.all(np.diff(theirs) <= 0))
    print(f"reference top-{k}: {np.array2string(reference, precision=5)}")
    print(f"PyHessian returned:  {np.array2string(theirs, precision=5)} ({'sorted' if sorted_theirs else 'NOT sorted'})")
    rows.append(("top-%d eigenvalues" % k, t_mine, mine.n_hvps, err_mine, t_theirs, their_hvps, err_theirs))

    # --- trace ---
    if ref:
        def peer_trace(seed):
            ph = make_peer(seed)
            t0 = time.perf_counter()
            est = float(np.mean(ph.h.trace()))
            return est, ph.n_hvps, time.perf_counter() - t0

        op = HessianOperator(model, loss_fn, (x, y), batch_size=batch_size)
        long = hessian_trace(op, rtol=1e-3, max_hvps=3000, sketch_size=100, seed=123, progress=False)
        ref_tr = long.value
        print(f"reference trace: {ref_tr:.5g} ± {long.stderr:.2g} (Krylov-aware Hutch++, {long.n_hvps} HVPs)")
        peer_runs = [peer_trace(s) for s in range(SEEDS)]
        n_peer = int(round(np.mean([r[1] for r in peer_runs])))
        t_peer = np.mean([r[2] for r in peer_runs])
        err_peer = np.mean([abs(r[0] - ref_tr) / abs(ref_tr) for r in peer_runs])
        mine_runs = []
        for s in range(SEEDS):
            op = HessianOperator(model, loss_fn, (x, y), batch_size=batch_size)
            r, t = timed(lambda: hessian_trace(op, rtol=0, max_hvps=max(n_peer, 3), seed=s, progress=False), device)
            mine_runs.append((r, t))
        err_mine_tr = np.mean([abs(r.value - ref_tr) / abs(ref_tr) for r, _ in mine_runs])
        rows.append((f"trace at PyHessian's {n_peer} HVPs (mean of {SEEDS} seeds)", np.mean([t for _, t in mine_runs]),
                     n_peer, err_mine_tr, t_peer, n_peer, err_peer))
        op = HessianOperator(model, loss_fn, (x, y), batch_size=batch_size)
        one, t_one = timed(lambda: hessian_trace(op, rtol=1e-2, max_hvps=3000, seed=0, progress=False), device)
        print(f"ours to 1 % relative stderr: {one.n_hvps} HVPs, {t_one:.2f} s, estimate {one.value:.5g} "
              f"± {one.stderr:.2g} (error vs reference {abs(one.value - ref_tr) / abs(ref_tr):.2%})")

    print(f"\n| {name} | ours s | ours HVPs | ours rel err | PyHessian s | PyHessian HVPs | PyHessian rel err "
          "| time ratio | HVP ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for what, tm, hm, em, tt, ht, et in rows:
        print(f"| {what} | {tm:.2f} | {hm} | {em:.1e} | {tt:.2f} | {ht} | {et:.1e} | {tt / tm:.1f}× | "
              f"{ht / max(hm, 1):.1f}× |")


def main():
    sh.keep_freed_memory()  # one process, one allocator setting for ours and the peers alike
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--tol", type=float, default=1e-3, help="our residual tolerance for top-5")
    p.add_argument("--resnet", action="store_true", help="the ResNet-18 case (default on cuda)")
    p.add_argument("--batch", type=int, default=1024, help="ResNet-18 case: batch size")
    a = p.parse_args()
    torch.manual_seed(0)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}" if a.device == "cuda" else ""))
    if a.device == "cpu" and not a.resnet:
        mlp, data = trained_mnist1d("mlp", {"widths": [256, 256]}, 5000, epochs=10)
        bench_case("MNIST-1D MLP 40-256-256-10, 4000 samples", mlp, data, None, "cpu", tol=a.tol)
        mlp8, data8 = trained_mnist1d("mlp", {"widths": [256, 256]}, 10000, epochs=10)
        bench_case("MNIST-1D MLP 40-256-256-10, 8000 samples", mlp8, data8, 1000, "cpu", tol=a.tol)
        cnn, data_c = trained_mnist1d("mnist1d-cnn", {"bn": True, "channels": 32}, 5000, epochs=10)
        bench_case("MNIST-1D conv net with BN (eval mode), 4000 samples", cnn, data_c, None, "cpu", tol=a.tol)
    else:
        try:
            import torchvision

            model, name = torchvision.models.resnet18(num_classes=10), "torchvision ResNet-18"
        except ImportError:  # a machine without torchvision still runs the code path, on our ResNet-20
            model, name = sh.build_model("resnet20", input_shape=(3, 32, 32), num_classes=10), "ResNet-20"
        x, y = torch.randn(a.batch, 3, 32, 32), torch.randint(0, 10, (a.batch,))
        bench_case(f"{name}, random CIFAR-shaped data, batch {a.batch}", model, (x, y), None,
                   a.device, tol=a.tol, ref=False)


if __name__ == "__main__":
    main()
