"""Loss landscapes: directions, 1D/2D grids and interpolation between models, BatchNorm modes."""

from .directions import (
                         Directions,
                         between,
                         cosine,
                         eigenvector_directions,
                         flat_params,
                         pca_directions,
                         random_directions,
)
from .grid import Interpolation, Surface, interpolate, recompute_bn_buffers, surface

__all__ = ["Directions", "random_directions", "between", "eigenvector_directions", "pca_directions",
           "flat_params", "cosine", "surface", "interpolate", "Surface", "Interpolation", "recompute_bn_buffers"]
