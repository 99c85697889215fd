"""Experiment figures and their statistics on small synthetic results (2 arms × 3 batch sizes × 3 seeds)."""

import json
import math
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from scipy import stats

import sharpness as sh
import sharpness.plots.experiments as figs
import sharpness.plots.landscape as landscape_plots
from sharpness.plots.experiments import FIGURES, draw
from sharpness.plots.style import figure_options
from sharpness.reporting import (
    arm,
    binned_ci,
    format_ci,
    gap_rows,
    groups,
    mean_ci,
    scatter_rows,
    warm_start_epoch,
    warm_start_rows,
)

ARMS = {"fixed": "none", "sqrt": "sqrt"}
BATCHES = [32, 128, 512]
SEEDS = [0, 1, 2]


def _history(rng, b: int, epochs: int = 5) -> list[dict]:
    """Epoch 0 (before training) to ``epochs``: losses falling, accuracies rising."""
    out = []
    for e in range(epochs + 1):
        tr = 2.0 * 0.4 ** e + 1e-3 * rng.random()
        out.append({"epoch": e, "step": e * 4096 // b, "examples": e * 4096, "wall_time": 0.1 * e, "lr": 1e-3,
                    "batch_size": b, "train_loss": tr, "train_acc": 1 - tr / 2.5, "test_loss": tr + 0.3 + 0.1 * e,
                    "test_acc": 0.9 - tr / 2.5 - 0.01 * e, "dist_from_init": 1.0 + e})
    return out


def _run(rng, label: str, b: int, seed: int, scaling: str = "none", init_from: str | None = None) -> dict:
    lb = math.log2(b / 32)
    train_loss = 0.01 * (0.9 + 0.2 * rng.random())
    test_loss = 0.7 + 0.05 * lb + 0.03 * rng.standard_normal() + (0.1 if scaling == "none" else 0.0)
    final = {"loss": {"train_loss": train_loss, "train_acc": 1.0, "test_loss": test_loss,
                      "test_acc": 0.8 - 0.01 * lb + 0.005 * rng.standard_normal()},
             "eigenvalues": {"lambda_max": 2.0 + lb + 0.5 * rng.standard_normal()},
             "eps_sharpness": {"eps0.001_full": 10.0 * (1 + lb) * (1 + 0.2 * rng.random())},
             "adaptive": {"worst": 0.1 * (1 + lb) + 0.02 * rng.random(), "average": 0.01 * (1 + lb)}}
    along = [{"epoch": e, "train_loss": 1.5 * 0.3 ** e * (1 + 0.1 * rng.random()),
              "eps_sharpness": {"eps0.001_full": 5.0 + lb * e + rng.random(), "n_evals": 10}} for e in range(1, 5)]
    run = {"config": {"batch_size": b, "seed": seed, "lr": 1e-3, "lr_scaling": scaling, "loss": "cross_entropy",
                      "target_train_loss": 0.1, "init_from": init_from},
           "history": _history(rng, b), "dir": f"runs/x/{label}", "final": final, "along": along, "arrays": {}}
    return run


def _landscape(rng, sharp: float) -> dict:
    a = np.linspace(-1, 1, 7)
    A, B = np.meshgrid(a, a, indexing="ij")
    loss = 0.01 + sharp * (A ** 2 + B ** 2) + 0.01 * rng.random(A.shape)
    return {"landscape2d/loss": loss.tolist(), "landscape2d/acc": (1 - loss / loss.max()).tolist(),
            "landscape2d/axis0": a.tolist(), "landscape2d/axis1": a.tolist()}


def _pair(alphas=np.linspace(-0.5, 1.5, 9)) -> dict:
    loss = 0.01 + (alphas - 0.3) ** 2
    return {"alphas": alphas.tolist(), "train_loss": loss.tolist(), "train_acc": (1 - loss / 3).tolist(),
            "test_loss": (loss + 0.5).tolist(), "test_acc": (0.8 - loss / 3).tolist()}


