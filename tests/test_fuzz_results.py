"""Hostile report.json / results.json / output folders (issue 25): refused in one line, nothing written outside.

Generated variants (hypothesis) of the classes of case: symlinks, FIFOs and folders where ``analyze`` keeps
its lock and its report, path escapes in figure names read from a file, inner types of the wrong kind,
control characters that would reach a figure or a table, out-of-range figure options, NaN/Inf data. Each
asserts a one-line SharpnessError (exit 2 from the CLI), that the sibling folder ``outside`` is byte for
byte as it was, and that no file appears at a symlink's target. FIFO cases run in a thread with a timeout,
so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from sharpness import SharpnessError, analyze
from sharpness.cli import main as cli_main
from sharpness.plots.experiments import check_figures, draw

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FIXTURE = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
CONTROL = "".join(map(chr, [*range(32), 127]))

# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert text and not any(c in CONTROL for c in text), repr(text)
    return text


def _tree(root: Path) -> dict:
    """Every entry under ``root`` (files by their bytes, links by their target)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = ("link", os.readlink(p)) if p.is_symlink() else \
                ("dir",) if p.is_dir() else ("file", p.read_bytes()) if p.is_file() else ("other",)
    return out


@pytest.fixture
def box(tmp_path):
    """(work folder, sibling folder 'outside' with a file in it); the sibling is checked unchanged after."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("precious\n")
    before, top = _tree(outside), sorted(p.name for p in tmp_path.iterdir())
    yield work, outside
    assert _tree(outside) == before, "something was written outside the named folders"
    assert sorted(p.name for p in tmp_path.iterdir()) == top


def _in_thread(fn, timeout: float = 20.0, unblock: Path | None = None):
    """``fn()`` in a thread: its result or its exception; a hang fails the test (and is released)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        if unblock is not None:  # a reader blocked on a FIFO: a writer end releases it
            with contextlib.suppress(OSError):
                fd = os.open(unblock, os.O_RDWR | os.O_NONBLOCK)
                os.write(fd, b"{}")
                os.close(fd)
        pytest.fail(f"the call hung for {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _data(n=16, seed=0, dim=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x, (x[:, 0] > 0).long()


def _net(seed=0, dim=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 5), nn.Tanh(), nn.Linear(5, 2))


NET, TRAIN, TEST = _net(), _data(16, 0), _data(8, 1)


