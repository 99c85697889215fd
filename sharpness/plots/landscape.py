"""Landscape figures.

Keskar's parametric plot, 1D curves, 2D contours / heat maps / 3D surfaces, and Li et al.'s
trajectory over contours. Every function draws into ``ax`` when given (several calls can share one
axes, told apart by ``label``) or into a new figure at the style's column width, and returns the axes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..errors import SharpnessError
from ..landscape.grid import Interpolation, Surface
from .style import check_path, figure_title, new_axes, save, styled

__all__ = ["plot_parametric", "plot_line", "plot_surface", "plot_surfaces", "plot_trajectory"]

KINDS = ("contour", "filled", "heatmap", "3d")


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


def _set_title(ax, title: str | None, default: str | None, own: bool) -> None:
    """``title`` on ``ax``; None: ``default`` (None leaves the axes' title alone); "": no title.

    In a figure of its own, a :func:`~sharpness.plots.style.figure_options` title replaces both.
    """
    text = figure_title(title, default, own)
    if text is not None:
        ax.set_title(text)


def _twin(ax):
    """The right-hand axes of ``ax`` (accuracy), made once and reused by later calls on the same axes."""
    twin = getattr(ax, "_sharpness_twin", None)
    if twin is None:
        twin = ax._sharpness_twin = ax.twinx()
        twin.grid(False)  # one grid (the loss axis'), not two that disagree
        twin.spines["right"].set_visible(True)
    return twin


def _legend(ax, twin=None, *, own: bool) -> None:
    """One legend of the series on ``ax`` and its twin, replacing the one an earlier call drew.

    In a figure of its own, the legend goes below the axes (outside: it never covers a curve), and
    stays there when later calls add series; in the caller's axes, which may be one panel of many, in
    the corner that covers the least.
    """
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels() if twin is not None else ([], [])
    if not h1 + h2:
        return
    old = getattr(ax, "_sharpness_legend", None)
    below = own or (old is not None and old in ax.figure.legends)
    if old is not None:
        old.remove()
    if below:
        new = ax.figure.legend(h1 + h2, l1 + l2, loc="outside lower center", ncol=2)
    else:
        new = (twin or ax).legend(h1 + h2, l1 + l2, loc="best")
    ax._sharpness_legend = new


def _end_points(ax, labels) -> None:
    """Grey lines at α = 0 and 1, named on a top axis (above the data, never over it); once per axes."""
    if getattr(ax, "_sharpness_ends", False):
        return
    ax._sharpness_ends = True
    for a in (0, 1):
        ax.axvline(a, color="0.6", lw=0.8)
    top = ax.secondary_xaxis("top")
    top.set_xticks([0, 1], [str(t) for t in labels])
    top.tick_params(length=0, colors="0.3")
    top.spines[:].set_visible(False)


def _ink(color: str | None) -> str:
    """An axis label's colour: ``color``, or the style's label colour."""
    return color or matplotlib.rcParams["axes.labelcolor"]


def _bn(obj) -> str:
    bn = getattr(obj, "bn", None)
    return f", BN {bn}" if bn else ""


@styled
def plot_parametric(interp: Interpolation | dict, *, ax=None, figsize=None, path: str | Path | None = None,
                    labels=("SB", "LB"), title: str | None = None, label: str | None = None,
                    loss_label: str = "cross-entropy"):
    """Keskar et al. 2017, Fig. 3: the loss (left axis, log) and accuracy in % (right axis) along θ(α).

    Train is solid, test dashed; α = 0 is ``labels[0]``'s solution, α = 1 ``labels[1]``'s. Accuracy is
    drawn only where it is defined (classification).

    Args:
        interp: an :class:`Interpolation` or its arrays (``alphas``, ``train_loss``, ``train_acc``, ...).
        ax: axes to draw into (its figure stays open); default: a new figure.
        figsize: size of a new figure (default: the style's column width).
        path: write the figure here (.pdf, .svg or .png).
        labels: the names of the two end points.
        title: the axes title (None: a short default for a new figure; "": none).
        label: prefix of the series' legend labels, so several interpolations can share one axes.
        loss_label: the loss's name on the y axis.

    Returns:
        The (loss) axes.
    """
    check_path(path)
    alphas, losses, accs, kind = _interp_arrays(interp)
    accs = {n: a for n, a in accs.items() if _defined(a) is not None}
    own = ax is None
    fig, ax = new_axes(ax, figsize)
    twin = _twin(ax) if accs else None
    styles = {"train": "-", "test": "--"}
    prefix = f"{label} " if label else ""
    c_loss, c_acc = ("tab:blue", "tab:red") if not label else (None, None)
    for name in losses:
        ls = styles.get(name, ":")
        line, = ax.plot(alphas, losses[name], ls, color=c_loss, label=f"{prefix}{name} loss")
        c_loss = c_loss or line.get_color()
        if name in accs:
            twin.plot(alphas, 100 * accs[name], ls, color=c_acc or line.get_color(), alpha=0.8,
                      marker=None if c_acc else ".", label=f"{prefix}{name} accuracy")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\alpha$" + (" (curved path)" if kind == "sin" else ""))
    ax.set_ylabel(f"{loss_label} (log)", color=_ink(None if label else "tab:blue"))
    if twin is not None:
        twin.set_ylabel("accuracy (%)", color=_ink(None if label else "tab:red"))
        twin.set_ylim(0, 100)
    _end_points(ax, labels)
    _legend(ax, twin, own=own)
    _set_title(ax, title, f"Parametric plot{_bn(interp)}" if own else None, own)
    save(fig, path, close=own)
    return ax


@styled
def plot_line(surf: Surface | dict, *, ax=None, figsize=None, path: str | Path | None = None,
              label: str | None = None, title: str | None = None, loss_label: str = "loss"):
    """A 1D landscape: the loss (log) and, where defined, accuracy in % against the step along the direction.

    Args:
        surf: a :class:`Surface` or its arrays (``axis0``, ``loss``, ``acc``).
        ax: axes to draw into (its figure stays open); default: a new figure.
        figsize: size of a new figure (default: the style's column width).
        path: write the figure here (.pdf, .svg or .png).
        label: the loss curve's legend label (its accuracy: "``label`` accuracy"), so several lines can
            share one axes; each then takes the next colour, accuracy dashed in the same colour.
        title: the axes title (None: a short default for a new figure; "": none).
        loss_label: the loss's name on the y axis.

    Returns:
        The (loss) axes.
    """
    check_path(path)
    coords, loss, acc, name, bn = _surface_arrays(surf)
    own = ax is None
    fig, ax = new_axes(ax, figsize)
    a = coords[0]
    line, = ax.semilogy(a, loss, color=None if label else "tab:blue", label=label or "loss")
    ax.set_xlabel("step along direction")
    ax.set_ylabel(f"{loss_label} (log)", color=_ink(None if label else "tab:blue"))
    twin = None
    if acc is not None:
        twin = _twin(ax)
        twin.plot(a, 100 * acc, color=line.get_color() if label else "tab:red", ls="--",
                  label=f"{label} accuracy" if label else "accuracy")
        twin.set_ylabel("accuracy (%)", color=_ink(None if label else "tab:red"))
        twin.set_ylim(0, 100)
    if label:
        _legend(ax, twin, own=own)
    _set_title(ax, title, f"Loss along {f'a {name} direction' if name else 'a direction'}{', BN ' + bn if bn else ''}"
               if own else None, own)
    save(fig, path, close=own)
    return ax


def _grid(surf: Surface | dict):
    coords, loss, _, _, _ = _surface_arrays(surf)
    if loss.ndim != 2:
        raise SharpnessError(f"a 2D surface is needed (got loss of shape {loss.shape})")
    A, B = np.meshgrid(coords[0], coords[1], indexing="ij")
    return A, B, loss


def _scale(L: np.ndarray, log: bool, levels, vmin, vmax) -> tuple[Normalize, np.ndarray]:
    """(norm, levels) of a loss surface: log-spaced by default, as losses span orders of magnitude.

    ``levels`` an int (how many, between ``vmin`` and ``vmax`` or the data's range) or the levels
    themselves, in loss units like ``vmin`` and ``vmax``.
    """
    finite = L[np.isfinite(L) & ((L > 0) if log else True)]
    if finite.size == 0:
        raise SharpnessError("the surface has no finite loss to draw" + (" (> 0 on a log scale)" if log else ""))
    lo = float(finite.min()) if vmin is None else float(vmin)
    hi = float(finite.max()) if vmax is None else float(vmax)
    if log and lo <= 0:
        raise SharpnessError(f"vmin must be > 0 on a log colour scale (got {vmin!r})")
    if not hi > lo:
        hi = lo * 1.01 + 1e-12 if hi == lo else hi
        if not hi > lo:
            raise SharpnessError(f"vmax must be above vmin (got vmin={vmin!r}, vmax={vmax!r})")
    norm = LogNorm(lo, hi) if log else Normalize(lo, hi)
    if levels is None or isinstance(levels, (int, np.integer)):
        n = 20 if levels is None else int(levels)
        if n < 2:
            raise SharpnessError(f"levels must be at least 2 (got {levels!r})")
        levels = np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)
    levels = np.asarray(levels, dtype=float)
    if levels.ndim != 1 or levels.size < 2 or np.any(np.diff(levels) <= 0):
        raise SharpnessError(f"levels must be an int ≥ 2 or increasing values (got {levels.tolist()!r})")
    return norm, levels


def _extend(L: np.ndarray, norm: Normalize) -> str:
    """Which ends of the colour bar are clipped by vmin/vmax."""
    low, high = np.nanmin(L) < norm.vmin, np.nanmax(L) > norm.vmax
    return {(False, False): "neither", (True, False): "min", (False, True): "max"}.get((low, high), "both")


def _loss_map(ax, A, B, L, kind: str, norm: Normalize, levels: np.ndarray):
    """Draw the loss on the plane as ``kind``; the mappable for a colour bar."""
    if kind == "contour":
        cs = ax.contour(A, B, L, levels=levels, norm=norm, cmap="viridis", linewidths=0.7)
        # a few inline labels; on a log scale, e.g. 0.031 and 1.2
        cs.clabel(cs.levels[::max(1, len(cs.levels) // 4)], fmt=lambda v: f"{v:.2g}", inline_spacing=2)
        return cs
    if kind == "filled":
        return ax.contourf(A, B, L, levels=levels, norm=norm, cmap="viridis", extend=_extend(L, norm))
    return ax.pcolormesh(A, B, L, norm=norm, cmap="viridis", shading="nearest", rasterized=True)


@styled
def plot_surface(surf: Surface | dict, *, kind: str = "contour", ax=None, figsize=None,
                 path: str | Path | None = None, title: str | None = None, label: str | None = None,
                 loss_label: str = "cross-entropy", levels=None, vmin: float | None = None,
                 vmax: float | None = None, colorbar: bool = True, log: bool = True):
    """A 2D landscape as ``"contour"``, ``"filled"`` (filled contours), ``"heatmap"`` or ``"3d"``.

    Colours follow the loss on a log scale by default (loss surfaces span orders of magnitude); give
    two surfaces the same ``vmin``/``vmax`` (and ``levels``) to draw them on one colour scale.

    Args:
        surf: a :class:`Surface` or its arrays (``axis0``, ``axis1``, ``loss``).
        kind: ``"contour"``, ``"filled"``, ``"heatmap"`` or ``"3d"``.
        ax: axes to draw into (a 3D axes for ``"3d"``; its figure stays open); default: a new figure.
        figsize: size of a new figure (default: the style's column width).
        path: write the figure here (.pdf, .svg or .png); heat maps and 3D surfaces are rasterized
            inside an otherwise vector file.
        title: the axes title (None: a short default for a new figure; "": none).
        label: the legend label of the centre (the model), marked ★; without it, no legend.
        loss_label: the loss's name on the colour bar.
        levels: the number of contour levels (default 20), or the levels, in loss units.
        vmin: the low end of the colour scale, in loss units (default: the surface's minimum).
        vmax: the high end of the colour scale (default: the surface's maximum).
        colorbar: draw a colour bar.
        log: colour the loss on a log scale.

    Returns:
        The axes.

    Raises:
        SharpnessError: an unknown kind, a 2D axes for ``"3d"``, bad levels or limits, a 1D surface.
    """
    check_path(path)
    if kind not in KINDS:
        raise SharpnessError(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    if kind == "3d" and ax is not None and getattr(ax, "name", None) != "3d":
        raise SharpnessError("kind='3d' needs a 3D axes: make it with fig.add_subplot(projection='3d')")
    A, B, L = _grid(surf)
    norm, levels = _scale(L, log, levels, vmin, vmax)
    _, _, _, name, bn = _surface_arrays(surf)
    own = ax is None
    default = f"Loss surface{f' ({name} directions)' if name else ''}{', BN ' + bn if bn else ''}" if own else None
    cbar_label = f"{loss_label} (log scale)" if log else loss_label
    if kind == "3d":
        fig, ax = _surface_3d(ax, figsize, A, B, L, norm, log, loss_label)
        if label:
            i, j = np.unravel_index(np.argmin(A ** 2 + B ** 2), A.shape)
            z0 = np.log10(L[i, j]) if log else L[i, j]
            ax.plot([A[i, j]], [B[i, j]], [z0], "*", color="tab:red", label=label, zorder=10)
            ax.legend(loc="upper left")
    else:
        fig, ax = new_axes(ax, figsize)
        _loss_map(ax, A, B, L, kind, norm, levels)
        ax.plot([0], [0], "*", color="tab:red", label=label or "_model")
        ax.set_xlabel(r"$\delta_1$")
        ax.set_ylabel(r"$\delta_2$")
        ax.set_aspect("equal")
        ax.grid(False)  # contours are the grid
        if label:
            ax.legend(loc="upper right")
    if colorbar:
        _colorbar(fig, ax, norm, cbar_label, extend=_extend(L, norm), horizontal=kind == "3d")
    _set_title(ax, title, default, own)
    save(fig, path, close=own)
    return ax


def _colorbar(fig, ax, norm: Normalize, label: str, *, extend: str = "neither", horizontal: bool = False):
    """A continuous colour bar of ``norm`` beside ``ax`` (below it for 3D), as tall as the drawn axes.

    Beside an equal-aspect plot the bar is an inset of the axes, so it follows the plot's box rather
    than the taller figure cell.
    """
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis")
    if horizontal:
        bar = fig.colorbar(mappable, ax=ax, label=label, orientation="horizontal", shrink=0.7, pad=0.02,
                           extend=extend)
    elif ax.get_aspect() != 1.0:
        bar = fig.colorbar(mappable, ax=ax, label=label, extend=extend)
    else:
        bar = fig.colorbar(mappable, cax=ax.inset_axes([1.04, 0.0, 0.05, 1.0]), label=label, extend=extend)
    bar.ax.grid(False)
    if isinstance(norm, LogNorm):  # plain numbers (0.2, 0.5, 1, 2) rather than 2×10⁻¹, and not too many
        decades = np.log10(norm.vmax / norm.vmin)
        axis = bar.ax.xaxis if horizontal else bar.ax.yaxis
        subs = (1.0,) if decades > (2 if horizontal else 4) else (1.0, 2.0, 5.0) if decades > 0.7 else \
            (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
        axis.set_major_locator(LogLocator(subs=subs))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        axis.set_minor_formatter(NullFormatter())
    return bar


def _surface_3d(ax, figsize, A, B, L, norm: Normalize, log: bool, loss_label: str):
    """(fig, ax): a rasterized 3D surface of the loss, coloured by ``norm``.

    On a log scale the height is log10 of the loss (mplot3d has no log z axis).
    """
    if ax is None:
        w, h = matplotlib.rcParams["figure.figsize"]
        fig, ax = new_axes(None, figsize or (w, max(h, 0.85 * w)), subplot_kw={"projection": "3d"})
    else:
        fig = ax.figure
    Z = np.log10(np.clip(L, norm.vmin * 1e-3, None)) if log else L
    colors = matplotlib.colormaps["viridis"](norm(L))
    stride = max(1, int(np.ceil(max(L.shape) / 60)))
    ax.plot_surface(A, B, Z, facecolors=colors, linewidth=0, antialiased=False, rstride=stride, cstride=stride,
                    shade=False, rasterized=True)
    ax.set_xlabel(r"$\delta_1$", labelpad=-4)
    ax.set_ylabel(r"$\delta_2$", labelpad=-4)
    ax.set_zlabel(f"log10 {loss_label}" if log else loss_label, labelpad=-2)
    ax.tick_params(pad=-2)
    return fig, ax


@styled
def plot_trajectory(surf: Surface | dict, coords, *, ax=None, figsize=None, path: str | Path | None = None,
                    title: str | None = None, label: str | None = None, explained=None, loss_label: str = "loss",
                    levels=None, vmin: float | None = None, vmax: float | None = None, colorbar: bool = True):
    """Li et al. 2018's trajectory plot: a training path projected on the PCA plane, over loss contours.

    Args:
        surf: the loss on the PCA plane, a :class:`Surface` or its arrays (``axis0``, ``axis1``, ``loss``).
        coords: (steps × 2) coordinates of the path on the plane; the last is the final model.
        ax: axes to draw into (its figure stays open); default: a new figure.
        figsize: size of a new figure (default: the style's column width).
        path: write the figure here (.pdf, .svg or .png).
        title: the axes title (None: a short default for a new figure; "": none).
        label: the path's legend label (default "training path").
        explained: the fraction of variance each principal component explains (axis labels say it in %).
        loss_label: the loss's name on the colour bar.
        levels: the number of contour levels, or the levels, in loss units.
        vmin: the low end of the colour scale, in loss units.
        vmax: the high end of the colour scale, in loss units.
        colorbar: draw a colour bar.

    Returns:
        The axes.
    """
    check_path(path)
    A, B, L = _grid(surf)
    coords = np.asarray(coords, dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
        raise SharpnessError(f"coords must be an (n, 2) array of points on the plane (got shape {coords.shape})")
    norm, levels = _scale(L, True, levels, vmin, vmax)
    own = ax is None
    fig, ax = new_axes(ax, figsize)
    _loss_map(ax, A, B, L, "contour", norm, levels)
    if colorbar:
        _colorbar(fig, ax, norm, f"{loss_label} (log scale)", extend=_extend(L, norm))
    line, = ax.plot(coords[:, 0], coords[:, 1], "-o", color=None if label else "tab:red", markersize=2,
                    label=label or "training path")
    ax.plot(coords[-1, 0], coords[-1, 1], "*", color="k", markersize=7, label="final" if own else "_final")
    pcs = ("PC1", "PC2") if explained is None else tuple(
        f"PC{i + 1} ({100 * explained[i]:.1f}% of variance)" for i in range(2))
    ax.set_xlabel(pcs[0])
    ax.set_ylabel(pcs[1])
    ax.grid(False)
    _legend(ax, own=own)
    _set_title(ax, title, "Training path on the PCA plane" if own else None, own)
    save(fig, path, close=own)
    return ax


@styled
def plot_surfaces(surfs: dict, *, kind: str = "contour", ax=None, figsize=None, path: str | Path | None = None,
                  title: str | None = None, loss_label: str = "cross-entropy", levels: int = 25):
    """Several 2D landscapes ({label: surface}) side by side on one colour scale.

    Every panel gets the same log-spaced loss levels from the smallest to the largest finite loss over
    all panels, so a contour line means one loss value in every panel (Li et al. 2018 compare SB and LB
    surfaces this way). ``kind``: ``"contour"``, ``"filled"`` or ``"heatmap"``.

    Args:
        surfs: {panel title: a :class:`Surface` or its arrays}.
        kind: ``"contour"``, ``"filled"`` or ``"heatmap"``.
        ax: a sequence of axes, one per surface, to draw into (their figure stays open); default: a new
            figure of ``len(surfs)`` panels in a row.
        figsize: size of a new figure (default: the style's column width).
        path: write the figure here (.pdf, .svg or .png).
        title: the figure's title (None or "": none).
        loss_label: the loss's name on the colour bar.
        levels: how many log-spaced contour levels the panels share.

    Returns:
        The list of axes.

    Raises:
        SharpnessError: no surfaces, ``kind="3d"``, or ``ax`` not one axes per surface.
    """
    check_path(path)
    if not surfs:
        raise SharpnessError("no surfaces to draw")
    if kind == "3d":
        raise SharpnessError("plot_surfaces draws flat panels: kind must be contour, filled or heatmap")
    n = len(surfs)
    if ax is not None:
        given = list(np.atleast_1d(np.asarray(ax, dtype=object)).ravel())
        if len(given) != n or not all(hasattr(a, "figure") for a in given):
            raise SharpnessError(f"ax must be a sequence of {n} axes, one per surface (got {len(given)})")
    losses = np.concatenate([np.asarray(_grid(s)[2], float).ravel() for s in surfs.values()])
    losses = losses[np.isfinite(losses) & (losses > 0)]
    vmin, vmax = float(losses.min()), float(losses.max())
    shared = np.geomspace(vmin, vmax, levels) if vmax > vmin else levels
    own = ax is None
    if own:
        if figsize is None:
            w = matplotlib.rcParams["figure.figsize"][0]
            figsize = (w, w / n * 0.95 + 0.5)
        fig, axes = new_axes(None, figsize, rows=1, cols=n, sharey=True)
        axes = list(np.atleast_1d(axes).ravel())
    else:
        axes, fig = given, given[0].figure
    for i, (a, (label, surf)) in enumerate(zip(axes, surfs.items())):
        plot_surface(surf, kind=kind, ax=a, title=label, loss_label=loss_label, levels=shared, vmin=vmin,
                     vmax=vmax, colorbar=i == n - 1)
        if i and own:
            a.set_ylabel("")
    text = figure_title(title, None, own)
    if text:
        fig.suptitle(text)
    save(fig, path, close=own)
    return axes
