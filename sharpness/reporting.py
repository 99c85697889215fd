"""Reporting: saved results → one long table (run × measure × key), and the fits and selections on it.

Plots and tables read what this module returns; nothing here draws, trains or computes a Hessian
(DomainBed's ``collect_results`` / ``model_selection`` split). The inputs are an experiment's
``results.json`` (runs with their config, history and final-checkpoint summaries) or ``analyze``'s
``report.json``.

- :func:`long_table` — one row per (run, measure, key) with the run's config, group and seed;
- :func:`groups` — runs that differ only in their seed;
- :func:`time_to_target` — updates, examples and wall-clock to a training loss (McCandlish 2018);
- :func:`fit_critical_batch` — S = S_min(1 + B_crit/B) fitted to steps-to-target;
- :func:`best_lr_per_batch` — the LR that reaches the target in the fewest updates, per batch size.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from .measures.registry import headline_keys

__all__ = ["long_table", "report_rows", "groups", "final", "time_to_target", "fit_critical_batch",
           "best_lr_per_batch", "mean_std", "headline_columns"]


def groups(runs: dict) -> dict[str, list[str]]:
    """Group label (the run label without its ``seed`` part) → the labels of its runs."""
    out: dict[str, list[str]] = {}
    for label in runs:
        out.setdefault(re.sub(r"-?seed\d+", "", label) or label, []).append(label)
    return out


def final(run: dict, measure: str, key: str) -> Any:
    """A final-checkpoint summary value; loss and accuracy fall back to the last epoch of the history."""
    v = run.get("final", {}).get(measure, {}).get(key)
    if v is None and measure == "loss" and run.get("history"):
        v = run["history"][-1].get(key)
    return v


def long_table(results: dict) -> list[dict]:
    """One row per (run, measure, key) of an experiment's results.

    Columns: ``run, group``, the run's config fields, ``measure, key, value``. The final loss and
    accuracy fall back to the last epoch of the history, as in :func:`final`.
    """
    label_group = {lb: g for g, lbs in groups(results["runs"]).items() for lb in lbs}
    rows = []
    for label, run in results["runs"].items():
        base = {"run": label, "group": label_group[label], **run.get("config", {})}
        summaries = dict(run.get("final", {}))
        if run.get("history"):
            last = run["history"][-1]
            summaries["loss"] = {**{k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")
                                    if k in last}, **summaries.get("loss", {})}
        for measure, summary in summaries.items():
            for key, value in summary.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append({**base, "measure": measure, "key": key, "value": value})
    return rows


def report_rows(report: dict) -> list[dict]:
    """One row per (checkpoint, measure, key) of an ``analyze`` report (failed measures omitted)."""
    rows = []
    for label, entry in report["checkpoints"].items():
        for measure, res in entry["measures"].items():
            for key, value in res.get("summary", {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append({"run": label, "sha256": entry.get("sha256"), "measure": measure, "key": key,
                                 "value": value})
    return rows


def headline_columns(rows: list[dict]) -> list[tuple[str, Any]]:
    """The registered headline keys (measure, Key) that some row has, in registration order."""
    have = {(r["measure"], r["key"]) for r in rows}
    return [(m, k) for m, k in headline_keys() if (m, k.name) in have]


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample std) over seeds; the value alone for one; "—" for none."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return "—"
    return f"{v.mean():.4g}" if len(v) == 1 else f"{v.mean():.4g} ± {v.std(ddof=1):.2g}"


def time_to_target(history: list[dict], target: float) -> dict | None:
    """Updates, examples and training wall-clock at the end of the first epoch with training loss ≤ target."""
    for e in history:
        if e["train_loss"] is not None and e["train_loss"] <= target:
            return {"step": e["step"], "examples": e["examples"], "wall_time": e["wall_time"], "epoch": e["epoch"]}
    return None


def fit_critical_batch(b: np.ndarray, steps: np.ndarray) -> tuple[float, float] | None:
    """(S_min, B_crit) of McCandlish et al. 2018's S = S_min (1 + B_crit / B), fitted in relative error.

    S = a + c/B is linear in (a, c); dividing each row by S_i weighs every batch size equally.
    None when the fit has no positive S_min or B_crit (the runs show no trade-off to fit).
    """
    rows = np.stack([1 / steps, 1 / (b * steps)], 1)
    (a, c), *_ = np.linalg.lstsq(rows, np.ones_like(steps), rcond=None)
    ok = a > 1e-6 * steps.min() and c > 0  # a ≈ 0 (within round-off) is perfect scaling: no S_min
    return (float(a), float(c / a)) if ok else None


def best_lr_per_batch(results: dict, target: float) -> tuple[dict[int, dict], list[int]]:
    """Per batch size, the configuration (over LRs) that reaches ``target`` in the fewest updates.

    Runs that differ only in their seed are one configuration: it counts only if every seed reaches
    the target, and its costs are means over seeds (McCandlish et al. tune the LR per batch size).

    Returns:
        ({batch: {lr, labels, step, examples, wall_time, *_std, b_simple: [...]}} sorted by batch,
        the batch sizes that never reached the target).
    """
    cells: dict[str, list[str]] = {}
    for label, r in results["runs"].items():
        c = {k: v for k, v in r["config"].items() if k != "seed"}
        cells.setdefault(json.dumps(c, sort_keys=True), []).append(label)
    best: dict[int, dict] = {}
    for key, labels in cells.items():
        reach = [time_to_target(results["runs"][lb]["history"], target) for lb in labels]
        if any(t is None for t in reach):
            continue  # some seed never reached the target with this LR
        c = json.loads(key)
        row = {k: float(np.mean([t[k] for t in reach])) for k in ("step", "examples", "wall_time")}
        row.update({f"{k}_std": float(np.std([t[k] for t in reach], ddof=1)) if len(reach) > 1 else 0.0
                    for k in ("step", "examples", "wall_time")})
        noise = [final(results["runs"][lb], "noise_scale", "b_simple") for lb in labels]
        row.update(lr=c["lr"], labels=labels, b_simple=[v for v in noise if v is not None])
        b = int(c["batch_size"])
        if b not in best or row["step"] < best[b]["step"]:
            best[b] = row
    every = {int(results["runs"][lb]["config"]["batch_size"]) for lbs in cells.values() for lb in lbs}
    return dict(sorted(best.items())), sorted(every - set(best))
