import errno
import importlib
import os
import re
import subprocess
import sys
import zipfile

import pytest
import torch

from helpers import same_state, tiny_config, user_module
from sharpness import SharpnessError, load_checkpoint, train_model
from sharpness.checkpoint import save_checkpoint, tensor_checksum
from sharpness.cli import info_main
from sharpness.specs import Spec, trust_code


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
    a_zip = tmp_path / "notes.zip.pt"
    with zipfile.ZipFile(a_zip, "w") as z:
        z.writestr("notes.txt", "hello")
    loop = tmp_path / "loop.pt"
    os.symlink(tmp_path / "loop2.pt", loop)
    os.symlink(loop, tmp_path / "loop2.pt")
    dangling = tmp_path / "dangling.pt"
    os.symlink(tmp_path / "gone.pt", dangling)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    obj = torch.load(run_dir / "final.pt", weights_only=True)
    versions = {}
    for name, v in (("str", "1"), ("bool", True), ("two", 2)):
        versions[name] = tmp_path / f"version_{name}.pt"
        torch.save({**obj, "version": v}, versions[name])
    flipped = tmp_path / "flipped.pt"
    _flip_tensor_bytes(run_dir / "final.pt", flipped)
    return evil_target, {"evil": (evil, "could run code"), "truncated": (truncated, "truncated or corrupt"),
                         "text": (text, "not a PyTorch checkpoint"), "empty": (empty, "empty file"),
                         "missing": (tmp_path / "nope.pt", "no such file"),
                         "foreign": (foreign, "not a model checkpoint"),
                         "zip": (a_zip, "not a PyTorch checkpoint (a zip archive without a data.pkl record"),
                         "loop": (loop, "symbolic link loop"),
                         "dangling": (dangling, "no such file (a symbolic link to"),
                         "folder": (tmp_path, "is a folder, not a checkpoint file"),
                         "fifo": (fifo, "not a regular file"),
                         "version_str": (versions["str"], "unsupported checkpoint format version '1' (a str, "
                                         "not an integer); this toolkit reads the integer version 1"),
                         "version_bool": (versions["bool"], "unsupported checkpoint format version True (a bool"),
                         "version_2": (versions["two"], "unsupported checkpoint format version 2; this toolkit "
                                       "reads version 1"),
                         "flipped": (flipped, "checksum mismatch: the file was modified or corrupted (")}


