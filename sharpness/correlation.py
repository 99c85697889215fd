"""Which measures predict the generalization gap: Kendall's τ and the granulated Ψ (Jiang et al. 2020).

Jiang, Neyshabur, Mobahi, Krishnan, Bengio, "Fantastic Generalization Measures and Where to Find Them"
(ICLR 2020), §4–5:

- Kendall's rank correlation τ between a measure μ and the gap g over all runs (τ-b, so ties count as
  scipy.stats.kendalltau counts them). Sign convention: τ > 0 means a larger measure goes with a larger
  gap, i.e. the measure "predicts" the gap.
- The granulated coefficient: for each hyperparameter axis i, ψ_i is the mean, over every combination of
  the *other* axes' values, of τ computed over the configurations that share that combination (only axis
  i varies inside). Ψ is the mean of ψ_i over the axes. Groups whose τ is undefined (fewer than two
  configurations, or a constant measure or gap) are left out of the mean; their count is reported.
- Replicates (runs of one configuration that differ only in their seed): Jiang et al. define τ and ψ_i
  over one model per hyperparameter configuration θ ∈ Θ₁ × … × Θₙ (§4: ψ_i averages, over the
  m_i = |Θ₁ × … × Θ_{i−1} × Θ_{i+1} × … × Θₙ| settings of the other axes, τ over the |Θ_i| models that
  differ in θ_i alone). With several seeds per θ, each configuration's measure and gap are first averaged
  over its seeds, and τ, its interval and Ψ are computed over configurations (see :func:`correlate`,
  ``replicates``). Pooling the seeds instead puts pairs of replicates, which do not differ in axis i, into
  ψ_i's groups and dilutes it (kept as ``replicates=None``).
- A bootstrap 95 % interval of τ: the points τ is computed over (configurations, or runs when pooled)
  resampled with replacement (seeded), percentile interval. The paper reports no interval; this is ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .checks import require
from .errors import SharpnessError, printable
from .reporting import check_results, finite, kendall, reached_target, run_gaps, variant_names, variant_of

__all__ = ["CorrelationResult", "RunTable", "correlate", "results_rows", "left_out_note"]


@dataclass
class CorrelationResult:
    """τ, its bootstrap interval, Ψ and the per-axis ψ of every measure, with what they were computed on."""

    gap: str
    axes: list[str]
    tau: dict[str, float]
    tau_ci: dict[str, tuple[float, float]]
    psi: dict[str, float]
    per_axis: dict[str, dict[str, float]]
    n: dict[str, int]                          # runs with a value of the measure and of the gap
    groups_used: dict[str, dict[str, int]] = field(default_factory=dict)  # groups with a defined τ per axis
    n_boot: int = 1000
    seed: int = 0
    replicates: str | None = None              # the column whose runs were averaged per configuration (None: pooled)
    configs: dict[str, int] = field(default_factory=dict)  # points τ and Ψ are over: configurations (= n when pooled)

    def to_dict(self) -> dict:
        """Plain-dict form for reports (intervals as lists)."""
        d = dict(self.__dict__)
        d["tau_ci"] = {m: list(v) for m, v in self.tau_ci.items()}
        return d

    def markdown(self, source: str, note: str = "") -> str:
        """The table under a paragraph saying what was correlated with what (``source``: the runs).

        ``note`` is a sentence added to the paragraph (e.g. :func:`left_out_note`).
        """
        over = ("the runs" if self.replicates is None else
                f"the configurations (each one's runs averaged over `{printable(self.replicates, 80)}`)")
        axes = ", ".join(printable(a, 80) for a in self.axes) or "none"
        return (f"Kendall τ of each measure with `{printable(self.gap, 80)}` over {over} of {printable(source, 300)} "
                f"(τ > 0: a larger measure goes with a larger gap); 95 % bootstrap interval ({self.n_boot} resamples, "
                f"seed {self.seed}); Ψ and ψ per axis as in Jiang et al. 2020 (axes: {axes})."
                f"{printable(note, 2000)}\n\n" + self.table())

    def table(self) -> str:
        """Markdown: one row per measure, best τ first, with the interval, Ψ and each axis' ψ.

        With replicates averaged, a ``configs`` column after ``n`` (runs) gives the points τ and Ψ are over.
        """
        sizes = ["n"] if self.replicates is None else ["n", "configs"]
        head = ["measure", *sizes, "τ", "95 % CI (bootstrap)", "Ψ", *(f"ψ {printable(a, 80)}" for a in self.axes)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in sorted(self.tau, key=lambda k: -np.nan_to_num(self.tau[k], nan=-2)):
            lo, hi = self.tau_ci[m]
            counts = [str(self.n[m])] + ([] if self.replicates is None else [str(self.configs[m])])
            cells = [printable(m, 120), *counts, _f(self.tau[m]), f"[{_f(lo)}, {_f(hi)}]", _f(self.psi[m]),
                     *(_f(self.per_axis[m][a]) for a in self.axes)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _f(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:+.2f}"


def _rows(rows: Any) -> list[dict]:
    if hasattr(rows, "to_dict") and not isinstance(rows, dict):  # a pandas DataFrame
        rows = rows.to_dict("records")
    require("rows", rows, list, item=dict)
    if not rows:
        raise SharpnessError("rows: no runs to correlate")
    return rows


def _tau(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's τ, NaN where it is undefined (fewer than two runs, or a constant measure or gap)."""
    return kendall(x, y)[0] if len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0 else math.nan


