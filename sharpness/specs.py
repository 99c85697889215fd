"""Specs and registries: how a checkpoint names its model, data and loss, and what such a name may run.

A :class:`Spec` is a name and keyword arguments. The name is either registered in a :class:`Registry`
(the toolkit's own models, data sets and losses, and any added with ``register_*``) or
``"pkg.module:attr"``: a function or class importable from ``sys.path`` (never a file path).

Import policy: nothing a checkpoint contains or points at may run code the user did not write.

- A name the user typed (a CLI flag, a library argument) is *trusted*: it is imported as given.
- A name read from a checkpoint file is *untrusted*. Its ``"pkg.module:attr"`` is resolved only when
  the module's file, found with :func:`importlib.util.find_spec` before anything is imported, lies
  outside the standard library, every site-packages folder and this toolkit (so it is the user's own
  code: next to their script, on ``PYTHONPATH``, an editable install), and the attribute is a function
  or class defined in that module, not one it imported. So ``os:system``, ``subprocess:run`` or
  ``torch.hub:load`` named by a checkpoint are refused, with a message saying how to pass the name
  explicitly.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import re
import site
import sysconfig
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import SharpnessError

__all__ = ["Spec", "Registry", "as_spec", "check_args", "check_int", "check_number"]

# Dotted Python identifiers only: a name that looks like a file path is never imported.
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_TOOLKIT_DIR = os.path.dirname(os.path.realpath(__file__))


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (for error messages)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        if not trusted:
            self._check_origin(name, module)
        try:
            obj = functools.reduce(getattr, attr.split("."), self._import(name, module))
        except AttributeError:
            raise SharpnessError(f"module '{module}' has no '{attr}' (for {self.kind} '{name}')") from None
        if not trusted and not ((inspect.isfunction(obj) or inspect.isclass(obj))
                                and getattr(obj, "__module__", None) == module):
            raise self._refused(name, f"'{attr}' is not a function or class defined in '{module}'")
        if not callable(obj):
            raise SharpnessError(f"{self.kind} '{name}' is a {type(obj).__name__}, not a function or class")
        return obj

    def _check_origin(self, name: str, module: str) -> None:
        # Each package on the way is judged before find_spec of the next part imports it.
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            try:
                spec = importlib.util.find_spec(".".join(parts[:i]))
            except (ImportError, ValueError) as e:
                raise self._unimportable(name, module, e) from None
            if spec is None:
                raise self._unimportable(name, module, f"no module named '{'.'.join(parts[:i])}'")
            reason = _foreign(spec)
            if reason:
                raise self._refused(name, f"'{spec.name}' is {reason}")

    def _import(self, name: str, module: str) -> Any:
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

    def _refused(self, name: str, why: str) -> SharpnessError:
        return SharpnessError(f"refused: {self.kind} '{name}' named by a checkpoint may only be your own code, "
                              f"and {why}; if you trust it, pass it explicitly "
                              f"(--{self.option} {name} / {self.option}='{name}')")


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