def _flip_tensor_bytes(src, dst, entry="data/0"):
    """Copy a torch zip checkpoint, inverting the first bytes of a tensor's storage: a valid zip still."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        names = [n for n in z.namelist() if n.endswith("/" + entry)]
        assert len(names) == 1, z.namelist()
        for info in z.infolist():
            data = z.read(info)
            if info.filename == names[0]:
                data = bytes(b ^ 0xFF for b in data[:4]) + data[4:]
            out.writestr(info, data)


def test_bad_files_raise_one_clear_error(tmp_path, run_dir):
    evil_target, cases = _bad_files(tmp_path, run_dir)
    for name, (path, message) in cases.items():
        with pytest.raises(SharpnessError, match=re.escape(message)) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value), name
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
    del obj["checksum"]  # as written before checkpoints had one
    torch.save(obj, tmp_path / "nan.pt")
    with pytest.raises(SharpnessError, match="'1.weight' contains NaN"):
        load_checkpoint(tmp_path / "nan.pt")
    net = _net()
    with torch.no_grad():
        net[0].weight[1, 2] = float("inf")
    with pytest.raises(SharpnessError, match="'0.weight' contains NaN or Inf"):  # a valid checksum, bad weights
        load_checkpoint(_save(tmp_path / "inf.pt", net, Spec("mlp", {}), Spec("gaussian", {})))

    obj = torch.load(run_dir / "final.pt", weights_only=True)
    obj["version"] = 99
    torch.save(obj, tmp_path / "future.pt")
    with pytest.raises(SharpnessError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_checksum_covers_every_tensor_of_the_weights_and_the_optimizer(tmp_path, run_dir):
    obj = torch.load(run_dir / "final.pt", weights_only=True)
    c = obj["checksum"]
    assert c["algorithm"] == "sha256" and len(c["tensors"]) == 64 and c["tensors"] == tensor_checksum(obj)
    assert c["covers"] == ["state_dict", "optimizer"]
    # The digest depends on the tensors, not on the order of the dicts that hold them.
    shuffled = {**obj, "state_dict": dict(reversed(list(obj["state_dict"].items())))}
    assert tensor_checksum(shuffled) == c["tensors"]
    # Names, dtypes and shapes count, not only the bytes.
    sd = obj["state_dict"]
    first = sorted(sd)[0]
    for changed in ({first + "x": sd[first]}, {first: sd[first].view(torch.int32)},
                    {first: sd[first].reshape(-1)} if sd[first].dim() > 1 else {first: sd[first][None]}):
        other = {**obj, "state_dict": {**{k: v for k, v in sd.items() if k != first}, **changed}}
        assert tensor_checksum(other) != c["tensors"]

    # A run's resume state holds the optimizer's tensors (momentum): a change there is caught too.
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = _save(tmp_path / "last.pt", net, Spec("mlp", {}), Spec("gaussian", {}), optimizer=opt.state_dict())
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt.optimizer["state"][0]["momentum_buffer"], opt.state[net[0].weight]["momentum_buffer"])
    obj = torch.load(path, weights_only=True)
    obj["optimizer"]["state"][0]["momentum_buffer"][0, 0] += 1.0
    torch.save(obj, tmp_path / "edited.pt")
    with pytest.raises(SharpnessError, match=r"edited.pt: checksum mismatch: the file was modified or corrupted "
                                             r"\(its tensors hash to sha256 [0-9a-f]{16}\.\.\., the file records "
                                             r"[0-9a-f]{16}\.\.\.\)$"):
        load_checkpoint(tmp_path / "edited.pt")


def test_flipped_tensor_bytes_are_refused_in_one_line(tmp_path, run_dir):
    flipped = tmp_path / "flipped.pt"
    _flip_tensor_bytes(run_dir / "final.pt", flipped)
    torch.load(flipped, weights_only=True)  # torch itself reads it without complaint
    with pytest.raises(SharpnessError) as info:
        load_checkpoint(flipped)
    message = str(info.value)
    assert message.startswith(f"{flipped}: checksum mismatch: the file was modified or corrupted (")
    assert "\n" not in message
    r = subprocess.run([sys.executable, "-m", "sharpness.info", str(flipped)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "checksum mismatch" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_checkpoints_without_a_checksum_still_load_and_a_bad_one_is_named(tmp_path, run_dir):
    obj = torch.load(run_dir / "final.pt", weights_only=True)
    del obj["checksum"]
    torch.save(obj, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.epoch == 3 and set(ckpt.state_dict) == set(obj["state_dict"])
    obj = torch.load(run_dir / "final.pt", weights_only=True)
    for bad, message in [({"algorithm": "md5", "tensors": "00"}, "unsupported checksum algorithm 'md5'; "
                                                                  "this toolkit reads 'sha256'"),
                         ("abc", "malformed sharpness checkpoint .checksum is 'abc'"),
                         ({"algorithm": "sha256"}, "malformed sharpness checkpoint .checksum is"),
                         ({"algorithm": "sha256", "tensors": "\n" + "0" * 63}, "checksum mismatch")]:
        torch.save({**obj, "checksum": bad}, tmp_path / "bad.pt")
        with pytest.raises(SharpnessError, match=message) as info:
            load_checkpoint(tmp_path / "bad.pt")
        assert "\n" not in str(info.value)
    del obj["version"]
    torch.save(obj, tmp_path / "noversion.pt")
    with pytest.raises(SharpnessError, match="noversion.pt: malformed sharpness checkpoint .no format version."):
        load_checkpoint(tmp_path / "noversion.pt")


def test_truncated_checkpoints_at_any_length(tmp_path, run_dir):
    data = (run_dir / "final.pt").read_bytes()
    for cut in (10, 100, len(data) // 3, len(data) - 30, len(data) - 1):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(SharpnessError, match="cut.pt: truncated or corrupt checkpoint"):
            load_checkpoint(tmp_path / "cut.pt")


def test_unreadable_file_says_permission_denied(tmp_path, run_dir, monkeypatch):
    import sharpness.checkpoint as module

    path = tmp_path / "locked.pt"
    path.write_bytes((run_dir / "final.pt").read_bytes())
    if os.geteuid() != 0:  # root reads any file: only a real user sees the real thing
        path.chmod(0)
        with pytest.raises(SharpnessError, match="locked.pt: permission denied$"):
            load_checkpoint(path)
        path.chmod(0o644)

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(module, "open", refuse, raising=False)
    with pytest.raises(SharpnessError, match="locked.pt: permission denied$"):
        load_checkpoint(path)


USER_NETS = """
import torch
from torch import nn