def make_results(kinds=None) -> dict:
    """2 arms (fixed and √B-scaled LR) × 3 batch sizes × 3 seeds, with every array the figures draw."""
    rng = np.random.default_rng(0)
    runs = {}
    for name, scaling in ARMS.items():
        for b in BATCHES:
            for s in SEEDS:
                label = f"{name}-B{b}-seed{s}"
                runs[label] = _run(rng, label, b, s, scaling)
    for label, width in (("fixed-B32-seed0", 1.0), ("fixed-B512-seed0", 8.0)):
        nodes = rng.random((2, 6)) * width
        weights = np.full((2, 6), 1 / 6)
        runs[label]["arrays"] = {"density/nodes": nodes.tolist(), "density/weights": weights.tolist(),
                                 **_landscape(rng, width)}
    kinds = kinds or ["table", "curves", "parametric", "esd", "surface", "sharpness_vs_loss", "batch_sweep",
                      "cost", "gap", "gap_scatter"]
    return {"name": "synthetic", "spec": {"name": "synthetic", "figures": {"kinds": kinds, "cost": {"target": 0.1}}},
            "runs": runs, "pairs": {"fixed-B32-seed0→fixed-B512-seed0": _pair(),
                                    "fixed-B32-seed0→fixed-B512-seed0 (sin)": _pair()}}


def make_warm_start() -> dict:
    """Keskar Fig. 5: SB (3 seeds) and LB warm-started after k = 0, 1, 4 SB epochs (3 seeds each)."""
    rng = np.random.default_rng(1)
    runs = {}
    for s in SEEDS:
        runs[f"SB-seed{s}"] = _run(rng, f"SB-seed{s}", 32, s)
        for k in (0, 1, 4):
            src = f"runs/fig5/SB-seed{s}-abc/" + ("init.pt" if k == 0 else f"ckpt_epoch{k}.pt")
            runs[f"LB-k{k}-seed{s}"] = _run(rng, f"LB-k{k}-seed{s}", 800, s, init_from=src)
    return {"name": "fig5", "spec": {"name": "fig5", "figures": {"kinds": ["table", "warm_start"]}}, "runs": runs}


def _t_half(v) -> float:
    v = np.asarray(v, float)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    return (hi - lo) / 2


def test_mean_ci_is_students_t_interval():
    v = [0.71, 0.75, 0.69, 0.80]
    m, h, n = mean_ci(v)
    assert n == 4 and m == pytest.approx(np.mean(v)) and h == pytest.approx(_t_half(v))
    assert h > np.std(v, ddof=1)  # t(0.975, 3)/√4 = 1.59: the interval is wider than ±1 std here
    m, h, n = mean_ci([3.0, None, float("nan")])
    assert (m, n) == (3.0, 1) and math.isnan(h)  # one value: no interval
    assert mean_ci([])[2] == 0 and format_ci([]) == "—" and format_ci([2.5]) == "2.5"
    assert format_ci(v) == f"{np.mean(v):.4g} ± {_t_half(v):.2g}"


def test_labels_arms_and_warm_start_epochs():
    res = make_results()
    assert arm("fixed-B32-seed0", res["runs"]["fixed-B32-seed0"]) == "fixed"
    assert arm("B256-sqrt-seed1", {"config": {"batch_size": 256}}) == "sqrt"
    assert arm("B32-seed0", {"config": {"batch_size": 32}}) == ""
    assert set(groups(res["runs"])) == {f"{a}-B{b}" for a in ARMS for b in BATCHES}
    ws = make_warm_start()
    assert groups(ws["runs"])["LB-k4"] == ["LB-k4-seed0", "LB-k4-seed1", "LB-k4-seed2"]
    assert [warm_start_epoch(ws["runs"][lb]) for lb in ("SB-seed1", "LB-k0-seed1", "LB-k4-seed1")] == [None, 0, 4]
    with pytest.raises(ValueError, match="neither init.pt nor ckpt_epochK.pt"):
        warm_start_epoch({"config": {"init_from": "runs/a/final.pt"}})


