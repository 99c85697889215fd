"""Specs and registries: how a checkpoint names its model, data and loss, and what such a name may run.

A :class:`Spec` is a name and keyword arguments. The name is either registered in a :class:`Registry`
(the toolkit's own models, data sets and losses, and any added with ``register_*``) or
``"pkg.module:attr"``: a function or class importable from ``sys.path`` (never a file path).

Import policy: nothing a checkpoint, a results file or any other file contains may make the toolkit
import code on its own say-so.

- A name the user typed (a CLI flag such as ``--model``/``--data``/``--loss`` or ``--set``, a library
  argument such as ``model=``/``data=``/``loss=``, a :class:`TrainConfig` built in their code) is
  *trusted*: imported as given.
- A name read from a file (a checkpoint's specs, a results file, a training or experiment TOML) is
  *untrusted*. Its ``"pkg.module:attr"``
  is resolved only when

  (a) the user opted in: ``--trust-code`` on the command line, ``SHARPNESS_TRUST_CODE=1`` in the
      environment (or a comma-separated list of the modules to trust, ``SHARPNESS_TRUST_CODE=mynets,mypkg``),
      or :func:`trust_code` around the library call (``trusted=True`` arguments enter it); the name is then
      handled as if typed; or
  (b) the module is already imported in this process by the user's own code (their script imported it,
      ``--plugin`` did, or the same command imported it for a name the user typed), its file lies outside
      the standard library, every site-packages folder and this toolkit, and the attribute is a function
      or class defined in that module, not one it imported.

  Nothing else is imported: not a module beside the checkpoint or in the current folder (a
  ``cleanup.py`` in a downloaded folder never runs because a checkpoint names ``cleanup:x``), not an
  installed package (``torch.hub:load``), not the standard library (``os:system``). The refusal is one
  line saying how to allow it (``--model NAME`` or ``--trust-code``). Judging a name imports nothing
  (:meth:`Registry.describe` is what ``info`` shows).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import os
import re
import site
import sys
import sysconfig
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from .errors import SharpnessError, printable
from .errors import short as _short

__all__ = ["Spec", "Registry", "as_spec", "check_args", "check_int", "check_number", "trust_code", "code_trusted"]

# Dotted Python identifiers only: a name that looks like a file path is never imported.
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_TOOLKIT_DIR = os.path.dirname(os.path.realpath(__file__))


# The opt-in of rule (a): every ``trust_code`` block in force (True: all; a set: those modules).
_TRUST: list = []
_TRUST_LOCK = threading.Lock()
TRUST_ENV = "SHARPNESS_TRUST_CODE"


@contextlib.contextmanager
def trust_code(which: bool | str | Iterable[str] = True) -> Iterator[None]:
    """Within the block, names read from files are imported as if the user had typed them.

    ``which``: True (every name), False (nothing more: a no-op, so ``with trust_code(flag):`` reads well),
    a module name or a list of them (those modules and their submodules). ``--trust-code`` enters it
    for the whole command.
    """
    if which is False or which is None:
        yield
        return
    entry = True if which is True else frozenset([which] if isinstance(which, str) else which)
    with _TRUST_LOCK:
        _TRUST.append(entry)
    try:
        yield
    finally:
        with _TRUST_LOCK:
            _TRUST.remove(entry)


def _env_trust() -> bool | frozenset:
    value = os.environ.get(TRUST_ENV, "").strip()
    if value.lower() in ("", "0", "no", "false", "off"):
        return False
    if value.lower() in ("1", "yes", "true", "on", "all"):
        return True
    return frozenset(v.strip() for v in value.split(",") if v.strip())


def code_trusted(module: str | None = None) -> bool:
    """Whether the user opted in to importing ``module`` (any module: None) named by a file (rule (a))."""
    with _TRUST_LOCK:
        entries = [*_TRUST, _env_trust()]
    for e in entries:
        if e is True:
            return True
        if e and module is not None and any(module == m or module.startswith(m + ".") for m in e):
            return True
    return False


@dataclass(frozen=True)
class Spec:
    """A model, data set or loss by name and keyword arguments, as stored in checkpoints.

    Attributes:
        name: a registered name or ``"pkg.module:attr"``.
        args: keyword arguments for the function the name resolves to (string keys).
    """

    name: str
    args: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise SharpnessError(f"spec 'name' must be a non-empty string (got {_short(self.name)})")
        if not isinstance(self.args, dict) or not all(isinstance(k, str) for k in self.args):
            raise SharpnessError(f"spec 'args' of '{self.name}' must be a dict with string keys "
                                 f"(got {_short(self.args)})")
        # A copy, so that changing the caller's dict later cannot change a frozen spec.
        object.__setattr__(self, "args", dict(self.args))

    def to_dict(self) -> dict:
        """Plain-dict form, as stored in checkpoints and reports."""
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, d: Any) -> Spec:
        """Inverse of :meth:`to_dict`; a missing or None ``args`` is ``{}``.

        Raises:
            SharpnessError: ``d`` is not a dict, or its name or args are malformed.
        """
        if not isinstance(d, dict) or "name" not in d:
            raise SharpnessError(f"spec must be a dict with 'name' and 'args' (got {_short(d)})")
        args = d.get("args")
        return cls(d["name"], {} if args is None else args)


def as_spec(value: Any, args: dict | None = None, kind: str = "spec") -> Spec:
    """A :class:`Spec` from a name, a dict or a Spec, with ``args`` laid over its own arguments.

    Raises:
        SharpnessError: ``value`` is none of those.
    """
    if isinstance(value, str):
        return Spec(value, dict(args or {}))
    if isinstance(value, dict):
        value = Spec.from_dict(value)
    if isinstance(value, Spec):
        return Spec(value.name, {**value.args, **(args or {})}) if args else value
    raise SharpnessError(f"{kind} must be a name, 'pkg.module:attr', a dict or a Spec (got {_short(value)})")


def _system_dirs() -> list[tuple[str, str]]:
    """(folder, what it is) of the standard library and every site-packages: not the user's own code."""
    paths = sysconfig.get_paths()
    packages = [paths.get("purelib"), paths.get("platlib"), site.getusersitepackages()]
    packages += site.getsitepackages() if hasattr(site, "getsitepackages") else []  # absent in old virtualenvs
    # site-packages lies inside the standard library's folder: test it first, for the right message.
    dirs = [(d, "an installed package") for d in packages] + \
        [(paths.get(k), "the standard library") for k in ("stdlib", "platstdlib")]
    return [(os.path.realpath(d), what) for d, what in dirs if d]


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives (Windows)
        return False


