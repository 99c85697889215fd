"""Hostile inputs to the trainer, the checkpoint loader and the library's training arguments.

Every bad input is one line (a SharpnessError; exit 2 from the command line) before any update and before
any file is written: a tampered resume state (generated corruptions of a real ``last.pt``, and ``init.pt``),
out-of-range arguments, NaN/Inf data, a user function that calls ``sys.exit``; nothing is written through a
symlink placed in the run folder, and the temporary files a killed writer left are removed.
"""

import copy
import hashlib
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import tiny_config, user_module
from sharpness import SharpnessError, TrainConfig, load_checkpoint, train_model
from sharpness.checkpoint import tensor_checksum
from sharpness.io import remove_stale_temporaries
from sharpness.models import GhostBatchNorm
from sharpness.training.sam import SAM
from sharpness.training.schedules import MAX_BATCH_SIZE, Schedule

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

NAN, INF = float("nan"), float("inf")
if given is not None:
    FUZZ = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
    ANY = st.one_of(st.sampled_from([0, -1, 0.0, -0.5, 1e-300, 3.7, NAN, INF, -INF, "3", "", True, None, [1], {},
                                     10**12, 2**70, 1e300]),
                    st.integers(-100, 100), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3))


def fuzz(**strategies):
    def wrap(fn):
        if given is None:
            return pytest.mark.skip(reason="hypothesis is not installed")(fn)
        return FUZZ(given(**strategies)(fn))
    return wrap


def one_line(e) -> str:
    text = str(e.value if hasattr(e, "value") else e)
    assert "\n" not in text.strip() and "\x1b" not in text, repr(text)
    return text


def tree(folder: Path) -> dict:
    """Every file under ``folder`` with its size and SHA-256 (a link: where it points)."""
    out = {}
    if not folder.exists():
        return out
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def resave(obj: dict, path: Path) -> None:
    """Write a tampered payload with a fresh checksum (whoever edits the file can recompute it)."""
    obj = dict(obj)
    if isinstance(obj.get("checksum"), dict):
        try:
            obj["checksum"] = {**obj["checksum"], "tensors": tensor_checksum(obj)}
        except Exception:  # a payload the checksum cannot read (meta tensors): saved as it is
            pass
    torch.save(obj, path)


CFG = dict(epochs=2, optimizer="sgd", momentum=0.9, track_every=5, track_samples=32, trace_log_steps=True,
           data_args={"n_train": 96, "n_test": 32, "dim": 6, "classes": 3})


