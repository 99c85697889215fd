"""Learning-rate and batch-size schedules of the batch-size literature, as pure functions of the config.

With k = B / base_batch_size:
- LR scaling (Goyal 2017, linear): η = η_base·k; (Hoffer 2017, sqrt): η = η_base·√k.
- Gradual warm-up (Goyal 2017): the LR ramps linearly, per update, from ``warmup_from`` (default η_base)
  to the scaled LR over the first ``warmup_epochs`` epochs.
- Step decay: after each milestone epoch the LR is multiplied by ``decay_factor``.
- Batch growth (Smith 2018, "Don't decay the learning rate, increase the batch size"): at each milestone
  the batch size is multiplied by 1/decay_factor instead; once that would exceed ``max_batch_size``, the
  LR is decayed instead (the hybrid).
- Regime adaptation (Hoffer 2017): the number of epochs and every milestone are multiplied by k, so a
  large batch makes as many updates as the small one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SharpnessError
from .config import TrainConfig

__all__ = ["Schedule", "MAX_EPOCHS", "MAX_BATCH_SIZE"]

MAX_EPOCHS = 10**6            # epochs a resolved schedule may run (after regime adaptation)
MAX_BATCH_SIZE = 2**31 - 1    # examples in one update, batch growth included


@dataclass(frozen=True)
class Schedule:
    """The resolved schedule of a run: total epochs, milestones, peak LR; LR and batch size per epoch."""

    epochs: int
    milestones: tuple[int, ...]
    peak_lr: float
    warmup_epochs: float
    warmup_from: float
    batch_size0: int
    decay_factor: float
    batch_growth: bool
    max_batch_size: int | None

    def __post_init__(self):
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise SharpnessError(f"the schedule runs {self.epochs} epochs (epochs, after regime adaptation); "
                                 f"at most {MAX_EPOCHS}")
        for name in ("peak_lr", "warmup_from"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SharpnessError(f"the schedule's {'peak learning rate' if name == 'peak_lr' else 'warm-up LR'} "
                                     f"is {value} (lr after the scaling rule): not a finite number ≥ 0")
        for epoch in self._regimes():
            _, _, batch = self._decays(epoch)
            if not batch <= MAX_BATCH_SIZE:  # NaN and inf included
                raise SharpnessError(f"batch growth makes the batch size {batch:.3g} from epoch {epoch + 1}: more "
                                     f"than {MAX_BATCH_SIZE} examples per update (set max_batch_size, or use fewer "
                                     "milestones or a decay_factor nearer 1)")

    def _regimes(self) -> list[int]:
        """The 0-based epochs where the batch size or the LR's decay may change: 0 and the milestones run."""
        return [0, *sorted({m for m in self.milestones if 0 < m < self.epochs})]

    def batch_sizes(self) -> set[int]:
        """Every batch size the run uses (one per regime between milestones, not one per epoch)."""
        return {self.batch_size(e) for e in self._regimes()}

    @classmethod
    def from_config(cls, c: TrainConfig) -> "Schedule":
        """Resolve the scaling rule and regime adaptation of ``c``.

        Raises:
            SharpnessError: the resolved schedule is out of bounds: more than :data:`MAX_EPOCHS` epochs,
                a learning rate that overflows, or batch growth past :data:`MAX_BATCH_SIZE` examples.
        """
        base = c.base_batch_size or c.batch_size
        k = c.batch_size / base
        scale = {"none": 1.0, "linear": k, "sqrt": math.sqrt(k)}[c.lr_scaling]
        ra = k if c.regime_adaptation else 1.0
        return cls(
            epochs=max(1, int(round(c.epochs * ra))),
            milestones=tuple(int(round(m * ra)) for m in sorted(c.milestones)),
            peak_lr=c.lr * scale,
            warmup_epochs=float(c.warmup_epochs),
            warmup_from=c.lr if c.warmup_from is None else c.warmup_from,
            batch_size0=c.batch_size,
            decay_factor=c.decay_factor,
            batch_growth=c.batch_growth,
            max_batch_size=c.max_batch_size,
        )

    def _decays(self, epoch: int) -> tuple[int, int, float]:
        """(batch-size multiplications, LR multiplications, batch size) in force during 0-based ``epoch``."""
        passed = sum(1 for m in self.milestones if m <= epoch)
        if not self.batch_growth:
            return 0, passed, float(self.batch_size0)
        growth, batch = 0, float(self.batch_size0)
        for _ in range(passed):
            nxt = batch / self.decay_factor
            if self.max_batch_size is not None and nxt > self.max_batch_size * (1 + 1e-9):
                break
            batch, growth = nxt, growth + 1
            if not batch <= MAX_BATCH_SIZE:  # past any batch a run can use (inf included): __post_init__ refuses
                break
        return growth, passed - growth, self.batch_size0 / self.decay_factor ** growth if growth else batch

    def batch_size(self, epoch: int) -> int:
        """Batch size used in 0-based ``epoch``."""
        _, _, batch = self._decays(epoch)
        return int(round(batch))

    def lr(self, epoch: float) -> float:
        """LR at fractional epoch ``epoch`` (0-based epoch + fraction of its updates done)."""
        if epoch < self.warmup_epochs:
            return self.warmup_from + (self.peak_lr - self.warmup_from) * epoch / self.warmup_epochs
        _, lr_decays, _ = self._decays(int(math.floor(epoch)))
        return self.peak_lr * self.decay_factor ** lr_decays
