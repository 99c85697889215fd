import json
import math
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

import sharpness
from helpers import tiny_config, user_module
from sharpness import analyze, train_model
from sharpness.analysis import MEASURES, SCHEMA, SCHEMA_VERSION
from sharpness.cli import analyze_main
from sharpness.curvature import HessianOperator, hessian_eigenvalues
from sharpness.measures import builtin
from sharpness.objective import Objective


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    sb = train_model(tiny_config(batch_size=16, epochs=3), root / "sb", progress=False)
    lb = train_model(tiny_config(batch_size=96, epochs=3), root / "lb", progress=False)
    return root, sb, lb


def all_finite(x):
    if isinstance(x, dict):
        return all(all_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(all_finite(v) for v in x)
    if isinstance(x, float):
        return math.isfinite(x)
    return True


def nontrivial_png(path):
    img = mpimg.imread(path)
    return path.stat().st_size > 5000 and img.std() > 0.02


def test_end_to_end_report_figures_cache(runs, tmp_path, monkeypatch, capsys):
    root, sb, lb = runs
    out = tmp_path / "an"
    code = analyze_main([str(root / "sb" / "final.pt"), str(root / "lb" / "final.pt"), "--quick", "--out", str(out),
                         "--no-progress"])
    assert code == 0
    table = capsys.readouterr().out
    assert "λ_max" in table and "final" in table
    r = json.loads((out / "report.json").read_text())
    assert r["schema"] == SCHEMA and r["version"] == SCHEMA_VERSION and r["settings"]["quick"] is True
    assert r["toolkit"] == sharpness.__version__ and r["torch"] == str(torch.__version__)
    labels = list(r["checkpoints"])
    assert labels == ["sb_final", "lb_final"]
    for label in labels:
        e = r["checkpoints"][label]
        assert len(e["sha256"]) == 64 and e["model"]["name"] == "mlp"
        assert set(e["measures"]) == set(MEASURES) - {"interpolation"}
        for name, m in e["measures"].items():
            assert {"summary", "details", "settings", "seed", "seconds"} <= set(m), name
            assert all_finite(m["summary"]), (name, m["summary"])
        assert e["measures"]["eigenvalues"]["summary"]["n_hvps"] > 0
        assert e["measures"]["eps_sharpness"]["summary"]["n_evals"] > 0
        for png in ("density", "landscape1d", "landscape2d", "landscape3d"):
            assert nontrivial_png(out / f"{png}_{label}.png"), png
    assert "sb_final→lb_final" in r["pairs"] and nontrivial_png(out / "parametric_sb_final_lb_final.png")
    arrays = np.load(out / "arrays.npz")
    assert arrays["sb_final/landscape2d/loss"].shape == (11, 11)

    # the eigenvalues match a direct call with the same data, settings and seed
    train, _ = sb.datasets()
    work = Objective(sb.model(), None, train).subset(r["settings"]["max_samples"], 0)
    direct = hessian_eigenvalues(HessianOperator(work), k=5, tol=1e-2, seed=0)
    assert np.allclose(r["checkpoints"]["sb_final"]["measures"]["eigenvalues"]["summary"]["top"], direct.values,
                       rtol=1e-6)

    # a second run reuses every cached measure: no Hessian product is computed
    def boom(*a, **k):
        raise AssertionError("recomputed a cached measure")

    monkeypatch.setattr(builtin, "hessian_eigenvalues", boom)
    monkeypatch.setattr(builtin, "spectral_density", boom)
    again = analyze([root / "sb" / "final.pt", root / "lb" / "final.pt"], out=out, quick=True, progress=False)
    assert again.data["checkpoints"]["sb_final"]["measures"]["eigenvalues"] == \
        r["checkpoints"]["sb_final"]["measures"]["eigenvalues"]
    assert not again.failed
    # a measure whose arrays went missing is computed again (here: it fails, and says why)
    (out / "arrays.npz").unlink()
    redo = analyze([root / "sb" / "final.pt", root / "lb" / "final.pt"], out=out, quick=True, progress=False,
                   measures=["density", "trace"])
    assert "recomputed a cached measure" in redo.failed["sb_final/density"]
    assert redo.data["checkpoints"]["sb_final"]["measures"]["trace"] == r["checkpoints"]["sb_final"]["measures"][
        "trace"]  # no arrays: still cached, and the other measures ran
    assert "failed" in redo.table()
    forced = analyze([root / "sb" / "final.pt"], out=out, quick=True, progress=False, force=True,
                     measures=["eigenvalues"])
    assert "recomputed" in forced.failed["final/eigenvalues"]


def test_library_call_on_a_model_subset_of_measures(runs):
    _, sb, _ = runs
    rep = analyze(sb, out=None, measures=["loss", "trace"], quick=True, progress=False)
    s = rep.data["checkpoints"]["final"]["measures"]
    assert set(s) == {"loss", "trace"} and abs(s["loss"]["summary"]["train_loss"] - sb.history[-1]["train_loss"]) < 1e-5


def _factory_module(tmp_path, monkeypatch, width):
    user_module(tmp_path, monkeypatch, "my_models",
                "import torch.nn as nn\n"
                f"def make():\n    return nn.Sequential(nn.Linear(10, {width}), nn.ReLU(), nn.Linear({width}, 3))\n"
                "def make_small():\n    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))\n")


def test_users_own_state_dict(tmp_path, monkeypatch, capsys):
    _factory_module(tmp_path, monkeypatch, 5)
    import my_models

    torch.manual_seed(0)
    net = my_models.make()
    torch.save(net.state_dict(), tmp_path / "mine.pt")
    out = tmp_path / "an"
    code = analyze_main([str(tmp_path / "mine.pt"), "--model", "my_models:make", "--data", "gaussian", "--quick",
                         "--measures", "loss,eigenvalues", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    r = json.loads((out / "report.json").read_text())
    assert r["checkpoints"]["mine"]["data"]["name"] == "gaussian"


class Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_bad_inputs_exit_2_one_line_nothing_written(runs, tmp_path, monkeypatch, capsys):
    root, _, _ = runs
    good = str(root / "sb" / "final.pt")
    evil_target = tmp_path / "pwned"
    torch.save({"state_dict": Payload(str(evil_target))}, tmp_path / "evil.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"x": [1, 2, 3]}, tmp_path / "foreign.pt")
    _factory_module(tmp_path, monkeypatch, 7)
    net_sd = torch.nn.Sequential(torch.nn.Linear(10, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).state_dict()
    small_sd = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).state_dict()
    torch.save(small_sd, tmp_path / "small.pt")
    torch.save(net_sd, tmp_path / "bare.pt")
    cases = {
        "missing": ([str(tmp_path / "nope.pt")], "no such file"),
        "text": ([str(tmp_path / "notes.txt")], "not a PyTorch checkpoint"),
        "foreign": ([str(tmp_path / "foreign.pt")], "not a model checkpoint"),
        "malicious": ([str(tmp_path / "evil.pt")], "could run code"),
        "measure": ([good, "--measures", "loss,hessian_magic"], "unknown measure(s): hessian_magic"),
        "no import": ([str(tmp_path / "bare.pt"), "--model", "no_such_module:make", "--data", "gaussian"],
                      "cannot import module 'no_such_module'"),
        "misfit": ([str(tmp_path / "bare.pt"), "--model", "my_models:make", "--data", "gaussian"],
                   "weights do not fit"),
        "data misfit": ([str(tmp_path / "small.pt"), "--model", "my_models:make_small", "--data", "gaussian"],
                        "does not accept the data"),
        "offline data": ([str(tmp_path / "bare.pt"), "--model", "my_models:make", "--data", "mnist"], "root="),
        "cuda": ([good, "--device", "cuda"], "CUDA is not available"),
    }
    if torch.cuda.is_available():
        del cases["cuda"]
    for name, (args, message) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        assert analyze_main(args + ["--out", str(out), "--quick", "--no-progress"]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (name, err)
        assert not out.exists(), name
    assert not evil_target.exists()
    r = subprocess.run([sys.executable, "-m", "sharpness.analyze", str(tmp_path / "evil.pt"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert not evil_target.exists() and not (tmp_path / "o").exists()


def _user_module(tmp_path, monkeypatch, name="user_reg"):
    user_module(tmp_path, monkeypatch, name,
        "import torch\nimport torch.nn as nn\n"
        "def make_net(hidden=6):\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 2))\n"
        "def data(n=37):\n"
        "    g = torch.Generator().manual_seed(1)\n"
        "    x = torch.randn(n + 11, 4, generator=g)\n"
        "    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(x[:, 2])], 1) + 0.1 * torch.randn(n + 11, 2, generator=g)\n"
        "    return (x[:n], y[:n]), (x[n:], y[n:])\n")
    return __import__(name)


def test_regression_mse_sum_and_mean_through_the_cli_any_batching(tmp_path, monkeypatch, capsys):
    mod = _user_module(tmp_path, monkeypatch)
    net = mod.make_net()
    torch.save(net.state_dict(), tmp_path / "reg.pt")
    (x, y), _ = mod.data()
    # the ground truth: the dense Hessian of (1/N) Σ_i ℓ_i, ℓ_i = Σ_d (f_id − y_id)² (sum) or its mean over d
    dense = HessianOperator(net.double(), lambda o, t: ((o - t) ** 2).sum(), (x.double(), y.double()),
                            reduction="sum").to_dense()
    for reduction, scale in (("sum", 1.0), ("mean", 0.5)):
        want = float(torch.linalg.eigvalsh(dense)[-1]) * scale
        for bs in ("7", "32", "100"):
            out = tmp_path / f"an_{reduction}_{bs}"
            code = analyze_main([str(tmp_path / "reg.pt"), "--model", "user_reg:make_net", "--data", "user_reg:data",
                                 "--loss", "mse", "--loss-arg", f"reduction={reduction}", "--batch-size", bs,
                                 "--measures", "loss,eigenvalues", "--out", str(out), "--no-progress"])
            assert code == 0, capsys.readouterr().err
            r = json.loads((out / "report.json").read_text())
            e = r["checkpoints"]["reg"]
            assert {k: e["loss"][k] for k in ("name", "reduction")} == {"name": "mse", "reduction": reduction}
            assert e["measures"]["loss"]["summary"]["train_acc"] is None  # regression: no accuracy
            got = e["measures"]["eigenvalues"]["summary"]["lambda_max"]
            assert got == pytest.approx(want, rel=1e-4), (reduction, bs)
    table = capsys.readouterr().out
    assert "train loss" in table and "train acc" not in table


def test_a_users_registered_measure_in_report_table_and_cli(runs, tmp_path, capsys, restore_measures):
    _, sb, _ = runs

    @sharpness.register_measure("grad_norm", keys=[sharpness.Key("grad_norm", "‖∇L‖", "{:.3e}")],
                                settings={"ord": 2})
    def grad_norm(ctx, settings):
        g = ctx.work.gradient()
        return sharpness.Record(summary={"grad_norm": float(g.norm(settings["ord"]))}, arrays={"grad": g.numpy()})

    assert "grad_norm" in sharpness.measure_names()
    rep = analyze(sb, out=tmp_path / "an", measures=["loss", "grad_norm"], progress=False)
    got = rep.data["checkpoints"]["final"]["measures"]["grad_norm"]
    train, _ = sb.datasets()
    want = float(Objective(sb.model(), None, train).gradient().norm())
    assert got["summary"]["grad_norm"] == pytest.approx(want, rel=1e-5) and got["settings"] == {"ord": 2}
    assert "‖∇L‖" in rep.table() and rep.arrays["final/grad_norm/grad"].shape == (sum(
        p.numel() for p in sb.model().parameters()),)
    assert analyze_main([str(sb.path), "--measures", "grad_norm", "--out", str(tmp_path / "cli"),
                         "--no-progress"]) == 0
    assert "‖∇L‖" in capsys.readouterr().out


def test_a_second_analysis_of_the_same_folder_is_refused(runs, tmp_path):
    import fcntl

    _, sb, _ = runs
    out = tmp_path / "an"
    out.mkdir()
    with open(out / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(sharpness.SharpnessError, match="another analysis"):
            analyze(sb, out=out, measures=["loss"], progress=False)
    assert not (out / "report.json").exists()
    (out / "report.json").write_text('{"schema": "sharpness-report", "version": 1, "checkpoints": [')  # truncated
    with pytest.warns(UserWarning, match="set aside"):
        rep = analyze(sb, out=out, measures=["loss"], progress=False)
    assert "loss" in rep.data["checkpoints"]["final"]["measures"]
    assert list(out.glob("report.json.corrupt-*"))


def test_a_users_model_and_data_trained_from_the_cli_and_a_toml_then_analyzed_without_flags(
        tmp_path, monkeypatch, capsys):
    from sharpness.cli import run_main, train_main

    user_module(tmp_path, monkeypatch, "user_cls",
        "import torch\nimport torch.nn as nn\n"
        "def make_net(hidden=8):\n"
        "    return nn.Sequential(nn.Linear(5, hidden), nn.ReLU(), nn.Linear(hidden, 3))\n"
        "def data(n=90):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(n, 5, generator=g)\n"
        "    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()\n"
        "    ds = torch.utils.data.TensorDataset(x[:60], y[:60])\n"
        "    return ds, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[60:], y[60:]), batch_size=7)\n")
    run = tmp_path / "run"
    assert train_main(["--model", "user_cls:make_net", "--model-arg", "hidden=6", "--dataset", "user_cls:data",
                       "--epochs", "2", "--batch-size", "16", "--loss-arg", "label_smoothing=0.1", "--out", str(run),
                       "--quiet"]) == 0, capsys.readouterr().err
    ckpt = sharpness.load_checkpoint(run / "final.pt")
    assert ckpt.model_spec.name == "user_cls:make_net" and ckpt.model_spec.args["hidden"] == 6
    assert ckpt.config["loss_args"] == {"label_smoothing": 0.1}
    out = tmp_path / "an"
    assert analyze_main([str(run / "final.pt"), "--quick", "--measures", "loss,eigenvalues,landscape1d", "--out",
                         str(out), "--no-progress"]) == 0, capsys.readouterr().err
    r = json.loads((out / "report.json").read_text())["checkpoints"]["final"]
    assert r["loss"]["name"] == "cross_entropy" and r["model"]["name"] == "user_cls:make_net"
    # the report's training loss is the checkpoint's own (label-smoothed) loss, as the trainer evaluated it
    assert r["measures"]["loss"]["summary"]["train_loss"] == pytest.approx(ckpt.history[-1]["train_loss"], rel=1e-5)
    # the same model in an experiment TOML
    (tmp_path / "exp.toml").write_text(
        'name = "mine"\n[base]\nmodel = "user_cls:make_net"\ndataset = "user_cls:data"\nepochs = 1\n'
        '[grid]\nbatch_size = [16, 30]\n[analysis]\nmeasures = ["loss"]\nquick = true\n[figures]\nkinds = ["table"]\n')
    assert run_main([str(tmp_path / "exp.toml"), "--runs", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"),
                     "--no-progress"]) == 0, capsys.readouterr().err
    assert "B30" in (tmp_path / "fig" / "mine" / "table.md").read_text()


def test_a_checkpoint_whose_loss_is_not_finite_reports_it_and_skips_curvature(tmp_path, monkeypatch):
    _factory_module(tmp_path, monkeypatch, 5)
    import my_models

    net = my_models.make()
    with torch.no_grad():
        net[2].weight.fill_(3e38)  # finite weights, overflowing logits: the loss is not finite
    torch.save(net.state_dict(), tmp_path / "huge.pt")
    rep = analyze(tmp_path / "huge.pt", model="my_models:make", data="gaussian", out=tmp_path / "an",
                  measures=["loss", "eigenvalues", "landscape1d"], quick=True, progress=False)
    m = rep.data["checkpoints"]["huge"]["measures"]
    assert m["loss"]["summary"]["train_loss"] is None  # NaN/inf: null in strict JSON
    assert m["eigenvalues"]["status"] == "skipped" and "not finite" in m["eigenvalues"]["error"]
    assert not rep.failed and "skipped" in rep.table()


def test_later_analyses_of_a_folder_keep_what_earlier_ones_wrote(runs, tmp_path):
    root, sb, lb = runs
    out = tmp_path / "an"
    analyze(root / "sb" / "final.pt", out=out, measures=["loss", "trace"], quick=True, progress=False)
    analyze(root / "lb" / "final.pt", out=out, measures=["loss"], quick=True, progress=False)  # same stem "final"
    with pytest.warns(UserWarning, match="other settings"):  # another subset: kept apart, in a folder of its own
        other = analyze(root / "lb" / "final.pt", out=out, measures=["loss"], quick=True, progress=False,
                        force=True, max_samples=50)
    r = json.loads((out / "report.json").read_text())["checkpoints"]
    assert set(r) == {"final", "lb_final"}  # the second checkpoint did not take the first one's label
    assert set(r["final"]["measures"]) == {"loss", "trace"} and r["final"]["path"] == str((root / "sb" / "final.pt"))
    assert r["lb_final"]["measures"]["loss"]["max_samples"] == 1000
    assert other.out.parent == out and other.out.name.startswith("quick-") and len(other.out.name) == 14
    sub = json.loads((other.out / "report.json").read_text())
    assert sub["checkpoints"]["final"]["measures"]["loss"]["max_samples"] == 50
    assert sub["settings"]["variant"]["max_samples"] == 50 and sub["settings"]["tag"] == other.out.name
    with pytest.warns(UserWarning, match="other settings"):  # the default full settings: the plain tag
        full = analyze(root / "sb" / "final.pt", out=out, measures=["loss"], progress=False)
    assert full.out == out / "full" and "final" in json.loads((out / "full" / "report.json").read_text())["checkpoints"]
    # one call with two stems that clean to the same label
    a, b = tmp_path / "a b.pt", tmp_path / "a_b.pt"
    for p in (a, b):
        p.write_bytes((root / "sb" / "final.pt").read_bytes())
    rep = analyze([a, b], out=tmp_path / "two", measures=["loss"], progress=False)
    assert len(rep.data["checkpoints"]) == 2


def test_densities_and_surfaces_of_several_checkpoints_on_one_scale_and_redrawn_in_a_new_format(runs, tmp_path):
    root = runs[0]
    ckpts = [root / "sb" / "final.pt", root / "lb" / "final.pt"]
    out = tmp_path / "an"
    rep = analyze(ckpts, out=out, measures=["density", "landscape2d"], quick=True)
    assert rep.data["together"] == {"density": ["density_all.png"], "landscape2d": ["landscape2d_all.png"]}
    assert nontrivial_png(out / "density_all.png") and nontrivial_png(out / "landscape2d_all.png")
    # one absolute width: σ = 1 % of the union of both models' node ranges, not of each one's own
    from sharpness.plots.spectrum import shared_sigma
    arrays = {lb: {k.rsplit("/", 1)[1]: v for k, v in rep.arrays.items() if k.startswith(f"{lb}/density/")}
              for lb in rep.data["checkpoints"]}
    nodes = np.concatenate([a["nodes"][a["weights"] > 0] for a in arrays.values()])
    assert shared_sigma(arrays) == pytest.approx(0.01 * (nodes.max() - nodes.min()))
    # cached measures: a new --format draws the figures again without recomputing
    before = {lb: e["measures"]["density"]["seconds"] for lb, e in rep.data["checkpoints"].items()}
    with sharpness.plots.figure_options(formats="pdf"):
        again = analyze(ckpts, out=out, measures=["density", "landscape2d"], quick=True)
    assert {lb: e["measures"]["density"]["seconds"] for lb, e in again.data["checkpoints"].items()} == before
    for lb in again.data["checkpoints"]:
        assert (out / f"density_{lb}.pdf").read_bytes()[:4] == b"%PDF"
        assert f"density_{lb}.pdf" in again.data["checkpoints"][lb]["measures"]["density"]["figures"]
    assert (out / "density_all.pdf").exists() and (out / "landscape2d_all.pdf").exists()
    assert again.data["together"]["density"] == ["density_all.pdf", "density_all.png"]
    # another style or dpi: the cached figures are drawn again in it, still without recomputing
    png = out / f"density_{lb}.png"
    size = mpimg.imread(png).shape
    with sharpness.plots.figure_options(dpi=100, style="icml"):
        third = analyze(ckpts, out=out, measures=["density"], quick=True)
    assert mpimg.imread(png).shape[1] < size[1] and third.data["figure_style"] == {"style": "icml", "dpi": 100}
    assert {lb: e["measures"]["density"]["seconds"] for lb, e in third.data["checkpoints"].items()} == before


def test_dist_from_init_reads_the_runs_init_pt_or_a_named_file(runs, tmp_path):
    import shutil

    root, sb, lb = runs
    ours = analyze(sb.path, out=None, measures=["dist_from_init"], progress=False)
    rec = ours.data["checkpoints"]["final"]["measures"]["dist_from_init"]
    assert rec["summary"]["distance"] == pytest.approx(sb.history[-1]["dist_from_init"], rel=1e-5)
    assert rec["details"]["init"] == str(sb.path.parent / "init.pt")
    alone = tmp_path / "alone" / "model.pt"  # a checkpoint without its run folder: nothing to measure from
    alone.parent.mkdir()
    shutil.copy(sb.path, alone)
    skipped = analyze(alone, out=None, measures=["dist_from_init"], progress=False)
    rec = skipped.data["checkpoints"]["model"]["measures"]["dist_from_init"]
    assert rec["summary"] == {} and "no init.pt" in rec["details"]["skipped"]
    named = analyze(alone, out=None, measures=["dist_from_init"], progress=False,
                    settings={"dist_from_init": {"init": str(lb.path.parent / "init.pt")}})
    d = named.data["checkpoints"]["model"]["measures"]["dist_from_init"]["summary"]["distance"]
    w = torch.cat([p.reshape(-1) for p in sb.model("cpu").parameters()])
    w0 = torch.cat([p.reshape(-1) for p in sharpness.load_checkpoint(lb.path.parent / "init.pt").model("cpu").parameters()])
    assert d == pytest.approx(float((w - w0).detach().norm()), rel=1e-5)
