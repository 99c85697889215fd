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

from .config import TrainConfig

__all__ = ["Schedule"]


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

    @classmethod
    def from_config(cls, c: TrainConfig) -> "Schedule":
        """Resolve the scaling rule and regime adaptation of ``c``."""
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

    def _decays(self, epoch: int) -> tuple[int, int]:
        """(batch-size multiplications, LR multiplications) in force during 0-based ``epoch``."""
        passed = sum(1 for m in self.milestones if m <= epoch)
        if not self.batch_growth:
            return 0, passed
        growth, batch = 0, self.batch_size0
        for _ in range(passed):
            nxt = batch / self.decay_factor
            if self.max_batch_size is not None and nxt > self.max_batch_size * (1 + 1e-9):
                break
            batch, growth = nxt, growth + 1
        return growth, passed - growth

    def batch_size(self, epoch: int) -> int:
        """Batch size used in 0-based ``epoch``."""
        growth, _ = self._decays(epoch)
        return int(round(self.batch_size0 / self.decay_factor ** growth))

    def lr(self, epoch: float) -> float:
        """LR at fractional epoch ``epoch`` (0-based epoch + fraction of its updates done)."""
        if epoch < self.warmup_epochs:
            return self.warmup_from + (self.peak_lr - self.warmup_from) * epoch / self.warmup_epochs
        _, lr_decays = self._decays(int(math.floor(epoch)))
        return self.peak_lr * self.decay_factor ** lr_decays
