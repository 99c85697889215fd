import math
import subprocess
import sys

import pytest
import torch

from sharpness import SharpnessError, TrainConfig
from sharpness.checkpoint import save_checkpoint
from sharpness.cli import analyze_main, config_from_args, info_main, train_main, train_parser
from sharpness.specs import Spec


def _sample(o):
    """A valid, non-default value of a field, and the flags that say it."""
    flag = "--" + o.name.replace("_", "-")
    if o.type is bool:
        return True, [flag]
    if o.type is list and "choices" in o.allowed:
        return list(o.allowed["choices"][-2:]), [flag, ",".join(o.allowed["choices"][-2:])]
    if o.type is list:
        return [3, 7], [flag, "3,7"]
    if o.type is dict:
        return {"k": 1, "s": "x", "w": [4, 4]}, [flag[:-1], "k=1", flag[:-1], "s=x", flag[:-1], "w=[4,4]"]
    if "choices" in o.allowed:
        return o.allowed["choices"][-1], [flag, o.allowed["choices"][-1]]
    if o.name == "device":  # a checked string; CUDA's presence is checked only when training starts
        return "cuda:1", [flag, "cuda:1"]
    value = {int: 7, float: 0.5, str: "my_pkg.things:make"}[o.type]
    return value, [flag, str(value)]


@pytest.mark.parametrize("o", TrainConfig.options(), ids=lambda o: o.name)
def test_every_field_has_a_flag_that_round_trips(o):
    value, argv = _sample(o)
    assert value != o.default
    cfg = config_from_args(argv + ["--out", "unused"])
    got = getattr(cfg, o.name)
    assert got == value and type(got) is type(value)
    assert cfg.to_dict() == {**TrainConfig().to_dict(), o.name: value}  # nothing else changed


def test_the_parser_covers_every_field_and_bools_turn_off():
    dests = {a.dest for a in train_parser()._actions}
    assert {o.name for o in TrainConfig.options()} <= dests
    on = config_from_args(["--nesterov", "--trace-log-steps", "--out", "x"])
    assert on.nesterov and on.trace_log_steps
    assert config_from_args(["--nesterov", "--no-nesterov", "--out", "x"]).nesterov is False


