"""Figures and tables of an experiment, drawn from its ``results.json`` only (never trains or computes).

Runs that differ only in their seed form a group; tables and curves show the mean ± std over seeds. What
is shown comes from :mod:`sharpness.reporting` (the long table, fits and selections) and the measures'
registered keys; this module only draws.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter

from ..errors import SharpnessError
from ..io import atomic_write
from ..losses import loss_label
from ..measures.builtin import eps_key
from ..reporting import (
    best_lr_per_batch,
    final,
    fit_critical_batch,
    groups,
    headline_columns,
    long_table,
    mean_std,
)
from .landscape import plot_parametric, plot_surface
from .spectrum import plot_spectral_density
from .style import new_axes, save

__all__ = ["draw", "FIGURES"]


def _loss_label(res: dict) -> str:
    """The axis name of the runs' training loss (their config's ``loss``; cross-entropy by default)."""
    names = {r["config"].get("loss", "cross_entropy") for r in res["runs"].values()}
    return loss_label(names.pop()) if len(names) == 1 else "loss"


def table(res: dict, out: Path) -> Path:
    """Markdown table, one row per group (mean ± std over seeds), of every headline key the runs have."""
    runs, grouped = res["runs"], groups(res["runs"])
    cols = headline_columns(long_table(res))
    lines = ["| run | seeds | updates | " + " | ".join(k.column() for _, k in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for g, labels in grouped.items():
        cells = []
        for m, k in cols:
            vals = [final(runs[lb], m, k.name) for lb in labels]
            cells.append(mean_std([v * (100 if k.percent else 1) for v in vals if v is not None]))
        counts = [runs[lb]["history"][-1]["step"] for lb in labels if runs[lb]["history"]]
        steps = str(counts[0]) if len(set(counts)) == 1 else mean_std(counts)  # differ with target_train_loss
        lines.append(f"| {g} | {len(labels)} | {steps} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    return atomic_write(out / "table.md", lambda p: p.write_text(text))


AXIS_LABELS = {"epoch": "epoch", "step": "parameter updates", "examples": "training examples seen",
               "wall_time": "training wall-clock (s)", "test_loss": "test (validation) loss",
               "test_acc": "test accuracy", "train_loss": "training loss", "train_acc": "training accuracy",
               "dist_from_init": "‖w − w₀‖", "lr": "learning rate", "batch_size": "batch size"}
DEFAULT_CURVES = {"file": "curves.png", "panels": [{"x": "epoch", "y": "test_loss"}, {"x": "epoch", "y": "test_acc"}]}


def _curve_figure(res: dict, out: Path, fig_spec: dict) -> Path:
    import matplotlib.pyplot as plt

    grouped = groups(res["runs"])
    wanted = fig_spec.get("groups", list(grouped))
    unknown = [g for g in wanted if g not in grouped]
    if unknown:
        raise ValueError(f"figures.curves names unknown groups {unknown}; groups are {list(grouped)}")
    panels = fig_spec["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), layout="constrained", squeeze=False)
    for ax, panel in zip(axes[0], panels):
        xk, yk, source = panel["x"], panel["y"], panel.get("source", "history")
        for i, g in enumerate(wanted):
            hs = [res["runs"][lb].get(source, []) for lb in grouped[g]]
            if not all(hs):
                continue  # e.g. source = "trace" for runs trained without trace_log_steps
            n = min(len(h) for h in hs)
            x = np.array([[e[xk] for e in h[:n]] for h in hs]).mean(0)
            v = np.array([[e[yk] for e in h[:n]] for h in hs])
            m = v.mean(0)
            style = fig_spec.get("styles", {}).get(g, "-")
            line, = ax.plot(x, m, style, label=g, color=f"C{i}", lw=1.4)
            if len(hs) > 1:
                sd = v.std(0, ddof=1)
                ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_xscale(panel.get("xscale", "linear"))
        ax.set_yscale(panel.get("yscale", "linear"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones collide on log axes
        if "ylim" in panel:
            ax.set_ylim(*panel["ylim"])
        ax.set_xlabel(AXIS_LABELS.get(xk, xk) + (" (log)" if panel.get("xscale") == "log" else ""))
        ax.set_ylabel(AXIS_LABELS.get(yk, yk))
        ax.grid(alpha=0.3, which="both" if panel.get("xscale") == "log" else "major")
    axes[0][-1].legend(fontsize=8)
    seeds = max(len(grouped[g]) for g in wanted)
    band = f"mean over {seeds} seeds, band ±1 std" if seeds > 1 else "one seed"
    fig.suptitle(f"{res['name']}: {fig_spec.get('title', 'curves')} ({band})")
    return save(fig, out / fig_spec["file"])


def curves(res: dict, out: Path) -> list[Path]:
    """Training curves per group (mean over seeds, band = ±1 std).

    Each ``[[figures.curves]]`` entry is one figure (``file``, ``title``, optional ``groups``, ``styles``
    and ``panels`` = [{x, y, xscale, yscale, ylim, source}], x and y being keys of the per-epoch history, or
    of the log-spaced ``trace`` when ``source = "trace"``); without entries, test loss and accuracy
    against epochs.
    """
    specs = res["spec"].get("figures", {}).get("curves") or [DEFAULT_CURVES]
    return [_curve_figure(res, out, f) for f in specs]


def parametric(res: dict, out: Path) -> list[Path]:
    """Keskar Fig. 3 for every pair in the results."""
    paths = []
    for key, arr in res.get("pairs", {}).items():
        a, b = key.split("→")
        p = out / f"parametric_{a}_{b}.png"
        plot_parametric(arr, path=p, labels=(a, b), title=f"Parametric plot: {a} (α=0) → {b} (α=1)")
        paths.append(p)
    return paths


def esd(res: dict, out: Path) -> Path:
    """Spectral densities of the final models, overlaid."""
    fig, ax = new_axes(figsize=(6, 4))
    for label, r in res["runs"].items():
        arr = r.get("arrays", {})
        if "density/grid" in arr:
            plot_spectral_density({"grid": arr["density/grid"], "density": arr["density/density"]}, ax=ax,
                                  label=label)
    ax.set_title(f"{res['name']}: Hessian eigenvalue density (SLQ)")
    return save(fig, out / "esd.png")


def surface(res: dict, out: Path) -> list[Path]:
    """2D filter-normalized contour for every run that has one."""
    paths = []
    for label, r in res["runs"].items():
        arr = r.get("arrays", {})
        if "landscape2d/loss" in arr:
            grid = {k.split("/", 1)[1]: v for k, v in arr.items() if k.startswith("landscape2d/")}
            p = out / f"surface_{label}.png"
            plot_surface(grid, kind="contour", path=p, title=f"Loss surface (filter-normalized): {label}")
            paths.append(p)
    return paths


def sharpness_vs_loss(res: dict, out: Path) -> Path:
    """Keskar Fig. 6: sharpness against training cross-entropy along training, per group."""
    fig, ax = new_axes(figsize=(5.6, 4))
    grouped = groups(res["runs"])
    for g, labels in grouped.items():
        for i, lb in enumerate(labels):
            along = res["runs"][lb].get("along", [])
            if along:
                x = [e["train_loss"] for e in along]
                y = [e.get("eps_sharpness", {}).get(eps_key(1e-3, None)) for e in along]
                ax.plot(x, y, "o-", ms=3, color=f"C{list(grouped).index(g)}", alpha=0.8,
                        label=g if i == 0 else None)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(f"training {_loss_label(res)} (log, decreasing →)")
    ax.set_ylabel("ε-sharpness φ (ε = 1e-3, full space)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{res['name']}: sharpness along training")
    return save(fig, out / "sharpness_vs_loss.png")


def _by_batch(res: dict) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for label, r in res["runs"].items():
        out.setdefault(int(r["config"]["batch_size"]), []).append(label)
    return dict(sorted(out.items()))


def _errorbar(ax, x, values, **kw):
    m = [np.mean(v) if len(v) else np.nan for v in values]
    e = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
    return ax.errorbar(x, m, yerr=e, capsize=3, marker="o", ms=4, **kw)


def batch_sweep(res: dict, out: Path) -> Path:
    """Keskar Fig. 4: test accuracy and sharpness of the final models against batch size (mean ± std).

    A second panel gives λ_max and the final training loss, which sharpness must be read against.
    """
    import matplotlib.pyplot as plt

    key = res["spec"].get("figures", {}).get("batch_sweep", {}).get("sharpness", eps_key(1e-3, None))
    by_b = _by_batch(res)
    bs = list(by_b)

    def vals(measure, k, scale=1.0):
        per_b = [[final(res["runs"][lb], measure, k) for lb in by_b[b]] for b in bs]
        return [[v * scale for v in vs if v is not None] for vs in per_b]

    fig, (a1, a3) = plt.subplots(1, 2, figsize=(11.5, 3.9), layout="constrained")
    _errorbar(a1, bs, vals("loss", "test_acc", 100), color="C0", label="test accuracy")
    a1.set_ylabel("test accuracy (%)", color="C0")
    a2 = a1.twinx()
    _errorbar(a2, bs, vals("eps_sharpness", key), color="C3", label="ε-sharpness")
    eps = key.split("_")[0].replace("eps", "")
    a2.set_ylabel(f"ε-sharpness φ (ε = {eps}, {key.split('_')[1]})", color="C3")
    a3.set_yscale("log")
    _errorbar(a3, bs, vals("eigenvalues", "lambda_max"), color="C2", label="λ_max")
    a3.set_ylabel("top Hessian eigenvalue λ_max", color="C2")
    a4 = a3.twinx()
    _errorbar(a4, bs, vals("loss", "train_loss"), color="C7", label="final training loss", ls="--")
    a4.set_yscale("log")
    a4.set_ylabel("final training loss", color="C7")
    for ax in (a1, a3):
        ax.set_xscale("log", base=2)
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    seeds = max(len(v) for v in by_b.values())
    fig.suptitle(f"{res['name']}: accuracy and sharpness against batch size (mean ± std, {seeds} seeds)")
    return save(fig, out / "batch_sweep.png")


def cost(res: dict, out: Path) -> list[Path]:
    """McCandlish et al. 2018: updates, examples and wall-clock to reach a training loss, against batch size.

    For each batch size the learning rate that reaches the target in the fewest updates is kept (mean over
    seeds first), as the paper tunes the LR per batch size. Marked: the fitted critical batch size of
    S = S_min(1 + B_crit/B) (E = E_min(1 + B/B_crit) follows) and the measured simple noise scale B_simple
    of the kept runs' final (target-loss) checkpoints. Also writes ``cost.md``.
    """
    import matplotlib.pyplot as plt

    opts = res["spec"].get("figures", {}).get("cost", {})
    target = opts.get("target") or next(r["config"].get("target_train_loss") for r in res["runs"].values())
    best, missing = best_lr_per_batch(res, target)
    bs = np.array(list(best), dtype=float)

    def column(k: str) -> np.ndarray:
        return np.array([r[k] for r in best.values()])

    fit = fit_critical_batch(bs, column("step")) if len(bs) >= 3 else None
    noise = np.array([v for r in best.values() for v in r["b_simple"]])

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9), layout="constrained")
    for ax, key, name in zip(axes, ("step", "examples", "wall_time"),
                             ("parameter updates", "training examples", "training wall-clock (s)")):
        ax.errorbar(bs, column(key), yerr=column(f"{key}_std"), fmt="o-", ms=4, capsize=3, color="C0",
                    label="measured (best LR per batch size; mean ± std over seeds)")
        if fit is not None and key != "wall_time":
            s_min, b_crit = fit
            grid = np.geomspace(bs.min(), bs.max(), 100)
            model = s_min * (1 + b_crit / grid) if key == "step" else s_min * (grid + b_crit)
            ax.plot(grid, model, "--", color="C1", label=f"fit S_min(1+B_crit/B): B_crit = {b_crit:.0f}")
        if fit is not None:
            ax.axvline(fit[1], color="C1", ls="--", lw=1)
        if len(noise):
            ax.axvline(np.median(noise), color="C3", ls=":", lw=1.5,
                       label=f"measured B_simple = {np.median(noise):.0f} (median)")
            if len(noise) > 1:
                ax.axvspan(noise.min(), noise.max(), color="C3", alpha=0.08, lw=0,
                           label="B_simple, range over the kept runs")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(bs, [str(int(b)) for b in bs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"{name} to reach train loss {target:g}")
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="upper left")  # the emptiest corner of the three panels
    fig.suptitle(f"{res['name']}: cost of reaching training loss {target:g} against batch size")
    png = save(fig, out / "cost.png")

    lines = [f"Target training loss {target:g}; best LR per batch size (fewest updates; mean over seeds).", "",
             "| batch | lr | updates | examples | wall-clock (s) | B_simple, final checkpoint |",
             "|---|---|---|---|---|---|"]
    for b, r in best.items():
        lines.append(f"| {b} | {r['lr']:g} | {r['step']:.0f} | {r['examples']:.0f} | {r['wall_time']:.1f} | "
                     f"{mean_std(r['b_simple'])} |")
    lines.append("")
    lines.append(f"Fit S = S_min(1 + B_crit/B): S_min = {fit[0]:.0f}, B_crit = {fit[1]:.0f}, E_min = "
                 f"{fit[0] * fit[1]:.0f}." if fit else "Fit S = S_min(1 + B_crit/B): no positive fit.")
    if missing:
        lines.append(f"Never reached the target at any LR: batch sizes {missing}.")
    text = "\n".join(lines) + "\n"
    md = atomic_write(out / "cost.md", lambda p: p.write_text(text))
    return [png, md]


FIGURES = {"table": table, "curves": curves, "parametric": parametric, "esd": esd, "surface": surface,
           "sharpness_vs_loss": sharpness_vs_loss, "batch_sweep": batch_sweep, "cost": cost}


def draw(results_path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw every figure the experiment's ``[figures] kinds`` lists, from ``results.json`` alone."""
    results_path = Path(results_path)
    try:
        res = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SharpnessError(f"{results_path}: not a readable results file ({' '.join(str(e).split())})") from None
    if not (isinstance(res, dict) and isinstance(res.get("name"), str) and isinstance(res.get("spec"), dict)
            and isinstance(res.get("runs"), dict) and all(isinstance(r, dict) for r in res["runs"].values())):
        raise SharpnessError(f"{results_path}: not an experiment's results.json (needs name, spec and runs)")
    out = Path(out) if out is not None else results_path.parent
    kinds = res["spec"].get("figures", {}).get("kinds", ["table"])
    made: list[Path] = []
    for kind in kinds:
        if kind not in FIGURES:
            raise SharpnessError(f"{results_path}: unknown figure kind {kind!r}; known: {', '.join(FIGURES)}")
        try:
            r = FIGURES[kind](res, out)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            # a results file of the wrong shape: say which figure and what was missing, in one line
            raise SharpnessError(f"{results_path}: cannot draw '{kind}' ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]})") from None
        made.extend(r if isinstance(r, list) else [r])
    return made
