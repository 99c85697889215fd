"""One call from checkpoints (or models) to a report: every measure, arrays and figures, cached.

``analyze`` is what ``python -m sharpness.analyze`` runs. It writes into ``out``:

- ``report.json`` — schema ``sharpness-report`` version 1 (documented in README.md): per checkpoint,
  its SHA-256, specs and, per measure, the result's scalars with the settings, seed, ``n_hvps`` /
  ``n_evals`` and seconds; per pair of checkpoints, the interpolation summary; the toolkit and torch
  versions.
- ``arrays.npz`` — spectra, grids and lines, keyed ``<label>/<measure>/<name>``.
- PNGs — spectral density, 1D curve, 2D contour and 3D surface per checkpoint; the parametric plot
  per pair.

Each measure is saved as soon as it finishes, so an interrupted run keeps its work, and a rerun skips
measures already in the report for the same checkpoint hash and settings (``force`` recomputes).
"""

from __future__ import annotations

import datetime
import importlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, load_checkpoint
from .data import load_data
from .errors import SharpnessError
from .functional import FlatModel, subset
from .io import write_json, write_npz

__all__ = ["analyze", "Report", "MEASURES", "DEFAULT_MEASURES", "SCHEMA", "SCHEMA_VERSION"]

SCHEMA, SCHEMA_VERSION = "sharpness-report", 1
MEASURES = ("loss", "eigenvalues", "trace", "density", "eps_sharpness", "adaptive", "noise_scale",
            "landscape1d", "landscape2d", "interpolation")
DEFAULT_MEASURES = MEASURES


def _settings(quick: bool, max_samples: int | None) -> dict[str, dict]:
    """Per-measure settings; --quick trades accuracy for seconds (and the report says so)."""
    q = quick
    return {
        "loss": {},
        "eigenvalues": {"k": 5, "tol": 1e-2 if q else 1e-3, "smallest_k": 1, "smallest_max_hvps": 20 if q else 60},
        "trace": {"rtol": 5e-2 if q else 1e-2, "max_hvps": 100 if q else 400},
        "density": {"n_runs": 2 if q else 3, "steps": 30 if q else 50},
        "eps_sharpness": {"eps": [1e-3] if q else [1e-3, 5e-4], "subspace_dims": [None, 100], "max_iter": 10},
        "adaptive": {"rho_worst": 0.05, "rho_average": 0.1, "norm": "l2", "n_samples": 256 if q else 1024,
                     "batch_size": 128, "steps": 10 if q else 20},
        "noise_scale": ({"batch_sizes": [32, 256], "n_batches": 16, "max_samples": None} if q else
                        {"batch_sizes": "per-example", "n_batches": None, "max_samples": 2000}),
        "landscape1d": {"steps": 21 if q else 51, "span": 1.0, "normalization": "filter"},
        "landscape2d": {"steps": 11 if q else 25, "span": 1.0, "normalization": "filter"},
        "interpolation": {"n_alphas": 13 if q else 25, "range": [-1.0, 2.0], "path": "linear"},
        "_data": {"max_samples": max_samples if max_samples is not None else (1000 if q else None)},
    }


