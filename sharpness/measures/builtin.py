"""The toolkit's own measures, registered in the order ``analyze`` runs and tables show them.

Each entry says what it computes (the definitions are in the functions it calls), its settings (library
defaults, and the ``--quick`` overrides), and the summary keys tables and figures show. Curvature and
sharpness use ``ctx.work`` (the training data, or a seeded subset of ``max_samples``); the loss and
accuracy use the whole training and test sets.

One parameter space: every measure works on the parameters the context's objectives select
(``analyze(params=...)``; default: those that require grad). A measure that needs its own objective or
operator builds it from the context's (``HessianOperator(ctx.work)``, ``ctx.work.subset``,
``ctx.work.with_data``: they keep the selection); random landscape directions are drawn over the selected
parameters (:func:`~sharpness.landscape.surface` draws them over its objective's θ); interpolation walks
the line in the first checkpoint's θ.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..budget import Sizes, Work
from ..checkpoint import load_checkpoint
from ..curvature import HessianOperator, hessian_eigenvalues, hessian_trace, spectral_density
from ..curvature.lanczos import Krylov, start_vector
from ..errors import SharpnessError
from ..landscape import interpolate, surface
from ..landscape.grid import MAX_POINTS
from .adaptive import adaptive_sharpness
from .keskar import eps_sharpness
from .noise_scale import gradient_noise_scale
from .norms import distance_from_init, norm_baselines
from .pacbayes import pacbayes_flatness
from .registry import Context, Key, Record, register_measure

__all__ = ["eps_key"]


def _loss(ctx: Context, st: dict) -> Record:
    s: dict = {}
    for split, obj in (("train", ctx.train), ("test", ctx.test)):
        if obj is not None:
            s[f"{split}_loss"], s[f"{split}_acc"] = obj.evaluate()
    if ctx.test is not None:
        s["gap_loss"] = s["test_loss"] - s["train_loss"]
        s["gap_acc"] = None if s["train_acc"] is None or s["test_acc"] is None else s["train_acc"] - s["test_acc"]
    details = {"n_train": ctx.train.num_samples, "n_test": ctx.test.num_samples if ctx.test else None,
               "loss": ctx.train.loss.to_dict()}
    # means over the whole training and test sets: exact for those sets (their error bar is 0)
    return Record(s, details, errors={k: 0.0 for k, v in s.items() if v is not None})


register_measure("loss", _loss, cost=lambda st, n: Work((("forward", 1, n.train), ("forward", 1, n.test))),
                 keys=[Key("train_acc", "train acc", "{:.1f}", percent=True),
                                      Key("test_acc", "test acc", "{:.1f}", percent=True),
                                      Key("train_loss", "train loss", "{:.4f}")],
                 description="train/test loss and accuracy (accuracy for classification only), gaps")


def _krylov(ctx: Context) -> Krylov:
    """The one Lanczos run (from ``start_vector(op, seed)``) the eigenvalues, the trace and the density read.

    Each gets what it would compute alone at the seed, and no step is taken twice. Each measure releases the
    operator's kept graphs when done (they may hold much of the device's memory; rebuilding them costs one
    gradient pass, against the tens of products a measure makes).
    """
    if "krylov" not in ctx.shared:
        op = HessianOperator(ctx.work)
        ctx.shared["krylov"] = Krylov(op, start_vector(op, ctx.seed))
    return ctx.shared["krylov"]


def _eigenvalues(ctx: Context, st: dict) -> Record:
    K = _krylov(ctx)
    top = hessian_eigenvalues(K.op, k=st["k"], tol=st["tol"], seed=ctx.seed, max_hvps=st["max_hvps"], krylov=K,
                              progress=ctx.progress)
    low = hessian_eigenvalues(K.op, k=st["smallest_k"], which="smallest", tol=st["tol"], seed=ctx.seed,
                              max_hvps=st["smallest_max_hvps"], max_basis=st["smallest_max_hvps"], krylov=K,
                              progress=ctx.progress)
    K.op.release()  # its kept graphs' memory, not through the measures that follow
    # |λ_min − λ| ≤ its residual for some eigenvalue λ of H: the error bar, converged or not (lanczos.py)
    return Record({"lambda_max": float(top.values[0]), "lambda_max_bound": float(top.residuals[0]),
                   "lambda_min": float(low.values[-1]), "lambda_min_bound": float(low.residuals[-1]),
                   "top": top.values.tolist(), "n_hvps": top.n_hvps + low.n_hvps},
                  {"top": top.to_dict(), "smallest": low.to_dict()}, {"top": top.values, "smallest": low.values},
                  errors={"lambda_max": float(top.residuals[0]), "lambda_min": float(low.residuals[-1])})


def _top_products(k: int, tol: float) -> float:
    """Products thick-restart Lanczos takes for the top k at ``tol``: a plan, not a bound (``max_hvps`` is).

    A fit to trained MLPs and CNNs (k = 5, tol 1e-3: 55; k = 1, tol 1e-2: 16).
    """
    return 10 + 9 * k * max(1.0, math.log10(1 / tol)) / 3


def _eigen_cost(st: dict, n: Sizes) -> Work:
    top = min(_top_products(st["k"], st["tol"]), st["max_hvps"] or math.inf, n.params)
    # Measured on the quickstart MLP (2-core CPU, default run): 87 products for top-5 and λ_min together,
    # the search 1.16 × their cost alone (the smallest reads the shared run, ~0.4 of its cap beyond the top)
    small = min(st["smallest_max_hvps"], n.params)
    # and ~1e-9 s per element of the P × steps² orthogonalization work of its basis
    return Work((("gradient", 1, n.work), ("hvp", 1.1 * (top + 0.4 * small), n.work)),
                1e-9 * n.params * (0.5 * small ** 2 + 0.5 * top ** 2))


def _eigen_cheaper(st: dict, n: Sizes) -> dict | None:
    if st["tol"] < 1e-2:
        return {**st, "tol": min(1e-2, st["tol"] * 3)}
    if st["smallest_max_hvps"] > 20:
        return {**st, "smallest_max_hvps": max(20, st["smallest_max_hvps"] // 2)}
    if st["k"] > 1:
        return {**st, "k": max(1, st["k"] - 2)}
    return None


# The smallest eigenvalue reads the shared run without a restart up to the density's steps (free there).
register_measure("eigenvalues", _eigenvalues,
                 settings={"k": 5, "tol": 1e-3, "smallest_k": 1, "smallest_max_hvps": 80, "max_hvps": None},
                 ranges={"tol": {"lt": 1}, "max_hvps": {"whole": (lambda v: v is None or (type(v) is int and v >= 2),
                                                                   "None (no cap) or an integer ≥ 2")}},
                 cost=_eigen_cost, cheaper=_eigen_cheaper, subsample=("lambda_max", "lambda_min"),
                 fits=lambda st, n: next((f"{key} {st[key]} is more than the model's {n} parameters"
                                          for key in ("k", "smallest_k") if st[key] > n), None),
                 quick={"tol": 1e-2, "smallest_max_hvps": 30},
                 keys=[Key("lambda_max", "λ_max", error="lambda_max")],
                 description="top-k and smallest Hessian eigenvalues (thick-restart Lanczos)")


def _trace(ctx: Context, st: dict) -> Record:
    K = _krylov(ctx)
    r = hessian_trace(K.op, rtol=st["rtol"], max_hvps=st["max_hvps"], sketch_size=st["sketch_size"],
                      seed=ctx.seed, krylov=K, progress=ctx.progress)
    K.op.release()  # its kept graphs' memory, not through the measures that follow
    return Record({"value": r.value, "stderr": r.stderr, "n_hvps": r.n_hvps}, r.to_dict(), errors={"value": r.stderr})


def _trace_cost(st: dict, n: Sizes) -> Work:
    # With the shared run's basis (the density's steps) a trained network's trace meets rtol after about a
    # fifth of the sketch (16 products on the quickstart MLP); one that does not (an untrained or small
    # model) runs to its cap: a quarter of the cap stands for that risk in the plan.
    return Work((("hvp", min(st["max_hvps"], n.params, st["sketch_size"] / 5 + st["max_hvps"] / 4), n.work),))


def _trace_cheaper(st: dict, n: Sizes) -> dict | None:
    if st["max_hvps"] > 25:
        return {**st, "max_hvps": max(25, st["max_hvps"] // 2), "sketch_size": max(10, st["sketch_size"] // 2)}
    return None


# The deflation basis is the shared run's first density-steps steps: free when the density is measured too.
register_measure("trace", _trace, settings={"rtol": 1e-2, "max_hvps": 400, "sketch_size": 80},
                 ranges={"rtol": {"lt": 1}}, cost=_trace_cost, cheaper=_trace_cheaper, subsample=("value",),
                 quick={"rtol": 5e-2, "max_hvps": 100, "sketch_size": 30},
                 keys=[Key("value", "trace", error="value")], description="Hessian trace (Krylov-aware Hutch++)")


def _density(ctx: Context, st: dict) -> Record:
    K = _krylov(ctx)
    r = spectral_density(K.op, n_runs=st["n_runs"], steps=st["steps"], seed=ctx.seed, krylov=K,
                         progress=ctx.progress)
    K.op.release()  # its kept graphs' memory, not through the measures that follow
    lo, hi = np.unravel_index(np.nanargmin(r.nodes), r.nodes.shape), np.unravel_index(np.nanargmax(r.nodes), r.nodes.shape)
    return Record({"min_node": float(r.nodes[lo]), "max_node": float(r.nodes[hi]), "n_hvps": r.n_hvps},
                  r.to_dict(), {"grid": r.grid, "density": r.density, "nodes": r.nodes, "weights": r.weights},
                  # an extreme Ritz value is within its residual of an eigenvalue of H (Parlett 1998, §3.9)
                  errors={"min_node": float(r.residuals[lo]), "max_node": float(r.residuals[hi])})


def _density_cost(st: dict, n: Sizes) -> Work:
    # the first run is the shared one, mostly taken by the eigenvalues already
    steps = min(st["steps"], n.params)
    return Work((("hvp", (st["n_runs"] - 1) * steps + 0.1 * steps, n.work),), figures=1)


def _density_cheaper(st: dict, n: Sizes) -> dict | None:
    if st["n_runs"] > 1:
        return {**st, "n_runs": st["n_runs"] - 1}
    if st["steps"] > 30:
        return {**st, "steps": max(30, st["steps"] * 2 // 3)}
    return None


def _density_figures(rec: Record, out: Path, labels: tuple, loss_label: str) -> list[Path]:
    from ..plots import plot_spectral_density
    from ..plots.style import targets

    path = out / f"density_{labels[0]}.png"
    plot_spectral_density(rec.arrays, path=path, title=f"Hessian density: {labels[0]}")
    return targets(path)


def _density_together(arrays: dict, out: Path, loss_label: str) -> list[Path]:
    from ..plots import plot_spectral_densities
    from ..plots.style import targets

    path = out / "density_all.png"
    plot_spectral_densities(arrays, path=path)
    return targets(path)


# One run (PyHessian's default too): its first run is the shared Krylov run, free here; a second run cost
# 11 s of the quickstart MLP's default analysis. The library's spectral_density keeps 2 × 80.
register_measure("density", _density, settings={"n_runs": 1, "steps": 80}, quick={"n_runs": 1, "steps": 30},
                 ranges={"n_runs": {"le": 100_000}, "steps": {"ge": 2, "le": 100_000}},
                 cost=_density_cost, cheaper=_density_cheaper, subsample=("min_node", "max_node"),
                 figures=_density_figures, together=_density_together,
                 description="Hessian spectral density (stochastic Lanczos quadrature)")


def eps_key(eps: float, p: int | None) -> str:
    """The summary key of φ at ε and subspace dimension p (None: full space), e.g. ``eps0.001_full``."""
    return f"eps{eps:g}_{'full' if p is None else f'p{p}'}"


def _eps_label(eps: float, p: int | None) -> str:
    return f"φ ε={eps:.0e} {'full' if p is None else f'p={p}'}".replace("e-0", "e-")


def _eps(ctx: Context, st: dict) -> Record:
    summary, details = {}, {}
    n = ctx.work.num_params
    for eps in st["eps"]:
        for p in st["subspace_dims"]:
            if p is not None and p > n:  # A is n × p: a subspace cannot have more dimensions than the space
                details[eps_key(eps, p)] = {"skipped": f"subspace_dim {p} > {n} parameters"}
                continue
            r = eps_sharpness(ctx.work, eps=eps, subspace_dim=p, subspace_draw=st["subspace_draw"],
                              max_iter=st["max_iter"], seed=ctx.seed)
            summary[eps_key(eps, p)] = r.value
            details[eps_key(eps, p)] = r.to_dict()
    summary["n_evals"] = sum(d.get("n_evals", 0) for d in details.values())
    return Record(summary, details)


def _eps_cost(st: dict, n: Sizes) -> Work:
    configs = len(st["eps"]) * sum(1 for p in st["subspace_dims"] if p is None or p <= n.params)
    # L-BFGS-B takes about 2.5 function-and-gradient evaluations per iteration (measured: 99 for 4 × 10);
    # scipy 1.17 turns box bounds into a list of P pairs and back, in Python, for each full-space search:
    # ≈ 3.5 µs per parameter (1 s at P = 288k), planned as other seconds
    # and L-BFGS-B's own update, ~5e-8 s per parameter and evaluation (measured, P = 288k)
    full = len(st["eps"]) * sum(1 for p in st["subspace_dims"] if p is None)
    evals = configs * (1 + 2.5 * st["max_iter"])
    return Work((("gradient", evals, n.work),), full * 3.5e-6 * n.params + evals * 5e-8 * n.params)


def _eps_cheaper(st: dict, n: Sizes) -> dict | None:
    # Fewer settings, never fewer iterations: φ is the maximum L-BFGS-B finds in max_iter (10 in Keskar's
    # definition), and fewer find a far lower one (quickstart MLP: φ 2.04 at 10, 0.096 at 5, 0.019 at 2) —
    # no error bar would say so. The budget takes data from it instead (the subset, with its error).
    if len(st["eps"]) > 1:
        return {**st, "eps": st["eps"][:1]}
    if len(st["subspace_dims"]) > 1:
        return {**st, "subspace_dims": st["subspace_dims"][:1]}
    return None


_EPS = {"eps": [1e-3, 5e-4], "subspace_dims": [None, 100], "subspace_draw": "normal", "max_iter": 10}
register_measure("eps_sharpness", _eps, settings=_EPS, quick={"eps": [1e-3]},
                 cost=_eps_cost, cheaper=_eps_cheaper, subsample=("*",),
                 ranges={"subspace_draw": {"choices": ("normal", "unit")},
                         "eps": {"whole": (lambda v: len(v) > 0, "a non-empty list")},
                         "subspace_dims": {"whole": (lambda v: len(v) > 0, "a non-empty list (None: the full space)")}},
                 keys=[Key(eps_key(e, p), _eps_label(e, p), "{:.3f}", error=eps_key(e, p)) for p in _EPS["subspace_dims"]
                       for e in _EPS["eps"]],
                 description="Keskar's ε-sharpness φ (full space and a random subspace)")


def _adaptive(ctx: Context, st: dict) -> Record:
    kw = dict(norm=st["norm"], n_samples=st["n_samples"], batch_size=st["batch_size"], steps=st["steps"],
              seed=ctx.seed)
    w = adaptive_sharpness(ctx.train, rho=st["rho_worst"], kind="worst", **kw)
    a = adaptive_sharpness(ctx.train, rho=st["rho_average"], kind="average", **kw)
    return Record({"worst": w.value, "worst_stderr": w.stderr, "average": a.value, "average_stderr": a.stderr,
                   "n_evals": w.n_evals + a.n_evals}, {"worst": w.to_dict(), "average": a.to_dict()},
                  errors={"worst": w.stderr, "average": a.stderr})  # over the subset's batches: its sampling error


def _adaptive_cost(st: dict, n: Sizes) -> Work:
    m = min(st["n_samples"], n.train)
    # in batches of batch_size (128), each paying the per-batch overhead the units do not see for one pass:
    # planned at 3 × (measured on the quickstart MLP: 1.9 s against 0.6 for one batch per pass)
    return Work((("gradient", 6 * (st["steps"] + 1), m), ("forward", 6 * (st["steps"] + 1), m)))


def _adaptive_cheaper(st: dict, n: Sizes) -> dict | None:
    # fewer examples (their error is in the stderr over batches), never fewer APGD steps: the worst case
    # is the maximum the steps find, and fewer find less, which no error bar would say
    if st["n_samples"] > 256:
        return {**st, "n_samples": max(256, st["n_samples"] // 2)}
    return None


register_measure("adaptive", _adaptive,
                 settings={"rho_worst": 0.05, "rho_average": 0.1, "norm": "l2", "n_samples": 1024,
                           "batch_size": 128, "steps": 20},
                 quick={"n_samples": 256, "steps": 10}, ranges={"norm": {"choices": ("l2", "linf")}},
                 cost=_adaptive_cost, cheaper=_adaptive_cheaper,
                 keys=[Key("worst", "adaptive worst", "{:.4f}", error="worst"),
                       Key("average", "adaptive avg", "{:.4f}", error="average")],
                 description="adaptive sharpness, worst and average case (Andriushchenko et al. 2023)")


def _noise(ctx: Context, st: dict) -> Record:
    # Exact per-example gradients cost N × P memory traffic: a fixed subset estimates B_simple well.
    sizes = st["batch_sizes"] if isinstance(st["batch_sizes"], str) else tuple(st["batch_sizes"])
    r = gradient_noise_scale(ctx.work.subset(st["max_samples"], ctx.seed), batch_sizes=sizes,
                             n_batches=st["n_batches"] or 32, seed=ctx.seed)
    # per-example on n of the N training examples: the jackknife's error, finite-population corrected
    # (0 when every example is used); two-batch: the error of the random batches, as it is
    fpc = math.sqrt(max(0.0, 1 - r.n_samples / ctx.train.num_samples)) if r.method == "per-example" else 1.0
    return Record({"b_simple": r.b_simple, "b_simple_stderr": r.stderr * fpc, "trace_sigma": r.trace_sigma,
                   "grad_norm_sq": r.grad_norm_sq}, r.to_dict(),
                  errors={"b_simple": r.stderr * fpc, "trace_sigma": r.trace_sigma_stderr * fpc,
                          "grad_norm_sq": r.grad_norm_sq_stderr * fpc})


def _noise_cost(st: dict, n: Sizes) -> Work:
    if st["batch_sizes"] == "per-example":
        # timed on 64 examples; over thousands the groups' sums add ~60 % (measured: 4.3 s against 2.6)
        return Work((("per_example", 1.6, min(st["max_samples"] or n.work, n.work)),))
    small, big = st["batch_sizes"]
    return Work((("gradient", st["n_batches"] or 32, small), ("gradient", st["n_batches"] or 32, big)))


def _noise_cheaper(st: dict, n: Sizes) -> dict | None:
    if st["batch_sizes"] == "per-example" and (st["max_samples"] or n.work) > 256:
        return {**st, "max_samples": max(256, (st["max_samples"] or n.work) // 2)}
    if st["batch_sizes"] != "per-example" and (st["n_batches"] or 32) > 8:
        return {**st, "n_batches": max(8, (st["n_batches"] or 32) // 2)}
    return None


register_measure("noise_scale", _noise,
                 settings={"batch_sizes": "per-example", "n_batches": None, "max_samples": 2000},
                 quick={"batch_sizes": [32, 256], "n_batches": 16, "max_samples": None},
                 ranges={"n_batches": {"whole": (lambda v: v is None or (type(v) is int and 2 <= v <= 10**5),
                                                 "None or an integer in [2, 100000]")},
                         "batch_sizes": {"whole": (lambda v: v == "per-example" or (
                     isinstance(v, list) and len(v) == 2 and v[0] < v[1]), "'per-example' or [small, big] batch sizes")}},
                 cost=_noise_cost, cheaper=_noise_cheaper,
                 keys=[Key("b_simple", "B_simple", "{:.1f}", error="b_simple")],
                 description="McCandlish's gradient noise scale B_simple")


def _pacbayes(ctx: Context, st: dict) -> Record:
    kw = dict(delta=st["delta"], n_draws=st["n_draws"], iters=st["iters"], seed=ctx.seed)
    plain = pacbayes_flatness(ctx.work, **kw)
    mag = pacbayes_flatness(ctx.work, magnitude_aware=True, eps=st["eps"], **kw)
    return Record({"flatness": plain.value, "mag_flatness": mag.value, "sigma": plain.sigma, "alpha": mag.sigma,
                   "n_evals": plain.n_evals + mag.n_evals}, {"plain": plain.to_dict(), "magnitude": mag.to_dict()},
                  errors={"flatness": plain.value_stderr, "mag_flatness": mag.value_stderr,
                          "sigma": plain.sigma_stderr, "alpha": mag.sigma_stderr})


def _pacbayes_cost(st: dict, n: Sizes) -> Work:
    # the bracket takes about 5 noise levels, Brent's method about 0.5 per bit of precision (measured:
    # 322 evaluations for the two variants at 16 draws, iters 10)
    return Work((("forward", 2 * (1 + st["n_draws"] * (5 + 0.5 * st["iters"])), n.work),))


def _pacbayes_cheaper(st: dict, n: Sizes) -> dict | None:
    if st["iters"] > 6:
        return {**st, "iters": max(6, st["iters"] - 4)}
    if st["n_draws"] > 4:
        return {**st, "n_draws": max(4, st["n_draws"] // 2)}
    return None


# iters 10: σ* to 2⁻¹⁰ of its bracket, well inside its Monte-Carlo error (~2-4 % at 16 draws, in errors)
register_measure("pacbayes", _pacbayes, settings={"delta": 0.1, "n_draws": 16, "iters": 10, "eps": 1e-3},
                 ranges={"delta": {"lt": 1}}, cost=_pacbayes_cost, cheaper=_pacbayes_cheaper, subsample=("*",),
                 quick={"n_draws": 8, "iters": 6},
                 keys=[Key("flatness", "PAC-Bayes 1/σ²", "{:.3g}", error="flatness"),
                       Key("mag_flatness", "PAC-Bayes mag 1/α²", "{:.3g}", error="mag_flatness")],
                 description="Jiang et al. 2020's PAC-Bayes flatness 1/σ*² and its magnitude-aware variant")


def _norms(ctx: Context, st: dict) -> Record:
    s = norm_baselines(ctx.model, ctx.work.names)  # θ of this analysis, as every measure
    return Record(s, errors={k: 0.0 for k in s})  # of the weights alone: exact (spectral norms to 1e-6)


register_measure("norms", _norms, cost=lambda st, n: Work(), keys=[Key("log_prod_spec", "log Π‖W‖₂", "{:.3g}")],
                 description="norm baselines: log products of the weights' Frobenius and spectral norms")


def _distance(ctx: Context, st: dict) -> Record:
    # The trainer writes init.pt beside every checkpoint of a run; another file can be named. A checkpoint
    # with neither (a user's own) skips the measure rather than failing it: nothing to measure from.
    if st["init"]:
        path = Path(st["init"]).expanduser()
        if not path.is_file():
            raise SharpnessError(f"dist_from_init: settings init: no file {path}")
    else:
        path = None if ctx.path is None else Path(ctx.path).parent / "init.pt"
        if path is None or not path.is_file():
            return Record({}, {"skipped": "no init.pt beside the checkpoint; name the initial weights with "
                                          "settings {'dist_from_init': {'init': PATH}}"})
    init = load_checkpoint(path).state_dict  # the safe loader: a file cannot run code
    s = distance_from_init(ctx.model, init, where=str(path), params=ctx.work.names)
    return Record(s, {"init": str(path)}, errors={k: 0.0 for k in s})


register_measure("dist_from_init", _distance, settings={"init": ""}, cost=lambda st, n: Work(),
                 ranges={"init": {"whole": (lambda v: v == "" or Path(v).expanduser().is_file(),
                                            "'' (init.pt beside the checkpoint) or an existing file")}},
                 keys=[Key("distance", "‖w − w₀‖", "{:.3g}")],
                 description="distance from the initialization ‖w − w₀‖ (init.pt beside the checkpoint)")


def _landscape(dims: int):
    """The surface on ``max_samples`` of the curvature data (None: all of them).

    On a strict subset of the training set it is computed on the subset's two seeded halves — the same
    directions, the same grid, the same number of forwards — and combined: the mean over the subset,
    exactly, with the standard error of every grid value from the halves' difference,
    |L₁ − L₂|·√(n₁n₂)/n, finite-population corrected by √(1 − n/N) (the subsampling error of a mean over
    n of N examples; 0 on the whole training set). ``loss_stderr`` holds it per point.
    """
    def run(ctx: Context, st: dict) -> Record:
        obj = ctx.work.subset(st["max_samples"], ctx.seed)
        n, total = obj.num_samples, ctx.train.num_samples
        kw = dict(directions=st["normalization"], dims=dims, span=st["span"], steps=st["steps"], seed=ctx.seed,
                  progress=ctx.progress)
        if n >= total or n < 2:
            s = surface(obj, **kw)
            loss, acc, center, se, center_se = s.loss, s.acc, s.center_loss, np.zeros_like(s.loss), 0.0
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed + 1))
            halves = [obj.with_data(obj.all.examples(order[i::2])) for i in (0, 1)]
            h = [surface(half, **kw) for half in halves]
            w = [half.num_samples / n for half in halves]
            loss = w[0] * h[0].loss + w[1] * h[1].loss
            acc = None if h[0].acc is None else w[0] * h[0].acc + w[1] * h[1].acc
            center = w[0] * h[0].center_loss + w[1] * h[1].center_loss
            scale = math.sqrt(w[0] * w[1]) * math.sqrt(1 - n / total)
            se = np.abs(h[0].loss - h[1].loss) * scale
            center_se = float(abs(h[0].center_loss - h[1].center_loss) * scale)
            s = h[0]
            s.loss, s.acc, s.center_loss, s.n_evals = loss, acc, center, h[0].n_evals + h[1].n_evals
        d = {**s.to_dict(), "n_samples": n, "n_train": total, "halves": n < total}
        at = np.unravel_index(np.nanargmax(loss), loss.shape)
        return Record({"center_loss": center, "max_loss": d["max_loss"], "n_evals": s.n_evals}, d,
                      {"loss": loss, "acc": acc, "loss_stderr": se, **{f"axis{i}": a for i, a in enumerate(s.coords)}},
                      errors={"center_loss": center_se, "max_loss": float(se[at])})
    return run


def _landscape_cost(dims: int):
    def cost(st: dict, n: Sizes) -> Work:
        m = min(st["max_samples"] or n.work, n.work)
        return Work((("forward", st["steps"] ** dims + 1, m),), figures=dims)
    return cost


def _landscape_cheaper(dims: int, floor: int):
    def cheaper(st: dict, n: Sizes) -> dict | None:
        m = min(st["max_samples"] or n.work, n.work)
        if st["steps"] > floor:
            return {**st, "steps": max(floor, (st["steps"] * 3 // 4) | 1)}  # odd: the centre on the grid
        if m > 256:
            return {**st, "max_samples": max(256, m // 2)}
        return None
    return cheaper


def _line_figures(rec: Record, out: Path, labels: tuple, loss_label: str) -> list[Path]:
    from ..plots import plot_line
    from ..plots.style import targets

    path = out / f"landscape1d_{labels[0]}.png"
    norm = rec.details["directions"]["normalization"]
    plot_line(rec.arrays, path=path, loss_label=loss_label, title=f"{labels[0]}: {norm}-normalized direction")
    return targets(path)


def _surface_figures(rec: Record, out: Path, labels: tuple, loss_label: str) -> list[Path]:
    from ..plots import plot_surface
    from ..plots.style import targets

    norm = rec.details["directions"]["normalization"]
    paths = []
    for kind, stem in (("contour", "landscape2d"), ("3d", "landscape3d")):
        path = out / f"{stem}_{labels[0]}.png"
        plot_surface(rec.arrays, kind=kind, path=path, loss_label=loss_label,
                     title=f"{labels[0]}: {norm}-normalized plane")
        paths += targets(path)
    return paths


_SUBSET = {"max_samples": {"whole": (lambda v: v is None or (type(v) is int and v >= 1),
                                     "None (all the curvature data) or an integer ≥ 1")}}


def _grid(dims: int) -> dict:  # what surface() takes: 2 ≤ steps, steps^dims ≤ MAX_POINTS
    return {"normalization": {"choices": ("filter", "layer", "none")},
            "steps": {"whole": (lambda v: 2 <= v and v ** dims <= MAX_POINTS, f"at least 2 with steps^{dims} ≤ {MAX_POINTS}")}}
register_measure("landscape1d", _landscape(1),
                 settings={"steps": 51, "span": 1.0, "normalization": "filter", "max_samples": None},
                 ranges={**_grid(1), **_SUBSET}, cost=_landscape_cost(1), cheaper=_landscape_cheaper(1, 21),
                 quick={"steps": 21}, figures=_line_figures,
                 description="1D loss landscape along a filter-normalized direction (Li et al. 2018)")
def _surface_together(arrays: dict, out: Path, loss_label: str) -> list[Path]:
    from ..plots import plot_surfaces
    from ..plots.style import targets

    path = out / "landscape2d_all.png"
    plot_surfaces(arrays, path=path, loss_label=loss_label)
    return targets(path)


# A figure's resolution and data: 25 × 25 points (the contours of 51 × 51 drawn at a paper's column width
# are the same lines but at the minimum) on 2048 examples, whose subsampling error is in loss_stderr (the
# largest loss 34.63 ± 0.79 on the quickstart MLP); the 51 × 51 grid over 8000 cost 98 of a 190 s analysis.
register_measure("landscape2d", _landscape(2),
                 settings={"steps": 25, "span": 1.0, "normalization": "filter", "max_samples": 2048},
                 ranges={**_grid(2), **_SUBSET}, cost=_landscape_cost(2), cheaper=_landscape_cheaper(2, 11),
                 quick={"steps": 11}, figures=_surface_figures, together=_surface_together,
                 description="2D loss surface on a filter-normalized plane (Li et al. 2018)")


def _interpolation(a: Context, b: Context, st: dict) -> Record:
    # a's objectives: the line runs in their θ (the parameters outside it must agree between the two)
    sets = {"train": a.train, **({"test": a.test} if a.test is not None else {})}
    r = interpolate(a.model, b.model, None, sets, alphas=np.linspace(*st["range"], st["n_alphas"]), path=st["path"],
                    progress=a.progress)
    arrays = {"alphas": r.alphas, **{f"{n}_loss": v for n, v in r.loss.items()},
              **{f"{n}_acc": v for n, v in r.acc.items()}}
    d = r.to_dict()  # losses over the whole training and test sets: exact for them
    return Record(d, {}, arrays, errors={k: 0.0 for k, v in d.items() if isinstance(v, float) and k != "seconds"})


def _parametric_figures(rec: Record, out: Path, labels: tuple, loss_label: str) -> list[Path]:
    from ..plots import plot_parametric
    from ..plots.style import targets

    path = out / f"parametric_{labels[0]}_{labels[1]}.png"
    plot_parametric(rec.arrays, path=path, labels=labels, loss_label=loss_label)
    return targets(path)


register_measure("interpolation", _interpolation,
                 settings={"n_alphas": 25, "range": [-1.0, 2.0], "path": "linear"}, quick={"n_alphas": 13},
                 ranges={"path": {"choices": ("linear", "sin")},
                         "n_alphas": {"whole": (lambda v: v <= MAX_POINTS, f"at most {MAX_POINTS}")},
                         "range": {"whole": (lambda r: len(r) == 2 and all(type(x) in (int, float) for x in r)
                                             and r[0] < r[1] and max(map(abs, r)) <= 1e6, "[lo, hi] with lo < hi, within ±1e6")}},
                 pair=True, figures=_parametric_figures,
                 cost=lambda st, n: Work((("forward", st["n_alphas"], n.train), ("forward", st["n_alphas"], n.test)),
                                         figures=1),
                 description="loss along the line between two checkpoints (Keskar's parametric plot)")
