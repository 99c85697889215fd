import errno
import json
import math
import os
import pathlib
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import sharpness.io as sio
from sharpness import SharpnessError
from sharpness.cli import train_main
from sharpness.io import atomic_write, write_json, write_npz


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask():
    """Set the process's umask for one test, and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_users_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert _mode(write_json(tmp_path / "a.json", {"x": 1})) == expected
    assert _mode(write_npz(tmp_path / "a.npz", {"x": np.zeros(2)})) == expected
    assert _mode(atomic_write(tmp_path / "a.txt", lambda p: p.write_text("x"))) == expected
    assert os.umask(mask) == mask  # reading it left it as it was
    assert _leftovers(tmp_path) == []


def test_umask_is_read_without_changing_it_where_proc_is_absent(tmp_path, umask, monkeypatch):
    umask(0o027)
    assert sio._umask() == 0o027

    def no_proc(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "no /proc here")

    monkeypatch.setattr(sio, "open", no_proc, raising=False)
    assert sio._umask() == 0o027 and os.umask(0o027) == 0o027
    assert _mode(atomic_write(tmp_path / "b.txt", lambda p: p.write_text("x"))) == 0o640


def _strict(text):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_is_strict_json(tmp_path):
    obj = {"nan": math.nan, "inf": [math.inf, -math.inf, 1.5], "np": np.float32("nan"),
           "torch": torch.tensor(float("inf")), "nested": {"t": (np.float64("-inf"), 2)}, "ok": 0.25}
    path = write_json(tmp_path / "r.json", obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert _strict(text) == {"nan": None, "inf": [None, None, 1.5], "np": None, "torch": None,
                             "nested": {"t": [None, 2]}, "ok": 0.25}


def test_a_failed_write_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    write_json(target, {"old": 1})

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(SharpnessError) as info:
        write_json(target, {"new": 2})
    assert str(info.value) == f"{target}: cannot write: No space left on device"
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1} and _leftovers(tmp_path) == []

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(pathlib.Path, "write_text", read_only)
    with pytest.raises(SharpnessError, match="new.json: cannot write: Read-only file system$"):
        write_json(tmp_path / "new.json", {})
    monkeypatch.undo()
    assert not (tmp_path / "new.json").exists() and _leftovers(tmp_path) == []


def test_other_failures_of_the_writer_pass_through_and_clean_up(tmp_path):
    def broken(p):
        p.write_text("half")
        raise KeyError("a bug, not a disk")

    with pytest.raises(KeyError):
        atomic_write(tmp_path / "x.txt", broken)
    assert list(tmp_path.iterdir()) == []


def test_out_under_a_file_or_onto_a_folder(tmp_path):
    (tmp_path / "file").write_text("I am a file")
    for target in (tmp_path / "file" / "x.json", tmp_path / "file" / "sub" / "x.json"):
        with pytest.raises(SharpnessError) as info:
            write_json(target, {})
        assert str(info.value) == f"{target}: cannot write: Not a directory ('{tmp_path / 'file'}' is a file, " \
                                  "not a folder)"
    (tmp_path / "folder").mkdir()
    with pytest.raises(SharpnessError, match="folder: cannot write: Is a directory$"):
        write_json(tmp_path / "folder", {})
    assert _leftovers(tmp_path) == []


def test_train_cli_with_out_under_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("I am a file")
    code = train_main(["--dataset", "gaussian", "--data-arg", "n_train=8", "--data-arg", "n_test=4",
                       "--model", "mlp", "--model-arg", "widths=[4]", "--epochs", "1", "--batch-size", "4",
                       "--quiet", "--out", str(tmp_path / "file" / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write: Not a directory" in err, err


FULL_DISK = """
import json, os, resource, signal, sys
import torch
from sharpness import SharpnessError
from sharpness.checkpoint import save_checkpoint
from sharpness.io import write_json
from sharpness.specs import Spec

folder = sys.argv[1]
write_json(os.path.join(folder, "r.json"), {"old": 1})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
out = {}
try:
    write_json(os.path.join(folder, "r.json"), {"new": "x" * 10000})
except SharpnessError as e:
    out["json"] = str(e)
try:
    net = torch.nn.Linear(100, 100)
    save_checkpoint(os.path.join(folder, "c.pt"), model=net, model_spec=Spec("mlp", {}), data_spec=Spec("g", {}))
except SharpnessError as e:
    out["ckpt"] = str(e)
print(json.dumps(out))
"""


def test_a_full_disk_gives_one_line_and_keeps_the_old_file(tmp_path):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(FULL_DISK), str(tmp_path)], capture_output=True,
                       text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["json"] == f"{tmp_path / 'r.json'}: cannot write: File too large"
    assert out["ckpt"] == f"{tmp_path / 'c.pt'}: cannot write: File too large"
    assert json.loads((tmp_path / "r.json").read_text()) == {"old": 1}
    assert not (tmp_path / "c.pt").exists() and _leftovers(tmp_path) == []
