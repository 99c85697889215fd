"""One call from checkpoints to a report: every registered measure, arrays and figures, cached.

``analyze`` is what ``python -m sharpness.analyze`` runs. It writes into ``out``:

- ``report.json`` — schema ``sharpness-report`` version 1 (documented in README.md): per checkpoint, its
  SHA-256, specs, loss and, per measure, the record's summary and details with the settings, seed and
  seconds (or ``{"status": "failed", "error": ...}``); per pair of checkpoints, the pair measures.
- ``arrays.npz`` — spectra, grids and lines, keyed ``<label>/<measure>/<name>``.
- the measures' figures (:mod:`sharpness.measures.builtin`).

A measure is recorded in the report only after its arrays and figures are written, and the report is
rewritten after each measure, so an interrupted run keeps its work. A rerun skips a measure already in
the report for the same checkpoint hash, loss, data subset, seed and settings whose arrays and figures
are all there (``force`` recomputes). A measure that fails is recorded with its one-line reason and the
others still run. One run at a time writes a folder: a second one is refused while the first holds it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import itertools
import json
import math
import os
import re
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, load_checkpoint
from .checks import require
from .distributed import from_main, per_rank, rank_and_world
from .errors import SharpnessError
from .io import to_jsonable, write_json, write_npz
from .losses import make_loss
from .measures import builtin  # noqa: F401 - registers the toolkit's measures
from .measures.registry import MEASURES, Context, Measure, Record, headline_keys, measure_names
from .objective import Objective
from .plots.style import current as figure_style
from .plots.style import targets

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
        return {f"{lb}/{m}": r["error"] for lb, ms in entries for m, r in ms.items() if r.get("status") == "failed"}

    def table(self) -> str:
        """The headline numbers the measures declare, one column per checkpoint."""
        labels = list(self.data["checkpoints"])
        width = max(12, *(len(lb) for lb in labels))
        lines = [f"{'':<16}" + "".join(f"{lb:>{width + 2}}" for lb in labels)]
        for measure, key in headline_keys():
            results = [self.data["checkpoints"][lb]["measures"].get(measure) for lb in labels]
            if all(r is None for r in results):
                continue
            cells = [r["status"] if r and "status" in r else key.show((r or {}).get("summary", {}).get(key.name))
                     for r in results]
            if any(c != "—" for c in cells):  # e.g. no accuracy rows for a regression loss
                lines.append(f"{key.column():<16}" + "".join(f"{c:>{width + 2}}" for c in cells))
        for pair, res in self.data.get("pairs", {}).items():
            s = res.get("interpolation", {}).get("summary", {})
            if s:
                lines.append(f"{pair}: max train loss on the segment {_num(s.get('train_max_loss_between'))} "
                             f"(ends {_num(s.get('train_loss_at_0'))} / {_num(s.get('train_loss_at_1'))})")
        lines += [f"{lb}/{m}: {r['status']}: {r['error']}" for lb, e in self.data["checkpoints"].items()
                  for m, r in e["measures"].items() if "status" in r]
        return "\n".join(lines)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else "—"


def _labels(paths: list[Path], previous: dict) -> list[str]:
    """Short unique labels: the file stem, else folder_stem, else stem_hash of the path.

    A label that an earlier entry of the report uses for another file is not taken, so an analysis never
    overwrites another checkpoint's results.
    """
    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", s)

    resolved = [str(Path(p).resolve()) for p in paths]
    for name in (lambda p: p.stem, lambda p: f"{p.parent.name}_{p.stem}"):
        labels = [clean(name(Path(p))) for p in paths]
        if len(set(labels)) == len(labels) and all(
                previous.get(lb, {}).get("path", r) == r for lb, r in zip(labels, resolved)):
            return labels
    return [clean(f"{Path(p).stem}_{hashlib.sha256(r.encode()).hexdigest()[:8]}") for p, r in zip(paths, resolved)]


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
    names = measure_names() if measures is None else list(measures)
    unknown = [m for m in names if m not in MEASURES]
    if unknown or not names:
        raise SharpnessError(f"unknown measure(s): {', '.join(unknown) or '(none given)'}; "
                             f"known: {', '.join(measure_names())}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SharpnessError(f"device must be cpu, cuda or cuda:N (got {device!r})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SharpnessError(f"device '{device}' requested but CUDA is not available on this machine")
    for name, v in (("batch_size", batch_size), ("max_samples", max_samples)):
        require(name, v, int, optional=True, ge=1)
    require("seed", seed, int, ge=0, le=2**32 - 1)
    return names


def _check_settings(settings: Any, names: list[str]) -> dict[str, dict]:
    """Per-measure setting overrides: measures that run, keys they have, values of their defaults' types."""
    require("settings", settings, dict, optional=True)
    for name, over in (settings or {}).items():
        if name not in names:
            raise SharpnessError(f"settings names measure {name!r}, which does not run; measures: {', '.join(names)}")
        MEASURES[name].check_overrides(over, f"settings.{name}")
    return dict(settings or {})