def _bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    if len(x) < 3:
        return math.nan, math.nan
    taus = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        t = _tau(x[i], y[i])
        if math.isfinite(t):
            taus.append(t)
    if not taus:
        return math.nan, math.nan
    lo, hi = np.percentile(taus, [2.5, 97.5])
    return float(lo), float(hi)


def _key(row: dict, columns: list[str]) -> tuple:
    return tuple(repr(row.get(c)) for c in columns)


def _replicates(rows: list[dict], axes: list[str], replicates: str | None) -> str | None:
    """The replicate column in effect (``"auto"``: ``"seed"`` when a row has it and there are axes), checked."""
    auto = replicates == "auto"
    if auto:
        replicates = "seed" if axes and "seed" not in axes and any("seed" in r for r in rows) else None
    if replicates is None:
        return None
    if not any(replicates in r for r in rows):
        raise SharpnessError(f"replicates={replicates!r}: no row has that column; columns: "
                             f"{', '.join(sorted({k for r in rows for k in r}))}")
    if not axes:
        raise SharpnessError(f"replicates={replicates!r} needs axes: a configuration is the runs' values of the "
                             "axes (pass axes=[...], or replicates=None)")
    if replicates in axes:
        raise SharpnessError(f"replicates={replicates!r} is also one of the axes; a column is one or the other")
    seen: dict[tuple, dict] = {}
    for r in rows:
        k = _key(r, [*axes, replicates])
        if k in seen:
            cfg = ", ".join(f"{a}={v}" for a, v in zip(axes, k))
            raise SharpnessError(f"replicates={replicates!r}{' (the default: the rows have a seed)' if auto else ''}: "
                                 f"two rows share every axis ({cfg}) and {replicates}={k[-1]}, so they are not "
                                 "replicates; add the column they differ in to axes, or pass replicates=None")
        seen[k] = r
    return replicates


def _configurations(have: list[dict], m: str, gap: str, axes: list[str]) -> list[dict]:
    """One point per configuration (the runs' values of ``axes``): its axes, and the mean measure and gap."""
    cells: dict[tuple, list[dict]] = {}
    for r in have:
        cells.setdefault(_key(r, axes), []).append(r)
    return [{**{a: cell[0].get(a) for a in axes}, m: float(np.mean([finite(r[m]) for r in cell])),
             gap: float(np.mean([finite(r[gap]) for r in cell]))} for cell in cells.values()]