def cfg(**kw):
    return tiny_config(**{**CFG, **kw})


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A real run folder killed in epoch 2: init.pt, ckpt_epoch1.pt, last.pt (epoch 1), history.json."""
    return _interrupted(tmp_path_factory.mktemp("resume") / "run")


@pytest.fixture(scope="module")
def interrupted_adam(tmp_path_factory):
    """The same with Adam: its per-parameter state (step, exp_avg, exp_avg_sq) is in last.pt."""
    return _interrupted(tmp_path_factory.mktemp("resume_adam") / "run", optimizer="adam")


def _interrupted(folder: Path, **kw) -> Path:
    real = torch.nn.functional.cross_entropy

    def flaky(*a, **kw):
        if (folder / "last.pt").exists():  # the first loss after epoch 1 was saved: inside epoch 2
            raise KeyboardInterrupt
        return real(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "cross_entropy", flaky)
        with pytest.raises(KeyboardInterrupt):
            train_model(cfg(**kw), folder, progress=False)
    assert load_checkpoint(folder / "last.pt").epoch == 1 and not (folder / "done").exists()
    return folder


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def refused(config, folder: Path, match: str | None = None) -> str:
    """``train`` refuses in one line and leaves the folder exactly as it was."""
    before = tree(folder)
    with pytest.raises(SharpnessError) as e:
        train_model(config, folder, progress=False)
    text = one_line(e)
    assert match is None or match in text, text
    assert tree(folder) == before, "files changed although the run was refused"
    return text


def test_the_untampered_state_resumes(interrupted, tmp_path):
    run = train_model(cfg(), copy_run(interrupted, tmp_path / "run"), progress=False)
    assert run.epoch == 2 and [e["epoch"] for e in run.history] == [0, 1, 2]


# ------------------------------------------------------------------------------------------------------
# targeted corruptions of last.pt: each refused naming the file and the field


def _first(d):
    return next(iter(d))


CORRUPTIONS = {
    "weight_missing": (lambda o: o["state_dict"].pop(_first(o["state_dict"])), "state_dict"),
    "weight_shape": (lambda o: o["state_dict"].__setitem__(_first(o["state_dict"]), torch.zeros(3, 3)), "shape"),
    "weight_extra": (lambda o: o["state_dict"].__setitem__("9.weight", torch.zeros(2)), "state_dict"),
    "weight_int": (lambda o: o["state_dict"].__setitem__(
        _first(o["state_dict"]), torch.zeros(o["state_dict"][_first(o["state_dict"])].shape, dtype=torch.int64)),
        "dtype"),
    "no_state_dict": (lambda o: o.pop("state_dict"), "state_dict"),
    "opt_none": (lambda o: o.__setitem__("optimizer", None), "optimizer"),
    "opt_groups": (lambda o: o["optimizer"]["param_groups"].append(dict(o["optimizer"]["param_groups"][0],
                                                                        params=[99])), "param_groups"),
    "opt_params": (lambda o: o["optimizer"]["param_groups"][0].__setitem__("params", [0, 1]), "params"),
    "opt_params_dup": (lambda o: o["optimizer"]["param_groups"][0].__setitem__("params", [0, 0, 1, 2]), "params"),
    "opt_momentum_str": (lambda o: o["optimizer"]["param_groups"][0].__setitem__("momentum", "x"), "momentum"),
    "opt_lr_nan": (lambda o: o["optimizer"]["param_groups"][0].__setitem__("lr", NAN), "lr"),
    "opt_buffer_shape": (lambda o: o["optimizer"]["state"][0].__setitem__("momentum_buffer", torch.zeros(2)),
                         "momentum_buffer"),
    "opt_buffer_int": (lambda o: o["optimizer"]["state"][0].__setitem__("momentum_buffer", 3), "momentum_buffer"),
    "opt_buffer_nan": (lambda o: o["optimizer"]["state"][0]["momentum_buffer"].fill_(NAN), "momentum_buffer"),
    "opt_state_stranger": (lambda o: o["optimizer"]["state"].__setitem__(77, {}), "optimizer.state"),
    "opt_state_key": (lambda o: o["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(1)), "optimizer"),
    "tracker_missing": (lambda o: o["extra"].pop("tracker"), "tracker"),
    "tracker_str": (lambda o: o["extra"].__setitem__("tracker", "x"), "tracker"),
    "tracker_history": (lambda o: o["extra"]["tracker"].__setitem__("history", 5), "tracker.history"),
    "tracker_record": (lambda o: o["extra"]["tracker"]["history"].append({"step": "x"}), "tracker.history"),
    "tracker_vectors": (lambda o: o["extra"]["tracker"].__setitem__("vectors", torch.zeros(3)), "vectors"),
    "tracker_vectors_str": (lambda o: o["extra"]["tracker"].__setitem__("vectors", "abc"), "vectors"),
    "tracker_vectors_nan": (lambda o: o["extra"]["tracker"]["vectors"].fill_(NAN), "vectors"),
    "trace_missing": (lambda o: o["extra"].pop("trace"), "trace"),
    "trace_record": (lambda o: o["extra"]["trace"].append({"step": 10**6}), "trace"),
    "epoch_big": (lambda o: o.__setitem__("epoch", 7), "epoch"),
    "epoch_zero": (lambda o: o.__setitem__("epoch", 0), "epoch"),
    "epoch_neg": (lambda o: o.__setitem__("epoch", -1), "epoch"),
    "epoch_float": (lambda o: o.__setitem__("epoch", 1.0), "epoch"),
    "epoch_str": (lambda o: o.__setitem__("epoch", "1"), "epoch"),
    "epoch_missing": (lambda o: o.pop("epoch"), "epoch"),
    "step_big": (lambda o: o.__setitem__("step", 10**8), "step"),
    "step_neg": (lambda o: o.__setitem__("step", -3), "step"),
    "history_str": (lambda o: o.__setitem__("history", "abc"), "history"),
    "history_empty": (lambda o: o.__setitem__("history", []), "history"),
    "history_short": (lambda o: o.__setitem__("history", o["history"][:1]), "history"),
    "history_ints": (lambda o: o.__setitem__("history", [1, 2]), "history"),
    "history_examples": (lambda o: o["history"][-1].__setitem__("examples", 5), "examples"),
    "history_loss_none": (lambda o: o["history"][-1].__setitem__("train_loss", None), "train_loss"),
    "history_loss_nan": (lambda o: o["history"][-1].__setitem__("train_loss", NAN), "train_loss"),
    "history_step": (lambda o: o["history"][-1].__setitem__("step", 3), "step"),
    "meta_weight": (lambda o: o["state_dict"].__setitem__(
        _first(o["state_dict"]), torch.empty(o["state_dict"][_first(o["state_dict"])].shape, device="meta")), "meta"),
    "meta_tracker": (lambda o: o["extra"]["tracker"].__setitem__("vectors", torch.empty(1, 5, device="meta")),
                     "meta"),
    "escape_world": (lambda o: o["extra"].__setitem__("world_size", "\x1b[2J2"), "process"),
    "world_size": (lambda o: o["extra"].__setitem__("world_size", 2), "process"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_tampered_resume_state_is_refused_before_any_epoch(interrupted, tmp_path, name):
    change, field = CORRUPTIONS[name]
    folder = copy_run(interrupted, tmp_path / "run")
    obj = torch.load(folder / "last.pt", weights_only=True)
    change(obj)
    resave(obj, folder / "last.pt")
    text = refused(cfg(), folder)
    assert "last.pt" in text or str(folder) in text, text
    assert field in text, text


@pytest.mark.parametrize("key,value,field", [
    ("step", torch.tensor(-5.0), "step"), ("step", torch.tensor(2.5), "step"),
    ("exp_avg_sq", None, "exp_avg_sq"), ("max_exp_avg_sq", None, "max_exp_avg_sq"),
])
def test_a_tampered_adam_state_is_refused_before_any_epoch(interrupted_adam, tmp_path, key, value, field):
    folder = copy_run(interrupted_adam, tmp_path / "run")
    obj = torch.load(folder / "last.pt", weights_only=True)
    entry = obj["optimizer"]["state"][_first(obj["optimizer"]["state"])]
    entry[key] = value if value is not None else -torch.ones_like(entry["exp_avg"])
    resave(obj, folder / "last.pt")
    assert field in refused(cfg(optimizer="adam"), folder)


def test_the_untampered_adam_state_resumes(interrupted_adam, tmp_path):
    run = train_model(cfg(optimizer="adam"), copy_run(interrupted_adam, tmp_path / "run"), progress=False)
    assert run.epoch == 2


@pytest.mark.parametrize("name", ["weight_missing", "weight_shape", "no_state_dict", "other_run"])
def test_a_tampered_init_pt_is_refused_on_resume(interrupted, tmp_path, name):
    folder = copy_run(interrupted, tmp_path / "run")
    obj = torch.load(folder / "init.pt", weights_only=True)
    if name == "other_run":
        obj["config"] = {**obj["config"], "lr": 0.5}
    else:
        CORRUPTIONS[name][0](obj)
    resave(obj, folder / "init.pt")
    assert "init.pt" in refused(cfg(), folder)


def test_a_missing_init_pt_is_refused_on_resume(interrupted, tmp_path):
    folder = copy_run(interrupted, tmp_path / "run")
    (folder / "init.pt").unlink()
    assert "init.pt" in refused(cfg(), folder)


def test_a_fifo_at_last_pt_is_refused_at_once(interrupted, tmp_path):
    folder = copy_run(interrupted, tmp_path / "run")
    (folder / "last.pt").unlink()
    os.mkfifo(folder / "last.pt")
    assert "not a regular file" in refused(cfg(), folder)


# generated corruptions: any leaf of the resume state deleted, replaced by a value of another kind, or a
# tensor reshaped → refused in one line with nothing written, or (a harmless change) a clean resume

_WRONG = [None, "x", -1, 1.5, 10**12, NAN, [], {}, True, torch.zeros(3), torch.zeros(()), torch.zeros(2, 2, 2)]


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    if path:
        yield path


_SKIP = {"format", "version", "torch", "checksum", "config", "model", "data"}  # checked by the loader's own tests


@fuzz(pick=st.integers(0, 10**6) if given else None, op=st.sampled_from(["del", "wrong", "reshape"]) if given else None,
      value=st.sampled_from(range(len(_WRONG))) if given else None)
def test_generated_corruptions_of_the_resume_state(interrupted, tmp_path_factory, pick, op, value):
    folder = copy_run(interrupted, tmp_path_factory.mktemp("gen") / "run")
    obj = torch.load(folder / "last.pt", weights_only=True)
    paths = [p for p in _leaves(obj) if p[0] not in _SKIP]
    path = paths[pick % len(paths)]
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if op == "del":
        del parent[key]
    elif op == "reshape" and isinstance(parent[key], torch.Tensor) and parent[key].numel() > 1:
        parent[key] = parent[key].reshape(-1)[:-1].clone()
    else:
        parent[key] = copy.deepcopy(_WRONG[value])
    resave(obj, folder / "last.pt")
    before = tree(folder)
    try:
        run = train_model(cfg(), folder, progress=False)
    except SharpnessError as e:
        one_line(e)
        assert tree(folder) == before, f"{path} {op}: refused, but files changed"
        return
    except Exception as e:  # a traceback is a defect
        pytest.fail(f"{path} {op} {_WRONG[value]!r}: {type(e).__name__}: {str(e)[:300]}")
    assert run.epoch == 2 and all(math.isfinite(e["train_loss"]) for e in run.history)


# ------------------------------------------------------------------------------------------------------
# symlinks and stale temporaries in the run folder


@pytest.mark.parametrize("name", ["done", "history.json", "last.pt", "final.pt", "ckpt_epoch2.pt", ".lock"])
def test_a_symlink_placed_in_the_run_folder_is_never_written_through(interrupted, tmp_path, name):
    folder = copy_run(interrupted, tmp_path / "run")
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    if name == "last.pt":  # the resume state read through a link is fine; it must be replaced, not written
        shutil.copy(folder / "last.pt", target)
    before = target.read_bytes()
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(target)
    if name == ".lock":
        assert "symlink" in refused(cfg(), folder)
    else:
        train_model(cfg(), folder, progress=False)
        assert (folder / name).is_file() and not (folder / name).is_symlink()
    assert target.read_bytes() == before


def test_done_through_a_dangling_symlink_creates_no_target(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "done").symlink_to(tmp_path / "created_by_train")
    train_model(cfg(epochs=1, track_every=0, trace_log_steps=False), folder, progress=False)
    assert not (tmp_path / "created_by_train").exists() and (folder / "done").read_text() == "done\n"


def test_stale_temporaries_of_a_killed_writer_are_removed(interrupted, tmp_path):
    folder = copy_run(interrupted, tmp_path / "run")
    stale = [folder / ".last.pt.k1ll3d_x.tmp", folder / ".history.json.abcd1234.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    target = tmp_path / "outside.tmp"
    target.write_text("keep")
    (folder / ".link.abcdefgh.tmp").symlink_to(target)
    (folder / "notes.tmp").write_text("the user's")
    train_model(cfg(), folder, progress=False)
    assert not any(p.exists() for p in stale)
    assert (folder / ".link.abcdefgh.tmp").is_symlink() and target.read_text() == "keep"
    assert (folder / "notes.tmp").read_text() == "the user's"


def test_remove_stale_temporaries_takes_only_the_writers_names(tmp_path):
    (tmp_path / ".a.pt.12345678.tmp").write_text("x")
    (tmp_path / ".a.pt.1234567.tmp").write_text("x")  # not mkstemp's 8 characters
    (tmp_path / "a.pt.12345678.tmp").write_text("x")
    (tmp_path / ".d.abcdefgh.tmp").mkdir()
    assert remove_stale_temporaries(tmp_path) == [tmp_path / ".a.pt.12345678.tmp"]
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_second_trainer_on_the_same_folder_is_refused(interrupted, tmp_path):
    from sharpness.io import locked

    folder = copy_run(interrupted, tmp_path / "run")
    with locked(folder / ".lock", "busy"):
        with pytest.raises(SharpnessError, match="another process") as e:
            train_model(cfg(), folder, progress=False)
    one_line(e)
    assert load_checkpoint(folder / "last.pt").epoch == 1


# ------------------------------------------------------------------------------------------------------
# bad data, user functions that exit, devices, out folders


def _data_module(tmp_path, monkeypatch, body: str) -> str:
    name = f"fz_train_data_{abs(hash(body)) % 10**8}"
    user_module(tmp_path / "mods", monkeypatch, name, "import sys\nimport torch\n"
                "from torch.utils.data import Dataset, TensorDataset\n" + body)
    return name


@pytest.mark.parametrize("where", ["train_x", "train_y", "test_x", "dataset_x"])
@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_nan_or_inf_in_the_data_is_bad_data_not_divergence(tmp_path, monkeypatch, where, bad):
    body = f"""