def make_net(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def make_net2(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], num_classes))


def data(n=10):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)), (torch.zeros(2, 3),
                                                                                     torch.zeros(2).long())
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    return user_module(tmp_path / "code", monkeypatch, "ckpt_usernets", USER_NETS)


def _net(width=6):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.ReLU(), torch.nn.Linear(width, 2))


def _same_weights(a, b):
    return same_state(a.state_dict(), b.state_dict())


def _save(path, model, model_spec, data_spec, **kw):
    return save_checkpoint(path, model=model, model_spec=model_spec, data_spec=data_spec, **kw)


def test_checkpoint_naming_the_users_own_factory_reloads_alone(tmp_path, nets, monkeypatch):
    net = _net()
    args = {"width": 6, "input_shape": [3], "num_classes": 2}  # make_net takes no input_shape: dropped
    path = _save(tmp_path / "user.pt", net, Spec(f"{nets}:make_net", args), Spec(f"{nets}:data", {"n": 8}))
    ckpt = load_checkpoint(path)
    sys.modules.pop(nets, None)
    # Not imported by the user's code: a file's name alone imports nothing, and the message says how to allow it.
    with pytest.raises(SharpnessError, match=f"user.pt: refused: model '{nets}:make_net'.*--model {nets}:make_net"
                                             ".*--trust-code"):
        ckpt.model()
    assert nets not in sys.modules
    with trust_code():  # --trust-code
        assert _same_weights(ckpt.model(), net) and not ckpt.model().training
    importlib.import_module(nets)  # or the user's own script imported it
    assert _same_weights(ckpt.model(), net)
    train, test = ckpt.datasets()
    assert len(train) == 8 and len(test) == 2
    # Moved away from the folder that holds the module: a clear message, not a traceback.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.endswith("code")])
    sys.modules.pop(nets)
    with trust_code(), pytest.raises(SharpnessError, match=f"user.pt: cannot import module '{nets}' for model "
                                                           ".*run from the folder"):
        load_checkpoint(path).model()


def test_checkpoint_cannot_make_the_loader_run_installed_code(tmp_path, nets):
    net = torch.nn.Linear(3, 2)
    path = _save(tmp_path / "evil.pt", net, Spec("torch.nn:Linear", {"in_features": 3, "out_features": 2}),
                 Spec("subprocess:run", {"args": ["touch", str(tmp_path / "pwned")]}))
    ckpt = load_checkpoint(path)
    with pytest.raises(SharpnessError, match=r"evil.pt: refused: model 'torch.nn:Linear' .*--model torch.nn:Linear"):
        ckpt.model()
    with pytest.raises(SharpnessError, match=r"evil.pt: refused: data set 'subprocess:run' .*--data subprocess:run"):
        ckpt.datasets()
    assert not (tmp_path / "pwned").exists()
    # Named by the caller, the same factory is trusted and gets the stored arguments.
    assert _same_weights(load_checkpoint(path, model="torch.nn:Linear").model(), net)
    for name in ("os:system", "builtins:exec", "torch.hub:load"):
        path = _save(tmp_path / "evil2.pt", net, Spec(name, {}), Spec(name, {}))
        with pytest.raises(SharpnessError, match=f"refused: model '{name}'"):
            load_checkpoint(path).model()
        with pytest.raises(SharpnessError, match=f"refused: data set '{name}'"):
            load_checkpoint(path).datasets()