def correlate(rows: Any, measures: list[str], *, gap: str = "gap", axes: list[str] | None = None,
              replicates: str | None = "auto", n_boot: int = 1000, seed: int = 0) -> CorrelationResult:
    """Kendall's τ (with a bootstrap 95 % interval) and Jiang et al.'s granulated Ψ of each measure vs the gap.

    Replicates. Jiang et al. 2020 (§4) compute τ, and ψ_i within each setting of the other axes, over one
    model per hyperparameter configuration θ = (θ₁, …, θₙ) — one value of every axis; a seed is no
    hyperparameter there. A replicate is a run that shares every axis value with another and differs in
    the ``replicates`` column (the seed). With ``replicates`` in effect, each configuration's measure and gap
    are first averaged over its replicates (over those runs that have both values), and everything is then
    computed over configurations, one point each as in the paper:

    - the overall τ and its bootstrap interval (configurations resampled — the independent units; a
      configuration run with five seeds weighs as much as one run with one, and its seeds are not counted
      as independent points);
    - ψ_i: within a group (every other axis fixed) each configuration appears once, so every pair compared
      differs in axis i — no pair of replicates, which differ in no axis, counts (pooled, such pairs are
      compared by their seed noise alone and dilute ψ_i).

    Why averaging rather than comparing runs only within one seed: the latter relies on seed labels
    pairing runs across configurations; with seeds unique per run, or a seed missing for some
    configuration, its groups shrink to one run and ψ is undefined, while averaging needs only to tell
    replicates apart, and gives the bootstrap the right unit. What it estimates: τ between the seed-mean
    measure and the seed-mean gap of each configuration, less noisy than one run per configuration.

    Args:
        rows: one dict per run (a list of dicts, or a pandas DataFrame): its hyperparameters, its measures
            and its gap, under any column names.
        measures: the columns to rank against the gap.
        gap: the gap's column (e.g. test − train loss).
        axes: the hyperparameter columns for Ψ (none: Ψ and ψ are NaN). With replicates averaged they also
            define a configuration, so every hyperparameter that varies must be one of them.
        replicates: the column that tells replicates apart. ``"auto"`` (default): ``"seed"`` when a row has
            a ``seed`` column and there are axes (``seed`` not among them), else None; checked as a name
            given here is. None: no averaging — every run is a point and seeds are pooled inside ψ's groups
            (the toolkit's earlier answer). Without axes there are no configurations, so ``"auto"`` is None.
        n_boot: bootstrap resamples for the interval of τ.
        seed: seeds the bootstrap.

    Returns:
        A :class:`CorrelationResult` (``.tau[m]``, ``.tau_ci[m]``, ``.psi[m]``, ``.per_axis[m][axis]``;
        ``.replicates``: the column averaged over, or None; ``.n[m]`` runs, ``.configs[m]`` the points).

    Raises:
        SharpnessError: no rows, a column named here that no row has, ``replicates`` named without axes or
            as an axis, two rows with the same axes and the same replicate value, or bad arguments.
    """
    rows = _rows(rows)
    require("measures", measures, list, item=str)
    require("gap", gap, str)
    axes = list(require("axes", axes, list, optional=True, item=str) or [])
    require("replicates", replicates, str, optional=True)
    require("n_boot", n_boot, int, ge=10, le=10**6)
    require("seed", seed, int, ge=0)
    for col in [gap, *measures, *axes]:
        if not any(col in r for r in rows):
            raise SharpnessError(f"no row has a column {col!r}; columns: {', '.join(sorted({k for r in rows for k in r}))}")
    replicates = _replicates(rows, axes, replicates)
    rng = np.random.default_rng(seed)
    res = CorrelationResult(gap, axes, {}, {}, {}, {}, {}, {}, n_boot, seed, replicates)
    for m in measures:
        have = [r for r in rows if finite(r.get(m)) is not None and finite(r.get(gap)) is not None]
        res.n[m] = len(have)
        if replicates is not None:
            have = _configurations(have, m, gap, axes)
        res.configs[m] = len(have)
        x = np.array([finite(r[m]) for r in have])
        y = np.array([finite(r[gap]) for r in have])
        res.tau[m] = _tau(x, y)
        res.tau_ci[m] = _bootstrap(x, y, n_boot, rng)
        res.per_axis[m], res.groups_used[m] = {}, {}
        for axis in axes:
            others = [a for a in axes if a != axis]
            cells: dict[tuple, list[dict]] = {}
            for r in have:
                cells.setdefault(_key(r, others), []).append(r)
            taus = []
            for cell in cells.values():
                cx = np.array([finite(r[m]) for r in cell])
                cy = np.array([finite(r[gap]) for r in cell])
                t = _tau(cx, cy) if len({repr(r.get(axis)) for r in cell}) >= 2 else math.nan
                if math.isfinite(t):
                    taus.append(t)
            res.per_axis[m][axis] = float(np.mean(taus)) if taus else math.nan
            res.groups_used[m][axis] = len(taus)
        psis = [v for v in res.per_axis[m].values() if math.isfinite(v)]
        res.psi[m] = float(np.mean(psis)) if psis and len(psis) == len(axes) else math.nan
    return res


