"""One call from checkpoints (files or modules in memory) to a report: every registered measure, arrays and figures, cached.

``analyze`` is what ``python -m sharpness.analyze`` runs. It writes into ``out``:

- ``report.json`` — schema ``sharpness-report`` version 1 (documented in README.md): the run's settings
  (``settings.variant``: what the results depend on, and its ``tag``), per checkpoint its source
  (``"file"`` with its path, or ``"memory"`` with path null), SHA-256 (of the file; in memory, of the
  weights: :func:`~sharpness.checkpoint.tensor_checksum`), specs, loss, parameters (``params``:
  patterns, tensor count, number of parameters) and, per measure, the record's summary and details with
  the settings, seed and seconds (or ``{"status": "failed", "error": ...}``); per pair of checkpoints,
  the pair measures.
- ``arrays.npz`` — spectra, grids and lines, keyed ``<label>/<measure>/<name>``.
- the measures' figures (:mod:`sharpness.measures.builtin`).

A measure is recorded in the report only after its arrays and figures are written, and the report is
rewritten after each measure, so an interrupted run keeps its work. A rerun skips a measure already in
the report for the same checkpoint hash, loss, data, parameters, data subset, seed and settings whose
arrays and figures are all there (``force`` recomputes). A measure that fails is recorded with its
one-line reason and the others still run. One run at a time writes a folder: a second one is refused
while the first holds it.

Nothing is silently replaced. A folder holds the results of one *variant* — the run-level settings the
numbers depend on: ``quick``, ``max_samples``, ``seed``, the ``settings`` overrides, the caller's ``loss``
(and ``loss_args``), ``params``, and the caller's ``model`` / ``data`` overrides (in-memory data by a hash
of their tensors, else by their type and size); not ``batch_size``, ``device``, ``measures``, ``force`` or
the figure style. When ``out`` already holds results of another variant, this run writes into
``out/<tag>/`` instead — ``tag`` is ``"quick"`` or ``"full"``, followed by ``-`` and 8 hex digits of a hash
of the variant unless it is the plain default one — and warns in one line where they go; the earlier
results (report, arrays, figures) stay byte for byte as they were, and a rerun with the same settings
finds its folder again and its cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import io
import itertools
import json
import math
import os
import re
import time
import traceback
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from . import budget as _budget
from .batches import Batches, check_finite, leaves
from .checkpoint import Checkpoint, load_checkpoint, tensor_checksum
from .checks import check_device, check_settings, require
from .distributed import from_main, per_rank, rank_and_world
from .errors import SharpnessError, printable
from .errors import short as _short
from .io import confined, locked, make_folder, read_bytes, read_text, to_jsonable, write_json, write_npz
from .losses import Loss, make_loss
from .measures import builtin  # noqa: F401 - registers the toolkit's measures
from .measures.registry import MEASURES, Context, Measure, Record, headline_keys, measure_names
from .model_state import preserved
from .objective import Objective, default_batch_fn, default_forward, select_params
from .plots.style import current as figure_style
from .plots.style import targets
from .progress import task
from .specs import Spec
from .threads import one_blas_thread

__all__ = ["analyze", "Report", "measure_names", "SCHEMA", "SCHEMA_VERSION"]

SCHEMA, SCHEMA_VERSION = "sharpness-report", 1


@dataclass
class Report:
    """The analysis of one or more checkpoints: ``data`` is what ``report.json`` holds."""

    data: dict
    out: Path | None
    arrays: dict = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        """``"label/measure"`` → the reason, for every measure that failed."""
        entries = [(lb, e["measures"]) for lb, e in self.data["checkpoints"].items()]
        entries += [(key, ms) for key, ms in self.data.get("pairs", {}).items()]
        return {f"{lb}/{m}": r.get("error") for lb, ms in entries for m, r in ms.items() if r.get("status") == "failed"}

    def table(self) -> str:
        """The headline numbers the measures declare, one column per checkpoint, under the run's settings."""
        labels = list(self.data["checkpoints"])
        shown = [printable(lb, 64) for lb in labels]
        variant = self.data.get("settings", {}).get("variant")
        lines = [f"settings: {printable(_describe(variant), 2000)}"] if isinstance(variant, dict) else []
        rows = []
        for measure, key in headline_keys():
            results = [self.data["checkpoints"][lb]["measures"].get(measure) for lb in labels]
            if all(r is None for r in results):
                continue
            cells = [printable(r["status"], 12) if r and "status" in r else
                     key.show((r or {}).get("summary", {}).get(key.name),
                              (r or {}).get("errors", {}).get(key.error) if key.error else None) for r in results]
            if any(c != "—" for c in cells):  # e.g. no accuracy rows for a regression loss
                rows.append((key.column(), cells))
        # columns as wide as their widest cell ("value ± error"), the row labels as their longest
        width = max(12, *(len(lb) for lb in shown), *(len(c) for _, cells in rows for c in cells))
        head = max([16, *(len(name) + 1 for name, _ in rows)])
        lines.append(f"{'':<{head}}" + "".join(f"{lb:>{width + 2}}" for lb in shown))
        lines += [f"{name:<{head}}" + "".join(f"{c:>{width + 2}}" for c in cells) for name, cells in rows]
        for pair, res in self.data.get("pairs", {}).items():
            s = res.get("interpolation", {}).get("summary", {})
            if s:
                lines.append(f"{printable(pair, 140)}: max train loss on the segment {_num(s.get('train_max_loss_between'))} "
                             f"(ends {_num(s.get('train_loss_at_0'))} / {_num(s.get('train_loss_at_1'))})")
        lines += [f"{printable(lb, 64)}/{printable(m, 64)}: {printable(r['status'], 20)}: "
                  f"{printable(r.get('error'), 400)}" for lb, e in self.data["checkpoints"].items()
                  for m, r in e["measures"].items() if "status" in r]
        return "\n".join(lines)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "—"


_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _check_label(field: str, label: Any) -> str:
    if not isinstance(label, str) or not _LABEL.fullmatch(label):
        raise SharpnessError(f"{field}: a label is 1 to 64 characters of A-Z a-z 0-9 _ . - (got {label!r})")
    return label


def _items(checkpoints: Any, labels: Any) -> tuple[list, list[str | None]]:
    """The checkpoints as a list (paths, Checkpoints, modules) and the label each was given (None: chosen here)."""
    if isinstance(checkpoints, dict):
        if labels is not None:
            raise SharpnessError("labels: given twice (the keys of the checkpoints dict are the labels)")
        given = [_check_label("checkpoints key", k) for k in checkpoints]
        items = list(checkpoints.values())
    else:
        items = list(checkpoints) if isinstance(checkpoints, (list, tuple)) else [checkpoints]
        given = [None] * len(items)
    if not items:
        raise SharpnessError("no checkpoint given")
    for c in items:
        if not isinstance(c, (str, os.PathLike, Checkpoint, nn.Module)):
            raise SharpnessError(f"checkpoints: each is a path, a Checkpoint or an nn.Module (got {type(c).__name__})")
    if labels is not None:
        if not isinstance(labels, (list, tuple)) or len(labels) != len(items):
            n = len(labels) if isinstance(labels, (list, tuple)) else type(labels).__name__
            raise SharpnessError(f"labels: one per checkpoint ({len(items)}) (got {n})")
        given = [_check_label("labels", lb) for lb in labels]
    seen = [lb for lb in given if lb is not None]
    dup = sorted({lb for lb in seen if seen.count(lb) > 1})
    if dup:
        raise SharpnessError(f"labels: each must be unique (repeated: {', '.join(dup)})")
    return items, given


