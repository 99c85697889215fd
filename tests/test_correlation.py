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


# 2 axes (a, b ∈ {1, 2}) × 2 seeds. (a, b, seed, measure m, gap g); m runs 1..8, so τ over a set of runs is
# read off the order of their gaps. Within the configurations of b = 1 the two seeds disagree (m up, g down),
# which pooling counts as discordant pairs although a does not change between them.
SEEDED = [(1, 1, 0, 1, 2), (1, 1, 1, 2, 1), (2, 1, 0, 3, 4), (2, 1, 1, 4, 3),
          (1, 2, 0, 5, 8), (1, 2, 1, 6, 7), (2, 2, 0, 7, 6), (2, 2, 1, 8, 5)]


def _seeded_rows():
    return [{"a": a, "b": b, "seed": s, "m": m, "gap": g} for a, b, s, m, g in SEEDED]


def test_replicates_are_averaged_per_configuration_before_tau_and_psi():
    # Configuration means (m, g): (a1, b1) = (1.5, 1.5), (a2, b1) = (3.5, 3.5), (a1, b2) = (5.5, 7.5),
    # (a2, b2) = (7.5, 5.5).
    # ψ_a, groups by b: b = 1: (1.5, 1.5) vs (3.5, 3.5) concordant → +1; b = 2: (5.5, 7.5) vs (7.5, 5.5)
    #   discordant → −1; ψ_a = (1 − 1)/2 = 0.
    # ψ_b, groups by a: a = 1: (1.5, 1.5) vs (5.5, 7.5) → +1; a = 2: (3.5, 3.5) vs (7.5, 5.5) → +1; ψ_b = 1.
    # Ψ = (0 + 1)/2 = 0.5.
    # τ over the 4 configurations: by m the gaps are 1.5, 3.5, 7.5, 5.5 — 1 discordant pair of 6 → (5 − 1)/6.
    res = sh.correlate(_seeded_rows(), ["m"], axes=["a", "b"], n_boot=50)  # default: rows have a seed
    assert res.replicates == "seed" and res.n["m"] == 8 and res.configs["m"] == 4
    assert res.per_axis["m"] == {"a": 0.0, "b": 1.0} and res.psi["m"] == 0.5
    assert res.groups_used["m"] == {"a": 2, "b": 2}
    assert res.tau["m"] == pytest.approx(4 / 6, abs=1e-12)
    assert sh.correlate(_seeded_rows(), ["m"], axes=["a", "b"], replicates="seed", n_boot=50).to_dict() == res.to_dict()
    # the same numbers, interval included, as the 4 averaged rows given as runs: the bootstrap resamples
    # configurations, not runs
    means = [{"a": a, "b": b, "m": m, "gap": g} for a, b, m, g in
             [(1, 1, 1.5, 1.5), (2, 1, 3.5, 3.5), (1, 2, 5.5, 7.5), (2, 2, 7.5, 5.5)]]
    flat = sh.correlate(means, ["m"], axes=["a", "b"], n_boot=50)
    assert flat.replicates is None
    assert (flat.tau, flat.tau_ci, flat.psi, flat.per_axis) == (res.tau, res.tau_ci, res.psi, res.per_axis)
    text = res.markdown("the table")
    assert "over the configurations (each one's runs averaged over `seed`)" in text
    assert "| measure | n | configs | τ |" in text and "| m | 8 | 4 | +0.67 |" in text