def test_caller_given_model_and_data(tmp_path, nets):
    net = _net(width=5)
    path = _save(tmp_path / "c.pt", net, Spec("no_such_mod:f", {"input_shape": [3], "num_classes": 2}),
                 Spec("gaussian", {"n_train": 7, "n_test": 3, "dim": 3}))
    # another factory gets only what the data fixed (input_shape, num_classes), plus model_args
    assert _same_weights(load_checkpoint(path, model=f"{nets}:make_net", model_args={"width": 5}).model(), net)
    assert load_checkpoint(path, model=f"{nets}:make_net2").model_spec.args == {"input_shape": [3], "num_classes": 2}
    assert _same_weights(load_checkpoint(path, model=lambda width: _net(width), model_args={"width": 5}).model(), net)
    with pytest.raises(SharpnessError, match="model_args given, but model is a module"):
        load_checkpoint(path, model=net, model_args={"width": 5})
    # the stored data spec with other arguments; another data set; the same name keeps the stored arguments
    assert len(load_checkpoint(path, data_args={"n_train": 4}).datasets()[0]) == 4
    assert len(load_checkpoint(path, data="gaussian").datasets()[0]) == 7
    assert len(load_checkpoint(path, data=f"{nets}:data", data_args={"n": 6}).datasets()[0]) == 6
    assert len(load_checkpoint(path, data={"name": "gaussian", "args": {"n_train": 9}}).datasets()[0]) == 9
    with pytest.raises(SharpnessError, match="data must be a name"):
        load_checkpoint(path, data=3)
    with pytest.raises(SharpnessError, match="model must be an nn.Module"):
        load_checkpoint(path, model=3)


def test_malformed_specs_and_loss_spec(tmp_path):
    net = _net()
    path = _save(tmp_path / "l.pt", net, Spec("mlp", {}), Spec("gaussian", {}),
                 config={"loss": "mse", "loss_args": {"reduction": "sum"}})
    assert load_checkpoint(path).loss_spec == Spec("mse", {"reduction": "sum"})
    assert load_checkpoint(_save(tmp_path / "n.pt", net, Spec("mlp", {}), Spec("g", {}))).loss_spec is None
    with pytest.raises(SharpnessError, match="malformed loss .*'name' must be a non-empty string .got 5"):
        _ = load_checkpoint(_save(tmp_path / "b.pt", net, Spec("mlp", {}), Spec("g", {}), config={"loss": 5})
                            ).loss_spec
    obj = torch.load(path, weights_only=True)
    for key, bad, message in [("model", {"name": 3}, "'model' spec .*'name' must be a non-empty string"),
                              ("data", "digits", "'data' spec .*spec must be a dict"),
                              ("model", {"name": "mlp", "args": [1]}, "'model' spec .*'args' of 'mlp' must be a dict")]:
        torch.save({**obj, key: bad}, tmp_path / "bad.pt")
        with pytest.raises(SharpnessError, match=f"bad.pt: malformed {message}"):
            load_checkpoint(tmp_path / "bad.pt")
    del obj["data"]
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(SharpnessError, match="missing 'data'"):
        load_checkpoint(tmp_path / "bad.pt")


