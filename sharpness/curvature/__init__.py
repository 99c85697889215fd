"""Curvature from Hessian-vector products: one operator, free functions over it."""

from .density import DensityResult, spectral_density
from .lanczos import EigenResult, Krylov, hessian_eigenvalues, start_vector
from .operator import DenseOperator, HessianOperator
from .trace import TraceResult, hessian_trace

__all__ = ["HessianOperator", "DenseOperator", "hessian_eigenvalues", "EigenResult", "hessian_trace",
           "TraceResult", "spectral_density", "DensityResult", "Krylov", "start_vector"]
