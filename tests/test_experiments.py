"""The experiment runner end to end on a tiny grid, and the figure/table step on committed results."""

import json
import re
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from sharpness import SharpnessError
from sharpness.cli import correlate_main, figures_main, run_main
from sharpness.experiments import (
    expand,
    find_experiment,
    load_experiment,
    packaged_experiments,
    run_experiment,
)
from sharpness.plots.experiments import draw
from sharpness.reporting import fit_critical_batch, time_to_target

GOLDEN = Path(__file__).parent / "golden"


def test_expand_grid_and_overrides():
    spec = load_experiment(GOLDEN / "tiny.toml", overrides=["base.lr=0.5", "grid.seed=[3]"])
    runs = expand(spec)
    assert [label for label, _ in runs] == ["B16-seed3", "B96-seed3"]
    assert all(cfg.lr == 0.5 for _, cfg in runs)
    for bad, msg in (("base.lr.x=5", "base.lr is 0.5, not a table"), ("name.x=1", "name is 'tiny', not a table")):
        with pytest.raises(SharpnessError, match=msg):
            load_experiment(GOLDEN / "tiny.toml", overrides=["base.lr=0.5", bad])


def test_runner_end_to_end_and_resume(tmp_path):
    args = [str(GOLDEN / "tiny.toml"), "--runs", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"),
            "--jobs", "2", "--no-progress"]
    assert run_main(args) == 0
    res = json.loads((tmp_path / "fig" / "tiny" / "results.json").read_text())
    assert set(res["runs"]) == {"B16-seed0", "B16-seed1", "B96-seed0", "B96-seed1"}
    assert len(res["runs"]["B16-seed0"]["along"]) == 3
    for png in ("curves", "curves_B16", "esd", "sharpness_vs_loss", "parametric_B16-seed0_B96-seed0",
                "surface", "batch_sweep", "cost"):
        img = mpimg.imread(tmp_path / "fig" / "tiny" / f"{png}.png")
        assert img.std() > 0.02, png
    # a second run trains nothing: every run folder has its done marker
    done = sorted((tmp_path / "runs" / "tiny").glob("*/done"))
    stamps = [p.stat().st_mtime_ns for p in done]
    assert run_main(args) == 0
    assert [p.stat().st_mtime_ns for p in done] == stamps


def test_figures_from_committed_results_match_golden_table(tmp_path):
    shutil.copytree(GOLDEN / "results", tmp_path / "tiny")
    made = draw(tmp_path / "tiny" / "results.json")
    for md in ("table.md", "cost.md"):
        assert (tmp_path / "tiny" / md).read_text() == (GOLDEN / md).read_text(), md
    assert len(made) >= 6 and all(p.exists() for p in made)
    assert figures_main(["tiny", "--figures", str(tmp_path), "--in-place"]) == 0


def test_fit_critical_batch_recovers_the_closed_form():
    b = np.array([16.0, 64, 256, 1024, 4096])
    steps = 1200 * (1 + 300 / b)  # McCandlish 2018: S = S_min (1 + B_crit / B)
    s_min, b_crit = fit_critical_batch(b, steps)
    assert abs(s_min - 1200) < 1e-6 * 1200 and abs(b_crit - 300) < 1e-6 * 300
    assert fit_critical_batch(b, 1000 / b) is None  # perfect scaling: no S_min > 0 to fit


def test_time_to_target_is_the_first_epoch_at_or_below_it():
    hist = [{"epoch": i + 1, "step": 10 * (i + 1), "examples": 160 * (i + 1), "wall_time": 0.5 * (i + 1),
             "train_loss": loss} for i, loss in enumerate([1.0, 0.4, 0.2, 0.25, 0.1])]
    assert time_to_target(hist, 0.2) == {"step": 30, "examples": 480, "wall_time": 1.5, "epoch": 3}
    assert time_to_target(hist, 0.05) is None


