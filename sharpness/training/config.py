"""TrainConfig: every knob of a training run, with the paper each one comes from.

Each field's type is its annotation and its allowed values are declared beside it (``_opt(32, ge=1)``);
:meth:`TrainConfig.validated` checks every field from these declarations alone, and the command line
(:mod:`sharpness.cli`) generates one flag per field, with the field's comment as its help. So a new
field needs nothing but its line here.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import typing
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..checks import Option
from ..errors import SharpnessError
from ..errors import short as _short
from ..io import read_toml
from ..tracker import TRACKED

__all__ = ["TrainConfig", "Option"]


def _opt(default: Any = MISSING, *, factory: Callable[[], Any] | Any = MISSING, **allowed: Any) -> Any:
    """A dataclass field whose allowed values are declared beside it (read by :meth:`Option.check`).

    ``allowed`` holds bounds ``ge``/``gt``/``le``/``lt``, ``choices`` (a tuple), or ``check`` (a
    ``(predicate, description)`` pair). For a list field the bounds apply to each element.
    """
    return field(default=default, default_factory=factory, metadata=allowed)


def _is_device(value: str) -> bool:
    # The devices a run is trained and resumed on; meta, mps, xla, ... are not supported.
    return re.fullmatch(r"cpu|cuda(:(0|[1-9][0-9]{0,3}))?", value) is not None


_DEVICE = (_is_device, "one of cpu, cuda, cuda:N")


@dataclass
class TrainConfig:
    """A training run. Defaults: an MLP on MNIST-1D with Adam, the small-batch regime of Keskar 2017."""

    # --- data, model and loss (stored in the checkpoint as specs, so analysis rebuilds them) ---
    dataset: str = "mnist1d"              # a name from sharpness.data (mnist1d, digits, gaussian, mnist, ...)
                                          # or "pkg.module:fn"
    data_args: dict = field(default_factory=dict)   # e.g. {"num_samples": 10000}; {"root": ...} for mnist
    model: str = "mlp"                    # a name from sharpness.models or "pkg.module:fn"
    model_args: dict = field(default_factory=dict)  # e.g. {"widths": [512, 512]}; shapes come from the data
    loss: str = "cross_entropy"           # a loss name (cross_entropy, mse, nll, bce_with_logits) or
                                          # "pkg.module:fn"
    loss_args: dict = field(default_factory=dict)   # e.g. {"label_smoothing": 0.1} or {"reduction": "sum"}

    # --- optimisation ---
    optimizer: str = _opt("adam", choices=("adam", "adamw", "sgd"))  # the update rule
    lr: float = _opt(1e-3, gt=0)          # learning rate at base_batch_size (before any scaling rule)
    momentum: float = _opt(0.9, ge=0, lt=1)  # SGD momentum
    nesterov: bool = False                # SGD Nesterov momentum
    weight_decay: float = _opt(0.0, ge=0)  # L2 penalty (decoupled for adamw)
    decay_bn_and_bias: bool = False       # Goyal 2017: weight decay not applied to BN γ/β (and biases)
    grad_clip: float | None = _opt(None, gt=0)  # gradient-norm clipping (Hoffer 2017's code uses 5.0)
    sam: str = _opt("none", choices=("none", "sam", "asam"))  # sam (Foret 2021): each update uses the
                                          # gradient at w + ρ·g/‖g‖ (two forward/backward passes per update);
                                          # asam (Kwon 2021): the neighbourhood scaled by |w| + 0.01
    sam_rho: float = _opt(0.05, gt=0)     # the neighbourhood radius ρ (Foret: 0.05; Kwon's ASAM: 0.5)

    # --- batch size and the rules that adapt the learning rate to it ---
    batch_size: int = _opt(32, ge=1)      # examples per update (B)
    base_batch_size: int | None = _opt(None, ge=1)  # reference batch for lr_scaling; None = batch_size
    lr_scaling: str = _opt("none", choices=("none", "linear", "sqrt"))  # none | linear (Goyal 2017: lr·k)
                                          # | sqrt (Hoffer 2017: lr·√k), k = batch_size / base_batch_size
    warmup_epochs: float = _opt(0.0, ge=0)  # Goyal 2017: ramp the LR linearly from warmup_from to its peak
    warmup_from: float | None = _opt(None, ge=0)  # LR at the start of warm-up; None = lr (Goyal: η → kη)
    ghost_batch_size: int | None = _opt(None, ge=1)  # Hoffer 2017: BN statistics per ghost batch (BN models)

    # --- schedule ---
    epochs: int = _opt(10, ge=1)          # before regime_adaptation
    milestones: list[int] = _opt(factory=list, ge=0)  # epochs after which the LR is multiplied by
                                                      # decay_factor
    decay_factor: float = _opt(0.1, gt=0, le=1)  # the LR's factor at each milestone
    batch_growth: bool = False            # Smith 2018: at milestones multiply B by 1/decay_factor instead
    max_batch_size: int | None = _opt(None, ge=1)  # Smith 2018: once B would pass this cap, decay the LR
                                                   # instead
    regime_adaptation: bool = False       # Hoffer 2017: epochs and milestones multiplied by B/base
    target_train_loss: float | None = _opt(None, gt=0)  # stop after the first epoch whose training loss is
                                          # ≤ this (time-to-target, McCandlish 2018; matched-loss comparisons)

    init_from: str | None = None          # start from this checkpoint's weights instead of a fresh
                                          # initialization (Keskar 2017 Fig. 5 warm starts); the optimizer
                                          # state starts fresh, and ‖w − w₀‖ is measured from these weights

    # --- bookkeeping ---
    seed: int = _opt(0, ge=0, le=2**32 - 1)  # initialisation, data order and dropout (torch seeds each
                                          # epoch with seed·1000003 + epoch)
    save_every: int = _opt(1, ge=0)       # write ckpt_epochN.pt every N epochs (0: only init and final)
    save_steps: list[int] = _opt(factory=list, ge=1)  # also write ckpt_stepS.pt after these update counts
    trace_log_steps: bool = False         # Hoffer 2017 Fig. 2: ‖w − w₀‖ and the batch loss at ~10
                                          # log-spaced update counts per decade (history.json "trace")
    track_every: int = _opt(0, ge=0)      # curvature along training: measure every N updates (0: off), on
                                          # the training-mode loss of a fixed subset (history.json "tracked")
    track_measures: list[str] = _opt(factory=lambda: ["lambda_max"], choices=TRACKED)  # what to measure,
                                          # from lambda_max (always taken), trace, eps_sharpness
    track_samples: int = _opt(1000, ge=2)  # the tracker's subset of the training set (seeded; ≥ 2, as BN
                                          # in training mode needs two examples)
    eval_batch_size: int = _opt(4096, ge=1)  # batch size of the per-epoch full-data evaluation (memory only)
    device: str = _opt("cpu", check=_DEVICE)  # where to train (CUDA's presence is checked when training
                                              # starts)

    @classmethod
    def options(cls) -> tuple[Option, ...]:
        """Every field with its type, allowed values, default and comment, in declaration order."""
        return _options(cls)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys and bad values with a clear message.

        Raises:
            SharpnessError: ``d`` is not a dict, names an unknown field, or holds a bad value.
        """
        if not isinstance(d, dict):
            raise SharpnessError(f"a training config must be a table of options (got {_short(d)})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(repr, set(d) - names)) if not all(isinstance(k, str) for k in d) else sorted(set(d) - names)
        if unknown:
            raise SharpnessError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d).validated()

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a UTF-8 TOML file; keys are the field names (a ``[train]`` table is also accepted).

        Raises:
            SharpnessError: the file is missing, unreadable, not UTF-8 or not TOML, or holds bad options.
        """
        d = read_toml(path, "file")
        try:
            return cls.from_dict(d.get("train", d))
        except SharpnessError as e:
            raise SharpnessError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, stored in checkpoints."""
        return asdict(self)

    def validated(self) -> TrainConfig:
        """Check every field against its type and allowed values; return self.

        Raises:
            SharpnessError: the first bad field, named with its value and what it allows.
        """
        for o in self.options():
            value = getattr(self, o.name)
            try:
                o.check(value)
            except (OverflowError, ValueError) as e:  # an integer too large for a float field (10**400)
                if isinstance(e, SharpnessError):
                    raise
                raise SharpnessError(f"{o.name} must be {o.describe()} (got {_short(value)})") from None
        return self


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _comments(cls: type) -> dict[str, str]:
    """Each field's source comment, with the comment-only lines that continue it (indented deeper)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen install): flags still work, without help
        return {}
    lines = source.splitlines()
    notes = {t.start[0]: t.string.lstrip("#").strip()
             for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    docs = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        parts = [notes[n] for n in range(node.lineno, node.end_lineno + 1) if n in notes]
        field_indent = _indent(lines[node.lineno - 1])
        n = node.end_lineno + 1
        while n in notes and lines[n - 1].lstrip().startswith("#") and _indent(lines[n - 1]) > field_indent:
            parts.append(notes[n])
            n += 1
        docs[node.target.id] = " ".join(parts)
    return docs


def _unpack(hint: Any) -> tuple[type, bool, type | None]:
    """(type, optional, item) of an annotation, e.g. ``(int, True, None)`` for ``int | None``."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    item = (typing.get_args(hint) or (None,))[0] if origin is list else None
    return origin, optional, item


@functools.lru_cache(maxsize=None)
def _options(cls: type) -> tuple[Option, ...]:
    hints, docs = typing.get_type_hints(cls), _comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        typ, optional, item = _unpack(hints[f.name])
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out.append(Option(f.name, typ, optional, item, default, dict(f.metadata), docs.get(f.name, "")))
    return tuple(out)
