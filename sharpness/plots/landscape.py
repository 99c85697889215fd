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


def _surface_arrays(surf: Surface | dict) -> tuple[list, np.ndarray, np.ndarray | None, str | None, str | None]:
    """(axes, loss, accuracy or None, direction name, BN mode) of a Surface or of its arrays.

    The arrays are those ``analyze`` writes (``axis0``, ``axis1``, ``loss``, ``acc``).
    """
    if isinstance(surf, Surface):
        return (list(surf.coords), np.asarray(surf.loss), _defined(surf.acc),
                surf.directions.normalization or surf.directions.kind, surf.bn)
    coords = [np.asarray(surf[k]) for k in sorted(surf) if k.startswith("axis")]
    return coords, np.asarray(surf["loss"]), _defined(surf.get("acc")), None, None


def _defined(acc) -> np.ndarray | None:
    """Accuracy, or None where it is undefined (regression losses store NaN)."""
    if acc is None:
        return None
    acc = np.asarray(acc, dtype=float)
    return None if np.isnan(acc).all() else acc


def _interp_arrays(interp: Interpolation | dict) -> tuple[np.ndarray, dict, dict, str]:
    """(alphas, loss per data set, accuracy per data set, path) of an Interpolation or of its arrays.

    The arrays are ``alphas`` and ``<set>_loss`` / ``<set>_acc`` as ``analyze`` and results.json hold them.
    """
    if isinstance(interp, Interpolation):
        return interp.alphas, dict(interp.loss), dict(interp.acc), interp.path
    names = [k[:-5] for k in interp if k.endswith("_loss")]
    return (np.asarray(interp["alphas"]), {n: np.asarray(interp[f"{n}_loss"]) for n in names},
            {n: np.asarray(interp[f"{n}_acc"]) for n in names if f"{n}_acc" in interp}, interp.get("path", "linear"))


def plot_parametric(interp: Interpolation | dict, *, path: str | Path | None = None, labels=("SB", "LB"),
                    title: str | None = None, loss_label: str = "cross-entropy"):
    """Keskar et al. 2017, Fig. 3: the loss (left axis) and accuracy (right axis) along θ(α).

    Train is solid, test dashed; α = 0 is ``labels[0]``'s solution, α = 1 ``labels[1]``'s. ``interp`` is
    an :class:`Interpolation` or its arrays (``alphas``, ``train_loss``, ``train_acc``, ...). Accuracy is
    drawn only where it is defined (classification).
    """
    alphas, losses, accs, kind = _interp_arrays(interp)
    fig, ax = new_axes(figsize=(6.4, 4.2))
    accs = {n: a for n, a in accs.items() if _defined(a) is not None}
    ax2 = ax.twinx() if accs else None
    styles = {"train": "-", "test": "--"}
    for name in losses:
        ls = styles.get(name, ":")
        ax.plot(alphas, losses[name], ls, color="tab:blue", lw=1.8, label=f"{name} loss")
        if name in accs:
            ax2.plot(alphas, 100 * accs[name], ls, color="tab:red", lw=1.5, label=f"{name} accuracy")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\alpha$" + ("  (curved path)" if kind == "sin" else ""))
    ax.set_ylabel(f"{loss_label} (log)", color="tab:blue")
    if ax2 is not None:
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        ax2.set_ylim(0, 100)
    for a in (0, 1):
        ax.axvline(a, color="0.6", lw=0.8)
    for a, text in zip((0, 1), labels):
        ax.text(a, 0.02, f" {text}", transform=ax.get_xaxis_transform(), fontsize=9, color="0.3")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels() if ax2 is not None else ([], [])
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4,
              frameon=False)
    bn = f", BN: {interp.bn}" if isinstance(interp, Interpolation) else ""
    ax.set_title(title or f"Parametric plot ({labels[0]} → {labels[1]}){bn}", fontsize=10)
    save(fig, path)
    return ax


def plot_line(surf: Surface | dict, *, ax=None, path: str | Path | None = None, label: str | None = None,
              title: str | None = None, loss_label: str = "loss"):
    """A 1D landscape: the loss (log scale) and, where defined, accuracy against the step along the direction.

    ``surf`` is a :class:`Surface` or its arrays (``axis0``, ``loss``, ``acc``).
    """
    coords, loss, acc, name, bn = _surface_arrays(surf)
    fig, ax = new_axes(ax)
    a = coords[0]
    ax.semilogy(a, loss, color="tab:blue", lw=1.8, label=label or "loss")
    ax.set_xlabel("step along direction")
    ax.set_ylabel(f"{loss_label} (log)", color="tab:blue")
    if acc is not None:
        ax2 = ax.twinx()
        ax2.plot(a, 100 * acc, color="tab:red", lw=1.2, ls="--", label="accuracy")
        ax2.set_ylabel("accuracy (%)", color="tab:red")
        ax2.set_ylim(0, 100)
    ax.set_title(title or f"1D landscape ({name or 'random'} directions)" + (f", BN: {bn}" if bn else ""),
                 fontsize=10)
    save(fig, path)
    return ax


def _grid(surf: Surface | dict):
    coords, loss, _, _, _ = _surface_arrays(surf)
    if loss.ndim != 2:
        raise ValueError("a 2D surface is needed")
    A, B = np.meshgrid(coords[0], coords[1], indexing="ij")
    return A, B, loss


def plot_surface(surf: Surface | dict, *, kind: str = "contour", path: str | Path | None = None,
                 title: str | None = None, levels: int = 30, log: bool = True, loss_label: str = "loss"):
    """A 2D landscape as ``"contour"``, ``"filled"`` (filled contours), ``"heatmap"`` or ``"3d"``.

    ``surf`` is a :class:`Surface` or its arrays (``axis0``, ``axis1``, ``loss``). Levels are spaced in
    log-loss by default, as loss surfaces span orders of magnitude.
    """
    A, B, L = _grid(surf)
    Z = np.log10(L) if log else L
    zlabel = f"log10 {loss_label}" if log else loss_label
    _, _, _, name, bn = _surface_arrays(surf)
    title = title or f"Loss surface ({name or 'random'} directions)" + (f", BN: {bn}" if bn else "")
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


def plot_trajectory(surf: Surface | dict, coords, *, path: str | Path | None = None, title: str | None = None,
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