class RunTable(NamedTuple):
    """An experiment's runs as :func:`correlate` takes them (see :func:`results_rows`)."""

    rows: list[dict]
    measures: list[str]
    axes: list[str]
    left_out: list[str]  # runs that did not reach their target training loss


def results_rows(results: dict) -> RunTable:
    """An experiment's results → (rows, measure columns, axes, left-out runs) for :func:`correlate`.

    Each run is a row of its config, its ``variant`` (the experiment's named variant, if any), ``gap`` =
    final test − train loss, ``gap_acc`` = train − test accuracy (points of %), and every numeric final
    summary value as ``measure.key`` (costs such as ``n_hvps`` and standard errors left out); runs analysed
    without the ``dist_from_init`` measure get ``dist_from_init`` = ‖w − w₀‖ from the training history. The
    axes are the experiment's grid keys other than ``seed``, and ``variant`` when there are several (a
    variant changes several fields together: one axis). A run that did not reach its
    ``target_train_loss`` is left out, as Jiang et al. 2020 leave out networks that miss the criterion
    (:func:`sharpness.reporting.reached_target`); its label is in ``left_out``.
    """
    check_results(results, whole=False)
    spec = results.get("spec", {})
    variants = variant_names(results)
    rows, names, left_out = [], [], []
    for label, run in results["runs"].items():
        if not reached_target(run):
            left_out.append(label)
            continue
        row = {"run": label, **run.get("config", {})}
        if variants:
            row["variant"] = variant_of(label, variants)
        gap, gap_acc = run_gaps(run)
        row.update({k: v for k, v in (("gap", gap), ("gap_acc", gap_acc)) if v is not None})
        dist = (run.get("history") or [{}])[-1].get("dist_from_init")
        if "dist_from_init" not in run.get("final", {}) and finite(dist) is not None:
            row["dist_from_init"] = dist  # recorded by the trainer (a baseline in Jiang et al.)
            names.append("dist_from_init")
        for m, summary in run.get("final", {}).items():
            if m == "loss":
                continue
            for k, v in summary.items():
                if finite(v) is not None and not k.startswith("n_") and not k.endswith("stderr"):
                    row[f"{m}.{k}"] = v
                    names.append(f"{m}.{k}")
        rows.append(row)
    axes = [k for k in spec.get("grid", {}) if k != "seed"] + (["variant"] if len(variants) > 1 else [])
    return RunTable(rows, list(dict.fromkeys(names)), axes, left_out)


def left_out_note(table: RunTable) -> str:
    """The sentence that says which runs a correlation left out ("" when none)."""
    if not table.left_out:
        return ""
    shown = ", ".join(table.left_out[:8]) + (", …" if len(table.left_out) > 8 else "")
    return (f" {len(table.left_out)} of {len(table.left_out) + len(table.rows)} runs did not reach their target "
            f"training loss and are left out ({shown}).")
