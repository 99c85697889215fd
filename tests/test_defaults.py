"""Defaults that cannot be silently wrong: the loss inferred from the data, a summing loss found, the
caller's random state untouched, any model output, one parameter space (frozen and tied weights)."""

import json
import random
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import sharpness as sh
from cases import dense_hessian, make_cases
from sharpness.errors import SharpnessError


def _regression(seed=0, n=40, outputs=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, outputs, generator=g, dtype=torch.float64) if outputs > 1 else \
        torch.randn(n, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, outputs)).double()
    return model, x, y


def _top(H):
    return float(torch.linalg.eigvalsh(H)[-1])


# --- the loss inferred -------------------------------------------------------------------------------

def test_no_loss_on_a_regression_model_is_mse_said_in_a_warning():
    model, x, y = _regression()
    with pytest.warns(UserWarning, match="the loss is mse"):
        eig = sh.hessian_eigenvalues(sh.HessianOperator(model, None, (x, y)), k=1, tol=1e-10)
    truth = _top(dense_hessian(model, lambda o, t: F.mse_loss(o, t.reshape(o.shape)), x, y))
    assert eig.values[0] == pytest.approx(truth, rel=1e-8)
    assert truth > 1e-3  # cross-entropy over one output would give exactly 0
    obj = sh.Objective(model, None, (x, y))
    with pytest.warns(UserWarning, match="mse"):
        obj.evaluate()
    assert obj.loss.to_dict() == {"name": "mse", "reduction": "mean", "inferred": True}


def test_no_loss_on_class_indices_is_cross_entropy():
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x, y = torch.randn(30, 3, dtype=torch.float64), torch.randint(0, 4, (30,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # class indices: nothing to say
        inferred = sh.Objective(model, None, (x, y)).evaluate()
    assert inferred == sh.Objective(model, "cross_entropy", (x, y)).evaluate()


@pytest.mark.parametrize("y", [torch.randint(0, 2, (20, 1)), torch.randn(20, 5), torch.ones(20, dtype=torch.bool)])
def test_no_loss_and_no_rule_is_refused_naming_loss(y):
    model = nn.Linear(3, 1)
    with pytest.raises(SharpnessError, match=r"pass loss= \(--loss\)") as e:
        sh.Objective(model, None, (torch.randn(20, 3), y)).evaluate()
    assert "\n" not in str(e.value)


def test_cross_entropy_on_regression_targets_or_one_output_is_refused():
    model, x, y = _regression()
    with pytest.raises(SharpnessError, match="single output is 0"):
        sh.Objective(model, "cross_entropy", (x, y.long())).evaluate()
    wide = nn.Linear(3, 2).double()
    with pytest.raises(SharpnessError, match="real-valued targets"):
        sh.Objective(wide, "cross_entropy", (x, torch.randn(40, dtype=torch.float64))).evaluate()
    with pytest.raises(SharpnessError, match="not class probabilities"):
        sh.Objective(wide, "cross_entropy", (x, torch.randn(40, 2, dtype=torch.float64))).evaluate()
    probs = torch.softmax(torch.randn(40, 2, dtype=torch.float64), 1)  # soft labels stay allowed
    loss, _ = sh.Objective(wide, "cross_entropy", (x, probs)).evaluate()
    assert loss == pytest.approx(float(F.cross_entropy(wide(x), probs)), rel=1e-12)


def test_training_with_the_default_loss_on_regression_data_is_refused(tmp_path, monkeypatch):
    from helpers import user_module
    user_module(tmp_path, monkeypatch, "regdata", """
import torch
def load():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return (x[:48], x[:48, 0]), (x[48:], x[48:, 0])
def net(input_shape):
    return torch.nn.Linear(input_shape[0], 1)
""")
    cfg = sh.TrainConfig(dataset="regdata:load", model="regdata:net", batch_size=16, epochs=1)
    with pytest.raises(SharpnessError, match="for regression use mse"):
        sh.train_model(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "init.pt").exists()


# --- the reduction probed ----------------------------------------------------------------------------

def _summing(out, y):
    return F.mse_loss(out, y.reshape(out.shape), reduction="sum")


def test_a_loss_that_sums_is_found_and_handled_as_a_sum():
    model, x, y = _regression(n=64)
    truth = _top(dense_hessian(model, lambda o, t: F.mse_loss(o, t.reshape(o.shape), reduction="sum") / len(t), x, y))
    with pytest.warns(UserWarning, match="returns a sum over the batch"):
        found = sh.hessian_eigenvalues(sh.HessianOperator(model, _summing, (x, y), batch_size=16), k=1, tol=1e-10)
    assert found.values[0] == pytest.approx(truth, rel=1e-8)  # taken as a mean it was ×16 (×64 in one batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # declared: no probe, no warning
        declared = sh.HessianOperator(model, _summing, (x, y), batch_size=16, loss_args={"reduction": "sum"})
        assert sh.hessian_eigenvalues(declared, k=1, tol=1e-10).values[0] == pytest.approx(truth, rel=1e-8)
    obj = sh.Objective(model, _summing, (x, y), batch_size=16)
    with pytest.warns(UserWarning):
        obj.evaluate()
    assert obj.loss.to_dict() == {"name": "_summing", "reduction": "sum", "reduction_probed": True}


def test_a_mean_loss_is_found_silently_and_the_declaration_is_not_passed_into_the_function():
    model, x, y = _regression(n=33)

    def mean_loss(out, y):  # takes no reduction argument: passing reduction=sum into it would raise
        return F.mse_loss(out, y.reshape(out.shape))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj = sh.Objective(model, mean_loss, (x, y), batch_size=8)
        assert obj.evaluate()[0] == pytest.approx(float(mean_loss(model(x), y)), rel=1e-12)
    assert obj.loss.reduction == "mean"
    summed = sh.Objective(model, _summing, (x, y), loss_args={"reduction": "sum"})
    assert summed.evaluate()[0] == pytest.approx(float(_summing(model(x), y)) / 33, rel=1e-12)
    with pytest.raises(SharpnessError, match="reduction must be one of"):
        sh.Objective(model, mean_loss, (x, y), loss_args={"reduction": "average"})


def test_a_loss_that_is_neither_is_taken_as_a_mean_with_a_warning():
    model, x, y = _regression(n=20)

    def odd(out, y):  # a batch-level normalization: no per-example decomposition
        d = out.reshape(-1) - y
        return (d ** 2).sum() / d.abs().sum()

    with pytest.warns(UserWarning, match="neither the mean nor the sum"):
        sh.Objective(model, odd, (x, y)).evaluate()


# --- the caller's random state -----------------------------------------------------------------------

def _random_state():
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


def _same(a, b):
    return torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
def test_analyzers_fed_a_dataloader_leave_every_random_state_as_it_was(shuffle, workers):
    torch.manual_seed(1)
    x, y = torch.randn(60, 5), torch.randint(0, 3, (60,))
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(5)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle, num_workers=workers,
                        generator=g if shuffle else None)
    before, g_before = _random_state(), g.get_state().clone()
    results = []
    for _ in range(2):
        results.append([sh.hessian_eigenvalues(sh.HessianOperator(model, "cross_entropy", loader), k=1).values[0],
                        sh.Objective(model, "cross_entropy", loader).evaluate()[0],
                        sh.eps_sharpness(model, "cross_entropy", loader, eps=1e-3, max_iter=2).value])
        assert _same(before, _random_state())
        assert torch.equal(g_before, g.get_state())  # the loader's own generator too
    assert results[0] == results[1]  # same seed, same result, whatever the caller's state


def test_a_tracked_run_trains_exactly_as_one_without_a_tracker():
    torch.manual_seed(0)
    x, y = torch.randn(96, 5), torch.randint(0, 3, (96,))
    data = TensorDataset(x, y)

    def run(track: bool):
        torch.manual_seed(3)
        net = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 3))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        tracker = sh.SharpnessTracker("cross_entropy", DataLoader(data, batch_size=32, shuffle=True), every=2,
                                      subset=None) if track else None
        step = 0
        for _ in range(2):
            for xb, yb in DataLoader(data, batch_size=16, shuffle=True):
                opt.zero_grad()
                F.cross_entropy(net(xb), yb).backward()
                opt.step()
                step += 1
                if tracker is not None:
                    tracker(net, step)
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()]), tracker

    plain, _ = run(False)
    tracked, tracker = run(True)
    assert len(tracker.history) == 6
    assert torch.equal(plain, tracked)