def _foreign_module(mod: Any) -> str | None:
    """:func:`_foreign` of a loaded module, from its ``__spec__`` (or its ``__file__``): imports nothing."""
    spec = getattr(mod, "__spec__", None)
    if spec is None:  # a script run as __main__, a module made by hand
        file = getattr(mod, "__file__", None)
        if not isinstance(file, str):
            return "a module without a file"
        spec = importlib.util.spec_from_file_location(getattr(mod, "__name__", "module"), file)
        if spec is None:
            return "a module without a file"
    return _foreign(spec)


def _foreign(spec: importlib.machinery.ModuleSpec) -> str | None:
    """Why a module is not the user's own code (None when it is), judged from where its files are."""
    if spec.origin and spec.has_location:
        files = [spec.origin]
    else:  # a namespace package has folders but no file; a built-in or frozen module has neither
        files = list(spec.submodule_search_locations or [])
    if not files:
        return "a module built into Python"
    for f in map(os.path.realpath, files):
        if _inside(f, _TOOLKIT_DIR):
            return "part of this toolkit (checkpoints name its models by registered name)"
        for d, what in _system_dirs():
            if _inside(f, d):
                return f"{what} (in {d})"
    return None


class Registry:
    """Functions by name (models, data sets, losses), and the import policy for ``"pkg.module:attr"``.

    Args:
        kind: what the functions make, for messages (``"model"``, ``"data set"``, ``"loss"``).
        option: the command-line flag and keyword that take such a name (default: the first word of
            ``kind``), for the message that says how to pass a refused name explicitly.
    """

    def __init__(self, kind: str, option: str | None = None):
        self.kind = kind
        self.option = option or kind.split()[0]
        self._fns: dict[str, Callable] = {}

    def register(self, name: str, fn: Callable | None = None) -> Callable:
        """Register ``fn`` under ``name`` (replacing any earlier one); without ``fn``, a decorator.

        Raises:
            SharpnessError: ``name`` is empty or holds ':' (reserved for ``"pkg.module:attr"``), or
                ``fn`` is not callable.
        """
        if not isinstance(name, str) or not name or ":" in name:
            raise SharpnessError(f"{self.kind} name must be a non-empty string without ':' (got {_short(name)})")
        if fn is None:
            return functools.partial(self.register, name)
        if not callable(fn):
            raise SharpnessError(f"{self.kind} '{name}' must be registered with a callable (got {_short(fn)})")
        self._fns[name] = fn
        return fn

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def resolve(self, name: str, *, trusted: bool) -> Callable:
        """The function a registered name or ``"pkg.module:attr"`` stands for.

        Args:
            name: a registered name or ``"pkg.module:attr"``.
            trusted: True when the user typed ``name``; False when it was read from a file (a
                checkpoint), which then may only name the user's own code (see the module docstring).

        Raises:
            SharpnessError: unknown name, malformed or unimportable module, missing attribute, or an
                untrusted name refused by the import policy.
        """
        if not isinstance(name, str):
            raise SharpnessError(f"{self.kind} name must be a string (got {_short(name)})")
        if name in self._fns:
            return self._fns[name]
        if ":" not in name:
            raise SharpnessError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}, "
                                 "or 'pkg.module:function'")
        module, attr = name.split(":", 1)
        if not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(attr):
            raise SharpnessError(f"{self.kind} '{name}' is not 'pkg.module:attr' (an importable module, "
                                 "never a file path)")
        if not trusted and code_trusted(module):  # the user opted in (--trust-code): as if typed
            trusted = True
        if not trusted:  # judged from what is loaded already: nothing is imported for a file's name
            why = self._untrusted_why(module)
            if why:
                raise self._refused(name, module, why)
            mod = sys.modules[module]
        else:
            mod = self._import(name, module)
        try:
            obj = functools.reduce(getattr, attr.split("."), mod)
        except AttributeError:
            raise SharpnessError(f"module '{module}' has no '{attr}' (for {self.kind} '{name}')") from None
        if not trusted and not ((inspect.isfunction(obj) or inspect.isclass(obj))
                                and getattr(obj, "__module__", None) == module):
            raise self._refused(name, module, f"'{attr}' is not a function or class defined in '{module}'")
        if not callable(obj):
            raise SharpnessError(f"{self.kind} '{name}' is a {type(obj).__name__}, not a function or class")
        return obj

    def screen(self, name: Any, where: str) -> None:
        """Refuse a ``"pkg.module:attr"`` read from the file ``where`` (a TOML) that the policy does not allow.

        For files whose names are used later, in another process (a training run): judged now, as
        :meth:`resolve` with ``trusted=False`` would, so the refusal comes before any work.

        Raises:
            SharpnessError: ``"<where>: refused: ..."`` (one line).
        """
        if isinstance(name, str) and ":" in name and name not in self._fns:
            try:
                self.resolve(name, trusted=False)
            except SharpnessError as e:
                raise SharpnessError(f"{printable(where, 200)}: {e}") from None

    def describe(self, name: Any) -> str:
        """What :meth:`resolve` would do with ``name`` read from a file, in words; imports nothing.

        For ``info``: ``"registered"``, ``"allowed: ..."`` or ``"not imported: ..."`` (escaped, one line).
        """
        if not isinstance(name, str):
            return f"not a name ({type(name).__name__})"
        if name in self._fns:
            return "registered"
        module, _, attr = name.partition(":")
        if not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(attr):
            return "not imported: not a registered name nor 'pkg.module:attr'"
        if code_trusted(module):
            return f"allowed: --trust-code / ${TRUST_ENV} (module '{module}' would be imported)"
        why = self._untrusted_why(module)
        if why:
            return f"not imported: {why}; to allow it: --{self.option} {printable(name, 200)} or --trust-code"
        return f"allowed: module '{module}' is already imported by your code"

    @staticmethod
    def _untrusted_why(module: str) -> str | None:
        """Why a module named by a file may not be used (None: it may): not loaded, or not the user's code."""
        if module not in sys.modules:
            return f"module '{module}' is not imported by your code"
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # each package on the way: all loaded, as the module is
            mod = sys.modules.get(".".join(parts[:i]))
            if mod is None:
                return f"package '{'.'.join(parts[:i])}' is not imported"
            reason = _foreign_module(mod)
            if reason:
                return f"'{'.'.join(parts[:i])}' is {reason}"
        return None

    def _import(self, name: str, module: str) -> Any:
        user_folder_on_path()
        try:
            return importlib.import_module(module)
        except ImportError as e:
            raise self._unimportable(name, module, e) from None
        except Exception as e:  # the module's own code failed: report it on one line
            first = (str(e).strip().splitlines() or [""])[0]
            raise SharpnessError(f"importing module '{module}' for {self.kind} '{name}' failed: "
                                 f"{type(e).__name__}: {first}") from None

    def _unimportable(self, name: str, module: str, why: Any) -> SharpnessError:
        why = " ".join(str(why).split())
        return SharpnessError(f"cannot import module '{module}' for {self.kind} '{name}' ({why}); run from the "
                              "folder that holds it or add that folder to PYTHONPATH")

    def _refused(self, name: str, module: str, why: str) -> SharpnessError:
        return SharpnessError(f"refused: {self.kind} '{name}' named by a file is not imported on the file's say-so "
                              f"({why}); if it is your code, pass it explicitly (--{self.option} {name} / "
                              f"{self.option}='{name}') or allow it with --trust-code (${TRUST_ENV}=1; library: "
                              "trusted=True)")


