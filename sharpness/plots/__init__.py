"""Figures of the batch-size literature; inputs are result objects or the files they were saved to.

Every plot function draws into ``ax`` when given (or a new figure at the style's column width), writes
``path`` in the format its suffix names, and returns the axes; :func:`figure_options` sets the formats,
resolution and venue style of everything drawn inside it.
"""

from .landscape import plot_line, plot_parametric, plot_surface, plot_surfaces, plot_trajectory
from .spectrum import plot_spectral_densities, plot_spectral_density
from .style import STYLES, figure_options

__all__ = ["plot_spectral_density", "plot_spectral_densities", "plot_parametric", "plot_line", "plot_surface",
           "plot_surfaces", "plot_trajectory", "figure_options", "STYLES"]
