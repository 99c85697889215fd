"""sharpness: how batch size changes what a neural network learns.

Train small- and large-batch models, measure the curvature and sharpness of any checkpoint, draw loss
landscapes, and regenerate the figures of the batch-size literature. See README.md.
"""

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .data import DataSpec, load_data
from .errors import SharpnessError
from .models import GhostBatchNorm, ModelSpec, build_model
from .training import Schedule, TrainConfig, evaluate
from .training import train as train_model

__version__ = "0.1.0"

__all__ = [
    "Checkpoint", "load_checkpoint", "save_checkpoint",
    "DataSpec", "load_data",
    "SharpnessError",
    "GhostBatchNorm", "ModelSpec", "build_model",
    "Schedule", "TrainConfig", "evaluate", "train_model",
]
