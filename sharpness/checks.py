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

import torch

from .errors import SharpnessError
from .errors import short as _short

__all__ = ["Option", "require"]

# (singular, plural) nouns of the field types, for messages such as "an integer ≥ 1"
_NOUNS = {int: ("an integer", "integers"), float: ("a finite number", "finite numbers"),
          str: ("a string", "strings"), bool: ("true or false", "booleans"),
          dict: ("a dict with string keys", "dicts"), list: ("a list", "lists")}
_BOUNDS = {"ge": ("≥", operator.ge), "gt": (">", operator.gt), "le": ("≤", operator.le), "lt": ("<", operator.lt)}


def _finite(value: numbers.Real) -> bool:
    """Whether a real number is finite and within a float's range (a 400-digit integer is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_number(value: Any, *, finite: bool = False) -> bool:
    """Whether ``value`` is a real number (bool is not); with ``finite``, a finite one within a float's range.

    The one test for numbers read from files (checkpoints, results), where a huge integer must be a
    refusal, not an OverflowError.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and (not finite or _finite(value))


def _fits(value: Any, typ: type) -> bool:
    """Whether ``value`` is a ``typ``: bool is not an int, an int is a float, and numbers are finite."""
    if typ is float:  # numpy scalars count: np.float32(1e-3) is a number a user may pass
        return is_number(value, finite=True)
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


# The largest integer a measure setting may take (k, steps, samples): beyond it nothing finishes.
MAX_SETTING_INT = 10**9


def _numbers_of(example: Any) -> list:
    """The numbers of a setting's example value (itself, or a list's items); bools and None are not numbers."""
    items = example if isinstance(example, (list, tuple)) else [example]
    return [v for v in items if isinstance(v, numbers.Real) and not isinstance(v, bool)]


def check_settings(measure: Any, over: Any, where: str) -> dict:
    """``over`` as settings of ``measure``: its keys and types (``check_overrides``), then their ranges.

    A measure declares each setting by its default and quick values; the range is read from them, so a
    new measure is checked without declaring more: every number must be finite; where every example
    number is a positive integer (``k``, ``steps``, ``n_samples``, batch sizes) the value must be an
    integer in [1, 10⁹]; where every example number is positive (``tol``, ``eps``, ``span``), the value
    must be positive. A list of numbers is checked item by item. Then what the measure declares in its
    ``ranges`` (bounds such as PAC-Bayes' δ in (0, 1), choices such as a normalization's names).

    Raises:
        SharpnessError: one line naming ``where``, the key, the value and what is allowed.
    """
    over = measure.check_overrides(over, where)
    for key, value in over.items():
        examples = [measure.settings[key], *([measure.quick[key]] if key in getattr(measure, "quick", {}) else [])]
        known = [n for e in examples for n in _numbers_of(e)]
        for v in _numbers_of(value):
            what = f"{where}.{key}"
            if known and all(isinstance(n, numbers.Integral) and n >= 1 for n in known):
                if not isinstance(v, numbers.Integral) or not 1 <= v <= MAX_SETTING_INT:
                    raise SharpnessError(f"{what} must be {'integers' if isinstance(value, list) else 'an integer'} "
                                         f"in [1, {MAX_SETTING_INT}] (got {_short(value)})")
            elif not _finite(v):
                raise SharpnessError(f"{what} must be a finite number within a float's range (got {_short(value)})")
            elif known and all(n > 0 for n in known) and not v > 0:
                raise SharpnessError(f"{what} must be positive (got {_short(value)})")
        declared = dict(getattr(measure, "ranges", {}).get(key, {}))
        whole = declared.pop("whole", None)
        if whole and value is not None and not whole[0](value):
            raise SharpnessError(f"{where}.{key} must be {whole[1]} (got {_short(value)})")
        for v in (value if isinstance(value, (list, tuple)) else [value]) if declared else []:
            if v is not None:
                whole_numbers = known and all(isinstance(n, numbers.Integral) for n in known)
                require(f"{where}.{key}", v, str if isinstance(v, str) else int if whole_numbers else float, **declared)
    return over


_DEVICE_WHY = {"meta": "a meta device holds no data (no weights, nothing to measure)",
               "mps": "Apple's MPS backend lacks operations the toolkit needs"}


def check_device(device: Any, where: str = "device", *, available: bool = True) -> torch.device:
    """``device`` (None: the CPU) as a torch.device the toolkit runs on: the CPU or an available CUDA GPU.

    The one check of every entry point (``train``, ``analyze``, ``Checkpoint.model``, ``--device``);
    ``available=False`` checks the kind only (the command line, before torchrun's launch says it per rank).

    Raises:
        SharpnessError: one line naming ``where``: not a device, one the toolkit does not run on (meta,
            mps, xla, ``cpu:1``), CUDA without CUDA, a GPU index beyond the machine's.
    """
    if device is None:
        return torch.device("cpu")
    shown = _short(str(device) if isinstance(device, torch.device) else device)
    try:
        dev = torch.device(device) if isinstance(device, (str, torch.device)) else None
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        why = _DEVICE_WHY.get(dev.type if dev is not None else "", "not a device the toolkit runs on")
        raise SharpnessError(f"{where} {shown}: {why}; use cpu, cuda or cuda:N")
    if dev.type == "cuda" and available:
        if not torch.cuda.is_available():
            raise SharpnessError(f"{where} {shown} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SharpnessError(f"{where} {shown} does not exist ({torch.cuda.device_count()} CUDA device(s): "
                                 f"cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev
