"""Reporting: saved results → one long table (run × measure × key), and the fits and selections on it.

Plots and tables read what this module returns; nothing here draws, trains or computes a Hessian
(DomainBed's ``collect_results`` / ``model_selection`` split). The inputs are an experiment's
``results.json`` (runs with their config, history and final-checkpoint summaries) or ``analyze``'s
``report.json``.

- :func:`long_table` — one row per (run, measure, key) with the run's config, group and seed;
- :func:`groups` — runs that differ only in their seed;
- :func:`time_to_target` — updates, examples and wall-clock to a training loss (McCandlish 2018);
- :func:`fit_critical_batch` — S = S_min(1 + B_crit/B) fitted to steps-to-target;
- :func:`best_lr_per_batch` — the LR that reaches the target in the fewest updates, per batch size;
- :func:`mean_ci` / :func:`format_ci` — mean ± 95 % confidence interval over seeds (Student t);
- :func:`arm`, :func:`batch_size`, :func:`warm_start_epoch` — what a run varies, from its label and config;
- :func:`run_gaps` — a run's final test − train loss and train − test accuracy;
- :func:`gap_rows` — the generalization gap against batch size per arm (Keskar 2017, Hoffer 2017);
- :func:`scatter_rows`, :func:`kendall` — per-run sharpness against gap and their rank correlation
  (Jiang et al. 2020);
- :func:`binned_ci` — a measure along training, averaged over log-spaced bins of training loss
  (Keskar 2017, Fig. 6);
- :func:`warm_start_rows` — warm-started LB runs against the SB epochs before the switch (Keskar Fig. 5).

Every interval is the 95 % confidence interval of the mean over seeds with Student's t at n − 1 degrees
of freedom, ``t_{0.975, n−1} · s / √n`` (s the sample standard deviation); one seed has no interval.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import stats

from .errors import SharpnessError, printable
from .errors import short as _short
from .io import read_text
from .measures.registry import headline_keys

__all__ = ["long_table", "report_rows", "groups", "final", "time_to_target", "fit_critical_batch",
           "best_lr_per_batch", "headline_columns", "CI_NOTE", "CI_LEVEL", "mean_ci", "format_ci", "seeds_note", "ci_by",
           "arm", "batch_size", "warm_start_epoch", "gap_rows", "scatter_rows", "SCATTER_MEASURES", "kendall",
           "binned_ci", "warm_start_rows", "finite", "run_gaps", "reached_target", "variant_names", "variant_of",
           "read_results", "check_results", "shown"]

CI_LEVEL = 0.95
CI_NOTE = "mean ± 95 % CI (Student t)"  # how every table and figure names its intervals


def shown(tree: Any) -> Any:
    """A copy of ``tree`` (results read from a file) with every string, dict keys too, made printable.

    Control characters (ESC, newlines, ...) are escaped (:func:`sharpness.errors.printable`), so no
    string from the file reaches a figure's text, a table or the terminal raw.
    """
    if isinstance(tree, str):
        return printable(tree, 10 * len(tree) + 10)  # escaped, not cut: labels must stay distinct
    if isinstance(tree, dict):
        return {shown(k): shown(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [shown(v) for v in tree]
    return tree


def _table_of(where: str, value: Any, item: type | None = None, optional: bool = True) -> None:
    if value is None and optional:
        return
    if not isinstance(value, dict):
        raise SharpnessError(f"{where} must be a table (got {type(value).__name__})")
    if item is not None and not all(isinstance(v, item) for v in value.values()):
        bad = next(k for k, v in value.items() if not isinstance(v, item))
        raise SharpnessError(f"{where}.{printable(bad, 80)} must be a {'table' if item is dict else item.__name__} "
                             f"(got {type(value[bad]).__name__})")


def _list_of(where: str, value: Any, item: type) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, item) for v in value):
        raise SharpnessError(f"{where} must be a list of {'tables' if item is dict else item.__name__} "
                             f"(got {_short(value, 80)})")


def check_results(res: Any, where: str = "results", whole: bool = True) -> dict:
    """An experiment's results (``results.json``) checked down to the parts tables and figures read.

    ``whole``: a name and a spec are needed too (else only the runs, and a spec if there is one).

    Raises:
        SharpnessError: one line naming the first part of the wrong type.
    """
    if not (isinstance(res, dict) and isinstance(res.get("runs"), dict) and isinstance(res.get("spec", {}), dict)
            and (not whole or (isinstance(res.get("name"), str) and isinstance(res.get("spec"), dict)))):
        raise SharpnessError(f"{where}: not an experiment's results.json (needs name, spec and runs)")
    _table_of(f"{where}: runs", res["runs"], dict, optional=False)
    for label, run in res["runs"].items():
        w = f"{where}: runs.{printable(label, 80)}"
        _table_of(f"{w}.config", run.get("config"))
        _table_of(f"{w}.final", run.get("final"), dict)
        _table_of(f"{w}.arrays", run.get("arrays"))
        for name in ("history", "along", "tracked", "trace"):
            _list_of(f"{w}.{name}", run.get(name), dict)
    spec = res.get("spec", {})
    _list_of(f"{where}: spec.variants", spec.get("variants"), dict)
    _table_of(f"{where}: spec.grid", spec.get("grid"))
    _table_of(f"{where}: spec.figures", spec.get("figures"))
    _table_of(f"{where}: pairs", res.get("pairs"), dict)
    return res


def read_results(path: str | Path) -> dict:
    """An experiment's ``results.json``: a regular file only (a FIFO is refused at once), checked.

    Raises:
        SharpnessError: missing, not a regular file, not UTF-8 JSON, or parts of the wrong type (one line).
    """
    path = Path(path)
    try:
        res = json.loads(read_text(path, "results file"))
    except FileNotFoundError:
        raise SharpnessError(f"{path}: no such results file") from None
    except (RecursionError, ValueError) as e:
        if isinstance(e, SharpnessError):
            raise
        raise SharpnessError(f"{path}: not a readable results file "
                             f"({printable(' '.join(str(e).split()), 200)})") from None
    return check_results(res, str(path))


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


def mean_ci(values, level: float = CI_LEVEL) -> tuple[float, float, int]:
    """(mean, half-width, n) of the ``level`` confidence interval of the mean, Student t with n − 1 dof.

    The half-width is ``t_{(1+level)/2, n−1} · s / √n`` with s the sample standard deviation (ddof 1).
    None and NaN values are dropped; one value has no interval (half-width NaN); none gives (NaN, NaN, 0).
    """
    if not (isinstance(level, float) and 0 < level < 1):
        raise SharpnessError(f"level must be a confidence level between 0 and 1 (got {level!r})")
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = stats.t.ppf((1 + level) / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return float(v.mean()), float(half), n


def format_ci(values, fmt: str = "{:.4g}") -> str:
    """``mean ± half-width`` of :func:`mean_ci` (95 % CI, Student t); the value alone for one; "—" for none."""
    m, h, n = mean_ci(values)
    if n == 0:
        return "—"
    return fmt.format(m) if n == 1 else f"{fmt.format(m)} ± {h:.2g}"


def seeds_note(counts) -> str:
    """"mean ± 95 % CI (Student t), n = 3 seeds" (or "n = 2–3 seeds"); "one seed" when every n is 1."""
    counts = sorted({int(c) for c in counts if c})
    if not counts or counts[-1] <= 1:
        return "one seed"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{CI_NOTE}, n = {n} seeds"


def batch_size(run: dict) -> int:
    """The run's (initial) batch size, from its config."""
    return int(run["config"]["batch_size"])


