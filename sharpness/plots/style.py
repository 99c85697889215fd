"""One place for how figures look and are written: venue styles, sizes, formats, resolution.

Every plot function runs inside :func:`styled` (the active style's rcParams), makes its figure with
:func:`new_axes` (single-column size unless told otherwise) and writes it with :func:`save`, which picks
the format from the path's suffix (``.pdf``, ``.svg``, ``.png``) or, under :func:`figure_options` with
``formats`` (``--format pdf,png``), writes each of those formats under the path's stem instead.

Styles: ``"default"`` (a 3.3-inch column, 8-pt text: readable when a paper prints it at column width)
and the venue bundles of the ``tueplots`` library (``"neurips"``, ``"icml"``, ``"iclr"``: column widths
and font sizes of the venues' templates, without LaTeX so no TeX installation is needed).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import numbers
from pathlib import Path
from typing import Callable, Iterator

import matplotlib

matplotlib.use("Agg")  # figures are files; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import SharpnessError  # noqa: E402
from ..io import atomic_write  # noqa: E402

__all__ = ["plt", "new_axes", "save", "styled", "figure_options", "check_path", "FORMATS", "STYLES",
           "parse_formats", "targets", "figure_title"]

FORMATS = ("pdf", "svg", "png")

# Shared by every style: fonts embedded as TrueType (journals reject Type 3), no clipped labels.
_COMMON = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "path", "savefig.bbox": "tight",
           "savefig.pad_inches": 0.02, "figure.constrained_layout.use": True, "axes.grid": True,
           "grid.alpha": 0.3, "grid.linewidth": 0.5, "legend.frameon": False, "lines.linewidth": 1.2,
           "lines.markersize": 3.5, "axes.spines.top": False, "axes.spines.right": False}
_DEFAULT = {"figure.figsize": (3.3, 2.4), "font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8,
            "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7, "font.family": "sans-serif"}


def _tueplots(name: str) -> Callable[[], dict]:
    def rc() -> dict:
        from tueplots import bundles

        rc = getattr(bundles, name)(**({"column": "half"} if name.startswith("icml") else {}), usetex=False)
        # Without the venue's Times, fall back to matplotlib's own Times-like STIX, text and maths alike;
        # STIX has no subscript digits (θ₀, w₀): matplotlib's DejaVu fonts, last, supply glyphs the others lack
        # (matplotlib falls back glyph by glyph over font.family's entries, not within font.serif's list)
        rc["font.serif"] = [*rc.get("font.serif", []), "STIXGeneral"]
        if rc.get("font.family") == "serif":
            rc["mathtext.fontset"] = "stix"
            rc["font.family"] = ["serif", "DejaVu Serif"]
        elif rc.get("font.family") == "sans-serif":
            rc["font.family"] = ["sans-serif", "DejaVu Sans"]
        return rc
    return rc


STYLES: dict[str, Callable[[], dict]] = {
    "default": lambda: dict(_DEFAULT),
    "neurips": _tueplots("neurips2024"),   # one column, 5.5 in
    "icml": _tueplots("icml2024"),         # half of two columns, 3.25 in
    "iclr": _tueplots("iclr2024"),         # one column, 5.5 in
}

_options = {"formats": (), "dpi": 300, "style": "default", "title": None}


def parse_formats(value: str | list | tuple | None) -> tuple[str, ...]:
    """``"pdf,png"`` or ``["pdf", "png"]`` → ("pdf", "png"), each checked against :data:`FORMATS`."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(dict.fromkeys(str(f).strip().lower().lstrip(".") for f in items if str(f).strip()))
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise SharpnessError(f"format must be one or more of {', '.join(FORMATS)} (got {value!r})")
    return out