def user_folder_on_path() -> None:
    """Put the folder ``python -m`` started in back on sys.path, last, for code the user names.

    ``sharpness/__init__`` takes it off under ``-m`` (a module there must not shadow a library); a name
    the user typed (``--model mynets:make``, ``--plugin``) or allowed (``--trust-code``) is looked up there
    after the installed packages.
    """
    from . import _USER_FOLDER

    if _USER_FOLDER is not None and _USER_FOLDER not in sys.path:
        sys.path.append(_USER_FOLDER)


def check_args(fn: Callable, args: dict, what: str) -> None:
    """Refuse arguments ``fn`` does not take, before it is called, with the list of those it does.

    A function with ``**kwargs`` or without a readable signature takes anything (it judges for itself).

    Raises:
        SharpnessError: ``"bad arguments for <what>: unknown argument 'x'; accepted: a, b"``.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in args if k not in accepted]
    if unknown:
        raise SharpnessError(f"bad arguments for {what}: unknown argument{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(repr(k) for k in unknown)}; accepted: {', '.join(accepted) or 'none'}")


def check_int(what: str, key: str, value: Any, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """``value`` if it is an integer (not a bool) in [minimum, maximum], else a one-line SharpnessError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
            (maximum is not None and value > maximum):
        bound = f"≥ {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SharpnessError(f"{what}: {key} must be an integer {bound}{why} (got {_short(value)})")
    return value


def check_number(what: str, key: str, value: Any, low: float, high: float | None = None, *,
                 open_low: bool = False, open_high: bool = True) -> float:
    """``value`` if it is a finite int or float (not a bool) within the bounds, else a SharpnessError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")
    if ok:
        ok = (value > low if open_low else value >= low) and \
            (high is None or (value < high if open_high else value <= high))
    if not ok:
        left, right = "(" if open_low else "[", ")" if open_high or high is None else "]"
        bound = f"in {left}{low}, {'inf' if high is None else high}{right}"
        raise SharpnessError(f"{what}: {key} must be a number {bound} (got {_short(value)})")
    return float(value)
