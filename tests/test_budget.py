"""The plan before the work, ``budget=``/``--budget``, ``--dry-run``, and an error bar on every number."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sharpness import SharpnessError, analyze
from sharpness.budget import Sizes, Units, fit_budget, unit_costs
from sharpness.cli import analyze_main
from sharpness.curvature import DenseOperator, spectral_density
from sharpness.landscape import surface
from sharpness.measures.noise_scale import gradient_noise_scale
from sharpness.measures.pacbayes import pacbayes_flatness
from sharpness.measures.registry import MEASURES
from sharpness.objective import Objective


def _data(n, seed=0, dim=6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 0.8).long()


def _net(seed=0, dim=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 10), nn.Tanh(), nn.Linear(10, 3))


TRAIN, TEST = _data(96, 0), _data(32, 1)
FAST = {"landscape2d": {"steps": 5}, "landscape1d": {"steps": 5}, "eps_sharpness": {"max_iter": 2},
        "pacbayes": {"n_draws": 4, "iters": 4}, "adaptive": {"steps": 2, "n_samples": 64}}


def test_dry_run_plans_every_measure_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    rep = analyze(_net(), data=(TRAIN, TEST), out=out, dry_run=True, quick=True, progress=False)
    plan = rep.data["plan"]
    assert not out.exists() and rep.out is None and rep.data["checkpoints"] == {}
    names = {row["measure"] for row in plan["measures"]}
    assert names == {n for n, m in MEASURES.items() if not m.pair}
    assert all(row["planned_seconds"] >= 0 and row["work"] for row in plan["measures"])
    units = plan["units"]
    assert all(units[f"{k}_seconds_per_pass"] > 0 for k in ("forward", "gradient", "hvp", "per_example"))
    assert plan["total_seconds"] >= sum(row["planned_seconds"] for row in plan["measures"])
    assert "plan on cpu" in capsys.readouterr().err  # dry-run shows it even with progress off


def test_unit_costs_fit_overhead_and_per_example_cost():
    obj = Objective(_net(), "cross_entropy", TRAIN)
    u = unit_costs(obj)
    assert u.batch == 96 and u.seconds > 0
    for kind in ("forward", "gradient", "hvp"):
        a, c = u.fit[kind]
        assert a >= 0 and c >= 0 and u.pass_seconds(kind, 96) > 0
        # batches as the objective makes them: two full batches cost twice one
        assert u.pass_seconds(kind, 192) == pytest.approx(2 * u.pass_seconds(kind, 96))


UNITS = Units({"forward": (0.0, 1e-4), "gradient": (0.0, 3e-4), "hvp": (0.0, 6e-4), "per_example": (0.0, 3e-3)},
              batch=1000, device="cpu", seconds=0.0)
SIZES = Sizes(work=8000, train=8000, test=2000, params=300_000)


def _start():
    return {n: dict(m.settings) for n, m in MEASURES.items() if not m.pair}


def test_fit_budget_steps_down_until_the_plan_fits_and_skips_with_the_reason():
    measures = [m for m in MEASURES.values() if not m.pair]
    full, work = fit_budget(measures, _start(), SIZES, UNITS, None)
    total = sum(c.seconds for c in full.values())
    assert work == 8000 and all(c.steps == 0 and not c.skipped for c in full.values())
    for budget in (total / 3, total / 10):
        chosen, work = fit_budget(measures, _start(), SIZES, UNITS, budget)
        assert sum(c.seconds for c in chosen.values()) <= budget
        assert work < 8000 or any(c.steps for c in chosen.values())
        assert not any(c.skipped for c in chosen.values())
    # the user's subset is kept (work_fixed): the measures step down, then the dearest are skipped
    chosen, work = fit_budget(measures, _start(), SIZES, UNITS, 0.5, work_fixed=True)
    assert work == 8000
    skipped = [c for c in chosen.values() if c.skipped]
    assert skipped and all("cheapest settings" in c.skipped and c.seconds == 0 for c in skipped)
    assert sum(c.seconds for c in chosen.values()) <= 0.5


def test_a_budget_run_ends_near_its_budget_and_records_the_settings_it_chose(tmp_path):
    rep = analyze(_net(), data=(_data(600, 0), TEST), out=tmp_path / "b", budget=8, progress=False)
    m = rep.data["checkpoints"]["model"]["measures"]
    assert not rep.failed
    assert rep.data["plan"]["budget"] == 8
    ran = [r for r in m.values() if "summary" in r]
    assert sum(r["seconds"] for r in ran) <= 8 * 1.15
    assert all(r["planned_seconds"] is not None for r in ran)
    assert rep.data["settings"]["variant"]["budget"] == 8  # its own folder: never a default run's cache


def _checkpoint(tmp_path):
    import sharpness as sh

    sh.register_data("budget_test_data", lambda: (TRAIN, TEST))
    sh.register_model("budget_test_net", lambda: _net())
    path = tmp_path / "net.pt"
    torch.save(_net().state_dict(), path)
    return [str(path), "--model", "budget_test_net", "--data", "budget_test_data"]


@pytest.mark.parametrize("value", ["0", "nan", "-3"])
def test_cli_refuses_a_bad_budget_in_one_line(tmp_path, capsys, value):
    assert analyze_main([*_checkpoint(tmp_path), "--out", str(tmp_path / "o"), f"--budget={value}"]) == 2
    err = capsys.readouterr().err
    assert "budget must be a number of seconds" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_cli_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    code = analyze_main([*_checkpoint(tmp_path), "--out", str(out), "--dry-run", "--quick", "--no-progress"])
    assert code == 0 and not out.exists()
    err = capsys.readouterr().err
    assert "plan on cpu" in err and "landscape2d" in err and "total ≈" in err


def test_every_reported_number_has_an_error_bar_and_subsets_add_their_subsampling_error(tmp_path):
    rep = analyze(_net(), data=(TRAIN, TEST), out=None, max_samples=48, settings=FAST, progress=False)
    m = rep.data["checkpoints"]["model"]["measures"]
    for name, r in m.items():
        if "summary" not in r:
            continue
        numbers = [k for k, v in r["summary"].items() if isinstance(v, float) and not k.startswith("n_")
                   and not k.endswith(("stderr", "_bound"))]  # (an error bar itself)
        missing = [k for k in numbers if k not in r["errors"]]
        assert not missing, (name, missing)
    eig = m["eigenvalues"]
    sub = eig["details"]["subsample"]
    assert sub["n"] == 48 and sub["N"] == 96 and sub["half"] == 24
    # solver bound and subsampling error, added in quadrature
    assert eig["errors"]["lambda_max"] == pytest.approx(math.hypot(eig["summary"]["lambda_max_bound"],
                                                                   sub["errors"]["lambda_max"]))
    assert sub["errors"]["lambda_max"] == pytest.approx(
        abs(sub["values"]["lambda_max"] - eig["summary"]["lambda_max"]) * math.sqrt(1 - 48 / 96))
    assert m["loss"]["errors"]["train_loss"] == 0.0  # the whole training set: exact
    assert "±" in rep.table()


def test_the_surface_on_two_halves_is_the_surface_on_the_subset(tmp_path):
    net = _net()
    rep = analyze(net, data=(TRAIN, TEST), out=None, measures=["landscape2d"], max_samples=64,
                  settings={"landscape2d": {"steps": 5}}, progress=False)
    r = rep.data["checkpoints"]["model"]["measures"]["landscape2d"]
    assert r["details"]["halves"] and r["details"]["n_samples"] == 64
    sub = Objective(net, "cross_entropy", TRAIN).subset(64, 0)
    whole = surface(sub, dims=2, steps=5, seed=0, directions="filter")
    np.testing.assert_allclose(rep.arrays["model/landscape2d/loss"], whole.loss, rtol=1e-5, atol=1e-6)
    se = rep.arrays["model/landscape2d/loss_stderr"]
    assert se.shape == whole.loss.shape and (se >= 0).all() and se.max() > 0
    assert r["errors"]["max_loss"] == pytest.approx(float(se.flat[np.nanargmax(whole.loss)]), rel=1e-6)
    # on the whole training set: no halves, no subsampling error
    rep = analyze(net, data=(TRAIN, TEST), out=None, measures=["landscape2d"],
                  settings={"landscape2d": {"steps": 5}}, progress=False)
    r = rep.data["checkpoints"]["model"]["measures"]["landscape2d"]
    assert not r["details"]["halves"] and r["errors"]["max_loss"] == 0.0


def test_per_example_noise_scale_jackknife_matches_the_definition():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    r = gradient_noise_scale(net, "cross_entropy", (x, y), batch_sizes="per-example")
    grads = []
    for i in range(40):
        net.zero_grad()
        nn.functional.cross_entropy(net(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    g = torch.stack(grads)
    groups = 16  # example i in group i mod 16

    def b_simple(rows):
        G = rows.mean(0)
        return float(((rows ** 2).sum(1).mean() - G @ G) / (G @ G))

    assert r.b_simple == pytest.approx(b_simple(g), rel=1e-9)
    jack = np.array([b_simple(g[torch.arange(40) % groups != j]) for j in range(groups)])
    expect = math.sqrt((groups - 1) / groups * ((jack - jack.mean()) ** 2).sum())
    assert r.stderr == pytest.approx(expect, rel=1e-9) and r.stderr > 0


def test_density_residuals_bound_the_distance_to_an_eigenvalue():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    eig = np.concatenate([np.linspace(-1, 1, 57), [3.0, 5.0, 9.0]])
    r = spectral_density(DenseOperator(Q @ np.diag(eig) @ Q.T), n_runs=2, steps=12, seed=0)
    ok = ~np.isnan(r.nodes)
    dist = np.abs(r.nodes[ok][:, None] - eig[None, :]).min(1)
    assert (dist <= r.residuals[ok] + 1e-10).all()
    top = np.nanargmax(r.nodes[0])
    assert r.residuals[0, top] < 1e-3  # the outlier at 9 has converged in 12 steps: a small bound


def test_pacbayes_sigma_error_is_the_loss_error_over_the_slope():
    x, y = _data(200, 3)
    r = pacbayes_flatness(_net(), "cross_entropy", (x, y), n_draws=8, iters=8, seed=0)
    assert 0 < r.sigma_stderr < r.sigma and r.value_stderr == pytest.approx(2 * r.sigma_stderr / r.sigma ** 3)
    more = pacbayes_flatness(_net(), "cross_entropy", (x, y), n_draws=64, iters=8, seed=0)
    assert more.sigma_stderr < r.sigma_stderr  # more draws, a smaller Monte-Carlo error


def test_budget_is_validated_before_any_work(tmp_path):
    for bad in (0, -1, float("inf"), True, "10"):
        with pytest.raises(SharpnessError, match="budget must be a number of seconds"):
            analyze(_net(), data=(TRAIN, TEST), out=tmp_path / "x", budget=bad, progress=False)
    assert not (tmp_path / "x").exists()


def test_numpy_blas_runs_one_thread_inside_the_analyzers_and_is_restored_after(restore_measures):
    # NumPy's/SciPy's OpenBLAS threads spin after each small call and took the cores from torch's products
    from threadpoolctl import threadpool_info

    import sharpness as sh

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    seen = {}

    @sh.register_measure("blas_probe")
    def probe(ctx, settings):
        seen["threads"] = blas_threads()
        return sh.Record(summary={})

    analyze(_net(), data=(TRAIN, TEST), out=None, measures=["blas_probe"], progress=False)
    assert seen["threads"] and set(seen["threads"]) == {1}
    assert blas_threads() == before


def test_several_checkpoints_share_a_budget_with_labels_pairs_and_their_own_units(tmp_path):
    # a held-out review found: every measure skipped for two checkpoints (12 figure-seconds taken off a
    # 6 s budget), the plan's rows named "checkpoint 0", no pair rows, the first model's units for all
    nets = {"a": _net(0), "b": nn.Sequential(nn.Linear(6, 300), nn.Tanh(), nn.Linear(300, 3))}
    rep = analyze(nets, data=(TRAIN, TEST), out=tmp_path / "two", budget=12, settings=FAST, progress=False)
    ms = rep.data["checkpoints"]
    assert not [f"{lb}/{m}" for lb, e in ms.items() for m, r in e["measures"].items() if r.get("status")]
    rows = {(r["checkpoint"], r["measure"]): r for r in rep.data["plan"]["measures"]}
    assert ("a→b", "interpolation") in rows and ("b", "eigenvalues") in rows and "index" not in rows[("b", "trace")]
    for lb in ("a", "b"):  # the entry's planned seconds are its own checkpoint's plan
        assert ms[lb]["measures"]["eigenvalues"]["planned_seconds"] == pytest.approx(
            rows[(lb, "eigenvalues")]["planned_seconds"])
    lines = rep.table().splitlines()
    cols = [len(line) for line in lines[1:] if "±" in line or "%" in line]
    assert len(set(cols)) == 1  # "value ± error" cells stay in their columns


def test_the_users_own_settings_run_as_given_under_a_budget(restore_measures):
    import time

    import sharpness as sh

    @sh.register_measure("slow_probe")
    def slow(ctx, settings):
        time.sleep(1.2)
        return sh.Record(summary={"x": 1.0})

    rep = analyze(_net(), data=(_data(400), TEST), out=None, budget=1.5, progress=False,
                  measures=["slow_probe", "landscape2d"], settings={"landscape2d": {"steps": 9}})
    entry = rep.data["checkpoints"]["model"]["measures"]["landscape2d"]
    assert entry["settings"]["steps"] == 9 and "summary" in entry


def test_quick_subset_is_the_budgets_to_shrink_but_a_named_one_is_kept():
    big = _data(6000)
    wide = nn.Sequential(nn.Linear(6, 512), nn.Tanh(), nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 3))
    plan = analyze(wide, data=(big, TEST), out=None, quick=True, budget=1, dry_run=True, progress=False).data["plan"]
    assert plan["curvature_examples"][0] < 1000
    plan = analyze(wide, data=(big, TEST), out=None, max_samples=1000, budget=1, dry_run=True,
                   progress=False).data["plan"]
    assert plan["curvature_examples"] == [1000]
