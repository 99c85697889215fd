"""TrainConfig: every knob of a training run, with the paper each one comes from."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SharpnessError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """A training run. Defaults: an MLP on MNIST-1D with Adam, the small-batch regime of Keskar 2017."""

    # --- data and model (stored in the checkpoint as specs, so analysis rebuilds them) ---
    dataset: str = "mnist1d"              # a name from sharpness.data (mnist1d, digits, gaussian, mnist, ...)
    data_args: dict = field(default_factory=dict)   # e.g. {"num_samples": 10000}; {"root": ...} for mnist
    model: str = "mlp"                    # a name from sharpness.models
    model_args: dict = field(default_factory=dict)  # e.g. {"widths": [512, 512]}; shapes come from the data

    # --- optimisation ---
    optimizer: str = "adam"               # adam | adamw | sgd
    lr: float = 1e-3                      # learning rate at base_batch_size (before any scaling rule)
    momentum: float = 0.9                 # SGD momentum
    nesterov: bool = False                # SGD Nesterov momentum
    weight_decay: float = 0.0
    decay_bn_and_bias: bool = False       # Goyal 2017: weight decay not applied to BN γ/β (and biases)
    grad_clip: float | None = None        # gradient-norm clipping (Hoffer 2017's code uses 5.0)

    # --- batch size and the rules that adapt the learning rate to it ---
    batch_size: int = 32
    base_batch_size: int | None = None    # reference batch for lr_scaling; None = batch_size (no scaling)
    lr_scaling: str = "none"              # none | linear (Goyal 2017: lr·k) | sqrt (Hoffer 2017: lr·√k), k=B/base
    warmup_epochs: float = 0.0            # Goyal 2017: ramp the LR linearly from warmup_from to its peak
    warmup_from: float | None = None      # LR at the start of warm-up; None = lr (Goyal: η → kη)
    ghost_batch_size: int | None = None   # Hoffer 2017: BN statistics per ghost batch (models with BN)

    # --- schedule ---
    epochs: int = 10
    milestones: list = field(default_factory=list)  # epochs after which the LR is multiplied by decay_factor
    decay_factor: float = 0.1
    batch_growth: bool = False            # Smith 2018: at milestones multiply B by 1/decay_factor instead
    max_batch_size: int | None = None     # Smith 2018: once B would pass this cap, decay the LR instead
    regime_adaptation: bool = False       # Hoffer 2017: epochs and milestones multiplied by B/base
    target_train_loss: float | None = None  # stop after the first epoch whose training loss is ≤ this
                                            # (time-to-target, McCandlish 2018; matched-loss comparisons)

    # --- bookkeeping ---
    seed: int = 0
    save_every: int = 1                   # write ckpt_epochN.pt every N epochs (0: only init and final)
    save_steps: list = field(default_factory=list)  # also write ckpt_stepS.pt after these update counts
    trace_log_steps: bool = False         # Hoffer 2017 Fig. 2: ‖w − w₀‖ and the batch loss at ~10
                                          # log-spaced update counts per decade (history.json "trace")
    eval_batch_size: int = 4096           # batch size of the per-epoch full-data evaluation (memory only)
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys with a clear message."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SharpnessError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d).validated()

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        """Read a TOML file; keys are the field names (a ``[train]`` table is also accepted)."""
        try:
            d = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SharpnessError(f"{path}: no such file") from None
        except tomllib.TOMLDecodeError as e:
            raise SharpnessError(f"{path}: not valid TOML: {e}") from None
        return cls.from_dict(d.get("train", d))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, stored in checkpoints."""
        return asdict(self)

    def validated(self) -> "TrainConfig":
        """Check values; return self."""
        if self.batch_size < 1:
            raise SharpnessError(f"batch_size must be ≥ 1 (got {self.batch_size})")
        if self.lr_scaling not in ("none", "linear", "sqrt"):
            raise SharpnessError(f"lr_scaling must be none, linear or sqrt (got '{self.lr_scaling}')")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise SharpnessError(f"optimizer must be adam, adamw or sgd (got '{self.optimizer}')")
        if not 0 < self.decay_factor <= 1:
            raise SharpnessError(f"decay_factor must be in (0, 1] (got {self.decay_factor})")
        if self.target_train_loss is not None and not self.target_train_loss > 0:
            raise SharpnessError(f"target_train_loss must be > 0 (got {self.target_train_loss})")
        if self.epochs < 1:
            raise SharpnessError(f"epochs must be ≥ 1 (got {self.epochs})")
        return self
