import math

import pytest

from sharpness import Schedule, TrainConfig


def sched(**kw):
    return Schedule.from_config(TrainConfig(**kw))


# (config, epoch (fractional), expected lr, expected batch size) — values worked out from the formulas.
CASES = [
    # no scaling: the LR is the given one at any batch size
    (dict(lr=0.1, batch_size=1024, base_batch_size=256), 0.0, 0.1, 1024),
    # Goyal linear: k = 4 → 0.4
    (dict(lr=0.1, batch_size=1024, base_batch_size=256, lr_scaling="linear"), 3.0, 0.4, 1024),
    # Hoffer sqrt: k = 4 → 0.2
    (dict(lr=0.1, batch_size=1024, base_batch_size=256, lr_scaling="sqrt"), 3.0, 0.2, 1024),
    # warm-up over 5 epochs from η=0.1 to kη=0.8 (k=8): at 2.5 epochs, halfway → 0.45
    (dict(lr=0.1, batch_size=2048, base_batch_size=256, lr_scaling="linear", warmup_epochs=5), 2.5, 0.45, 2048),
    (dict(lr=0.1, batch_size=2048, base_batch_size=256, lr_scaling="linear", warmup_epochs=5), 0.0, 0.1, 2048),
    (dict(lr=0.1, batch_size=2048, base_batch_size=256, lr_scaling="linear", warmup_epochs=5), 5.0, 0.8, 2048),
    # step decay: milestones 3, 6, decay 0.1
    (dict(lr=1.0, milestones=[3, 6]), 2.99, 1.0, 32),
    (dict(lr=1.0, milestones=[3, 6]), 3.0, 0.1, 32),
    (dict(lr=1.0, milestones=[3, 6]), 7.5, 0.01, 32),
    # Smith: batch ×5 instead of LR ÷5
    (dict(lr=1.0, batch_size=16, milestones=[2, 4], decay_factor=0.2, batch_growth=True), 1.0, 1.0, 16),
    (dict(lr=1.0, batch_size=16, milestones=[2, 4], decay_factor=0.2, batch_growth=True), 2.0, 1.0, 80),
    (dict(lr=1.0, batch_size=16, milestones=[2, 4], decay_factor=0.2, batch_growth=True), 4.0, 1.0, 400),
    # hybrid: cap 100 → the second milestone decays the LR instead
    (dict(lr=1.0, batch_size=16, milestones=[2, 4], decay_factor=0.2, batch_growth=True, max_batch_size=100),
     4.0, 0.2, 80),
    # regime adaptation: k = 4 → milestone 3 moves to 12
    (dict(lr=1.0, batch_size=128, base_batch_size=32, milestones=[3], regime_adaptation=True), 11.0, 1.0, 128),
    (dict(lr=1.0, batch_size=128, base_batch_size=32, milestones=[3], regime_adaptation=True), 12.0, 0.1, 128),
]


@pytest.mark.parametrize("cfg,epoch,lr,bs", CASES)
def test_rule_table(cfg, epoch, lr, bs):
    s = sched(**cfg)
    assert math.isclose(s.lr(epoch), lr, rel_tol=1e-12)
    assert s.batch_size(int(epoch)) == bs


def test_regime_adaptation_multiplies_epochs():
    s = sched(epochs=10, batch_size=128, base_batch_size=32, milestones=[3, 7], regime_adaptation=True)
    assert s.epochs == 40 and s.milestones == (12, 28)
    assert sched(epochs=10).epochs == 10