def _analyze(out, **kw):
    kw = {"data": (TRAIN, TEST), "loss": "cross_entropy", "measures": ["loss"], "progress": False, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze(kw.pop("model", NET), out=out, **kw)


# --------------------------------------------------------------------------------------------------------
# analyze: .lock, report.json, arrays.npz
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dangling", [True, False])
def test_a_symlink_at_the_lock_is_refused_and_its_target_never_created(box, dangling):
    work, outside = box
    out = work / "an"
    out.mkdir()
    target = outside / ("made.lock" if dangling else "keep.txt")
    (out / ".lock").symlink_to(target)
    with pytest.raises(SharpnessError) as e:
        _analyze(out)
    assert ".lock" in _one_line(e.value) and "symlink" in str(e.value)
    assert not (outside / "made.lock").exists() and not (out / "report.json").exists()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_folder_at_the_lock_is_refused_at_once(box, kind):
    work, _ = box
    out = work / "an"
    out.mkdir()
    os.mkfifo(out / ".lock") if kind == "fifo" else (out / ".lock").mkdir()
    with pytest.raises(SharpnessError) as e:
        _in_thread(lambda: _analyze(out), unblock=out / ".lock" if kind == "fifo" else None)
    assert ".lock" in _one_line(e.value)
    assert not (out / "report.json").exists()


@pytest.mark.parametrize("name", ["report.json", "arrays.npz"])
def test_a_fifo_at_the_report_or_arrays_is_refused_not_waited_on(box, name):
    work, _ = box
    out = work / "an"
    _analyze(out)  # a real report (and, for arrays.npz, a FIFO beside it)
    (out / name).unlink(missing_ok=True)
    os.mkfifo(out / name)
    with pytest.raises(SharpnessError) as e:
        _in_thread(lambda: _analyze(out), unblock=out / name)
    assert name in _one_line(e.value) and "FIFO" in str(e.value)


def test_a_report_json_symlink_is_read_then_replaced_never_written_through(box):
    work, outside = box
    out = work / "an"
    _analyze(out)
    shared = outside / "keep.txt"
    (out / "report.json").unlink()
    (out / "report.json").symlink_to(shared)  # not a report: set aside (the link itself), recomputed
    rep = _analyze(out)
    assert not (out / "report.json").is_symlink() and (out / "report.json").is_file()
    assert shared.read_text() == "precious\n"
    assert rep.data["checkpoints"]["model"]["measures"]["loss"]["summary"]


def test_a_symlink_at_the_settings_folder_is_refused(box):
    work, outside = box
    out = work / "an"
    _analyze(out)
    _analyze(work / "probe")
    tag = _analyze(work / "probe", quick=True).out.name  # where a quick run of other settings goes
    assert tag.startswith("quick")
    (out / tag).symlink_to(outside, target_is_directory=True)
    with pytest.raises(SharpnessError) as e:
        _analyze(out, quick=True)
    assert "symlink" in _one_line(e.value)


# --- wrong inner types of a report.json: set aside (recomputed), never a traceback on every rerun ----------

_BASE_REPORT: dict = {}


def _base_report(tmp: Path) -> dict:
    if not _BASE_REPORT:
        _analyze(tmp)
        _BASE_REPORT.update(json.loads((tmp / "report.json").read_text()))
    return copy.deepcopy(_BASE_REPORT)


# where in the report a wrong value goes: a function of the report that plants it
_SLOTS = {
    "checkpoints entry": lambda r, v: r["checkpoints"].__setitem__("model", v),
    "measures": lambda r, v: r["checkpoints"]["model"].__setitem__("measures", v),
    "a measure": lambda r, v: r["checkpoints"]["model"]["measures"].__setitem__("loss", v),
    "summary": lambda r, v: r["checkpoints"]["model"]["measures"]["loss"].__setitem__("summary", v),
    "figures": lambda r, v: r["checkpoints"]["model"]["measures"]["loss"].__setitem__("figures", v),
    "arrays": lambda r, v: r["checkpoints"]["model"]["measures"]["loss"].__setitem__("arrays", v),
    "status": lambda r, v: r["checkpoints"]["model"]["measures"]["loss"].update(status=v, error=v),
    "path": lambda r, v: r["checkpoints"]["model"].__setitem__("path", v),
    "settings": lambda r, v: r.__setitem__("settings", v),
    "variant": lambda r, v: r["settings"].__setitem__("variant", v),
    "pairs": lambda r, v: r.__setitem__("pairs", v),
    "together": lambda r, v: r.__setitem__("together", v),
}
_WRONG = [[], [["a"]], [1, 2], 5, 2.5, True, "text", {"x": [1]}, [{"a": 1}], {"k": {"z": None}}]


def _json_values():
    return st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                        | st.text(max_size=8), lambda c: st.lists(c, max_size=3)
                        | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6)


def _check_rerun(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report))
    try:
        rep = _analyze(out)
    except SharpnessError as e:  # a refusal is one line; a traceback is the failure this guards against
        _one_line(e)
        return
    entry = rep.data["checkpoints"]["model"]["measures"]["loss"]  # reused (its types fit) or recomputed
    assert isinstance(entry.get("summary"), dict) or "status" in entry
    rep.table(), rep.failed  # what the CLI prints of it
    json.loads((out / "report.json").read_text())  # strict JSON written back


@pytest.mark.parametrize("slot", sorted(_SLOTS))
@pytest.mark.parametrize("value", _WRONG, ids=lambda v: type(v).__name__ + str(len(json.dumps(v))))
def test_a_report_with_wrong_inner_types_is_set_aside_not_a_traceback(box, slot, value):
    work, _ = box
    report = _base_report(work / "base")
    _SLOTS[slot](report, value)
    _check_rerun(work / "base", report)


