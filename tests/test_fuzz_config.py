"""Hostile and careless configuration: experiment TOMLs, ``--set``, measure settings, a stranger's folder.

Every bad value is refused in one line (exit 2 from the command line) before any run trains or any
analysis starts, and nothing is written: generated out-of-range values anywhere in an experiment (seeds,
settings of every registered measure, figure options, grid values), names that would escape their folder,
deep nesting and huge integers; a checkpoint or TOML from a downloaded folder never imports the scripts
beside it (checked from a real process, as ``python -m`` sees the current folder); strings from a
checkpoint reach ``info`` escaped.
"""

import io
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

from sharpness import SharpnessError, analyze
from sharpness.analysis import MEASURES
from sharpness.checkpoint import save_checkpoint
from sharpness.checks import MAX_SETTING_INT
from sharpness.cli import analyze_main, info_main, run_main
from sharpness.experiments import _read_experiment
from sharpness.specs import Spec

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

GOLDEN = Path(__file__).parent / "golden"
CONTROL = "".join(map(chr, [*range(32), 127]))
FUZZ = dict(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def fuzz(**strategies):
    def wrap(fn):
        if given is None:
            return pytest.mark.skip(reason="hypothesis is not installed")(fn)
        return settings(**FUZZ)(given(**strategies)(fn))
    return wrap


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------------------------------------
# experiment TOMLs: a bad value anywhere is one line before any training
# --------------------------------------------------------------------------------------------------------


def _toml_value(v) -> str:
    """``v`` as a TOML value (inline tables), enough for the experiment specs here."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, (int, str)):
        return json.dumps(v, ensure_ascii=False) if isinstance(v, str) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml_value, v)) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"


def _toml(spec: dict) -> str:
    top = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in spec.items() if not isinstance(v, dict)]
    tables = [f"[{k}]\n" + "\n".join(f"{json.dumps(a)} = {_toml_value(b)}" for a, b in v.items())
              for k, v in spec.items() if isinstance(v, dict)]
    return "\n".join(top + tables) + "\n"


TINY = _read_experiment(GOLDEN / "tiny.toml")

ESCAPING = ["../x", "../../x.png", "/tmp/x.png", "a/b", "..", ".", "", "x\x1b[2J", "x\ny", "x" * 300, "\\x"]
NEG_OR_HUGE = [-1, 0, -(2**40), MAX_SETTING_INT + 1, 2**63 - 1, 2**70]
NOT_FINITE = [math.nan, math.inf, -math.inf]


def _int_keys(m) -> list[str]:
    examples = lambda k: [m.settings[k], *([m.quick[k]] if k in m.quick else [])]  # noqa: E731
    nums = lambda e: [x for x in (e if isinstance(e, list) else [e]) if type(x) in (int, float)]  # noqa: E731
    return [k for k in m.settings
            if (ns := [n for e in examples(k) for n in nums(e)]) and all(type(n) is int and n >= 1 for n in ns)]


def _float_keys(m) -> list[str]:
    return [k for k in m.settings if type(m.settings[k]) is float]


# (where in the spec, a strategy of values that must be refused there)
if given is not None:
    SETTING_SLOTS = [(("analysis", "settings", name, key), st.sampled_from(NEG_OR_HUGE + [2.5, *NOT_FINITE]))
                     for name, m in MEASURES.items() for key in _int_keys(m)] + \
                    [(("analysis", "settings", name, key), st.sampled_from([0.0, -1e-3, -1.0, *NOT_FINITE]))
                     for name, m in MEASURES.items() for key in _float_keys(m)]
    SLOTS = SETTING_SLOTS + [
        (("analysis", "seed"), st.sampled_from([-1, -(2**31), 2**32, 2**64 - 1])),
        (("analysis", "max_samples"), st.sampled_from(NEG_OR_HUGE[:3] + [10**10, 1.5])),
        (("analysis", "settings", "pacbayes", "delta"), st.sampled_from([1.0, 2.0, 0.0])),
        (("analysis", "settings", "landscape2d", "normalization"), st.text(max_size=4)),
        (("analysis", "settings", "interpolation", "range"), st.sampled_from([[2.0, 1.0], [1.0], [], [0.0, 0.0]])),
        (("analysis", "settings", "noise_scale", "batch_sizes"), st.sampled_from([[4], [64, 8], [0, 8], "x"])),
        (("analysis", "settings", "eps_sharpness", "eps"), st.sampled_from([[], [0.0], [-1e-3], [math.nan]])),
        (("analysis", "settings", "no_such_measure"), st.just({"k": 1})),
        (("analysis", "settings", "eigenvalues", "no_such_key"), st.just(1)),
        (("analysis", "measures"), st.sampled_from([["loss", "loss"], ["nope"], "loss", [3]])),
        (("analysis", "pairs"), st.sampled_from([[["B16-seed0"]], [["B16-seed0", "nope"]], [[1, 2]]])),
        (("base", "epochs"), st.sampled_from([0, -1, 10**13, 2.5, math.nan])),
        (("base", "lr"), st.sampled_from([0.0, -1.0, *NOT_FINITE])),
        (("base", "weight_decay"), st.sampled_from([-1.0, *NOT_FINITE])),
        (("base", "save_every"), st.sampled_from([-1, 2**64])),
        (("grid", "batch_size"), st.sampled_from([[], [0], [16, 16], 16])),
        (("grid", "seed"), st.sampled_from([[-1], [0, 0]])),
        (("grid", "init_from"), st.sampled_from([["../../x/final.pt"], ["/nonexistent/final.pt"], ["@nope/final.pt"]])),
        (("figures", "cost", "target"), st.sampled_from([0.0, -1.0, *NOT_FINITE])),
        (("figures", "gap_scatter"), st.sampled_from([{"best": -1}, {"best": 0}, {"best": 10**6}])),
        (("figures", "kinds"), st.sampled_from([["tabel"], "table", [1], ["table", "table"]])),
        (("name",), st.sampled_from(ESCAPING)),
        (("variants",), st.sampled_from([[{"name": "a"}, {"name": "a"}], [{"name": "../x"}], [{"name": "/x"}]])),
    ]


def _set(spec: dict, where: tuple, value) -> dict:
    spec = json.loads(json.dumps(spec, allow_nan=True))
    node = spec
    for k in where[:-1]:
        node = node.setdefault(k, {})
    node[where[-1]] = value
    return spec


def _refused_before_work(tmp_path: Path, argv: list[str]) -> str:
    before = _tree(tmp_path)
    err = io.StringIO()
    def trained(args):
        raise AssertionError(f"accepted, trains {args[1]}")

    with redirect_stderr(err), redirect_stdout(io.StringIO()), warnings.catch_warnings(), \
            mock.patch("sharpness.experiments._train_one", trained):
        warnings.simplefilter("ignore")
        rc = run_main(argv)
    text = err.getvalue()
    assert rc == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert not set(lines[0]) & set(CONTROL), repr(lines[0])
    assert _tree(tmp_path) == before, "something was written"
    return lines[0]


def _experiment(tmp_path: Path, spec: dict, extra: list[str] = ()) -> list[str]:
    path = tmp_path / "exp.toml"
    path.write_text(_toml(spec))
    return [str(path), "--runs", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"), "--no-progress", *extra]


def test_the_unchanged_spec_is_accepted_by_the_checks(tmp_path, monkeypatch):
    # The writer above and the checks agree on a good spec: the runner gets as far as training (stopped there).
    import sharpness.experiments as ex

    class Trained(Exception):
        pass

    def stop(args):
        raise Trained
    monkeypatch.setattr(ex, "_train_one", stop)
    (tmp_path / "exp.toml").write_text(_toml(TINY))
    with pytest.raises(Trained):
        ex.run_experiment(tmp_path / "exp.toml", runs_root=tmp_path / "runs", figures_root=tmp_path / "fig",
                          progress=False)


if given is not None:
    @fuzz(data=st.data())
    def test_a_bad_value_anywhere_in_an_experiment_is_one_line_before_training(tmp_path_factory, data):
        where, values = data.draw(st.sampled_from(SLOTS), label="slot")
        value = data.draw(values, label="value")
        tmp = tmp_path_factory.mktemp("exp")
        line = _refused_before_work(tmp, _experiment(tmp, _set(TINY, where, value)))
        assert any(str(k) in line for k in where[-2:]) or "init_from" in line or "label" in line, line

    @fuzz(name=st.sampled_from(sorted(MEASURES)), data=st.data())
    def test_every_measure_setting_out_of_range_is_refused_by_the_library_and_the_cli(tmp_path_factory, name, data):
        m = MEASURES[name]
        keys = _int_keys(m) + _float_keys(m)
        if not keys:
            return
        key = data.draw(st.sampled_from(keys), label="key")
        bad = data.draw(st.sampled_from(NEG_OR_HUGE + [2.5, *NOT_FINITE] if key in _int_keys(m)
                                        else [0.0, -1.0, *NOT_FINITE]), label="value")
        tmp = tmp_path_factory.mktemp("set")
        net, x = nn.Linear(3, 2), torch.randn(8, 3)
        with pytest.raises(SharpnessError) as e:
            analyze(net, data=((x, torch.arange(8) % 2), None), measures=[name], settings={name: {key: bad}},
                    out=tmp / "an", progress=False)
        assert f"{name}.{key}" in str(e.value) and "\n" not in str(e.value)
        assert not (tmp / "an").exists()
        save_checkpoint(tmp / "c.pt", model=net, model_spec=Spec("mlp", {}), data_spec=Spec("gaussian", {}))
        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            rc = analyze_main([str(tmp / "c.pt"), "--measures", name, "--set", f"{name}.{key}={json.dumps(bad)}",
                               "--out", str(tmp / "cli")])
        assert rc == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
        assert not (tmp / "cli").exists()


@pytest.mark.parametrize("override", [
    "base.model_args=" + '{"a":' * 400 + "1" + "}" * 400,
    "grid.seed=" + "[" * 400 + "]" * 400,
    "base.epochs=" + "7" * 5000,
    "analysis.seed=" + str(2**64),
    "=1", "base.=3", "base", ".x=1",
    'analysis.settings={"eigenvalues": {"k": 0}}',
    'analysis.settings={"landscape2d": {"span": -1}}',
    'figures.curves=[{"file": "../up.png", "panels": [{"x": "epoch", "y": "test_loss"}]}]',
])
def test_overrides_that_nest_bomb_or_escape_are_one_line(tmp_path, override):
    _refused_before_work(tmp_path, _experiment(tmp_path, TINY, ["--set", override]))


@pytest.mark.parametrize("text", [
    "name = 'x'\n[base]\nmodel_args = { a = " + "[" * 500 + "]" * 500 + " }\n",
    "name = 'x'\n[base]\nepochs = " + "9" * 5000 + "\n",
    "name = 'x'\n[base]\nlr = 1e999\n",
    "name = 'x'\n" + "".join(f"[t{i}]\n" for i in range(3)),
    "\x00\x01garbage",
])
def test_a_toml_that_is_a_bomb_or_garbage_is_one_line(tmp_path, text):
    (tmp_path / "exp.toml").write_text(text)
    _refused_before_work(tmp_path, [str(tmp_path / "exp.toml"), "--runs", str(tmp_path / "runs"),
                                    "--figures", str(tmp_path / "fig")])


# --------------------------------------------------------------------------------------------------------
# a stranger's folder: nothing it holds is imported on a file's say-so
# --------------------------------------------------------------------------------------------------------

_STRANGER = textwrap.dedent("""
    import io, json, os, sys
    from contextlib import redirect_stderr, redirect_stdout
    from sharpness.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            rc = main(argv)
        results.append([rc, err.getvalue(), sorted(os.listdir("."))])
    print(json.dumps(results))
""")

PLANTED = "open('PLANTED_' + __name__, 'a').write('ran')\n" \
          "import torch\n" \
          "def make(**kw):\n    return torch.nn.Linear(6, 3)\n" \
          "def load(**kw):\n    x = torch.randn(24, 6)\n    return (x, torch.arange(24) % 3), (x, torch.arange(24) % 3)\n" \
          "def loss(out, y):\n    return torch.nn.functional.cross_entropy(out, y)\n"


def _stranger_folder(tmp_path: Path, module: str, where: str) -> Path:
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / f"{module}.py").write_text(PLANTED)
    gaussian = {"n_train": 24, "n_test": 24, "dim": 6, "classes": 3}
    model = Spec(f"{module}:make" if where == "model" else "mlp", {} if where == "model" else {"widths": [4]})
    data = Spec(f"{module}:load" if where == "data" else "gaussian", {} if where == "data" else gaussian)
    net = nn.Linear(6, 3) if where == "model" else __import__("sharpness").build_model(model, input_shape=(6,),
                                                                                         num_classes=3)
    save_checkpoint(folder / "ckpt.pt", model=net, model_spec=model, data_spec=data,
                    config={"loss": f"{module}:loss"} if where == "loss" else {})
    base = {"dataset": data.name, "data_args": data.args, "model": model.name, "model_args": model.args,
            "epochs": 1, "batch_size": 8, **({"loss": f"{module}:loss"} if where == "loss" else {})}
    (folder / "train.toml").write_text("\n".join(f"{k} = {_toml_value(v)}" for k, v in base.items()) + "\n")
    (folder / "exp.toml").write_text(_toml({"name": "e", "base": base}))
    return folder


@pytest.mark.parametrize("module,where", [("cleanup", "model"), ("utils", "data"), ("losses_x", "loss")])
def test_a_stranger_folder_never_has_its_scripts_imported(tmp_path, module, where):
    folder = _stranger_folder(tmp_path, module, where)
    commands = [["analyze", "ckpt.pt", "--out", "an"], ["info", "ckpt.pt"], ["train", "train.toml", "--out", "r"],
                ["run", "exp.toml", "--runs", "runs", "--figures", "fig"]]
    env = {k: v for k, v in os.environ.items() if k != "SHARPNESS_TRUST_CODE"}
    # python -c puts the current folder first on sys.path, as python -m does: the planted module is importable.
    out = subprocess.run([sys.executable, "-c", _STRANGER, json.dumps(commands)], cwd=folder, capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    files = sorted(os.listdir(folder))
    assert not [f for f in files if f.startswith("PLANTED")], "a planted script ran"
    for argv, (rc, err, listing) in zip(commands, results):
        if argv[0] == "info":  # shows what would be imported (test below), imports nothing
            assert rc == 0, err
            continue
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "refused" in err and module in err, (argv, err)
        assert "--trust-code" in err, err
        assert set(listing) == {f"{module}.py", "ckpt.pt", "train.toml", "exp.toml"}, listing  # nothing written
    # The opt-in is the user's: with it, the same command imports the module and trains.
    out = subprocess.run([sys.executable, "-m", "sharpness.train", "train.toml", "--out", "r", "--trust-code",
                          "--quiet"], cwd=folder, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (folder / f"PLANTED_{module}").exists() and (folder / "r" / "final.pt").exists()


def test_info_says_what_a_checkpoint_would_import(tmp_path, capsys):
    folder = _stranger_folder(tmp_path, "cleanup_info", "model")
    assert info_main([str(folder / "ckpt.pt")]) == 0
    out = capsys.readouterr().out
    assert "model 'cleanup_info:make': not imported" in out and "--trust-code" in out
    assert "cleanup_info" not in sys.modules


# --------------------------------------------------------------------------------------------------------
# strings from a checkpoint reach info escaped
# --------------------------------------------------------------------------------------------------------

if given is not None:
    EVIL = st.text(alphabet=st.sampled_from(list(CONTROL) + list("ab:[]")), min_size=1, max_size=8)

    @fuzz(evil=EVIL, slot=st.sampled_from(["model", "data", "root", "loss", "history_key", "history_value",
                                           "extra", "arg"]))
    def test_control_characters_in_a_checkpoint_never_reach_the_terminal(tmp_path_factory, evil, slot):
        tmp = tmp_path_factory.mktemp("info")
        model = Spec("mlp" if slot != "model" else evil, {"widths": [4]} if slot != "arg" else {evil: evil})
        data = Spec("gaussian" if slot != "data" else evil,
                    {"root": evil} if slot == "root" else {"n_train": 8, "n_test": 8, "dim": 6, "classes": 3})
        history = [{"epoch": 1, "step": 1, "train_loss": 0.5,
                    **({evil: 1.0} if slot == "history_key" else {}),
                    **({"test_loss": evil} if slot == "history_value" else {})}]
        save_checkpoint(tmp / "c.pt", model=nn.Linear(6, 3), model_spec=model, data_spec=data,
                        config={"loss": evil} if slot == "loss" else {}, history=history,
                        extra={evil: evil} if slot == "extra" else {})
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = info_main([str(tmp / "c.pt")])
        text = out.getvalue() + err.getvalue()
        assert rc in (0, 2)
        assert not set(text) & (set(CONTROL) - {"\n"}), repr(text)


def test_a_name_inside_another_set_value_does_not_allow_the_tomls_code(tmp_path):
    # Only a model/dataset/loss value the user typed is theirs: the same text inside another value (a data
    # argument, a longer name) is not.
    from sharpness.experiments import typed_names

    assert typed_names(['base.data_args={"note": "cleanup:x"}', "base.model=mynets:x"]) == {"mynets:x"}
    assert typed_names(['grid.model=["a:b", "c:d"]', 'variants=[{"name": "v", "loss": "l:f"}]']) == \
        {"a:b", "c:d", "l:f"}
    folder = _stranger_folder(tmp_path, "cleanup_set", "model")
    for override in ['base.data_args={"note": "cleanup_set:make"}', "base.dataset=gaussian",
                     "base.model=xcleanup_set:makex"]:
        with pytest.raises(SharpnessError) as e:
            __import__("sharpness").experiments.run_experiment(
                folder / "exp.toml", runs_root=tmp_path / "runs", figures_root=tmp_path / "fig",
                overrides=[override], progress=False)
        assert "cleanup_set" not in sys.modules and not (folder / "PLANTED_cleanup_set").exists(), str(e.value)


def test_a_module_in_the_current_folder_never_shadows_a_library(tmp_path):
    # python -m puts the current folder first on sys.path; a tqdm.py or scipy.py there is not imported in
    # place of the library, while the user's own module named on the command line still is.
    folder = _stranger_folder(tmp_path, "mynets_here", "model")
    for lib in ("tqdm", "scipy", "matplotlib", "safetensors"):
        (folder / f"{lib}.py").write_text(f"open('SHADOWED_{lib}', 'a').write('x')\n")
    env = {k: v for k, v in os.environ.items() if k != "SHARPNESS_TRUST_CODE"}
    out = subprocess.run([sys.executable, "-m", "sharpness.analyze", "ckpt.pt", "--model", "mynets_here:make",
                          "--measures", "loss", "--out", "an"], cwd=folder, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert not list(folder.glob("SHADOWED_*")) and (folder / "an" / "report.json").exists()
    assert (folder / "PLANTED_mynets_here").exists()  # named with --model: the user's own code, imported


def test_a_fifo_or_device_as_a_training_toml_is_refused_at_once(tmp_path):
    from sharpness.cli import train_main

    os.mkfifo(tmp_path / "f.toml")
    for path in (tmp_path / "f.toml", Path("/dev/zero")):
        err = io.StringIO()
        with redirect_stderr(err):
            assert train_main([str(path), "--out", str(tmp_path / "r")]) == 2
        assert "not a regular" in err.getvalue() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("measure,setting", [
    ("landscape2d", {"steps": 1}), ("landscape2d", {"steps": 10**9}), ("landscape1d", {"steps": 2_000_000}),
    ("density", {"steps": 1}), ("noise_scale", {"n_batches": 1}), ("noise_scale", {"n_batches": "x"}),
    ("interpolation", {"range": ["a", "b"]}), ("interpolation", {"n_alphas": 10**8}),
    ("dist_from_init", {"init": "/nonexistent/init.pt"}), ("eps_sharpness", {"subspace_dims": []}),
])
def test_settings_a_measure_would_refuse_later_are_refused_before_training(tmp_path, measure, setting):
    spec = _set(TINY, ("analysis", "settings"), {measure: setting})
    _refused_before_work(tmp_path, _experiment(tmp_path, spec))


def test_a_symlink_at_a_folder_the_runner_names_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "fig").mkdir()
    (tmp_path / "fig" / "tiny").symlink_to(victim, target_is_directory=True)
    _refused_before_work(tmp_path, _experiment(tmp_path, TINY))
    assert not list(victim.iterdir())


@pytest.mark.parametrize("figures", [
    {"correlation": {"gap": "bogus"}},
    {"curves": [{"file": "c.png", "groups": ["nosuchgroup"], "panels": [{"x": "epoch", "y": "test_loss"}]}]},
])
def test_figure_options_that_name_nothing_are_refused_before_training(tmp_path, figures):
    spec = _set(TINY, ("figures",), {**TINY["figures"], **figures})
    assert ("gap" if "correlation" in figures else "nosuchgroup") in _refused_before_work(
        tmp_path, _experiment(tmp_path, spec))


def test_pair_labels_too_long_for_a_file_name_are_refused_before_training(tmp_path):
    a, b = "a" * 100, "b" * 100
    spec = {**TINY, "variants": [{"name": a}, {"name": b}], "figures": {"kinds": ["table"]},
            "grid": {**TINY["grid"], "lr": [0.0100000000001]}}
    labels = [label for label, _ in __import__("sharpness").experiments.expand(spec) if "B16-seed0" in label]
    spec["analysis"] = {**TINY["analysis"], "pairs": [[*labels[:2], "sin"]]}
    assert "at most 255" in _refused_before_work(tmp_path, _experiment(tmp_path, spec))


def test_more_eigenvalues_than_parameters_is_refused_before_any_measure(tmp_path):
    net, x = nn.Linear(3, 2), torch.randn(8, 3)  # 8 parameters
    with pytest.raises(SharpnessError, match="k 100 is more than the model's 8 parameters"):
        analyze(net, data=((x, torch.arange(8) % 2), None), measures=["loss", "eigenvalues"],
                settings={"eigenvalues": {"k": 100}}, out=tmp_path / "an", progress=False)
    assert not (tmp_path / "an").exists()


@pytest.mark.parametrize("kw,message", [(dict(fits=5), "fits must be a function"),
                                        (dict(ranges=[1]), "ranges must be a dict"),
                                        (dict(ranges={"k": 3}), "ranges must be a dict"),
                                        (dict(ranges={"x": {}}), "ranges name no setting: x")])
def test_register_measure_refuses_bad_ranges_and_fits(kw, message):
    from sharpness.measures.registry import register_measure

    with pytest.raises(SharpnessError, match=message):
        register_measure("fuzz_config_measure", lambda ctx, st: None, settings={"k": 1}, **kw)
    assert "fuzz_config_measure" not in MEASURES


def test_nonfinite_example_finds_the_first_bad_example_of_a_4d_batch():
    from sharpness.batches import nonfinite_example

    x = torch.randn(9, 3, 4, 4, dtype=torch.float64)
    assert nonfinite_example(x) is None
    x[6, 2, 1, 3], x[7, 0, 0, 0] = -math.inf, math.nan
    assert nonfinite_example(x) == 6 and nonfinite_example(x, nan_only=True) == 7