def test_gap_rows_match_a_hand_computation():
    res = make_results()
    rows = gap_rows(res)
    assert [(r["arm"], r["batch"]) for r in rows] == [(a, b) for a in sorted(ARMS) for b in BATCHES]
    row = next(r for r in rows if (r["arm"], r["batch"]) == ("sqrt", 128))
    runs = [res["runs"][f"sqrt-B128-seed{s}"]["final"]["loss"] for s in SEEDS]
    loss_gap = [f["test_loss"] - f["train_loss"] for f in runs]
    acc_gap = [100 * (f["train_acc"] - f["test_acc"]) for f in runs]
    assert row["gap_loss"]["n"] == 3 and row["gap_loss"]["mean"] == pytest.approx(np.mean(loss_gap))
    assert row["gap_loss"]["ci"] == pytest.approx(_t_half(loss_gap))
    assert row["gap_acc"]["mean"] == pytest.approx(np.mean(acc_gap))
    assert row["gap_acc"]["ci"] == pytest.approx(_t_half(acc_gap))
    assert row["train_loss"]["mean"] == pytest.approx(np.mean([f["train_loss"] for f in runs]))
    with pytest.raises(ValueError, match="no run has a final train and test loss"):
        gap_rows({"runs": {"B32-seed0": {"config": {"batch_size": 32}, "history": [], "final": {}}}})


def test_binned_ci_averages_each_seed_per_bin_then_over_seeds():
    series = [([1.0, 0.9, 0.01], [10.0, 12.0, 50.0]), ([0.95, 0.011], [14.0, 70.0]), ([0.012], [30.0])]
    b = binned_ci(series, bins=2)  # bins [0.01, 0.1) and [0.1, 1]
    assert list(b["n"]) == [3, 2]
    assert b["mean"][0] == pytest.approx(np.mean([50, 70, 30])) and b["ci"][0] == pytest.approx(_t_half([50, 70, 30]))
    assert b["mean"][1] == pytest.approx(np.mean([11.0, 14.0]))  # seed 0's two points averaged first


def test_warm_start_rows_group_by_k_with_sb_reference():
    res = make_warm_start()
    rows, ref = warm_start_rows(res, {"acc": lambda r: 100 * r["final"]["loss"]["test_acc"]})
    assert [r["k"] for r in rows] == [0, 1, 4] and all(r["acc"]["n"] == 3 for r in rows)
    accs = [100 * res["runs"][f"LB-k1-seed{s}"]["final"]["loss"]["test_acc"] for s in SEEDS]
    assert rows[1]["acc"]["mean"] == pytest.approx(np.mean(accs)) and rows[1]["acc"]["ci"] == pytest.approx(_t_half(accs))
    assert ref["labels"] == ["SB-seed0", "SB-seed1", "SB-seed2"]


def test_table_states_n_and_the_interval(tmp_path):
    res = make_results(["table"])
    text = FIGURES["table"](res, tmp_path).read_text()
    assert "mean ± 95 % CI (Student t)" in text and "| n (seeds) |" in text
    acc = [100 * res["runs"][f"fixed-B32-seed{s}"]["final"]["loss"]["test_acc"] for s in SEEDS]
    line = next(ln for ln in text.splitlines() if ln.startswith("| fixed-B32 |"))
    assert f"| {format_ci(acc)} |" in line and line.split("|")[2].strip() == "3"


def _capture(monkeypatch) -> list:
    """Keep every figure the module saves (save still writes it), to read what was drawn."""
    seen = []
    real = figs.save

    def keep(fig, path, **kw):
        seen.append(fig)
        return real(fig, path, close=False)
    monkeypatch.setattr(figs, "save", keep)
    monkeypatch.setattr(landscape_plots, "save", keep)  # surface: drawn by plots.plot_surfaces
    return seen


def test_gap_scatter_shows_scipys_kendall_tau(tmp_path, monkeypatch):
    res = make_results()
    seen = _capture(monkeypatch)
    FIGURES["gap_scatter"](res, tmp_path)
    texts = [t.get_text() for ax in seen[0].axes for t in ax.texts if t.get_text().startswith("Kendall")]
    rows = scatter_rows(res)
    keys = [("eigenvalues", "lambda_max"), ("eps_sharpness", "eps0.001_full"), ("adaptive", "worst"),
            ("adaptive", "average")]
    assert len(texts) == len(keys)  # one panel per measure present
    for text, key in zip(texts, keys):
        r = stats.kendalltau([row["gap_loss"] for row in rows], [row[key] for row in rows])
        assert text == f"Kendall τ = {r.statistic:.2f}, p = {r.pvalue:.2g}, n = {len(rows)}", key
    assert len(rows) == 18


