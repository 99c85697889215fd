import json

import matplotlib
import numpy as np
import pytest

from helpers import tiny_config
from sharpness import SharpnessError, train_model
from sharpness.cli import analyze_main, figures_main
from sharpness.curvature.density import DensityResult, smooth
from sharpness.plots import (
    plot_line,
    plot_parametric,
    plot_spectral_densities,
    plot_spectral_density,
    plot_surface,
    plot_surfaces,
    plot_trajectory,
)
from sharpness.plots.style import _options, figure_options, plt

A = np.linspace(-1, 1, 9)
GA, GB = np.meshgrid(A, A, indexing="ij")
LOSS2 = 0.05 + GA ** 2 + 0.3 * GB ** 2
SURF = {"axis0": A, "axis1": A, "loss": LOSS2, "acc": np.clip(1 - LOSS2 / 2, 0, 1)}
LINE = {"axis0": A, "loss": LOSS2[:, 4], "acc": np.clip(1 - LOSS2[:, 4] / 2, 0, 1)}
ALPHAS = np.linspace(-0.5, 1.5, 9)
INTERP = {"alphas": ALPHAS, "train_loss": 0.05 + np.sin(np.pi * ALPHAS) ** 2, "test_loss": 0.2 + np.sin(np.pi * ALPHAS) ** 2,
          "train_acc": 1 - 0.4 * np.sin(np.pi * ALPHAS) ** 2, "test_acc": 0.9 - 0.4 * np.sin(np.pi * ALPHAS) ** 2}
RNG = np.random.default_rng(0)
NODES = np.sort(RNG.normal(0, 1, (2, 12)) ** 3, axis=1)
WEIGHTS = RNG.dirichlet(np.ones(12), 2)
GRID, DENS = smooth(NODES, WEIGHTS, 0.05)
ESD = {"grid": GRID, "density": DENS, "nodes": NODES, "weights": WEIGHTS}
PATH2D = np.c_[np.linspace(0.8, 0, 6), np.linspace(-0.5, 0, 6)]

PLOTS = {  # name → call(**kw): each public plot function on tiny inputs
    "density": lambda **kw: plot_spectral_density(ESD, **kw),
    "parametric": lambda **kw: plot_parametric(INTERP, **kw),
    "line": lambda **kw: plot_line(LINE, **kw),
    "contour": lambda **kw: plot_surface(SURF, **kw),
    "filled": lambda **kw: plot_surface(SURF, kind="filled", **kw),
    "heatmap": lambda **kw: plot_surface(SURF, kind="heatmap", **kw),
    "3d": lambda **kw: plot_surface(SURF, kind="3d", **kw),
    "trajectory": lambda **kw: plot_trajectory(SURF, PATH2D, explained=[0.6, 0.3], **kw),
}
LINE_PLOTS = ("density", "parametric", "line")  # no raster image in their PDFs (colour bars are rasterized)


@pytest.fixture(autouse=True)
def no_open_figures():
    plt.close("all")
    yield
    plt.close("all")


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_writes_pdf_svg_png_by_suffix(name, tmp_path):
    for suffix in ("pdf", "svg", "png"):
        PLOTS[name](path=tmp_path / f"f.{suffix}")
    pdf, svg, png = ((tmp_path / f"f.{s}").read_bytes() for s in ("pdf", "svg", "png"))
    assert pdf.startswith(b"%PDF") and b"/Font" in pdf  # text stays text (TrueType), not paths or pixels
    assert (b"/Subtype /Image" not in pdf) == (name in LINE_PLOTS), name  # heavy artists rasterized, rest vector
    assert b"<svg" in svg[:1000] and png.startswith(b"\x89PNG")
    assert plt.get_fignums() == []  # its own figure is closed
    if name in ("contour", "trajectory"):  # contour lines are vector; only a colour bar is an image
        PLOTS[name](path=tmp_path / "bare.pdf", colorbar=False)
        assert b"/Subtype /Image" not in (tmp_path / "bare.pdf").read_bytes()


