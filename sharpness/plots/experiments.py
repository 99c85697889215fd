"""Figures and tables of an experiment, drawn from its ``results.json`` only (never trains or computes).

Runs that differ only in their seed form a group; tables and figures show the mean ± 95 % confidence
interval over seeds (Student t, n − 1 degrees of freedom; :func:`sharpness.reporting.mean_ci`) and say n.
What is shown comes from :mod:`sharpness.reporting` (the long table, gaps, bins, fits and selections) and
the measures' registered keys; this module only draws. Every figure is sized for one 3.3-inch column
(:mod:`sharpness.plots.style`): several panels are stacked, accuracies are in %, titles come from the
figure's spec (``title``) or are left out.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from ..checks import is_number, require
from ..errors import SharpnessError, printable
from ..errors import short as _short
from ..io import atomic_write, confined
from ..losses import loss_label
from ..measures.builtin import eps_key
from ..reporting import (
    CI_NOTE,
    SCATTER_MEASURES,
    arm,
    batch_size,
    best_lr_per_batch,
    binned_ci,
    ci_by,
    final,
    fit_critical_batch,
    format_ci,
    gap_rows,
    groups,
    headline_columns,
    kendall,
    long_table,
    mean_ci,
    peak_rows,
    read_results,
    scatter_rows,
    seeds_note,
    shown,
    variant_names,
    variant_of,
    warm_start_rows,
)
from .landscape import plot_parametric, plot_surfaces
from .spectrum import plot_spectral_densities, plot_spectral_density, shared_sigma
from .style import check_path, figure_title, new_axes, save, styled, targets

__all__ = ["draw", "rename_labels", "check_figures", "FIGURES"]

PANEL_HEIGHT = 1.45  # inches per stacked panel (shared x axis): four panels fit a column's page height


def _loss_label(res: dict) -> str:
    """The axis name of the runs' training loss (their config's ``loss``; cross-entropy by default)."""
    names = {r["config"].get("loss", "cross_entropy") for r in res["runs"].values()}
    return loss_label(names.pop()) if len(names) == 1 else "loss"


def _options(res: dict, kind: str) -> dict:
    """The ``[figures] KIND = {...}`` options of the experiment (empty when none)."""
    opts = res["spec"].get("figures", {}).get(kind, {})
    return opts if isinstance(opts, dict) else {}


def _palette(n: int) -> list:
    import seaborn as sns

    return sns.color_palette("colorblind", max(n, 1))


def _stack(n: int, *, sharex: bool = True, height: float = PANEL_HEIGHT):
    """(fig, [axes]) of ``n`` panels stacked at the style's column width, sharing the x axis."""
    width = matplotlib.rcParams["figure.figsize"][0]
    fig, axes = new_axes(figsize=(width, height * n + 0.35), rows=n, sharex=sharex)
    return fig, list(np.atleast_1d(axes).ravel())


def _header(fig, ax, title: str | None, note: str | None) -> None:
    """The figure's human title (if any) and, above the first panel, what the bands are (n stated).

    A :func:`~sharpness.plots.style.figure_options` title (``--title``) replaces the spec's.
    """
    title = figure_title(title, title)
    title = printable(title, 300) if title else title  # from a file: escaped and capped
    if title:  # wrapped to the figure's width: a long title must not widen a column figure
        fig.suptitle(textwrap.fill(title, max(20, int(fig.get_figwidth() * 15))))
    if note:
        ax.set_title(printable(note, 300), loc="left", fontsize="small", color="0.3")


def _fig_legend(fig, handles, labels, title: str | None = None, ncol: int | None = None) -> None:
    """One legend for the whole figure, above the panels (below them when the figure has a title)."""
    if handles:
        where = "lower" if fig.get_suptitle() else "upper"
        title = textwrap.fill(title, max(20, int(fig.get_figwidth() * 16))) if title else None
        labels = [printable(lb, 120) for lb in labels]
        fig.legend(handles, labels, loc=f"outside {where} center", ncol=ncol or min(len(labels), 3), title=title,
                   title_fontsize="small")


def _g(v: float) -> str:
    return f"{v:g}"


def _log_axis(ax, which: str = "y") -> None:
    """Log scale with plain-number tick labels; a short span (under 2.5 decades) gets 1-3, 1-2-5 or 1…9 labels."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    ax.autoscale_view()
    lo, hi = (ax.get_ylim() if which == "y" else ax.get_xlim())
    lo, hi = min(lo, hi), max(lo, hi)
    decades = math.log10(hi / lo) if lo > 0 else 0
    if decades < 2.5:
        subs = (np.arange(1.0, 10.0) if decades < 0.35 else (1.0, 2.0, 3.0, 5.0) if decades < 0.8
                else (1.0, 2.0, 5.0) if decades < 1.5 else (1.0, 3.0))
        axis.set_major_locator(LogLocator(subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: _g(v)))
    elif decades <= 6:
        axis.set_major_formatter(FuncFormatter(lambda v, _: _g(v)))
    axis.set_minor_formatter(NullFormatter())


def _maybe_log(ax, values, which: str = "y") -> None:
    """Log scale when every value is positive and they span more than a factor 20."""
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) and (v > 0).all() and v.max() / v.min() > 20:
        _log_axis(ax, which)


def _batch_axis(ax, bs) -> None:
    """Batch sizes on a log₂ axis, each labelled."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(bs), [str(int(b)) for b in bs])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("batch size")


def _errorbar(ax, x, cells, **kw):
    """Means with 95 % CI bars from :func:`sharpness.reporting.ci_by` cells ({mean, ci, n})."""
    m = np.array([c["mean"] for c in cells], dtype=float)
    e = np.nan_to_num(np.array([c["ci"] for c in cells], dtype=float))
    return ax.errorbar(x, m, yerr=e, capsize=2, marker="o", **kw)


