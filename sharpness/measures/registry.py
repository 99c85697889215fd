"""Measures as registered records: what ``analyze``, its CLI, the tables and the figures know of a measure.

A :class:`Measure` declares, in one place, its name, its settings (defaults and the ``--quick``
overrides), the summary keys that tables and figures show (:class:`Key`: the key, a label and a format)
and the function that computes it on a :class:`Context` — the checkpoint's model and its
objectives (:class:`~sharpness.objective.Objective`) — returning a :class:`Record` (summary scalars, details,
arrays). Everything else reads these definitions: ``report.json``, ``Report.table()``, the experiment
tables, ``--measures``. Register your own with :func:`register_measure`::

    @sh.register_measure("grad_norm", keys=[sh.Key("grad_norm", "‖∇L‖")])
    def grad_norm(ctx, settings):
        g = ctx.work.gradient()
        return sh.Record(summary={"grad_norm": float(g.norm())})

It then shows up in ``report.json``, in the table and in ``python -m sharpness.analyze --measures``
(for the CLI, the module that registers it must be imported: ``--plugin pkg.module``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import SharpnessError
from ..objective import Objective

__all__ = ["Key", "Record", "Context", "Measure", "MEASURES", "register_measure", "measure_names",
           "headline_keys"]


@dataclass(frozen=True)
class Key:
    """A summary key a measure defines, with how tables and figures show it."""

    name: str                    # the key in the record's summary (and in report.json)
    label: str                   # column / axis label
    fmt: str = "{:.4g}"          # number format in text tables
    percent: bool = False        # a fraction shown ×100 with "%" (accuracies)
    error: str | None = None     # the summary key of its error bar (shown "value ± error"; see Record.errors)

    def column(self) -> str:
        """The label with its unit."""
        return f"{self.label} %" if self.percent else self.label

    def show(self, value: Any, error: Any = None) -> str:
        """The value formatted for a table ("—" when missing), with ``± error`` when one is given."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "—"
        text = self.fmt.format(100 * value if self.percent else value)
        if isinstance(error, (int, float)) and not isinstance(error, bool) and error == error and error > 0:
            text += f" ± {100 * error if self.percent else error:.2g}"
        return text


@dataclass
class Record:
    """What a measure returns: scalars for tables, a details dict for the report, arrays for NPZ."""

    summary: dict
    details: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    # summary key → its error bar: a bound (Lanczos residual) or a standard error (Monte Carlo draws,
    # subsampling), 0.0 where the value is exact for the data; analyze adds the subsampling errors
    errors: dict = field(default_factory=dict)


@dataclass
class Context:
    """A checkpoint as measures see it.

    ``work`` is the objective over the training data used for curvature and sharpness (a fixed seeded
    subset when ``max_samples`` is set); ``train`` and ``test`` cover the whole training and test sets.
    ``path`` is the checkpoint's file (None for a model given in memory). ``shared`` holds what several
    measures of this checkpoint reuse (the Hessian operator and its Krylov run).

    One parameter space: ``work``, ``train`` and ``test`` select the same parameters (``params``: the
    patterns given to ``analyze``, None: every parameter that requires grad; ``work.names`` are the chosen
    ones). A measure that needs an objective or operator of its own builds it from these —
    ``HessianOperator(ctx.work)``, ``ctx.work.subset(n, seed)``, ``ctx.work.with_data(data)`` keep the
    selection — so every measure of one analysis is of the same θ.
    """

    label: str
    model: nn.Module
    work: Objective
    train: Objective
    test: Objective | None
    seed: int = 0
    batch_size: int | None = None
    progress: bool | None = None
    path: Path | None = None
    params: Any = None           # the parameter patterns of the objectives (None: those that require grad)
    shared: dict = field(default_factory=dict)  # work measures share (one Krylov run); cleared after the checkpoint
    plan: dict = field(default_factory=dict)    # measure → its planned settings and seconds (budget.Choice)


