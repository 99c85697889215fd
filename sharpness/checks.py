"""Allowed values, declared once and checked the same way everywhere (config fields, library arguments).

An :class:`Option` is a name, a type and its allowed values (bounds ``ge``/``gt``/``le``/``lt``,
``choices``, or a ``check`` = (predicate, description)); :meth:`Option.check` raises one
:class:`~sharpness.errors.SharpnessError` line naming the name, the value and what is allowed.
``TrainConfig`` declares one per field (``training/config.py``); library entry points call
:func:`require` on their arguments before any work.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any

from .errors import SharpnessError
from .specs import _short

__all__ = ["Option", "require"]

# (singular, plural) nouns of the field types, for messages such as "an integer ≥ 1"
_NOUNS = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"),
          str: ("a string", "strings"), bool: ("true or false", "booleans"),
          dict: ("a dict with string keys", "dicts"), list: ("a list", "lists")}
_BOUNDS = {"ge": ("≥", operator.ge), "gt": (">", operator.gt), "le": ("≤", operator.le), "lt": ("<", operator.lt)}


def _fits(value: Any, typ: type) -> bool:
    """Whether ``value`` is a ``typ``: bool is not an int, an int is a float, and numbers are finite."""
    if typ is float:  # numpy scalars count: np.float32(1e-3) is a number a user may pass
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if typ is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if typ is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, typ)


@dataclass(frozen=True)
class Option:
    """One field of :class:`TrainConfig` as the validator and the command line see it.

    Attributes:
        name: the field name.
        type: int, float, str, bool, list or dict (``X | None`` is X with ``optional``).
        optional: None is allowed.
        item: the element type of a list field (None: any).
        default: the default value.
        allowed: the declared bounds, choices or check (see ``_opt``).
        doc: the field's comment in the source, continuation lines included ("" if none).
    """

    name: str
    type: type
    optional: bool
    item: type | None
    default: Any
    allowed: dict
    doc: str

    def describe(self) -> str:
        """What the field accepts, e.g. ``"None or an integer ≥ 1"``."""
        a = self.allowed
        if "choices" in a:
            what = ("a list from " if self.type is list else "one of ") + ", ".join(map(str, a["choices"]))
        elif "check" in a:
            what = a["check"][1]
        elif self.type is list:
            what = "a list" + (f" of {_NOUNS[self.item][1]}" if self.item else "") + _bounds(a)
        else:
            what = _NOUNS[self.type][0] + _bounds(a)
        return f"None or {what}" if self.optional else what

    def check(self, value: Any) -> None:
        """Raise a one-line :class:`SharpnessError` unless ``value`` is allowed for this field."""
        if value is None and self.optional:
            return
        if self.type is list:
            ok = isinstance(value, list) and all(self._allows(v, self.item or object) for v in value)
        else:
            ok = self._allows(value, self.type)
        if not ok:
            raise SharpnessError(f"{self.name} must be {self.describe()} (got {_short(value)})")

    def _allows(self, value: Any, typ: type) -> bool:
        a = self.allowed
        return (_fits(value, typ) and ("choices" not in a or value in a["choices"])
                and ("check" not in a or a["check"][0](value))
                and all(op(value, a[k]) for k, (_, op) in _BOUNDS.items() if k in a))


def _bounds(allowed: dict) -> str:
    """The declared bounds as text: ``" in [0, 1)"``, ``" > 0"``, ``" ≥ 1"`` or ``""``."""
    lo = next((k for k in ("ge", "gt") if k in allowed), None)
    hi = next((k for k in ("le", "lt") if k in allowed), None)
    if lo and hi:
        return f" in {'[' if lo == 'ge' else '('}{allowed[lo]}, {allowed[hi]}{']' if hi == 'le' else ')'}"
    return "".join(f" {_BOUNDS[k][0]} {allowed[k]}" for k in (lo, hi) if k)



def require(name: str, value: Any, typ: type, *, optional: bool = False, item: type | None = None,
            **allowed: Any) -> Any:
    """``value`` if it is a ``typ`` within ``allowed`` (see :class:`Option`), else a one-line SharpnessError."""
    Option(name, typ, optional, item, None, allowed, "").check(value)
    return value
