"""sh.correlate against hand computations (Jiang et al. 2020's τ and granulated Ψ), and its command."""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sharpness as sh
from sharpness.cli import correlate_main


def hand_tau(x, y):
    """(concordant − discordant) / C(n, 2), for data without ties."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in pairs)
    return s / len(pairs)


def test_tau_is_the_pair_count_and_the_interval_contains_it():
    rng = np.random.default_rng(0)
    gap = rng.normal(size=15)
    rows = [{"gap": g, "good": g + 0.3 * rng.normal(), "bad": -g, "noise": rng.normal()} for g in gap]
    res = sh.correlate(rows, ["good", "bad", "noise"], n_boot=300, seed=1)
    for m in ("good", "bad", "noise"):
        x = np.array([r[m] for r in rows])
        assert res.tau[m] == pytest.approx(hand_tau(x, gap), abs=1e-12)
        lo, hi = res.tau_ci[m]
        assert lo <= res.tau[m] <= hi and res.n[m] == 15
    assert res.tau["bad"] == -1.0 and res.tau_ci == sh.correlate(rows, ["good", "bad", "noise"], n_boot=300,
                                                                 seed=1).tau_ci  # seeded
    assert math.isnan(res.psi["good"])  # no axes: no Ψ


def test_granulated_psi_is_the_mean_over_axes_of_the_mean_within_groups():
    # gap = a + 10·b. The measure follows the gap along a (ψ_a = +1) but runs against it along b
    # (ψ_b = −1): τ over all runs is positive while Ψ = 0 — Jiang's reason for Ψ.
    rows = []
    for a, b in itertools.product([1, 2, 3], [0, 1]):
        rows.append({"a": a, "b": b, "gap": a + 10 * b, "m": a - 10 * b, "seedless": 1.0})
    res = sh.correlate(rows, ["m"], axes=["a", "b"], n_boot=50)
    assert res.per_axis["m"] == {"a": 1.0, "b": -1.0} and res.psi["m"] == 0.0
    assert res.groups_used["m"] == {"a": 2, "b": 3}
    assert res.tau["m"] == pytest.approx(hand_tau(np.array([r["m"] for r in rows]), np.array([r["gap"] for r in rows])))
    # a held-out table where one group's τ is undefined (constant measure): it is left out of ψ
    rows2 = rows + [{"a": a, "b": 2, "gap": a + 20, "m": 5.0} for a in (1, 2, 3)]
    res2 = sh.correlate(pd.DataFrame(rows2), ["m"], axes=["a", "b"], n_boot=50)  # a DataFrame works too
    assert res2.groups_used["m"]["a"] == 2 and res2.per_axis["m"]["a"] == 1.0


def test_bad_input_is_one_line():
    with pytest.raises(sh.SharpnessError, match="no row has a column 'gapp'"):
        sh.correlate([{"gap": 1.0, "m": 2.0}], ["m"], gap="gapp")
    with pytest.raises(sh.SharpnessError, match="no runs"):
        sh.correlate([], ["m"])
    with pytest.raises(sh.SharpnessError, match="measures"):
        sh.correlate([{"gap": 1.0}], "m")


def test_the_command_on_committed_results(tmp_path, capsys):
    src = Path(__file__).parent.parent / "figures" / "keskar_fig4" / "results.json"
    (tmp_path / "results.json").write_text(src.read_text())
    assert correlate_main([str(tmp_path / "results.json"), "--n-boot", "50"]) == 0
    table = (tmp_path / "correlation.md").read_text()
    res = json.loads(src.read_text())
    rows = [(r["final"]["eigenvalues"]["lambda_max"], r["history"][-1]["test_loss"] - r["history"][-1]["train_loss"])
            for r in res["runs"].values()]
    from scipy import stats
    tau = stats.kendalltau([x for x, _ in rows], [g for _, g in rows]).statistic
    assert f"| eigenvalues.lambda_max | 24 | {tau:+.2f} |" in table and "ψ batch_size" in table
    assert "| dist_from_init | 24 |" in table
    capsys.readouterr()
    assert correlate_main([str(tmp_path / "results.json"), "--gap", "nope"]) == 2
    assert "no row has a column 'nope'" in capsys.readouterr().err


def test_the_correlation_figure_draws_what_correlate_computes(tmp_path):
    from sharpness.correlation import results_rows
    from sharpness.plots.experiments import FIGURES

    res = json.loads((Path(__file__).parent.parent / "figures" / "gap" / "results.json").read_text())
    res["spec"]["figures"]["correlation"] = {"n_boot": 50}
    png, md = FIGURES["correlation"](res, tmp_path)
    assert png.exists() and png.stat().st_size > 10_000
    rows, measures, axes, left_out = results_rows(res)
    assert left_out == []
    assert axes == ["batch_size", "variant"]
    r = sh.correlate(rows, measures, axes=axes, n_boot=50)
    for m in measures:
        assert f"| {m} | {r.n[m]} | {r.tau[m]:+.2f} |" in md.read_text()


def test_runs_that_missed_the_target_loss_are_left_out_and_named(tmp_path):
    from sharpness.correlation import results_rows

    res = json.loads((Path(__file__).parent.parent / "figures" / "gap" / "results.json").read_text())
    missed = "fixed-B2048-seed1"
    res["runs"][missed]["history"][-1]["train_loss"] = 0.02  # above the runs' target_train_loss = 0.01
    table = results_rows(res)
    assert table.left_out == [missed] and missed not in [r["run"] for r in table.rows]
    assert len(table.rows) == len(res["runs"]) - 1
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert correlate_main([str(tmp_path / "results.json"), "--n-boot", "20"]) == 0
    text = (tmp_path / "correlation.md").read_text()
    assert f"1 of 24 runs did not reach their target training loss and are left out ({missed})" in text
    assert "| eigenvalues.lambda_max | 23 |" in text