@dataclass
class Report:
    """The analysis of one or more checkpoints: ``data`` is what ``report.json`` holds."""

    data: dict
    out: Path | None
    arrays: dict = field(default_factory=dict)

    def table(self) -> str:
        """A compact text table of the headline numbers, one column per checkpoint."""
        rows = [("train loss", "loss", "train_loss", "{:.4f}"), ("train acc", "loss", "train_acc", "{:.3f}"),
                ("test acc", "loss", "test_acc", "{:.3f}"), ("λ_max", "eigenvalues", "lambda_max", "{:.4g}"),
                ("λ_min", "eigenvalues", "lambda_min", "{:.4g}"), ("trace", "trace", "value", "{:.4g}"),
                ("φ ε=1e-3 full", "eps_sharpness", "eps0.001_full", "{:.3f}"),
                ("φ ε=5e-4 full", "eps_sharpness", "eps0.0005_full", "{:.3f}"),
                ("φ ε=1e-3 p=100", "eps_sharpness", "eps0.001_p100", "{:.3f}"),
                ("adaptive worst", "adaptive", "worst", "{:.4f}"), ("adaptive avg", "adaptive", "average", "{:.4f}"),
                ("B_simple", "noise_scale", "b_simple", "{:.1f}")]
        labels = list(self.data["checkpoints"])
        width = max(12, *(len(lb) for lb in labels))
        lines = [f"{'':<16}" + "".join(f"{lb:>{width + 2}}" for lb in labels)]
        for name, measure, key, fmt in rows:
            cells = []
            for lb in labels:
                v = self.data["checkpoints"][lb]["measures"].get(measure, {}).get("summary", {}).get(key)
                cells.append(fmt.format(v) if isinstance(v, (int, float)) and v is not None else "—")
            if any(c != "—" for c in cells):
                lines.append(f"{name:<16}" + "".join(f"{c:>{width + 2}}" for c in cells))
        for pair, res in self.data.get("pairs", {}).items():
            s = res.get("interpolation", {}).get("summary", {})
            if s:
                lines.append(f"{pair}: max train loss on the segment {s.get('train_max_loss_between', float('nan')):.4g} "
                             f"(ends {s.get('train_loss_at_0', float('nan')):.4g} / {s.get('train_loss_at_1', float('nan')):.4g})")
        return "\n".join(lines)


def _import_factory(spec: str) -> Callable[[], nn.Module]:
    if ":" not in spec:
        raise SharpnessError(f"--model must be MODULE:FACTORY (got '{spec}')")
    mod, name = spec.split(":", 1)
    try:
        factory = getattr(importlib.import_module(mod), name)
    except ImportError as e:
        raise SharpnessError(f"cannot import module '{mod}' for --model: {e}") from None
    except AttributeError:
        raise SharpnessError(f"module '{mod}' has no '{name}' for --model") from None
    return factory


def _label(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) < len(stems):
        stems = [f"{p.parent.name}_{p.stem}" for p in paths]
    if len(set(stems)) < len(stems):
        stems = [f"{i}_{s}" for i, s in enumerate(stems)]
    return [re.sub(r"[^A-Za-z0-9_.-]", "_", s) for s in stems]