@pytest.mark.parametrize("name", PLOTS)
def test_a_bad_suffix_raises_before_drawing_and_writes_nothing(name, tmp_path):
    with pytest.raises(SharpnessError, match="suffix"):
        PLOTS[name](path=tmp_path / "f.jpg")
    assert list(tmp_path.iterdir()) == [] and plt.get_fignums() == []


def test_figure_options_formats_write_each_format_under_the_stem(tmp_path):
    with figure_options(formats="pdf,png", dpi=50):
        plot_line(LINE, path=tmp_path / "one.svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pdf", "one.png"]
    assert (tmp_path / "one.pdf").read_bytes().startswith(b"%PDF")
    assert _options["formats"] == () and _options["dpi"] == 300  # restored


@pytest.mark.parametrize("name", [n for n in PLOTS if n != "3d"])
def test_drawing_into_the_users_axes_leaves_their_figure_open(name, tmp_path):
    fig, ax = plt.subplots()
    ax.set_title("mine")
    n_artists = len(ax.get_children())
    out = PLOTS[name](ax=ax, path=tmp_path / "f.png", title=None)
    assert out is ax and plt.fignum_exists(fig.number) and (tmp_path / "f.png").exists()
    assert len(ax.get_children()) > n_artists and ax.get_title() == "mine"  # title=None keeps theirs


def test_3d_surface_needs_a_3d_axes():
    fig, ax = plt.subplots()
    with pytest.raises(SharpnessError, match="3D axes"):
        plot_surface(SURF, kind="3d", ax=ax)
    ax3 = plt.figure().add_subplot(projection="3d")
    assert plot_surface(SURF, kind="3d", ax=ax3) is ax3 and plt.fignum_exists(ax3.figure.number)


@pytest.mark.parametrize("name", PLOTS)
def test_titles_default_given_or_none(name):
    assert PLOTS[name]().get_title()  # a short default
    assert PLOTS[name](title="").get_title() == ""
    assert PLOTS[name](title="Mine").get_title() == "Mine"


def _ticks_and_texts(fig):
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_text() and t.get_visible()]


@pytest.mark.parametrize("style", ["default", "icml"])
@pytest.mark.parametrize("name", PLOTS)
def test_sizes_come_from_the_style(name, style):
    from sharpness.plots.style import STYLES

    rc = STYLES[style]()
    with figure_options(style=style):
        ax = PLOTS[name]()
    fig = ax.figure
    if name != "3d":  # a 3D plot is taller than wide panels, as wide
        assert tuple(fig.get_size_inches()) == pytest.approx(rc["figure.figsize"])
    assert fig.get_size_inches()[0] == pytest.approx(rc["figure.figsize"][0])
    with plt.rc_context(rc):
        allowed = {matplotlib.font_manager.FontProperties(size=rc[k]).get_size_in_points()
                   for k in ("font.size", "axes.labelsize", "axes.titlesize", "legend.fontsize", "xtick.labelsize",
                             "ytick.labelsize") if k in rc}
    sizes = {t.get_fontsize() for t in _ticks_and_texts(fig)}
    assert sizes and sizes <= allowed, (sizes, allowed)  # nothing hard-coded


def _legend_texts(ax):
    """The texts of the one legend of ``ax`` (on it, its twin or, below it, its figure's)."""
    legends = [a.get_legend() for a in ax.figure.axes if a.get_legend()] + ax.figure.legends
    assert len(legends) == 1
    return [t.get_text() for t in legends[0].get_texts()]


def test_labels_let_several_series_share_one_axes():
    ax = plot_line(LINE, label="SB")
    plot_line({**LINE, "loss": LINE["loss"] * 2}, ax=ax, label="LB")
    assert _legend_texts(ax) == ["SB", "LB", "SB accuracy", "LB accuracy"]
    ax = plot_line(LINE, label="SB", path=None)
    assert ax.figure.legends and _legend_texts(ax) == ["SB", "SB accuracy"]  # own figure: below the axes
    assert len(ax.figure.axes) == 2  # one accuracy axis, shared
    twin = ax.figure.axes[1]
    assert twin.get_ylabel() == "accuracy (%)" and twin.get_ylim() == (0, 100)
    assert np.allclose(twin.lines[0].get_ydata(), 100 * LINE["acc"])  # accuracy in %
    ax = plot_spectral_density(ESD, label="SB")
    plot_spectral_density(ESD, ax=ax, label="LB")
    assert _legend_texts(ax) == ["SB", "LB"]
    ax = plot_parametric(INTERP, label="SB")
    plot_parametric(INTERP, ax=ax, label="LB")
    texts = _legend_texts(ax)
    assert "SB train loss" in texts and "LB test accuracy" in texts
    assert ax.figure.axes[1].get_ylabel() == "accuracy (%)"