def test_safetensors_round_trip(tmp_path, nets):
    from safetensors.torch import save_file

    net = _net()
    path = tmp_path / "w.safetensors"
    save_file(net.state_dict(), str(path))
    ckpt = load_checkpoint(path, model=f"{nets}:make_net", model_args={"width": 6}, data="gaussian")
    assert _same_weights(ckpt.model(), net) and ckpt.model_spec.name == f"{nets}:make_net"
    assert _same_weights(load_checkpoint(path, model=_net(width=6)).model(), net)
    (tmp_path / "w.bin").write_bytes(path.read_bytes())  # recognised by its content too
    assert _same_weights(load_checkpoint(tmp_path / "w.bin", model=_net(width=6)).model(), net)
    with pytest.raises(SharpnessError, match="a bare state_dict"):
        load_checkpoint(path)
    # A header length whose low byte is 0x80 starts the file like a pickle: the content decides.
    pad = 0
    while True:
        save_file(net.state_dict(), str(tmp_path / "p.bin"), metadata={"pad": "x" * pad})
        if (tmp_path / "p.bin").read_bytes()[:1] == b"\x80":
            break
        pad += 1
    assert _same_weights(load_checkpoint(tmp_path / "p.bin", model=_net(width=6)).model(), net)
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SharpnessError, match="cut.safetensors: truncated or corrupt safetensors file"):
        load_checkpoint(tmp_path / "cut.safetensors", model=net)
    with pytest.raises(SharpnessError, match="weights do not fit"):
        load_checkpoint(path, model=_net(width=3)).model()


@pytest.mark.parametrize("wrap,prefix", [("state_dict", "model."), ("model", "module."), ("state_dict", ""),
                                         (None, "_orig_mod.")])
def test_wrapped_and_prefixed_weights(tmp_path, wrap, prefix):
    net = _net()
    weights = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save({wrap: weights, "epoch": 3, "global_step": 10} if wrap else weights, tmp_path / "w.pt")
    assert _same_weights(load_checkpoint(tmp_path / "w.pt", model=_net(width=6)).model(), net)


def test_prefix_is_stripped_only_when_it_makes_the_weights_fit(tmp_path):
    net = _net()
    weights = {"model." + k: v for k, v in net.state_dict().items()}
    weights["other.weight"] = torch.zeros(1)  # no common prefix
    torch.save({"state_dict": weights}, tmp_path / "w.pt")
    with pytest.raises(SharpnessError, match="weights do not fit"):
        load_checkpoint(tmp_path / "w.pt", model=_net(width=6)).model()


# ---- a checkpoint's contents of the wrong kind: one line naming the part, from load_checkpoint and info

def _tampered(run_dir, tmp_path, change, name="t.pt"):
    """A copy of the run's final checkpoint changed by ``change(obj)``, its checksum recomputed."""
    obj = torch.load(run_dir / "final.pt", weights_only=True)
    change(obj)
    if "checksum" in obj:
        if any(0 in t.stride() for t in _all_tensors([obj.get("state_dict"), obj.get("optimizer")])):
            del obj["checksum"]  # the checksum would read the expanded tensor densely (terabytes)
        else:
            obj["checksum"] = {**obj["checksum"], "tensors": tensor_checksum(obj)}
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def _all_tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _all_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _all_tensors(v)


def _set(key, value):
    return lambda obj: obj.update({key: value})


def _weight(name, make):
    return lambda obj: obj["state_dict"].update({name: make(obj["state_dict"][name])})


