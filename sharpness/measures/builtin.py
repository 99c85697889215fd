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

from pathlib import Path

import numpy as np

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
    return Record(s, details)


register_measure("loss", _loss, keys=[Key("train_acc", "train acc", "{:.1f}", percent=True),
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
    top = hessian_eigenvalues(K.op, k=st["k"], tol=st["tol"], seed=ctx.seed, krylov=K, progress=ctx.progress)
    low = hessian_eigenvalues(K.op, k=st["smallest_k"], which="smallest", tol=st["tol"], seed=ctx.seed,
                              max_hvps=st["smallest_max_hvps"], max_basis=st["smallest_max_hvps"], krylov=K,
                              progress=ctx.progress)
    K.op.release()  # its kept graphs' memory, not through the measures that follow
    # |λ_min − λ| ≤ its residual for some eigenvalue λ of H: the error bar, converged or not (lanczos.py)
    return Record({"lambda_max": float(top.values[0]), "lambda_min": float(low.values[-1]),
                   "lambda_min_bound": float(low.residuals[-1]), "top": top.values.tolist(),
                   "n_hvps": top.n_hvps + low.n_hvps},
                  {"top": top.to_dict(), "smallest": low.to_dict()}, {"top": top.values, "smallest": low.values})


# The smallest eigenvalue reads the shared run without a restart up to the density's steps (free there).
register_measure("eigenvalues", _eigenvalues,
                 settings={"k": 5, "tol": 1e-3, "smallest_k": 1, "smallest_max_hvps": 80},
                 ranges={"tol": {"lt": 1}},
                 fits=lambda st, n: next((f"{key} {st[key]} is more than the model's {n} parameters"
                                          for key in ("k", "smallest_k") if st[key] > n), None),
                 quick={"tol": 1e-2, "smallest_max_hvps": 30},
                 keys=[Key("lambda_max", "λ_max")],
                 description="top-k and smallest Hessian eigenvalues (thick-restart Lanczos)")


def _trace(ctx: Context, st: dict) -> Record:
    K = _krylov(ctx)
    r = hessian_trace(K.op, rtol=st["rtol"], max_hvps=st["max_hvps"], sketch_size=st["sketch_size"],
                      seed=ctx.seed, krylov=K, progress=ctx.progress)
    K.op.release()  # its kept graphs' memory, not through the measures that follow
    return Record({"value": r.value, "stderr": r.stderr, "n_hvps": r.n_hvps}, r.to_dict())


# The deflation basis is the shared run's first density-steps steps: free when the density is measured too.
register_measure("trace", _trace, settings={"rtol": 1e-2, "max_hvps": 400, "sketch_size": 80},
                 ranges={"rtol": {"lt": 1}},
                 quick={"rtol": 5e-2, "max_hvps": 100, "sketch_size": 30},
                 keys=[Key("value", "trace")], description="Hessian trace (Krylov-aware Hutch++)")


def _density(ctx: Context, st: dict) -> Record:
    K = _krylov(ctx)
    r = spectral_density(K.op, n_runs=st["n_runs"], steps=st["steps"], seed=ctx.seed, krylov=K,
                         progress=ctx.progress)
    K.op.release()  # its kept graphs' memory, not through the measures that follow
    return Record({"min_node": float(np.nanmin(r.nodes)), "max_node": float(np.nanmax(r.nodes)), "n_hvps": r.n_hvps},
                  r.to_dict(), {"grid": r.grid, "density": r.density, "nodes": r.nodes, "weights": r.weights})


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


register_measure("density", _density, settings={"n_runs": 2, "steps": 80}, quick={"n_runs": 2, "steps": 30},
                 ranges={"n_runs": {"le": 100_000}, "steps": {"ge": 2, "le": 100_000}},
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


_EPS = {"eps": [1e-3, 5e-4], "subspace_dims": [None, 100], "subspace_draw": "normal", "max_iter": 10}
register_measure("eps_sharpness", _eps, settings=_EPS, quick={"eps": [1e-3]},
                 ranges={"subspace_draw": {"choices": ("normal", "unit")},
                         "eps": {"whole": (lambda v: len(v) > 0, "a non-empty list")},
                         "subspace_dims": {"whole": (lambda v: len(v) > 0, "a non-empty list (None: the full space)")}},
                 keys=[Key(eps_key(e, p), _eps_label(e, p), "{:.3f}") for p in _EPS["subspace_dims"]
                       for e in _EPS["eps"]],
                 description="Keskar's ε-sharpness φ (full space and a random subspace)")


def _adaptive(ctx: Context, st: dict) -> Record:
    kw = dict(norm=st["norm"], n_samples=st["n_samples"], batch_size=st["batch_size"], steps=st["steps"],
              seed=ctx.seed)
    w = adaptive_sharpness(ctx.train, rho=st["rho_worst"], kind="worst", **kw)
    a = adaptive_sharpness(ctx.train, rho=st["rho_average"], kind="average", **kw)
    return Record({"worst": w.value, "worst_stderr": w.stderr, "average": a.value, "average_stderr": a.stderr,
                   "n_evals": w.n_evals + a.n_evals}, {"worst": w.to_dict(), "average": a.to_dict()})


register_measure("adaptive", _adaptive,
                 settings={"rho_worst": 0.05, "rho_average": 0.1, "norm": "l2", "n_samples": 1024,
                           "batch_size": 128, "steps": 20},
                 quick={"n_samples": 256, "steps": 10}, ranges={"norm": {"choices": ("l2", "linf")}},
                 keys=[Key("worst", "adaptive worst", "{:.4f}"), Key("average", "adaptive avg", "{:.4f}")],
                 description="adaptive sharpness, worst and average case (Andriushchenko et al. 2023)")


def _noise(ctx: Context, st: dict) -> Record:
    # Exact per-example gradients cost N × P memory traffic: a fixed subset estimates B_simple well.
    sizes = st["batch_sizes"] if isinstance(st["batch_sizes"], str) else tuple(st["batch_sizes"])
    r = gradient_noise_scale(ctx.work.subset(st["max_samples"], ctx.seed), batch_sizes=sizes,
                             n_batches=st["n_batches"] or 32, seed=ctx.seed)
    return Record({"b_simple": r.b_simple, "b_simple_stderr": r.stderr, "trace_sigma": r.trace_sigma,
                   "grad_norm_sq": r.grad_norm_sq}, r.to_dict())


register_measure("noise_scale", _noise,
                 settings={"batch_sizes": "per-example", "n_batches": None, "max_samples": 2000},
                 quick={"batch_sizes": [32, 256], "n_batches": 16, "max_samples": None},
                 ranges={"n_batches": {"whole": (lambda v: v is None or (type(v) is int and 2 <= v <= 10**5),
                                                 "None or an integer in [2, 100000]")},
                         "batch_sizes": {"whole": (lambda v: v == "per-example" or (
                     isinstance(v, list) and len(v) == 2 and v[0] < v[1]), "'per-example' or [small, big] batch sizes")}},
                 keys=[Key("b_simple", "B_simple", "{:.1f}")],
                 description="McCandlish's gradient noise scale B_simple")


def _pacbayes(ctx: Context, st: dict) -> Record:
    kw = dict(delta=st["delta"], n_draws=st["n_draws"], iters=st["iters"], seed=ctx.seed)
    plain = pacbayes_flatness(ctx.work, **kw)
    mag = pacbayes_flatness(ctx.work, magnitude_aware=True, eps=st["eps"], **kw)
    return Record({"flatness": plain.value, "mag_flatness": mag.value, "sigma": plain.sigma, "alpha": mag.sigma,
                   "n_evals": plain.n_evals + mag.n_evals}, {"plain": plain.to_dict(), "magnitude": mag.to_dict()})


register_measure("pacbayes", _pacbayes, settings={"delta": 0.1, "n_draws": 16, "iters": 20, "eps": 1e-3},
                 ranges={"delta": {"lt": 1}},
                 quick={"n_draws": 8, "iters": 10},
                 keys=[Key("flatness", "PAC-Bayes 1/σ²", "{:.3g}"), Key("mag_flatness", "PAC-Bayes mag 1/α²", "{:.3g}")],
                 description="Jiang et al. 2020's PAC-Bayes flatness 1/σ*² and its magnitude-aware variant")


def _norms(ctx: Context, st: dict) -> Record:
    return Record(norm_baselines(ctx.model, ctx.work.names))  # θ of this analysis, as every measure


register_measure("norms", _norms, keys=[Key("log_prod_spec", "log Π‖W‖₂", "{:.3g}")],
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
    return Record(distance_from_init(ctx.model, init, where=str(path), params=ctx.work.names), {"init": str(path)})


register_measure("dist_from_init", _distance, settings={"init": ""},
                 ranges={"init": {"whole": (lambda v: v == "" or Path(v).expanduser().is_file(),
                                            "'' (init.pt beside the checkpoint) or an existing file")}},
                 keys=[Key("distance", "‖w − w₀‖", "{:.3g}")],
                 description="distance from the initialization ‖w − w₀‖ (init.pt beside the checkpoint)")


def _landscape(dims: int):
    def run(ctx: Context, st: dict) -> Record:
        s = surface(ctx.work, directions=st["normalization"], dims=dims, span=st["span"], steps=st["steps"],
                    seed=ctx.seed, progress=ctx.progress)
        d = s.to_dict()
        return Record({"center_loss": s.center_loss, "max_loss": d["max_loss"], "n_evals": s.n_evals}, d,
                      {"loss": s.loss, "acc": s.acc, **{f"axis{i}": a for i, a in enumerate(s.coords)}})
    return run


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


def _grid(dims: int) -> dict:  # what surface() takes: 2 ≤ steps, steps^dims ≤ MAX_POINTS
    return {"normalization": {"choices": ("filter", "layer", "none")},
            "steps": {"whole": (lambda v: 2 <= v and v ** dims <= MAX_POINTS, f"at least 2 with steps^{dims} ≤ {MAX_POINTS}")}}
register_measure("landscape1d", _landscape(1), settings={"steps": 51, "span": 1.0, "normalization": "filter"},
                 ranges=_grid(1),
                 quick={"steps": 21}, figures=_line_figures,
                 description="1D loss landscape along a filter-normalized direction (Li et al. 2018)")
def _surface_together(arrays: dict, out: Path, loss_label: str) -> list[Path]:
    from ..plots import plot_surfaces
    from ..plots.style import targets

    path = out / "landscape2d_all.png"
    plot_surfaces(arrays, path=path, loss_label=loss_label)
    return targets(path)


register_measure("landscape2d", _landscape(2), settings={"steps": 51, "span": 1.0, "normalization": "filter"},
                 ranges=_grid(2),
                 quick={"steps": 11}, figures=_surface_figures, together=_surface_together,
                 description="2D loss surface on a filter-normalized plane (Li et al. 2018)")


def _interpolation(a: Context, b: Context, st: dict) -> Record:
    # a's objectives: the line runs in their θ (the parameters outside it must agree between the two)
    sets = {"train": a.train, **({"test": a.test} if a.test is not None else {})}
    r = interpolate(a.model, b.model, None, sets, alphas=np.linspace(*st["range"], st["n_alphas"]), path=st["path"],
                    progress=a.progress)
    arrays = {"alphas": r.alphas, **{f"{n}_loss": v for n, v in r.loss.items()},
              **{f"{n}_acc": v for n, v in r.acc.items()}}
    return Record(r.to_dict(), {}, arrays)


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
                 description="loss along the line between two checkpoints (Keskar's parametric plot)")
