"""Fuzzing the bad-input contract of the CLIs and the library.

The contract (README, "Bad input"): every bad input ends in a one-line error — exit code 2 from a
command, :class:`SharpnessError` from the library — before anything is written, and no code carried by a
file (a pickle's ``__reduce__``, a ``"pkg.module:fn"`` name stored in a checkpoint) ever runs; good input
gives a correct result.

Speed: every command-line case runs in ONE subprocess (``_HELPER`` below), which calls
``sharpness.cli.main([...])`` in-process once per case, captures stderr at the file-descriptor level and the
exit code, and writes one JSON line per case. It starts at the beginning of the module and runs while the
in-process library tests (hypothesis) run here; the command-line tests then read its results.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import sharpness as sh
from sharpness import SharpnessError

try:
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is not in the [test] extra: the CLI cases still run
    given = None

REPO = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")

# --------------------------------------------------------------------------------------------------------
# payloads and files
# --------------------------------------------------------------------------------------------------------


class _Call:
    """Pickles as ``fn(*args)``: what a malicious file would make ``pickle.load`` run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _open_payload(marker: Path) -> _Call:
    import builtins

    return _Call(builtins.open, str(marker), "w")  # unpickling it creates the marker file


def _system_payload(marker: Path) -> _Call:
    return _Call(os.system, f"touch '{marker}'")


def _resave(d: dict, path: Path) -> Path:
    """Save a modified checkpoint dict; its tensor checksum is recomputed so the change under test is seen."""
    if "checksum" in d:
        try:
            from sharpness.checkpoint import tensor_checksum

            d["checksum"] = {**d["checksum"], "tensors": tensor_checksum(d)}
        except ImportError:  # an older layout: a checkpoint without checksum is accepted
            d.pop("checksum")
    torch.save(d, path)
    return path


TINY = dict(dataset="gaussian", data_args={"n_train": 64, "n_test": 32, "dim": 4, "classes": 3}, model="mlp",
            model_args={"widths": [8]}, batch_size=16, epochs=1)
TINY_FLAGS = ["--dataset", "gaussian", "--data-arg", "n_train=64", "--data-arg", "n_test=32", "--data-arg", "dim=4",
              "--data-arg", "classes=3", "--model", "mlp", "--model-arg", "widths=[8]", "--batch-size", "16",
              "--epochs", "1", "--quiet"]
TINY_TOML = ('dataset = "gaussian"\nmodel = "mlp"\nepochs = 1\nbatch_size = 16\n'
             "data_args = {n_train = 64, n_test = 32, dim = 4, classes = 3}\nmodel_args = {widths = [8]}\n")
TINY_EXPERIMENT = """\
name = "fz"
[base]
dataset = "gaussian"
data_args = { n_train = 64, n_test = 32, dim = 4, classes = 3 }
model = "mlp"
model_args = { widths = [8] }
epochs = 1
batch_size = 16
save_every = 0
[grid]
seed = [0]
[analysis]
measures = ["loss"]
quick = true
[figures]
kinds = ["table"]
"""


