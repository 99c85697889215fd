"""What an analysis will cost before it runs, and the settings that make it fit a time budget.

Every measure of :mod:`sharpness.measures.builtin` says what it is made of — passes of three kinds
(a forward, a loss-and-gradient pass, a Hessian-vector product) over a number of examples — through its
``cost(settings, sizes)`` (:class:`Work`). :func:`unit_costs` times each kind on the user's model, data and
device, on one batch and on a quarter of it, and fits seconds = overhead + per-example × examples per batch
(:class:`Units`: a second or two). A measure's planned seconds are then Σ passes × the pass's seconds; the
adaptive ones (Lanczos, L-BFGS-B) are planned at their expected count and never run past their cap.

:func:`fit_budget` chooses settings that end within a budget: it starts from the defaults (and the user's
settings) and, while the plan is over budget, takes the one step down that saves the most seconds — a
measure's next cheaper settings (``cheaper(settings, sizes)``: fewer products, draws, grid points, examples)
or a quarter less of the curvature data subset — so accuracy is given up where a second of it is dearest; a measure
whose cheapest settings still do not fit is skipped with the reason. During the run, :class:`Budget`
re-plans each measure against the time left, so a measure that ran over its plan is paid for by the ones
after it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from .errors import SharpnessError

__all__ = ["Units", "Sizes", "Work", "unit_costs", "fit_budget", "Budget", "KINDS", "FIGURE_SECONDS",
           "MIN_WORK", "planned_seconds", "check_budget", "choice"]

KINDS = ("forward", "gradient", "hvp", "per_example")  # per_example: every example's own gradient (vmap)
FREE_SECONDS = 0.1     # a measure planned under this is never skipped nor cut: skipping it would not make a plan fit
FIGURE_SECONDS = 1.0   # one figure file (PNG, 300 dpi) drawn by matplotlib on a CPU core: measured 0.4-1.2 s
MIN_WORK = 256         # the smallest curvature subset a budget chooses (fewer examples: noise, not curvature)


@dataclass(frozen=True)
class Sizes:
    """What a measure's cost depends on: examples of the curvature subset, the train and test sets; P."""

    work: int
    train: int
    test: int
    params: int


@dataclass(frozen=True)
class Work:
    """A measure's passes: ``[(kind, passes, examples per pass), ...]``, seconds of other work, figure files."""

    passes: tuple = ()
    other: float = 0.0
    figures: int = 0

    def seconds(self, units: "Units") -> float:
        """Planned seconds on a machine of these units (the figures only when the run draws them)."""
        return (sum(units.pass_seconds(kind, n) * count for kind, count, n in self.passes) + self.other
                + (FIGURE_SECONDS * self.figures if units.draw else 0.0))

    def describe(self) -> str:
        """The passes in words, e.g. ``87 × hvp over 8000``."""
        parts = [f"{count:.0f} × {kind} over {n}" for kind, count, n in self.passes if count]
        return ", ".join(parts) or "—"


@dataclass(frozen=True)
class Units:
    """Seconds of one pass of each kind over a batch of m examples: ``overhead + per_example · m``."""

    fit: dict            # kind → (overhead seconds per batch, seconds per example)
    batch: int           # examples per batch of the objective
    device: str
    seconds: float       # what measuring them took
    draw: bool = True    # the run draws figures (their seconds are planned)

    def pass_seconds(self, kind: str, n: int) -> float:
        """Seconds of one pass of ``kind`` over ``n`` examples, in batches as the objective makes them."""
        a, c = self.fit[kind]
        full, rest = divmod(int(n), self.batch)
        return full * (a + c * self.batch) + (a + c * rest if rest else 0.0)

    def to_dict(self, n: int) -> dict:
        """The measured units as plain numbers for report.json (seconds of one pass over ``n`` examples)."""
        return {"device": self.device, "batch": self.batch, "measured_seconds": self.seconds,
                **{f"{k}_seconds_per_pass": self.pass_seconds(k, n) for k in KINDS}, "examples": n}

    def describe(self, n: int) -> str:
        """One line: the seconds of one pass of each kind over ``n`` examples."""
        return ", ".join(f"{k} {1e3 * self.pass_seconds(k, n):.3g} ms" for k in KINDS) + f" per pass over {n} examples"