@settings(max_examples=30, deadline=None, suppress_health_check=FIXTURE)
@given(slot=st.sampled_from(sorted(_SLOTS)), value=_json_values())
def test_generated_wrong_values_anywhere_in_a_report(box, slot, value):
    work, _ = box
    report = _base_report(work / "base")
    _SLOTS[slot](report, value)
    _check_rerun(work / "base", report)


# --------------------------------------------------------------------------------------------------------
# path escapes: names read from a file never leave the output folder
# --------------------------------------------------------------------------------------------------------

_PARTS = ["..", ".", "outside", "x.png", "keep.txt", "", "\x1b[2J", "\x00", "a\nb.png", "y.svg", "..."]


def _escapes(outside: Path):
    """Names that are not one plain path component: separators, '..', absolute, control characters."""
    joined = st.builds(lambda parts, sep, absolute: ("/" if absolute else "") + sep.join(parts),
                       st.lists(st.sampled_from(_PARTS), min_size=2, max_size=5), st.sampled_from(["/", "\\"]),
                       st.booleans())
    single = st.sampled_from(["..", ".", "", "\x1b.png", "a\x00.png", "x\n.png", "x\r.png", "\x7f.png"])
    absolute = st.sampled_from([str(outside / "abs.png"), str(outside / "keep.txt"), "/tmp/../" + str(outside)[1:]])
    return st.one_of(joined, single, absolute)


ESCAPES = ["../../x.png", "../outside/x.png", "/etc/x.png", "a/b.png", "..\\x.png", "..", "\x1b[2J.png"]


@pytest.mark.parametrize("name", ESCAPES)
def test_figure_names_from_a_report_are_confined(box, name):
    work, outside = box
    report = _base_report(work / "base")
    report["checkpoints"]["model"]["measures"]["loss"]["figures"] = [name]
    report["together"] = {"density": [name]}
    _check_rerun(work / "base", report)


def _results(**figures) -> dict:
    """A small, valid results.json: two groups of two seeds, histories with loss and accuracy."""
    runs = {}
    for g, lr in (("A", 0.1), ("B", 0.05)):
        for seed in (0, 1):
            hist = [{"epoch": e, "step": 10 * e, "examples": 320 * e, "wall_time": 0.1 * e,
                     "train_loss": 1.0 / (e + 1) + 0.01 * seed, "test_loss": 1.2 / (e + 1) + 0.02 * seed,
                     "train_acc": 0.5 + 0.1 * e, "test_acc": 0.45 + 0.1 * e} for e in range(4)]
            runs[f"{g}-seed{seed}"] = {"config": {"batch_size": 32, "lr": lr, "seed": seed}, "history": hist,
                                       "final": {"loss": {"train_loss": hist[-1]["train_loss"],
                                                          "test_loss": hist[-1]["test_loss"]}}}
    return {"name": "fz", "spec": {"figures": {"kinds": ["table"], **figures}}, "runs": runs}


def _write(folder: Path, res) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(res))
    return folder / "results.json"


def _figures_cli(root: Path, out: Path) -> int:
    return cli_main(["figures", "--figures", str(root), "fz", "--out", str(out)])


@pytest.mark.parametrize("name", ESCAPES)
def test_a_curves_file_that_escapes_the_output_folder_is_refused_before_drawing(box, name, capsys):
    work, _ = box
    path = _write(work / "figs" / "fz", _results(kinds=["table", "curves"],
                                                  curves=[{"file": name, "panels": [{"x": "epoch", "y": "test_loss"}]}]))
    out = work / "res"
    with pytest.raises(SharpnessError) as e:
        draw(path, out)
    _one_line(e.value)
    assert not out.exists()  # refused before the table (the first kind) was written
    assert _figures_cli(work / "figs", out) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE)
@given(data=st.data())
def test_generated_escaping_names_never_write_outside(box, data):
    work, outside = box
    name = data.draw(_escapes(outside))
    path = _write(work / "figs" / "fz", _results(kinds=["curves"],
                                                  curves=[{"file": name, "panels": [{"x": "epoch", "y": "test_loss"}]}]))
    with pytest.raises(SharpnessError) as e:
        draw(path, work / "res")
    _one_line(e.value)
    assert not (work / "res").exists()


