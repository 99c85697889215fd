"""SharpnessTracker in a user's loop and in the trainer; SAM / ASAM in the trainer."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from helpers import assert_unchanged, same_state, snapshot, tiny_config, train_interrupted
from sharpness import (
    HessianOperator,
    SharpnessError,
    SharpnessTracker,
    hessian_eigenvalues,
    load_checkpoint,
    train_model,
)
from sharpness.training.sam import SAM


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _model(bn=False, seed=0):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers).double()


def _loop(model, x, y, tracker=None, steps=30, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        idx = torch.randperm(len(y), generator=gen)[:16]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if tracker is not None:
            tracker(model, step)
    return opt


def test_tracked_values_match_a_fresh_tight_lanczos_and_the_loop_is_untouched():
    x, y = _data()
    a, b = _model(bn=True), _model(bn=True)
    tracker = SharpnessTracker("cross_entropy", (x, y), every=5, k=2, subset=64, tol=1e-6, max_hvps=60)
    a.train()
    opt_a = _loop(a, x, y, tracker)
    opt_b = _loop(b, x, y)  # the same run without a tracker: bit-identical weights, buffers, optimizer state
    assert same_state(a.state_dict(), b.state_dict())
    assert all(torch.equal(s["momentum_buffer"], t["momentum_buffer"])
               for s, t in zip(opt_a.state.values(), opt_b.state.values()))
    assert a.training and [r["step"] for r in tracker.history] == [5, 10, 15, 20, 25, 30]
    last = tracker.history[-1]
    assert last["mode"] == "train" and last["converged"] and last["warm"]
    # against a fresh, tight Lanczos on the same subset, mode and weights
    sub = tracker._data
    snap = snapshot(a)
    fresh = hessian_eigenvalues(HessianOperator(a, "cross_entropy", sub, mode="train"), k=2, tol=1e-10)
    assert_unchanged(a, snap)
    assert np.allclose(last["top"], fresh.values, rtol=1e-5)
    # eval mode is another Hessian for a BN model, and the record says which
    ev = SharpnessTracker("cross_entropy", (x, y), every=1, subset=64, mode="eval", tol=1e-6)(a, 1)
    assert ev["mode"] == "eval" and abs(ev["lambda_max"] - last["lambda_max"]) > 1e-3 * last["lambda_max"]


def test_warm_start_saves_products_and_the_state_resumes_exactly():
    x, y = _data(seed=1)
    counts = {}
    for warm in (True, False):
        model = _model(seed=2)
        t = SharpnessTracker("cross_entropy", (x, y), every=2, subset=None, tol=1e-6, max_hvps=80, warm_start=warm)
        _loop(model, x, y, t, steps=20, lr=0.02)
        counts[warm] = [r["n_hvps"] for r in t.history]
        assert all(r["converged"] for r in t.history)
    assert sum(counts[True][1:]) < 0.8 * sum(counts[False][1:]), counts
    # state_dict → a new tracker continues as the first would have
    model = _model(seed=2)
    whole = SharpnessTracker("cross_entropy", (x, y), every=2, subset=None, tol=1e-6, max_hvps=80)
    first = SharpnessTracker("cross_entropy", (x, y), every=2, subset=None, tol=1e-6, max_hvps=80)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    for step in range(1, 9):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        whole(model, step)
        if step <= 4:
            first(model, step)
        if step == 4:
            second = SharpnessTracker("cross_entropy", (x, y), every=2, subset=None, tol=1e-6, max_hvps=80)
            second.load_state_dict(first.state_dict())
        if step > 4:
            second(model, step)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in second.history]


def test_tracker_extra_measures_and_bad_input():
    x, y = _data()
    model = _model()
    t = SharpnessTracker("cross_entropy", (x, y), every=1, subset=48, measures=["lambda_max", "trace"],
                         max_hvps=200, user={"grad_norm": lambda obj: obj.gradient().norm()})
    r = t(model, 3)
    H = HessianOperator(model, "cross_entropy", t._data, mode="train").to_dense()
    assert r["trace_converged"]  # rtol 1e-2 reached, or the exact trace (163 parameters ≤ 200 products)
    assert abs(r["trace"] - float(torch.trace(H))) <= max(4 * r["trace_stderr"], 1e-10)
    assert r["grad_norm"] > 0 and t(model, 0) is not None and SharpnessTracker(
        "cross_entropy", (x, y), every=5)(model, 3) is None
    for kw, msg in (({"every": 0}, "every"), ({"measures": ["hessian"]}, "measures"), ({"mode": "test"}, "mode"),
                    ({"user": {"a": 3}}, "user measure 'a'"), ({"measures": None}, "measures"),
                    ({"measures": (m for m in ["trace"])}, "measures"), ({"user": {"step": len}}, "overwrite"),
                    ({"batch_size": 0}, "batch_size"), ({"bogus": 1}, "unknown argument"),
                    ({"loss_args": {"nope": 1}}, "unknown argument")):
        with pytest.raises(SharpnessError, match=msg):
            SharpnessTracker("cross_entropy", (x, y), **kw)


# --- the trainer --------------------------------------------------------------------------------------


def test_trainer_tracks_curvature_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = tiny_config(epochs=3, optimizer="sgd", lr=0.05, track_every=6, track_samples=64)
    ref = train_model(cfg, tmp_path / "ref", progress=False)
    plain = train_model(tiny_config(epochs=3, optimizer="sgd", lr=0.05), tmp_path / "plain", progress=False)
    assert same_state(ref.state_dict, plain.state_dict)  # tracking does not change the run
    tracked = json.loads((tmp_path / "ref" / "history.json").read_text())["tracked"]
    assert [r["step"] for r in tracked] == list(range(6, 37, 6)) and all(r["mode"] == "train" for r in tracked)

    resumed = train_interrupted(cfg, tmp_path / "run", monkeypatch, at=12 * 2 + 5)  # mid-way through epoch 3
    assert same_state(ref.state_dict, resumed.state_dict)
    again = json.loads((tmp_path / "run" / "history.json").read_text())["tracked"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(again) == strip(tracked)


def test_sam_step_equals_its_closed_form_on_a_quadratic():
    # L(w) = ½ wᵀAw: g = Aw, ε̂ = ρ T²g/‖Tg‖, the update uses A(w + ε̂)
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    for adaptive in (False, True):
        w = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        opt = SAM(torch.optim.SGD([w], lr=0.1), rho=0.05, adaptive=adaptive)

        def closure():
            opt.zero_grad()
            loss = 0.5 * w @ A @ w
            loss.backward()
            return loss

        w0 = w.detach().clone()
        closure()
        opt.step(closure)
        g = A @ w0
        T = (w0.abs() + 0.01) if adaptive else torch.ones(2, dtype=torch.float64)
        eps = 0.05 * T * T * g / (T * g).norm()
        assert torch.allclose(w.detach(), w0 - 0.1 * A @ (w0 + eps), rtol=0, atol=1e-14)
    with pytest.raises(SharpnessError, match="closure"):
        opt.step()
    with pytest.raises(SharpnessError, match="rho"):
        SAM(torch.optim.SGD([w], lr=0.1), rho=0)


def test_trainer_with_sam_and_asam_resumes_exactly(tmp_path, monkeypatch):
    for adaptive in (False, True):
        cfg = tiny_config(epochs=3, optimizer="sgd", momentum=0.9, lr=0.05, sam="asam" if adaptive else "sam")
        ref = train_model(cfg, tmp_path / f"ref{adaptive}", progress=False)
        base = train_model(tiny_config(epochs=3, optimizer="sgd", momentum=0.9, lr=0.05), tmp_path / "base",
                           progress=False)
        assert not same_state(ref.state_dict, base.state_dict)
        # two passes per update: mid-way through the third epoch
        resumed = train_interrupted(cfg, tmp_path / f"run{adaptive}", monkeypatch, at=2 * 12 * 2 + 5)
        assert same_state(ref.state_dict, resumed.state_dict)
        assert load_checkpoint(tmp_path / f"run{adaptive}" / "final.pt").config["sam_rho"] == 0.05
    with pytest.raises(SharpnessError, match="sam_rho must be"):
        train_model(tiny_config(sam="sam", sam_rho=0.0), tmp_path / "bad", progress=False)
    with pytest.raises(SharpnessError, match="track_measures must be a list from"):
        train_model(tiny_config(track_every=5, track_measures=["hessian"]), tmp_path / "bad", progress=False)
    with pytest.raises(SharpnessError, match="track_samples"):
        train_model(tiny_config(track_every=5, track_samples=1), tmp_path / "bad", progress=False)
    # BatchNorm cannot train on a batch of one example: said before anything is written
    with pytest.raises(SharpnessError, match="batch of one example"):
        train_model(tiny_config(model_args={"widths": [12], "bn": True}, batch_size=191), tmp_path / "bad",
                    progress=False)
    assert not (tmp_path / "bad").exists()  # bad input: nothing written
