"""Spectral density figure: log-density against eigenvalue, as in PyHessian's (Yao et al. 2020) figures."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..curvature.density import DensityResult, smooth
from ..errors import SharpnessError
from .style import check_path, new_axes, save, styled

__all__ = ["plot_spectral_density"]


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
        grid, density = np.asarray(esd["grid"]), np.asarray(esd["density"])
        nodes, weights = esd.get("nodes"), esd.get("weights")
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
        ax.set_title("Hessian eigenvalue density" if title is None else title)
    if label:
        ax.legend(loc="best")
    save(fig, path, close=own)
    return ax