def test_densities_resmoothed_with_one_sigma_equal_smooth():
    for esd in (ESD, DensityResult(GRID, DENS, NODES, WEIGHTS, np.zeros_like(NODES), 0.05, 0, 0.0, 0)):
        ax = plot_spectral_density(esd, sigma=0.3)
        grid, density = smooth(NODES, WEIGHTS, 0.3)
        x, y = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
        shown = ~np.isnan(y)
        assert np.array_equal(x, grid) and np.allclose(y[shown], density[shown]) and shown.sum() > len(y) // 2
    ax = plot_spectral_density(ESD)  # without sigma: as stored
    assert np.array_equal(ax.lines[0].get_xdata(), GRID)
    with pytest.warns(UserWarning, match="no quadrature"):
        ax = plot_spectral_density({"grid": GRID, "density": DENS}, sigma=0.3)
    assert np.array_equal(ax.lines[0].get_xdata(), GRID)
    for bad in (0, -1.0, float("nan"), "wide", True):
        with pytest.raises(SharpnessError, match="sigma"):
            plot_spectral_density(ESD, sigma=bad)


def test_side_by_side_surfaces_share_a_colour_scale():
    fig, (a1, a2) = plt.subplots(1, 2)
    levels = [0.1, 0.3, 1.0]
    plot_surface(SURF, ax=a1, levels=levels, vmin=0.05, vmax=2.0, colorbar=False)
    plot_surface({**SURF, "loss": LOSS2 * 3}, ax=a2, levels=levels, vmin=0.05, vmax=2.0)
    for ax in (a1, a2):
        cs = ax.collections[0]
        assert list(cs.levels) == levels and (cs.norm.vmin, cs.norm.vmax) == (0.05, 2.0)
    assert not a1.child_axes and len(a2.child_axes) == 1  # one colour bar (an inset beside the square plot)
    ax = plot_surface(SURF, kind="heatmap", vmin=0.1, vmax=1.0)
    assert (ax.collections[0].norm.vmin, ax.collections[0].norm.vmax) == (0.1, 1.0)
    assert len(plot_surface(SURF, levels=7).collections[0].levels) == 7
    for kw in ({"levels": 1}, {"levels": [1.0, 0.5]}, {"vmin": -1.0}, {"vmin": 2.0, "vmax": 1.0}, {"kind": "wire"}):
        with pytest.raises(SharpnessError):
            plot_surface(SURF, **kw)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    train_model(tiny_config(epochs=1), root / "run", progress=False)
    return root / "run" / "final.pt"


def test_analyze_main_writes_the_formats_asked_for(checkpoint, tmp_path, capsys):
    out = tmp_path / "an"
    argv = [str(checkpoint), "--out", str(out), "--quick", "--measures", "landscape1d", "--no-progress"]
    assert analyze_main(argv + ["--format", "pdf,png", "--dpi", "50", "--style", "icml"]) == 0
    report = json.loads((out / "report.json").read_text())
    figures = report["checkpoints"]["final"]["measures"]["landscape1d"]["figures"]
    assert figures == ["landscape1d_final.pdf", "landscape1d_final.png"]
    assert (out / figures[0]).read_bytes().startswith(b"%PDF")
    png = plt.imread(out / figures[1])
    assert png.shape[1] <= 3.25 * 50 + 1  # icml's column at 50 dpi
    assert _options == {"formats": (), "dpi": 300, "style": "default", "title": None}  # only during the command


@pytest.mark.parametrize("flag, value", [("--format", "jpg"), ("--format", "pdf,gif"), ("--format", ","),
                                         ("--dpi", "5"), ("--dpi", "high"), ("--dpi", "3000"),
                                         ("--style", "nature")])
