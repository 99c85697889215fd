"""Tiny, fast training configs shared by the tests."""

from sharpness import TrainConfig


def tiny_config(**kw) -> TrainConfig:
    base = dict(dataset="gaussian", data_args={"n_train": 192, "n_test": 64, "dim": 6, "classes": 3},
                model="mlp", model_args={"widths": [12]}, batch_size=16, epochs=3, lr=1e-2, seed=0)
    base.update(kw)
    return TrainConfig(**base)