@dataclass(frozen=True)
class Measure:
    """A registered measure (see the module docstring)."""

    name: str
    fn: Callable[..., Record]    # fn(ctx, settings), or fn(ctx_a, ctx_b, settings) for a pair measure
    settings: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)
    keys: tuple = ()
    pair: bool = False           # computed on pairs of checkpoints (interpolation)
    figures: Callable[..., list] | None = None   # figures(record, out, labels, loss_label) → written paths
    description: str = ""
    together: Callable[..., list] | None = None  # together({label: arrays}, out, loss_label) → written paths
    ranges: dict = field(default_factory=dict)  # setting → bounds/choices beyond the defaults' (check_settings)
    fits: Callable[[dict, int], str | None] | None = None  # fits(settings, P) → why they cannot run, or None
    cost: Callable[..., Any] | None = None     # cost(settings, Sizes) → budget.Work: the passes it is made of
    cheaper: Callable[..., dict | None] | None = None  # cheaper(settings, Sizes) → the next cheaper settings
    subsample: tuple = ()        # summary keys computed on the curvature subset (ctx.work): their subsampling
                                 # error is estimated on a nested half of it when it is a strict subset

    def draw_together(self, arrays: dict[str, dict], out: Path, loss_label: str) -> list[Path]:
        """Write the figure that shows this measure of several checkpoints at once (on one scale)."""
        return list(self.together(arrays, out, loss_label)) if self.together and len(arrays) > 1 else []

    def settings_for(self, quick: bool) -> dict:
        """The settings a run uses: the defaults, with the quick overrides when ``quick``."""
        return {**self.settings, **(self.quick if quick else {})}

    def check_overrides(self, over: Any, where: str) -> dict:
        """``over`` as settings of this measure: its own keys, each of its default's or quick value's type.

        Raises:
            SharpnessError: not a dict, an unknown key, or a value of another type than the default's and
                the quick value's (numbers are interchangeable, bools are not numbers; None allows anything).
        """
        if not isinstance(over, dict):
            raise SharpnessError(f"{where} must be a table of settings (got {over!r})")
        unknown = sorted(set(over) - set(self.settings))
        if unknown:
            raise SharpnessError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
                                 f"{self.name} has {', '.join(self.settings) or 'no settings'}")
        kinds = [(bool,), (int, float), (str,), (list, tuple), (dict,)]

        def like(value: Any, example: Any) -> bool:
            kind = next((k for k in kinds if isinstance(example, k)), None)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            return kind is None or (isinstance(value, kind) and (kind != (int, float) or number))

        for key, value in over.items():
            examples = [self.settings[key], *([self.quick[key]] if key in self.quick else [])]
            if not any(like(value, e) for e in examples):
                raise SharpnessError(f"{where}.{key} is {value!r}, expected a value like "
                                     f"{' or '.join(map(repr, examples))}")
        return over

    def run(self, *contexts: Context, settings: dict) -> Record:
        """Compute the measure; the result must be a :class:`Record`."""
        rec = self.fn(*contexts, settings)
        if not isinstance(rec, Record):
            raise SharpnessError(f"measure '{self.name}' returned {type(rec).__name__}, not a Record")
        return rec

    def draw(self, rec: Record, out: Path, labels: tuple, loss_label: str) -> list[Path]:
        """Write the measure's figures into ``out`` (none if it declares no figure function).

        ``labels``: the checkpoint's label, or the two labels of a pair; ``loss_label`` names the y axis.
        """
        return list(self.figures(rec, out, labels, loss_label)) if self.figures else []


MEASURES: dict[str, Measure] = {}