def _best(f: Callable[[], Any], sync: Callable[[], None], rounds: int = 2) -> float:
    """The shorter of ``rounds`` timed calls after one that warms up (caches, allocator, kept graphs)."""
    f()
    sync()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def unit_costs(obj: Any, *, per_example: bool = True) -> Units:
    """Time a forward, a gradient and a Hessian-vector product of ``obj`` (an Objective) on its device.

    On one batch of the size the objective uses (m₁) and on a quarter of it (m₂), each the best of two
    after a warm-up; the line through the two gives the per-batch overhead and the per-example cost.
    ``per_example``: also every example's own gradient (the noise scale's), on min(m₁, 64) examples. The
    model and the caller's random state are untouched (the objectives restore modes; the product's vector
    comes from a private generator).
    """
    from .curvature import HessianOperator
    from .distributed import from_main
    from .measures.noise_scale import _per_example

    t0 = time.perf_counter()
    n = obj.num_samples
    batch = from_main(next(obj.batches())[4])  # data-parallel: every rank times the same calls (collectives)
    sizes = sorted({max(1, batch // 4), batch})
    device = obj.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    v = torch.randn(obj.num_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for m in sizes:
        sub = obj.subset(m, 0) if m < n else obj
        op = HessianOperator(sub)
        w = v.to(device=device, dtype=obj.dtype)
        times["forward"].append(_best(sub.evaluate, sync))
        times["gradient"].append(_best(sub.gradient, sync))
        times["hvp"].append(_best(lambda: op.matvec(w), sync))
        op.release()
    fit = {}
    if per_example:
        m = min(batch, 64)
        sub = obj.subset(m, 0) if m < n else obj
        try:
            fit["per_example"] = (0.0, _best(lambda: _per_example(sub, 256), sync, rounds=1) / m)
        except Exception:  # a model vmap cannot take: the measure says so when it runs; plan it as 10 gradients
            fit["per_example"] = None
    for k in KINDS[:3]:
        if len(sizes) == 1:
            fit[k] = (0.0, times[k][0] / sizes[0])
        else:
            c = max(0.0, (times[k][1] - times[k][0]) / (sizes[1] - sizes[0]))
            fit[k] = (max(0.0, times[k][1] - c * sizes[1]), c)
    if fit.get("per_example") is None:
        fit["per_example"] = (0.0, 10 * fit["gradient"][1])
    # rank 0's timings on every rank: the plan (and a budget's choices) must be one for all of them
    return Units(from_main(fit), batch, str(device), time.perf_counter() - t0)


@dataclass
class Choice:
    """One measure's planned settings and seconds (``skipped``: why it does not run)."""

    name: str
    settings: dict
    seconds: float
    work: str
    skipped: str | None = None
    steps: int = 0       # steps down from the given settings

    def to_dict(self) -> dict:
        return {"settings": self.settings, "planned_seconds": self.seconds, "work": self.work,
                **({"skipped": self.skipped} if self.skipped else {}), "reduced_steps": self.steps}


def choice(measure: Any, settings: dict, sizes: Sizes, units: Units, skipped: str | None = None,
           steps: int = 0) -> Choice:
    """The plan of ``measure`` at these settings: its seconds (0 when skipped) and what it is made of."""
    secs = 0.0 if skipped else planned_seconds(measure, settings, sizes, units)
    return Choice(measure.name, settings, secs, _planned(measure, settings, sizes, units)[1], skipped, steps)


def _planned(measure: Any, settings: dict, sizes: Sizes, units: Units) -> tuple[float, str]:
    if measure.cost is None:
        return 0.0, "not planned (the measure declares no cost)"
    w = measure.cost(settings, sizes)
    return w.seconds(units), w.describe()


def fit_budget(measures: list, settings: dict[str, dict], sizes: Sizes, units: Units, budget: float | None, *,
               work_fixed: bool = False) -> tuple[dict[str, Choice], int]:
    """Settings of ``measures`` (registered Measure objects) whose planned seconds add up to ≤ ``budget``.

    ``settings``: each measure's starting settings (defaults with the user's overrides). Returns the choices
    and the curvature subset size; with ``budget`` None, the plan of the settings as given. ``work_fixed``:
    the subset was named by the user (``max_samples``): never halved.
    """
    work = sizes.work
    by_name = {m.name: m for m in measures}
    chosen = {m.name: dict(settings[m.name]) for m in measures}
    steps = {m.name: 0 for m in measures}
    skipped: dict[str, str] = {}

    def at(n: int) -> Sizes:
        return replace(sizes, work=n)

    def cost(name: str, st: dict, n: int) -> float:
        return planned_seconds(by_name[name], st, at(n), units)

    def total(n: int) -> float:
        return sum(cost(name, st, n) for name, st in chosen.items() if name not in skipped)

    if budget is not None:
        while total(work) > budget:
            now = total(work)
            options = []  # (seconds saved, what to do)
            for m in measures:
                if m.name in skipped or m.cheaper is None:
                    continue
                nxt = m.cheaper(chosen[m.name], at(work))
                if nxt is not None:
                    options.append((cost(m.name, chosen[m.name], work) - cost(m.name, nxt, work), m.name, nxt))
            # Each quarter less of the curvature subset is one step (fine enough to end near the budget). The
            # first steps from the whole training set can cost more than they save (a subset's values are
            # measured again on a nested half, for their error): j steps at once count as j, saving/j.
            smaller, steps_down = work, 0
            while not work_fixed and smaller > MIN_WORK:
                smaller, steps_down = max(MIN_WORK, smaller * 3 // 4), steps_down + 1
                options.append(((now - total(smaller)) / steps_down, "", smaller))
            options = [o for o in options if o[0] > 1e-9]
            if options:
                _, name, nxt = max(options, key=lambda o: o[0])
                if name:
                    chosen[name], steps[name] = nxt, steps[name] + 1
                else:
                    work = nxt
                continue
            # every measure at its cheapest and the subset at its floor: skip the dearest until it fits
            # (nearly free ones always run: skipping them would not bring the plan under the budget)
            live = [m.name for m in measures if m.name not in skipped and cost(m.name, chosen[m.name], work) > FREE_SECONDS]
            if not live:
                break
            dear = max(live, key=lambda name: cost(name, chosen[name], work))
            skipped[dear] = (f"needs ≈{cost(dear, chosen[dear], work):.1f} s at its cheapest settings; "
                             f"the budget of {budget:g} s leaves less")
    while budget is not None and not work_fixed and work < sizes.work:  # a jump may overshoot: take back what fits
        bigger = min(sizes.work, -(-work * 11 // 10))
        if total(bigger) > budget:
            break
        work = bigger
    return {m.name: choice(m, chosen[m.name], at(work), units, skipped.get(m.name), steps[m.name])
            for m in measures}, work


class Budget:
    """The time left of a budget while an analysis runs; each measure re-planned against it.

    ``planned``: the plan's seconds of every measure still to run, in order (``(label, name) → seconds``).
    Before a measure runs, :meth:`fit` steps its settings down (``cheaper``) until its seconds and those
    planned after it fit the time left, or says why it is skipped; a measure that ran over its plan is so
    paid for by the ones after it, and one that ran under leaves its time to them.
    """

    def __init__(self, seconds: float | None, units: dict, planned: dict, start: float, fixed: set = frozenset()):
        # units: id(context) → its Units; fixed: the measures whose settings the user gave (run as given)
        self.seconds, self.units, self.planned, self.start, self.fixed = seconds, units, dict(planned), start, fixed

    def units_of(self, ctx: Any) -> Units | None:
        """The unit costs measured for this context (None: no plan)."""
        return self.units.get(id(ctx))

    def left(self) -> float:
        """Seconds left (inf without a budget)."""
        return math.inf if self.seconds is None else self.seconds - (time.perf_counter() - self.start)

    def fit(self, key: tuple, measure: Any, settings: dict, sizes: Sizes) -> tuple[dict, str | None]:
        """The settings of measure ``key`` that fit, and None; or the settings and why it does not run."""
        from .distributed import from_main

        mine = self.planned.pop(key, 0.0)
        units = self.units.get(key[0][0])
        if self.seconds is None or units is None or measure.cost is None or measure.name in self.fixed:
            return settings, None  # (the user's own settings run as given)
        return from_main(self._fit(mine, measure, settings, sizes, units))  # data-parallel: rank 0's clock decides

    def _fit(self, mine: float, measure: Any, settings: dict, sizes: Sizes, units: Units) -> tuple[dict, str | None]:
        later = sum(self.planned.values())
        room = self.left() - later
        if mine <= room:
            return settings, None
        st = settings
        while planned_seconds(measure, st, sizes, units) > max(room, 0.0) + FREE_SECONDS:  # (≈ free ones: run)
            nxt = measure.cheaper(st, sizes) if measure.cheaper is not None else None
            if nxt is None:
                return st, (f"needs ≈{planned_seconds(measure, st, sizes, units):.1f} s at its cheapest "
                            f"settings; {max(0.0, room):.1f} s of the budget were left for it")
            st = nxt
        return st, None


def planned_seconds(measure: Any, settings: dict, sizes: Sizes, units: Units) -> float:
    """A measure's planned seconds, with its rerun on a nested half when the curvature data are a subset."""
    secs = _planned(measure, settings, sizes, units)[0]
    if measure.subsample and sizes.work < sizes.train:
        secs += _planned(measure, settings, replace(sizes, work=sizes.work // 2), units)[0]
    return secs


def check_budget(budget: Any) -> float | None:
    """``budget`` as seconds (None: no budget). Raises SharpnessError naming the value."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) \
            or not 1 <= budget <= 10**7:
        raise SharpnessError(f"budget must be a number of seconds in [1, 1e7] (got {budget!r})")
    return float(budget)
