"""sharpness: how batch size changes what a neural network learns.

Train small- and large-batch models, measure the curvature and sharpness of any checkpoint, draw loss
landscapes, and regenerate the figures of the batch-size literature. See README.md.
"""

import os as _os
import sys as _sys

# ``python -m sharpness.X`` puts the current folder first on sys.path, so a tqdm.py or scipy.py there would
# be imported in place of the library the toolkit uses. Under -m the folder is taken off the path here,
# before any library is imported, and comes back (at the end: installed libraries first) only for code
# the user names (specs.user_folder_on_path).
if _sys.argv[:1] == ["-m"] and _sys.path and _os.path.abspath(_sys.path[0] or ".") == _os.getcwd():
    _USER_FOLDER: str | None = _os.path.abspath(_sys.path.pop(0) or ".")
else:
    _USER_FOLDER = None

from . import plots, reporting  # noqa: E402 - after the path is settled
from .allocator import keep_freed_memory
from .analysis import Report, analyze
from .batches import Batches
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .correlation import CorrelationResult, correlate
from .curvature import (
                        DenseOperator,
                        DensityResult,
                        EigenResult,
                        HessianOperator,
                        Krylov,
                        TraceResult,
                        hessian_eigenvalues,
                        hessian_trace,
                        spectral_density,
                        start_vector,
)
from .data import DataSpec, load_data, register_data
from .errors import SharpnessError
from .landscape import Directions, Interpolation, Surface, interpolate, random_directions, surface
from .losses import Loss, make_loss, register_loss
from .measures import (
                        AdaptiveSharpnessResult,
                        EpsSharpnessResult,
                        NoiseScaleResult,
                        adaptive_sharpness,
                        eps_sharpness,
                        gradient_noise_scale,
                        rescale_relu_layers,
)
from .measures.registry import Context, Key, Measure, Record, measure_names, register_measure
from .models import GhostBatchNorm, ModelSpec, build_model, register_model
from .objective import Objective
from .specs import Spec
from .tracker import SharpnessTracker
from .training import Schedule, TrainConfig, evaluate
from .training import train as train_model
from .training.sam import SAM

__version__ = "0.1.0"

__all__ = [
    "analyze", "Report", "keep_freed_memory", "plots", "reporting", "correlate", "CorrelationResult",
    "Objective", "Batches", "Loss", "make_loss", "register_loss",
    "register_measure", "measure_names", "Measure", "Key", "Record", "Context",
    "HessianOperator", "DenseOperator", "hessian_eigenvalues", "hessian_trace", "spectral_density",
    "EigenResult", "TraceResult", "DensityResult", "Krylov", "start_vector",
    "eps_sharpness", "adaptive_sharpness", "gradient_noise_scale", "rescale_relu_layers",
    "EpsSharpnessResult", "AdaptiveSharpnessResult", "NoiseScaleResult",
    "interpolate", "surface", "random_directions", "Directions", "Surface", "Interpolation",
    "Checkpoint", "load_checkpoint", "save_checkpoint",
    "Spec", "DataSpec", "load_data", "register_data",
    "SharpnessError",
    "GhostBatchNorm", "ModelSpec", "build_model", "register_model",
    "Schedule", "TrainConfig", "evaluate", "train_model", "SharpnessTracker", "SAM",
]