def _draws_inside_or_refuses(work: Path, res: dict) -> None:
    """Draw ``res``: every figure lands in ``work/res``, or the results are refused in one line."""
    path = _write(work / "figs" / "fz", res)
    try:
        made = draw(path, work / "res")
    except SharpnessError as e:
        _one_line(e)
        return
    for f in made:
        assert f.resolve().parent == (work / "res").resolve()


def test_pair_labels_that_look_like_paths_stay_in_the_folder(box):
    work, _ = box
    res = _results(kinds=["parametric"])
    arr = {"alphas": [0.0, 0.5, 1.0], "train_loss": [1.0, 2.0, 1.0], "test_loss": [1.1, 2.1, 1.2]}
    res["pairs"] = {"../../outside/a→/etc/b (sin)": arr}
    _draws_inside_or_refuses(work, res)


def test_a_symlink_at_an_output_figure_is_replaced_not_written_through(box):
    work, outside = box
    path = _write(work / "figs" / "fz", _results(kinds=["table"]))
    out = work / "res"
    out.mkdir()
    (out / "table.md").symlink_to(outside / "keep.txt")
    draw(path, out)
    assert not (out / "table.md").is_symlink() and "| run |" in (out / "table.md").read_text()


# --------------------------------------------------------------------------------------------------------
# results.json of the wrong shape, FIFOs, out-of-range options, control characters
# --------------------------------------------------------------------------------------------------------

# a field of results.json and the wrong value placed there
_FIG_SLOTS = {
    "spec.figures": lambda r, v: r["spec"].__setitem__("figures", v),
    "kinds": lambda r, v: r["spec"]["figures"].__setitem__("kinds", v),
    "kinds[0]": lambda r, v: r["spec"]["figures"].__setitem__("kinds", [v]),
    "curves": lambda r, v: r["spec"]["figures"].update(kinds=["curves"], curves=v),
    "curves[0]": lambda r, v: r["spec"]["figures"].update(kinds=["curves"], curves=[v]),
    "panels": lambda r, v: r["spec"]["figures"].update(kinds=["curves"], curves=[{"file": "c.png", "panels": v}]),
    "panel": lambda r, v: r["spec"]["figures"].update(kinds=["curves"], curves=[{"file": "c.png", "panels": [v]}]),
    "panel.y": lambda r, v: r["spec"]["figures"].update(kinds=["curves"],
                                                        curves=[{"file": "c.png", "panels": [{"x": "epoch", "y": v}]}]),
    "panel.ylim": lambda r, v: r["spec"]["figures"].update(
        kinds=["curves"], curves=[{"file": "c.png", "panels": [{"x": "epoch", "y": "test_loss", "ylim": v}]}]),
    "curves.file": lambda r, v: r["spec"]["figures"].update(kinds=["curves"], curves=[{"file": v, "panels": [
        {"x": "epoch", "y": "test_loss"}]}]),
    "gap_scatter": lambda r, v: r["spec"]["figures"].update(kinds=["gap_scatter"], gap_scatter=v),
    "gap_scatter.best": lambda r, v: r["spec"]["figures"].update(kinds=["gap_scatter"], gap_scatter={"best": v}),
    "cost.target": lambda r, v: r["spec"]["figures"].update(kinds=["cost"], cost={"target": v}),
    "correlation.n_boot": lambda r, v: r["spec"]["figures"].update(kinds=["correlation"], correlation={"n_boot": v}),
    "esd.title": lambda r, v: r["spec"]["figures"].update(kinds=["esd"], esd={"title": v}),
    "runs": lambda r, v: r.__setitem__("runs", v),
    "a run": lambda r, v: r["runs"].__setitem__("A-seed0", v),
    "history": lambda r, v: r["runs"]["A-seed0"].__setitem__("history", v),
    "final": lambda r, v: r["runs"]["A-seed0"].__setitem__("final", v),
    "variants": lambda r, v: r["spec"].__setitem__("variants", v),
}
# values that are wrong in every slot above
_ALWAYS_WRONG = [[[1]], {"a": 5}, -7, -1.5, [None, True]]
OUT_OF_RANGE = [("gap_scatter.best", -1), ("gap_scatter.best", 0), ("gap_scatter.best", True),
                ("gap_scatter.best", "3"), ("gap_scatter.best", 2.5), ("cost.target", -1), ("cost.target", 0),
                ("cost.target", "0.1"), ("correlation.n_boot", -5), ("correlation.n_boot", 0),
                ("correlation.n_boot", 10**9), ("panel.ylim", [0]), ("panel.ylim", [0, "x"])]