@pytest.mark.parametrize("main", ["analyze", "figures"])
def test_bad_figure_flags_one_line_exit_2_nothing_written(main, flag, value, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ([str(checkpoint), "--out", str(out), "--measures", "landscape1d", "--quick"] if main == "analyze"
            else ["--figures", str(out)])
    assert {"analyze": analyze_main, "figures": figures_main}[main](argv + [flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {flag} ") and repr(value) in err, err
    assert not out.exists()


def test_figures_main_draws_under_the_options(tmp_path, monkeypatch, capsys):
    import sharpness.plots.experiments as experiments

    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "results.json").write_text("{}")
    seen = []

    def draw(res, out=None, labels=None):
        seen.append(dict(_options))
        return [plot_line(LINE, path=out / "line.png") and out / "line.png"]

    monkeypatch.setattr(experiments, "draw", draw)
    assert figures_main(["--figures", str(tmp_path), "--format", "svg,pdf", "--dpi", "72", "--style", "neurips",
                         "--in-place"]) == 0
    assert seen == [{"formats": ("svg", "pdf"), "dpi": 72, "style": "neurips", "title": None}]
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["line.pdf", "line.svg", "results.json"]
    assert figures_main(["--figures", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert seen[-1] == {"formats": ("png",), "dpi": 300, "style": "default", "title": None}  # the defaults
    assert sorted(p.name for p in (tmp_path / "o" / "exp").iterdir()) == ["line.png"]


@pytest.mark.parametrize("name", PLOTS)
def test_a_figure_options_title_replaces_the_title_of_own_figures_only(name):
    with figure_options(title="Run 7"):
        assert PLOTS[name]().get_title() == "Run 7"  # instead of the default
        assert PLOTS[name](title="computed by the caller").get_title() == "Run 7"
        assert PLOTS[name](title="").get_title() == ""  # "" still means none
        if name != "3d":
            fig, ax = plt.subplots()
            ax.set_title("mine")
            PLOTS[name](ax=ax)
            assert ax.get_title() == "mine"  # a panel of the caller's keeps theirs
    assert PLOTS[name]().get_title() not in ("", "Run 7")  # the default again after the block
    with pytest.raises(SharpnessError, match="title must be a string"):
        with figure_options(title=3):
            pass


def test_several_densities_and_surfaces_take_the_title_too():
    with figure_options(title="T"):
        assert plot_spectral_densities({"a": ESD, "b": ESD}).get_title() == "T"
        axes = plot_surfaces({"SB": SURF, "LB": SURF})
        assert axes[0].figure.get_suptitle() == "T" and [a.get_title() for a in axes] == ["SB", "LB"]


def test_plot_surfaces_draws_into_the_callers_axes(tmp_path):
    fig, (a1, a2, a3) = plt.subplots(1, 3)
    axes = plot_surfaces({"SB": SURF, "LB": {**SURF, "loss": LOSS2 * 3}}, ax=[a1, a2], path=tmp_path / "s.png")
    assert axes == [a1, a2] and plt.fignum_exists(fig.number) and (tmp_path / "s.png").exists()
    assert [a.get_title() for a in axes] == ["SB", "LB"] and not a3.collections
    levels = [list(a.collections[0].levels) for a in axes]
    assert levels[0] == levels[1]  # one colour scale across the caller's panels too
    assert a1.get_ylabel() and fig.get_suptitle() == ""  # their figure: no suptitle unless asked
    for bad in ([a1], [a1, a2, a3], a1, ["x", "y"]):
        with pytest.raises(SharpnessError, match="ax must be a sequence of 2 axes"):
            plot_surfaces({"SB": SURF, "LB": SURF}, ax=bad)


@pytest.mark.parametrize("style", ["default", "icml", "neurips", "iclr"])
def test_subscript_digits_have_glyphs_in_every_style(style, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph 8320 (SUBSCRIPT ZERO) missing from font(s) STIXGeneral"
        with figure_options(style=style):
            for suffix in ("png", "pdf"):
                plot_parametric(INTERP, title="(1 − α)·θ₀ + α·θ₁, ‖w − w₀‖", path=tmp_path / f"t.{suffix}")