def test_esd_shares_one_absolute_width_and_surface_one_colour_scale(tmp_path, monkeypatch):
    res = make_results()
    seen = _capture(monkeypatch)
    FIGURES["esd"](res, tmp_path)
    nodes = np.concatenate([np.ravel(res["runs"][lb]["arrays"]["density/nodes"])
                            for lb in ("fixed-B32-seed0", "fixed-B512-seed0")])
    sigma = 0.01 * (nodes.max() - nodes.min())
    assert f"σ = {sigma:.2g}" in seen[0].legends[0].get_title().get_text()
    FIGURES["surface"](res, tmp_path)
    panels = [ax for ax in seen[1].axes if ax.get_title() in ("fixed-B32-seed0", "fixed-B512-seed0")]
    assert len(panels) == 2
    levels = [np.asarray(next(c for c in ax.collections if hasattr(c, "levels")).levels) for ax in panels]
    assert np.array_equal(levels[0], levels[1])


EXPECTED = {"table.md", "curves.png", "parametric_fixed-B32-seed0_fixed-B512-seed0.png",
            "parametric_fixed-B32-seed0_fixed-B512-seed0_sin.png", "esd.png", "surface.png",
            "sharpness_vs_loss.png", "batch_sweep.png", "cost.png", "cost.md", "gap.png", "gap_scatter.png"}


def _write(tmp_path, res) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results.json").write_text(json.dumps(res), encoding="utf-8")
    return tmp_path / "results.json"


def test_every_kind_writes_its_files_at_column_width(tmp_path):
    made = draw(_write(tmp_path / "a", make_results()))
    assert {p.name for p in made} == EXPECTED and all(p.exists() for p in made)
    made += draw(_write(tmp_path / "b", make_warm_start()))
    assert made[-1].name == "warm_start.png"
    assert set(FIGURES) == {"table", "curves", "parametric", "esd", "surface", "sharpness_vs_loss", "batch_sweep",
                            "cost", "gap", "gap_scatter", "warm_start", "correlation", "breakeven"}
    made += FIGURES["correlation"](make_results(), tmp_path / "a")
    for p in made:
        if p.suffix == ".png":
            img = mpimg.imread(p)
            assert img.std() > 0.02, p.name
            assert img.shape[1] / 300 <= 3.6, (p.name, img.shape[1] / 300)  # one 3.3-inch column (+ tight bbox)


def test_formats_option_writes_every_format(tmp_path):
    with figure_options(formats="pdf,png"):
        made = draw(_write(tmp_path, make_results()))
    stems = {n.rsplit(".", 1)[0] for n in EXPECTED if n.endswith(".png")}
    for stem in stems:
        assert (tmp_path / f"{stem}.pdf").stat().st_size > 0 and (tmp_path / f"{stem}.png").exists(), stem
    assert all(p.exists() for p in made)


def test_a_figure_of_missing_data_fails_in_one_line(tmp_path):
    res = make_results(["warm_start"])
    from sharpness import SharpnessError

    with pytest.raises(SharpnessError, match=re.escape("cannot draw 'warm_start' (ValueError: warm_start: no run")):
        draw(_write(tmp_path, res))


def test_gap_scatter_best_draws_the_measures_with_the_largest_tau(tmp_path, monkeypatch):
    from sharpness.correlation import results_rows

    res = json.loads((Path(__file__).parent.parent / "figures" / "gap" / "results.json").read_text())
    res["spec"]["figures"]["gap_scatter"] = {"best": 3}
    seen = _capture(monkeypatch)
    FIGURES["gap_scatter"](res, tmp_path)
    table = results_rows(res)
    tau = sh.correlate(table.rows, table.measures, n_boot=10).tau
    top = sorted((m for m in table.measures if "." in m), key=lambda m: -tau[m])[:3]
    texts = [t.get_text() for ax in seen[0].axes for t in ax.texts if t.get_text().startswith("Kendall")]
    assert [f"{tau[m]:.2f}" for m in top] == [t.split("= ")[1].split(",")[0] for t in texts]
    assert [ax.get_ylabel() for ax in seen[0].axes if ax.texts][0] == "adaptive avg"  # the registry's label


