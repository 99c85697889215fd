"""Spectral density figure: log-density against eigenvalue, as in PyHessian's (Yao et al. 2020) figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..curvature.density import DensityResult
from .style import new_axes, save

__all__ = ["plot_spectral_density"]


def plot_spectral_density(esd: DensityResult | dict, *, ax=None, path: str | Path | None = None,
                          label: str | None = None, title: str | None = None):
    """Plot an SLQ density on a log scale, with the top quadrature nodes marked.

    Args:
        esd: a :class:`DensityResult`, or a dict with ``grid`` and ``density`` arrays (from an NPZ).
        ax: axes to draw on (default: a new figure).
        path: write a PNG here.
        label: legend label (several densities can share one axes).
        title: axes title.

    Returns:
        The axes.
    """
    grid, density = (esd.grid, esd.density) if isinstance(esd, DensityResult) else (
        np.asarray(esd["grid"]), np.asarray(esd["density"]))
    first = ax is None or not ax.lines
    fig, ax = new_axes(ax)
    floor = density.max() * 1e-8
    # Below 1e-8 of the peak the Gaussian tails are numerical dust: leave gaps rather than a flat floor.
    ax.semilogy(grid, np.where(density > floor, density, np.nan), lw=1.2, label=label)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_ylim(bottom=floor if first else min(floor, ax.get_ylim()[0]))
    ax.set_title(title or "Hessian eigenvalue density (SLQ)")
    ax.grid(alpha=0.3)
    if label:
        ax.legend()
    save(fig, path)
    return ax
