"""Sharpness measures: Keskar's ε-sharpness, adaptive sharpness, the gradient noise scale, reparametrization."""

from .adaptive import AdaptiveSharpnessResult, adaptive_sharpness
from .keskar import EpsSharpnessResult, eps_sharpness
from .noise_scale import NoiseScaleResult, gradient_noise_scale
from .reparam import rescale_relu_layers, weight_layers

__all__ = ["eps_sharpness", "EpsSharpnessResult", "adaptive_sharpness", "AdaptiveSharpnessResult",
           "gradient_noise_scale", "NoiseScaleResult", "rescale_relu_layers", "weight_layers"]