BAD = float({str(bad)!r})
class Items(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __len__(self):
        return len(self.x)
    def __getitem__(self, i):
        return self.x[i], self.y[i]
def make():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randn(40, 2, generator=g)
    tx, ty = torch.randn(10, 4, generator=g), torch.randn(10, 2, generator=g)
    where = {where!r}
    if where in ("train_x", "dataset_x"):
        x[7, 1] = BAD
    elif where == "train_y":
        y[3, 0] = BAD
    else:
        tx[2, 2] = BAD
    train = Items(x, y) if where == "dataset_x" else TensorDataset(x, y)
    return train, TensorDataset(tx, ty)
"""
    mod = _data_module(tmp_path, monkeypatch, body)
    out = tmp_path / "run"
    config = TrainConfig(dataset=f"{mod}:make", loss="mse", model="mlp", model_args={"widths": [8], "num_classes": 2}, batch_size=8,
                         epochs=1)
    with pytest.raises(SharpnessError) as e:
        train_model(config, out, progress=False)
    text = one_line(e)
    assert "NaN or Inf" in text and "learning rate" not in text.replace("not a learning-rate", ""), text
    assert ("test" in text) == (where == "test_x"), text
    assert not out.exists()


def test_divergence_on_finite_data_keeps_its_message(tmp_path):
    config = cfg(epochs=2, track_every=0, trace_log_steps=False, lr=1e12, momentum=0.0)
    with pytest.raises(SharpnessError, match="diverged") as e:
        train_model(config, tmp_path / "run", progress=False)
    assert "NaN or Inf" not in one_line(e)


@pytest.mark.parametrize("who", ["data", "model", "loss", "forward"])
@pytest.mark.parametrize("code", [0, None, "bye"])
def test_a_user_function_calling_sys_exit_is_an_error_naming_it(tmp_path, monkeypatch, who, code):
    body = f"""
CODE = {code!r}
def data():
    if {who!r} == "data":
        sys.exit(CODE)
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)), \\
        TensorDataset(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g))
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
    def forward(self, x):
        if {who!r} == "forward":
            sys.exit(CODE)
        return self.lin(x)
