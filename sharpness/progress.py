"""Progress that can be turned off, and that reads well in a log file.

``progress`` (the argument of every long-running function):

- ``None`` (the library's default): a bar on a terminal (or in a notebook) only; nothing otherwise.
- ``True``: always shown — a bar on a terminal or in a notebook; where stderr is not a terminal (nohup,
  a SLURM log, a pipe) a **log line** every :data:`INTERVAL` seconds instead
  (``eigenvalues: lanczos 40/200 hvp (20%), 0:00:12 elapsed, ETA 0:00:48``) and one when it is done.
  The CLIs (``train``, ``analyze``, ``run``) pass True unless ``--no-progress``.
- ``False``: nothing.

Bars name what they measure: inside ``with task("eigenvalues"):`` every bar's description starts with
``eigenvalues:`` (tasks nest: ``final: eigenvalues: lanczos``). A bar closed before its total (Lanczos
converged early) is finished at the count it reached, so no half-drawn bar is left behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import sys
import time
from typing import Iterable, Iterator

from tqdm import autonotebook as _autonotebook  # imported by tqdm.auto, quietly
from tqdm import std as _std
from tqdm.auto import tqdm as _auto

__all__ = ["progress_bar", "task", "INTERVAL"]

INTERVAL = 10.0  # seconds between two log lines of one bar

_tasks: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("sharpness_progress_tasks", default=())
_clock = time.monotonic  # replaced by tests


@contextlib.contextmanager
def task(name: str) -> Iterator[None]:
    """Within the block, every progress bar's description starts with ``name`` (e.g. a measure's name)."""
    token = _tasks.set((*_tasks.get(), str(name)))
    try:
        yield
    finally:
        _tasks.reset(token)


def _desc(desc: str | None) -> str:
    return ": ".join([*_tasks.get(), *([desc] if desc else [])])


def _terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


def _notebook() -> bool:
    """True when tqdm.auto draws notebook widgets (an IPython kernel), whose bars need no terminal."""
    return _autonotebook.tqdm is not _std.tqdm


class _Bar(_auto):
    """A tqdm bar that, closed before its total, ends at the count it reached (no half-drawn bar)."""

    def close(self):
        if not self.disable and self.total is not None and self.n < self.total:
            self.total = self.n
        super().close()


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class LogBar:
    """The subset of tqdm's API the toolkit uses, written as a log line every ``interval`` seconds.

    Each line says what is measured, done/total, the elapsed time and the ETA; :meth:`close` writes a last
    line (``... done: 200 hvp in 0:01:05``).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", initial: float = 0, interval: float | None = None, file=None, **_ignored):
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total, self.n, self.initial, self.unit = total, initial, initial, unit
        self.desc = desc or ""
        self.interval = INTERVAL if interval is None else float(interval)
        self.file = file
        self.postfix = ""
        self.start = self.last = _clock()
        self.closed = False
        self.disable = False

    def _write(self, text: str) -> None:
        stream = self.file if self.file is not None else sys.stderr
        print(text, file=stream, flush=True)

    def _line(self) -> str:
        now = _clock()
        elapsed = now - self.start
        count = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {_hms((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc or 'progress'} {count} {self.unit}{pct}, {_hms(elapsed)} elapsed{eta}{post}"

    def update(self, n: float = 1) -> None:
        """Count ``n`` more; a log line when ``interval`` seconds have passed since the last one."""
        self.n += n
        now = _clock()
        if now - self.last >= self.interval:
            self.last = now
            self._write(self._line())

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        """Extra ``key=value`` items at the end of the following lines."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Rename the bar."""
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw in a log."""

    def close(self) -> None:
        """Write the last line (once)."""
        if self.closed:
            return
        self.closed = True
        post = f", {self.postfix}" if self.postfix else ""
        self._write(f"{self.desc or 'progress'} done: {self.n:g} {self.unit} in {_hms(_clock() - self.start)}{post}")

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(progress: bool | None, iterable: Iterable | None = None, *, interval: float | None = None,
                 **kwargs):
    """A progress bar over ``iterable`` (or updated by hand) named by the active :func:`task`.

    Args:
        progress: True: always (a bar on a terminal or in a notebook, else log lines); None: on a
            terminal only; False: never.
        iterable: what to iterate over (optional).
        interval: seconds between log lines (default :data:`INTERVAL`).
        **kwargs: tqdm's (``total``, ``desc``, ``unit``, ``initial``, ``leave``, ``file``, ...).

    Returns:
        A tqdm bar, or a :class:`LogBar` with the same ``update``/``close``/``set_postfix`` API.
    """
    kwargs["desc"] = _desc(kwargs.get("desc"))
    if progress is False:
        return _Bar(iterable, disable=True, **kwargs)
    stream = kwargs.get("file") or sys.stderr
    if _terminal(stream) or _notebook():
        return _Bar(iterable, disable=False, **kwargs)
    if progress is None:  # the library's default: quiet where no terminal shows it
        return _Bar(iterable, disable=True, **kwargs)
    return LogBar(iterable, interval=interval, **kwargs)
