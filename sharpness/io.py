"""The one way the toolkit touches files: atomic writes, regular-file reads, locks, names confined to a folder.

- Every file written (results, reports, checkpoints, markers such as ``done``) goes through
  :func:`atomic_write`: a temporary file in the same folder renamed onto the path, so a crash never leaves
  half a file and a symlink placed at the path is replaced, never written through.
- Every file read that a user or a stranger may have placed (``report.json``, ``results.json``, TOML,
  JSON) goes through :func:`read_bytes` / :func:`read_text`: only a regular file is opened, without
  blocking (a FIFO or a device would hang a reader forever), within a size cap.
- A lock (:func:`locked`) is opened without following a symlink and without blocking.
- A name read from a file that becomes part of an output path (a figure file, a run folder, a label)
  passes :func:`confined` first: one path component, inside the folder the user named.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import SharpnessError

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask, read without changing it for good.

    Linux shows it in ``/proc/self/status``; elsewhere it is set and restored at once, under a lock so
    that two threads of this module never see each other's temporary value.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        old = os.umask(0o077)  # the most restrictive value for the instant it is in force
        os.umask(old)
    return old


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: itself, or one it was raised from or during (torch.save wraps it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _why(path: Path, e: OSError) -> str:
    """Why ``path`` cannot be written, on one line: the system's words, and which ancestor is a file."""
    why = e.strerror or " ".join(str(e).split()) or type(e).__name__
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        for parent in path.parents:
            if parent.exists() or parent.is_symlink():
                if not parent.is_dir():
                    return f"Not a directory ('{parent}' is a file, not a folder)"
                break
    return why


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the temporary file onto ``path``.

    A crash or Ctrl-C never leaves a half-written ``path``: either the old file or the new one exists,
    and the temporary file is removed whatever happens. The file gets the permissions of a file the user
    creates (``0o666`` less the umask), not the ``0o600`` of a temporary file.

    Raises:
        SharpnessError: the file cannot be written (``"<path>: cannot write: <reason>"``): a full disk,
            a read-only folder, a folder on the way that is a file, ... (``write``'s own failure when an
            OSError lies behind it, e.g. under torch.save's RuntimeError). Other errors of ``write`` pass
            through unchanged.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as e:
        cause = _os_error(e)
        if cause is None or isinstance(e, SharpnessError):
            raise
        raise SharpnessError(f"{path}: cannot write: {_why(path, cause)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    return path


def make_folder(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents) if missing; one line naming it when it cannot be.

    Raises:
        SharpnessError: ``"<path>: cannot write: <reason>"`` (as :func:`atomic_write`: a file on the way, a
            read-only parent, a name too long).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SharpnessError(f"{path}: cannot write: {_why(path, e)}") from None
    if not path.is_dir():
        raise SharpnessError(f"{path}: cannot write: not a folder")
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`); for markers and small files."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


# The temporary files atomic_write makes: ".<name>.<8 random characters>.tmp" (tempfile.mkstemp's names).
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporary files an interrupted :func:`atomic_write` left in ``folder`` (a SIGKILL mid-write).

    Only regular files named as the writer names its temporaries (``.<name>.<random>.tmp``) directly in
    ``folder`` are removed; a symlink (never made by the writer) is left alone, and nothing is followed.
    Call it only while no other writer works in ``folder`` (under its lock). Returns the removed paths; a
    missing folder or a file that cannot be removed is passed over.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if _TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


MAX_READ = 1 << 30  # bytes: a results or report file larger than this is not one the toolkit wrote


def read_bytes(path: str | Path, what: str = "file", limit: int = MAX_READ) -> bytes:
    """The bytes of a regular file; anything else (a FIFO, a device, a folder) is refused at once.

    Opened with ``O_NONBLOCK``, so a FIFO placed at ``path`` cannot hang the read; a symlink to a regular
    file is read like the file.

    Raises:
        FileNotFoundError: there is no ``path`` (callers say what that means for them).
        SharpnessError: not a regular file, larger than ``limit`` bytes, or unreadable (one line).
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise SharpnessError(f"{path}: is a folder, not a {what}") from None
    except OSError as e:
        raise SharpnessError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
                "a device or socket"
            raise SharpnessError(f"{path}: is {kind}, not a regular {what}")
        if info.st_size > limit:
            raise SharpnessError(f"{path}: {info.st_size} bytes, more than a {what} can hold ({limit})")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise SharpnessError(f"{path}: more than a {what} can hold ({limit} bytes)")
        return data
    except OSError as e:
        raise SharpnessError(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str = "file", limit: int = MAX_READ) -> str:
    """A regular UTF-8 text file (see :func:`read_bytes`); not UTF-8 is one line naming the file."""
    try:
        return read_bytes(path, what, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise SharpnessError(f"{path}: not a {what} (not UTF-8 text)") from None


@contextlib.contextmanager
def locked(path: str | Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block; held elsewhere: ``busy``.

    The lock file is opened without following a symlink (a link placed there never creates its target)
    and without blocking (a FIFO there is refused, not waited on); anything but a regular file is refused.

    Raises:
        SharpnessError: ``busy`` when another process holds the lock; one line when ``path`` is not a
            regular file or cannot be opened.
    """
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666 & ~_umask())
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SharpnessError(f"{path}: is a symlink; remove it (a lock is never taken through a link)") from None
        raise SharpnessError(f"{path}: cannot open the lock ({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SharpnessError(f"{path}: is not a regular file; remove it (it is where the lock lives)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SharpnessError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def confined(folder: str | Path, name: Any, what: str) -> Path:
    """``folder / name`` for a ``name`` read from a file: one plain path component, so it stays in ``folder``.

    Refused in one line: a non-string, an empty name, ``.`` or ``..``, a separator (a slash or a
    backslash), a NUL or other control character, or more than 255 bytes.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
            or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8", "replace")) > 255:
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise SharpnessError(f"{what} must be a plain file or folder name, one path component without '..', "
                             f"'/' or control characters (got {shown})")
    folder = Path(folder)
    return folder / name


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths into plain JSON types (recursively)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def _finite_or_none(obj: Any) -> Any:
    """NaN and ±inf (which strict JSON cannot hold) → None, recursively through dicts and lists."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON, atomically.

    numpy and torch scalars and arrays, tuples and paths are converted first (:func:`to_jsonable`).
    Non-finite floats (NaN, inf, -inf: a diverged loss, an undefined ratio) become ``null``, so that
    every JSON reader accepts the file; a reader sees ``None`` where the value was not finite.

    Raises:
        SharpnessError: the file cannot be written (see :func:`atomic_write`).
    """
    text = json.dumps(_finite_or_none(to_jsonable(obj)), indent=2, sort_keys=False, allow_nan=False)
    return atomic_write(path, lambda p: p.write_text(text + "\n"))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write arrays to an NPZ file, atomically.

    Raises:
        SharpnessError: the file cannot be written (see :func:`atomic_write`).
    """

    def _write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, **arrays)

    return atomic_write(path, _write)


def read_toml(path: str | Path, what: str = "TOML file") -> dict:
    """A UTF-8 TOML file as a dict; every way it can fail is one line naming the file.

    Raises:
        SharpnessError: missing, a folder, unreadable, not UTF-8, or not valid TOML.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(read_text(path, "TOML file"))  # a regular file: a FIFO or /dev/zero refused at once
    except FileNotFoundError:
        raise SharpnessError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise SharpnessError(f"{path}: is a folder, not a {what}") from None
    except UnicodeDecodeError:
        raise SharpnessError(f"{path}: not a TOML file (not UTF-8 text)") from None
    except OSError as e:
        raise SharpnessError(f"{path}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise SharpnessError(f"{path}: not valid TOML: {' '.join(str(e).split())}") from None