def _labels(ckpts: list[Checkpoint], given: list[str | None], previous: dict) -> list[str]:
    """The given labels; for the others short unique ones.

    A file: its stem, else folder_stem, else stem_hash of the path. A module in memory: ``model`` (several:
    ``model0``, ``model1``, ...). A label that an earlier entry of the report uses for another file (or,
    in memory, other weights) is not taken — the memory label gets ``_<8 hex of the weights' hash>`` —
    so an analysis never overwrites another checkpoint's results.
    """
    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:64]

    out: list[str | None] = list(given)
    files = [i for i, c in enumerate(ckpts) if given[i] is None and c.path is not None]
    paths = [Path(ckpts[i].path) for i in files]
    resolved = [str(p.resolve()) for p in paths]
    taken = {lb for lb in given if lb is not None}
    chosen = None
    for name in (lambda p: p.stem, lambda p: f"{p.parent.name}_{p.stem}"):
        labels = [clean(name(p)) for p in paths]
        if len(set(labels)) == len(labels) and not taken & set(labels) and all(
                previous.get(lb, {}).get("path", r) == r for lb, r in zip(labels, resolved)):
            chosen = labels
            break
    if chosen is None:
        chosen = [clean(f"{p.stem[:55]}_{hashlib.sha256(r.encode()).hexdigest()[:8]}") for p, r in zip(paths, resolved)]
    for i, lb in zip(files, chosen):
        out[i] = lb
    memory = [i for i, c in enumerate(ckpts) if given[i] is None and c.path is None]
    for k, i in enumerate(memory):
        lb = "model" if len(memory) == 1 else f"model{k}"
        old = previous.get(lb)
        if lb in taken or lb in out or (old is not None and (old.get("path") is not None
                                                             or old.get("sha256") != ckpts[i].sha256)):
            lb = f"{lb}_{ckpts[i].sha256[:8]}"
        out[i] = lb
    return [str(lb) for lb in out]


def _is_spec(data: Any) -> bool:
    """A data set named (a name, ``"pkg.module:fn"``, a Spec or its dict form), not data in memory."""
    return isinstance(data, (str, Spec)) or (isinstance(data, dict) and isinstance(data.get("name"), str)
                                             and set(data) <= {"name", "args"})


def _one_data(where: str, d: Any) -> Any:
    """Data in memory as the Objective takes them (checked for their kind only: the data loop checks more)."""
    if isinstance(d, (Dataset, DataLoader)):
        return d
    if isinstance(d, (tuple, list, dict)) and leaves(d):
        return d
    raise SharpnessError(f"{where}: expected (X, y) tensors, a Dataset, a DataLoader or a list of batches "
                         f"(got {type(d).__name__}{' without tensors' if isinstance(d, (tuple, list, dict)) else ''})")


def _memory_data(data: Any) -> tuple | None:
    """``data`` as an in-memory ``(train, test)`` (test may be None), or None when it names a data set.

    A tuple of two items, neither of them a tensor (e.g. two ``(X, y)`` pairs, two Datasets or
    DataLoaders, or a data set and None) is ``(train, test)``; anything else the Objective takes — ``(X, y)``
    tensors, a Dataset, a DataLoader, a list of batches — is the training data alone (no test set). A single
    training set that is itself a tuple of two tuples is passed as ``(data, None)``.
    """
    if data is None or _is_spec(data):
        return None
    if isinstance(data, tuple) and len(data) == 2 and data[0] is None:
        raise SharpnessError("data[0] (train): the training data are needed (got None)")
    if isinstance(data, tuple) and len(data) == 2 and not any(isinstance(d, torch.Tensor) for d in data) \
            and data[0] is not None:
        return _one_data("data[0] (train)", data[0]), (None if data[1] is None else _one_data("data[1] (test)", data[1]))
    return _one_data("data", data), None


def _fingerprint(d: Any) -> Any:
    """What identifies data given in memory in the variant: a hash of their tensors.

    Tensors (and TensorDatasets, loaders over them) are hashed as they are; any other Dataset or DataLoader
    is read once through the data loop — on its private generators, so the same examples (and the same
    augmentation) every time — and the tensors of its batches are hashed. Two data sets of one kind and size
    but other contents are then two variants, never one another's cached results.
    """
    if d is None:
        return None
    tree = d.dataset if isinstance(d, DataLoader) else d
    tree = tree.tensors if isinstance(tree, TensorDataset) else tree
    if not (isinstance(tree, (tuple, list, dict)) and leaves(tree)):
        tree = list(Batches(d))  # one pass on the host: analysis makes many more
    return {"tensors": tensor_checksum({"state_dict": tree})[:16]}


def _check_params(params: Any) -> list[str] | None:
    if params is None:
        return None
    if isinstance(params, str):
        params = [params]
    if not isinstance(params, (list, tuple)) or not params or not all(isinstance(p, str) and p for p in params):
        raise SharpnessError(f"params must be a name pattern or a non-empty list of them, e.g. 'fc.*' (got {params!r})")
    return list(params)


_PLAIN = (type(None), str, int, float, bool)


def _name(x: Any, depth: int = 0) -> Any:
    """A caller's model, loss or data choice as plain JSON for the variant: what it computes, not only its name.

    A loss module or callable object gives its class, its public plain attributes (``label_smoothing``,
    ``reduction``, ...) and a hash of its tensors; a function its qualified name, a hash of its code and
    constants, and its defaults and closure values (read the same way, a few levels deep). So a loss
    configured otherwise, or a lambda closing over another scale, is another variant: its cached results
    are never taken for this one's.
    """
    if isinstance(x, _PLAIN):
        return x
    if depth > 4:
        return type(x).__qualname__
    if isinstance(x, Spec):
        return x.to_dict()
    if isinstance(x, types.ModuleType):
        return {"module": x.__name__}
    if isinstance(x, torch.Tensor):
        return {"tensor": tensor_checksum({"state_dict": {"t": x}})[:16]}
    if isinstance(x, (list, tuple)):
        return [_name(v, depth + 1) for v in x]
    if isinstance(x, dict):
        return {str(k): _name(v, depth + 1) for k, v in x.items()}
    if isinstance(x, Loss):
        return {"loss": x.name, "reduction": x.reduction, "fn": _name(x.fn, depth + 1)}
    if isinstance(x, functools.partial):
        return {"partial": _name(x.func, depth + 1), "args": _name(x.args, depth + 1),
                "keywords": _name(x.keywords, depth + 1)}
    if isinstance(x, (types.FunctionType, types.MethodType)):
        fn = x.__func__ if isinstance(x, types.MethodType) else x
        code = fn.__code__
        digest = _code_digest(code)
        cells = [c.cell_contents for c in (fn.__closure__ or ()) if _has_contents(c)]
        return {"function": f"{fn.__module__}:{fn.__qualname__}", "code": digest,
                "defaults": _name(fn.__defaults__, depth + 1), "closure": _name(cells, depth + 1),
                **({"self": _name(x.__self__, depth + 1)} if isinstance(x, types.MethodType) else {})}
    if isinstance(x, nn.Module) or callable(x):
        attrs = {k: _name(v, depth + 1) for k, v in sorted(vars(x).items())
                 if not k.startswith("_") and isinstance(v, (*_PLAIN, list, tuple, torch.Tensor))}
        state = x.state_dict() if isinstance(x, nn.Module) else {}
        return {"class": f"{type(x).__module__}.{type(x).__qualname__}", "attrs": attrs,
                **({"state": tensor_checksum({"state_dict": state})[:16]} if state else {})}
    try:
        return _plain(x)
    except (TypeError, ValueError):  # no JSON form: its repr (one with an address never matches: recomputed)
        return {"object": f"{type(x).__module__}.{type(x).__qualname__}", "repr": repr(x)[:200]}


