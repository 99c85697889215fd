import os
import subprocess
import sys

import pytest
import torch

from helpers import tiny_config
from sharpness import SharpnessError, load_checkpoint, train_model
from sharpness.cli import info_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train_model(tiny_config(), out, progress=False)
    return out


def test_round_trip(run_dir):
    ckpt = load_checkpoint(run_dir / "final.pt")
    model = ckpt.model()
    train, test = ckpt.datasets()
    assert not model.training and ckpt.epoch == 3 and ckpt.step == 3 * 12
    x, y = train.tensors
    loss = torch.nn.functional.cross_entropy(model(x), y).item()
    assert abs(loss - ckpt.history[-1]["train_loss"]) < 1e-5
    assert ckpt.config["batch_size"] == 16 and len(ckpt.sha256) == 64
    # a bare state_dict with the caller's model
    path = run_dir / "bare.pt"
    torch.save(model.state_dict(), path)
    bare = load_checkpoint(path, model=model, data="gaussian")
    m2 = bare.model()
    assert m2 is not model and all(torch.equal(a, b) for a, b in zip(m2.parameters(), model.parameters()))
    with pytest.raises(SharpnessError, match="bare state_dict"):
        load_checkpoint(path)


class Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _bad_files(tmp_path, run_dir):
    evil_target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload(str(evil_target))}, evil)
    truncated = tmp_path / "truncated.pt"
    data = (run_dir / "final.pt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("hello, I am not a checkpoint\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1, "b": [1, 2]}, foreign)
    return evil_target, {"evil": (evil, "could run code"), "truncated": (truncated, "truncated or corrupt"),
                         "text": (text, "not a PyTorch checkpoint"), "empty": (empty, "empty file"),
                         "missing": (tmp_path / "nope.pt", "no such file"),
                         "foreign": (foreign, "not a model checkpoint")}


def test_bad_files_raise_one_clear_error(tmp_path, run_dir):
    evil_target, cases = _bad_files(tmp_path, run_dir)
    for name, (path, message) in cases.items():
        with pytest.raises(SharpnessError, match=message) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), name
    assert not evil_target.exists()


def test_cli_bad_files_exit_2_one_line(tmp_path, run_dir, capsys):
    evil_target, cases = _bad_files(tmp_path, run_dir)
    for name, (path, message) in cases.items():
        assert info_main([str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (name, err)
    assert not evil_target.exists()
    # And as a real process: no traceback, exit code 2.
    r = subprocess.run([sys.executable, "-m", "sharpness.info", str(cases["evil"][0])],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert not evil_target.exists()


def test_spec_and_weight_problems(tmp_path, run_dir):
    obj = torch.load(run_dir / "final.pt", weights_only=True)
    obj["model"]["name"] = "vgg99"
    torch.save(obj, tmp_path / "unknown.pt")
    with pytest.raises(SharpnessError, match="unknown model 'vgg99'"):
        load_checkpoint(tmp_path / "unknown.pt").model()

    obj = torch.load(run_dir / "final.pt", weights_only=True)
    obj["model"]["args"]["widths"] = [13]
    torch.save(obj, tmp_path / "misfit.pt")
    with pytest.raises(SharpnessError, match="weights do not fit model 'mlp'"):
        load_checkpoint(tmp_path / "misfit.pt").model()

    obj = torch.load(run_dir / "final.pt", weights_only=True)
    obj["state_dict"]["1.weight"][0, 0] = float("nan")
    torch.save(obj, tmp_path / "nan.pt")
    with pytest.raises(SharpnessError, match="'1.weight' contains NaN"):
        load_checkpoint(tmp_path / "nan.pt")

    obj = torch.load(run_dir / "final.pt", weights_only=True)
    obj["version"] = 99
    torch.save(obj, tmp_path / "future.pt")
    with pytest.raises(SharpnessError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")