def table(res: dict, out: Path) -> Path:
    """Markdown table, one row per group (mean ± 95 % CI over its n seeds), of every headline key the runs have."""
    runs, grouped = res["runs"], groups(res["runs"])
    cols = headline_columns(long_table(res))
    lines = [f"Final values per group: {CI_NOTE} over the group's n seeds (n = 1: the value alone).", "",
             "| run | n (seeds) | updates | " + " | ".join(k.column() for _, k in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for g, labels in grouped.items():
        cells = []
        for m, k in cols:
            vals = [final(runs[lb], m, k.name) for lb in labels]
            cells.append(format_ci([v * (100 if k.percent else 1) for v in vals if v is not None]))
        counts = [runs[lb]["history"][-1]["step"] for lb in labels if runs[lb]["history"]]
        steps = str(counts[0]) if len(set(counts)) == 1 else format_ci(counts)  # differ with target_train_loss
        lines.append(f"| {g} | {len(labels)} | {steps} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    return atomic_write(out / "table.md", lambda p: p.write_text(text))


AXIS_LABELS = {"epoch": "epoch", "step": "parameter updates", "examples": "training examples seen",
               "wall_time": "training wall-clock (s)", "test_loss": "test loss", "test_acc": "test accuracy (%)",
               "train_loss": "training loss", "train_acc": "training accuracy (%)", "dist_from_init": "‖w − w₀‖",
               "lr": "learning rate", "batch_size": "batch size", "batch_loss": "mini-batch loss",
               "lambda_max": "λ_max", "trace": "Hessian trace"}
PERCENT = {"test_acc", "train_acc"}  # fractions drawn ×100
DEFAULT_CURVES = {"file": "curves.png", "panels": [{"x": "epoch", "y": "test_loss"}, {"x": "epoch", "y": "test_acc"}]}


@styled
def _curve_figure(res: dict, out: Path, fig_spec: dict) -> Path:
    grouped = groups(res["runs"])
    wanted = fig_spec.get("groups", list(grouped))
    unknown = [g for g in wanted if g not in grouped]
    if unknown:
        raise ValueError(f"figures.curves names unknown groups {unknown}; groups are {list(grouped)}")
    panels = fig_spec["panels"]
    same_x = len({(p["x"], p.get("xscale", "linear"), p.get("source", "history")) for p in panels}) == 1
    fig, axes = _stack(len(panels), sharex=same_x, height=PANEL_HEIGHT if len(panels) > 1 else 2.2)
    colors = _palette(len(wanted))
    seeds = []
    for ax, panel in zip(axes, panels):
        xk, yk, source = panel["x"], panel["y"], panel.get("source", "history")
        log_x = panel.get("xscale") == "log"
        scale = 100.0 if yk in PERCENT else 1.0
        for i, g in enumerate(wanted):
            hs = [res["runs"][lb].get(source, []) for lb in grouped[g]]
            if not all(hs):
                continue  # e.g. source = "trace" for runs trained without trace_log_steps
            n = min(len(h) for h in hs)
            x = np.array([[e[xk] for e in h[:n]] for h in hs], dtype=float).mean(0)
            v = scale * np.array([[e[yk] for e in h[:n]] for h in hs], dtype=float)
            cells = [mean_ci(col) for col in v.T]
            m = np.array([c[0] for c in cells])
            keep = x > 0 if log_x else np.ones_like(x, bool)  # epoch / update 0 has no place on a log axis
            ax.plot(x[keep], m[keep], fig_spec.get("styles", {}).get(g, "-"), label=g, color=colors[i])
            if panel.get("stability"):  # gradient descent's stability threshold 2/η (Cohen et al. 2021)
                for lr in sorted({res["runs"][lb]["config"]["lr"] for lb in grouped[g]}):
                    ax.axhline(2 / lr, color=colors[i], ls=":", lw=0.8)
            if len(hs) > 1:
                h = np.array([c[1] for c in cells])
                ax.fill_between(x[keep], (m - h)[keep], (m + h)[keep], color=colors[i], alpha=0.2, lw=0)
            seeds.append(len(hs))
        if log_x:
            _log_axis(ax, "x")
        if panel.get("yscale") == "log":
            _log_axis(ax, "y")
        if "ylim" in panel:
            ax.set_ylim(*panel["ylim"])
        ax.set_ylabel(AXIS_LABELS.get(yk, yk))
        if not same_x or ax is axes[-1]:
            ax.set_xlabel(AXIS_LABELS.get(xk, xk))
    _header(fig, axes[0], fig_spec.get("title"), None)
    handles, labels = axes[0].get_legend_handles_labels()
    _fig_legend(fig, handles, labels, title=seeds_note(seeds) + (" (band)" if max(seeds, default=0) > 1 else ""))
    return save(fig, confined(out, fig_spec["file"], "figures.curves file"))


@styled
def curves(res: dict, out: Path) -> list[Path]:
    """Training curves per group: mean over seeds, band = 95 % CI (Student t), n in the legend title.

    Each ``[[figures.curves]]`` entry is one figure (``file``, ``title``, optional ``groups``, ``styles``
    and ``panels`` = [{x, y, xscale, yscale, ylim, source, stability}], x and y being keys of the per-epoch
    history (from epoch 0 in new runs), of the log-spaced ``trace`` when ``source = "trace"``, or of the
    tracker's records when ``source = "tracked"``; ``stability = true`` draws each group's 2/η as a dotted
    line in its colour (the edge of stability of gradient descent, Cohen et al. 2021); without entries,
    test loss and accuracy against epochs. Panels are stacked; accuracies are in %. On a log x axis the
    point at x = 0 (epoch 0, update 0) is left out.
    """
    specs = res["spec"].get("figures", {}).get("curves") or [DEFAULT_CURVES]
    return [_curve_figure(res, out, f) for f in specs]


_PATHS = {"linear": "linear path (1 − α)·θ₀ + α·θ₁",  # Keskar Fig. 3
          "sin": "curved path sin(απ/2)·θ₁ + cos(απ/2)·θ₀"}  # Keskar Fig. 7


def _pair(key: str) -> tuple[str, str, str]:
    """("SB-seed0", "LB-seed0", "sin") of a results.json pair key ``"SB-seed0→LB-seed0 (sin)"``."""
    m = re.fullmatch(r"(.+?)→(.+?)(?: \((\w+)\))?", key)
    if m is None:
        raise ValueError(f"pair key {key!r} is not 'A→B' or 'A→B (path)'")
    return m.group(1), m.group(2), m.group(3) or "linear"


def _safe(name: str) -> str:
    """A folder-safe file-name part: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


@styled
def parametric(res: dict, out: Path) -> list[Path]:
    """Keskar Fig. 3 (linear path) and Fig. 7 (curved path, key suffix " (sin)") for every pair in the results.

    Files: ``parametric_A_B.png`` (linear) and ``parametric_A_B_sin.png`` (curved); the title names the path.
    """
    paths = []
    for key, arr in res.get("pairs", {}).items():
        a, b, kind = _pair(key)
        name = "_".join(_safe(s) for s in (a, b) + (() if kind == "linear" else (kind,)))
        path = confined(out, f"parametric_{name}.png", "a pair's figure file")
        a, b = printable(a, 100), printable(b, 100)
        title = f"{a} (α = 0) → {b} (α = 1)\n{_PATHS.get(kind, printable(kind, 40) + ' path')}"
        ax = plot_parametric({**arr, "path": kind}, labels=(a, b), title=title, loss_label=_loss_label(res))
        paths.append(save(ax.figure, path))
    return paths


@styled
def esd(res: dict, out: Path) -> Path:
    """Hessian eigenvalue densities (SLQ; Yao et al. 2020) of the final models, overlaid in ``esd.png``.

    Runs with SLQ ``nodes``/``weights`` arrays are re-broadened with one absolute Gaussian width σ = 1 % of
    the union of all those runs' node ranges, on one grid, so their widths compare (a width relative to
    each run's own range would widen the sharper model's density). Older results hold only each run's own
    smoothed ``grid``/``density`` (σ = 1 % of that run's range): those are drawn as stored, and the legend
    says so.
    """
    fig, ax = new_axes()
    runs = {lb: {k.split("/", 1)[1]: v for k, v in r.get("arrays", {}).items() if k.startswith("density/")}
            for lb, r in res["runs"].items()}
    with_nodes = {lb: a for lb, a in runs.items() if "nodes" in a and "weights" in a}
    stored = {lb: a for lb, a in runs.items() if lb not in with_nodes and "grid" in a and "density" in a}
    if not with_nodes and not stored:
        raise ValueError("esd: no run has density arrays (nodes/weights or grid/density)")
    note = None
    if with_nodes:
        sigma = shared_sigma(with_nodes)
        plot_spectral_densities(with_nodes, ax=ax, sigma=sigma, title="")
        note = f"one Gaussian width σ = {sigma:.2g} (1 % of the nodes' range)"
    for lb, a in stored.items():
        plot_spectral_density({"grid": a["grid"], "density": a["density"]}, ax=ax, label=lb)
    if stored:
        note = (note + "; " if note else "") + "each run's own smoothing (stored densities)"
    ax.set_title(printable(figure_title(_options(res, "esd").get("title"), "") or "", 300))
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density")
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    handles, labels = ax.get_legend_handles_labels()
    _fig_legend(fig, handles, labels, title=note, ncol=min(len(labels), 4))
    return save(fig, out / "esd.png")


@styled
def surface(res: dict, out: Path) -> Path:
    """Li et al. 2018's filter-normalized 2D loss surfaces, one panel per run, in ``surface.png``.

    The panels (e.g. SB and LB) share one colour scale: the same log-spaced loss levels from the smallest
    to the largest loss over all panels, so a contour means one loss value in every panel.
    """
    grids = {}
    for label, r in res["runs"].items():
        arr = r.get("arrays", {})
        if "landscape2d/loss" in arr:
            grids[label] = {k.split("/", 1)[1]: np.asarray(v) for k, v in arr.items()
                            if k.startswith("landscape2d/")}
    if not grids:
        raise ValueError("surface: no run has landscape2d arrays")
    path = out / "surface.png"
    plot_surfaces(grids, path=path, title=_options(res, "surface").get("title"), loss_label=_loss_label(res))
    return targets(path)[0]


@styled
def sharpness_vs_loss(res: dict, out: Path) -> Path:
    """Keskar Fig. 6: ε-sharpness against training loss along training, per group.

    Thin faint lines: each seed's checkpoints. Bold: per log-spaced bin of training loss, the mean over
    seeds (each seed's mean in the bin) ± 95 % CI (Student t). The x axis decreases to the right, as
    training proceeds. Key: ``[figures] sharpness_vs_loss = { sharpness = "eps0.001_full" }``.
    """
    key = _options(res, "sharpness_vs_loss").get("sharpness", eps_key(1e-3, None))
    fig, ax = new_axes()
    grouped = groups(res["runs"])
    colors = _palette(len(grouped))
    values, seeds = [], []
    for i, (g, labels) in enumerate(grouped.items()):
        series = []
        for lb in labels:
            along = res["runs"][lb].get("along", [])
            pts = [(e["train_loss"], e.get("eps_sharpness", {}).get(key)) for e in along]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if pts:
                x, y = zip(*pts)
                series.append((list(x), list(y)))
                ax.plot(x, y, "-", color=colors[i], lw=0.5, alpha=0.3)
                values.extend(y)
        if not series:
            continue
        b = binned_ci(series)
        ax.plot(b["center"], b["mean"], "o-", color=colors[i], label=g)
        h = np.nan_to_num(b["ci"])
        ax.fill_between(b["center"], b["mean"] - h, b["mean"] + h, color=colors[i], alpha=0.2, lw=0)
        seeds.extend(b["n"])
    if not values:
        raise ValueError(f"sharpness_vs_loss: no run has eps_sharpness {key} along training")
    _log_axis(ax, "x")
    ax.invert_xaxis()
    _maybe_log(ax, values)
    ax.set_xlabel(f"training {_loss_label(res)} (decreasing →)")
    eps = key.split("_")[0].replace("eps", "")
    ax.set_ylabel(f"ε-sharpness φ (ε = {eps})")
    _header(fig, ax, _options(res, "sharpness_vs_loss").get("title"), None)
    handles, labels = ax.get_legend_handles_labels()
    _fig_legend(fig, handles, labels, title=f"{seeds_note(seeds)} per loss bin; thin: single seeds")
    return save(fig, out / "sharpness_vs_loss.png")


def _arm_name(label: str, runs: list[dict]) -> str:
    """An arm's legend name: its label part, with the LR rule its runs use."""
    rules = {r["config"].get("lr_scaling", "none") for r in runs}
    rule = {"sqrt": "LR ∝ √B", "linear": "LR ∝ B", "none": "fixed LR"}.get(rules.pop(), "") if len(rules) == 1 else ""
    if label and rule and label.lower() not in rule.lower():
        return f"{label} ({rule})"
    return rule if label and rule else (label or "runs")


def _sweep(res: dict, out: Path, file: str, panels: list[tuple[str, str, callable, bool]], kind: str) -> Path:
    """Stacked panels of per-run values against batch size, one line per arm, mean ± 95 % CI over seeds.

    ``panels``: (name, y label, run → value, log y or "auto").
    """
    columns = {name: fn for name, _, fn, _ in panels}
    rows = ci_by(res, lambda lb, r: (arm(lb, r), batch_size(r)), columns)
    arms = sorted({r["key"][0] for r in rows})
    bs = sorted({r["key"][1] for r in rows})
    fig, axes = _stack(len(panels))
    colors = _palette(len(arms))
    ns = []
    for ax, (name, ylabel, _, log) in zip(axes, panels):
        for i, a in enumerate(arms):
            mine = [r for r in rows if r["key"][0] == a and r[name]["n"]]
            if not mine:
                continue
            label = _arm_name(a, [res["runs"][lb] for r in mine for lb in r["labels"]])
            _errorbar(ax, [r["key"][1] for r in mine], [r[name] for r in mine], color=colors[i], label=label)
            ns.extend(r[name]["n"] for r in mine)
        if log == "auto":
            _maybe_log(ax, [r[name]["mean"] for r in rows])
        elif log:
            _log_axis(ax, "y")
        ax.set_ylabel(ylabel)
    _batch_axis(axes[-1], bs)
    handles, labels = axes[0].get_legend_handles_labels()
    _header(fig, axes[0], _options(res, kind).get("title"), None if len(arms) > 1 else seeds_note(ns))
    if len(arms) > 1:
        _fig_legend(fig, handles, labels, title=seeds_note(ns))
    return save(fig, out / file)


def _eps_name(key: str) -> str:
    eps, space = key.split("_", 1)
    return f"ε = {eps.replace('eps', '')}" + ("" if space == "full" else f", {space.replace('p', 'p = ')}")


@styled
def batch_sweep(res: dict, out: Path) -> Path:
    """Keskar Fig. 4: test accuracy, ε-sharpness, λ_max and final training loss against batch size.

    Four stacked panels sharing the batch-size axis, mean ± 95 % CI over seeds; one line per arm (runs that
    differ in more than batch size and seed). The final training loss is the one the others must be read
    against (curvature shrinks with the loss). Key: ``[figures] batch_sweep = { sharpness = "eps0.001_full" }``.
    """
    key = _options(res, "batch_sweep").get("sharpness", eps_key(1e-3, None))

    def get(measure, k, scale=1.0):
        return lambda r: None if final(r, measure, k) is None else scale * final(r, measure, k)

    return _sweep(res, out, "batch_sweep.png", [
        ("test_acc", "test accuracy (%)", get("loss", "test_acc", 100.0), False),
        ("phi", f"ε-sharpness φ\n({_eps_name(key)})", get("eps_sharpness", key), "auto"),
        ("lambda_max", "λ_max", get("eigenvalues", "lambda_max"), "auto"),
        ("train_loss", f"final training\n{_loss_label(res)}", get("loss", "train_loss"), True)], "batch_sweep")


@styled
def gap(res: dict, out: Path) -> Path:
    """The generalization gap against batch size at matched training loss, in ``gap.png``.

    Panels (stacked): test − train loss, train − test accuracy (points of %), and the final training loss
    (so the reader sees the runs stop at one training loss). One line per arm (e.g. gap.toml's fixed and
    √B-scaled learning rates), mean ± 95 % CI over seeds; the numbers are
    :func:`sharpness.reporting.gap_rows` (Keskar et al. 2017; Hoffer et al. 2017).
    """
    rows = gap_rows(res)
    arms = sorted({r["arm"] for r in rows})
    bs = sorted({r["batch"] for r in rows})
    has_acc = any(r["gap_acc"]["n"] for r in rows)
    panels = [("gap_loss", "test − train loss", False)] + (
        [("gap_acc", "train − test accuracy\n(points of %)", False)] if has_acc else []) + [
        ("train_loss", f"final training\n{_loss_label(res)}", True)]
    fig, axes = _stack(len(panels))
    colors = _palette(len(arms))
    for ax, (name, ylabel, log) in zip(axes, panels):
        for i, a in enumerate(arms):
            mine = [r for r in rows if r["arm"] == a and r[name]["n"]]
            label = _arm_name(a, [res["runs"][lb] for r in mine for lb in r["labels"]])
            _errorbar(ax, [r["batch"] for r in mine], [r[name] for r in mine], color=colors[i], label=label)
        if log:
            _log_axis(ax, "y")
        ax.set_ylabel(ylabel)
    _batch_axis(axes[-1], bs)
    note = seeds_note(r["gap_loss"]["n"] for r in rows)
    _header(fig, axes[0], _options(res, "gap").get("title"), None if len(arms) > 1 else note)
    if len(arms) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        _fig_legend(fig, handles, labels, title=note)
    return save(fig, out / "gap.png")


def _best_measures(res: dict, n: int) -> dict[tuple[str, str], str]:
    """{(measure, key): label} of the ``n`` final measures with the largest Kendall τ with the loss gap."""
    from ..correlation import correlate, results_rows
    from ..measures.registry import headline_keys

    table = results_rows(res)
    columns = [c for c in table.measures if "." in c]  # final summaries (not the history's ‖w − w₀‖)
    tau = correlate(table.rows, columns, n_boot=10).tau
    top = sorted((c for c in columns if np.isfinite(tau[c])), key=lambda c: -tau[c])[:n]
    labels = {(m, k.name): k.label for m, k in headline_keys()}
    return {tuple(c.split(".", 1)): labels.get(tuple(c.split(".", 1)), c) for c in top}


@styled
def gap_scatter(res: dict, out: Path) -> Path:
    """Each run's sharpness against its generalization gap (test − train loss), in ``gap_scatter.png``.

    One stacked panel per measure the runs have (λ_max; ε-sharpness φ at ε = 1e-3, full space; adaptive
    sharpness, worst and average, Andriushchenko et al. 2023) — or, with ``[figures] gap_scatter = {best =
    N}``, the N measures with the largest Kendall τ over all runs (:func:`sharpness.correlate`, the ranking of
    the ``correlation`` figure). Points coloured by batch size (log colour scale), marker by arm; each panel
    states Kendall's τ (scipy.stats.kendalltau), its two-sided p-value and n over the runs, the rank
    correlation Jiang et al. 2020 use to judge a measure. Runs that missed their target training loss are
    left out.
    """
    import seaborn as sns

    best = _options(res, "gap_scatter").get("best")
    chosen = SCATTER_MEASURES if best is None else _best_measures(res, best)
    rows = scatter_rows(res, chosen)
    present = [mk for mk in chosen if sum(mk in r for r in rows) >= 2]
    if not present:
        raise ValueError(f"gap_scatter: fewer than two runs have any of {', '.join('.'.join(mk) for mk in chosen)}")
    bs = sorted({r["batch"] for r in rows})
    # Marker by the experiment's named variant (its arm when there are none); no markers for more than 7.
    names = variant_names(res)
    for r in rows:
        r["arm"] = variant_of(r["label"], names) or r["arm"]
    arms = sorted({r["arm"] for r in rows})
    arms = arms if len(arms) <= 7 else [""]
    norm = LogNorm(min(bs), max(bs) if max(bs) > min(bs) else min(bs) * 2)
    cmap = matplotlib.colormaps["viridis"]
    markers = dict(zip(arms, "o^sDv<>"))
    fig, axes = _stack(len(present), height=1.6)
    for ax, mk in zip(axes, present):
        mine = [r for r in rows if mk in r]
        data = {"gap": [r["gap_loss"] for r in mine], "value": [r[mk] for r in mine],
                "batch": [r["batch"] for r in mine], "arm": [r["arm"] for r in mine]}
        sns.scatterplot(data=data, x="gap", y="value", hue="batch", hue_norm=norm, palette=cmap,
                        style="arm" if len(arms) > 1 else None, markers=markers if len(arms) > 1 else True,
                        ax=ax, legend=False, s=14, edgecolor="none")
        tau, p, n = kendall(data["gap"], data["value"])
        ax.text(0.02, 0.97, f"Kendall τ = {tau:.2f}, p = {p:.2g}, n = {n}", transform=ax.transAxes,
                va="top", ha="left", fontsize="small",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1})
        _maybe_log(ax, data["value"])
        lo, hi = ax.get_ylim()
        if ax.get_yscale() == "log":
            ax.set_ylim(lo, hi * (hi / lo) ** 0.25)  # room for the τ line above the points
        else:
            ax.set_ylim(lo, hi + 0.25 * (hi - lo))
        ax.set_ylabel(chosen[mk])
        ax.set_xlabel("")
    axes[-1].set_xlabel(f"generalization gap: test − train {_loss_label(res)}")
    handles = [Line2D([], [], ls="", marker="o", color=cmap(norm(b)), ms=4) for b in bs]
    labels = [str(b) for b in bs]
    if len(arms) > 1:
        handles += [Line2D([], [], ls="", marker=markers[a], color="0.4", ms=4) for a in arms]
        labels += [a or "runs" for a in arms]
    _header(fig, ax, _options(res, "gap_scatter").get("title"), None)
    _fig_legend(fig, handles, labels, title="batch size" + (" / arm" if len(arms) > 1 else ""),
                ncol=min(len(labels), 5))
    return save(fig, out / "gap_scatter.png")


@styled
def warm_start(res: dict, out: Path) -> Path:
    """Keskar Fig. 5: LB runs warm-started from SB's iterate after k epochs, in ``warm_start.png``.

    k comes from each run's ``init_from`` (``ckpt_epochK.pt`` → K, ``init.pt`` → 0). Stacked panels: test
    accuracy (%), ε-sharpness φ (ε = 1e-3, full space) and λ_max of the warm-started final models against
    k, mean ± 95 % CI over seeds; the dashed line and band are the cold (SB) runs' final values.
    """
    key = _options(res, "warm_start").get("sharpness", eps_key(1e-3, None))

    def get(measure, k, scale=1.0):
        return lambda r: None if final(r, measure, k) is None else scale * final(r, measure, k)

    cols = [("test_acc", "test accuracy (%)", get("loss", "test_acc", 100.0)),
            ("phi", f"ε-sharpness φ\n({_eps_name(key)})", get("eps_sharpness", key)),
            ("lambda_max", "λ_max", get("eigenvalues", "lambda_max"))]
    rows, ref = warm_start_rows(res, {name: fn for name, _, fn in cols})
    cols = [c for c in cols if any(r[c[0]]["n"] for r in rows)]
    ks = [r["k"] for r in rows]
    ref_names = sorted(groups({lb: None for lb in ref["labels"]}))
    fig, axes = _stack(len(cols))
    c_lb, c_ref = _palette(2)
    for ax, (name, ylabel, _) in zip(axes, cols):
        _errorbar(ax, ks, [r[name] for r in rows], color=c_lb, label="warm-started, final")
        if ref[name]["n"]:
            m, h = ref[name]["mean"], ref[name]["ci"]
            ax.axhline(m, color=c_ref, ls="--", lw=1, label=f"{', '.join(ref_names) or 'cold'} (no warm start), final")
            if np.isfinite(h):
                ax.axhspan(m - h, m + h, color=c_ref, alpha=0.15, lw=0)
        _maybe_log(ax, [r[name]["mean"] for r in rows] + [ref[name]["mean"]])
        ax.set_ylabel(ylabel)
    ax = axes[-1]
    ax.set_xscale("symlog", base=2, linthresh=1, linscale=0.5)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("k: small-batch epochs before the switch")
    handles, labels = axes[0].get_legend_handles_labels()
    _header(fig, axes[0], _options(res, "warm_start").get("title"), None)
    _fig_legend(fig, handles, labels, title=seeds_note([r[c[0]]["n"] for r in rows for c in cols]), ncol=1)
    return save(fig, out / "warm_start.png")


@styled
def _cost_figure(res: dict, out: Path, best: dict, bs: np.ndarray, fit, noise: np.ndarray, target: float) -> Path:
    fig, axes = _stack(3)

    def column(k: str) -> np.ndarray:
        return np.array([r[k] for r in best.values()], dtype=float)

    c_meas, c_fit, c_noise = _palette(3)
    seeds = [len(r["labels"]) for r in best.values()]
    for ax, key, name in zip(axes, ("step", "examples", "wall_time"),
                             ("updates", "training examples", "wall-clock (s)")):
        ax.errorbar(bs, column(key), yerr=np.nan_to_num(column(f"{key}_ci")), fmt="o-", capsize=2,
                    color=c_meas, label="measured (best LR per batch size)")
        if fit is not None and key != "wall_time":
            s_min, b_crit = fit
            grid = np.geomspace(bs.min(), bs.max(), 100)
            model = s_min * (1 + b_crit / grid) if key == "step" else s_min * (grid + b_crit)
            ax.plot(grid, model, "--", color=c_fit, label=f"fit S_min(1 + B_crit/B): B_crit = {b_crit:.0f}")
        if fit is not None:
            ax.axvline(fit[1], color=c_fit, ls="--", lw=0.8)
        if len(noise):
            ax.axvline(np.median(noise), color=c_noise, ls=":", lw=1.2,
                       label=f"measured B_simple = {np.median(noise):.0f} (median over the kept runs)")
            if len(noise) > 1:
                ax.axvspan(noise.min(), noise.max(), color=c_noise, alpha=0.08, lw=0,
                           label="B_simple, range over the kept runs")
        _log_axis(ax, "y")
        ax.set_ylabel(name)
    _batch_axis(axes[-1], bs)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(noise) and not any(lb.startswith("measured B_simple") for lb in labels):
        handles2, labels2 = axes[1].get_legend_handles_labels()
        handles, labels = handles2, labels2
    _header(fig, axes[0], _options(res, "cost").get("title"), None)
    _fig_legend(fig, handles, labels, title=f"to reach training loss {target:g}; bars: {seeds_note(seeds)}", ncol=1)
    return save(fig, out / "cost.png")


def cost(res: dict, out: Path) -> list[Path]:
    """McCandlish et al. 2018: updates, examples and wall-clock to reach a training loss, against batch size.

    For each batch size the learning rate that reaches the target in the fewest updates is kept (mean over
    seeds first), as the paper tunes the LR per batch size; bars are 95 % CIs over seeds. Marked: the fitted
    critical batch size of S = S_min(1 + B_crit/B) (E = E_min(1 + B/B_crit) follows) and the measured simple
    noise scale B_simple of the kept runs' final (target-loss) checkpoints. Writes ``cost.png``, ``cost.md``.
    """
    opts = _options(res, "cost")
    target = opts.get("target") or next(r["config"].get("target_train_loss") for r in res["runs"].values())
    if not is_number(target, finite=True) or target <= 0:
        raise SharpnessError(f"figures.cost.target (or the runs' target_train_loss) must be a training loss "
                             f"above 0 (got {_short(target, 60)})")
    best, missing = best_lr_per_batch(res, target)
    bs = np.array(list(best), dtype=float)
    fit = fit_critical_batch(bs, np.array([r["step"] for r in best.values()])) if len(bs) >= 3 else None
    noise = np.array([v for r in best.values() for v in r["b_simple"]])
    png = _cost_figure(res, out, best, bs, fit, noise, target)

    lines = [f"Target training loss {target:g}; best LR per batch size (fewest updates; mean over seeds); "
             f"B_simple: {CI_NOTE} over the kept runs' n seeds.", "",
             "| batch | lr | n (seeds) | updates | examples | wall-clock (s) | B_simple, final checkpoint |",
             "|---|---|---|---|---|---|---|"]
    for b, r in best.items():
        lines.append(f"| {b} | {r['lr']:g} | {len(r['labels'])} | {r['step']:.0f} | {r['examples']:.0f} | "
                     f"{r['wall_time']:.1f} | {format_ci(r['b_simple'])} |")
    lines.append("")
    lines.append(f"Fit S = S_min(1 + B_crit/B): S_min = {fit[0]:.0f}, B_crit = {fit[1]:.0f}, E_min = "
                 f"{fit[0] * fit[1]:.0f}." if fit else "Fit S = S_min(1 + B_crit/B): no positive fit.")
    if missing:
        lines.append(f"Never reached the target at any LR: batch sizes {missing}.")
    text = "\n".join(lines) + "\n"
    md = atomic_write(out / "cost.md", lambda p: p.write_text(text))
    return [png, md]


@styled
def correlation(res: dict, out: Path) -> list[Path]:
    """Which measures track the gap: Kendall τ, Jiang et al. 2020's Ψ and each axis' ψ as a heat map.

    Rows: every numeric final measure of the runs (and ‖w − w₀‖), best τ first; columns: τ over all runs,
    Ψ, then ψ per hyperparameter axis of the grid (and the variants) — :func:`sharpness.correlate` on
    :func:`sharpness.correlation.results_rows`. Colour from −1 (blue: larger measure, smaller gap) to +1.
    Writes ``correlation.png`` and the table with bootstrap intervals, ``correlation.md``.
    """
    import seaborn as sns

    from ..correlation import correlate, left_out_note, results_rows

    table = results_rows(res)
    axes = table.axes
    opts = _options(res, "correlation")
    r = correlate(table.rows, table.measures, gap=opts.get("gap", "gap"), axes=axes, n_boot=opts.get("n_boot", 1000))
    order = sorted(r.tau, key=lambda m: -np.nan_to_num(r.tau[m], nan=-2))
    cols = ["τ", "Ψ", *(f"ψ {a}" for a in axes)]
    grid = np.array([[r.tau[m], r.psi[m], *(r.per_axis[m][a] for a in axes)] for m in order], dtype=float)
    w = matplotlib.rcParams["figure.figsize"][0]
    fig, ax = new_axes(figsize=(w, 0.9 + 0.2 * len(order)))
    sns.heatmap(grid, ax=ax, vmin=-1, vmax=1, center=0, cmap="RdBu_r", annot=True, fmt=".2f",
                annot_kws={"fontsize": "x-small"}, xticklabels=cols, yticklabels=order,
                cbar_kws={"label": "rank correlation with the gap"})
    for t in ax.texts:  # ".85", "−.74": narrow cells keep their numbers apart
        t.set_text(t.get_text().replace("0.", ".").replace("-", "−"))
    ax.tick_params(axis="y", labelsize="x-small")
    ax.tick_params(axis="x", labelsize="x-small", labelrotation=35)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.grid(False)
    _header(fig, ax, opts.get("title"), f"gap: {'test − train loss' if r.gap == 'gap' else r.gap}; "
            f"n = {max(r.n.values())} runs")
    text = r.markdown(f"experiment `{res.get('name', '?')}`", left_out_note(table))
    md = atomic_write(out / "correlation.md", lambda q: q.write_text(text))
    return [save(fig, out / "correlation.png"), md]


@styled
def breakeven(res: dict, out: Path) -> Path:
    """Peak λ_max along training against η/B, in ``breakeven.png`` (Jastrzębski et al. 2020).

    One series per learning rate (batch sizes along it), mean ± 95 % CI over seeds of each run's largest
    tracked λ_max (:func:`sharpness.reporting.peak_rows`); both axes logarithmic. The break-even claim: a
    larger η or a smaller B (a larger η/B) gives a lower peak.
    """
    rows = peak_rows(res)
    if not rows:
        raise ValueError("no run has tracked λ_max (track_every)")
    lrs = sorted({r["lr"] for r in rows})
    fig, ax = new_axes()
    colors = _palette(len(lrs))
    for i, lr in enumerate(lrs):
        mine = sorted((r for r in rows if r["lr"] == lr), key=lambda r: r["lr_over_b"])
        _errorbar(ax, [r["lr_over_b"] for r in mine], [r["peak"] for r in mine], color=colors[i], label=f"η = {_g(lr)}")
        for r in mine:
            ax.annotate(f"B={r['batch']}", (r["lr_over_b"], r["peak"]["mean"]), fontsize=5, xytext=(2, 2),
                        textcoords="offset points", color=colors[i])
    _log_axis(ax, "x")
    _log_axis(ax, "y")
    ax.set_xlabel("η / B")
    ax.set_ylabel("peak λ_max along training")
    _header(fig, ax, _options(res, "breakeven").get("title"), seeds_note(r["peak"]["n"] for r in rows))
    ax.legend(frameon=False)
    return save(fig, out / "breakeven.png")


FIGURES = {"correlation": correlation, "table": table, "curves": curves, "parametric": parametric, "esd": esd, "surface": surface,
           "sharpness_vs_loss": sharpness_vs_loss, "batch_sweep": batch_sweep, "cost": cost, "gap": gap,
           "gap_scatter": gap_scatter, "warm_start": warm_start, "breakeven": breakeven}


def _renamed(label: str, labels: dict[str, str]) -> str:
    """``label`` with each OLD of ``labels`` that is one or more whole '-'-separated parts of it replaced."""
    for old, new in labels.items():
        label = re.sub(rf"(?<![^-]){re.escape(old)}(?![^-])", lambda _m, new=new: new, label)
    return label


def rename_labels(res: dict, labels: dict[str, str]) -> dict:
    """A copy of results with run and variant labels renamed for display (``{"LB": "large batch"}``).

    An OLD renames every run label it is a whole '-'-separated part of (``LB`` in ``LB-seed0``, but not
    ``LB2``), the variants of that name, the interpolation pairs and the ``[figures]`` groups naming them.

    Raises:
        SharpnessError: an OLD that names no run label or part of one, or two runs renamed to one label.
    """
    if not labels:
        return res
    runs = list(res["runs"])
    for old, new in labels.items():
        if not isinstance(old, str) or not old or not isinstance(new, str) or not new:
            raise SharpnessError(f"label {old!r}={new!r}: both names must be non-empty text")
        if all(_renamed(lb, {old: new}) == lb for lb in runs):
            raise SharpnessError(f"label {old!r} is no run label or part of one; runs: {', '.join(runs)}")
    res = json.loads(json.dumps(res))  # a deep copy: results.json is never changed
    new_runs = {_renamed(lb, labels): r for lb, r in res["runs"].items()}
    if len(new_runs) != len(runs):
        raise SharpnessError(f"labels {labels}: two runs would have the same label")
    res["runs"] = new_runs
    for v in res["spec"].get("variants", []) or []:
        if isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"]:
            v["name"] = _renamed(v["name"], labels)
    pairs = {}
    for key, arr in (res.get("pairs") or {}).items():
        a, b, kind = _pair(key)
        pairs[f"{_renamed(a, labels)}→{_renamed(b, labels)}" + ("" if kind == "linear" else f" ({kind})")] = arr
    res["pairs"] = pairs
    for spec in res["spec"].get("figures", {}).get("curves", []) or []:
        if isinstance(spec, dict):
            if isinstance(spec.get("groups"), list):
                spec["groups"] = [_renamed(g, labels) if isinstance(g, str) else g for g in spec["groups"]]
            if isinstance(spec.get("styles"), dict):
                spec["styles"] = {_renamed(g, labels): v for g, v in spec["styles"].items()}
    return res


_TITLE = {"title": (str, {})}
_SHARPNESS = {"sharpness": (str, {"check": (lambda k: "_" in k, "a key like 'eps0.001_full'")}), **_TITLE}
# the options each kind reads from [figures] KIND = {...}: (type, require's rules)
_KIND_OPTIONS: dict[str, dict] = {
    "esd": _TITLE, "surface": _TITLE, "gap": _TITLE, "breakeven": _TITLE,
    "sharpness_vs_loss": _SHARPNESS, "batch_sweep": _SHARPNESS, "warm_start": _SHARPNESS,
    "gap_scatter": {"best": (int, {"ge": 1, "le": 1000}), **_TITLE},
    "cost": {"target": (float, {"gt": 0}), **_TITLE},
    "correlation": {"gap": (str, {"choices": ("gap", "gap_acc")}), "n_boot": (int, {"ge": 10, "le": 10**6}), **_TITLE},
}
_CURVE_KEYS = {"file", "title", "groups", "styles", "panels"}
_PANEL_KEYS = {"x", "y", "xscale", "yscale", "ylim", "source", "stability"}


def check_figures(figures, where: str = "figures") -> dict:
    """An experiment's ``[figures]`` table checked for types, values and ranges before anything is drawn.

    ``kinds`` names known figures; each kind's options are the ones it reads, of their types and ranges
    (``gap_scatter.best`` ≥ 1, ``cost.target`` > 0, ...); every ``[[figures.curves]]`` entry has a ``file``
    that is one plain file name (no ``..``, ``/`` or absolute path: figures stay in the output folder) with
    a .png/.pdf/.svg suffix, and ``panels`` of ``x``/``y`` keys. Also for :mod:`sharpness.experiments`,
    so a TOML is refused before any training.

    Raises:
        SharpnessError: one line naming the option.
    """
    if figures is None:
        return {}
    if not isinstance(figures, dict):
        raise SharpnessError(f"{where} must be a table (got {type(figures).__name__})")
    extra = sorted(printable(k, 40) for k in set(figures) - {"kinds", "curves", *_KIND_OPTIONS})
    if extra:
        raise SharpnessError(f"{where}: unknown key(s) {', '.join(extra)}; known: kinds, curves, "
                             f"{', '.join(_KIND_OPTIONS)}")
    kinds = figures.get("kinds", ["table"])
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise SharpnessError(f"{where}.kinds must be a list of figure names (got {_short(kinds, 80)}); "
                             f"known: {', '.join(FIGURES)}")
    unknown = [printable(k, 40) for k in kinds if k not in FIGURES]
    if unknown:
        raise SharpnessError(f"{where}.kinds: unknown figure kind(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    for kind, options in _KIND_OPTIONS.items():
        opts = figures.get(kind)
        if opts is None:
            continue
        if not isinstance(opts, dict):
            raise SharpnessError(f"{where}.{kind} must be a table of options (got {type(opts).__name__})")
        extra = sorted(printable(k, 40) for k in set(opts) - set(options))
        if extra:
            raise SharpnessError(f"{where}.{kind}: unknown option(s) {', '.join(extra)}; known: {', '.join(options)}")
        for key, (typ, rules) in options.items():
            if opts.get(key) is not None:
                require(f"{where}.{kind}.{key}", opts[key], typ, **rules)
    curves = figures.get("curves")
    if curves is not None:
        if not isinstance(curves, list) or not all(isinstance(c, dict) for c in curves):
            raise SharpnessError(f"{where}.curves must be a list of tables (got {_short(curves, 80)})")
        files = []
        for i, c in enumerate(curves):
            w = f"{where}.curves[{i}]"
            extra = sorted(printable(k, 40) for k in set(c) - _CURVE_KEYS)
            if extra:
                raise SharpnessError(f"{w}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(_CURVE_KEYS))}")
            if "file" not in c or "panels" not in c:
                raise SharpnessError(f"{w}: needs a file and panels")
            check_path(confined(".", c["file"], f"{w}.file"))
            files.append(c["file"])
            if c.get("title") is not None:
                require(f"{w}.title", c["title"], str)
            if c.get("groups") is not None:
                require(f"{w}.groups", c["groups"], list, item=str)
            styles = c.get("styles")
            if styles is not None and (not isinstance(styles, dict) or not all(isinstance(v, str) for v in styles.values())):
                raise SharpnessError(f"{w}.styles must be a table of group → line style (got {_short(styles, 80)})")
            panels = c["panels"]
            if not isinstance(panels, list) or not panels or not all(isinstance(p, dict) for p in panels) \
                    or len(panels) > 16:
                raise SharpnessError(f"{w}.panels must be a list of 1 to 16 tables (got {_short(panels, 80)})")
            for j, panel in enumerate(panels):
                pw = f"{w}.panels[{j}]"
                extra = sorted(printable(k, 40) for k in set(panel) - _PANEL_KEYS)
                if extra:
                    raise SharpnessError(f"{pw}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(_PANEL_KEYS))}")
                for key in ("x", "y"):
                    require(f"{pw}.{key}", panel.get(key), str)
                for key in ("xscale", "yscale"):
                    require(f"{pw}.{key}", panel.get(key), str, optional=True, choices=("linear", "log"))
                require(f"{pw}.source", panel.get("source"), str, optional=True, choices=("history", "trace", "tracked"))
                require(f"{pw}.stability", panel.get("stability"), bool, optional=True)
                ylim = panel.get("ylim")
                if ylim is not None and not (isinstance(ylim, list) and len(ylim) == 2 and all(is_number(v, finite=True) for v in ylim)):
                    raise SharpnessError(f"{pw}.ylim must be [low, high], two finite numbers (got {_short(ylim, 80)})")
        dup = sorted({f for f in files if files.count(f) > 1})
        if dup:
            raise SharpnessError(f"{where}.curves: two figures write the same file ({', '.join(dup)})")
    return figures


def draw(results_path: str | Path, out: str | Path | None = None, labels: dict[str, str] | None = None) -> list[Path]:
    """Draw every figure the experiment's ``[figures] kinds`` lists, from ``results.json`` alone.

    Args:
        results_path: the experiment's ``results.json``.
        out: the folder the figures go to (default: the results file's own folder).
        labels: display names of run/variant labels, ``{OLD: NEW}`` (see :func:`rename_labels`).
    """
    results_path = Path(results_path)
    res = read_results(results_path)  # a regular file only; parts of the wrong type refused
    try:
        check_figures(res["spec"].get("figures"), "figures")
    except SharpnessError as e:
        raise SharpnessError(f"{results_path}: {e}") from None
    res["spec"].setdefault("figures", {})
    if res["spec"]["figures"] is None:
        res["spec"]["figures"] = {}
    out = Path(out) if out is not None else results_path.parent
    try:
        res = rename_labels(res, labels or {})
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        if isinstance(e, SharpnessError):
            raise
        raise SharpnessError(f"{results_path}: cannot rename labels ({printable(' '.join(str(e).split()), 200)})") from None
    res = shown(res)  # every string from the file escaped before it reaches a figure or a table
    kinds = res["spec"]["figures"].get("kinds", ["table"])
    made: list[Path] = []
    for kind in kinds:
        try:
            r = FIGURES[kind](res, out)
        except SharpnessError as e:
            raise SharpnessError(f"{results_path}: cannot draw '{kind}' ({printable(e, 300)})") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, OverflowError,
                RecursionError) as e:
            # a results file of the wrong shape: say which figure and what was missing, in one line
            raise SharpnessError(f"{results_path}: cannot draw '{kind}' ({type(e).__name__}: "
                                 f"{printable(' '.join(str(e).split()), 200)})") from None
        made.extend(r if isinstance(r, list) else [r])
    return made
