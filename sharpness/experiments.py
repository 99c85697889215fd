"""Experiments: a TOML file → a grid of training runs, the analyses its figures need, and the figures.

An experiment file (``experiments/NAME.toml``) has::

    name = "quickstart"
    [base]      TrainConfig fields shared by every run
    [grid]      fields whose values are crossed (e.g. batch_size = [32, 800], seed = [0, 1])
    [analysis]  measures = [...], quick, max_samples, settings = {measure = {key = value}},
                pairs = [[run_a, run_b], ...] for interpolation ([run_a, run_b, "sin"] for Keskar's
                curved path), along_training = [...] measures at every saved checkpoint (quick
                settings unless along_quick = false)
    [figures]   kinds = [...] (see sharpness.plots.experiments.FIGURES: table, curves, parametric, esd,
                surface, sharpness_vs_loss, batch_sweep, gap, gap_scatter, warm_start, cost), and per
                kind a table of options (e.g. gap = {title = "..."})

A variant may start from another run's checkpoint: ``init_from = "@SB/ckpt_epoch3.pt"`` names the run of
variant ``SB`` with the same grid values (the same seed, say); such runs train after the runs they start
from (Keskar's warm starts, Fig. 5).

Runs live in ``runs/NAME/<label>-<hash of config>/`` (resumed, and skipped when their ``done`` marker
exists); ``--jobs N`` trains independent runs in parallel processes. The results — every run's config,
history and analysis summaries, and the arrays the figures need — are collected in
``results/NAME/results.json`` (a scratch folder; ``figures_root="figures"``, ``--figures figures`` on the
command line, regenerates the committed paper figures), and the figures are drawn from that file only.

An experiment is named by its TOML file's path, or by its bare name (``quickstart``): the experiments
that ship with the package (:func:`find_experiment`), so they run after a non-editable install too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import re
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checks import check_settings, require
from .distributed import is_main, rank_and_world
from .errors import SharpnessError, printable
from .errors import short as _short
from .io import confined, read_text, write_json
from .training import TrainConfig

__all__ = ["load_experiment", "expand", "run_experiment", "find_experiment", "packaged_experiments"]

# The committed experiments/ folder, shipped in the package as sharpness/experiments_data (a symbolic link
# to ../experiments in the source tree: one copy of each file; pyproject's package-data takes its TOMLs).
_PACKAGED = Path(__file__).resolve().parent / "experiments_data"


def packaged_experiments() -> dict[str, Path]:
    """The experiments that ship with the package: name → TOML file."""
    root = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "experiments"
    return {p.stem: p for p in sorted(root.glob("*.toml"))} if root.is_dir() else {}


def find_experiment(path: str | Path) -> Path:
    """The TOML file of an experiment: ``path`` itself when it exists, else a packaged experiment.

    A bare name (``quickstart`` or ``quickstart.toml``) and a missing ``experiments/NAME.toml`` (the
    README's command run from another folder) name the packaged ``NAME.toml``.

    Raises:
        SharpnessError: neither a file nor a packaged experiment.
    """
    p = Path(path)
    if p.exists():
        return p
    bare = len(p.parts) == 1
    if bare or (len(p.parts) == 2 and p.parts[0] == "experiments" and not p.is_absolute()):
        name = p.name.removesuffix(".toml") if p.suffix in ("", ".toml") else None
        packaged = packaged_experiments()
        if name in packaged:
            return packaged[name]
        if bare or name is not None:
            raise SharpnessError(f"{str(path)!r}: no such experiment file, and no packaged experiment of that "
                                 f"name; packaged: {', '.join(packaged) or 'none'}")
    return p


MAX_RUNS = 10_000  # runs in one experiment: a larger grid is refused before it is expanded
MAX_DEPTH = 32  # nesting of tables and lists in an experiment (a 500-deep value is refused in one line)
_SEED = {"ge": 0, "le": 2**32 - 1}  # as TrainConfig.seed


def _read_experiment(path: Path) -> dict:
    """The TOML of an experiment, read as a regular file only (a FIFO cannot hang it); one line on failure."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        text = read_text(path, "experiment TOML file")
    except FileNotFoundError:
        raise SharpnessError(f"{path}: no such experiment TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SharpnessError(f"{path}: not valid TOML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise SharpnessError(f"{path}: not valid TOML: nested too deeply") from None
    except ValueError as e:  # an integer of thousands of digits (Python's int-to-str limit)
        raise SharpnessError(f"{path}: not valid TOML: {' '.join(str(e).split())[:120]}") from None


def _json_value(item: str, text: str) -> Any:
    """A ``--set`` value read as JSON where it parses (else the text); too large or deep: one line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
    except RecursionError:
        raise SharpnessError(f"--set {_short(item, 60)}: the value is nested too deeply") from None
    except ValueError as e:  # 5000-digit integers
        raise SharpnessError(f"--set {_short(item, 60)}: {' '.join(str(e).split())[:120]}") from None


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether tables and lists nest deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if depth >= limit:
                return True
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _huge_int(value: Any) -> str | None:
    """Where (a dotted path) an integer in ``value`` is beyond 64 bits, else None (walked without recursion)."""
    stack = [(value, "")]
    while stack:
        v, where = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, f"{where}.{k}" if where else str(k)) for k, x in v.items())
        elif isinstance(v, (list, tuple)):
            stack.extend((x, f"{where}[{i}]") for i, x in enumerate(v))
        elif isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
            return where
    return None


def _number_of_runs(spec: dict) -> int:
    """The product of the grid's list lengths times the variants, without expanding anything."""
    n = 1
    for values in spec.get("grid", {}).values():
        n *= len(values)
        if n > MAX_RUNS:
            break
    return n * max(1, len(spec.get("variants", []) or []))


def _set(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(k.strip() for k in keys):
        raise SharpnessError(f"--set {_short(dotted, 60)}: every part of section.key must be a name")
    for i, k in enumerate(keys[:-1]):
        d = d.setdefault(k, {})
        if not isinstance(d, dict):  # e.g. --set base.epochs.x=5: epochs is a number, not a table
            raise SharpnessError(f"--set {dotted}: {'.'.join(keys[:i + 1])} is {_short(d)}, not a table")
    d[keys[-1]] = value


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read an experiment TOML (a path or a packaged experiment's name, see :func:`find_experiment`).

    ``overrides`` are ``section.key=value`` strings (value parsed as JSON).
    """
    path = find_experiment(path)
    spec = _read_experiment(path)
    for item in overrides or []:
        if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
            raise SharpnessError(f"--set expects section.key=value, e.g. --set base.epochs=3 (got {_short(item, 60)})")
        key, value = item.split("=", 1)
        value = _json_value(item, value)
        key = key.strip()
        _set(spec, key if "." in key else f"base.{key}", value)
    spec.setdefault("name", path.stem)
    try:
        _validate(spec)
    except SharpnessError as e:
        raise SharpnessError(f"{path}: {e}") from None
    return spec


# [analysis] keys and their allowed values (read by _validate; the runner reads the same keys)
_ANALYSIS = {"measures": (list, {"item": str}), "quick": (bool, {}), "max_samples": (int, {"optional": True, "ge": 1}),
             "seed": (int, {}), "pairs": (list, {"item": list}), "along_training": (list, {"item": str}),
             "along_quick": (bool, {}), "settings": (dict, {})}
_FOLDER = (lambda s: re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}", s) is not None,
           "a folder name of at most 100 letters, digits, '_', '.', '+', '-', not starting with '.'")


def _validate(spec: dict) -> None:
    """Check an experiment's shape before any training: a bad key found after hours of work is lost time."""
    from .measures.registry import MEASURES
    from .plots.experiments import check_figures

    unknown = sorted(set(spec) - {"name", "base", "grid", "variants", "analysis", "figures"})
    if unknown:
        raise SharpnessError(f"unknown section(s) {', '.join(unknown)}; an experiment has name, base, grid, "
                             "variants, analysis, figures")
    if _too_deep(spec):
        raise SharpnessError(f"tables and lists nest more than {MAX_DEPTH} levels deep")
    huge = _huge_int(spec)
    if huge is not None:
        raise SharpnessError(f"{printable(huge, 200)}: an integer beyond 64 bits (no setting takes one)")
    require("name", spec["name"], str, check=_FOLDER)
    for section in ("base", "grid", "analysis", "figures"):
        require(section, spec.get(section, {}), dict)
    fields = {o.name for o in TrainConfig.options()}
    unknown = sorted(set(spec.get("base", {})) - fields)
    if unknown:
        raise SharpnessError(f"base: unknown field(s) {', '.join(map(str, unknown))} (not TrainConfig fields)")
    _check_grid(spec.get("grid", {}), fields)
    _check_variants(require("variants", spec.get("variants", []), list, item=dict), fields)
    n = _number_of_runs(spec)
    if n > MAX_RUNS:
        raise SharpnessError(f"the grid and variants make {'more than ' if n > MAX_RUNS else ''}{MAX_RUNS} runs "
                             f"(at most {MAX_RUNS} in one experiment): split it into several experiments")
    an = spec.get("analysis", {})
    extra = sorted(set(an) - set(_ANALYSIS))
    if extra:
        raise SharpnessError(f"unknown analysis key(s) {', '.join(extra)}; known: {', '.join(_ANALYSIS)}")
    for key, (typ, rules) in _ANALYSIS.items():
        if key in an:
            require(f"analysis.{key}", an[key], typ, **rules)
    if "seed" in an:
        require("analysis.seed", an["seed"], int, **_SEED)
    if an.get("max_samples") is not None:
        require("analysis.max_samples", an["max_samples"], int, ge=1, le=10**9)
    for key in ("measures", "along_training"):
        for m in an.get(key, []):
            require(f"analysis.{key}[]", m, str, choices=tuple(MEASURES))
        twice = sorted({m for m in an.get(key, []) if an[key].count(m) > 1})
        if twice:
            raise SharpnessError(f"analysis.{key} lists {', '.join(twice)} twice")
    for m, over in an.get("settings", {}).items():
        require("analysis.settings measure", m, str, choices=tuple(MEASURES))
        check_settings(MEASURES[m], over, f"analysis.settings.{m}")
    for pair in an.get("pairs", []):
        require("analysis.pairs[]", pair, list, item=str)
        if len(pair) not in (2, 3) or (len(pair) == 3 and pair[2] not in ("linear", "sin")):
            raise SharpnessError(f"analysis.pairs[] must be [run_a, run_b] or [run_a, run_b, path] with path "
                                 f"'linear' or 'sin' (got {pair!r})")
    # the figures' own check (kinds, each kind's options and ranges, curves panels, file names confined):
    # the one the drawing runs, here before any training
    check_figures(spec.get("figures", {}))


def _check_variants(variants: list, fields: set) -> None:
    names = []
    for i, v in enumerate(variants):
        name = v.get("name", "")
        if name != "":  # becomes part of a folder name: no path separators, no "." or ".."
            require(f"variants[{i}].name", name, str, check=_FOLDER)
        names.append(name)
        unknown = sorted(set(v) - fields - {"name"})
        if unknown:
            raise SharpnessError(f"variants[{i}] ({name or 'unnamed'}): unknown field(s) "
                                 f"{', '.join(map(str, unknown))} (not TrainConfig fields)")
    if len(names) > 1 and "" in names:
        raise SharpnessError("variants: every variant needs a name when there are several")
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise SharpnessError(f"variants: duplicate name(s) {', '.join(sorted(map(str, seen)))}; each variant "
                             "names its own runs")


def _check_grid(grid: dict, fields: set) -> None:
    unknown = sorted(set(grid) - fields)
    if unknown:
        raise SharpnessError(f"grid: unknown field(s) {', '.join(map(str, unknown))} (not TrainConfig fields)")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SharpnessError(f"grid.{key} must be a non-empty list of values (got {_short(values)})")
        shown = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(shown)) != len(shown):
            raise SharpnessError(f"grid.{key} lists a value twice (got {_short(values)}): the runs would be the same")


_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")


def _label(values: dict) -> str:
    """The run label of grid values; a separator or control character in a value becomes '_' (one folder name)."""
    text = "-".join(f"{'B' if k == 'batch_size' else k}{v}" if k in ("batch_size", "seed") else f"{k}{v}"
                    for k, v in values.items()).replace(" ", "")
    return _UNSAFE.sub("_", text)


def _run_label(variant: str, values: dict) -> str:
    return "-".join(s for s in (variant, _label(values)) if s)


def expand(spec: dict) -> list[tuple[str, TrainConfig]]:
    """The (label, config) of every run: the base crossed with the grid, then any named variants.

    An ``init_from`` of ``"@VARIANT/FILE"`` stays a reference here (see :func:`resolve_references`).
    """
    base = dict(spec.get("base", {}))
    grid = spec.get("grid", {})
    keys = list(grid)
    runs = []
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        values = dict(zip(keys, combo))
        for variant in spec.get("variants", [{"name": ""}]):
            v = {k: val for k, val in variant.items() if k != "name"}
            cfg = TrainConfig.from_dict({**base, **values, **v})
            init = cfg.init_from
            if init is not None and init.startswith("@"):  # "@VARIANT/FILE": that variant, same grid values
                ref, _, file = init[1:].partition("/")
                cfg.init_from = f"@{_run_label(ref, values)}/{file}"
            runs.append((_run_label(variant.get("name", ""), values), cfg))
    return runs


_STARTS = re.compile(r"init\.pt|final\.pt|ckpt_epoch(\d+)\.pt|ckpt_step(\d+)\.pt")


def resolve_references(runs: list[tuple[str, TrainConfig]], root: Path, name: str) -> dict[str, Path]:
    """Each run's folder, with ``init_from = "@LABEL/FILE"`` replaced by that run's file (checked it will exist).

    The referenced run's folder (its config hash) becomes part of the referring run's config, so a
    changed starting run is a new warm-started run too.
    """
    configs = dict(runs)
    dirs = {label: run_dir(root, name, label, cfg) for label, cfg in runs
            if not (cfg.init_from or "").startswith("@")}
    for label, cfg in runs:
        if not (cfg.init_from or "").startswith("@"):
            continue
        ref, _, file = cfg.init_from[1:].partition("/")
        if ref not in dirs:
            raise SharpnessError(f"run {label}: init_from names run {ref!r}, which is not a run of this experiment "
                                 f"that starts from scratch; runs: {', '.join(dirs)}")
        m = _STARTS.fullmatch(file)
        src = configs[ref]
        if m is None or (m.group(1) and (not src.save_every or int(m.group(1)) % src.save_every
                                         or int(m.group(1)) > src.epochs)) \
                or (m.group(2) and int(m.group(2)) not in src.save_steps):
            raise SharpnessError(f"run {label}: init_from '@{ref}/{file}' is not a checkpoint run {ref} writes "
                                 "(init.pt, final.pt, ckpt_epochN.pt every save_every epochs, ckpt_stepS.pt "
                                 "for save_steps)")
        cfg.init_from = str(dirs[ref] / file)
        dirs[label] = run_dir(root, name, label, cfg)
    return {label: dirs[label] for label, _ in runs}


def run_dir(root: Path, name: str, label: str, cfg: TrainConfig) -> Path:
    """``root/name/<label>-<hash>``: the hash names the exact config, so a changed config is a new run.

    Only fields that differ from their defaults are hashed, so adding a field to ``TrainConfig`` (with a
    default that keeps the old behaviour) leaves existing run folders valid.
    """
    defaults = TrainConfig().to_dict()
    changed = {k: v for k, v in cfg.to_dict().items() if v != defaults[k]}
    digest = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:10]
    return confined(confined(root, name, "experiment name"), f"{label}-{digest}", f"run folder of {label!r}")


def _train_one(args: tuple) -> str:
    cfg_dict, out, progress = args
    from .training import train

    train(TrainConfig.from_dict(cfg_dict), out, progress=progress)
    return out


_CODE_FIELDS = ("model", "dataset", "loss")  # the TrainConfig fields that name code


def typed_names(overrides: list[str] | None) -> set[str]:
    """The model, data set and loss names the user typed in ``--set`` overrides (exactly those values).

    ``--set base.model=mynets:make``, ``--set grid.model=["a:b","c:d"]``, and such keys inside a table
    or list a ``--set`` gives (``variants=[{"model": ...}]``).
    """
    names: set[str] = set()
    for item in overrides or []:
        key, _, text = str(item).partition("=")
        stack = [(key.strip().split(".")[-1], _json_value(item, text))]
        while stack:
            field, value = stack.pop()
            if isinstance(value, dict):
                stack.extend(value.items())
            elif isinstance(value, list):
                stack.extend((field, v) for v in value)
            elif field in _CODE_FIELDS and isinstance(value, str):
                names.add(value)
    return names


def _check_runs(runs: list, figures_root: Path, where: str, typed: set[str]) -> None:
    """Check that every run's model, data set and loss can be had, and that the figures folder can be made.

    Said before the first run trains, not after it. The names are read from the TOML ``where``: code
    they name is judged by the import policy (:mod:`sharpness.specs`) unless the user typed the name
    in an override (``typed``).
    """
    from .data import DATASETS
    from .losses import LOSSES, make_loss
    from .models import MODELS

    labels = [label for label, _ in runs]
    twice = sorted({lb for lb in labels if labels.count(lb) > 1})
    if twice:
        raise SharpnessError(f"runs {', '.join(twice[:5])} would share one label (and folder): grid values or "
                             "variant names that read the same")
    for label, cfg in runs:
        for registry, name in ((MODELS, cfg.model), (DATASETS, cfg.dataset), (LOSSES, cfg.loss)):
            if name not in typed:
                registry.screen(name, where)
        MODELS.resolve(cfg.model, trusted=True)
        DATASETS.resolve(cfg.dataset, trusted=True)
        make_loss(cfg.loss, cfg.loss_args)
        require("run label", label, str, check=(lambda s: len(s) <= 150, "at most 150 characters"))
        init = cfg.init_from
        if init is not None and not init.startswith("@"):  # a file of the user's: read only, must exist
            p = Path(init).expanduser()
            if not p.is_file():
                raise SharpnessError(f"run {label}: init_from {_short(init, 200)} is not a file "
                                     f"({'no such file' if not p.exists() else 'not a regular file'})")
    if figures_root.exists() and not figures_root.is_dir():
        raise SharpnessError(f"--figures {figures_root}: is a file, not a folder")


def _settings(an: dict, measures: list[str]) -> dict:
    """The [analysis] settings of the measures that run."""
    return {m: v for m, v in an.get("settings", {}).items() if m in measures}


def _warn_failed(report, where) -> None:
    for name, why in report.failed.items():
        warnings.warn(f"{where}: measure {name} failed: {why}", stacklevel=3)


def run_experiment(path: str | Path, *, runs_root: str | Path = "runs", figures_root: str | Path = "results",
                   jobs: int = 1, overrides: list[str] | None = None, progress: bool | None = None) -> Path:
    """Train every run of the experiment (resuming/skipping finished ones), analyze, collect, draw.

    ``figures_root`` is where ``NAME/results.json`` and the figures go: ``results`` (a scratch folder) by
    default; ``"figures"`` regenerates the committed paper figures.

    Returns:
        The results file (``figures_root/NAME/results.json``).
    """
    from .analysis import analyze
    from .checkpoint import load_checkpoint
    from .plots.experiments import draw
    from .reporting import groups

    require("jobs", jobs, int, ge=1)
    world = rank_and_world()[1]
    if world > 1 and jobs > 1:
        raise SharpnessError(f"jobs {jobs}: under torchrun the {world} processes train each run together; use --jobs 1")
    spec = load_experiment(path, overrides)
    name = spec["name"]
    runs = expand(spec)
    _check_runs(runs, Path(figures_root), str(path), typed_names(overrides))  # before references become paths
    dirs = resolve_references(runs, Path(runs_root), name)
    # Folders the runner names (not the user): a symlink placed at one would take every file elsewhere.
    for d in {*dirs.values(), *(d.parent for d in dirs.values()), Path(figures_root) / name}:
        if d.is_symlink():
            raise SharpnessError(f"{printable(d, 300)}: is a symlink; the runner writes only into folders it makes "
                                 "(remove the link, or name its target with --runs / --figures)")
    for pair in spec.get("analysis", {}).get("pairs", []):  # before training, not after
        if pair[0] not in dirs or pair[1] not in dirs:
            raise SharpnessError(f"analysis.pairs names unknown runs {pair[0]!r}, {pair[1]!r}; runs are {list(dirs)}")
        stem = f"parametric_{pair[0]}_{pair[1]}_{pair[2] if len(pair) > 2 else 'linear'}.png"
        if len(stem.encode()) > 255:  # the pair's figure file: a name the file system takes
            raise SharpnessError(f"analysis.pairs {_short(pair[:2], 120)}: the labels make a figure file name of "
                                 f"{len(stem.encode())} bytes (at most 255): shorten the variant names")
    grouped = groups({label: None for label, _ in runs})
    for i, curve in enumerate(spec.get("figures", {}).get("curves", []) or []):
        unknown = [g for g in curve.get("groups") or [] if g not in grouped]
        if unknown:
            raise SharpnessError(f"figures.curves[{i}].groups names unknown group(s) {_short(unknown, 120)}; "
                                 f"groups are {_short(list(grouped), 200)}")
    started = {str(d) for d in dirs.values()}
    # Two phases: runs that start from another run's checkpoint train after every run from scratch.
    for phase in (False, True):
        todo = [(cfg.to_dict(), str(dirs[label]), progress if jobs == 1 else False) for label, cfg in runs
                if not (dirs[label] / "done").exists()
                and (cfg.init_from is not None and str(Path(cfg.init_from).parent) in started) == phase]
        if jobs > 1 and len(todo) > 1:
            # spawn, not fork: a forked child of a process whose OpenMP pool is running can deadlock.
            with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                list(pool.map(_train_one, todo))
        else:
            for t in todo:
                _train_one(t)

    an = spec.get("analysis", {})
    results: dict = {"name": name, "spec": spec, "runs": {}, "pairs": {}}
    for label, cfg in runs:
        d = dirs[label]
        ckpt = load_checkpoint(d / "final.pt")
        entry: dict = {"config": cfg.to_dict(), "history": ckpt.history, "dir": str(d)}
        if "trace" in ckpt.extra:  # trace_log_steps: ‖w − w₀‖ at log-spaced updates
            entry["trace"] = ckpt.extra["trace"]
        if "tracked" in ckpt.extra:  # track_every: curvature along training (sharpness.tracker)
            entry["tracked"] = ckpt.extra["tracked"]
        measures = [m for m in an.get("measures", []) if m != "interpolation"]
        if measures:
            rep = analyze(d / "final.pt", out=d / "analysis", measures=measures, quick=an.get("quick", False),
                          settings=_settings(an, measures),
                          max_samples=an.get("max_samples"), seed=an.get("seed", 0), progress=progress,
                          figures=False)
            _warn_failed(rep, d)
            entry["final"] = {m: v["summary"] for m, v in rep.data["checkpoints"]["final"]["measures"].items()
                              if "summary" in v}
            wanted = {"density/grid", "density/density", "density/nodes", "density/weights", "landscape2d/loss",
                      "landscape2d/acc", "landscape2d/axis0", "landscape2d/axis1"}
            # NaN nodes (a Lanczos run that stopped early) carry weight 0: stored as 0 in strict JSON
            entry["arrays"] = {k.split("/", 1)[1]: np.nan_to_num(v).tolist() for k, v in rep.arrays.items()
                               if k.startswith("final/") and k.split("/", 1)[1] in wanted}
        along = an.get("along_training")
        if along:  # sharpness at the checkpoints saved along the way (Keskar Fig. 6)
            entry["along"] = []
            for p in sorted(d.glob("ckpt_epoch*.pt"), key=lambda q: int(q.stem.replace("ckpt_epoch", ""))):
                rep = analyze(p, out=d / "analysis_along" / p.stem, measures=along,
                              quick=an.get("along_quick", True), settings=_settings(an, along), max_samples=an.get("max_samples"), seed=an.get("seed", 0), progress=False,
                              figures=False)
                lab = next(iter(rep.data["checkpoints"]))
                c = load_checkpoint(p)
                _warn_failed(rep, p)
                entry["along"].append({"epoch": c.epoch, "train_loss": c.history[-1]["train_loss"],
                                       **{m: v["summary"] for m, v in rep.data["checkpoints"][lab]["measures"].items()
                                          if "summary" in v}})
        results["runs"][label] = entry
    for a, b, *path in an.get("pairs", []):
        path = path[0] if path else "linear"
        curved = "" if path == "linear" else f"_{path}"
        rep = analyze([dirs[a] / "final.pt", dirs[b] / "final.pt"], out=dirs[a] / f"pair_{b}{curved}",
                      measures=["interpolation"], quick=an.get("quick", False), progress=progress, figures=False,
                      settings={"interpolation": {**an.get("settings", {}).get("interpolation", {}), "path": path}})
        key = next(iter(rep.data["pairs"]))
        arr = {k.split("/")[-1]: v.tolist() for k, v in rep.arrays.items() if k.startswith(key)}
        results["pairs"][f"{a}→{b}" + (f" ({path})" if curved else "")] = arr
    out = Path(figures_root) / name
    path = out / "results.json"
    if is_main():  # data-parallel: rank 0 writes the results and draws
        write_json(path, results)
        draw(path, out)
    if world > 1:
        torch.distributed.barrier()
    return path