def make_tracked() -> dict:
    """Break-even / edge-of-stability results: runs with tracker records (step, lambda_max)."""
    rng = np.random.default_rng(3)
    runs = {}
    for lr in (0.02, 0.1):
        for b in (32, 512):
            for s in SEEDS:
                run = _run(rng, f"B{b}-lr{lr}-seed{s}", b, s)
                run["config"]["lr"] = lr
                peak = 2.0 / (1 + 100 * lr / b) + 0.1 * s  # a lower peak at a larger η/B
                run["tracked"] = [{"step": t, "lambda_max": peak * t / 50 if t <= 50 else peak * 0.8, "mode": "train"}
                                  for t in range(10, 201, 10)]
                runs[f"B{b}-lr{lr}-seed{s}"] = run
    curves = [{"file": "eos.png", "panels": [{"x": "step", "y": "lambda_max", "source": "tracked", "stability": True}]}]
    return {"name": "tracked", "spec": {"name": "tracked", "figures": {"kinds": ["breakeven", "curves"],
                                                                        "curves": curves}}, "runs": runs}


def test_peak_rows_and_the_tracked_figures(tmp_path):
    from sharpness.reporting import peak_rows

    res = make_tracked()
    rows = {r["group"]: r for r in peak_rows(res)}
    assert set(rows) == {"B32-lr0.02", "B512-lr0.02", "B32-lr0.1", "B512-lr0.1"}
    r = rows["B32-lr0.1"]
    peaks = [2.0 / (1 + 100 * 0.1 / 32) + 0.1 * s for s in SEEDS]
    assert r["lr_over_b"] == 0.1 / 32 and np.isclose(r["peak"]["mean"], np.mean(peaks))
    assert np.isclose(r["peak"]["ci"], _t_half(peaks)) and r["peak"]["n"] == len(SEEDS)
    made = draw(_write(tmp_path, res))
    assert {p.name for p in made} >= {"breakeven.png", "eos.png"}
    for p in made:
        if p.suffix == ".png":
            assert mpimg.imread(p).std() > 0.02, p.name
    no_tracks = make_results(["breakeven"])
    with pytest.raises(sh.SharpnessError, match="cannot draw .breakeven.*no run has tracked"):
        draw(_write(tmp_path / "none", no_tracks))



def test_a_title_option_titles_every_experiment_figure(tmp_path, monkeypatch):
    from sharpness.plots import style

    titles = {}
    real = style.save

    def save(fig, path, **kw):
        if path is not None:
            titles[Path(path).name] = [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]
        return real(fig, path, **kw)

    for module in (figs, landscape_plots):
        monkeypatch.setattr(module, "save", save)
    with figure_options(title="Figure 2"):
        draw(_write(tmp_path, make_results()))
    pngs = {n for n in EXPECTED if n.endswith(".png")}
    assert pngs <= set(titles)
    assert all("Figure 2" in titles[n] for n in pngs), {n: titles[n] for n in pngs if "Figure 2" not in titles[n]}
    titles.clear()
    draw(_write(tmp_path, make_results()))
    assert not any("Figure 2" in t for t in titles.values())


def test_experiment_figures_in_a_venue_style_miss_no_glyph(tmp_path):
    import warnings

    res = make_results(["parametric", "curves"])
    res["spec"]["figures"]["curves"] = [{"file": "w.png", "panels": [{"x": "epoch", "y": "dist_from_init"}]}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph 8320 (SUBSCRIPT ZERO) missing from font(s) STIXGeneral"
        with figure_options(style="icml", formats="png,pdf"):
            made = draw(_write(tmp_path, res))
    assert any("parametric" in p.name for p in made) and (tmp_path / "w.pdf").exists()