_TAMPERED = [
    ("config_list", _set("config", [1, 2]), "'config' is [1, 2], expected a dict with string keys"),
    ("config_str", _set("config", "abc"), "'config' is 'abc', expected a dict"),
    ("epoch_str", _set("epoch", "1"), "'epoch' is '1', expected an integer in [0, 1000000000]"),
    ("epoch_huge", _set("epoch", 10**30), "'epoch' is 1000000000000000000000000000000, expected an integer"),
    ("epoch_neg", _set("epoch", -1), "'epoch' is -1"),
    ("step_bool", _set("step", True), "'step' is True"),
    ("history_str", _set("history", "abc"), "'history' is 'abc', expected a list of per-epoch dicts"),
    ("history_dict", _set("history", {"a": 1}), "'history' is {'a': 1}, expected a list"),
    ("history_ints", _set("history", [1, 2]), "'history[0]' is 1, expected a dict with string keys"),
    ("history_bad_count", _set("history", [{"epoch": "x"}]), "'history[0].epoch' is 'x'"),
    ("history_bad_loss", _set("history", [{"train_loss": [1]}]), "'history[0].train_loss' is [1], expected a number"),
    ("optimizer_str", _set("optimizer", "x"), "'optimizer' is 'x', expected None or a torch optimizer state dict"),
    ("optimizer_groups", _set("optimizer", {"state": {}, "param_groups": "x"}), "'optimizer' is {'state': {}"),
    ("extra_list", _set("extra", [1]), "'extra' is [1], expected a dict with string keys"),
    ("extra_trace", _set("extra", {"trace": 5}), "'extra.trace' is 5, expected a list of dicts"),
    ("state_dict_list", lambda o: o.update(state_dict=list(o["state_dict"].values())), "state_dict is a list, not a dict"),
    ("key_int", lambda o: o["state_dict"].update({1: torch.zeros(3)}), "the key 1, of type int, is not a weight name"),
    ("value_int", _weight("1.bias", lambda t: 5), "weight '1.bias' is 5 (of type int), not a tensor"),
    ("value_str", _weight("1.bias", lambda t: "x"), "weight '1.bias' is 'x' (of type str), not a tensor"),
    ("value_dict", _weight("1.bias", lambda t: {"a": t}), "weight '1.bias' is {'a': tensor"),
    ("float8", _weight("1.weight", lambda t: t.to(torch.float8_e4m3fn)),
     "weight '1.weight' has dtype torch.float8_e4m3fn: only real floating-point weights are analyzed"),
    ("complex", _weight("1.weight", lambda t: t.to(torch.complex64)), "has dtype torch.complex64: only real"),
    ("complex_nan", _weight("1.weight", lambda t: torch.full_like(t, float("nan")).to(torch.complex64)),
     "has dtype torch.complex64"),
    ("sparse", _weight("1.weight", lambda t: t.to_sparse()), "weight '1.weight' has the sparse_coo layout"),
    ("expanded", _weight("1.weight", lambda t: torch.zeros(1).expand(10**6, 10**6)),
     "weight '1.weight' of shape (1000000, 1000000) would take 4e+12 bytes, but the file holds 4 bytes"),
    ("optimizer_expanded", _set("optimizer", {"state": {0: {"m": torch.zeros(1).expand(10**6, 10**6)}},
                                              "param_groups": [{"params": [0]}]}),
     "optimizer tensor 'optimizer/state/0/m' of shape (1000000, 1000000)"),
    ("resume_state_without_counts", lambda o: o.update(history=[{"x": 1}], optimizer={"state": {}, "param_groups": []}),
     "'history[0]' is {'x': 1}, expected a per-epoch record with epoch, examples, wall_time, train_loss"),
    ("root_nul", lambda o: o.update(data={"name": "mnist", "args": {"root": "/tmp\x00x"}}),
     "malformed 'data' spec in the checkpoint: data set 'mnist': root '/tmp\\x00x' is not a folder path"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in _TAMPERED], ids=[c[0] for c in _TAMPERED])
