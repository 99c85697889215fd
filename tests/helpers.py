"""Tiny, fast training configs shared by the tests."""

import torch

from sharpness import TrainConfig


def tiny_config(**kw) -> TrainConfig:
    base = dict(dataset="gaussian", data_args={"n_train": 192, "n_test": 64, "dim": 6, "classes": 3},
                model="mlp", model_args={"widths": [12]}, batch_size=16, epochs=3, lr=1e-2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def same_state(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(model):
    """Parameters, buffers and modes of every module, to check that an analyzer left them alone."""
    return ([p.detach().clone() for p in model.parameters()], [b.clone() for b in model.buffers()],
            [m.training for m in model.modules()])


def assert_unchanged(model, snap):
    params, buffers, modes = snap
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert modes == [m.training for m in model.modules()]


def user_module(folder, monkeypatch, name, source):
    """Write ``name``.py into ``folder`` and make it importable, as a user's module beside their script."""
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)  # a copy another test imported
    return name


def train_interrupted(cfg, out, monkeypatch, at: int):
    """Train ``cfg`` into ``out``, raising KeyboardInterrupt at the ``at``-th cross-entropy call (a kill
    mid-run), then train again from what was left: returns the resumed run's final checkpoint."""
    import pytest
    import torch

    from sharpness import train_model

    real_ce, calls = torch.nn.functional.cross_entropy, {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real_ce(*args, **kw)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, out, progress=False)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", real_ce)
    assert not (out / "done").exists() and (out / "last.pt").exists()
    return train_model(cfg, out, progress=False)

