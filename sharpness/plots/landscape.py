"""Landscape figures.

Keskar's parametric plot, 1D curves, 2D contours / heat maps / 3D surfaces, and Li et al.'s
trajectory over contours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..landscape.grid import Interpolation, Surface
from .style import new_axes, plt, save

__all__ = ["plot_parametric", "plot_line", "plot_surface", "plot_trajectory"]


def plot_parametric(interp: Interpolation, *, path: str | Path | None = None, labels=("SB", "LB"),
                    title: str | None = None):
    """Keskar et al. 2017, Fig. 3: cross-entropy (left axis) and accuracy (right axis) along θ(α).

    Train is solid, test dashed; α = 0 is ``labels[0]``'s solution, α = 1 ``labels[1]``'s.
    """
    fig, ax = new_axes(figsize=(6.4, 4.2))
    ax2 = ax.twinx()
    styles = {"train": "-", "test": "--"}
    for name in interp.loss:
        ls = styles.get(name, ":")
        ax.plot(interp.alphas, interp.loss[name], ls, color="tab:blue", lw=1.8, label=f"{name} loss")
        ax2.plot(interp.alphas, 100 * np.asarray(interp.acc[name]), ls, color="tab:red", lw=1.5,
                 label=f"{name} accuracy")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\alpha$" + ("  (curved path)" if interp.path == "sin" else ""))
    ax.set_ylabel("cross-entropy (log)", color="tab:blue")
    ax2.set_ylabel("accuracy (%)", color="tab:red")
    ax2.set_ylim(0, 100)
    for a in (0, 1):
        ax.axvline(a, color="0.6", lw=0.8)
    for a, text in zip((0, 1), labels):
        ax.text(a, 0.02, f" {text}", transform=ax.get_xaxis_transform(), fontsize=9, color="0.3")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4,
              frameon=False)
    ax.set_title(title or f"Parametric plot ({labels[0]} → {labels[1]}), BN: {interp.bn}", fontsize=10)
    save(fig, path)
    return ax


def plot_line(surf: Surface, *, ax=None, path: str | Path | None = None, label: str | None = None,
              title: str | None = None):
    """A 1D landscape: loss (log scale) and accuracy against the step along the direction."""
    fig, ax = new_axes(ax)
    a = surf.coords[0]
    ax.semilogy(a, surf.loss, color="tab:blue", lw=1.8, label=label or "loss")
    ax.set_xlabel("step along direction")
    ax.set_ylabel("loss (log)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(a, 100 * surf.acc, color="tab:red", lw=1.2, ls="--", label="accuracy")
    ax2.set_ylabel("accuracy (%)", color="tab:red")
    ax2.set_ylim(0, 100)
    ax.set_title(title or f"1D landscape ({surf.directions.normalization or surf.directions.kind}), "
                 f"BN: {surf.bn}", fontsize=10)
    save(fig, path)
    return ax


def _grid(surf: Surface):
    if surf.loss.ndim != 2:
        raise ValueError("a 2D surface is needed")
    A, B = np.meshgrid(surf.coords[0], surf.coords[1], indexing="ij")
    return A, B, surf.loss


def plot_surface(surf: Surface, *, kind: str = "contour", path: str | Path | None = None,
                 title: str | None = None, levels: int = 30, log: bool = True):
    """A 2D landscape as ``"contour"``, ``"filled"`` (filled contours), ``"heatmap"`` or ``"3d"``.

    Levels are spaced in log-loss by default, as loss surfaces span orders of magnitude.
    """
    A, B, L = _grid(surf)
    Z = np.log10(L) if log else L
    zlabel = "log10 loss" if log else "loss"
    name = surf.directions.normalization or surf.directions.kind
    title = title or f"Loss surface ({name} directions), BN: {surf.bn}"
    if kind == "3d":
        fig = plt.figure(figsize=(5.6, 4.4), layout="constrained")
        ax = fig.add_subplot(projection="3d")
        ax.plot_surface(A, B, Z, cmap="viridis", linewidth=0, antialiased=True, rcount=80, ccount=80)
        ax.set_xlabel(r"$\delta_1$")
        ax.set_ylabel(r"$\delta_2$")
        ax.set_zlabel(zlabel)
        ax.set_title(title, fontsize=10)
        save(fig, path)
        return ax
    fig, ax = new_axes(figsize=(5.0, 4.2))
    if kind == "contour":
        cs = ax.contour(A, B, Z, levels=levels, cmap="viridis", linewidths=0.9)
        ax.clabel(cs, cs.levels[::4], fontsize=7, fmt="%.2f")
    elif kind == "filled":
        cs = ax.contourf(A, B, Z, levels=levels, cmap="viridis")
    elif kind == "heatmap":
        cs = ax.pcolormesh(A, B, Z, cmap="viridis", shading="nearest")
    else:
        raise ValueError(f"kind must be 'contour', 'filled', 'heatmap' or '3d' (got {kind!r})")
    fig.colorbar(cs, ax=ax, label=zlabel)
    ax.plot([0], [0], "r*", ms=9, label="model")
    ax.set_xlabel(r"$\delta_1$")
    ax.set_ylabel(r"$\delta_2$")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=10)
    save(fig, path)
    return ax


def plot_trajectory(surf: Surface, coords, *, path: str | Path | None = None, title: str | None = None,
                    explained=None):
    """Li et al. 2018's trajectory plot: a training path projected on the PCA plane, over loss contours."""
    A, B, L = _grid(surf)
    coords = np.asarray(coords)
    fig, ax = new_axes(figsize=(5.0, 4.2))
    cs = ax.contour(A, B, np.log10(L), levels=25, cmap="viridis", linewidths=0.8)
    fig.colorbar(cs, ax=ax, label="log10 loss")
    ax.plot(coords[:, 0], coords[:, 1], "-o", color="tab:red", ms=3, lw=1.2, label="training path")
    ax.plot(coords[-1, 0], coords[-1, 1], "k*", ms=10, label="final")
    if explained is not None:
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f} % of variance)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f} % of variance)")
    ax.legend(fontsize=8)
    ax.set_title(title or "Training trajectory on the PCA plane", fontsize=10)
    save(fig, path)
    return ax
