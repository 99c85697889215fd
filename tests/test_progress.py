"""Progress: bars on a terminal, log lines in a log file, nothing when off; named by the active task."""

import io

import pytest

import sharpness.progress as progress
from sharpness.progress import LogBar, progress_bar, task


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(progress, "_clock", c)
    return c


def test_log_lines_every_interval_with_the_task_count_and_eta(clock):
    log = io.StringIO()  # a file: not a terminal
    with task("eigenvalues"):
        bar = progress_bar(True, total=100, desc="lanczos", unit="hvp", file=log)
    assert isinstance(bar, LogBar)
    for _ in range(25):
        clock.t += 1.0
        bar.update(4)
    bar.close()
    bar.close()  # once
    lines = log.getvalue().splitlines()
    assert lines[0] == "eigenvalues: lanczos 40/100 hvp (40%), 0:00:10 elapsed, ETA 0:00:15"
    assert len(lines) == 3 and lines[1].startswith("eigenvalues: lanczos 80/100 hvp (80%), 0:00:20 elapsed")
    assert lines[-1] == "eigenvalues: lanczos done: 100 hvp in 0:00:25"


def test_the_interval_argument_and_nested_tasks(clock):
    log = io.StringIO()
    with task("final"), task("landscape2d"):
        bar = progress_bar(True, total=4, desc="surface", unit="pt", interval=0.5, file=log)
    with task("other"):  # the task is read when the bar opens
        for _ in range(4):
            clock.t += 0.5
            bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 5 and all(line.startswith("final: landscape2d: surface ") for line in lines)
    with task("trace"):
        assert progress_bar(True, total=1, file=log).desc == "trace"  # no desc of its own: the task's name
    assert progress_bar(True, total=1, file=log, desc="x").desc == "x"  # outside any task


def test_iterating_a_log_bar_closes_it(clock):
    log = io.StringIO()
    seen = []
    for i in progress_bar(True, range(3), desc="epochs", file=log, interval=0):
        clock.t += 1
        seen.append(i)
    assert seen == [0, 1, 2]
    assert log.getvalue().splitlines()[-1] == "epochs done: 3 it in 0:00:03"


def test_none_is_quiet_off_a_terminal_and_false_is_always_quiet(capsys, clock):
    for setting in (None, False):
        bar = progress_bar(setting, total=10, desc="quiet")
        bar.update(10)
        bar.close()
        assert bar.disable
    bar = progress_bar(False, total=10, desc="quiet", file=_Terminal())
    bar.update(3)
    bar.close()
    assert capsys.readouterr() == ("", "")


def test_a_terminal_bar_closed_early_ends_finished(clock):
    term = _Terminal()
    with task("eigenvalues"):
        bar = progress_bar(None, total=200, desc="lanczos", unit="hvp", file=term)
    assert not isinstance(bar, LogBar) and not bar.disable  # a tqdm bar on a terminal
    bar.update(37)  # converged early
    bar.close()
    assert bar.total == 37
    last = term.getvalue().split("\r")[-1]
    assert "eigenvalues: lanczos" in last and "37/37" in last and "100%" in last


def test_a_real_lanczos_run_in_a_log_names_the_measure_and_finishes(capsys, clock):
    import torch

    from sharpness.curvature import hessian_eigenvalues

    with task("eigenvalues"):
        hessian_eigenvalues(torch.diag(torch.arange(1.0, 41.0)).double(), k=2, progress=True)
    err = capsys.readouterr().err  # captured: not a terminal
    assert err.count("\n") == 1 and err.startswith("eigenvalues: lanczos done: ") and " hvp in " in err, err
    hessian_eigenvalues(torch.eye(5).double(), k=1)  # the library's default: quiet off a terminal
    assert capsys.readouterr() == ("", "")