def model():
    if {who!r} == "model":
        sys.exit(CODE)
    return Net()
def loss(out, y):
    if {who!r} == "loss":
        sys.exit(CODE)
    return torch.nn.functional.cross_entropy(out, y)
"""
    mod = _data_module(tmp_path, monkeypatch, body)
    out = tmp_path / "run"
    config = TrainConfig(dataset=f"{mod}:data", model=f"{mod}:model", loss=f"{mod}:loss", batch_size=8, epochs=1)
    with pytest.raises(SharpnessError) as e:
        train_model(config, out, progress=False)
    text = one_line(e)
    assert "sys.exit" in text, text
    assert {"data": "data set", "model": "model", "loss": "loss", "forward": "model"}[who] in text
    assert not out.exists()


def test_keyboard_interrupt_from_a_user_loss_still_stops_and_resumes(tmp_path, monkeypatch):
    body = """
N = {"calls": 0}
def loss(out, y):
    N["calls"] += 1
    if N["calls"] == 9:
        raise KeyboardInterrupt
    return torch.nn.functional.cross_entropy(out, y)
"""
    mod = _data_module(tmp_path, monkeypatch, body)
    config = cfg(loss=f"{mod}:loss", track_every=0, trace_log_steps=False)
    with pytest.raises(KeyboardInterrupt):
        train_model(config, tmp_path / "run", progress=False)
    assert train_model(config, tmp_path / "run", progress=False).epoch == 2


@pytest.mark.parametrize("device", ["mps", "meta", "xla", "cuda:x", "cpu:1", "", "CUDA"])
def test_unsupported_training_devices_are_one_line(tmp_path, device):
    with pytest.raises(SharpnessError) as e:
        train_model(cfg(device=device), tmp_path / "run", progress=False)
    assert "device" in one_line(e) and not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:7"])
def test_cuda_without_cuda_is_one_line(tmp_path, device):
    with pytest.raises(SharpnessError, match="CUDA") as e:
        train_model(cfg(device=device), tmp_path / "run", progress=False)
    one_line(e)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("out", ["", " ", None, 5, b"run", "a\0b"])
def test_bad_out_folders_are_refused(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SharpnessError) as e:
        train_model(cfg(epochs=1), out, progress=False)
    one_line(e)
    assert list(tmp_path.iterdir()) == []


def test_a_config_that_is_not_a_train_config_is_refused(tmp_path):
    with pytest.raises(SharpnessError, match="TrainConfig"):
        train_model({"epochs": 1}, tmp_path / "run", progress=False)


def test_the_cli_says_a_tampered_resume_state_in_one_line_with_exit_2(interrupted, tmp_path, capsys):
    from sharpness.cli import train_main

    folder = copy_run(interrupted, tmp_path / "run")
    obj = torch.load(folder / "last.pt", weights_only=True)
    obj["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(5)
    resave(obj, folder / "last.pt")
    before = tree(folder)
    argv = ["--dataset", "gaussian", "--data-arg", "n_train=96", "--data-arg", "n_test=32", "--data-arg", "dim=6",
            "--data-arg", "classes=3", "--model", "mlp", "--model-arg", "widths=[12]", "--batch-size", "16",
            "--epochs", "2", "--lr", "0.01", "--optimizer", "sgd", "--momentum", "0.9", "--track-every", "5",
            "--track-samples", "32", "--trace-log-steps", "--quiet", "--out", str(folder)]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "momentum_buffer" in err, err
    assert tree(folder) == before


# ------------------------------------------------------------------------------------------------------
# library arguments: refused in one line at the top, or a correct result


def _ok_int(v, lo=1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


@fuzz(v=ANY if given else None)
def test_ghost_batch_norm_arguments(v):
    for args in ((v,), (4, v)):
        good = _ok_int(v) and (len(args) == 1 and v <= 4096 or len(args) == 2)
        try:
            bn = GhostBatchNorm(*args)
        except SharpnessError as e:
            one_line(e)
            assert not good, f"GhostBatchNorm{args} refused: {e}"
            continue
        assert _ok_int(v) or (len(args) == 2 and v is None), f"GhostBatchNorm{args} accepted"
        if len(args) == 1 and v <= 4096:
            assert bn.num_features == v


@fuzz(v=ANY if given else None)
def test_sam_arguments(v):
    base = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(SharpnessError) as e:
        SAM(v)
    one_line(e)
    real = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    for kw, good in ((dict(rho=v), real and v > 0), (dict(eta=v), real and v >= 0),
                     (dict(adaptive=v), isinstance(v, bool))):
        try:
            opt = SAM(base, **kw)
        except SharpnessError as e:
            one_line(e)
            assert not good, f"SAM({kw}) refused: {e}"
            continue
        assert good, f"SAM({kw}) accepted"
        assert opt.param_groups is base.param_groups


@fuzz(factor=st.one_of(st.floats(1e-320, 1.0), st.sampled_from([1e-300, 5e-324, 0.5, 1.0])) if given else None,
      milestones=st.lists(st.integers(0, 60), max_size=40) if given else None,
      epochs=st.integers(1, 10**7) if given else None, cap=st.one_of(st.none(), st.integers(1, 10**12)) if given else None)
def test_batch_growth_is_bounded_or_refused(factor, milestones, epochs, cap):
    try:
        config = tiny_config(batch_growth=True, decay_factor=factor, milestones=milestones, epochs=epochs,
                             max_batch_size=cap).validated()
    except SharpnessError as e:
        one_line(e)
        return
    try:
        sched = Schedule.from_config(config)
    except SharpnessError as e:
        one_line(e)
        return
    sizes = sched.batch_sizes()
    assert all(1 <= b <= MAX_BATCH_SIZE for b in sizes)
    assert {sched.batch_size(e) for e in range(min(sched.epochs, 80))} <= sizes
    assert all(math.isfinite(sched.lr(e)) for e in range(min(sched.epochs, 80)))


@pytest.mark.parametrize("kw", [dict(epochs=10**12), dict(regime_adaptation=True, batch_size=10**9, base_batch_size=1),
                                dict(lr=1e300, lr_scaling="linear", batch_size=10**6, base_batch_size=1),
                                dict(batch_growth=True, milestones=[1] * 50, decay_factor=0.5, epochs=3)])
def test_a_schedule_out_of_bounds_is_refused_before_the_data_load(tmp_path, kw):
    with pytest.raises(SharpnessError) as e:
        train_model(cfg(**kw), tmp_path / "run", progress=False)
    one_line(e)
    assert not (tmp_path / "run").exists()


@fuzz(field=st.sampled_from(["lr", "momentum", "weight_decay", "grad_clip", "sam_rho", "warmup_epochs",
                             "warmup_from", "decay_factor", "target_train_loss", "seed", "batch_size", "epochs",
                             "track_every", "track_samples"]) if given else None,
      v=st.one_of(st.sampled_from([NAN, INF, -INF, -1, 2**32, 10**400, -(10**400), "1", True]), ANY) if given else None)
def test_train_config_numbers_refuse_nan_inf_and_huge(field, v):
    try:
        TrainConfig(**{field: v}).validated()
    except SharpnessError as e:
        one_line(e)
        return
    assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{field}={v!r} accepted"
    assert isinstance(v, int) or math.isfinite(v), f"{field}={v!r} accepted"
    assert field not in ("batch_size", "epochs", "track_every", "track_samples", "seed") or isinstance(v, int)
    assert field != "seed" or 0 <= v <= 2**32 - 1


@fuzz(v=ANY if given else None)
def test_load_checkpoint_of_a_non_path(v):
    if isinstance(v, str) and v:
        return  # a name: "no such file", tested elsewhere
    with pytest.raises(SharpnessError) as e:
        load_checkpoint(v)
    one_line(e)


@pytest.mark.parametrize("device", ["meta", "mps", "xla", "cpu:1", 5, "nope", torch.device("meta")])
def test_checkpoint_model_on_an_unsupported_device(interrupted, device):
    with pytest.raises(SharpnessError) as e:
        load_checkpoint(interrupted / "init.pt").model(device)
    one_line(e)


def test_strings_from_a_checkpoint_reach_messages_escaped(interrupted, tmp_path):
    obj = torch.load(interrupted / "init.pt", weights_only=True)
    obj["model"]["name"] = "\x1b[2J\x1b[Hfz_evil:x"
    obj["data"]["name"] = "\x1b]0;title\x07"
    resave(obj, tmp_path / "evil.pt")
    ckpt = load_checkpoint(tmp_path / "evil.pt")
    assert "\x1b" not in repr(ckpt)
    for call in (ckpt.model, ckpt.datasets):
        with pytest.raises(SharpnessError) as e:
            call()
        one_line(e)


def test_a_checkpoint_without_weights_is_not_a_checksum_mismatch(interrupted, tmp_path):
    obj = torch.load(interrupted / "init.pt", weights_only=True)
    del obj["state_dict"]
    torch.save(obj, tmp_path / "x.pt")  # the stored checksum left as it was
    with pytest.raises(SharpnessError) as e:
        load_checkpoint(tmp_path / "x.pt")
    assert "checksum" not in one_line(e) and "state_dict" in str(e.value)
