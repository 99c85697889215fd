"""Spectral density figure: log-density against eigenvalue, as in PyHessian's (Yao et al. 2020) figures."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..curvature.density import DensityResult, smooth
from ..errors import SharpnessError
from .style import check_path, figure_title, new_axes, save, styled

__all__ = ["plot_spectral_density", "plot_spectral_densities", "shared_sigma"]


def _density_arrays(esd: DensityResult | dict, sigma: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density) to draw: re-smoothed with ``sigma`` from the quadrature nodes, else as stored.

    Raises:
        SharpnessError: ``sigma`` is not a positive finite number.
    """
    if sigma is not None and (isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating))
                              or not math.isfinite(sigma) or sigma <= 0):
        raise SharpnessError(f"sigma must be a positive number (got {sigma!r})")
    if isinstance(esd, DensityResult):
        grid, density, nodes, weights = esd.grid, esd.density, esd.nodes, esd.weights
    else:
        grid, density = esd.get("grid"), esd.get("density")
        nodes, weights = esd.get("nodes"), esd.get("weights")
        if grid is None or density is None:  # quadrature only: smoothed here, 1 % of its node range
            if nodes is None or weights is None:
                raise SharpnessError("a density needs grid and density arrays, or quadrature nodes and weights")
            sigma = sigma if sigma is not None else shared_sigma({"": esd})
        else:
            grid, density = np.asarray(grid), np.asarray(density)
    if sigma is None:
        return grid, density
    if nodes is None or weights is None:
        warnings.warn("sigma given but the density has no quadrature nodes/weights: drawing it as stored",
                      stacklevel=3)
        return grid, density
    return smooth(nodes, weights, float(sigma))


@styled
def plot_spectral_density(esd: DensityResult | dict, *, ax=None, figsize=None, path: str | Path | None = None,
                          label: str | None = None, title: str | None = None, sigma: float | None = None):
    """Plot an SLQ density on a log scale.

    Below 1e-8 of the peak the Gaussian tails are numerical dust: the curve leaves gaps there rather
    than drawing a flat floor.

    Args:
        esd: a :class:`DensityResult`, or a dict with ``grid`` and ``density`` arrays (from an NPZ) and,
            optionally, the quadrature ``nodes`` and ``weights``.
        ax: axes to draw into (its figure stays open); default: a new figure.
        figsize: size of a new figure (default: the style's column width).
        path: write the figure here (.pdf, .svg or .png).
        label: legend label, so several densities can share one axes.
        title: the axes title (None: a short default for a new figure; "": none).
        sigma: an absolute Gaussian width: the nodes are smoothed again with it
            (:func:`~sharpness.curvature.density.smooth`), so densities drawn together share one width.
            Without nodes, the stored density is drawn (with a warning).

    Returns:
        The axes.
    """
    check_path(path)
    grid, density = _density_arrays(esd, sigma)
    own = ax is None
    first = own or not ax.lines
    fig, ax = new_axes(ax, figsize)
    floor = density.max() * 1e-8
    ax.semilogy(grid, np.where(density > floor, density, np.nan), label=label)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_ylim(bottom=floor if first else min(floor, ax.get_ylim()[0]))
    if title is not None or own:
        ax.set_title(figure_title(title, "Hessian eigenvalue density", own))
    if label:
        ax.legend(loc="best")
    save(fig, path, close=own)
    return ax


def shared_sigma(esds: dict, fraction: float = 0.01) -> float | None:
    """One absolute width for densities drawn together: ``fraction`` of the union of their node ranges.

    None when no density has quadrature nodes (then each is drawn as stored).
    """
    ok = []
    for e in esds.values():
        nodes, weights = (e.nodes, e.weights) if isinstance(e, DensityResult) else (e.get("nodes"), e.get("weights"))
        if nodes is not None and weights is not None:
            n, w = np.asarray(nodes, float), np.asarray(weights, float)
            ok.append(n[(w > 0) & ~np.isnan(n)])
    if not ok:
        return None
    lo, hi = min(o.min() for o in ok), max(o.max() for o in ok)
    return fraction * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)


@styled
def plot_spectral_densities(esds: dict, *, ax=None, figsize=None, path: str | Path | None = None,
                            title: str | None = None, sigma: float | None = None):
    """Several SLQ densities ({label: density}) overlaid with one absolute smoothing width.

    A width relative to each model's own node range (what :func:`~sharpness.curvature.spectral_density`
    uses for one model) widens the density of the model with the larger spectrum and draws tails that
    are not there; here every density is smoothed again from its nodes with the same σ (default:
    :func:`shared_sigma`, 1 % of the union of the node ranges). Densities stored without nodes are
    drawn as stored, with a warning.

    Returns:
        The axes.
    """
    check_path(path)
    if not esds:
        raise SharpnessError("no densities to draw")
    sigma = sigma if sigma is not None else shared_sigma(esds)
    own = ax is None
    fig, ax = new_axes(ax, figsize)
    for label, esd in esds.items():
        plot_spectral_density(esd, ax=ax, label=label, sigma=sigma, title="")
    if title is not None or own:
        text = "Hessian eigenvalue densities" + (f" (σ = {sigma:.2g})" if sigma else "")
        ax.set_title(figure_title(title, text, own))
    save(fig, path, close=own)
    return ax