def test_tampered_contents_are_refused_in_one_line(tmp_path, run_dir, capsys, change, message):
    path = _tampered(run_dir, tmp_path, change)
    with pytest.raises(SharpnessError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    assert info_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_integer_weights_for_float_parameters_are_refused_and_integer_buffers_load(tmp_path):
    from sharpness.models import build_model

    spec = Spec("mlp", {"input_shape": [3], "num_classes": 2, "widths": [4], "bn": True})
    net = build_model(spec)
    net.train()(torch.randn(8, 3))  # num_batches_tracked (an int64 buffer) becomes 1
    path = _save(tmp_path / "bn.pt", net, spec, Spec("gaussian", {}))
    assert _same_weights(load_checkpoint(path).model(), net)
    for dtype in (torch.int8, torch.bool, torch.int64):
        obj = torch.load(path, weights_only=True)
        obj["state_dict"]["1.weight"] = obj["state_dict"]["1.weight"].to(dtype)
        obj["checksum"]["tensors"] = tensor_checksum(obj)
        torch.save(obj, tmp_path / "int.pt")
        ckpt = load_checkpoint(tmp_path / "int.pt")  # loads: which tensors are parameters, the model says
        with pytest.raises(SharpnessError, match=re.escape(f"weight '1.weight' has dtype {dtype}: only real "
                                                           "floating-point weights are analyzed")):
            ckpt.model()


def test_bare_and_wrapped_weights_are_checked_too(tmp_path):
    net = _net()
    torch.save({"state_dict": {1: torch.zeros(3)}}, tmp_path / "intkey.pt")
    torch.save({k: v.to(torch.float8_e5m2) for k, v in net.state_dict().items()}, tmp_path / "f8.pt")
    torch.save({"model": {k: v.to(torch.complex64) for k, v in net.state_dict().items()}}, tmp_path / "c.pt")
    for name, message in [("intkey", "not a model checkpoint"), ("f8", "has dtype torch.float8_e5m2: only real"),
                          ("c", "has dtype torch.complex64: only real")]:
        with pytest.raises(SharpnessError, match=re.escape(message)):
            load_checkpoint(tmp_path / f"{name}.pt", model=_net())


def test_loss_spec_of_a_checkpoint_built_with_a_bad_config(tmp_path):
    from sharpness.checkpoint import Checkpoint

    with pytest.raises(SharpnessError, match="malformed checkpoint config .a list, not a dict."):
        _ = Checkpoint(tmp_path / "x.pt", {}, config=[1, 2]).loss_spec
    path = _save(tmp_path / "w.pt", _net(), Spec("mlp", {}), Spec("gaussian", {}),
                 config={"loss": "cross_entropy", "loss_args": {"weight": "abc"}})
    with pytest.raises(SharpnessError, match=r"loss_args.weight must be a 1-D list of finite numbers"):
        from sharpness.losses import make_loss

        spec = load_checkpoint(path).loss_spec
        make_loss(spec.name, spec.args, trusted=False)


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(epoch="1"), "'epoch' is '1'"),
    (lambda c: c.update(epoch=10**30), "'epoch' is 1000000000000000000000000000000"),
    (lambda c: c.update(extra={"trace": 5}), "'extra.trace' is 5"),
    (lambda c: c.update(optimizer={"state": {}, "param_groups": "x"}), "'optimizer' is"),
    (lambda c: c.update(epoch=0, history=[{"x": 1}]), "expected a per-epoch record with epoch, examples"),
], ids=["epoch_str", "epoch_huge", "trace", "optimizer", "history"])
def test_a_tampered_resume_state_is_refused_in_one_line(tmp_path, run_dir, change, message):
    import shutil

    from sharpness.training import train

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    for name in ("done", "final.pt"):
        (out / name).unlink()
    c = torch.load(out / "last.pt", weights_only=True)
    change(c)
    c["checksum"]["tensors"] = tensor_checksum(c)
    torch.save(c, out / "last.pt")
    before = sorted(os.listdir(out))
    with pytest.raises(SharpnessError, match=re.escape(message)) as e:
        train(tiny_config(), out, progress=False)
    assert "\n" not in str(e.value) and sorted(os.listdir(out)) == before