def register_measure(name: str, fn: Callable | None = None, *, settings: dict | None = None,
                     quick: dict | None = None, keys: list | tuple = (), pair: bool = False,
                     figures: Callable | None = None, description: str = "", together: Callable | None = None,
                     ranges: dict | None = None, fits: Callable[[dict, int], str | None] | None = None,
                     cost: Callable | None = None, cheaper: Callable | None = None, subsample: tuple | list = ()):
    """Register a measure (usable as a decorator); a later registration of the same name replaces it.

    Args:
        name: the measure's name in ``report.json``, ``--measures`` and the figures.
        fn: ``fn(ctx, settings) → Record`` (``fn(ctx_a, ctx_b, settings)`` when ``pair``).
        settings: default settings (JSON-serializable; a change of settings invalidates cached results).
        quick: overrides for ``quick=True`` / ``--quick``.
        keys: the summary keys (:class:`Key`) that tables and figures show.
        pair: a measure of two checkpoints (like interpolation).
        figures: ``figures(record, out, labels, loss_label) → [paths]``: writes the measure's figures into
            the folder ``out``; the file names are the measure's own (e.g. ``density_<label>.png``).
        description: one line for ``--help``.
        together: ``together({label: arrays}, out, loss_label) → [paths]``: one figure of the measure for
            every analyzed checkpoint at once, on one scale (densities overlaid with one smoothing width,
            surfaces side by side with one colour scale); drawn when two or more checkpoints have it.
        ranges: what a setting allows beyond what its defaults imply (see :func:`sharpness.checks.check_settings`):
            ``{"delta": {"gt": 0, "lt": 1}, "norm": {"choices": ("l2", "linf")}}``, bounds and choices
            applying to each item of a list setting, ``"whole": (fn, text)`` to the value itself.
        fits: ``fits(settings, num_params) → str | None``: why the settings cannot run on a model of
            ``num_params`` parameters (e.g. k eigenvalues of fewer), checked once the model is built and
            before any measure runs; None when they can.
        cost: ``cost(settings, sizes) → Work`` (:mod:`sharpness.budget`): the passes the measure makes on
            data of these sizes, so ``analyze`` can plan it and fit it into ``budget=``. Without it the
            measure is run unplanned (its time is taken from what is left).
        cheaper: ``cheaper(settings, sizes) → settings | None``: the next cheaper settings a budget may
            choose (fewer products, draws, points), None at the cheapest.
        subsample: summary keys computed on ``ctx.work``; when that is a strict subset of the training
            data, ``analyze`` runs the measure again on a nested half of it and records each key's
            subsampling error (see :func:`sharpness.analysis.analyze`).
    """
    def add(f: Callable) -> Callable:
        if not isinstance(name, str) or not name or "/" in name:
            raise SharpnessError(f"a measure name must be a non-empty string without '/' (got {name!r})")
        if not callable(f):
            raise SharpnessError(f"measure '{name}': the function must be callable (got {type(f).__name__})")
        for what, g in (("fits", fits), ("cost", cost), ("cheaper", cheaper)):
            if g is not None and not callable(g):
                raise SharpnessError(f"measure '{name}': {what} must be a function (got {type(g).__name__})")
        if not isinstance(subsample, (tuple, list)) or not all(isinstance(k, str) for k in subsample):
            raise SharpnessError(f"measure '{name}': subsample must be a list of summary keys (got {subsample!r})")
        if ranges is not None and not (isinstance(ranges, dict) and all(isinstance(r, dict) for r in ranges.values())):
            raise SharpnessError(f"measure '{name}': ranges must be a dict of setting → dict of bounds/choices")
        unknown = sorted(set(ranges or {}) - set(settings or {}))
        if unknown:
            raise SharpnessError(f"measure '{name}': ranges name no setting: {', '.join(map(str, unknown))}")
        MEASURES[name] = Measure(name, f, dict(settings or {}), dict(quick or {}), tuple(keys), pair, figures,
                                 description, together, dict(ranges or {}), fits, cost, cheaper, tuple(subsample))
        return f

    return add(fn) if fn is not None else add


def measure_names() -> list[str]:
    """Registered measures, in registration order."""
    return list(MEASURES)


def headline_keys() -> list[tuple[str, Key]]:
    """(measure, key) of every key the registered measures show in tables, in registration order."""
    return [(m.name, k) for m in MEASURES.values() for k in m.keys]