def arm(label: str, run: dict) -> str:
    """The arm of a batch-size sweep: the run label without its batch-size and seed parts.

    ``"fixed-B32-seed0"`` → ``"fixed"``, ``"B256-sqrt-seed1"`` → ``"sqrt"``, ``"B32-seed0"`` → ``""`` (a
    single-arm sweep). Runs of one arm differ only in batch size and seed (e.g. gap.toml's LR rules).
    """
    b = batch_size(run)
    parts = [p for p in label.split("-") if p and p != f"B{b}" and not re.fullmatch(r"seed\d+", p)]
    return "-".join(parts)


def variant_names(results: dict) -> list[str]:
    """The experiment's named variants, longest first (so a name that prefixes another is tried last)."""
    names = (v["name"] for v in results.get("spec", {}).get("variants", None) or []
             if isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"])
    return sorted(names, key=len, reverse=True)


def variant_of(label: str, names: list[str]) -> str | None:
    """The named variant a run label belongs to (its label is the name, or starts with ``name-``)."""
    return next((v for v in names if label == v or label.startswith(f"{v}-")), None)


def warm_start_epoch(run: dict) -> int | None:
    """k, the SB epochs a warm-started run starts after (Keskar 2017, Fig. 5), from its ``init_from``.

    ``.../ckpt_epochK.pt`` → K, ``.../init.pt`` → 0 (SB's own initialization), no ``init_from`` → None.

    Raises:
        ValueError: an ``init_from`` that names neither.
    """
    src = run["config"].get("init_from")
    if not src:
        return None
    name = re.split(r"[/\\]", str(src))[-1]
    if name == "init.pt":
        return 0
    m = re.fullmatch(r"ckpt_epoch(\d+)\.pt", name)
    if m is None:
        raise ValueError(f"init_from {src!r} is neither init.pt nor ckpt_epochK.pt")
    return int(m.group(1))


def ci_by(results: dict, key: Callable[[str, dict], Any], columns: dict[str, Callable[[dict], Any]]) -> list[dict]:
    """Runs grouped by ``key(label, run)`` (None: left out), each column's mean ± 95 % CI over the group.

    ``columns`` maps a name to a function of a run giving its value (or None: not counted).

    Returns:
        Rows sorted by key: {key, labels, NAME: {mean, ci, n}} (ci NaN for one value, mean NaN for none).
    """
    cells: dict[Any, list[str]] = {}
    for label, run in results["runs"].items():
        k = key(label, run)
        if k is not None:
            cells.setdefault(k, []).append(label)
    rows = []
    for k, labels in sorted(cells.items()):
        row = {"key": k, "labels": labels}
        for name, fn in columns.items():
            m, h, n = mean_ci([fn(results["runs"][lb]) for lb in labels])
            row[name] = {"mean": m, "ci": h, "n": n}
        rows.append(row)
    return rows


def finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite real number (not a bool), else None."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def reached_target(run: dict) -> bool:
    """Whether a run stopped at its ``target_train_loss`` (True when it had none).

    The last epoch's training loss, the one the trainer compared, is at most the target. Jiang et al. 2020
    keep only such runs.
    """
    target = run.get("config", {}).get("target_train_loss")
    last = (run.get("history") or [{}])[-1].get("train_loss")
    return target is None or (finite(last) is not None and last <= target)


def run_gaps(run: dict) -> tuple[float | None, float | None]:
    """(final test − train loss, 100 · (train − test accuracy) in points) of a run; None where undefined."""
    tr, te = final(run, "loss", "train_loss"), final(run, "loss", "test_loss")
    ta, tea = final(run, "loss", "train_acc"), final(run, "loss", "test_acc")
    return (None if tr is None or te is None else te - tr,
            None if ta is None or tea is None else 100.0 * (ta - tea))


def gap_rows(results: dict) -> list[dict]:
    """The generalization gap per (arm, batch size), mean ± 95 % CI over seeds.

    Per run: ``gap_loss`` = final test − train loss, ``gap_acc`` = 100 · (train − test accuracy) in points,
    and the final ``train_loss`` (the gap is compared at matched training loss: Keskar et al. 2017, Hoffer
    et al. 2017; Jiang et al. 2020 stop every run at one training loss). Runs without final train and test
    loss are left out.

    Returns:
        Rows sorted by (arm, batch): {arm, batch, labels, gap_loss, gap_acc, train_loss}, each of the last
        three {mean, ci, n} (ci NaN for one seed; gap_acc n = 0 where accuracy is undefined).

    Raises:
        ValueError: no run has final train and test loss.
    """
    rows = ci_by(results, lambda lb, r: (arm(lb, r), batch_size(r)) if run_gaps(r)[0] is not None else None,
                 {"gap_loss": lambda r: run_gaps(r)[0], "gap_acc": lambda r: run_gaps(r)[1],
                  "train_loss": lambda r: final(r, "loss", "train_loss")})
    if not rows:
        raise ValueError("gap: no run has a final train and test loss")
    return [{"arm": row["key"][0], "batch": row["key"][1], **{k: v for k, v in row.items() if k != "key"}}
            for row in rows]


# (measure, key) → axis label of the sharpness measures a gap scatter shows, in this order
SCATTER_MEASURES: dict[tuple[str, str], str] = {
    ("eigenvalues", "lambda_max"): "λ_max",
    ("eps_sharpness", "eps0.001_full"): "φ (ε = 1e-3)",
    ("adaptive", "worst"): "adaptive, worst",
    ("adaptive", "average"): "adaptive, average",
}


def scatter_rows(results: dict, measures: Any = None) -> list[dict]:
    """One row per run with final train and test loss: {label, arm, batch, gap_loss, (measure, key): value}.

    ``gap_loss`` = test − train loss; the values are those of ``measures`` (default
    :data:`SCATTER_MEASURES`) the run has. Runs that did not reach their ``target_train_loss`` are left out
    (:func:`reached_target`).
    """
    rows = []
    for label, run in results["runs"].items():
        gap = run_gaps(run)[0]
        if gap is None or not reached_target(run):
            continue
        row = {"label": label, "arm": arm(label, run), "batch": batch_size(run), "gap_loss": gap}
        for m, k in measures or SCATTER_MEASURES:
            if (v := finite(final(run, m, k))) is not None:
                row[(m, k)] = v
        rows.append(row)
    return rows


def kendall(x, y) -> tuple[float, float, int]:
    """(τ, two-sided p-value, n) of Kendall's rank correlation (τ-b, scipy.stats.kendalltau; Jiang 2020)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan, len(x)
    r = stats.kendalltau(x, y)
    return float(r.statistic), float(r.pvalue), len(x)


def binned_ci(series: list[tuple[list[float], list[float]]], bins: int = 8) -> dict[str, np.ndarray]:
    """A measure along training per seed, averaged over log-spaced bins of the training loss.

    ``series`` holds one (training losses, values) pair per seed. The losses' union range is cut into
    ``bins`` log-spaced bins; in each bin every seed contributes the mean of its values there, and the bin
    shows the mean ± 95 % CI (Student t) over those seeds (Keskar et al. 2017, Fig. 6, without the zigzag
    of single checkpoints).

    Returns:
        {center (geometric bin centre), mean, ci, n}, bins without any value dropped.
    """
    if not isinstance(bins, int) or isinstance(bins, bool) or not 1 <= bins <= 10_000:
        raise SharpnessError(f"bins must be a whole number from 1 to 10000 (got {bins!r})")
    xs = np.concatenate([np.asarray(x, dtype=float) for x, _ in series]) if series else np.array([])
    xs = xs[np.isfinite(xs) & (xs > 0)]
    if len(xs) == 0:
        return {k: np.array([]) for k in ("center", "mean", "ci", "n")}
    lo, hi = xs.min(), xs.max()
    edges = np.geomspace(lo, hi * (1 + 1e-9), bins + 1) if hi > lo else np.array([lo * 0.999, hi * 1.001])
    out: dict[str, list] = {"center": [], "mean": [], "ci": [], "n": []}
    for a, b in zip(edges[:-1], edges[1:]):
        per_seed = []
        for x, y in series:
            x, y = np.asarray(x, dtype=float), np.asarray([np.nan if v is None else v for v in y], dtype=float)
            sel = (x >= a) & (x < b) & np.isfinite(y)
            if sel.any():
                per_seed.append(float(y[sel].mean()))
        if per_seed:
            m, h, n = mean_ci(per_seed)
            for k, v in zip(("center", "mean", "ci", "n"), (math.sqrt(a * b), m, h, n)):
                out[k].append(v)
    return {k: np.array(v, dtype=float) for k, v in out.items()}


def warm_start_rows(results: dict, columns: dict[str, Callable[[dict], Any]]) -> tuple[list[dict], dict]:
    """Warm-started runs per k (SB epochs before the switch; Keskar 2017, Fig. 5), and the cold runs.

    ``columns`` maps a name to a function of a run (its value, or None). Runs with an ``init_from`` are
    grouped by :func:`warm_start_epoch`; runs without one (SB) form the reference.

    Returns:
        (rows sorted by k: {k, labels, NAME: {mean, ci, n}}, reference {labels, NAME: {mean, ci, n}}).

    Raises:
        ValueError: no warm-started run.
    """
    rows = ci_by(results, lambda lb, r: warm_start_epoch(r), columns)
    if not rows:
        raise ValueError("warm_start: no run has an init_from (no warm-started run)")
    ref = ci_by(results, lambda lb, r: 0 if warm_start_epoch(r) is None else None, columns)
    ref = ref[0] if ref else {"labels": [], **{c: {"mean": math.nan, "ci": math.nan, "n": 0} for c in columns}}
    return ([{"k": r["key"], **{k: v for k, v in r.items() if k != "key"}} for r in rows],
            {k: v for k, v in ref.items() if k != "key"})


def time_to_target(history: list[dict], target: float) -> dict | None:
    """Updates, examples and training wall-clock at the end of the first epoch with training loss ≤ target."""
    if finite(target) is None:
        raise SharpnessError(f"target must be a finite training loss (got {target!r})")
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
        ({batch: {lr, labels, step, examples, wall_time, *_ci (95 % CI half-widths, NaN for one seed),
        b_simple: [...]}} sorted by batch,
        the batch sizes that never reached the target).
    """
    if finite(target) is None or target <= 0:
        raise SharpnessError(f"target must be a training loss above 0 (got {target!r})")
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
        row.update({f"{k}_ci": mean_ci([t[k] for t in reach])[1] for k in ("step", "examples", "wall_time")})
        noise = [final(results["runs"][lb], "noise_scale", "b_simple") for lb in labels]
        row.update(lr=c["lr"], labels=labels, b_simple=[v for v in noise if v is not None])
        b = int(c["batch_size"])
        if b not in best or row["step"] < best[b]["step"]:
            best[b] = row
    every = {int(results["runs"][lb]["config"]["batch_size"]) for lbs in cells.values() for lb in lbs}
    return dict(sorted(best.items())), sorted(every - set(best))


def peak_rows(results: dict, key: str = "lambda_max") -> list[dict]:
    """Per group of seeds: η, B, η/B and the peak of the tracked ``key`` along training (mean ± CI over seeds).

    The peak is the largest value of the tracker's records (``track_every``) in each run — the break-even
    point's λ_max (Jastrzębski et al. 2020); runs without records are left out.
    """
    runs, rows = results["runs"], []
    for g, labels in groups(runs).items():
        tracked = [labels_run for labels_run in labels if runs[labels_run].get("tracked")]
        if not tracked:
            continue
        cfg = runs[tracked[0]]["config"]
        peaks = [max(r[key] for r in runs[lb]["tracked"]) for lb in tracked]
        m, h, n = mean_ci(peaks)
        rows.append({"group": g, "lr": cfg["lr"], "batch": cfg["batch_size"], "lr_over_b": cfg["lr"] / cfg["batch_size"],
                     "peak": {"mean": m, "ci": h, "n": n}, "labels": tracked})
    return rows