# --- any output --------------------------------------------------------------------------------------

class _Out(OrderedDict):  # a Hugging Face ModelOutput: a dict whose entries are attributes too
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


class _Wrapped(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.net = kind, nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x):
        z = self.net(x)
        return {"tensor": lambda: z, "dict": lambda: {"logits": z, "hidden": z.detach() * 0},
                "only": lambda: {"scores": z, "note": "text"}, "tuple": lambda: (z, z * 0),
                "hf": lambda: _Out(logits=z, hidden_states=(z,))}[self.kind]()


@pytest.mark.parametrize("kind", ["dict", "only", "tuple", "hf"])
def test_dict_tuple_and_hf_outputs_equal_their_logits(kind):
    torch.manual_seed(0)
    x, y = torch.randn(25, 5, dtype=torch.float64), torch.randint(0, 3, (25,))
    plain = _Wrapped("tensor").double()
    other = _Wrapped(kind).double()
    other.load_state_dict(plain.state_dict())
    for f in (lambda m: sh.Objective(m, None, (x, y)).evaluate(),
              lambda m: sh.hessian_eigenvalues(sh.HessianOperator(m, "cross_entropy", (x, y)), k=2).values.tolist()):
        assert f(other) == f(plain)


def test_a_dict_output_without_logits_is_refused_naming_forward_fn():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(5, 3)

        def forward(self, x):
            return {"a": self.a(x), "b": self.a(x)}

    with pytest.raises(SharpnessError, match="forward_fn="):
        sh.Objective(Two(), None, (torch.randn(4, 5), torch.zeros(4, dtype=torch.long))).evaluate()


# --- one parameter space -----------------------------------------------------------------------------