def test_pooled_replicates_are_the_earlier_answer():
    # replicates=None: every run a point, seeds pooled in ψ's groups (what correlate computed before).
    # ψ_a, groups by b: b = 1: runs (1,2) (2,1) (3,4) (4,3): gaps by m 2, 1, 4, 3 — 2 discordant pairs of 6
    #   (the two seed pairs) → (4 − 2)/6 = 1/3; b = 2: gaps 8, 7, 6, 5 — all 6 discordant → −1;
    #   ψ_a = (1/3 − 1)/2 = −1/3.
    # ψ_b, groups by a: a = 1: (1,2) (2,1) (5,8) (6,7): gaps 2, 1, 8, 7 → 2 discordant → 1/3; a = 2: (3,4) (4,3)
    #   (7,6) (8,5): gaps 4, 3, 6, 5 → 2 discordant → 1/3; ψ_b = 1/3.  Ψ = (−1/3 + 1/3)/2 = 0.
    # τ over the 8 runs: gaps by m 2, 1, 4, 3, 8, 7, 6, 5 — 1 + 1 + 6 = 8 discordant pairs of 28 → 12/28.
    res = sh.correlate(_seeded_rows(), ["m"], axes=["a", "b"], replicates=None, n_boot=50)
    assert res.replicates is None and res.n["m"] == res.configs["m"] == 8
    assert res.per_axis["m"]["a"] == pytest.approx(-1 / 3, abs=1e-12)
    assert res.per_axis["m"]["b"] == pytest.approx(1 / 3, abs=1e-12)
    assert res.psi["m"] == pytest.approx(0.0, abs=1e-12)
    assert res.tau["m"] == pytest.approx(12 / 28, abs=1e-12)
    rows = _seeded_rows()
    assert res.tau["m"] == pytest.approx(hand_tau(np.array([r["m"] for r in rows]), np.array([r["gap"] for r in rows])))
    assert "| measure | n | τ |" in res.markdown("the table") and "over the runs of" in res.markdown("the table")


def test_replicate_handling_without_replicates_changes_nothing_and_uneven_seeds_average():
    # one run per configuration: averaging is a no-op, whatever the seeds are called
    rows = [{"a": a, "b": b, "seed": 10 * a + b, "gap": a + 10 * b, "m": a - 10 * b + 0.1 * a * b}
            for a, b in itertools.product([1, 2, 3], [0, 1])]
    kept, pooled = (sh.correlate(rows, ["m"], axes=["a", "b"], replicates=r, n_boot=50) for r in ("seed", None))
    assert kept.replicates == "seed" and (kept.tau, kept.tau_ci, kept.psi, kept.per_axis, kept.groups_used) == (
        pooled.tau, pooled.tau_ci, pooled.psi, pooled.per_axis, pooled.groups_used)
    # uneven replicates, a missing value: each configuration is the mean of its runs that have both values
    rows = [{"a": 1, "seed": 0, "m": 1.0, "gap": 1.0}, {"a": 1, "seed": 1, "m": 3.0, "gap": 9.0},
            {"a": 1, "seed": 2, "m": 5.0, "gap": 2.0},      # a = 1: m 3, gap 4
            {"a": 2, "seed": 0, "m": 2.0, "gap": 6.0},
            {"a": 2, "seed": 1, "m": None, "gap": 0.0},     # left out for m: a = 2 is m 2, gap 6
            {"a": 3, "seed": 7, "m": 4.0, "gap": 5.0}]      # a = 3: m 4, gap 5
    # by m: a = 2 (gap 6), a = 1 (gap 4), a = 3 (gap 5) → pairs (2,1) discordant, (2,3) discordant,
    # (1,3) concordant: τ = (1 − 2)/3 = ψ_a (one group: no other axis)
    res = sh.correlate(rows, ["m"], axes=["a"], n_boot=50)
    assert res.n["m"] == 5 and res.configs["m"] == 3
    assert res.tau["m"] == pytest.approx(-1 / 3) and res.per_axis["m"]["a"] == pytest.approx(-1 / 3)
    # the default is None without axes (no configurations) and where the seed is itself an axis
    assert sh.correlate(_seeded_rows(), ["m"], n_boot=50).replicates is None
    both = sh.correlate(_seeded_rows(), ["m"], axes=["a", "seed"], n_boot=50)
    assert both.replicates is None and both.configs["m"] == 8


def test_bad_input_is_one_line():
    with pytest.raises(sh.SharpnessError, match="no row has a column 'gapp'"):
        sh.correlate([{"gap": 1.0, "m": 2.0}], ["m"], gap="gapp")
    with pytest.raises(sh.SharpnessError, match="no runs"):
        sh.correlate([], ["m"])
    with pytest.raises(sh.SharpnessError, match="measures"):
        sh.correlate([{"gap": 1.0}], "m")