def test_a_bad_experiment_fails_before_any_training(tmp_path):
    good = (GOLDEN / "tiny.toml").read_text()
    cases = {
        "kind": (good.replace('kinds = ["table"', 'kinds = ["tabel"'), "figures.kinds: unknown figure kind(s) tabel"),
        "scalar grid": (good.replace("batch_size = [16, 96]", "batch_size = 16"), "grid.batch_size must be"),
        "name": (good.replace('name = "tiny"', "name = 3"), "name must be"),
        "analysis key": (good.replace("quick = true", "quick = true\nmeasurez = []"), "unknown analysis key"),
        "measure": (good.replace('"noise_scale"]', '"noise"]'), "analysis.measures[] must be one of"),
        "pair": (good.replace('pairs = [["B16-seed0", "B96-seed0"]]', 'pairs = [["B16-seed0", "B32"]]'),
                 "unknown runs"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.toml"
        path.write_text(text)
        with pytest.raises(SharpnessError, match=re.escape(message)):
            run_experiment(path, runs_root=tmp_path / "runs", figures_root=tmp_path / "fig")
        assert not (tmp_path / "runs").exists(), name
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe name")
    assert run_main([str(tmp_path / "bin.toml")]) == 2
    assert run_main([str(tmp_path)]) == 2


def test_figures_refuse_a_results_file_of_the_wrong_shape(tmp_path, capsys):
    for name, text in {"empty": "", "truncated": '{"name": "x", "runs": {', "list": "[]",
                       "runs": '{"name": "x", "spec": {}, "runs": 3}'}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
        assert figures_main([name, "--figures", str(tmp_path)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "results" in err, (name, err)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "experiments").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_committed_experiment_loads_and_expands(path):
    # a validation rule must never make a committed experiment unrunnable (hoffer's "LB+LR" once was)
    runs = expand(load_experiment(path))
    assert runs and len({label for label, _ in runs}) == len(runs)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_figures_and_correlate_write_to_a_scratch_folder_unless_told(tmp_path, monkeypatch, capsys):
    src = tmp_path / "committed"
    shutil.copytree(GOLDEN / "results", src / "tiny")
    before = _tree(src)
    monkeypatch.chdir(tmp_path)
    assert figures_main(["--figures", str(src)]) == 0
    assert _tree(src) == before  # the committed folder untouched
    assert (tmp_path / "results" / "tiny" / "table.md").read_text() == (GOLDEN / "table.md").read_text()
    assert figures_main(["tiny", "--figures", str(src), "--out", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "tiny" / "curves.png").exists() and _tree(src) == before
    assert correlate_main([str(src / "tiny" / "results.json"), "--n-boot", "20"]) == 0
    assert (tmp_path / "results" / "tiny" / "correlation.md").exists() and _tree(src) == before
    assert correlate_main([str(src / "tiny" / "results.json"), "--n-boot", "20", "--in-place"]) == 0
    assert (src / "tiny" / "correlation.md").exists()
    assert figures_main(["--figures", str(src), "--in-place"]) == 0
    assert (src / "tiny" / "table.md").exists()
    capsys.readouterr()
    for main, argv in ((figures_main, ["--figures", str(src)]), (correlate_main, [str(src / "tiny" / "results.json")])):
        assert main(argv + ["--in-place", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --in-place") and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_run_writes_results_to_a_scratch_folder_by_default(monkeypatch):
    import sharpness.experiments

    seen = []
    monkeypatch.setattr(sharpness.experiments, "run_experiment", lambda *a, **kw: seen.append(kw) or "r")
    assert run_main(["quickstart"]) == 0
    assert seen[0]["figures_root"] == "results" and seen[0]["progress"] is True
    assert run_main(["quickstart", "--figures", "figures", "--no-progress"]) == 0
    assert seen[1]["figures_root"] == "figures" and seen[1]["progress"] is False
    import inspect

    assert inspect.signature(run_experiment).parameters["figures_root"].default == "results"
    assert "/results/" in (Path(__file__).parent.parent / ".gitignore").read_text().split()


def test_figure_labels_rename_runs_in_legends(tmp_path, capsys):
    shutil.copytree(GOLDEN / "results", tmp_path / "in" / "tiny")
    out = tmp_path / "out"
    args = ["tiny", "--figures", str(tmp_path / "in"), "--out", str(out)]
    assert figures_main(args + ["--label", "B16=small batch", "--label", "B96=large"]) == 0
    table = (out / "tiny" / "table.md").read_text()
    assert "small batch" in table and "large" in table and "B16" not in table
    res = json.loads((tmp_path / "in" / "tiny" / "results.json").read_text())
    assert "B16-seed0" in res["runs"]  # results.json itself is never changed
    from sharpness.plots.experiments import rename_labels

    renamed = rename_labels(res, {"B16": "SB"})
    assert set(renamed["runs"]) == {"SB-seed0", "SB-seed1", "B96-seed0", "B96-seed1"}
    assert list(renamed["pairs"]) == [k.replace("B16", "SB") for k in res["pairs"]]
    capsys.readouterr()
    for bad in ("B1=x", "seed=x"):  # not a whole part of any label
        assert figures_main(args + ["--label", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "no run label" in err and err.count("\n") == 1, err
    assert figures_main(args + ["--label", "B16=B96"]) == 2  # two runs, one label
    assert "same label" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        figures_main(args + ["--label", "B16"])
    assert capsys.readouterr().err.startswith("error: argument --label: expected OLD=NEW")


def test_a_bare_name_runs_a_packaged_experiment_from_any_folder(tmp_path, monkeypatch):
    committed = sorted((Path(__file__).parent.parent / "experiments").glob("*.toml"))
    packaged = packaged_experiments()
    assert set(packaged) == {p.stem for p in committed}
    assert all(packaged[p.stem].read_bytes() == p.read_bytes() for p in committed)
    monkeypatch.chdir(tmp_path)  # no experiments/ here
    for name in ("quickstart", "quickstart.toml", "experiments/quickstart.toml"):
        assert find_experiment(name) == packaged["quickstart"], name
        assert load_experiment(name)["name"] == "quickstart"
    (tmp_path / "quickstart.toml").write_text('name = "mine"\n')
    assert find_experiment("quickstart.toml") == Path("quickstart.toml")  # a file that exists wins
    assert load_experiment("quickstart.toml")["name"] == "mine"
    for bad in ("no_such", "experiments/no_such.toml"):
        with pytest.raises(SharpnessError, match="no packaged experiment of that name; packaged: .*quickstart"):
            load_experiment(bad)
    assert run_main(["no_such", "--no-progress"]) == 2


def test_the_packaged_experiments_are_package_data():
    """The wheel takes sharpness/experiments_data/*.toml: a link to experiments/, one copy of each file."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    root = Path(__file__).parent.parent
    link = root / "sharpness" / "experiments_data"
    assert link.is_symlink() and link.resolve() == (root / "experiments").resolve()
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    assert "experiments_data/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["sharpness"]
    assert "-q" not in pyproject["tool"]["pytest"]["ini_options"].get("addopts", "")
