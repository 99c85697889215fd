"""Training SB/LB models: the config, the LR/batch-size schedules and the loop."""

from .config import TrainConfig
from .loop import evaluate, train
from .schedules import Schedule

__all__ = ["TrainConfig", "Schedule", "train", "evaluate"]
