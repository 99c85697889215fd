"""Figures and tables of an experiment, drawn from its ``results.json`` only (never trains or computes).

Runs that differ only in their seed form a group; tables and curves show the mean ± std over seeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..io import atomic_write
from ..landscape.directions import Directions
from ..landscape.grid import Interpolation, Surface
from .landscape import plot_parametric, plot_surface
from .spectrum import plot_spectral_density
from .style import new_axes, save

__all__ = ["draw", "FIGURES"]


def _groups(runs: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label in runs:
        out.setdefault(re.sub(r"-?seed\d+", "", label) or label, []).append(label)
    return out


def _mean_std(values: list[float]) -> str:
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return "—"
    return f"{v.mean():.4g}" if len(v) == 1 else f"{v.mean():.4g} ± {v.std(ddof=1):.2g}"


TABLE_COLUMNS = [("train acc %", ("loss", "train_acc"), 100), ("test acc %", ("loss", "test_acc"), 100),
                 ("train loss", ("loss", "train_loss"), 1), ("λ_max", ("eigenvalues", "lambda_max"), 1),
                 ("φ ε=1e-3 full", ("eps_sharpness", "eps0.001_full"), 1),
                 ("φ ε=5e-4 full", ("eps_sharpness", "eps0.0005_full"), 1),
                 ("φ ε=1e-3 p=100", ("eps_sharpness", "eps0.001_p100"), 1),
                 ("φ ε=5e-4 p=100", ("eps_sharpness", "eps0.0005_p100"), 1),
                 ("B_simple", ("noise_scale", "b_simple"), 1)]


def table(res: dict, out: Path) -> Path:
    """Markdown table, one row per group (mean ± std over seeds), of every measure the runs have."""
    runs, groups = res["runs"], _groups(res["runs"])
    cols = [c for c in TABLE_COLUMNS if any(r.get("final", {}).get(c[1][0], {}).get(c[1][1]) is not None
                                            for r in runs.values())]
    lines = ["| run | seeds | updates | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for g, labels in groups.items():
        cells = []
        for _, (m, k), scale in cols:
            vals = [runs[lb].get("final", {}).get(m, {}).get(k) for lb in labels]
            cells.append(_mean_std([v * scale for v in vals if v is not None]))
        steps = runs[labels[0]]["history"][-1]["step"] if runs[labels[0]]["history"] else 0
        lines.append(f"| {g} | {len(labels)} | {steps} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    return atomic_write(out / "table.md", lambda p: p.write_text(text))


def curves(res: dict, out: Path) -> Path:
    """Test loss and test accuracy against epochs, per group (mean over seeds, band = ±1 std)."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    for g, labels in _groups(res["runs"]).items():
        hs = [res["runs"][lb]["history"] for lb in labels]
        n = min(len(h) for h in hs)
        ep = np.arange(1, n + 1)
        for ax, key in ((a1, "test_loss"), (a2, "test_acc")):
            v = np.array([[e[key] for e in h[:n]] for h in hs])
            m = v.mean(0)
            line, = ax.plot(ep, m, label=g)
            if len(hs) > 1:
                ax.fill_between(ep, m - v.std(0), m + v.std(0), color=line.get_color(), alpha=0.2)
    a1.set_ylabel("test (validation) loss")
    a2.set_ylabel("test accuracy")
    for ax in (a1, a2):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    a2.legend(fontsize=8)
    fig.suptitle(f"{res['name']}: validation curves")
    return save(fig, out / "curves.png")


def parametric(res: dict, out: Path) -> list[Path]:
    """Keskar Fig. 3 for every pair in the results."""
    paths = []
    for key, arr in res.get("pairs", {}).items():
        a, b = key.split("→")
        interp = Interpolation(alphas=np.array(arr["alphas"]),
                               loss={"train": np.array(arr["train_loss"]), "test": np.array(arr["test_loss"])},
                               acc={"train": np.array(arr["train_acc"]), "test": np.array(arr["test_acc"])},
                               path="linear", bn="interpolate", n_evals=0, seconds=0)
        p = out / f"parametric_{a}_{b}.png"
        plot_parametric(interp, path=p, labels=(a, b), title=f"Parametric plot: {a} (α=0) → {b} (α=1)")
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
            s = Surface(coords=[np.array(arr["landscape2d/axis0"]), np.array(arr["landscape2d/axis1"])],
                        loss=np.array(arr["landscape2d/loss"]), acc=np.array(arr["landscape2d/acc"]),
                        directions=Directions(np.zeros(1), "random", normalization="filter"), bn="frozen",
                        center_loss=float("nan"), center_acc=float("nan"), n_evals=0, seconds=0)
            p = out / f"surface_{label}.png"
            plot_surface(s, kind="contour", path=p, title=f"Loss surface (filter-normalized): {label}")
            paths.append(p)
    return paths


def sharpness_vs_loss(res: dict, out: Path) -> Path:
    """Keskar Fig. 6: sharpness against training cross-entropy along training, per group."""
    fig, ax = new_axes(figsize=(5.6, 4))
    for g, labels in _groups(res["runs"]).items():
        for i, lb in enumerate(labels):
            along = res["runs"][lb].get("along", [])
            if along:
                x = [e["train_loss"] for e in along]
                y = [e.get("eps_sharpness", {}).get("eps0.001_full") for e in along]
                ax.plot(x, y, "o-", ms=3, color=f"C{list(_groups(res['runs'])).index(g)}", alpha=0.8,
                        label=g if i == 0 else None)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("training cross-entropy (log, decreasing →)")
    ax.set_ylabel("ε-sharpness φ (ε = 1e-3, full space)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{res['name']}: sharpness along training")
    return save(fig, out / "sharpness_vs_loss.png")


FIGURES = {"table": table, "curves": curves, "parametric": parametric, "esd": esd, "surface": surface,
           "sharpness_vs_loss": sharpness_vs_loss}


def draw(results_path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Draw every figure the experiment's ``[figures] kinds`` lists, from ``results.json`` alone."""
    results_path = Path(results_path)
    res = json.loads(results_path.read_text())
    out = Path(out) if out is not None else results_path.parent
    kinds = res["spec"].get("figures", {}).get("kinds", ["table"])
    made: list[Path] = []
    for kind in kinds:
        r = FIGURES[kind](res, out)
        made.extend(r if isinstance(r, list) else [r])
    return made