def _frozen_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    net[0].weight.requires_grad_(False)
    return net


def test_every_analyzer_takes_the_parameters_that_require_grad():
    net = _frozen_net()
    x, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert sh.Objective(net, None, (x, y)).num_params == trainable
    assert sh.HessianOperator(net, None, (x, y)).num_params == trainable
    # the frozen weight as a buffer (not a parameter at all) gives the same ε-sharpness and surface
    buffered = _frozen_net()
    w = buffered[0].weight.detach().clone()
    del buffered[0].weight
    buffered[0].register_buffer("weight", w)
    for f in (lambda m: sh.eps_sharpness(m, None, (x, y), eps=1e-2, max_iter=3).value,
              lambda m: sh.adaptive_sharpness(m, None, (x, y), rho=0.05, kind="worst", norm="l2").value,
              lambda m: sh.surface(m, None, (x, y), steps=3, span=0.5).loss.ravel().tolist()):
        assert f(net) == pytest.approx(f(buffered), rel=1e-10)


def test_a_glob_on_a_frozen_weight_says_frozen_and_tied_weights_count_once():
    net = _frozen_net()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    with pytest.raises(SharpnessError, match="frozen"):
        sh.Objective(net, None, (x, y), params=["0.weight"])
    assert sh.Objective(net, None, (x, y), params=["0.weight"], trainable_only=False).num_params == 30
    s = sh.surface(net, None, (x, y), steps=3, dims=1, params=["2.*"])  # directions over the selection only
    assert s.directions.vectors.shape == (1, 21)
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Tanh(), nn.Linear(4, 4, bias=False)).double()
    tied[2].weight = tied[0].weight
    xt, yt = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 4, (10,))
    op = sh.HessianOperator(tied, "cross_entropy", (xt, yt))
    assert op.num_params == 16  # one 4 × 4 matrix, used twice
    # the Hessian of the shared weight sums both uses: the tied model's own function of its one matrix
    assert torch.allclose(op.to_dense(), dense_hessian(tied, F.cross_entropy, xt, yt), atol=1e-10)


def test_norm_baselines_take_the_same_parameters_as_every_measure(tmp_path):
    net = _frozen_net()  # 0.weight frozen
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    W = net[2].weight.detach()
    r = sh.analyze(net, data=(x, y), out=None, measures=["norms"], progress=False)
    got = r.data["checkpoints"]["model"]["measures"]["norms"]["summary"]
    assert got["n_layers"] == 1  # the frozen 6 × 5 weight is not in θ
    assert got["sum_fro_sq"] == pytest.approx(float(W.square().sum()), rel=1e-12)
    assert got["log_prod_spec"] == pytest.approx(float(torch.linalg.matrix_norm(W, 2).log()), rel=1e-12)


def test_the_cli_infers_mse_for_a_regression_state_dict_and_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    from helpers import user_module
    from sharpness.cli import main
    user_module(tmp_path, monkeypatch, "regnets", """
import torch
def load():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=g)
    return (x[:40], x[:40, :1] * 2), (x[40:], x[40:, :1] * 2)
def make_net(input_shape):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(input_shape[0], 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
""")
    import regnets
    torch.save(regnets.make_net([3]).state_dict(), tmp_path / "reg.pt")
    rc = main(["analyze", str(tmp_path / "reg.pt"), "--model", "regnets:make_net", "--data", "regnets:load",
               "--measures", "loss,eigenvalues", "--out", str(tmp_path / "an"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0
    said = [line for line in err.splitlines() if "mse" in line]
    assert said and all(line.startswith("warning: no loss given") for line in said)
    assert "(1,) per example" in said[0] and "UserWarning" not in err
    loss = json.loads((tmp_path / "an" / "report.json").read_text())["checkpoints"]["reg"]["loss"]
    assert loss == {"name": "mse", "reduction": "mean", "inferred": True}


@pytest.mark.parametrize("case", make_cases(), ids=lambda c: c.name)
def test_a_summing_user_loss_is_the_mean_hessian_on_every_case_uneven_and_as_dicts(case):
    # conv1d/conv2d + LayerNorm, eval-mode BatchNorm, MSE and CE; 23 examples in batches of 5 (last 3), and
    # the same examples as dict batches through a DataLoader: the summing loss is found on the first batch
    def summing(out, y):
        return case.loss_fn(out, y) * len(y)  # the batch mean × n: a sum over the batch

    truth = float(torch.linalg.eigvalsh(case.dense_hessian())[-1])
    dicts = [{"x": xi, "labels": yi} for xi, yi in zip(case.x, case.y)]
    loader = DataLoader(dicts, batch_size=5)

    def forward(model, inputs):
        return model(inputs["x"])

    for data, kw in (((case.x, case.y), {"batch_size": 5}), (loader, {"forward_fn": forward})):
        with pytest.warns(UserWarning, match="returns a sum"):
            op = sh.HessianOperator(case.model, summing, data, **kw)
            top = sh.hessian_eigenvalues(op, k=1, tol=1e-10).values[0]
        assert top == pytest.approx(truth, rel=1e-7)