@contextlib.contextmanager
def figure_options(formats: str | list | tuple | None = None, dpi: int | None = None,
                   style: str | None = None, title: str | None = None) -> Iterator[None]:
    """Within the block, :func:`save` writes ``formats`` (instead of the suffix's), rasters at ``dpi``, in ``style``.

    Figures the caller makes inside the block (``plt.subplots`` for a layout of their own) get the style's
    fonts and sizes too. ``title`` replaces the title of every figure a plot function makes itself (its
    default, or the title its caller computed, e.g. ``analyze``'s or an experiment's): see
    :func:`figure_title`. Panels drawn into given axes keep theirs, and a title of ``""`` stays empty.

    Raises:
        SharpnessError: an unknown format or style, or a dpi outside 10–2400.
    """
    new = dict(_options)
    if formats is not None:
        new["formats"] = parse_formats(formats)
    if dpi is not None:
        if isinstance(dpi, bool) or not isinstance(dpi, numbers.Integral) or not 10 <= dpi <= 2400:
            raise SharpnessError(f"dpi must be an integer from 10 to 2400 (got {dpi!r})")
        new["dpi"] = int(dpi)
    if style is not None:
        if style not in STYLES:
            raise SharpnessError(f"style must be one of {', '.join(STYLES)} (got {style!r})")
        new["style"] = style
    if title is not None:
        if not isinstance(title, str):
            raise SharpnessError(f"title must be a string (got {title!r})")
        new["title"] = title
    old = dict(_options)
    _options.update(new)
    try:
        with plt.rc_context(rc()):  # figures the caller makes in the block get the style too
            yield
    finally:
        _options.clear()
        _options.update(old)


def rc() -> dict:
    """The rcParams of the active style (with the settings every style shares)."""
    return {**STYLES[_options["style"]](), **_COMMON}


def figure_title(title: str | None, default: str | None, own: bool = True) -> str | None:
    """The title to set: ``title`` ("" none), else ``default``; a :func:`figure_options` title in its place.

    The option replaces both (unless ``title`` is ``""``) in a figure the function made itself (``own``);
    in the caller's axes (one panel of theirs) it is not used.
    """
    override = _options["title"]
    if own and override is not None and title != "":
        return override
    return default if title is None else title


def current() -> dict:
    """The active style and resolution (what a figure drawn now looks like), for reports."""
    return {"style": _options["style"], "dpi": _options["dpi"]}


def styled(fn: Callable) -> Callable:
    """Run a plot function under the active style's rcParams (fonts, sizes), quietly about missing fonts."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # a venue's Times absent: matplotlib falls back (said once); fontTools' notes on old font dates
        logs = [logging.getLogger(n) for n in ("matplotlib.font_manager", "fontTools")]
        levels = [log.level for log in logs]
        for log in logs:
            log.setLevel(logging.ERROR)
        try:
            with plt.rc_context(rc()):
                return fn(*args, **kwargs)
        finally:
            for log, level in zip(logs, levels):
                log.setLevel(level)
    return wrapper


def check_path(path: str | Path | None) -> Path | None:
    """The output path, its suffix checked before anything is drawn.

    Raises:
        SharpnessError: the suffix is not .pdf, .svg or .png.
    """
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in FORMATS:
        raise SharpnessError(f"figure path {str(path)!r}: the suffix names the format; use .pdf, .svg or .png")
    return path


def new_axes(ax=None, figsize: tuple[float, float] | None = None, rows: int = 1, cols: int = 1, **subplot_kw):
    """(fig, ax): the given axes' figure, or a new figure of ``figsize``.

    Without ``figsize``, a grid of ``rows`` × ``cols`` panels at the style's column width: panels are
    stacked, not squeezed, so each stays readable when the figure is printed at column width.
    """
    if ax is not None:
        return ax.figure, ax
    if figsize is None:
        w, h = matplotlib.rcParams["figure.figsize"]
        figsize = (w * (1 if cols == 1 else 0.62 * cols), h * rows)
    fig, axes = plt.subplots(rows, cols, figsize=figsize, layout="constrained", squeeze=rows * cols == 1,
                             **subplot_kw)
    return fig, axes


def save(fig, path: str | Path | None, *, close: bool = True) -> Path | None:
    """Write ``fig`` in the format its path's suffix names (or the active ``formats``); close it.

    Under :func:`figure_options` with ``formats``, each of those formats is written under the path's stem
    instead of the suffix's.

    Raster formats use the active dpi (300 by default). Each file is written atomically. ``close=False``
    leaves a figure the caller owns (one they passed ``ax=`` of) open.

    Returns:
        The first file written (None when ``path`` is None).
    """
    files = targets(path)
    if not files:
        return None
    for target in files:
        fmt = target.suffix.lower().lstrip(".")
        atomic_write(target, lambda p, fmt=fmt: fig.savefig(p, format=fmt, dpi=_options["dpi"]))
    if close:
        plt.close(fig)
    return files[0]


def targets(path: str | Path | None) -> list[Path]:
    """The files :func:`save` writes for ``path``: the path itself, or one per active format; [] for None.

    Raises:
        SharpnessError: the suffix is not .pdf, .svg or .png.
    """
    path = check_path(path)
    if path is None:
        return []
    return [path.with_suffix(f".{fmt}") for fmt in _options["formats"]] or [path]
