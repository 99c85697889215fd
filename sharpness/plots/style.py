"""Shared figure helpers: a headless backend, one style, atomic PNG writes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_write  # noqa: E402

__all__ = ["plt", "new_axes", "save"]


def new_axes(ax=None, figsize=(5.0, 3.6)):
    """Return (fig, ax): the given axes' figure, or a new figure."""
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def save(fig, path: str | Path | None, dpi: int = 150) -> Path | None:
    """Write ``fig`` as PNG atomically (if ``path``) and close it."""
    if path is None:
        return None
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=dpi, format="png"))
    plt.close(fig)
    return path