@pytest.mark.parametrize("slot", sorted(_FIG_SLOTS))
@pytest.mark.parametrize("value", _ALWAYS_WRONG, ids=lambda v: type(v).__name__)
def test_results_fields_of_the_wrong_type_are_one_line_before_drawing(box, slot, value, capsys):
    work, _ = box
    res = _results()
    _FIG_SLOTS[slot](res, value)
    path = _write(work / "figs" / "fz", res)
    with pytest.raises(SharpnessError) as e:
        draw(path, work / "res")
    _one_line(e.value)
    assert _figures_cli(work / "figs", work / "res") == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("slot,value", OUT_OF_RANGE)
def test_out_of_range_figure_options_are_refused_in_one_line(box, slot, value):
    work, _ = box
    res = _results()
    _FIG_SLOTS[slot](res, value)
    with pytest.raises(SharpnessError) as e:
        draw(_write(work / "figs" / "fz", res), work / "res")
    _one_line(e.value)
    assert not (work / "res").exists()
    with pytest.raises(SharpnessError):
        check_figures(res["spec"]["figures"])


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
@given(slot=st.sampled_from(sorted(_FIG_SLOTS)), value=_json_values())
def test_generated_values_in_results_draw_or_refuse_in_one_line(box, slot, value):
    work, _ = box
    res = _results()
    _FIG_SLOTS[slot](res, value)
    _draws_inside_or_refuses(work, res)


def test_deeply_nested_results_are_one_line(box):
    work, _ = box
    deep: object = 1
    for _ in range(5000):
        deep = [deep]
    path = work / "figs" / "fz" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"name": "fz", "spec": {}, "runs": {}, "x": 0})[:-1] + ', "d": '
                    + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SharpnessError) as e:
        draw(path, work / "res")
    _one_line(e.value)


@pytest.mark.parametrize("command", ["figures", "correlate"])
def test_a_fifo_at_results_json_is_refused_at_once(box, command, capsys):
    work, _ = box
    folder = work / "figs" / "fz"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "results.json")
    argv = (["figures", "--figures", str(work / "figs"), "fz", "--out", str(work / "res")] if command == "figures"
            else ["correlate", str(folder / "results.json"), "--out", str(work / "res")])
    assert _in_thread(lambda: cli_main(argv), unblock=folder / "results.json") == 2
    err = capsys.readouterr().err
    assert "FIFO" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SharpnessError):
        _in_thread(lambda: draw(folder / "results.json", work / "res"), unblock=folder / "results.json")


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURE)
@given(evil=st.text(alphabet=st.sampled_from(list(CONTROL) + list("ab-")), min_size=1, max_size=6)
       .filter(lambda s: any(c in CONTROL for c in s)))
def test_control_characters_from_results_never_reach_tables_or_figures(box, evil):
    from sharpness.plots.style import figure_options

    work, _ = box
    res = _results(kinds=["table", "curves"], curves=[{"file": "c.svg", "title": f"T{evil}",
                                                       "panels": [{"x": "epoch", "y": "test_loss"}]}])
    res["runs"] = {f"{evil}{lb}": r for lb, r in res["runs"].items()}
    out = work / "res"
    with figure_options(formats="svg"):
        made = draw(_write(work / "figs" / "fz", res), out)
    for f in made:
        text = f.read_bytes().decode("utf-8")
        bad = {c for c in text if c in CONTROL and c not in "\n\t\r"}
        assert not bad, (f.name, bad)
        if f.suffix == ".md":
            assert "\x1b" not in text and all("\r" not in line for line in text.splitlines())


