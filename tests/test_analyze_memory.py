"""analyze() on modules and data in memory; results kept by their settings; one parameter space; the caller's RNG."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sharpness
from helpers import assert_unchanged, snapshot, user_module
from sharpness import SharpnessError, analyze
from sharpness.checkpoint import tensor_checksum
from sharpness.cli import analyze_main
from sharpness.measures import builtin


def _data(n=48, seed=0, dim=6, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long() * (classes - 2)


def _net(seed=0, dim=6, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 8), nn.Tanh(), nn.Linear(8, classes))


TRAIN, TEST = _data(48, 0), _data(24, 1)


def test_a_module_and_data_in_memory_and_its_cache(tmp_path, monkeypatch):
    net = _net()
    net.train()  # the caller's mode, left as it is
    snap = snapshot(net)
    out = tmp_path / "an"
    rep = analyze(net, data=(TRAIN, TEST), loss="cross_entropy", out=out, measures=["loss", "eigenvalues"],
                  quick=True, progress=False)
    assert_unchanged(net, snap)
    e = rep.data["checkpoints"]["model"]
    assert e["source"] == "memory" and e["path"] is None and e["n_train"] == 48
    assert e["sha256"] == tensor_checksum({"state_dict": net.state_dict()})
    assert e["data"]["source"] == "memory" and e["data"]["train"]["tensors"]
    x, y = TRAIN
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(net.eval()(x), y))
    net.train()
    assert e["measures"]["loss"]["summary"]["train_loss"] == pytest.approx(want, rel=1e-5)
    assert e["measures"]["loss"]["summary"]["test_loss"] is not None
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["checkpoints"]["model"]["source"] == "memory"

    def boom(*a, **k):
        raise AssertionError("recomputed a cached measure")

    monkeypatch.setattr(builtin, "hessian_eigenvalues", boom)
    again = analyze(net, data=(TRAIN, TEST), loss="cross_entropy", out=out, measures=["loss", "eigenvalues"],
                    quick=True, progress=False)
    assert not again.failed and again.out == out  # same weights, same settings: the cache, in the same folder
    # other weights under the same automatic label do not take the first model's results
    other = _net(seed=1)
    third = analyze(other, data=(TRAIN, TEST), loss="cross_entropy", out=out, measures=["loss"], quick=True,
                    progress=False)
    labels = list(third.data["checkpoints"])
    sha = tensor_checksum({"state_dict": other.state_dict()})
    assert labels == ["model", f"model_{sha[:8]}"]
    assert "eigenvalues" in third.data["checkpoints"]["model"]["measures"]


@pytest.mark.parametrize("form", ["tensors", "datasets", "loaders", "batches", "train only"])
def test_data_in_memory_in_every_form_the_objective_takes(form):
    (x, y), (xt, yt) = TRAIN, TEST
    data = {"tensors": ((x, y), (xt, yt)),
            "datasets": (TensorDataset(x, y), TensorDataset(xt, yt)),
            "loaders": (DataLoader(TensorDataset(x, y), batch_size=10), DataLoader(TensorDataset(xt, yt), batch_size=7)),
            "batches": ([(x[:20], y[:20]), (x[20:], y[20:])], [(xt, yt)]),
            "train only": (x, y)}[form]
    rep = analyze(_net(), data=data, out=None, measures=["loss"], progress=False)
    s = rep.data["checkpoints"]["model"]["measures"]["loss"]["summary"]
    net = _net().eval().requires_grad_(False)
    assert s["train_loss"] == pytest.approx(float(nn.functional.cross_entropy(net(x), y)), rel=1e-5)
    if form == "train only":
        assert "test_loss" not in s
    else:
        assert s["test_loss"] == pytest.approx(float(nn.functional.cross_entropy(net(xt), yt)), rel=1e-5)


def test_several_modules_their_labels_and_the_pair_measure():
    a, b = _net(0), _net(1)
    rep = analyze([a, b], data=(TRAIN, TEST), out=None, measures=["loss", "interpolation"], quick=True,
                  progress=False)
    assert list(rep.data["checkpoints"]) == ["model0", "model1"] and list(rep.data["pairs"]) == ["model0→model1"]
    assert not rep.failed
    named = analyze({"sb": a, "lb": b}, data=(TRAIN, TEST), out=None, measures=["loss"], progress=False)
    assert list(named.data["checkpoints"]) == ["sb", "lb"]
    given = analyze([a, b], labels=["small-batch", "large.batch_2"], data=TRAIN, out=None, measures=["loss"],
                    progress=False)
    assert list(given.data["checkpoints"]) == ["small-batch", "large.batch_2"]


def test_new_arguments_are_checked_first_one_line_naming_field_and_value(tmp_path):
    net = _net()
    cases = [
        (dict(labels=["a b"]), "labels", "'a b'"),
        (dict(labels=["x" * 65]), "labels", "xxxx"),
        (dict(labels=["a", "b"]), "labels", "one per checkpoint (1) (got 2)"),
        (dict(labels="a"), "labels", "got str"),
        (dict(params=3), "params", "3"),
        (dict(params=[]), "params", "[]"),
        (dict(params=["0.*", 1]), "params", "1"),
        (dict(data=42), "data", "int"),
        (dict(data=(TRAIN, "test.csv")), "data[1] (test)", "str"),
        (dict(data=(None, TEST)), "data[0] (train)", "None"),
        (dict(data=(TRAIN, TEST), data_args={"n": 1}), "data_args", "in memory"),
        (dict(data=None), "needs its data", "data=(train, test)"),
        (dict(model="mlp"), "model", "in memory"),
        (dict(model_args={"widths": [3]}), "model_args", "in memory"),
    ]
    for kwargs, field, value in cases:
        kwargs = {"data": (TRAIN, TEST), **kwargs}
        out = tmp_path / "never"
        with pytest.raises(SharpnessError) as e:
            analyze(net, out=out, measures=["loss"], progress=False, **kwargs)
        msg = str(e.value)
        assert "\n" not in msg and field in msg and value in msg, (kwargs, msg)
        assert not out.exists()
    with pytest.raises(SharpnessError, match=r"labels: each must be unique \(repeated: a\)"):
        analyze([net, net], labels=["a", "a"], data=TRAIN, out=None, progress=False)
    with pytest.raises(SharpnessError, match="checkpoints key: .*'b/c'"):
        analyze({"b/c": net}, data=TRAIN, out=None, progress=False)
    with pytest.raises(SharpnessError, match="each is a path, a Checkpoint or an nn.Module .got int."):
        analyze([net, 3], data=TRAIN, out=None, progress=False)
    with pytest.raises(SharpnessError, match="params: no parameter matches"):
        analyze(net, data=TRAIN, params="encoder.*", out=None, progress=False)


def test_the_probe_names_the_model_or_the_loss_whichever_fails():
    def bad_loss(out, y):
        raise ValueError("targets of the wrong kind")

    with pytest.raises(SharpnessError) as e:
        analyze(_net(), data=TRAIN, loss=bad_loss, out=None, measures=["loss"], progress=False)
    msg = str(e.value)
    assert "the loss 'bad_loss' fails" in msg and "targets of the wrong kind" in msg and "does not accept" not in msg
    with pytest.raises(SharpnessError) as e:
        analyze(_net(dim=5), data=TRAIN, out=None, measures=["loss"], progress=False)
    msg = str(e.value)
    assert "the model (Sequential) does not accept the data" in msg and "loss" not in msg


def _frozen_net():
    net = _net()
    for p in net[0].parameters():
        p.requires_grad_(False)
    return net


def test_one_parameter_space_for_every_measure(monkeypatch):
    counts = {}

    def spy(name, fn, get):
        def wrapped(*a, **k):
            r = fn(*a, **k)
            counts.setdefault(name, set()).add(get(a, k, r))
            return r
        monkeypatch.setattr(builtin, name, wrapped)

    spy("HessianOperator", builtin.HessianOperator, lambda a, k, r: r.num_params)
    spy("eps_sharpness", builtin.eps_sharpness, lambda a, k, r: a[0].num_params)
    spy("adaptive_sharpness", builtin.adaptive_sharpness, lambda a, k, r: a[0].num_params)
    spy("pacbayes_flatness", builtin.pacbayes_flatness, lambda a, k, r: a[0].num_params)
    spy("gradient_noise_scale", builtin.gradient_noise_scale, lambda a, k, r: a[0].num_params)
    spy("surface", builtin.surface, lambda a, k, r: (a[0].num_params, r.directions.vectors.shape[1]))
    names = ["eigenvalues", "trace", "eps_sharpness", "adaptive", "pacbayes", "noise_scale", "landscape1d"]
    settings = {"eps_sharpness": {"subspace_dims": [None, 5]}, "adaptive": {"n_samples": 16, "steps": 2},
                "pacbayes": {"n_draws": 2, "iters": 2}, "landscape1d": {"steps": 5}}
    net = _frozen_net()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == 27 and sum(p.numel() for p in net.parameters()) == 83
    rep = analyze(net, data=(TRAIN, TEST), measures=names, quick=True, settings=settings, out=None, progress=False)
    assert not rep.failed, rep.failed
    assert rep.data["checkpoints"]["model"]["params"] == {"patterns": None, "count": 2, "num_params": trainable}
    assert counts == {"HessianOperator": {trainable}, "eps_sharpness": {trainable}, "adaptive_sharpness": {trainable},
                      "pacbayes_flatness": {trainable}, "gradient_noise_scale": {trainable},
                      "surface": {(trainable, trainable)}}
    # a pattern: the last layer's weight only, for every measure again
    counts.clear()
    rep = analyze(_net(), data=(TRAIN, TEST), measures=names, quick=True, settings=settings, params="2.weight",
                  out=None, progress=False)
    assert not rep.failed, rep.failed
    assert rep.data["checkpoints"]["model"]["params"] == {"patterns": ["2.weight"], "count": 1, "num_params": 24}
    assert {v for vs in counts.values() for v in vs} == {24, (24, 24)}
    # the λ_max of that block is the top eigenvalue of the dense Hessian over it
    from sharpness.curvature import HessianOperator
    dense = HessianOperator(_net(), None, TRAIN, params="2.weight").to_dense()
    assert rep.data["checkpoints"]["model"]["measures"]["eigenvalues"]["summary"]["lambda_max"] == pytest.approx(
        float(torch.linalg.eigvalsh(dense)[-1]), rel=1e-3)


def test_the_pair_measure_with_a_frozen_layer_walks_the_trainable_parameters():
    a, b = _frozen_net(), _net(1)
    b[0].load_state_dict(a[0].state_dict())
    for p in b[0].parameters():
        p.requires_grad_(False)
    rep = analyze([a, b], data=(TRAIN, TEST), measures=["interpolation"], quick=True, out=None, progress=False)
    assert not rep.failed, rep.failed
    s = rep.data["pairs"]["model0→model1"]["interpolation"]["summary"]
    x, y = TRAIN
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(b.eval()(x), y))
    assert s["train_loss_at_1"] == pytest.approx(want, rel=1e-5)


def test_the_callers_random_state_is_untouched(tmp_path):
    x, y = TRAIN
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    net = _net()  # (seeds torch itself)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    np_before = np.random.get_state()[1].copy()
    # a module in memory, and a file whose model a factory builds (its initialization draws random numbers)
    analyze([net, tmp_path / "net.pt"], model=lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)),
            data=(loader, TEST), measures=["loss", "eigenvalues", "landscape1d"], quick=True, out=None,
            progress=False, settings={"landscape1d": {"steps": 5}})
    assert torch.equal(torch.random.get_rng_state(), before)
    assert np.array_equal(np.random.get_state()[1], np_before)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_other_settings_never_replace_earlier_results(tmp_path, monkeypatch):
    net = _net()
    out = tmp_path / "an"
    kw = dict(data=(TRAIN, TEST), out=out, measures=["loss", "eigenvalues", "landscape1d"], progress=False)
    full = analyze(net, **kw, settings={"landscape1d": {"steps": 9}})
    assert full.out == out and (out / "landscape1d_model.png").exists()
    before = _files(out)
    with pytest.warns(UserWarning, match=r"other settings \(quick false→true.*this run's go to .*quick-"):
        quick = analyze(net, **kw, quick=True, settings={"landscape1d": {"steps": 9}})
    assert _files(out) == {**before, **{k: v for k, v in _files(out).items() if k.parts[0] == quick.out.name}}
    assert {k: v for k, v in _files(out).items() if len(k.parts) == 1} == before  # byte for byte
    assert quick.out.parent == out and (quick.out / "landscape1d_model.png").exists()
    qr = json.loads((quick.out / "report.json").read_text())
    assert qr["settings"]["quick"] is True and qr["settings"]["variant"]["max_samples"] == 1000
    assert qr["settings"]["tag"] == quick.out.name
    assert "quick" in quick.table().splitlines()[0] and "full settings" in full.table().splitlines()[0]
    # data in memory are part of the settings (by a hash of their tensors): other data, another folder
    with pytest.warns(UserWarning, match="other settings"):
        other = analyze(net, **{**kw, "measures": ["loss"], "data": (TEST, TRAIN)}, quick=True)
    assert other.out.parent == out and other.out not in (out, quick.out)

    def boom(*a, **k):
        raise AssertionError("recomputed a cached measure")

    monkeypatch.setattr(builtin, "hessian_eigenvalues", boom)
    monkeypatch.setattr(builtin, "surface", boom)
    with pytest.warns(UserWarning, match="other settings"):
        again = analyze(net, **kw, quick=True, settings={"landscape1d": {"steps": 9}})
    assert again.out == quick.out and not again.failed  # its own folder found again, and its cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the root's own settings: no warning, the root's cache
        first = analyze(net, **kw, settings={"landscape1d": {"steps": 9}})
    assert first.out == out and not first.failed
    assert {k: v for k, v in _files(out).items() if len(k.parts) == 1 and k.suffix != ".json"} == \
        {k: v for k, v in before.items() if k.suffix != ".json"}
    # another seed, loss, or parameter selection: each its own folder
    monkeypatch.undo()
    seen = {quick.out, other.out}
    for extra in ({"seed": 1}, {"loss": "cross_entropy"}, {"params": "2.*"}):
        with pytest.warns(UserWarning, match="other settings"):
            r = analyze(net, **{**kw, "measures": ["loss"]}, **extra)
        assert r.out.parent == out and r.out.name.startswith("full-") and r.out not in seen
        seen.add(r.out)


def test_the_cli_fills_a_factorys_input_shape_and_num_classes(tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    user_module(tmp_path, monkeypatch, "mynets",
                "import math\nimport torch\nimport torch.nn as nn\n"
                "def make_net(input_shape, num_classes, hidden=7):\n"
                "    return nn.Sequential(nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),\n"
                "                         nn.Linear(hidden, num_classes))\n"
                "def load():\n"
                "    g = torch.Generator().manual_seed(0)\n"
                "    x = torch.randn(40, 5, generator=g)\n"
                "    y = (x[:, 0] > 0).long() * 3\n"
                "    return (x[:30], y[:30]), (x[30:], y[30:])\n")
    import mynets

    net = mynets.make_net((5,), 4)
    save_file(dict(net.state_dict()), str(tmp_path / "reg.safetensors"))
    out = tmp_path / "an"
    assert analyze_main([str(tmp_path / "reg.safetensors"), "--model", "mynets:make_net", "--data", "mynets:load",
                         "--measures", "loss", "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    e = json.loads((out / "report.json").read_text())["checkpoints"]["reg"]
    assert e["model"]["args"] == {} and e["measures"]["loss"]["summary"]["train_acc"] is not None
    # the toolkit's mlp for mnist1d: (40,) inputs, 10 classes, from the data as train fills them
    mlp = sharpness.build_model("mlp", input_shape=(40,), num_classes=10, widths=(6,))
    torch.save(mlp.state_dict(), tmp_path / "mlp.pt")
    assert analyze_main([str(tmp_path / "mlp.pt"), "--model", "mlp", "--model-arg", "widths=[6]", "--data",
                         "mnist1d", "--data-arg", "num_samples=200", "--measures", "loss", "--out",
                         str(tmp_path / "an2"), "--no-progress"]) == 0, capsys.readouterr().err


def test_other_contents_or_another_loss_configuration_are_never_served_from_the_cache(tmp_path):
    # A custom Dataset (not tensors) of one kind and size, and loss objects or closures configured otherwise,
    # must not reuse each other's cached results (a held-out review found both served stale numbers).
    import torch.nn.functional as F

    class DS(torch.utils.data.Dataset):
        def __init__(self, seed):
            g = torch.Generator().manual_seed(seed)
            self.x, self.y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)

        def __len__(self):
            return 40

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))

    def loss_of(**kw):
        rep = analyze(net, out=tmp_path / "an", measures=["loss"], progress=False, **kw)
        return rep.data["checkpoints"]["model"]["measures"]["loss"]["summary"]["train_loss"]

    def truth(data, loss):
        return sharpness.Objective(net, loss, data).evaluate()[0]

    for seed in (1, 2):
        assert loss_of(data=DS(seed), loss="cross_entropy") == pytest.approx(truth(DS(seed), "cross_entropy"))
    for ls in (0.0, 0.5):
        fn = nn.CrossEntropyLoss(label_smoothing=ls)
        assert loss_of(data=DS(1), loss=fn) == pytest.approx(truth(DS(1), fn))
    for scale in (1.0, 1.5):
        fn = (lambda s: lambda o, t: s * F.cross_entropy(o, t))(scale)
        assert loss_of(data=DS(1), loss=fn) == pytest.approx(truth(DS(1), fn))
    # the same settings again: found in the cache (no new folder)
    before = sorted(p.name for p in (tmp_path / "an").iterdir())
    loss_of(data=DS(2), loss="cross_entropy")
    assert sorted(p.name for p in (tmp_path / "an").iterdir()) == before