def _code_digest(code: types.CodeType) -> str:
    """A hash of a function's byte code and constants.

    Nested code objects (a lambda inside) count by their own digest: their repr holds a memory address.
    """
    consts = [_code_digest(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return hashlib.sha256(code.co_code + repr(consts).encode()).hexdigest()[:16]


def _has_contents(cell: Any) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:  # an empty cell (a name bound later)
        return False


def _variant(*, quick: bool, max_samples: int | None, seed: int, overrides: dict, loss: Any, loss_args: Any,
             params: list | None, model: Any, model_args: Any, data: Any, data_args: Any,
             memory: tuple | None, budget: float | None = None) -> dict:
    """The run-level settings the results depend on (see the module docstring)."""
    data_id = None if data is None else (_name(data) if memory is None else
                                         {"train": _fingerprint(memory[0]), "test": _fingerprint(memory[1])})
    return _plain({"quick": quick, "max_samples": max_samples, "seed": seed, "settings": overrides,
                   "loss": _name(loss), "loss_args": loss_args or None, "params": params,
                   "model": _name(model), "model_args": model_args or None, "data": data_id,
                   "data_args": data_args or None, **({"budget": budget} if budget is not None else {})})


def _plain_variant(quick: bool) -> dict:
    return _variant(quick=quick, max_samples=1000 if quick else None, seed=0, overrides={}, loss=None,
                    loss_args=None, params=None, model=None, model_args=None, data=None, data_args=None,
                    memory=None)


def _tag(variant: dict) -> str:
    """``quick`` / ``full``, and ``-<8 hex>`` of the variant's hash unless it is the plain one."""
    base = "quick" if variant["quick"] else "full"
    if variant == _plain_variant(variant["quick"]):
        return base
    return f"{base}-{hashlib.sha256(json.dumps(variant, sort_keys=True).encode()).hexdigest()[:8]}"


def _describe(variant: dict) -> str:
    """The variant in one line for the table: ``quick, max_samples 1000, seed 0, ...``."""
    parts = ["quick" if variant.get("quick") else "full settings"]
    parts += [f"{k} {json.dumps(variant[k], sort_keys=True)}" for k in
              ("max_samples", "seed", "budget", "params", "loss", "loss_args", "settings", "model", "model_args",
               "data", "data_args") if k in variant and (variant[k] not in (None, {}) or k in ("max_samples", "seed"))]
    return ", ".join(parts)


def _folder_variant(folder: Path) -> dict | None:
    """The variant of the results in ``folder`` (None: none there, or unusable: _previous sets it aside).

    A report.json that is not a regular file (a FIFO, a device, a folder) is refused in one line, at once.
    """
    try:
        report = _report_json(folder / "report.json")
        _check_report(report)
        settings = report["settings"]
        if "variant" in settings:
            return settings["variant"]
        # written before variants were recorded: what its settings say, the rest as by default
        return {**_plain_variant(bool(settings["quick"])), "seed": settings["seed"],
                "max_samples": settings["max_samples"]}
    except SharpnessError:
        raise
    except Exception:  # no report, or one _previous will set aside
        return None


def _report_json(path: Path) -> Any:
    """report.json parsed (a regular file only, read without blocking; see :func:`sharpness.io.read_text`).

    Raises:
        FileNotFoundError: none there. SharpnessError: not a regular file, or too large. ValueError: not JSON.
    """
    return json.loads(read_text(path, "report file"))


def _check_result(where: str, r: Any) -> None:
    """One measure's entry of an earlier report, as this module wrote it (ValueError: what is wrong)."""
    if not isinstance(r, dict):
        raise ValueError(f"{where} is not a table")
    if "status" in r and (not isinstance(r["status"], str) or not isinstance(r.get("error", ""), str)):
        raise ValueError(f"{where}: status/error are not text")
    for name, kind in (("summary", dict), ("details", dict), ("arrays", list), ("figures", list)):
        if name in r and not isinstance(r[name], kind):
            raise ValueError(f"{where}.{name} is not a {kind.__name__}")
    if not all(isinstance(k, str) and "/" in k for k in r.get("arrays", [])):
        raise ValueError(f"{where}.arrays: not a list of array keys")
    for f in r.get("figures", []):
        try:
            confined(".", f, f"{where}.figures")
        except SharpnessError as e:
            raise ValueError(str(e)) from None


def _check_report(report: Any) -> None:
    """An earlier report.json as this module writes it, down to the entries read back (ValueError: what not)."""
    if not isinstance(report, dict) or report.get("schema") != SCHEMA or report.get("version") != SCHEMA_VERSION \
            or not isinstance(report.get("checkpoints"), dict):
        raise ValueError("not a sharpness report")
    settings = report.get("settings")
    if not isinstance(settings, dict):
        raise ValueError("settings is not a table")
    if "variant" in settings:
        if not isinstance(settings["variant"], dict):
            raise ValueError("settings.variant is not a table")
    elif not (isinstance(settings.get("quick"), bool) and "seed" in settings and "max_samples" in settings):
        raise ValueError("settings has neither a variant nor quick/seed/max_samples")
    for label, entry in report["checkpoints"].items():
        if not _LABEL.fullmatch(label):
            raise ValueError(f"checkpoint label {printable(label, 80)!r} is not a label")
        if not isinstance(entry, dict) or not isinstance(entry.get("measures"), dict):
            raise ValueError(f"checkpoints.{label} is not a table with a table of measures")
        if not isinstance(entry.get("path"), (str, type(None))) or not isinstance(entry.get("sha256"), str):
            raise ValueError(f"checkpoints.{label}: path/sha256 are not text")
        for m, r in entry["measures"].items():
            _check_result(f"checkpoints.{label}.measures.{m}", r)
    pairs = report.get("pairs", {})
    if not isinstance(pairs, dict):
        raise ValueError("pairs is not a table")
    for key, ms in pairs.items():
        a, _, b = key.partition("→")
        if not (_LABEL.fullmatch(a) and _LABEL.fullmatch(b)):
            raise ValueError(f"pair {printable(key, 140)!r} is not 'A→B'")
        if not isinstance(ms, dict):
            raise ValueError(f"pairs.{key} is not a table")
        for m, r in ms.items():
            _check_result(f"pairs.{key}.{m}", r)
    together = report.get("together", {})
    if not isinstance(together, dict) or not all(isinstance(v, list) for v in together.values()):
        raise ValueError("together is not a table of lists")
    for m, files in together.items():
        for f in files:
            try:
                confined(".", f, f"together.{m}")
            except SharpnessError as e:
                raise ValueError(str(e)) from None


def _target(out: Path, variant: dict) -> Path:
    """The folder this run writes: ``out``, unless it holds another variant's results: then ``out/<tag>``."""
    held = _folder_variant(out)
    if held is None or held == variant:
        return out
    target = out / _tag(variant)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise SharpnessError(f"{target}: is a symlink or a file, not a folder; remove it (results are never written "
                             "through a link)")
    there = _folder_variant(target)
    if there is not None and there != variant:
        raise SharpnessError(f"{target}: holds results of other settings than this run's; choose another folder "
                             "(--out; out= in analyze)")
    diff = ", ".join(f"{k} {json.dumps(held.get(k))}→{json.dumps(variant.get(k))}"
                     for k in dict.fromkeys([*variant, *held]) if held.get(k) != variant.get(k))
    warnings.warn(f"{out} holds results of other settings ({diff[:200]}); kept as they are, this run's go to {target}",
                  stacklevel=3)
    return target


def _finite(d: Any) -> Any:
    """NaN/inf → None so report.json is strict JSON."""
    if isinstance(d, dict):
        return {k: _finite(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_finite(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


def _plain(d: Any) -> Any:
    """JSON round trip: settings compare equal to what a previous report stored."""
    return json.loads(json.dumps(to_jsonable(d)))


def _check(measures: list[str] | None, device: str, batch_size: Any, max_samples: Any, seed: Any) -> list[str]:
    if isinstance(measures, str):  # one name, not its letters
        measures = [measures]
    if measures is not None and (not isinstance(measures, (list, tuple))
                                 or not all(isinstance(m, str) for m in measures)):
        raise SharpnessError(f"measures must be a measure name or a list of them (got {_short(measures, 120)}); "
                             f"known: {', '.join(measure_names())}")
    names = measure_names() if measures is None else list(dict.fromkeys(measures))
    unknown = [printable(m, 64) for m in names if m not in MEASURES]
    if unknown or not names:
        raise SharpnessError(f"unknown measure(s): {', '.join(unknown) or '(none given)'}; "
                             f"known: {', '.join(measure_names())}")
    check_device(device)
    for name, v in (("batch_size", batch_size), ("max_samples", max_samples)):
        require(name, v, int, optional=True, ge=1)
    require("seed", seed, int, ge=0, le=2**32 - 1)
    return names


def _check_settings(settings: Any, names: list[str]) -> dict[str, dict]:
    """Per-measure setting overrides: measures that run, keys they have, values of their types and ranges."""
    require("settings", settings, dict, optional=True)
    for name, over in (settings or {}).items():
        if name not in names:
            raise SharpnessError(f"settings names measure {name!r}, which does not run; measures: {', '.join(names)}")
        check_settings(MEASURES[name], over, f"settings.{name}")
    return dict(settings or {})


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}".rstrip(": ")


def _context(label: str, ckpt: Checkpoint, *, data: tuple | None, device: str, loss: Any, loss_args: dict | None,
             batch_size: int | None, max_samples: int | None, seed: int, progress: bool | None,
             params: list | None) -> Context:
    """The checkpoint's model and objectives, tried on two examples so bad input fails before any work.

    The model's forward is tried first, then the loss on its output, so a message names the one that failed.
    Every objective selects the same parameters (``params``; None: those that require grad).
    """
    # first: a data set that cannot be had is the first thing to say
    train, test = data if data is not None else ckpt.datasets()
    where = ckpt.where
    for name, d in (("training", train), ("test", test)):
        check_finite(d, where, name)  # data in memory: every example, cheaply, before the model is built
    model = ckpt.model(device, data=(train, test))  # a factory gets input_shape / num_classes from the data
    try:
        first = select_params(model, params, trainable_only=True)[0][1]
    except SharpnessError as e:
        raise SharpnessError(f"{where}: params: {e}") from None
    batches = Batches(train, batch_size=batch_size, device=first.device, dtype=first.dtype)
    # the same two examples on every rank, no collective: a failure cannot leave other ranks waiting
    probe = batches.examples(torch.arange(min(2, batches.num_samples or 2)))
    check_finite(probe, where, "training")  # a Dataset read example by example: its first two, at least
    try:
        with torch.no_grad(), preserved(model):
            raw = next(iter(Batches(probe, device=first.device, dtype=first.dtype)))
            inputs, _, _ = default_batch_fn(raw)
            default_forward(model, inputs)
    except SharpnessError:
        raise
    except Exception as e:  # the user's model raising on the user's data: bad input, one line
        raise SharpnessError(f"{where}: the model ({type(model).__name__}) does not accept the data "
                             f"({_reason(e)})") from None
    if loss is not None:
        fn, shown = make_loss(loss, loss_args), None
    elif ckpt.loss_spec is not None:  # named by the checkpoint: never imported from site-packages
        fn, shown = make_loss(ckpt.loss_spec.name, {**ckpt.loss_spec.args, **(loss_args or {})}, trusted=False), None
    else:  # none named: the Objective's default (inferred from the targets where it can tell)
        fn, shown = None, "(the default for these targets)"
    kw = dict(batch_size=batch_size, params=params, trainable_only=True)
    try:
        tr = Objective(model, fn, batches, loss_args=loss_args if fn is None else None, **kw)
        shown = tr.loss.name
        Objective(model, tr.loss, probe, distributed=False, **kw).evaluate()
    except SharpnessError:
        raise
    except Exception as e:  # the forward ran: the loss raises on the model's output and the targets
        name = shown or getattr(fn, "name", None)
        raise SharpnessError(f"{where}: the loss '{name}' fails on the model's output for the data "
                             f"({_reason(e)})") from None
    te = Objective(model, tr.loss, test, **kw) if test is not None else None
    return Context(label, model, tr.subset(max_samples, seed, batch_size=batch_size), tr, te, seed, batch_size,
                   progress, ckpt.path, params)


def _settings_of(measure: Measure, quick: bool, overrides: dict) -> dict:
    """The settings a measure starts from: its defaults (quick ones when ``quick``) and the user's overrides."""
    return {**measure.settings_for(quick), **overrides.get(measure.name, {})}


def _plan(ctxs: list[Context], names: list[str], quick: bool, overrides: dict, budget: float | None, *,
          given_subset: bool, start: float, labels: list[str], show: bool, figures: bool) -> dict:
    """Measure the unit costs, plan every measure (fitted to ``budget``), set each context's plan and subset.

    Returns ``{"report": what report.json records, "budget": the run's Budget}``. The budget is shared
    equally by the checkpoints (pair measures first take their planned share); what setting up took so far
    is taken off it first.
    """
    singles = [MEASURES[n] for n in names if not MEASURES[n].pair]
    pairs = [MEASURES[n] for n in names if MEASURES[n].pair] if len(ctxs) > 1 else []
    units_by: dict[tuple, _budget.Units] = {}
    rows: list = []
    for i, ctx in enumerate(ctxs):
        key = (ctx.work.num_params, ctx.train.num_samples, ctx.work.num_samples)
        if key not in units_by:
            try:
                with task(f"{labels[i]}: unit costs"):
                    units_by[key] = _budget.unit_costs(ctx.work, per_example="noise_scale" in names)
            except SharpnessError as e:  # e.g. data held as one DataLoader per rank: no subset to time on
                if budget is not None:
                    raise SharpnessError(f"budget: the unit costs cannot be measured ({e})") from None
                warnings.warn(f"no plan: the unit costs cannot be measured ({printable(e, 200)})", stacklevel=4)
                return {"report": None, "budget": _budget.Budget(None, {}, {}, start)}
    # before a budget's subset changes ctx.work; a run without figures plans none
    by_ctx = {id(c): dataclasses.replace(units_by[(c.work.num_params, c.train.num_samples, c.work.num_samples)],
                                         draw=figures) for c in ctxs}
    units = by_ctx[id(ctxs[0])]
    pair_plans = [((i, j), _budget.choice(m, _settings_of(m, quick, overrides), _sizes(a), by_ctx[id(a)]))
                  for (i, a), (j, _) in itertools.combinations(enumerate(ctxs), 2) for m in pairs]
    together = sum(1 for m in singles if m.together is not None)  # the figures of all checkpoints at once
    share = None
    if budget is not None:
        share = (budget - (time.perf_counter() - start) - sum(c.seconds for _, c in pair_plans)
                 - (_budget.FIGURE_SECONDS * together if figures and len(ctxs) > 1 else 0.0)) / len(ctxs)
    for i, ctx in enumerate(ctxs):
        u = by_ctx[id(ctx)]
        start_settings = {m.name: _settings_of(m, quick, overrides) for m in singles}
        # the user's own settings are kept as given: only the others are stepped down
        fixed = [m for m in singles if overrides.get(m.name)]
        free = [m for m in singles if not overrides.get(m.name)]
        spent = sum(_budget.planned_seconds(m, start_settings[m.name], _sizes(ctx), u) for m in fixed)
        choices, work = _budget.fit_budget(free, start_settings, _sizes(ctx), u,
                                           None if share is None else share - spent, work_fixed=given_subset)
        if work < ctx.work.num_samples:
            ctx.work = ctx.train.subset(work, ctx.seed, batch_size=ctx.batch_size)
        choices.update({m.name: _budget.choice(m, start_settings[m.name], _sizes(ctx), u) for m in fixed})
        ctx.plan = {m.name: choices[m.name] for m in singles}
        rows += [((i,), choices[m.name]) for m in singles]
    rows += pair_plans
    planned = {(tuple(id(ctxs[k]) for k in ix), c.name): c.seconds for ix, c in rows}
    total = sum(planned.values()) + sum(u.seconds for u in units_by.values())
    report = {"budget": budget, "total_seconds": total, "units": units.to_dict(ctxs[0].work.num_samples),
              "curvature_examples": [c.work.num_samples for c in ctxs],
              "measures": [{"index": list(ix), "checkpoint": "→".join(labels[k] for k in ix), "measure": c.name,
                            **c.to_dict()} for ix, c in rows]}
    if show:
        _show_plan(report, units, ctxs[0].work.num_samples)
    fixed_names = {m.name for m in singles + pairs if overrides.get(m.name)}
    return {"report": report, "budget": _budget.Budget(budget, by_ctx, planned, start, fixed=fixed_names)}


def _show_plan(report: dict, units: _budget.Units, n: int) -> None:
    """The plan on stderr: the unit costs, each measure's planned seconds and what it is made of, the total."""
    import sys

    lines = [f"plan on {units.device} (units measured in {units.seconds:.1f} s: {units.describe(n)}):"]
    for r in report["measures"]:
        what, steps = r.get("skipped") or r["work"], r["reduced_steps"]
        lines.append(f"  {printable(r['checkpoint'], 40)}: {r['measure']:<15} {r['planned_seconds']:8.1f} s  "
                     f"{printable(what, 160)}" + (f"  [{steps} step(s) cheaper]" if steps else ""))
    b = report["budget"]
    lines.append(f"  total ≈ {report['total_seconds']:.0f} s" + (f" (budget {b:g} s)" if b is not None else "")
                 + f"; curvature data: {', '.join(map(str, report['curvature_examples']))} examples")
    print("\n".join(lines), file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(out: Path | None) -> Iterator[None]:
    """Hold ``out/.lock`` for the run; a second run on the same folder is refused, not interleaved."""
    if out is None:
        yield
        return
    make_folder(out)
    if not os.access(out, os.W_OK):
        raise SharpnessError(f"--out {out}: the folder is not writable")
    with locked(out / ".lock", f"{out}: another analysis is writing this folder; wait for it or choose another "
                               "(--out; out= in analyze)"):
        yield


def _previous(out: Path | None) -> tuple[dict, dict]:
    """The report and arrays of an earlier run, if usable; a corrupt file is set aside with a warning.

    Wrong inner types (entries that are not tables, figure names that are paths, ...) make a report
    unusable like a truncated one. Not a regular file (a FIFO, a device, a folder) at ``report.json`` or
    ``arrays.npz``: refused in one line, at once (never waited on, never set aside).
    """
    if out is None or not ((out / "report.json").exists() or (out / "report.json").is_symlink()):
        return {}, {}
    try:
        raw = read_bytes(out / "report.json", "report file")
        npz = read_bytes(out / "arrays.npz", "arrays file") if (out / "arrays.npz").exists() else None
    except FileNotFoundError:  # a dangling link, or removed meanwhile: nothing to reuse
        raw, npz = None, None
    try:
        if raw is None:
            raise ValueError("no readable report")
        report = json.loads(raw.decode("utf-8"))
        _check_report(report)
        arrays = {}
        if npz is not None:
            with np.load(io.BytesIO(npz), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        return report, arrays
    except Exception as e:  # unreadable in any way (truncated zip, wrong shape): set aside, never fatal
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        for name in ("report.json", "arrays.npz"):
            if (out / name).exists() or (out / name).is_symlink():
                (out / name).rename(out / f"{name}.corrupt-{stamp}")
        warnings.warn(f"{out}: previous results unreadable ({printable(e, 300)}); set aside as *.corrupt-{stamp}, "
                      "recomputing", stacklevel=3)
        return {}, {}


def _sizes(ctx: Context) -> _budget.Sizes:
    return _budget.Sizes(ctx.work.num_samples, ctx.train.num_samples, ctx.test.num_samples if ctx.test else 0,
                         ctx.work.num_params)


def _numbers(summary: dict, keys: tuple) -> list[str]:
    """The summary keys named (``"*"``: every number but the counts ``n_*``) that hold numbers."""
    names = [k for k in summary if not k.startswith("n_")] if "*" in keys else list(keys)
    return [k for k in names if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)]


def _subsample_errors(measure: Measure, ctx: Context, rec: Record, settings: dict) -> None:
    """The subsampling error of the measure's values on the curvature subset, added to ``rec.errors``.

    When ``ctx.work`` holds n of the N training examples, the measure runs again on a seeded half of those
    n (nested in them). For a mean over examples the difference v_{n/2} − v_n has the variance of v_n's
    sampling error before the finite-population factor: Var = σ²/n, against Var(v_n) = σ²/n·(1 − n/N).
    So |v_{n/2} − v_n|·√(1 − n/N) is a one-draw estimate of v_n's subsampling error; for curvature (not
    a mean) it is the same estimate to first order, and it also holds the change of a bias in 1/n. The
    solver's error (a residual bound, a Monte-Carlo error) and this one are added in quadrature; both are
    in ``details.subsample``. The rerun costs the measure once more on half the data.
    """
    n, total = ctx.work.num_samples, ctx.train.num_samples
    if n >= total:
        return
    if n < 4:
        rec.details["subsample"] = {"n": n, "N": total, "skipped": "fewer than 4 examples: no nested half to compare"}
        return
    if "half" not in ctx.shared:  # one nested half per checkpoint: the curvature measures share its Krylov run
        ctx.shared["half"] = dataclasses.replace(ctx, work=ctx.work.subset(n // 2, ctx.seed + 1), progress=False,
                                                 shared={}, plan={})
    other = measure.run(ctx.shared["half"], settings=settings)
    fpc = math.sqrt(1 - n / total)
    errors, halves = {}, {}
    for k in _numbers(rec.summary, measure.subsample):
        v, h = rec.summary[k], other.summary.get(k)
        if isinstance(h, (int, float)) and math.isfinite(h) and math.isfinite(v):
            errors[k], halves[k] = abs(h - v) * fpc, h
            rec.errors[k] = math.hypot(rec.errors.get(k) or 0.0, errors[k])
    rec.details["subsample"] = {"n": n, "N": total, "half": ctx.shared["half"].work.num_samples, "values": halves,
                                "errors": errors, "method": "nested half, |v_half − v|·√(1 − n/N)"}


class _Run:
    """One analysis writing one folder: runs measures, reuses cached ones, saves arrays → figures → report."""

    def __init__(self, out: Path | None, quick: bool, seed: int, force: bool, figures: bool, arrays: dict,
                 report: dict, overrides: dict, restyle: bool, budget: _budget.Budget):
        self.out, self.quick, self.seed, self.force, self.figures = out, quick, seed, force, figures
        self.arrays, self.report, self.overrides = arrays, report, overrides
        self.restyle = restyle  # another style or dpi than the figures here were drawn in: draw them again
        self.budget = budget

    def cached(self, old: dict | None, settings: dict, tags: dict) -> bool:
        """An earlier result for the same settings, seed, data and inputs, with its arrays."""
        return not self.force and bool(old) and "summary" in old and old.get("settings") == settings \
            and old.get("seed") == self.seed and all(old.get(t) == v for t, v in tags.items()) \
            and all(k in self.arrays for k in old.get("arrays", []))

    def redraw(self, measure: Measure, old: dict, ctxs: tuple) -> None:
        """Draw a cached result's figures again when a file is missing (deleted, or another --format asked)."""
        if not (self.figures and self.out is not None and old.get("figures")):
            return
        files = [confined(self.out, f, "report.json figures") for f in old["figures"]]  # checked on reading too
        stems = {f.with_suffix(".png").name for f in files}
        if not self.restyle and all(t.exists() for s in stems for t in targets(self.out / s)):
            return
        arrays = {k.rsplit("/", 1)[-1]: self.arrays[k] for k in old.get("arrays", [])}
        rec = Record(old["summary"], old.get("details", {}), arrays)
        made = measure.draw(rec, self.out, tuple(c.label for c in ctxs), ctxs[0].train.loss.label)
        kept = [f.name for f in files if f.exists() and not self.restyle]
        old["figures"] = sorted({*kept, *(p.name for p in made)})

    def measure(self, measure: Measure, ctxs: tuple, key: str, entry: dict, old: dict | None, tags: dict) -> None:
        """Run (or reuse) one measure; record it in ``entry`` once its arrays and figures are written."""
        plan = ctxs[0].plan.get(measure.name) if len(ctxs) == 1 else None
        chosen = plan.settings if plan is not None else _settings_of(measure, self.quick, self.overrides)
        sizes = _sizes(ctxs[0])
        chosen, skip = self.budget.fit((tuple(id(c) for c in ctxs), measure.name), measure, chosen, sizes)
        skip = plan.skipped if plan is not None and plan.skipped else skip
        settings = _plain(chosen)
        loss = entry.get("loss", {}).get("summary", {}).get("train_loss", 0.0)
        # Data-parallel: rank 0 holds the folder; every rank must take its decision (collectives follow).
        cached, finite = from_main((self.cached(old, settings, tags),
                                    measure.name == "loss" or (isinstance(loss, float) and math.isfinite(loss))))
        if cached:
            if old:
                self.redraw(measure, old, ctxs)
            entry[measure.name] = old or {}  # ranks > 0 hold no folder: rank 0 has the result
            return
        if not finite or skip:
            # a diverged model: curvature of a NaN loss is noise, and the solvers would fail obscurely
            entry[measure.name] = {"status": "skipped", "settings": settings, "seed": self.seed,
                                   "error": skip or f"the training loss is not finite ({loss})"}
            return
        t0 = time.perf_counter()
        try:
            with task(f"{key}: {measure.name}"):  # every bar of the measure says whose and which it is
                rec = measure.run(*ctxs, settings=chosen)
                if measure.subsample and not measure.pair:
                    with task("nested half"):
                        _subsample_errors(measure, ctxs[0], rec, chosen)
            keys = [f"{key}/{measure.name}/{k}" for k in rec.arrays]
            self.arrays.update({k: np.asarray(v) for k, v in zip(keys, rec.arrays.values())})
            if self.out is not None and rec.arrays:
                write_npz(self.out / "arrays.npz", self.arrays)
            made = measure.draw(rec, self.out, tuple(c.label for c in ctxs), ctxs[0].train.loss.label) \
                if self.figures and self.out is not None else []
            result = {"summary": rec.summary, "errors": _plain(_finite(rec.errors)), "details": rec.details,
                      "arrays": keys, "figures": [p.name for p in made]}
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one measure's failure (bad settings for this model included) spares the others
            last = traceback.extract_tb(e.__traceback__)[-1]
            reason = (str(e).strip().splitlines() or [""])[0][:300]
            result = {"status": "failed",
                      "error": f"{type(e).__name__}: {reason} ({Path(last.filename).name}:{last.lineno})"}
        entry[measure.name] = {**result, "settings": settings, "seed": self.seed, **tags,
                               "seconds": time.perf_counter() - t0,
                               "planned_seconds": _budget.planned_seconds(measure, chosen, sizes, units)
                               if (units := self.budget.units_of(ctxs[0])) is not None and measure.cost is not None
                               else None}
        self.save()

    def together(self, names: list[str], labels: list[str], loss_label: str) -> dict[str, list[str]]:
        """The measures' figures of all checkpoints at once: {measure: files} (a failure is warned, not fatal)."""
        made = {}
        for name in names:
            measure = MEASURES[name]
            arrays = {lb: {k.split("/", 2)[2]: v for k, v in self.arrays.items() if k.startswith(f"{lb}/{name}/")}
                      for lb in labels}
            arrays = {lb: a for lb, a in arrays.items() if a}
            try:
                made[name] = [p.name for p in measure.draw_together(arrays, self.out, loss_label)]
            except Exception as e:  # a figure must not cost the computed results
                warnings.warn(f"{name}: the figure of all checkpoints failed ({type(e).__name__}: {e})", stacklevel=3)
        return {k: v for k, v in made.items() if v}

    def save(self) -> None:
        """Rewrite report.json (atomically)."""
        if self.out is not None:
            write_json(self.out / "report.json", _finite(self.report))


@one_blas_thread
def analyze(checkpoints: Any, *, out: str | Path | None = "analysis", measures: list[str] | None = None,
            quick: bool = False, device: str = "cpu", batch_size: int | None = None,
            max_samples: int | None = None, seed: int = 0, model: str | Callable | nn.Module | None = None,
            model_args: dict | None = None, data: Any = None, data_args: dict | None = None, loss: Any = None,
            loss_args: dict | None = None, force: bool = False, progress: bool | None = None,
            figures: bool = True, settings: dict[str, dict] | None = None, labels: list[str] | None = None,
            params: str | list[str] | None = None, budget: float | None = None, dry_run: bool = False) -> Report:
    """Analyze checkpoints — files, loaded :class:`Checkpoint` objects or modules in memory — with every measure.

    Every measure is of the mean loss over the data set (:mod:`sharpness.losses`), with respect to one set
    of parameters (``params``) for all of them.

    Results are kept by their settings (module docstring): when ``out`` holds results of other run-level
    settings (``quick``, ``max_samples``, ``seed``, ``settings``, ``loss``, ``loss_args``, ``params``, the
    ``model`` / ``data`` overrides), this run writes into ``out/<tag>/`` (``quick``, ``full``, or either
    with ``-<8 hex>`` of the settings' hash), warns where in one line, and leaves the earlier files
    untouched; :attr:`Report.out` is the folder written. A rerun with the same settings finds its folder
    and its cached results. The caller's random state (torch's CPU generator, and the CUDA one of
    ``device``) is as it was afterwards.

    Args:
        checkpoints: a path, a Checkpoint, an ``nn.Module`` (analyzed as it is: copied, never modified), a
            list of them, or a dict label → one of them.
        out: output folder (None: nothing written, no caching).
        measures: names of registered measures (default: all; pair measures need two checkpoints).
        quick: the measures' quick settings and a 1000-example subset unless ``max_samples`` says otherwise.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: evaluate data in batches of this size (memory only; results are full-data means).
        max_samples: a fixed random subset of the training data for curvature and sharpness.
        seed: seed of every random choice.
        model: for bare state_dicts (or to override): a registered name, ``"pkg.module:factory"``, a
            factory or a module. A factory (or name) that takes ``input_shape`` / ``num_classes`` and is
            not given them gets them from the data, as ``train`` does.
        model_args: the factory's keyword arguments.
        data: a data set name or ``"pkg.module:fn"`` (for bare state_dicts, or to override the
            checkpoint's; needed for a module); or data in memory for every checkpoint: a pair
            ``(train, test)`` whose items are anything the Objective takes — ``(X, y)`` tensors, Datasets,
            DataLoaders, lists of batches — or a single training data set (no test set). A tuple of two
            items neither of which is a tensor is the pair; ``(X, y)`` tensors are one data set.
        data_args: the data function's keyword arguments.
        loss: a loss name, ``"pkg.module:fn"`` or callable (default: the checkpoint's loss, else the
            Objective's default for the data).
        loss_args: the loss's keyword arguments (e.g. ``{"reduction": "sum"}``).
        force: recompute measures already in the report.
        progress: progress bars (None: on a terminal only).
        figures: write the measures' figures.
        settings: per-measure settings over the defaults (and the quick ones), e.g.
            ``{"interpolation": {"path": "sin"}}``; each key must be one the measure has.
        labels: one label per checkpoint (unique, 1 to 64 characters of ``A-Za-z0-9_.-``), instead of the
            ones chosen from the file names (``model``, ``model0``, ... for modules in memory).
        params: the parameters every measure works on: a glob pattern over ``named_parameters()`` names
            (``"fc.*"``) or a list of them; None: every parameter that requires grad. Each checkpoint's
            entry records ``params``: ``{"patterns", "count" (tensors), "num_params" (P)}``.
        budget: seconds the whole analysis may take (figures included). Settings — the curvature data
            subset (unless ``max_samples`` is given), grid points, products, Monte-Carlo draws — are
            chosen from the measured unit costs (:mod:`sharpness.budget`) so the plan fits; each measure
            is re-planned against the time left before it runs; one that cannot fit is recorded as
            skipped with the reason. The chosen settings are in each measure's entry and in ``plan``.
        dry_run: plan and stop: the returned report holds ``plan`` only; nothing is written.

    Before any measure runs, the unit costs — a forward, a gradient, a Hessian-vector product and a
    per-example gradient on one batch — are measured on the model and device (about a second), every
    measure's planned seconds are printed (on stderr, unless ``progress`` is False) and recorded in
    ``report.json`` (``plan``; per measure ``planned_seconds`` beside ``seconds``). Every value comes
    with its error bar in the measure's ``errors`` (summary key → error): Lanczos residual bounds,
    Monte-Carlo standard errors, 0 where a value is exact for its data, and — when the curvature data
    are a strict subset of the training set — the subsampling error from a nested half (see
    ``_subsample_errors``), added in quadrature.

    Raises:
        SharpnessError: bad input of any kind, before anything is written.
    """
    cuda = isinstance(device, str) and _valid_device(device) and torch.device(device).type == "cuda" \
        and torch.cuda.is_available()  # else _check says why the device cannot be had
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []):  # the caller's state, untouched
        return _analyze(checkpoints, out=out, measures=measures, quick=quick, device=device, batch_size=batch_size,
                        max_samples=max_samples, seed=seed, model=model, model_args=model_args, data=data,
                        data_args=data_args, loss=loss, loss_args=loss_args, force=force, progress=progress,
                        figures=figures, settings=settings, labels=labels, params=params, budget=budget,
                        dry_run=dry_run)


def _valid_device(device: str) -> bool:
    try:
        torch.device(device)
        return True
    except (RuntimeError, TypeError):
        return False


def _analyze(checkpoints: Any, *, out: Any, measures: Any, quick: Any, device: Any, batch_size: Any, max_samples: Any,
             seed: Any, model: Any, model_args: Any, data: Any, data_args: Any, loss: Any, loss_args: Any, force: Any,
             progress: Any, figures: Any, settings: Any, labels: Any, params: Any, budget: Any, dry_run: Any) -> Report:
    from . import __version__

    start = time.perf_counter()
    names = _check(measures, device, batch_size, max_samples, seed)
    budget = _budget.check_budget(budget)
    overrides = _check_settings(settings, names)
    for name, flag in (("quick", quick), ("force", force), ("figures", figures), ("dry_run", dry_run)):
        require(name, flag, bool)
    if out is not None and not isinstance(out, (str, Path)):
        raise SharpnessError(f"out must be a folder path or None (got {type(out).__name__})")
    items, given = _items(checkpoints, labels)
    params = _check_params(params)
    memory = _memory_data(data)
    for name, arg in (("model_args", model_args), ("data_args", data_args), ("loss_args", loss_args)):
        require(name, arg, dict, optional=True)
    if memory is not None and data_args:
        raise SharpnessError("data_args given, but data are in memory (data_args are for a named data set)")
    if measures is not None and len(items) < 2 and any(MEASURES[n].pair for n in names):
        warnings.warn(f"{', '.join(n for n in names if MEASURES[n].pair)} needs two checkpoints; "
                      "with one it is skipped", stacklevel=3)
    if (model is not None or model_args) and all(isinstance(c, nn.Module) for c in items):
        raise SharpnessError("model / model_args given, but the checkpoints are modules in memory (the two are "
                             "for checkpoint files)")
    spec = None if memory is not None else data

    def load(c: Any) -> Checkpoint:
        if isinstance(c, Checkpoint):
            return c
        if isinstance(c, nn.Module):
            if spec is None and memory is None:
                raise SharpnessError("a model in memory needs its data: pass data=(train, test), data=train or a "
                                     "data set name")
            return Checkpoint.from_module(c, data=spec, data_args=data_args)
        return load_checkpoint(c, model=model, model_args=model_args, data=spec, data_args=data_args)

    ckpts = [load(c) for c in items]
    given_subset = max_samples is not None  # named by the user: a budget keeps it (quick's 1000 it may shrink)
    max_samples = max_samples if max_samples is not None else (1000 if quick else None)
    ctxs = [_context("", c, data=memory, device=device, loss=loss, loss_args=loss_args, batch_size=batch_size,
                     max_samples=max_samples, seed=seed, progress=progress, params=params) for c in ckpts]
    for name in names:  # settings given that the model cannot take (k > P): said before any measure runs
        measure, given_here = MEASURES[name], overrides.get(name)
        if measure.fits is not None and given_here:  # (defaults too large for a tiny model: that measure fails)
            chosen = _settings_of(measure, quick, overrides)
            for c, ctx in zip(ckpts, ctxs):
                why = measure.fits(chosen, ctx.work.num_params)
                if why and not measure.fits(measure.settings_for(quick), ctx.work.num_params):
                    raise SharpnessError(f"{c.where}: settings.{name}: {why}")
    variant = _variant(quick=quick, max_samples=max_samples, seed=seed, overrides=overrides, loss=loss,
                       loss_args=loss_args, params=params, model=model, model_args=model_args, data=data,
                       data_args=data_args, memory=memory, budget=budget)
    shown = [g or (Path(c.path).stem if c.path is not None else f"model{i}") for i, (g, c) in enumerate(zip(given, ckpts))]
    plan = _plan(ctxs, names, quick, overrides, budget, given_subset=given_subset, start=start, labels=shown,
                 show=progress is not False or dry_run, figures=figures and out is not None)
    if dry_run:
        for row in (plan["report"] or {}).get("measures", []):
            row.pop("index")
        return Report(data={"schema": SCHEMA, "version": SCHEMA_VERSION, "plan": plan["report"],
                            "settings": {"variant": variant}, "checkpoints": {}}, out=None)
    rank, world = rank_and_world()
    root = Path(out) if out is not None and rank == 0 else None  # data-parallel: rank 0 writes, once
    with _locked(root):
        out = None if root is None else _target(root, variant)
        if out is not None and out != root:
            make_folder(out)
        previous, arrays = _previous(out)
        for ctx, label in zip(ctxs, _labels(ckpts, given, previous.get("checkpoints", {}))):
            ctx.label = label
        for row in (plan["report"] or {}).get("measures", []):  # the plan's rows under the labels chosen now
            row["checkpoint"] = "→".join(ctxs[i].label for i in row.pop("index"))
        report = {"schema": SCHEMA, "version": SCHEMA_VERSION, "toolkit": __version__, "torch": str(torch.__version__),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "settings": {"quick": quick, "device": device, "seed": seed, "batch_size": batch_size,
                               "max_samples": max_samples, "world_size": world, "variant": variant,
                               "tag": _tag(variant)},
                  # what an earlier run left here is kept unless this run replaces it
                  "checkpoints": dict(previous.get("checkpoints", {})), "pairs": dict(previous.get("pairs", {}))}
        report["figure_style"] = figure_style() if figures else previous.get("figure_style")
        restyle = figures and bool(previous) and previous.get("figure_style") != report["figure_style"]
        report["plan"] = plan["report"]
        run = _Run(out, quick, seed, force, figures, arrays, report, overrides, restyle, plan["budget"])
        for ctx, ckpt in zip(ctxs, ckpts):
            prev = previous.get("checkpoints", {}).get(ctx.label, {})
            data_entry = ckpt.data_spec.to_dict() if ckpt.data_spec and memory is None else None
            if memory is not None:
                data_entry = {"source": "memory", **variant["data"]}
            chosen = {"patterns": params, "count": len(ctx.train.names), "num_params": ctx.train.num_params}
            entry = report["checkpoints"][ctx.label] = {
                "source": ckpt.source, "path": None if ckpt.path is None else str(Path(ckpt.path).resolve()),
                "sha256": ckpt.sha256, "epoch": ckpt.epoch, "step": ckpt.step,
                "model": ckpt.model_spec.to_dict() if ckpt.model_spec else None,
                "data": data_entry, "loss": ctx.train.loss.to_dict(), "params": chosen,
                "n_train": ctx.train.num_samples,
                "examples_per_rank": per_rank(ctx.train.data.num_samples, ctx.train.device) if world > 1 else None,
                # earlier results for these same weights stay, each saying which loss and data it used
                "measures": dict(prev.get("measures", {})) if prev.get("sha256") == ckpt.sha256 else {}}
            subset = ctx.work.num_samples if ctx.work.num_samples < ctx.train.num_samples else None
            tags = {"loss": entry["loss"], "max_samples": subset if budget is not None else max_samples,
                    "data": data_entry, "params": _plain(chosen)}
            for name in (n for n in names if not MEASURES[n].pair):
                run.measure(MEASURES[name], (ctx,), ctx.label, entry["measures"], entry["measures"].get(name), tags)
            ctx.shared.clear()  # the shared Krylov run holds ~steps × P floats: not past its checkpoint
        if figures and out is not None:  # each measure of every checkpoint here, on one scale
            made = run.together(names, [c.label for c in ctxs], ctxs[0].train.loss.label)
            before = {m: [f for f in fs if confined(out, f, "report.json together").exists()]
                      for m, fs in previous.get("together", {}).items()}
            report["together"] = {m: sorted({*before.get(m, []), *made.get(m, [])})
                                  for m in {*before, *made} if before.get(m) or made.get(m)}
        for (i, a), (j, b) in itertools.combinations(enumerate(ctxs), 2):
            key = f"{a.label}→{b.label}"
            tags = {"sha256": [ckpts[i].sha256, ckpts[j].sha256], "loss": a.train.loss.to_dict(),
                    "params": _plain({"patterns": params, "count": len(a.train.names)})}
            for name in (n for n in names if MEASURES[n].pair):
                entry = report["pairs"].setdefault(key, {})
                run.measure(MEASURES[name], (a, b), key, entry, entry.get(name), tags)
        run.save()
    return Report(data=_finite(report), out=out, arrays=arrays)