def test_report_table_escapes_labels_and_errors(box):
    work, _ = box
    out = work / "an"
    report = _base_report(out)
    out.mkdir(exist_ok=True)
    report["checkpoints"]["model"]["measures"]["loss"] = {"status": "failed", "error": "boom\x1b[2J ALL OK\nforged"}
    (out / "report.json").write_text(json.dumps(report))
    rep = _analyze(out, measures=["loss"], force=False)
    text = rep.table()
    assert "\x1b" not in text and not any(c in CONTROL for c in text.replace("\n", ""))


# --------------------------------------------------------------------------------------------------------
# measures given as a string; NaN / Inf data
# --------------------------------------------------------------------------------------------------------


def test_measures_as_one_string_is_one_name(box):
    work, _ = box
    rep = _analyze(work / "an", measures="loss")
    assert list(rep.data["checkpoints"]["model"]["measures"]) == ["loss"]


@pytest.mark.parametrize("bad", [5, [["loss"]], [None], {"loss": 1}, ["loss", 3], "l\x1bss", ""])
def test_measures_of_the_wrong_kind_are_one_line(box, bad):
    work, _ = box
    with pytest.raises(SharpnessError) as e:
        _analyze(work / "an", measures=bad)
    _one_line(e.value)
    assert not (work / "an").exists()


def _poisoned(where: str, value: float, index: int, regression: bool):
    x, y = _data(16, 0)
    y = y.float()[:, None] if regression else y
    x, y = x.clone(), y.clone()
    if where == "inputs":
        x.view(-1)[index % x.numel()] = value
    else:
        y.view(-1)[index % y.numel()] = value
    return x, y


@pytest.mark.parametrize("where", ["inputs", "targets"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_data_are_bad_data_before_any_measure(box, where, value):
    work, _ = box
    x, y = _poisoned(where, value, 37, regression=True)
    net = nn.Sequential(nn.Linear(4, 1))
    with pytest.raises(SharpnessError) as e:
        _analyze(work / "an", model=net, data=((x, y), TEST), loss="mse")
    msg = _one_line(e.value)
    assert "NaN or Inf" in msg and where in msg and "learning rate" not in msg
    assert not (work / "an").exists()


@settings(max_examples=20, deadline=None, suppress_health_check=FIXTURE)
@given(where=st.sampled_from(["inputs", "targets"]), value=st.sampled_from([math.nan, math.inf, -math.inf]),
       index=st.integers(0, 10**6), test_set=st.booleans(), batched=st.booleans())
def test_generated_nan_positions_are_found(box, where, value, index, test_set, batched):
    work, _ = box
    bad = _poisoned(where, value, index, regression=True)
    good = (TRAIN[0], TRAIN[1].float()[:, None])
    if batched:  # a list of batches: the message names the batch too
        bad = [(bad[0][:8], bad[1][:8]), (bad[0][8:], bad[1][8:])]
        good = [good]
    data = (good, bad) if test_set else (bad, good)
    with pytest.raises(SharpnessError) as e:
        _analyze(work / "an", model=nn.Sequential(nn.Linear(4, 1)), data=data, loss="mse")
    msg = _one_line(e.value)
    assert "NaN or Inf" in msg and where in msg and ("test" if test_set else "training") in msg


class _Lazy(Dataset):
    """A Dataset read example by example (not in memory): the two-example probe sees its NaN."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        x = torch.ones(4)
        if i == 1:
            x[2] = float("nan")
        return x, torch.tensor(i % 2)


def test_nan_in_a_dataset_read_lazily_is_found_by_the_probe(box):
    work, _ = box
    with pytest.raises(SharpnessError) as e:
        _analyze(work / "an", data=(_Lazy(), None))
    assert "NaN or Inf" in _one_line(e.value)
    assert not (work / "an").exists()
