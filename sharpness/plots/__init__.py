"""Figures of the batch-size literature; inputs are result objects or the files they were saved to."""

from .landscape import plot_line, plot_parametric, plot_surface, plot_trajectory
from .spectrum import plot_spectral_density

__all__ = ["plot_spectral_density", "plot_parametric", "plot_line", "plot_surface", "plot_trajectory"]