def _finite(d: Any) -> Any:
    """NaN/inf → None so report.json is strict JSON."""
    if isinstance(d, dict):
        return {k: _finite(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_finite(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


def analyze(checkpoints: Any, *, out: str | Path | None = "analysis", measures: list[str] | None = None,
            quick: bool = False, device: str = "cpu", batch_size: int | None = None,
            max_samples: int | None = None, seed: int = 0, model: str | Callable | nn.Module | None = None,
            data: str | None = None, force: bool = False, progress: bool | None = None,
            figures: bool = True) -> Report:
    """Analyze one or more checkpoints (paths or loaded :class:`Checkpoint` objects).

    Args:
        checkpoints: a path, a Checkpoint, or a list of them.
        out: output folder (None: nothing written, no caching).
        measures: names from :data:`MEASURES` (default: all; ``interpolation`` needs two checkpoints).
        quick: cheaper settings (a 1000-example subset, coarse grids, looser tolerances).
        device: ``"cpu"`` or ``"cuda"``.
        batch_size: evaluate data in batches of this size (memory only; results are full-data means).
        max_samples: use a fixed random subset of the training data for curvature and sharpness.
        seed: seed of every random choice.
        model: for bare state_dicts: ``"pkg.module:factory"``, a factory or a module.
        data: for bare state_dicts (or to override): a data set name.
        force: recompute measures already in the report.
        progress: progress bars (None: on a terminal only).
        figures: write PNGs.

    Raises:
        SharpnessError: bad input of any kind, before anything is written.
    """
    from . import __version__

    items = checkpoints if isinstance(checkpoints, (list, tuple)) else [checkpoints]
    if not items:
        raise SharpnessError("no checkpoint given")
    measures = list(DEFAULT_MEASURES if measures is None else measures)
    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise SharpnessError(f"unknown measure(s): {', '.join(unknown)}; known: {', '.join(MEASURES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SharpnessError(f"device '{device}' requested but CUDA is not available on this machine")
    factory = _import_factory(model) if isinstance(model, str) else model
    if data is not None:
        load_data(data)  # fail now, with a clear message, if it cannot be had offline
    ckpts: list[Checkpoint] = [c if isinstance(c, Checkpoint) else load_checkpoint(c, model=factory, data=data)
                               for c in items]
    labels = _label([c.path for c in ckpts])
    loaded = []
    for c in ckpts:  # every model and data set is built, and tried, before anything is written
        m = c.model(device)
        train, test = c.datasets()
        try:
            with torch.no_grad():
                m(train.tensors[0][:2].to(device))
        except RuntimeError as e:
            raise SharpnessError(f"{c.path}: the model does not accept the data "
                                 f"(inputs of shape {tuple(train.tensors[0].shape[1:])}): "
                                 f"{str(e).splitlines()[0]}") from None
        loaded.append((m, train, test))

    settings = _settings(quick, max_samples)
    out = Path(out) if out is not None else None
    report_path = out / "report.json" if out else None
    previous: dict = {}
    arrays: dict[str, np.ndarray] = {}
    if report_path and report_path.exists() and not force:
        try:
            previous = json.loads(report_path.read_text())
            if previous.get("schema") != SCHEMA or previous.get("version") != SCHEMA_VERSION:
                previous = {}
            elif (out / "arrays.npz").exists():
                with np.load(out / "arrays.npz", allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
        except (json.JSONDecodeError, OSError, ValueError):
            previous = {}
    report = {"schema": SCHEMA, "version": SCHEMA_VERSION, "toolkit": __version__, "torch": str(torch.__version__),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "settings": {"quick": quick, "device": device, "seed": seed, "batch_size": batch_size,
                           "max_samples": settings["_data"]["max_samples"]},
              "checkpoints": {}, "pairs": {}}

    def save():
        if out is None:
            return
        write_json(report_path, _finite(report))
        if arrays:
            write_npz(out / "arrays.npz", arrays)

    def cached(entry_prev: dict, name: str, sha: str) -> dict | None:
        old = entry_prev.get("measures", {}).get(name)
        if old and old.get("settings") == _jsonable(settings.get(name, {})) and entry_prev.get("sha256") == sha \
                and old.get("seed") == seed and previous.get("settings", {}).get("max_samples") == \
                settings["_data"]["max_samples"]:
            return old
        return None

    loss_fn = nn.functional.cross_entropy
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for label, ckpt, (m, train, test) in zip(labels, ckpts, loaded):
        sha = ckpt.sha256
        prev_entry = previous.get("checkpoints", {}).get(label, {})
        entry = {"path": str(ckpt.path), "sha256": sha, "epoch": ckpt.epoch, "step": ckpt.step,
                 "model": ckpt.model_spec.to_dict() if ckpt.model_spec else None,
                 "data": ckpt.data_spec.to_dict() if ckpt.data_spec else None, "measures": {}}
        report["checkpoints"][label] = entry
        work = subset(train, settings["_data"]["max_samples"], seed)
        for name in measures:
            if name == "interpolation":
                continue
            hit = cached(prev_entry, name, sha)
            if hit is not None:
                entry["measures"][name] = hit
                continue
            t0 = time.perf_counter()
            summary, details, arr = _MEASURE_FUNCS[name](m, loss_fn, work, train, test, settings[name], seed,
                                                         batch_size, progress)
            for k, v in arr.items():
                arrays[f"{label}/{name}/{k}"] = np.asarray(v)
            entry["measures"][name] = {"summary": summary, "details": details,
                                       "settings": _jsonable(settings[name]), "seed": seed,
                                       "seconds": time.perf_counter() - t0}
            save()
            if figures and out is not None:
                _figure(name, label, arr, details, out)
    if "interpolation" in measures and len(ckpts) >= 2:
        st = settings["interpolation"]
        for i in range(len(ckpts)):
            for j in range(i + 1, len(ckpts)):
                key = f"{labels[i]}→{labels[j]}"
                old = previous.get("pairs", {}).get(key, {}).get("interpolation")
                shas = [ckpts[i].sha256, ckpts[j].sha256]
                if old and old.get("sha256") == shas and old.get("settings") == _jsonable(st):
                    report["pairs"][key] = {"interpolation": old}
                    continue
                from .landscape import interpolate

                (ma, tr_a, te_a), (mb, _, _) = loaded[i], loaded[j]
                t0 = time.perf_counter()
                r = interpolate(ma, mb, loss_fn, {"train": tr_a, "test": te_a},
                                alphas=np.linspace(*st["range"], st["n_alphas"]), path=st["path"],
                                batch_size=batch_size, progress=progress)
                arrays[f"{key}/interpolation/alphas"] = r.alphas
                for dname in r.loss:
                    arrays[f"{key}/interpolation/{dname}_loss"] = r.loss[dname]
                    arrays[f"{key}/interpolation/{dname}_acc"] = r.acc[dname]
                report["pairs"][key] = {"interpolation": {"summary": r.to_dict(), "settings": _jsonable(st),
                                                          "sha256": shas, "seconds": time.perf_counter() - t0}}
                save()
                if figures and out is not None:
                    from .plots import plot_parametric

                    plot_parametric(r, path=out / f"parametric_{labels[i]}_{labels[j]}.png",
                                    labels=(labels[i], labels[j]))
    save()
    return Report(data=_finite(report), out=out, arrays=arrays)


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d))


# --- one function per measure: (model, loss_fn, work, train, test, settings, seed, batch_size, progress)
#     → (summary scalars, details dict, arrays dict)

def _m_loss(m, loss_fn, work, train, test, st, seed, bs, progress):
    values = {}
    for split, ds in (("train", train), ("test", test)):
        fm = FlatModel(m, loss_fn, ds, batch_size=bs)
        values[f"{split}_loss"], values[f"{split}_acc"] = fm.loss_and_accuracy(fm.x0)
    values.update(gap_loss=values["test_loss"] - values["train_loss"], gap_acc=values["train_acc"] - values["test_acc"])
    return values, {"n_train": len(train), "n_test": len(test)}, {}


def _m_eigen(m, loss_fn, work, train, test, st, seed, bs, progress):
    from .curvature import HessianOperator, hessian_eigenvalues

    op = HessianOperator(m, loss_fn, work, batch_size=bs)
    top = hessian_eigenvalues(op, k=st["k"], tol=st["tol"], seed=seed, progress=progress)
    low = hessian_eigenvalues(op, k=st["smallest_k"], which="smallest", tol=st["tol"], seed=seed,
                              max_hvps=st["smallest_max_hvps"], progress=progress)
    return ({"lambda_max": float(top.values[0]), "lambda_min": float(low.values[-1]),
             "top": top.values.tolist(), "n_hvps": top.n_hvps + low.n_hvps},
            {"top": top.to_dict(), "smallest": low.to_dict()}, {"top": top.values, "smallest": low.values})


def _m_trace(m, loss_fn, work, train, test, st, seed, bs, progress):
    from .curvature import HessianOperator, hessian_trace

    r = hessian_trace(HessianOperator(m, loss_fn, work, batch_size=bs), rtol=st["rtol"], max_hvps=st["max_hvps"],
                      seed=seed, progress=progress)
    return {"value": r.value, "stderr": r.stderr, "n_hvps": r.n_hvps}, r.to_dict(), {}


def _m_density(m, loss_fn, work, train, test, st, seed, bs, progress):
    from .curvature import HessianOperator, spectral_density

    r = spectral_density(HessianOperator(m, loss_fn, work, batch_size=bs), n_runs=st["n_runs"], steps=st["steps"],
                         seed=seed, progress=progress)
    return ({"min_node": float(np.nanmin(r.nodes)), "max_node": float(np.nanmax(r.nodes)), "n_hvps": r.n_hvps},
            r.to_dict(), {"grid": r.grid, "density": r.density, "nodes": r.nodes, "weights": r.weights})


def _m_eps(m, loss_fn, work, train, test, st, seed, bs, progress):
    from .measures import eps_sharpness

    summary, details = {}, {}
    for eps in st["eps"]:
        for p in st["subspace_dims"]:
            r = eps_sharpness(m, loss_fn, work, eps=eps, subspace_dim=p, max_iter=st["max_iter"], seed=seed,
                              batch_size=bs)
            key = f"eps{eps:g}_{'full' if p is None else f'p{p}'}"
            summary[key] = r.value
            details[key] = r.to_dict()
    summary["n_evals"] = sum(d["n_evals"] for d in details.values())
    return summary, details, {}


def _m_adaptive(m, loss_fn, work, train, test, st, seed, bs, progress):
    from .measures import adaptive_sharpness

    kw = dict(norm=st["norm"], n_samples=st["n_samples"], batch_size=st["batch_size"], steps=st["steps"], seed=seed)
    w = adaptive_sharpness(m, loss_fn, train, st["rho_worst"], kind="worst", **kw)
    a = adaptive_sharpness(m, loss_fn, train, st["rho_average"], kind="average", **kw)
    return ({"worst": w.value, "worst_stderr": w.stderr, "average": a.value, "average_stderr": a.stderr,
             "n_evals": w.n_evals + a.n_evals}, {"worst": w.to_dict(), "average": a.to_dict()}, {})


def _m_noise(m, loss_fn, work, train, test, st, seed, bs, progress):
    from .measures import gradient_noise_scale

    # Exact per-example gradients cost N × P memory traffic: a fixed subset estimates B_simple well.
    bs_ = st["batch_sizes"] if isinstance(st["batch_sizes"], str) else tuple(st["batch_sizes"])
    r = gradient_noise_scale(m, loss_fn, subset(work, st["max_samples"], seed), batch_sizes=bs_,
                             n_batches=st["n_batches"] or 32, seed=seed)
    return ({"b_simple": r.b_simple, "b_simple_stderr": r.stderr, "trace_sigma": r.trace_sigma,
             "grad_norm_sq": r.grad_norm_sq}, r.to_dict(), {})


def _m_landscape(dims):
    def run(m, loss_fn, work, train, test, st, seed, bs, progress):
        from .landscape import surface

        s = surface(m, loss_fn, work, directions=st["normalization"], dims=dims, span=st["span"],
                    steps=st["steps"], batch_size=bs, seed=seed, progress=progress)
        arr = {"loss": s.loss, "acc": s.acc, **{f"axis{i}": a for i, a in enumerate(s.coords)}}
        d = s.to_dict()
        return {"center_loss": s.center_loss, "max_loss": d["max_loss"], "n_evals": s.n_evals}, d, arr
    return run


_MEASURE_FUNCS = {"loss": _m_loss, "eigenvalues": _m_eigen, "trace": _m_trace, "density": _m_density,
                  "eps_sharpness": _m_eps, "adaptive": _m_adaptive, "noise_scale": _m_noise,
                  "landscape1d": _m_landscape(1), "landscape2d": _m_landscape(2)}


def _figure(name: str, label: str, arr: dict, details: dict, out: Path) -> None:
    from .landscape import Directions, Surface
    from .plots import plot_line, plot_spectral_density, plot_surface

    if name == "density":
        plot_spectral_density(arr, path=out / f"density_{label}.png", title=f"Hessian eigenvalue density: {label}")
    elif name in ("landscape1d", "landscape2d"):
        dirs = Directions(torch.zeros(1), "random", normalization=details["directions"]["normalization"])
        coords = [arr[k] for k in sorted(arr) if k.startswith("axis")]
        s = Surface(coords=coords, loss=arr["loss"], acc=arr["acc"], directions=dirs, bn=details["bn"],
                    center_loss=details["center_loss"], center_acc=details["center_acc"], n_evals=0, seconds=0)
        if name == "landscape1d":
            plot_line(s, path=out / f"landscape1d_{label}.png", title=f"1D landscape (filter-normalized): {label}")
        else:
            plot_surface(s, kind="contour", path=out / f"landscape2d_{label}.png",
                         title=f"Loss surface (filter-normalized): {label}")
            plot_surface(s, kind="3d", path=out / f"landscape3d_{label}.png",
                         title=f"Loss surface (filter-normalized): {label}")
