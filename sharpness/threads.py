"""NumPy's and SciPy's BLAS kept to one thread while the analyzers run.

NumPy and SciPy each load an OpenBLAS whose worker threads keep spinning for a while after every call. The
analyzers make small NumPy/SciPy calls between torch's products and gradients — the eigendecomposition of
a Lanczos tridiagonal at every step, L-BFGS-B's vector updates — and the spinning threads then hold the
cores torch's next pass needs. Measured on 2 cores (quickstart MLP, 2000 examples): 80 Lanczos steps of
the smallest-eigenvalue search 8.4 s → 3.3 s with one BLAS thread, ε-sharpness 2.0 s → 1.4 s. torch's own
threads (OpenMP) are not touched; the BLAS calls are on matrices of at most a few hundred rows, where one
thread loses nothing. Applied to every public analyzer, ``analyze`` and the tracker (via threadpoolctl).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread"]

_controller: ThreadpoolController | None = None


def _limit() -> Any:
    global _controller
    if _controller is None:  # found once, after NumPy and SciPy have loaded their libraries
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def one_blas_thread(fn: Callable) -> Callable:
    """``fn`` with NumPy's and SciPy's BLAS limited to one thread while it runs (module docstring)."""
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _limit():
            return fn(*args, **kwargs)
    return wrapped
