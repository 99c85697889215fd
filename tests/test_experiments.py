"""The experiment runner end to end on a tiny grid, and the figure/table step on committed results."""

import json
import shutil
from pathlib import Path

import matplotlib.image as mpimg

from sharpness.cli import figures_main, run_main
from sharpness.experiments import expand, load_experiment
from sharpness.plots.experiments import draw

GOLDEN = Path(__file__).parent / "golden"


def test_expand_grid_and_overrides():
    spec = load_experiment(GOLDEN / "tiny.toml", overrides=["base.lr=0.5", "grid.seed=[3]"])
    runs = expand(spec)
    assert [label for label, _ in runs] == ["B16-seed3", "B96-seed3"]
    assert all(cfg.lr == 0.5 for _, cfg in runs)


def test_runner_end_to_end_and_resume(tmp_path):
    args = [str(GOLDEN / "tiny.toml"), "--runs", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"),
            "--jobs", "2", "--no-progress"]
    assert run_main(args) == 0
    res = json.loads((tmp_path / "fig" / "tiny" / "results.json").read_text())
    assert set(res["runs"]) == {"B16-seed0", "B16-seed1", "B96-seed0", "B96-seed1"}
    assert len(res["runs"]["B16-seed0"]["along"]) == 3
    for png in ("curves", "esd", "sharpness_vs_loss", "parametric_B16-seed0_B96-seed0", "surface_B16-seed0"):
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
    assert (tmp_path / "tiny" / "table.md").read_text() == (GOLDEN / "table.md").read_text()
    assert len(made) >= 6 and all(p.exists() for p in made)
    assert figures_main(["tiny", "--figures", str(tmp_path)]) == 0
