"""Sharpness measures: ε-sharpness, adaptive sharpness, PAC-Bayes flatness, noise scale, norms, reparametrization."""

from .adaptive import AdaptiveSharpnessResult, adaptive_sharpness
from .keskar import EpsSharpnessResult, eps_sharpness
from .noise_scale import NoiseScaleResult, gradient_noise_scale
from .norms import distance_from_init, norm_baselines
from .pacbayes import PacBayesResult, pacbayes_flatness
from .reparam import rescale_relu_layers, weight_layers

__all__ = ["eps_sharpness", "EpsSharpnessResult", "adaptive_sharpness", "AdaptiveSharpnessResult",
           "gradient_noise_scale", "NoiseScaleResult", "rescale_relu_layers", "weight_layers",
           "pacbayes_flatness", "PacBayesResult", "norm_baselines",
           "distance_from_init"]