def test_a_lightning_checkpoints_epoch_and_step_are_kept(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    wrapped = {"epoch": 7, "global_step": 420, "pytorch-lightning_version": "2.1.0",
               "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "optimizer_states": []}
    torch.save(wrapped, tmp_path / "light.ckpt")
    ckpt = load_checkpoint(tmp_path / "light.ckpt", model=net)
    assert (ckpt.epoch, ckpt.step) == (7, 420)
    assert same_state(ckpt.model().state_dict(), net.state_dict())
    torch.save({"epoch": "seven", "step": -1, "state_dict": net.state_dict()}, tmp_path / "odd.pt")
    odd = load_checkpoint(tmp_path / "odd.pt", model=net)
    assert (odd.epoch, odd.step) == (None, None)  # not counts: not kept
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    assert load_checkpoint(tmp_path / "bare.pt", model=net).epoch is None


def test_messages_name_the_flag_and_the_argument(tmp_path, run_dir):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(SharpnessError) as e:
        load_checkpoint(tmp_path / "bare.pt")
    assert "--model" in str(e.value) and "model=" in str(e.value)
    with pytest.raises(SharpnessError) as e:
        load_checkpoint(tmp_path / "bare.pt", model=net).datasets()
    assert "--data" in str(e.value) and "data=" in str(e.value) and "load_checkpoint" in str(e.value)


def test_a_module_in_memory_is_a_checkpoint_identified_by_its_weights():
    from sharpness.checkpoint import Checkpoint

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ckpt = Checkpoint.from_module(net)
    assert ckpt.path is None and ckpt.source == "memory" and "memory" in repr(ckpt)
    assert ckpt.sha256 == tensor_checksum({"state_dict": net.state_dict()}) and len(ckpt.sha256) == 64
    copy = ckpt.model()
    assert copy is not net and same_state(copy.state_dict(), net.state_dict())
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    assert Checkpoint.from_module(other).sha256 != ckpt.sha256
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(SharpnessError, match="the model in memory: weight '0.weight' contains NaN"):
        Checkpoint.from_module(net)
    with pytest.raises(SharpnessError, match="expected an nn.Module"):
        Checkpoint.from_module("net.pt")
    named = Checkpoint.from_module(other, data="gaussian", data_args={"n_train": 20, "n_test": 10, "dim": 4})
    train, test = named.datasets()
    assert len(train) == 20 and len(test) == 10


def test_a_factory_gets_input_shape_and_num_classes_from_the_data(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    user_module(tmp_path, monkeypatch, "shape_nets",
                "import math\nimport torch.nn as nn\n"
                "def make_net(input_shape, num_classes, hidden=5):\n"
                "    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),\n"
                "                         nn.Linear(hidden, num_classes))\n"
                "def plain():\n    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4))\n")
    import shape_nets

    net = shape_nets.make_net((2, 3), 4)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    data = (torch.randn(10, 2, 3), torch.randint(0, 4, (10,)))
    ckpt = load_checkpoint(tmp_path / "w.safetensors", model="shape_nets:make_net")
    with pytest.raises(SharpnessError, match="input_shape"):  # nothing to fill them from
        ckpt.model()
    built = ckpt.model(data=(data, None))
    assert same_state(built.state_dict(), net.state_dict())
    # a callable factory, and the caller's own arguments first
    called = load_checkpoint(tmp_path / "w.safetensors", model=shape_nets.make_net, model_args={"num_classes": 4})
    assert same_state(called.model(data=(data, None)).state_dict(), net.state_dict())
    wrong = load_checkpoint(tmp_path / "w.safetensors", model=shape_nets.make_net, model_args={"num_classes": 5})
    with pytest.raises(SharpnessError, match="weights do not fit"):
        wrong.model(data=(data, None))
    # a factory without those arguments is built as it is (a Dataset of dicts cannot tell a shape: not asked)
    plain = shape_nets.plain()
    torch.save(plain.state_dict(), tmp_path / "plain.pt")
    assert same_state(load_checkpoint(tmp_path / "plain.pt", model="shape_nets:plain").model(
        data=(data, None)).state_dict(), plain.state_dict())
