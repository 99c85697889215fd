"""Atomic file writes and small serialization helpers shared by every stage that writes results."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

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
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
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