def _make_files(root: Path, final: Path) -> None:
    """Every bad (and one good) input file the command-line cases name, under ``root/bad``."""
    bad, markers = root / "bad", root / "markers"
    bad.mkdir()
    blob = final.read_bytes()
    (bad / "text.pt").write_text("this is not a checkpoint\n")
    (bad / "empty.pt").write_bytes(b"")
    (bad / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    (bad / "trunc_dir").mkdir()
    (bad / "trunc_dir" / "final.pt").write_bytes(blob[: len(blob) // 2])
    (bad / "folder.pt").mkdir()
    with zipfile.ZipFile(bad / "zip.pt", "w") as z:
        z.writestr("archive/hello.txt", "a zip file, not a checkpoint")
    torch.save([1, 2, 3], bad / "list.pt")
    torch.save(_open_payload(markers / "torch_open"), bad / "payload_torch_open.pt")
    torch.save(_system_payload(markers / "torch_system"), bad / "payload_torch_system.pt")
    torch.save({"format": "sharpness-checkpoint", "version": 1, "state_dict": _system_payload(markers / "in_ckpt")},
               bad / "payload_in_ckpt.pt")
    with open(bad / "payload_raw_open.pt", "wb") as f:
        pickle.dump(_open_payload(markers / "raw_open"), f)
    with open(bad / "payload_raw_system.pt", "wb") as f:
        pickle.dump(_system_payload(markers / "raw_system"), f)
    (bad / "afile").write_text("keep me\n")

    def variant(name: str, change) -> None:
        d = torch.load(final, weights_only=True)
        change(d)
        _resave(d, bad / name)

    def nan_weights(d):
        k = next(k for k, v in d["state_dict"].items() if v.is_floating_point())
        d["state_dict"][k] = torch.full_like(d["state_dict"][k], NAN)

    def wrong_shape(d):
        k = next(k for k, v in d["state_dict"].items() if v.is_floating_point())
        d["state_dict"][k] = torch.zeros(3, 3)

    cifar = root / "cifar_root"
    (cifar / "cifar-10-batches-py").mkdir(parents=True)
    with open(cifar / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump(_system_payload(markers / "cifar_batch"), f)
    variant("nan_weights.pt", nan_weights)
    variant("wrong_shape.pt", wrong_shape)
    variant("cifar.pt", lambda d: d.update(data={"name": "cifar10", "args": {"root": str(cifar)}}))
    variant("spec_model_system.pt", lambda d: d.update(
        model={"name": "os:system", "args": {"command": f"touch '{markers / 'spec_model'}'"}}))
    variant("spec_data_system.pt", lambda d: d.update(
        data={"name": "os:system", "args": {"command": f"touch '{markers / 'spec_data'}'"}}))
    variant("spec_loss_system.pt", lambda d: d["config"].update(
        loss="os:system", loss_args={"command": f"touch '{markers / 'spec_loss'}'"}))

    def weight(make):
        def change(d):
            k = next(k for k, v in d["state_dict"].items() if v.is_floating_point() and v.dim() == 2)
            d["state_dict"][k] = make(d["state_dict"][k])
        return change

    # contents of the wrong kind (the checksum recomputed where it can be, so the content itself is judged)
    variant("config_list.pt", lambda d: d.update(config=[1, 2]))
    variant("history_str.pt", lambda d: d.update(history="abc"))
    variant("history_ints.pt", lambda d: d.update(history=[1, 2]))
    variant("epoch_huge.pt", lambda d: d.update(epoch=10**30))
    variant("sd_int_key.pt", lambda d: d["state_dict"].update({1: torch.zeros(3)}))
    variant("sd_str_value.pt", weight(lambda t: "x"))
    variant("sd_float8.pt", weight(lambda t: t.to(torch.float8_e4m3fn)))
    variant("sd_complex_nan.pt", weight(lambda t: torch.full_like(t, NAN).to(torch.complex64)))
    variant("sd_sparse.pt", weight(lambda t: t.to_sparse()))
    variant("sd_int8.pt", weight(lambda t: (t * 10).to(torch.int8)))
    expanded = torch.load(final, weights_only=True)
    weight(lambda t: torch.zeros(1).expand(10**6, 10**6))(expanded)
    del expanded["checksum"]  # the checksum would read it densely (4 TB)
    torch.save(expanded, bad / "sd_expanded.pt")
    torch.save({"state_dict": {1: torch.zeros(3)}}, bad / "wrapped_int_key.pt")
    variant("root_nul.pt", lambda d: d.update(data={"name": "mnist", "args": {"root": "/tmp\x00x"}}))
    variant("loss_weight_str.pt", lambda d: d["config"].update(loss_args={"weight": "abc"}))
    variant("loss_weight_ragged.pt", lambda d: d["config"].update(loss_args={"weight": [1, [2]]}))
    variant("widths_huge.pt", lambda d: d["model"]["args"].update(widths=[10**7, 10**7]))
    variant("n_train_huge.pt", lambda d: d["data"]["args"].update(n_train=10**12))
    variant("mnist1d_len.pt", lambda d: d.update(data={"name": "mnist1d", "args": {"final_seq_length": 10**9}}))
    plugins = root / "plugins"  # on the batch's PYTHONPATH
    plugins.mkdir()
    (plugins / "fz_syntax_plugin.py").write_text("def broken(:\n")
    (plugins / "fz_raising_plugin.py").write_text("raise ValueError('plugin exploded\\nsecond line')\n")
    # a run whose resume state was tampered with: train refuses it in one line, writing nothing
    import shutil

    tampered = root / "tampered"
    shutil.copytree(final.parent, tampered)
    for name in ("done", "final.pt"):
        (tampered / name).unlink()
    d = torch.load(tampered / "last.pt", weights_only=True)
    d.update(epoch="1")
    _resave(d, tampered / "last.pt")

    (bad / "bs_str.toml").write_text(TINY_TOML.replace("batch_size = 16", 'batch_size = "32"'))
    (bad / "milestones_scalar.toml").write_text(TINY_TOML + "milestones = 5\n")
    (bad / "model_args_str.toml").write_text(TINY_TOML.replace("model_args = {widths = [8]}", 'model_args = "wide"'))
    (bad / "non_utf8.toml").write_bytes(b'dataset = "gaussian"\nmodel = "\xff\xfe\x80"\n')
    (bad / "toml_folder").mkdir()
    exp = TINY_EXPERIMENT
    (bad / "exp_kind.toml").write_text(exp.replace('kinds = ["table"]', 'kinds = ["table", "no_such_figure"]'))
    (bad / "exp_grid_scalar.toml").write_text(exp.replace("seed = [0]", "seed = [0]\nbatch_size = 32"))
    (bad / "exp_name_int.toml").write_text(exp.replace('name = "fz"', "name = 3"))
    (bad / "exp_analysis_key.toml").write_text(exp.replace("quick = true", "quick = true\nbogus = 1"))
    (bad / "exp_good_syntax.toml").write_text(exp)
    for name, text in [("empty", ""), ("truncated", '{"name": "e", "runs": {"a": {"con'), ("list", "[]"),
                       ("runs3", '{"runs": 3}')]:
        (root / f"figs_{name}" / "e").mkdir(parents=True)
        (root / f"figs_{name}" / "e" / "results.json").write_text(text)


# --------------------------------------------------------------------------------------------------------
# the command-line cases: (name, argv, kind, files that must keep their content, folders that must keep
# their listing). In argv, {ckpt} is the real checkpoint, {bad} the folder of bad files, {out} a path of
# this case's own that must not exist afterwards, {root} the module's folder.
# kinds: "bad"  exit 2, one line on stderr, {out} not created;
#        "good_analyze" / "good_train" / "info_ok"  exit 0 and a correct result;
#        "trusted"  a flag the user typed (their own code): any one-line outcome, no traceback.
# Every case: no marker file is created (no code from a payload ran), nothing appears in the current folder.
# --------------------------------------------------------------------------------------------------------

A = ["analyze", "--no-progress", "--out", "{out}"]
CASES = [
    # ---- train: bad flags
    ("train_lr_nan", ["train", *TINY_FLAGS, "--lr", "nan", "--out", "{out}"], "bad"),
    ("train_lr_neg", ["train", *TINY_FLAGS, "--lr", "-1", "--out", "{out}"], "bad"),
    ("train_lr_inf", ["train", *TINY_FLAGS, "--lr", "inf", "--out", "{out}"], "bad"),
    ("train_bs_neg", ["train", *TINY_FLAGS, "--batch-size", "-4", "--out", "{out}"], "bad"),
    ("train_bs_zero", ["train", *TINY_FLAGS, "--batch-size", "0", "--out", "{out}"], "bad"),
    ("train_bs_float", ["train", *TINY_FLAGS, "--batch-size", "3.7", "--out", "{out}"], "bad"),
    ("train_epochs_float", ["train", *TINY_FLAGS, "--epochs", "1.5", "--out", "{out}"], "bad"),
    ("train_epochs_zero", ["train", *TINY_FLAGS, "--epochs", "0", "--out", "{out}"], "bad"),
    ("train_device_gpu", ["train", *TINY_FLAGS, "--device", "gpu", "--out", "{out}"], "bad"),
    ("train_milestones_x", ["train", *TINY_FLAGS, "--milestones", "5,x", "--out", "{out}"], "bad"),
    ("train_widths_neg", ["train", *TINY_FLAGS, "--model-arg", "widths=[-3]", "--out", "{out}"], "bad"),
    ("train_widths_zero", ["train", *TINY_FLAGS, "--model-arg", "widths=[0]", "--out", "{out}"], "bad"),
    ("train_num_samples_neg", ["train", "--dataset", "mnist1d", "--data-arg", "num_samples=-5", "--model", "mlp",
                               "--model-arg", "widths=[8]", "--epochs", "1", "--quiet", "--out", "{out}"], "bad"),
    ("train_data_arg_bogus", ["train", *TINY_FLAGS, "--data-arg", "bogus=1", "--out", "{out}"], "bad"),
    ("train_model_unknown", ["train", *TINY_FLAGS, "--model", "no_such", "--out", "{out}"], "bad"),
    ("train_model_arg_bogus", ["train", *TINY_FLAGS, "--model-arg", "bogus=1", "--out", "{out}"], "bad"),
    ("train_unknown_flag", ["train", *TINY_FLAGS, "--no-such-flag", "--out", "{out}"], "bad"),
    # ---- train: bad TOML files
    ("train_toml_bs_str", ["train", "{bad}/bs_str.toml", "--quiet", "--out", "{out}"], "bad"),
    ("train_toml_milestones_scalar", ["train", "{bad}/milestones_scalar.toml", "--quiet", "--out", "{out}"], "bad"),
    ("train_toml_model_args_str", ["train", "{bad}/model_args_str.toml", "--quiet", "--out", "{out}"], "bad"),
    ("train_toml_non_utf8", ["train", "{bad}/non_utf8.toml", "--quiet", "--out", "{out}"], "bad"),
    ("train_toml_folder", ["train", "{bad}/toml_folder", "--quiet", "--out", "{out}"], "bad"),
    ("train_toml_missing", ["train", "{bad}/missing.toml", "--quiet", "--out", "{out}"], "bad"),
    ("train_toml_is_checkpoint", ["train", "{ckpt}", "--quiet", "--out", "{out}"], "bad"),
    # ---- train: bad --out
    ("train_out_is_file", ["train", *TINY_FLAGS, "--out", "{bad}/afile"], "bad", ["{bad}/afile"]),
    ("train_out_under_file", ["train", *TINY_FLAGS, "--out", "{bad}/afile/sub"], "bad", ["{bad}/afile"]),
    # ---- analyze: bad files
    ("analyze_missing", [*A, "{bad}/missing.pt"], "bad"),
    ("analyze_text", [*A, "{bad}/text.pt"], "bad"),
    ("analyze_empty", [*A, "{bad}/empty.pt"], "bad"),
    ("analyze_truncated", [*A, "{bad}/truncated.pt"], "bad"),
    ("analyze_truncated_default_out", ["analyze", "--no-progress", "{bad}/trunc_dir/final.pt"], "bad", [],
     ["{bad}/trunc_dir"]),
    ("analyze_folder", [*A, "{bad}/folder.pt"], "bad"),
    ("analyze_zip", [*A, "{bad}/zip.pt"], "bad"),
    ("analyze_list", [*A, "{bad}/list.pt"], "bad"),
    ("analyze_payload_torch_open", [*A, "{bad}/payload_torch_open.pt"], "bad"),
    ("analyze_payload_torch_system", [*A, "{bad}/payload_torch_system.pt"], "bad"),
    ("analyze_payload_in_ckpt", [*A, "{bad}/payload_in_ckpt.pt"], "bad"),
    ("analyze_payload_raw_open", [*A, "{bad}/payload_raw_open.pt"], "bad"),
    ("analyze_payload_raw_system", [*A, "{bad}/payload_raw_system.pt"], "bad"),
    ("analyze_payload_with_model", [*A, "{bad}/payload_raw_system.pt", "--model", "mlp", "--data", "gaussian"],
     "bad"),
    ("analyze_nan_weights", [*A, "{bad}/nan_weights.pt"], "bad"),
    ("analyze_wrong_shape", [*A, "{bad}/wrong_shape.pt"], "bad"),
    ("analyze_cifar_payload", [*A, "{bad}/cifar.pt"], "bad"),
    # the root given on the command line (trusted): the batch file is read, and its pickle must not run
    ("analyze_cifar_payload_root_flag", [*A, "{bad}/cifar.pt", "--data-arg", "root={root}/cifar_root"], "bad"),
    ("analyze_spec_model_system", [*A, "{bad}/spec_model_system.pt"], "bad"),
    ("analyze_spec_data_system", [*A, "{bad}/spec_data_system.pt"], "bad"),
    ("analyze_spec_loss_system", [*A, "{bad}/spec_loss_system.pt"], "bad"),
    # ---- analyze: bad flags on a good checkpoint
    ("analyze_measures_nonsense", [*A, "{ckpt}", "--measures", "nonsense"], "bad"),
    ("analyze_measures_empty_item", [*A, "{ckpt}", "--measures", "loss,,nonsense"], "bad"),
    ("analyze_bs_neg", [*A, "{ckpt}", "--quick", "--measures", "loss", "--batch-size", "-4"], "bad"),
    ("analyze_bs_zero", [*A, "{ckpt}", "--quick", "--measures", "loss", "--batch-size", "0"], "bad"),
    ("analyze_max_samples_zero", [*A, "{ckpt}", "--quick", "--measures", "loss", "--max-samples", "0"], "bad"),
    ("analyze_max_samples_neg", [*A, "{ckpt}", "--quick", "--measures", "loss", "--max-samples", "-10"], "bad"),
    ("analyze_device_gpu", [*A, "{ckpt}", "--quick", "--measures", "loss", "--device", "gpu"], "bad"),
    ("analyze_seed_x", [*A, "{ckpt}", "--quick", "--measures", "loss", "--seed", "x"], "bad"),
    ("analyze_loss_unknown", [*A, "{ckpt}", "--quick", "--measures", "loss", "--loss", "nosuchloss"], "bad"),
    ("analyze_loss_arg_bogus", [*A, "{ckpt}", "--quick", "--measures", "loss", "--loss-arg", "reduction=bogus"],
     "bad"),
    ("analyze_model_unknown", [*A, "{ckpt}", "--quick", "--measures", "loss", "--model", "no_such"], "bad"),
    ("analyze_data_unknown", [*A, "{ckpt}", "--quick", "--measures", "loss", "--data", "no_such"], "bad"),
    ("analyze_model_arg_widths_neg", [*A, "{ckpt}", "--quick", "--measures", "loss", "--model-arg",
                                      "widths=[-3]"], "bad"),
    ("analyze_plugin_missing", [*A, "{ckpt}", "--quick", "--measures", "loss", "--plugin", "no_such_plugin_mod"],
     "bad"),
    ("analyze_model_os_system", [*A, "{ckpt}", "--quick", "--measures", "loss", "--model", "os:system"],
     "trusted"),
    ("analyze_out_is_file", ["analyze", "--no-progress", "--quick", "--measures", "loss", "{ckpt}", "--out",
                             "{bad}/afile"], "bad", ["{bad}/afile"]),
    ("analyze_out_under_file", ["analyze", "--no-progress", "--quick", "--measures", "loss", "{ckpt}", "--out",
                                "{bad}/afile/sub"], "bad", ["{bad}/afile"]),
    ("analyze_good", [*A, "{ckpt}", "--quick", "--measures", "loss"], "good_analyze"),
    # ---- info on each bad file
    *[(f"info_{n}", ["info", f"{{bad}}/{n}.pt"], "bad")
      for n in ("missing", "text", "empty", "truncated", "folder", "zip", "list", "payload_torch_open",
                "payload_torch_system", "payload_in_ckpt", "payload_raw_open", "payload_raw_system", "nan_weights")],
    ("info_cifar_ckpt", ["info", "{bad}/cifar.pt"], "info_ok"),  # describes; never reads the data folder
    ("info_spec_model_system", ["info", "{bad}/spec_model_system.pt"], "info_ok"),
    ("info_good", ["info", "{ckpt}"], "info_ok"),
    # ---- figures
    *[(f"figures_{n}", ["figures", "e", "--figures", f"{{root}}/figs_{n}"], "bad", [], [f"{{root}}/figs_{n}/e"])
      for n in ("empty", "truncated", "list", "runs3")],
    ("figures_missing_root", ["figures", "--figures", "{out}"], "bad"),
    # ---- run: refused before any training
    *[(f"run_{n}", ["run", f"{{bad}}/exp_{n}.toml", "--runs", "{out}/runs", "--figures", "{out}/figs", "--no-progress"],
       "bad") for n in ("kind", "grid_scalar", "name_int", "analysis_key")],
    ("run_jobs_neg", ["run", "{bad}/exp_good_syntax.toml", "--jobs", "-1", "--runs", "{out}/runs", "--figures",
                      "{out}/figs", "--no-progress"], "bad"),
    ("run_set_bad", ["run", "{bad}/exp_good_syntax.toml", "--set", "base.batch_size=-4", "--runs", "{out}/runs",
                     "--figures", "{out}/figs", "--no-progress"], "bad"),
    ("run_missing", ["run", "{bad}/no_such_exp.toml", "--runs", "{out}/runs", "--figures", "{out}/figs"], "bad"),
    # ---- contents of the wrong kind, sizes that would exhaust memory: one line each
    *[(f"info_{n}", ["info", f"{{bad}}/{n}.pt"], "bad")
      for n in ("config_list", "history_str", "history_ints", "epoch_huge", "sd_int_key", "sd_str_value", "sd_float8",
                "sd_complex_nan", "sd_sparse", "sd_expanded", "root_nul")],
    *[(f"analyze_{n}", [*A, f"{{bad}}/{n}.pt", "--quick", "--measures", "loss"], "bad")
      for n in ("sd_int8", "loss_weight_str", "loss_weight_ragged", "widths_huge", "n_train_huge", "mnist1d_len")],
    ("analyze_wrapped_int_key", [*A, "{bad}/wrapped_int_key.pt", "--model", "mlp", "--data", "gaussian"], "bad"),
    ("analyze_mse_on_labels", [*A, "{ckpt}", "--quick", "--measures", "loss", "--loss", "mse"], "bad"),
    *[(f"analyze_plugin_{n}", [*A, "{ckpt}", "--quick", "--measures", "loss", "--plugin", m], "bad")
      for n, m in (("empty", ""), ("relative", ".x"), ("syntax", "fz_syntax_plugin"), ("raises", "fz_raising_plugin"))],
    ("train_seed_huge", ["train", *TINY_FLAGS, "--seed", str(2**70), "--out", "{out}"], "bad"),
    ("train_seed_neg", ["train", *TINY_FLAGS, "--seed", "-5", "--out", "{out}"], "bad"),
    ("train_device_meta", ["train", *TINY_FLAGS, "--device", "meta", "--out", "{out}"], "bad"),
    ("train_loss_weight_str", ["train", *TINY_FLAGS, "--loss-arg", "weight=abc", "--out", "{out}"], "bad"),
    ("train_loss_weight_ragged", ["train", *TINY_FLAGS, "--loss-arg", "weight=[1,[2]]", "--out", "{out}"], "bad"),
    ("train_loss_weight_size", ["train", *TINY_FLAGS, "--loss-arg", "weight=[1,2]", "--out", "{out}"], "bad"),
    ("train_mse_on_labels", ["train", *TINY_FLAGS, "--loss", "mse", "--out", "{out}"], "bad"),
    ("train_n_train_huge", ["train", *TINY_FLAGS, "--data-arg", "n_train=1000000000000", "--out", "{out}"], "bad"),
    ("train_tampered_resume", ["train", *TINY_FLAGS, "--out", "{root}/tampered"], "bad", [], ["{root}/tampered"]),
    # ---- dispatcher
    ("main_unknown_command", ["no_such_command"], "bad"),
    # ---- the good path of train, last (it writes {out})
    ("train_good", ["train", *TINY_FLAGS, "--out", "{out}"], "good_train"),
]
CASE_NAMES = [c[0] for c in CASES]
assert len(set(CASE_NAMES)) == len(CASE_NAMES)

_HELPER = r'''
import contextlib, io, json, os, sys, tempfile, time, traceback, warnings
cases_file, results_file, markers = sys.argv[1:4]
import torch
torch.set_num_threads(1)
from sharpness.cli import main

def listing(d):
    return sorted(os.listdir(d)) if os.path.isdir(d) else []

with open(cases_file) as f:
    cases = json.load(f)
with open(results_file, "w") as res:
    for case in cases:
        before_markers, before_cwd = listing(markers), listing(".")
        err, out = io.StringIO(), io.StringIO()
        raw = tempfile.TemporaryFile()
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(raw.fileno(), 2)
        rc, uncaught = None, None
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
                warnings.simplefilter("always")
                try:
                    rc = main(list(case["argv"]))
                except SystemExit as e:
                    if e.code is None:
                        rc = 0
                    elif isinstance(e.code, int):
                        rc = e.code
                    else:
                        print(e.code, file=sys.stderr)
                        rc = 1
                except BaseException as e:
                    traceback.print_exc()
                    rc, uncaught = 1, f"{type(e).__name__}: {e}"
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        raw.seek(0)
        stderr = err.getvalue() + raw.read().decode("utf-8", "replace")
        res.write(json.dumps({
            "name": case["name"], "rc": rc, "uncaught": uncaught, "stderr": stderr[-4000:],
            "stdout": out.getvalue()[-2000:], "seconds": round(time.perf_counter() - t0, 2),
            "new_markers": sorted(set(listing(markers)) - set(before_markers)),
            "new_in_cwd": sorted(set(listing(".")) - set(before_cwd)),
        }) + "\n")
        res.flush()
'''

_TIMEOUT = 300


class _Batch:
    """The running subprocess of every command-line case; ``results()`` waits for it once."""

    def __init__(self, root: Path, ckpt: Path):
        self.root, self.ckpt = root, ckpt
        self.cases: dict[str, dict] = {}
        for name, argv, kind, *rest in CASES:
            fmt = dict(ckpt=str(ckpt), bad=str(root / "bad"), root=str(root), out=str(root / "out" / name))
            keep = [p.format(**fmt) for p in (rest[0] if rest else [])]
            only = [p.format(**fmt) for p in (rest[1] if len(rest) > 1 else [])]
            self.cases[name] = dict(name=name, argv=[a.format(**fmt) for a in argv], kind=kind,
                                    out=fmt["out"], keep={p: Path(p).read_bytes() for p in keep},
                                    only={p: sorted(os.listdir(p)) for p in only})
        (root / "cases.json").write_text(json.dumps([{"name": c["name"], "argv": c["argv"]}
                                                     for c in self.cases.values()]))
        (root / "helper.py").write_text(_HELPER)
        (root / "cwd").mkdir()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(root / "plugins"),
                                                            os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        self.results_file = root / "results.jsonl"
        self.log = open(root / "helper.log", "wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(root / "helper.py"), str(root / "cases.json"),
                                      str(self.results_file), str(root / "markers")],
                                     cwd=root / "cwd", env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._results: dict | None = None
        self.note = ""

    def results(self) -> dict:
        if self._results is None:
            try:
                self.proc.wait(timeout=max(1.0, _TIMEOUT - (time.perf_counter() - self.t0)))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.note = f"the batch subprocess was killed after {_TIMEOUT} s"
            self.log.close()
            lines = self.results_file.read_text().splitlines() if self.results_file.exists() else []
            self._results = {r["name"]: r for r in map(json.loads, lines)}
            if self.proc.returncode != 0 and not self.note:
                self.note = f"the batch subprocess exited with {self.proc.returncode}: " + \
                    (self.root / "helper.log").read_text(errors="replace")[-2000:]
        return self._results

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    """The module's folder: a tiny real checkpoint (trained once) and every bad file."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "markers").mkdir()
    (root / "out").mkdir()
    sh.train_model(sh.TrainConfig(**TINY), root / "run", progress=False)
    _make_files(root, root / "run" / "final.pt")
    return root


@pytest.fixture(scope="module", autouse=True)
def cli_batch(fuzz_root):
    """Starts the batch at the beginning of the module, so it runs while the library tests run here."""
    batch = _Batch(fuzz_root, fuzz_root / "run" / "final.pt")
    yield batch
    batch.close()


# --------------------------------------------------------------------------------------------------------
# library: hypothesis-generated arguments → a correct result or SharpnessError, nothing else
# --------------------------------------------------------------------------------------------------------

HAND = [0, -1, -4, 0.0, -0.5, 1e-300, 3.7, 2.0, NAN, INF, -INF, "3", "x", "", True, False, None, [1], [], [1, 2],
        {"a": 1}, 10**12, 2**70, 1e300, -1e300]
if given is not None:
    ANY = st.one_of(
        st.sampled_from(HAND),
        st.integers(min_value=-1000, max_value=5),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=3),
        st.booleans(),
        st.lists(st.integers(-3, 3), max_size=3),
    )
    FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v, *, zero_ok=False, big=1e3) -> str:
    """'good', 'bad' or 'either' (a bool, or a number too large to expect a finite result) for a positive real."""
    if isinstance(v, bool):
        return "either"
    if not _is_real(v) or v < 0 or (v == 0 and not zero_ok):
        return "bad"
    return "either" if v > big else "good"


def _count(v, lo, hi, *, none_ok=False) -> str:
    """An integer ≥ lo: 'good' up to hi (kept small: each example runs), 'either' above or for bools/3.0."""
    if v is None and none_ok:
        return "good"
    if isinstance(v, bool) or (isinstance(v, float) and v.is_integer()):
        return "either"
    if not _is_int(v) or v < lo:
        return "bad"
    return "good" if v <= hi else "either"


class _Tiny:
    """A float32 MLP (35 parameters) on 30 examples, its loss and its dense Hessian (the truth for the checks)."""

    def __init__(self):
        from torch.func import functional_call

        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
        self.data = (torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g))
        self.op = sh.HessianOperator(self.model, "cross_entropy", self.data)
        names = [n for n, _ in self.model.named_parameters()]
        shapes = [p.shape for p in self.model.parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()]).double()
        self.n = flat.numel()

        def loss(v):
            ps, i = {}, 0
            for name, s in zip(names, shapes):
                ps[name] = v[i:i + s.numel()].reshape(s).float()
                i += s.numel()
            return nn.functional.cross_entropy(functional_call(self.model, ps, (self.data[0],)), self.data[1])

        with torch.no_grad():
            self.loss = float(loss(flat))
        hess = torch.autograd.functional.hessian(lambda v: loss(v).double(), flat)
        self.eigs = torch.linalg.eigvalsh(hess).flip(0)  # descending
        self.trace = float(hess.trace())


_TINY_LIB: list[_Tiny] = []


def tiny() -> _Tiny:
    if not _TINY_LIB:
        _TINY_LIB.append(_Tiny())
    return _TINY_LIB[0]


def _outcome(what: str, expect: str, call, check) -> None:
    """Run ``call``; a SharpnessError is allowed unless ``expect`` is 'good', a result unless it is 'bad'."""
    try:
        result = call()
    except SharpnessError as e:
        assert expect != "good", f"{what}: valid input refused: {e}"
        assert "\n" not in str(e).strip(), f"{what}: the message is not one line: {e!r}"
        return
    except Exception as e:  # any other exception type is a defect
        pytest.fail(f"{what}: {type(e).__name__} instead of SharpnessError: {str(e)[:300]}")
    assert expect != "bad", f"{what}: bad input accepted, returned {str(result)[:200]}"
    if expect == "good":
        check(result)


def fuzz(strategies: dict | None = None, *examples):
    """``@given`` (by default ``v=ANY``) with the module's settings and explicit ``examples`` (dicts of
    arguments, or a value of ``v``); a skip where hypothesis is not installed."""
    def wrap(fn):
        if given is None:
            return pytest.mark.skip(reason="hypothesis is not installed")(fn)
        fn = FUZZ(given(**(strategies or {"v": ANY}))(fn))
        for e in examples:
            fn = example(**(e if isinstance(e, dict) else {"v": e}))(fn)
        return fn
    return wrap


def lib_test(*examples):
    return fuzz(None, *examples)


@lib_test(1e-3, NAN, -1, 0, INF, "x", 1e300, 2**70)
def test_eps_sharpness_eps(v):
    t = tiny()

    def check(r):
        assert math.isfinite(r.value) and r.value >= -1e-6, f"eps={v!r}: value {r.value}"
        assert abs(r.f0 - t.loss) <= 1e-4 * max(1, t.loss), f"eps={v!r}: f0 {r.f0} != L(θ) {t.loss}"

    _outcome(f"eps_sharpness(eps={v!r})", _positive(v),
             lambda: sh.eps_sharpness(t.model, None, t.data, eps=v, max_iter=2), check)


@lib_test(None, 3, 0, -1, 2.5, 10**12, 2**70, "x", NAN)
def test_eps_sharpness_subspace_dim(v):
    t = tiny()

    def check(r):
        assert math.isfinite(r.value) and r.value >= -1e-6, f"subspace_dim={v!r}: value {r.value}"

    _outcome(f"eps_sharpness(subspace_dim={v!r})", _count(v, 1, 5, none_ok=True),
             lambda: sh.eps_sharpness(t.model, None, t.data, eps=1e-3, subspace_dim=v, max_iter=2), check)


@lib_test(0.05, NAN, -1, 0, INF, "x", 1e300, 2**70)
def test_adaptive_sharpness_rho(v):
    t = tiny()

    def check(r):
        assert math.isfinite(r.value), f"rho={v!r}: value {r.value}"

    _outcome(f"adaptive_sharpness(rho={v!r})", _positive(v),
             lambda: sh.adaptive_sharpness(t.model, None, t.data, rho=v, n_samples=16, steps=3), check)


def _check_density(r, v):
    t = tiny()
    lo, hi = float(t.eigs[-1]), float(t.eigs[0])
    nodes, weights = torch.as_tensor(r.nodes), torch.as_tensor(r.weights)
    assert nodes.min() >= lo - 1e-3 and nodes.max() <= hi + 1e-3, \
        f"{v!r}: Ritz nodes [{nodes.min()}, {nodes.max()}] outside the spectrum [{lo}, {hi}]"
    assert torch.allclose(weights.sum(-1).double(), torch.ones(weights.shape[0], dtype=torch.float64), atol=1e-5), \
        f"{v!r}: weights per run do not sum to 1: {weights.sum(-1)}"
    dens = torch.as_tensor(r.density)
    assert torch.isfinite(dens).all() and (dens >= 0).all(), f"{v!r}: density not finite and ≥ 0"


@lib_test(2, 5, 1, 0, -3, 2.5, NAN, 10**12, 2**70, "x")
def test_spectral_density_steps(v):
    t = tiny()
    _outcome(f"spectral_density(steps={v!r})", _count(v, 2, 6),
             lambda: sh.spectral_density(t.op, steps=v, n_runs=1, progress=False),
             lambda r: _check_density(r, f"steps={v!r}"))


@lib_test(1, 3, 0, -1, 2.5, NAN, 10**12, 2**70, "x")
def test_spectral_density_n_runs(v):
    t = tiny()
    _outcome(f"spectral_density(n_runs={v!r})", _count(v, 1, 3),
             lambda: sh.spectral_density(t.op, steps=5, n_runs=v, progress=False),
             lambda r: _check_density(r, f"n_runs={v!r}"))


@lib_test(1, 3, 0, -1, 36, 2.5, NAN, 10**12, 2**70, "x")
def test_hessian_eigenvalues_k(v):
    t = tiny()
    expect = _count(v, 1, 3)
    if expect == "either" and _is_int(v) and v > t.n:
        expect = "bad"  # more eigenvalues than parameters

    def check(r):
        values = torch.as_tensor(r.values).double()
        assert values.shape == (v,), f"k={v!r}: {values.shape[0]} values"
        if r.converged:
            assert torch.allclose(values, t.eigs[:v], atol=2e-3), f"k={v!r}: {values} != {t.eigs[:v]}"

    _outcome(f"hessian_eigenvalues(k={v!r})", expect,
             lambda: sh.hessian_eigenvalues(t.op, k=v, tol=1e-4, progress=False), check)


@lib_test(1e-4, 0, -1, NAN, INF, "x", 1e300)
def test_hessian_eigenvalues_tol(v):
    t = tiny()

    def check(r):
        values = torch.as_tensor(r.values).double()
        assert values.shape == (2,) and torch.isfinite(values).all(), f"tol={v!r}: {values}"
        if r.converged and v <= 1e-3:
            assert torch.allclose(values, t.eigs[:2], atol=2e-3), f"tol={v!r}: {values} != {t.eigs[:2]}"

    _outcome(f"hessian_eigenvalues(tol={v!r})", _positive(v),
             lambda: sh.hessian_eigenvalues(t.op, k=2, tol=v, max_hvps=24, progress=False), check)


@lib_test(1e-2, 0, -1, NAN, INF, "x", 1e300)
def test_hessian_trace_rtol(v):
    t = tiny()

    def check(r):
        assert math.isfinite(r.value), f"rtol={v!r}: value {r.value}"
        assert abs(r.value - t.trace) <= 5 * r.stderr + 0.05 * abs(t.trace) + 1e-3, \
            f"rtol={v!r}: trace {r.value} ± {r.stderr}, dense {t.trace}"

    _outcome(f"hessian_trace(rtol={v!r})", _positive(v, zero_ok=True),
             lambda: sh.hessian_trace(t.op, rtol=v, max_hvps=20, progress=False), check)


def _check_surface(r, dims, steps, what, span_ok=True):
    t = tiny()
    loss = torch.as_tensor(r.loss)
    assert tuple(loss.shape) == (steps,) * dims, f"{what}: loss shape {tuple(loss.shape)}"
    assert abs(r.center_loss - t.loss) <= 1e-4 * max(1, t.loss), f"{what}: center {r.center_loss} != {t.loss}"
    if span_ok:
        assert torch.isfinite(loss).all(), f"{what}: non-finite losses {loss}"


@lib_test(1, 2, 0, 3, -1, 1.5, NAN, "x", 10**12)
def test_surface_dims(v):
    t = tiny()
    expect = "good" if _is_int(v) and v in (1, 2) else "either" if v is True else "bad"
    _outcome(f"surface(dims={v!r})", expect,
             lambda: sh.surface(t.model, None, t.data, dims=v, steps=3, progress=False),
             lambda r: _check_surface(r, v, 3, f"dims={v!r}"))


@lib_test(3, 2, 1, 0, -5, 2.5, NAN, "x", 10**12, 2**70)
def test_surface_steps(v):
    t = tiny()
    _outcome(f"surface(steps={v!r})", _count(v, 2, 5),
             lambda: sh.surface(t.model, None, t.data, dims=1, steps=v, progress=False),
             lambda r: _check_surface(r, 1, v, f"steps={v!r}"))


@lib_test(1.0, 0, -1, NAN, INF, "x", None, [1], [1, 2], [2, 1], (-0.5, 1.0), 1e300, 2**70)
def test_surface_span(v):
    t = tiny()
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_real(x) for x in v):
        expect = "good" if v[0] < v[1] and max(map(abs, v)) <= 1e3 else "bad" if v[0] >= v[1] else "either"
    elif isinstance(v, (list, tuple)):
        expect = "bad"
    else:
        expect = _positive(v)
    _outcome(f"surface(span={v!r})", expect,
             lambda: sh.surface(t.model, None, t.data, dims=1, steps=3, span=v, progress=False),
             lambda r: _check_surface(r, 1, 3, f"span={v!r}"))


# TrainConfig.from_dict: my own statement of what each field allows (not the package's validator).
_FIELDS = {
    "batch_size": ("int", 1), "epochs": ("int", 1), "eval_batch_size": ("int", 1), "save_every": ("int", 0),
    "seed": ("seed", None), "lr": ("real", "gt0"), "weight_decay": ("real", "ge0"), "warmup_epochs": ("real", "ge0"),
    "momentum": ("real", "[0,1)"), "decay_factor": ("real", "(0,1]"), "grad_clip": ("opt_real", "gt0"),
    "milestones": ("int_list", 0), "save_steps": ("int_list", 1), "model_args": ("dict", None),
    "data_args": ("dict", None), "optimizer": ("choice", ("adam", "adamw", "sgd")),
    "lr_scaling": ("choice", ("none", "linear", "sqrt")), "nesterov": ("bool", None), "device": ("device", None),
    "dataset": ("str", None),
}


def _field_expect(name: str, v) -> str:
    kind, arg = _FIELDS[name]
    if kind == "int":
        return _count(v, -10**30 if arg is None else arg, 10**30)
    if kind in ("real", "opt_real"):
        if v is None and kind == "opt_real":
            return "good"
        if isinstance(v, bool):
            return "either"
        if not _is_real(v):
            return "bad"
        ok = {"gt0": v > 0, "ge0": v >= 0, "[0,1)": 0 <= v < 1, "(0,1]": 0 < v <= 1}[arg]
        return "good" if ok else "bad"
    if kind == "int_list":
        if not isinstance(v, list):
            return "bad"
        if any(isinstance(x, bool) for x in v):
            return "either"
        return "good" if all(_is_int(x) and x >= arg for x in v) else "bad"
    if kind == "dict":
        return "good" if isinstance(v, dict) and all(isinstance(k, str) for k in v) else "bad"
    if kind == "choice":
        return "good" if isinstance(v, str) and v in arg else "bad"
    if kind == "bool":
        return "good" if isinstance(v, bool) else "either" if v in (0, 1) and not isinstance(v, float) else "bad"
    if kind == "seed":  # torch seeds each epoch with seed·1000003 + epoch: an unsigned 32-bit seed
        e = _count(v, 0, 2**32 - 1)
        return "bad" if e == "either" and _is_int(v) else e
    if kind == "device":  # where a run trains and resumes: the CPU or a CUDA device
        if isinstance(v, str) and re.fullmatch(r"cpu|cuda(:(0|[1-9][0-9]{0,3}))?", v):
            return "good"
        return "either" if isinstance(v, str) and re.fullmatch(r"cuda:[0-9]+", v) else "bad"
    return "either" if isinstance(v, str) else "bad"  # a name: checked when it is built


@fuzz({"field": st.sampled_from(sorted(_FIELDS)) if given else None,
      "v": st.one_of(ANY, st.dictionaries(st.text(max_size=2), ANY, max_size=2)) if given else None},
     *[dict(field=f, v=v) for f, v in [("batch_size", "32"), ("batch_size", 3.7), ("milestones", 5),
                                       ("milestones", [5, "x"]), ("model_args", "wide"), ("lr", NAN),
                                       ("epochs", 1.5), ("device", "gpu"), ("momentum", 1.0),
                                       ("seed", -1), ("seed", 2**32), ("seed", 2**32 - 1), ("device", "meta"),
                                       ("device", "mps"), ("device", "cuda:1"), ("device", "cpu:1")]])
def test_train_config_from_dict(field, v):
    def check(cfg):
        got = getattr(cfg, field)
        assert got == v and type(got) is type(v), f"from_dict({{{field!r}: {v!r}}}) holds {got!r}"

    _outcome(f"TrainConfig.from_dict({{{field!r}: {v!r}}})", _field_expect(field, v),
             lambda: sh.TrainConfig.from_dict({field: v}), check)


@pytest.mark.parametrize("d", [None, [], "lr=1", {"lr": 1e-3, "no_such_field": 1}, {1: 2}],
                         ids=["none", "list", "str", "unknown_field", "int_key"])
def test_train_config_from_dict_not_a_table(d):
    with pytest.raises(SharpnessError) as e:
        sh.TrainConfig.from_dict(d)
    assert "\n" not in str(e.value).strip()


# named losses: class weights and targets they cannot take → one line naming the argument


@pytest.mark.parametrize("name,key,value", [
    ("cross_entropy", "weight", "abc"), ("cross_entropy", "weight", None), ("cross_entropy", "weight", [1, [2]]),
    ("cross_entropy", "weight", []), ("cross_entropy", "weight", [1, NAN, 1]), ("cross_entropy", "weight", [1, INF]),
    ("cross_entropy", "weight", [True, False]), ("cross_entropy", "weight", {"a": 1}), ("nll", "weight", 3),
    ("nll", "weight", torch.ones(3, 1)), ("nll", "weight", torch.ones(3, dtype=torch.complex64)),
    ("bce_with_logits", "pos_weight", "x"), ("bce_with_logits", "weight", [[1.0]]),
    ("cross_entropy", "label_smoothing", NAN), ("cross_entropy", "label_smoothing", 1e300),
    ("cross_entropy", "ignore_index", "x"),
])
def test_named_loss_arguments_of_the_wrong_kind(name, key, value):
    with pytest.raises(SharpnessError, match=rf"^loss '{name}': loss_args.{key} must be ") as e:
        sh.make_loss(name, {key: value})
    assert "\n" not in str(e.value)


def test_class_weights_must_have_one_entry_per_class():
    out, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    for name in ("cross_entropy", "nll"):
        with pytest.raises(SharpnessError, match=rf"^loss '{name}': loss_args.weight has 2 entries, but the outputs "
                                                 r"have 3 classes \(outputs \(5, 3\)\)$"):
            sh.make_loss(name, {"weight": [1, 2]}).total(out, y)
        weighted = sh.make_loss(name, {"weight": [1, 2, 0.5]}).mean(out, y)
        fn = torch.nn.functional.cross_entropy if name == "cross_entropy" else torch.nn.functional.nll_loss
        assert torch.allclose(weighted, fn(out, y, weight=torch.tensor([1, 2, 0.5])))
    yb = torch.randint(0, 2, (5, 3)).float()
    with pytest.raises(SharpnessError, match=r"loss_args.pos_weight has 2 entries, but the outputs have 3 classes"):
        sh.make_loss("bce_with_logits", {"pos_weight": [1.0, 2.0]}).total(out, yb)
    for pos_weight in ([2.0], [1.0, 2.0, 3.0]):
        got = sh.make_loss("bce_with_logits", {"pos_weight": pos_weight}).mean(out, yb)
        want = torch.nn.functional.binary_cross_entropy_with_logits(out, yb, pos_weight=torch.tensor(pos_weight))
        assert torch.allclose(got, want)


@pytest.mark.parametrize("name", ["mse", "bce_with_logits"])
def test_a_loss_on_targets_it_cannot_take_is_one_line_without_warnings(name):
    import warnings

    out, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = sh.make_loss(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch's broadcast warning would be a second line
        for call in (loss.total, loss.mean):
            with pytest.raises(SharpnessError, match=rf"^loss '{name}' needs targets shaped like the outputs "
                                                     r"\(outputs \(6, 3\), targets \(6,\)\); for class labels "
                                                     r"use cross_entropy$"):
                call(out, labels)
        with pytest.raises(SharpnessError, match=r"\(outputs \(6, 3\), targets \(6, 1\)\)$"):
            loss.total(out, torch.rand(6, 1))
        # what they do take: targets shaped like the outputs, or (n,) targets for (n, 1) outputs
        targets = torch.rand(6, 3)
        assert torch.isfinite(loss.total(out, targets))
        assert torch.isfinite(loss.total(out[:, :1], torch.rand(6)))


# --------------------------------------------------------------------------------------------------------
# the command-line cases (read from the batch subprocess)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_cli_case(name, cli_batch, fuzz_root):
    case = cli_batch.cases[name]
    results = cli_batch.results()
    assert name in results, f"{name}: no result ({cli_batch.note or 'the batch stopped before this case'}); " \
                            f"argv {case['argv']}"
    r = results[name]
    stderr = r["stderr"]
    lines = [line for line in stderr.splitlines() if line.strip()]
    said = f"{name}: argv {case['argv']}\n  exit {r['rc']}, stderr:\n{stderr}\n  stdout:\n{r['stdout'][-600:]}"
    problems = []
    if r["uncaught"] or "Traceback" in stderr:
        problems.append(f"a traceback ({r['uncaught']})")
    if r["new_markers"]:
        problems.append(f"CODE FROM A PAYLOAD RAN: created {r['new_markers']}")
    if r["new_in_cwd"]:
        problems.append(f"wrote into the current folder: {r['new_in_cwd']}")
    for path, content in case["keep"].items():
        if not Path(path).is_file() or Path(path).read_bytes() != content:
            problems.append(f"{path} was changed")
    for folder, listing in case["only"].items():
        now = sorted(os.listdir(folder)) if os.path.isdir(folder) else None
        if now != listing:
            problems.append(f"{folder} now holds {now} (was {listing})")
    kind = case["kind"]
    if kind == "bad":
        if r["rc"] != 2:
            problems.append(f"exit code {r['rc']}, expected 2")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr, expected 1")
        if Path(case["out"]).exists():
            problems.append(f"--out {case['out']} was created")
    elif kind == "trusted":
        if r["rc"] == 0:
            pass  # the user's own code ran as they asked
        elif len(lines) != 1:
            problems.append(f"exit {r['rc']} with {len(lines)} lines on stderr, expected one")
    elif kind == "info_ok":
        if r["rc"] != 0:
            problems.append(f"exit code {r['rc']}, expected 0")
    elif kind == "good_analyze":
        report = Path(case["out"]) / "report.json"
        if r["rc"] != 0 or not report.exists():
            problems.append(f"exit {r['rc']}, report.json {'exists' if report.exists() else 'missing'}")
        else:
            ckpt = sh.load_checkpoint(cli_batch.ckpt)
            data = json.loads(report.read_text())
            summary = next(iter(data["checkpoints"].values()))["measures"]["loss"]["summary"]
            expected = ckpt.history[-1]["train_loss"]
            if not abs(summary["train_loss"] - expected) <= 1e-4 * max(1.0, abs(expected)):
                problems.append(f"train_loss {summary['train_loss']} != the run's final {expected}")
    elif kind == "good_train":
        final = Path(case["out"]) / "final.pt"
        if r["rc"] != 0 or not final.exists():
            problems.append(f"exit {r['rc']}, final.pt {'exists' if final.exists() else 'missing'}")
        else:
            ckpt = sh.load_checkpoint(final)
            if ckpt.epoch != 1 or not math.isfinite(ckpt.history[-1]["train_loss"]):
                problems.append(f"epoch {ckpt.epoch}, history {ckpt.history[-1:]}")
    assert not problems, "; ".join(problems) + "\n" + said


def test_cli_batch_nothing_stray(cli_batch, fuzz_root):
    """After every case: no marker anywhere, nothing in the current folder, no run folders of refused runs."""
    cli_batch.results()
    assert not os.listdir(fuzz_root / "markers"), f"payload code ran: {os.listdir(fuzz_root / 'markers')}"
    assert not os.listdir(fuzz_root / "cwd"), f"written into the current folder: {os.listdir(fuzz_root / 'cwd')}"
    slow = {n: r["seconds"] for n, r in cli_batch.results().items() if r["seconds"] > 5}
    assert not cli_batch.note, cli_batch.note
    print(f"cli batch: {len(cli_batch.results())} cases in {time.perf_counter() - cli_batch.t0:.1f} s; slow: {slow}")