def test_help_lists_every_field_with_its_comment(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag in ("--trace-log-steps", "--warmup-from", "--decay-bn-and-bias", "--eval-batch-size", "--loss",
                 "--loss-arg", "--data-arg", "--model-arg", "--milestones", "--no-nesterov", "--quiet", "--out"):
        assert flag in text
    for o in TrainConfig.options():
        assert ("--" + o.name.replace("_", "-")).removesuffix("s" if o.type is dict else "") in text
    # a comment's continuation line is part of the help, and the default is shown
    assert "log-spaced update counts per decade" in text and "(default: 4096)" in text
    assert "a finite number in [0, 1)" in text


def test_python_m_sharpness_train_help():
    r = subprocess.run([sys.executable, "-m", "sharpness.train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--target-train-loss" in r.stdout and "--warmup-from" in r.stdout


def test_the_old_flags_and_a_toml_config(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "digits"\nepochs = 3\nbatch_size = 64\n[data_args]\nn = 1\n[model_args]\nwidths = [8]\n')
    cfg = config_from_args([str(toml), "--dataset", "gaussian", "--model", "mlp", "--batch-size", "16",
                            "--lr", "0.01", "--milestones", "30,60", "--save-steps", "10,100",
                            "--data-arg", "n_train=128", "--model-arg", "bn=true", "--quiet", "--out", "o"])
    assert (cfg.dataset, cfg.model, cfg.batch_size, cfg.lr, cfg.epochs) == ("gaussian", "mlp", 16, 0.01, 3)
    assert cfg.milestones == [30, 60] and cfg.save_steps == [10, 100]
    assert cfg.data_args == {"n": 1, "n_train": 128} and cfg.model_args == {"widths": [8], "bn": True}
    assert cfg.loss == "cross_entropy" and cfg.loss_args == {}  # the default keeps the old behaviour
    cfg = config_from_args(["--loss", "mse", "--loss-arg", "reduction=sum", "--lr", "1", "--out", "o"])
    assert cfg.loss == "mse" and cfg.loss_args == {"reduction": "sum"} and cfg.lr == 1.0


@pytest.mark.parametrize("field, value", [
    ("batch_size", "32"), ("batch_size", 3.7), ("batch_size", -4), ("batch_size", True), ("lr", math.nan),
    ("lr", -1), ("lr", math.inf), ("epochs", 1.5), ("epochs", 0), ("milestones", 5), ("milestones", [1, 2.5]),
    ("milestones", ["x"]), ("model_args", "wide"), ("loss_args", [1]), ("data_args", None), ("device", "gpu"),
    ("device", 0), ("momentum", 1.0), ("momentum", -0.1), ("weight_decay", -1e-4), ("warmup_epochs", -1),
    ("decay_factor", 0), ("decay_factor", 1.5), ("base_batch_size", 0), ("max_batch_size", 2.0),
    ("ghost_batch_size", -1), ("grad_clip", 0), ("target_train_loss", 0.0), ("save_every", -1),
    ("save_steps", [0]), ("eval_batch_size", 0), ("optimizer", "lion"), ("lr_scaling", "cube"),
    ("seed", 1.0), ("nesterov", 1), ("dataset", None), ("loss", 3), ("seed", -1), ("seed", 2**32),
    ("seed", 2**70), ("device", "meta"), ("device", "mps"), ("device", "xla"), ("device", "cpu:1"),
    ("device", "cuda:x"), ("device", "cuda:-1"),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(SharpnessError) as e:
        TrainConfig.from_dict({field: value})
    msg = str(e.value)
    assert msg.startswith(f"{field} must be ") and f"(got {value!r})" in msg and "\n" not in msg


def test_messages_say_what_is_allowed():
    cases = {"batch_size": ("32", "batch_size must be an integer ≥ 1 (got '32')"),
             "lr": (math.nan, "lr must be a finite number > 0 (got nan)"),
             "momentum": (1, "momentum must be a finite number in [0, 1) (got 1)"),
             "grad_clip": (-1, "grad_clip must be None or a finite number > 0 (got -1)"),
             "optimizer": ("lion", "optimizer must be one of adam, adamw, sgd (got 'lion')"),
             "seed": (2**32, "seed must be an integer in [0, 4294967295] (got 4294967296)"),
             "device": ("meta", "device must be one of cpu, cuda, cuda:N (got 'meta')")}
    for field, (value, message) in cases.items():
        with pytest.raises(SharpnessError) as e:
            TrainConfig.from_dict({field: value})
        assert str(e.value) == message
    for ok in ({"lr": 1}, {"grad_clip": None}, {"device": "cuda"}, {"milestones": []}, {"momentum": 0},
               {"device": "cuda:3"}, {"device": "cpu"}, {"seed": 0}, {"seed": 2**32 - 1}):
        TrainConfig.from_dict(ok)  # an int is a float; None where allowed; CUDA is checked at train time


@pytest.mark.parametrize("argv, field", [
    (["--batch-size", "3.7"], "batch_size"), (["--batch-size", "-4"], "batch_size"),
    (["--batch-size", "abc"], "batch_size"), (["--lr", "nan"], "lr"), (["--lr", "-1"], "lr"),
    (["--epochs", "1.5"], "epochs"), (["--milestones", "5,x"], "milestones"), (["--device", "gpu"], "device"),
    (["--optimizer", "lion"], "optimizer"), (["--momentum", "inf"], "momentum"),
    (["--seed", "1180591620717411303424"], "seed"), (["--seed", "-5"], "seed"), (["--device", "meta"], "device"),
])
def test_bad_flag_values_name_the_field(argv, field):
    with pytest.raises(SharpnessError, match=f"^{field} must be "):
        config_from_args(argv + ["--out", "o"])


def test_bad_toml_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('batch_size = "32"\n')
    with pytest.raises(SharpnessError, match=r"bad.toml: batch_size must be an integer ≥ 1 \(got '32'\)"):
        TrainConfig.from_toml(bad)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('dataset = "café"\n'.encode("latin-1"))
    with pytest.raises(SharpnessError, match="latin1.toml: not a TOML file [(]not UTF-8"):
        TrainConfig.from_toml(latin1)
    with pytest.raises(SharpnessError, match="is a folder"):
        TrainConfig.from_toml(tmp_path)
    with pytest.raises(SharpnessError, match="no such file"):
        TrainConfig.from_toml(tmp_path / "missing.toml")
    (tmp_path / "train.toml").write_text("train = 3\n")
    with pytest.raises(SharpnessError, match="table of options"):
        TrainConfig.from_toml(tmp_path / "train.toml")
    with pytest.raises(SharpnessError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})


@pytest.mark.parametrize("bad", [["--batch-size", "3.7"], ["--lr", "nan"], ["--device", "gpu"],
                                 ["--model-arg", "widths=[8]", "--epochs", "0"], ["TOML"], ["LATIN1"], ["DIR"]])
def test_train_main_refuses_bad_input_in_one_line(bad, tmp_path, capsys):
    (tmp_path / "bad.toml").write_text('batch_size = "32"\n')
    (tmp_path / "latin1.toml").write_bytes(b'dataset = "caf\xe9"\n')
    bad = [{"TOML": str(tmp_path / "bad.toml"), "LATIN1": str(tmp_path / "latin1.toml"),
            "DIR": str(tmp_path)}.get(b, b) for b in bad]
    out = tmp_path / "run"
    assert train_main(bad + ["--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()


def test_usage_errors_are_one_line(capsys):
    for argv in (["--batch-size"], ["--out", "o", "--data-arg", "novalue"], ["--out", "o", "--batchsize", "3"]):
        with pytest.raises(SystemExit) as e:
            train_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


class _FakeReport:
    failed = {}
    out = None  # the folder written: None, so the CLI names its --out

    def table(self):
        return ""


def test_analyze_main_passes_model_data_and_loss(monkeypatch, tmp_path, capsys):
    import sharpness.analysis

    calls = []
    monkeypatch.setattr(sharpness.analysis, "analyze", lambda *a, **kw: calls.append((a, kw)) or _FakeReport())
    argv = ["a.pt", "b.pt", "--out", str(tmp_path), "--model", "my_models:make", "--model-arg", "width=8",
            "--model-arg", "bn=true", "--data", "mnist", "--data-arg", f"root={tmp_path}", "--loss", "mse",
            "--loss-arg", "reduction=sum", "--measures", "lambda_max, trace", "--quick", "--no-progress",
            "--seed", "3", "--batch-size", "64", "--max-samples", "100", "--force"]
    assert analyze_main(argv) == 0
    (args, kw), = calls
    assert args == (["a.pt", "b.pt"],)
    assert kw == dict(out=str(tmp_path), measures=["lambda_max", "trace"], quick=True, device="cpu",
                      batch_size=64, max_samples=100, seed=3, model="my_models:make",
                      model_args={"width": 8, "bn": True}, data="mnist", data_args={"root": str(tmp_path)},
                      loss="mse", loss_args={"reduction": "sum"}, force=True, progress=False)
    calls.clear()
    assert analyze_main([str(tmp_path / "c.pt")]) == 0
    (_, kw), = calls
    # the CLI shows progress (log lines where stderr is no terminal); the library's default stays quiet there
    assert kw["out"] == str(tmp_path / "analysis") and kw["progress"] is True
    assert all(kw[k] is None for k in ("model", "model_args", "data", "data_args", "loss", "loss_args"))
    assert not {"settings", "labels", "params"} & set(kw)  # analyze's own defaults when the flags are absent


def test_analyze_help_lists_the_measures(capsys):
    from sharpness import analysis

    names = analysis.measure_names() if hasattr(analysis, "measure_names") else list(analysis.MEASURES)
    with pytest.raises(SystemExit) as e:
        analyze_main(["--help"])
    text = "".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and names and ",".join(names) in text


def test_info_shows_data_root_and_loss(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "c.pt", model=torch.nn.Linear(3, 2),
                           model_spec=Spec("mlp", {"input_shape": [3], "num_classes": 2, "widths": []}),
                           data_spec=Spec("mnist", {"root": "data/../mnist"}),
                           config={"loss": "mse", "loss_args": {"reduction": "sum"}}, epoch=1, step=5)
    monkey_cwd = tmp_path / "cwd"
    monkey_cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(monkey_cwd)
        assert info_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "data: {'name': 'mnist', 'args': {'root': 'data/../mnist'}}" in out
    assert f"data would be read from: {monkey_cwd / 'mnist'}" in out
    assert "loss: mse {'reduction': 'sum'}" in out and "epoch 1, step 5" in out
    save_checkpoint(path, model=torch.nn.Linear(3, 2), model_spec=Spec("mlp", {}), data_spec=Spec("gaussian"))
    assert info_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "loss: cross_entropy" in out and "would be read from" not in out


def test_guard_prints_one_line_whatever_the_message_holds(capsys):
    from sharpness.cli import _guard

    @_guard
    def fails(argv=None):
        raise SharpnessError("first line\n  second line\r\nthird\tline ")

    assert fails([]) == 2
    assert capsys.readouterr().err == "error: first line second line third line\n"


@pytest.mark.parametrize("source,error", [
    ("def broken(:\n", "SyntaxError"),
    ("raise ValueError('plugin exploded\\nsecond line')\n", "ValueError: plugin exploded second line"),
    ("import no_such_dependency_of_the_plugin\n", "ModuleNotFoundError"),
    (None, "ModuleNotFoundError"),
])
def test_a_plugin_that_cannot_be_imported_is_one_line_naming_it(source, error, tmp_path, monkeypatch, capsys):
    from helpers import user_module

    name = user_module(tmp_path, monkeypatch, "cli_bad_plugin", source) if source is not None else "cli_no_plugin"
    assert analyze_main(["x.pt", "--plugin", name, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --plugin '{name}': cannot import it ({error}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["", ".x", "..", "a..b"])
def test_a_plugin_name_that_is_not_a_module_is_one_line(name, tmp_path, capsys):
    assert analyze_main(["x.pt", f"--plugin={name}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --plugin {name!r}: cannot import it (") and err.count("\n") == 1, err


@pytest.mark.parametrize("main", ["analyze", "run", "figures"])
def test_figure_flags_reach_the_command_body(main, monkeypatch, tmp_path, capsys):
    import sharpness.analysis
    import sharpness.experiments
    import sharpness.plots.experiments
    from sharpness import cli
    from sharpness.plots.style import _options

    seen = []
    monkeypatch.setattr(sharpness.analysis, "analyze", lambda *a, **kw: seen.append(dict(_options)) or _FakeReport())
    monkeypatch.setattr(sharpness.experiments, "run_experiment", lambda *a, **kw: seen.append(dict(_options)) or "r")
    monkeypatch.setattr(sharpness.plots.experiments, "draw",
                        lambda res, out=None, labels=None: seen.append(dict(_options)) or [])
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "results.json").write_text("{}")
    first = {"analyze": ["a.pt", "--out", str(tmp_path)], "run": ["x.toml", "--figures", str(tmp_path)],
             "figures": ["--figures", str(tmp_path)]}[main]
    fn = getattr(cli, f"{main}_main")
    if main == "figures":
        first += ["--in-place"]
    assert fn(first + ["--format", "pdf, SVG", "--dpi", "150", "--style", "iclr", "--title", "Mine"]) == 0
    assert fn(first) == 0
    assert seen == [{"formats": ("pdf", "svg"), "dpi": 150, "style": "iclr", "title": "Mine"},
                    {"formats": ("png",), "dpi": 300, "style": "default", "title": None}]
    assert _options == {"formats": (), "dpi": 300, "style": "default", "title": None}
    with pytest.raises(SystemExit):
        fn(["--help"])
    text = capsys.readouterr().out
    assert all(f in text for f in ("--format", "--dpi", "--style", "neurips", "--title"))


@pytest.mark.parametrize("argv, flag", [(["--format", "tiff"], "--format"), (["--format="], "--format"),
                                        (["--dpi", "0"], "--dpi"), (["--dpi", "2.5"], "--dpi"),
                                        (["--style", "Default"], "--style")])
def test_bad_figure_flags_of_run_are_one_line_before_any_work(argv, flag, monkeypatch, tmp_path, capsys):
    import sharpness.experiments
    from sharpness.cli import run_main

    monkeypatch.setattr(sharpness.experiments, "run_experiment", lambda *a, **kw: pytest.fail("ran"))
    assert run_main(["x.toml", "--runs", str(tmp_path / "runs"), "--figures", str(tmp_path / "figs")] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} must be") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def _fake_analyze(monkeypatch):
    import sharpness.analysis

    calls = []
    monkeypatch.setattr(sharpness.analysis, "analyze", lambda *a, **kw: calls.append(kw) or _FakeReport())
    return calls


def test_analyze_set_label_params_title_reach_analyze(monkeypatch, tmp_path):
    from sharpness.plots.style import _options

    calls = _fake_analyze(monkeypatch)
    titles = []
    import sharpness.analysis
    inner = sharpness.analysis.analyze
    monkeypatch.setattr(sharpness.analysis, "analyze", lambda *a, **kw: titles.append(_options["title"]) or inner(*a, **kw))
    argv = ["a.pt", "b.pt", "--out", str(tmp_path), "--set", "eigenvalues.k=3", "--set", "landscape2d.span=0.5",
            "--set", "landscape2d.normalization=filter", "--set", "eigenvalues.tol=1e-3", "--label", "SB",
            "--label", "LB", "--params", "fc*.weight, head.*", "--title", "My run", "--no-progress"]
    assert analyze_main(argv) == 0
    kw, = calls
    assert kw["settings"] == {"eigenvalues": {"k": 3, "tol": 1e-3},
                              "landscape2d": {"span": 0.5, "normalization": "filter"}}
    assert kw["labels"] == ["SB", "LB"] and kw["params"] == ["fc*.weight", "head.*"] and kw["progress"] is False
    assert titles == ["My run"]


@pytest.mark.parametrize("argv, message", [
    (["--set", "=1"], "error: --set expects MEASURE.KEY=VALUE"),
    (["--set", "eigenvalues=3"], "error: --set expects MEASURE.KEY=VALUE"),
    (["--set", "eigenvalues."], "error: --set expects MEASURE.KEY=VALUE"),
    (["--set", "nosuch.k=1"], "error: --set nosuch.k=1: unknown measure 'nosuch'; measures: loss, eigenvalues"),
    (["--set", "eigenvalues.kk=1"], "error: --set eigenvalues: unknown key(s) kk"),
    (["--set", "eigenvalues.k=many"], "error: --set eigenvalues.k is 'many'"),
    (["--label", "only-one"], "error: --label given 1 time(s) for 2 checkpoint(s)"),
    (["--params", ","], "error: argument --params: expected a comma-separated list"),
])
def test_bad_analyze_flags_are_one_line_exit_2_nothing_written(argv, message, monkeypatch, tmp_path, capsys):
    calls = _fake_analyze(monkeypatch)
    out = tmp_path / "out"
    try:
        code = analyze_main(["a.pt", "b.pt", "--out", str(out)] + argv)
    except SystemExit as e:  # a usage error: argparse's exit, one line too
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert calls == [] and not out.exists()


def test_help_of_every_flag(capsys):
    with pytest.raises(SystemExit):
        analyze_main(["--help"])
    text = capsys.readouterr().out
    pos = text[text.index("positional arguments:"):text.index("options:")]
    assert "CKPT" in pos and "state_dict" in pos  # the positional says what it takes
    for flag, words in (("--seed", "random"), ("--no-progress", "log"), ("--set", "eigenvalues.k=3"),
                        ("--label", "checkpoint"), ("--params", "parameters"), ("--title", "title")):
        after = text[text.index(f"  {flag} "):][:300]
        assert words in after, (flag, after)
    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = capsys.readouterr().out
    assert "--no-progress" in text and "log" in text


@pytest.mark.parametrize("o", [o for o in TrainConfig.options() if o.type is dict], ids=lambda o: o.name)
def test_the_examples_in_the_help_of_dict_flags_are_accepted(o, capsys):
    import re

    flag = "--" + o.name.replace("_", "-").removesuffix("s")
    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    help = text[text.index(f"{flag} KEY=VALUE "):][:400]
    examples = re.findall(rf"{flag} (\w+=\S+?)[;,)]? ", help)
    assert examples and "{" not in help.split("repeatable")[0], help
    for example in examples:
        value = example.split("=", 1)[1]
        if value in ("PATH", "VALUE"):
            continue  # a placeholder for the user's own value
        key = example.split("=", 1)[0]
        config = config_from_args(["--out", "o", flag, example])
        assert key in getattr(config, o.name), (example, getattr(config, o.name))


def test_info_rebuilds_a_bare_state_dict_with_model(tmp_path, monkeypatch, capsys):
    from helpers import user_module

    user_module(tmp_path, monkeypatch, "info_nets", "import torch\n"
                "def make(width=3):\n    return torch.nn.Sequential(torch.nn.Linear(width, 2))\n")
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 2)).state_dict(), tmp_path / "bare.pt")
    assert info_main([str(tmp_path / "bare.pt"), "--model", "info_nets:make", "--model-arg", "width=4"]) == 0
    out = capsys.readouterr().out
    assert "built: torch.nn.modules.container.Sequential, 10 parameters, weights loaded" in out, out
    assert info_main([str(tmp_path / "bare.pt"), "--model", "info_nets:make"]) == 2  # width 3: weights do not fit
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        info_main(["--help"])
    text = capsys.readouterr().out
    assert "--model NAME|MODULE:FACTORY" in text and "--model-arg KEY=VALUE" in text and "CKPT" in text


@pytest.mark.parametrize("command", ["analyze", "train"])
def test_torchrun_with_cuda_on_a_cpu_torch_is_one_line_on_rank_0(command, monkeypatch, tmp_path, capsys):
    from sharpness import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "out"
    argv = {"analyze": ["a.pt", "--out", str(out), "--device", "cuda"],
            "train": ["--out", str(out), "--device", "cuda", "--dataset", "gaussian"]}[command]
    fn = getattr(cli, f"{command}_main")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        try:
            code = fn(argv)
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        if rank == "0":
            assert err.startswith("error: --device cuda under torchrun: ") and err.count("\n") == 1, err
            assert "without CUDA" in err or "sees no GPU" in err
        else:
            assert err == ""  # one line in the job's log, not one per rank
        assert not out.exists()


def test_pytest_q_prints_its_summary_line(tmp_path):
    """The README's ``python -m pytest -q`` says how many passed: pyproject's addopts has no -q of its own."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                        str(root / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path / "test_one.py")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