def test_bad_replicates_are_one_line():
    rows = _seeded_rows()
    for replicates, message in [
            ("sed", "replicates='sed': no row has that column; columns: a, b, gap, m, seed"),
            (3, "replicates"),
            ("b", "replicates='b' is also one of the axes")]:
        with pytest.raises(sh.SharpnessError, match=message) as e:
            sh.correlate(rows, ["m"], axes=["a", "b"], replicates=replicates)
        assert "\n" not in str(e.value)
    with pytest.raises(sh.SharpnessError, match="replicates='seed' needs axes"):
        sh.correlate(rows, ["m"], replicates="seed")
    # rows that share every axis and the seed differ in something else: not replicates, not averaged
    with pytest.raises(sh.SharpnessError, match=r"replicates='seed' \(the default: the rows have a seed\): two rows "
                                                r"share every axis \(a=1\) and seed=0"):
        sh.correlate(rows, ["m"], axes=["a"])
    with pytest.raises(sh.SharpnessError, match=r"replicates='seed': two rows share every axis \(a=1\) and seed=0"):
        sh.correlate(rows, ["m"], axes=["a"], replicates="seed")
    assert sh.correlate(rows, ["m"], axes=["a"], replicates=None).replicates is None  # pooled is still allowed


def test_the_command_on_committed_results(tmp_path, capsys):
    src = Path(__file__).parent.parent / "figures" / "keskar_fig4" / "results.json"
    (tmp_path / "results.json").write_text(src.read_text())
    assert correlate_main([str(tmp_path / "results.json"), "--n-boot", "50", "--in-place"]) == 0
    table = (tmp_path / "correlation.md").read_text()
    res = json.loads(src.read_text())
    rows = [(r["final"]["eigenvalues"]["lambda_max"], r["history"][-1]["test_loss"] - r["history"][-1]["train_loss"])
            for r in res["runs"].values()]
    from scipy import stats
    # the three seeds of each batch size averaged (the default, replicates="seed"): τ over 8 configurations
    by_b: dict[int, list] = {}
    for r, v in zip(res["runs"].values(), rows):
        by_b.setdefault(r["config"]["batch_size"], []).append(v)
    means = [np.mean(v, axis=0) for v in by_b.values()]
    assert [len(v) for v in by_b.values()] == [3] * 8
    tau = stats.kendalltau([x for x, _ in means], [g for _, g in means]).statistic
    pooled = stats.kendalltau([x for x, _ in rows], [g for _, g in rows]).statistic
    assert f"{tau:+.2f}" != f"{pooled:+.2f}"  # the test tells the two apart
    assert f"| eigenvalues.lambda_max | 24 | 8 | {tau:+.2f} |" in table and "ψ batch_size" in table
    assert "| dist_from_init | 24 | 8 |" in table and "averaged over `seed`" in table
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
    assert r.replicates == "seed"
    for m in measures:
        assert f"| {m} | {r.n[m]} | {r.configs[m]} | {r.tau[m]:+.2f} |" in md.read_text()


def test_runs_that_missed_the_target_loss_are_left_out_and_named(tmp_path):
    from sharpness.correlation import results_rows

    res = json.loads((Path(__file__).parent.parent / "figures" / "gap" / "results.json").read_text())
    missed = "fixed-B2048-seed1"
    res["runs"][missed]["history"][-1]["train_loss"] = 0.02  # above the runs' target_train_loss = 0.01
    table = results_rows(res)
    assert table.left_out == [missed] and missed not in [r["run"] for r in table.rows]
    assert len(table.rows) == len(res["runs"]) - 1
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert correlate_main([str(tmp_path / "results.json"), "--n-boot", "20", "--in-place"]) == 0
    text = (tmp_path / "correlation.md").read_text()
    assert f"1 of 24 runs did not reach their target training loss and are left out ({missed})" in text
    assert "| eigenvalues.lambda_max | 23 | 8 |" in text  # 23 runs; its configuration keeps its other two seeds