def _context(label: str, ckpt: Checkpoint, *, device: str, loss: Any, loss_args: dict | None,
             batch_size: int | None, max_samples: int | None, seed: int, progress: bool | None) -> Context:
    """The checkpoint's model and objectives, tried on two examples so bad input fails before any work."""
    train, test = ckpt.datasets()  # first: a data set that cannot be had is the first thing to say
    model = ckpt.model(device)
    if loss is not None:
        fn = make_loss(loss, loss_args)
    elif ckpt.loss_spec is not None:  # named by the checkpoint: never imported from site-packages
        fn = make_loss(ckpt.loss_spec.name, {**ckpt.loss_spec.args, **(loss_args or {})}, trusted=False)
    else:
        fn = make_loss("cross_entropy", loss_args)
    tr = Objective(model, fn, train, batch_size=batch_size)
    te = Objective(model, fn, test, batch_size=batch_size) if test is not None else None
    try:  # the same two examples on every rank, no collective: a failure cannot leave other ranks waiting
        Objective(model, fn, tr.all.examples(torch.arange(min(2, tr.all.num_samples or 2))),
                  distributed=False).evaluate()
    except SharpnessError:
        raise
    except Exception as e:  # the user's model or loss raising on the user's data: bad input, one line
        raise SharpnessError(f"{ckpt.path}: the model (with loss '{fn.name}') does not accept the data "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    return Context(label, model, tr.subset(max_samples, seed, batch_size=batch_size), tr, te, seed, batch_size,
                   progress, ckpt.path)


@contextlib.contextmanager
def _locked(out: Path | None) -> Iterator[None]:
    """Hold ``out/.lock`` for the run; a second run on the same folder is refused, not interleaved."""
    if out is None:
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SharpnessError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(out, os.W_OK):
        raise SharpnessError(f"--out {out}: the folder is not writable")
    with open(out / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SharpnessError(f"{out}: another analysis is writing this folder; wait for it or use --out") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _previous(out: Path | None) -> tuple[dict, dict]:
    """The report and arrays of an earlier run, if usable; a corrupt file is set aside with a warning."""
    if out is None or not (out / "report.json").exists():
        return {}, {}
    try:
        report = json.loads((out / "report.json").read_text())
        if not isinstance(report, dict) or report.get("schema") != SCHEMA or report.get("version") != SCHEMA_VERSION \
                or not isinstance(report.get("checkpoints"), dict):
            raise ValueError("not a sharpness report")
        arrays = {}
        if (out / "arrays.npz").exists():
            with np.load(out / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        return report, arrays
    except Exception as e:  # unreadable in any way (truncated zip, wrong shape): set aside, never fatal
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        for name in ("report.json", "arrays.npz"):
            if (out / name).exists():
                (out / name).rename(out / f"{name}.corrupt-{stamp}")
        warnings.warn(f"{out}: previous results unreadable ({e}); set aside as *.corrupt-{stamp}, recomputing",
                      stacklevel=3)
        return {}, {}


class _Run:
    """One analysis writing one folder: runs measures, reuses cached ones, saves arrays → figures → report."""

    def __init__(self, out: Path | None, quick: bool, seed: int, force: bool, figures: bool, arrays: dict,
                 report: dict, overrides: dict, restyle: bool):
        self.out, self.quick, self.seed, self.force, self.figures = out, quick, seed, force, figures
        self.arrays, self.report, self.overrides = arrays, report, overrides
        self.restyle = restyle  # another style or dpi than the figures here were drawn in: draw them again

    def cached(self, old: dict | None, settings: dict, tags: dict) -> bool:
        """An earlier result for the same settings, seed, data and inputs, with its arrays."""
        return not self.force and bool(old) and "summary" in old and old.get("settings") == settings \
            and old.get("seed") == self.seed and all(old.get(t) == v for t, v in tags.items()) \
            and all(k in self.arrays for k in old.get("arrays", []))

    def redraw(self, measure: Measure, old: dict, ctxs: tuple) -> None:
        """Draw a cached result's figures again when a file is missing (deleted, or another --format asked)."""
        if not (self.figures and self.out is not None and old.get("figures")):
            return
        stems = {Path(f).with_suffix(".png").name for f in old["figures"]}
        if not self.restyle and all(t.exists() for s in stems for t in targets(self.out / s)):
            return
        arrays = {k.rsplit("/", 1)[1]: self.arrays[k] for k in old.get("arrays", [])}
        rec = Record(old["summary"], old.get("details", {}), arrays)
        made = measure.draw(rec, self.out, tuple(c.label for c in ctxs), ctxs[0].train.loss.label)
        kept = [f for f in old["figures"] if (self.out / f).exists() and not self.restyle]
        old["figures"] = sorted({*kept, *(p.name for p in made)})

    def measure(self, measure: Measure, ctxs: tuple, key: str, entry: dict, old: dict | None, tags: dict) -> None:
        """Run (or reuse) one measure; record it in ``entry`` once its arrays and figures are written."""
        chosen = {**measure.settings_for(self.quick), **self.overrides.get(measure.name, {})}
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
        if not finite:
            # a diverged model: curvature of a NaN loss is noise, and the solvers would fail obscurely
            entry[measure.name] = {"status": "skipped", "error": f"the training loss is not finite ({loss})",
                                   "settings": settings, "seed": self.seed}
            return
        t0 = time.perf_counter()
        try:
            rec = measure.run(*ctxs, settings=chosen)
            keys = [f"{key}/{measure.name}/{k}" for k in rec.arrays]
            self.arrays.update({k: np.asarray(v) for k, v in zip(keys, rec.arrays.values())})
            if self.out is not None and rec.arrays:
                write_npz(self.out / "arrays.npz", self.arrays)
            made = measure.draw(rec, self.out, tuple(c.label for c in ctxs), ctxs[0].train.loss.label) \
                if self.figures and self.out is not None else []
            result = {"summary": rec.summary, "details": rec.details, "arrays": keys, "figures": [p.name for p in made]}
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one measure's failure (bad settings for this model included) spares the others
            last = traceback.extract_tb(e.__traceback__)[-1]
            reason = (str(e).strip().splitlines() or [""])[0][:300]
            result = {"status": "failed",
                      "error": f"{type(e).__name__}: {reason} ({Path(last.filename).name}:{last.lineno})"}
        entry[measure.name] = {**result, "settings": settings, "seed": self.seed, **tags,
                               "seconds": time.perf_counter() - t0}
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


def analyze(checkpoints: Any, *, out: str | Path | None = "analysis", measures: list[str] | None = None,
            quick: bool = False, device: str = "cpu", batch_size: int | None = None,
            max_samples: int | None = None, seed: int = 0, model: str | Callable | nn.Module | None = None,
            model_args: dict | None = None, data: Any = None, data_args: dict | None = None, loss: Any = None,
            loss_args: dict | None = None, force: bool = False, progress: bool | None = None,
            figures: bool = True, settings: dict[str, dict] | None = None) -> Report:
    """Analyze one or more checkpoints (paths or loaded :class:`Checkpoint` objects) with every measure.

    Every measure is of the mean loss over the data set (:mod:`sharpness.losses`).

    Args:
        checkpoints: a path, a Checkpoint, or a list of them.
        out: output folder (None: nothing written, no caching).
        measures: names of registered measures (default: all; pair measures need two checkpoints).
        quick: the measures' quick settings and a 1000-example subset unless ``max_samples`` says otherwise.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: evaluate data in batches of this size (memory only; results are full-data means).
        max_samples: a fixed random subset of the training data for curvature and sharpness.
        seed: seed of every random choice.
        model: for bare state_dicts (or to override): a registered name, ``"pkg.module:factory"``, a
            factory or a module.
        model_args: the factory's keyword arguments.
        data: for bare state_dicts (or to override): a data set name or ``"pkg.module:fn"``.
        data_args: the data function's keyword arguments.
        loss: a loss name, ``"pkg.module:fn"`` or callable (default: the checkpoint's loss, else
            cross-entropy).
        loss_args: the loss's keyword arguments (e.g. ``{"reduction": "sum"}``).
        force: recompute measures already in the report.
        progress: progress bars (None: on a terminal only).
        figures: write the measures' figures.
        settings: per-measure settings over the defaults (and the quick ones), e.g.
            ``{"interpolation": {"path": "sin"}}``; each key must be one the measure has.

    Raises:
        SharpnessError: bad input of any kind, before anything is written.
    """
    from . import __version__

    names = _check(measures, device, batch_size, max_samples, seed)
    overrides = _check_settings(settings, names)
    for name, flag in (("quick", quick), ("force", force), ("figures", figures)):
        require(name, flag, bool)
    if out is not None and not isinstance(out, (str, Path)):
        raise SharpnessError(f"out must be a folder path or None (got {type(out).__name__})")
    items = checkpoints if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    if not items:
        raise SharpnessError("no checkpoint given")
    if measures is not None and len(items) < 2 and any(MEASURES[n].pair for n in names):
        warnings.warn(f"{', '.join(n for n in names if MEASURES[n].pair)} needs two checkpoints; "
                      "with one it is skipped", stacklevel=2)
    ckpts = [c if isinstance(c, Checkpoint) else load_checkpoint(c, model=model, model_args=model_args, data=data,
                                                                 data_args=data_args) for c in items]
    max_samples = max_samples if max_samples is not None else (1000 if quick else None)
    ctxs = [_context("", c, device=device, loss=loss, loss_args=loss_args, batch_size=batch_size,
                     max_samples=max_samples, seed=seed, progress=progress) for c in ckpts]
    rank, world = rank_and_world()
    out = Path(out) if out is not None and rank == 0 else None  # data-parallel: rank 0 writes, once
    with _locked(out):
        previous, arrays = _previous(out)
        for ctx, label in zip(ctxs, _labels([c.path for c in ckpts], previous.get("checkpoints", {}))):
            ctx.label = label
        report = {"schema": SCHEMA, "version": SCHEMA_VERSION, "toolkit": __version__, "torch": str(torch.__version__),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "settings": {"quick": quick, "device": device, "seed": seed, "batch_size": batch_size,
                               "max_samples": max_samples, "world_size": world},
                  # what an earlier run left here is kept unless this run replaces it
                  "checkpoints": dict(previous.get("checkpoints", {})), "pairs": dict(previous.get("pairs", {}))}
        report["figure_style"] = figure_style() if figures else previous.get("figure_style")
        restyle = figures and bool(previous) and previous.get("figure_style") != report["figure_style"]
        run = _Run(out, quick, seed, force, figures, arrays, report, overrides, restyle)
        for ctx, ckpt in zip(ctxs, ckpts):
            prev = previous.get("checkpoints", {}).get(ctx.label, {})
            entry = report["checkpoints"][ctx.label] = {
                "path": str(Path(ckpt.path).resolve()), "sha256": ckpt.sha256, "epoch": ckpt.epoch,
                "step": ckpt.step, "model": ckpt.model_spec.to_dict() if ckpt.model_spec else None,
                "data": ckpt.data_spec.to_dict() if ckpt.data_spec else None, "loss": ctx.train.loss.to_dict(),
                "n_train": ctx.train.num_samples,
                "examples_per_rank": per_rank(ctx.train.data.num_samples, ctx.train.device) if world > 1 else None,
                # earlier results for these same weights stay, each saying which loss and data it used
                "measures": dict(prev.get("measures", {})) if prev.get("sha256") == ckpt.sha256 else {}}
            tags = {"loss": entry["loss"], "max_samples": max_samples}
            for name in (n for n in names if not MEASURES[n].pair):
                run.measure(MEASURES[name], (ctx,), ctx.label, entry["measures"], entry["measures"].get(name), tags)
            ctx.shared.clear()  # the shared Krylov run holds ~steps × P floats: not past its checkpoint
        if figures and out is not None:  # each measure of every checkpoint here, on one scale
            made = run.together(names, [c.label for c in ctxs], ctxs[0].train.loss.label)
            before = {m: [f for f in fs if (out / f).exists()] for m, fs in previous.get("together", {}).items()}
            report["together"] = {m: sorted({*before.get(m, []), *made.get(m, [])})
                                  for m in {*before, *made} if before.get(m) or made.get(m)}
        for (i, a), (j, b) in itertools.combinations(enumerate(ctxs), 2):
            key = f"{a.label}→{b.label}"
            tags = {"sha256": [ckpts[i].sha256, ckpts[j].sha256], "loss": a.train.loss.to_dict()}
            for name in (n for n in names if MEASURES[n].pair):
                entry = report["pairs"].setdefault(key, {})
                run.measure(MEASURES[name], (a, b), key, entry, entry.get(name), tags)
        run.save()
    return Report(data=_finite(report), out=out, arrays=arrays)
