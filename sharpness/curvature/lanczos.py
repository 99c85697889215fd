"""Extreme Hessian eigenpairs: thick-restart Lanczos with full reorthogonalization, in torch on the device.

The Krylov basis lives on the operator's device in its dtype; only the small projected matrix
T = Vᵀ H V (at most ``max_basis`` square) goes to the host for its eigendecomposition. Each step
orthogonalizes the new vector twice against the whole basis (classical Gram–Schmidt, twice: Giraud et
al. 2005), and the coefficients fill T, so T stays exact after restarts (Wu & Simon 2000, thick restart).
A Ritz pair (θ, y = V s) has residual ‖Hy − θy‖ = β_m |s_m| (the Lanczos relation HV = VT + β v eₘᵀ),
so convergence is checked without extra products.

Multiplicities: a Lanczos run from one start vector sees one copy of each eigenvalue (in exact
arithmetic; rounding reveals the others only late), so a repeated eigenvalue can be missed while every
residual is small. After convergence (``which`` "largest" or "smallest"), the operator deflated by the
found vectors, (I − VVᵀ)H(I − VVᵀ), is searched for its extreme eigenvalue from a fresh start vector; one
that reaches the k-th found value by more than the tolerance is a missed copy: it joins the set, the
k-th drops out, and the search repeats (one equal to the k-th is a tie at the cut: the set is already a
valid top k). ``converged`` is true only when the residuals meet the tolerance
*and* this check found no missed copy; ``extra["copies_found"]`` counts the copies it added. The
guarantee is that of the check's own Lanczos run: a copy is missed only if that run also misses it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..checks import require
from ..errors import SharpnessError
from ..progress import progress_bar
from .operator import as_operator

__all__ = ["EigenResult", "hessian_eigenvalues", "lanczos_tridiagonal", "krylov_basis"]


@dataclass
class EigenResult:
    """Eigenpairs of a Hessian: values sorted descending (numpy), vectors (k × P torch, on device)."""

    values: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray          # ‖Hv − λv‖ per pair
    converged: bool                # every wanted pair met residual ≤ tol·max(|λ|, floor)
    n_hvps: int
    seconds: float
    method: str
    which: str
    tol: float
    seed: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Scalars and small arrays for reports (vectors omitted)."""
        return {"values": self.values.tolist(), "residuals": self.residuals.tolist(),
                "converged": self.converged, "n_hvps": self.n_hvps, "seconds": self.seconds,
                "method": self.method, "which": self.which, "tol": self.tol, "seed": self.seed, **self.extra}


def _start_vector(n: int, seed: int, device, dtype) -> torch.Tensor:
    # Drawn on the operator's device: a CPU draw of a ResNet-sized vector costs more than the products.
    g = torch.Generator(device=device).manual_seed(seed)
    v = torch.randn(n, generator=g, device=device, dtype=dtype)
    return v / v.norm()


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices into ascending ``theta`` of the wanted Ritz values."""
    m = len(theta)
    if which == "largest":
        return np.arange(m - 1, max(m - 1 - k, -1), -1)
    if which == "smallest":
        return np.arange(0, min(k, m))
    if which == "both":
        if 2 * k >= m:
            return np.arange(m)
        return np.concatenate([np.arange(m - 1, m - 1 - k, -1), np.arange(0, k)])
    raise SharpnessError(f"which must be 'largest', 'smallest' or 'both' (got {which!r})")


def _orthogonalize(V: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return w minus its projection on the rows of V, done twice; returns (w, coefficients)."""
    h = V @ w
    w = w - V.T @ h
    h2 = V @ w
    return w - V.T @ h2, h + h2


def hessian_eigenvalues(op, k: int = 1, *, which: str = "largest", tol: float = 1e-4,
                        max_hvps: int | None = None, max_basis: int | None = None, seed: int = 0,
                        method: str = "lanczos", copies: bool = True, progress: bool | None = None) -> EigenResult:
    """The k extreme eigenpairs of a symmetric operator (a Hessian, or a dense matrix in tests).

    Lanczos (default) stops when every wanted Ritz pair has ‖Hv − λv‖ ≤ tol·max(|λ|, 1e-3·‖H‖ₑₛₜ), the
    floor keeping eigenvalues near zero from demanding an impossible relative accuracy. ``method="power"``
    runs deflated power iteration (PyHessian's algorithm) with the same residual test, for comparison.

    Args:
        op: a :class:`HessianOperator`, an object with ``matvec`` and ``num_params``, or a square matrix.
        k: number of eigenpairs (for ``which="both"``: k from each end).
        which: ``"largest"`` (algebraically), ``"smallest"`` or ``"both"``.
        tol: relative residual tolerance.
        max_hvps: product budget (default: 40·k + 200, at most the dimension for Lanczos + 1).
        max_basis: Krylov basis size before a thick restart (default: max(4k + 40, 60)).
        seed: seed of the random start vector.
        method: ``"lanczos"`` or ``"power"``.
        copies: after convergence, search the deflated operator for missed copies of repeated eigenvalues
            (module docstring; one more Lanczos run, plus one per copy found). False: the residual test
            alone, which cannot see a missed copy.
        progress: show a progress bar (None: only on a terminal).

    Returns:
        :class:`EigenResult` with values descending.
    """
    op = as_operator(op)
    n = op.num_params
    require("which", which, str, choices=("largest", "smallest", "both"))
    require("method", method, str, choices=("lanczos", "power"))
    require("k", k, int, ge=1, le=n // (2 if which == "both" else 1))
    require("tol", tol, float, gt=0)
    require("max_hvps", max_hvps, int, optional=True, ge=1)
    require("max_basis", max_basis, int, optional=True, ge=1)
    require("seed", seed, int)
    kk = k * (2 if which == "both" else 1)
    max_hvps = max_hvps or 40 * kk + 200
    start, hvps0 = time.perf_counter(), getattr(op, "n_hvps", 0)
    extra = {}
    if method == "lanczos":
        values, vectors, residuals, converged = _lanczos(op, k, which, tol, max_hvps, max_basis, seed, progress)
        require("copies", copies, bool)
        if copies and which != "both" and converged:
            values, vectors, residuals, converged, extra = _copies(
                op, k, which, tol, max_hvps - (getattr(op, "n_hvps", 0) - hvps0), max_basis, seed,
                values, vectors, residuals)
    elif method == "power":
        if which != "largest":
            raise SharpnessError("method='power' finds the largest eigenvalues only")
        values, vectors, residuals, converged = _power(op, k, tol, max_hvps, seed, progress)
    else:
        raise SharpnessError(f"method must be 'lanczos' or 'power' (got {method!r})")
    order = np.argsort(-values, kind="stable")
    return EigenResult(values=values[order], vectors=vectors[torch.as_tensor(order, device=vectors.device)],
                       residuals=residuals[order], converged=converged,
                       n_hvps=getattr(op, "n_hvps", 0) - hvps0, seconds=time.perf_counter() - start,
                       method=method, which=which, tol=tol, seed=seed, extra=extra)


class _Deflated:
    """(I − VVᵀ) H (I − VVᵀ) for orthonormal rows V: H with the found eigenvectors taken out."""

    def __init__(self, op, V: torch.Tensor):
        self.op, self.V = op, V
        self.num_params, self.device, self.dtype = op.num_params, op.device, op.dtype
        self.n_hvps = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.n_hvps += 1
        v = v - self.V.T @ (self.V @ v)
        w = self.op.matvec(v)
        return w - self.V.T @ (self.V @ w)


def _copies(op, k, which, tol, budget, max_basis, seed, values, vectors, residuals):
    """Search the deflated operator for missed copies of the wanted eigenvalues (module docstring)."""
    found, rounds = 0, 0
    while rounds <= 2 * k and budget > 2 and len(values) < op.num_params:
        rounds += 1
        D = _Deflated(op, vectors)
        v, x, r, ok = _lanczos(D, 1, which, tol, budget, max_basis, seed + 7919 * rounds, False)
        budget -= D.n_hvps
        if not ok:  # the check itself did not settle: no guarantee
            return values, vectors, residuals, False, {"copies_found": found, "copy_check": "unsettled"}
        edge = values.min() if which == "largest" else values.max()
        scale = tol * max(abs(edge), 1e-3 * np.abs(values).max())
        # beyond the k-th by more than the tolerance: a missed copy (equal to it: a tie at the cut, fine)
        missed = v[0] > edge + scale if which == "largest" else v[0] < edge - scale
        if not missed:
            return values, vectors, residuals, True, {"copies_found": found, "copy_check": "none missed"}
        found += 1
        values = np.concatenate([values, v])
        vectors = torch.cat([vectors, x])
        residuals = np.concatenate([residuals, r])
        order = np.argsort(-values if which == "largest" else values, kind="stable")[:k]
        values, vectors, residuals = values[order], vectors[torch.as_tensor(order, device=vectors.device)], residuals[order]
    return values, vectors, residuals, False, {"copies_found": found, "copy_check": "budget or rounds spent"}


def _lanczos(op, k, which, tol, max_hvps, max_basis, seed, progress):
    n = op.num_params
    kk = k * (2 if which == "both" else 1)
    max_basis = min(n, max_basis or max(4 * kk + 40, 60))
    V = torch.empty(max_basis + 1, n, device=op.device, dtype=op.dtype)
    V[0] = _start_vector(n, seed, op.device, op.dtype)
    T = np.zeros((max_basis, max_basis))
    m, hvps, beta = 0, 0, 0.0
    bar = progress_bar(progress, total=max_hvps, desc="lanczos", unit="hvp")
    while True:
        w = op.matvec(V[m])
        hvps += 1
        bar.update(1)
        w, h = _orthogonalize(V[:m + 1], w)
        h = h.double().cpu().numpy()
        T[:m + 1, m] = h
        T[m, :m + 1] = h
        beta = float(w.norm())
        m += 1
        theta, S = np.linalg.eigh(T[:m, :m])
        idx = _wanted(theta, k, which)
        res = np.abs(beta * S[m - 1, idx])
        scale = np.maximum(np.abs(theta[idx]), 1e-3 * np.abs(theta).max())
        done = len(idx) == kk and bool(np.all(res <= tol * scale))
        breakdown = beta <= 1e-12 * max(1.0, np.abs(theta).max())  # an invariant subspace was found
        if done or breakdown or m == n or hvps >= max_hvps:
            break
        V[m] = w / beta
        if m == max_basis:  # thick restart: keep the Ritz vectors nearest the wanted end(s)
            per_end = max(kk, min(m // 2, m - 2)) // (2 if which == "both" else 1)
            keep = _wanted(theta, per_end, which)
            keep = np.sort(keep)
            l_ = len(keep)
            S_keep = torch.as_tensor(S[:, keep], device=op.device, dtype=op.dtype)
            V[:l_] = S_keep.T @ V[:m]
            V[l_] = V[m]
            T[:] = 0.0
            T[np.arange(l_), np.arange(l_)] = theta[keep]
            m = l_
    bar.close()
    S_w = torch.as_tensor(S[:, idx], device=op.device, dtype=op.dtype)
    vectors = S_w.T @ V[:m]
    scale = np.maximum(np.abs(theta[idx]), 1e-3 * np.abs(theta).max())
    converged = len(idx) == kk and bool(np.all(res <= tol * scale))
    return theta[idx].copy(), vectors, res, converged


def _power(op, k, tol, max_hvps, seed, progress):
    """Deflated power iteration: each eigenvector in turn, orthogonalized against those found."""
    n = op.num_params
    found: list[torch.Tensor] = []
    values, residuals, conv = [], [], True
    budget = max_hvps
    bar = progress_bar(progress, total=max_hvps, desc="power", unit="hvp")
    for i in range(k):
        v = _start_vector(n, seed + i, op.device, op.dtype)
        lam, res = 0.0, np.inf
        iters = 0
        while budget > 0:
            if found:
                v, _ = _orthogonalize(torch.stack(found), v)
                v = v / v.norm()
            hv = op.matvec(v)
            if found:  # residual of the deflated operator (I − UUᵀ)H(I − UUᵀ)
                hv, _ = _orthogonalize(torch.stack(found), hv)
            budget -= 1
            iters += 1
            bar.update(1)
            lam = float(v @ hv)
            res = float((hv - lam * v).norm())
            if res <= tol * abs(lam):
                break
            v = hv / hv.norm()
        conv &= res <= tol * abs(lam)
        found.append(v)
        values.append(lam)
        residuals.append(res)
    bar.close()
    return np.array(values), torch.stack(found), np.array(residuals), bool(conv)


def krylov_basis(op, v0: torch.Tensor, steps: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``steps`` Lanczos steps from v0 with full reorthogonalization.

    Returns the orthonormal Krylov basis V (rows), and α (diagonal) and β (off-diagonal) of the
    tridiagonal T = VᵀHV. Stops early, with a shorter basis, at an invariant subspace.
    """
    op = as_operator(op)
    steps = min(steps, op.num_params)
    V = torch.empty(steps, op.num_params, device=op.device, dtype=op.dtype)
    V[0] = v0 / v0.norm()
    alphas, betas = [], []
    for j in range(steps):
        w, h = _orthogonalize(V[:j + 1], op.matvec(V[j]))
        alphas.append(float(h[j]))
        beta = float(w.norm())
        if j + 1 == steps or beta <= 1e-10 * max(1.0, max(abs(a) for a in alphas)):
            break
        betas.append(beta)
        V[j + 1] = w / beta
    return V[:len(alphas)], np.array(alphas), np.array(betas)


def lanczos_tridiagonal(op, v0: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(α, β) of the Lanczos tridiagonal after ``steps`` steps from v0 (see :func:`krylov_basis`).

    Used by stochastic Lanczos quadrature: the eigenvalues of T are the quadrature nodes and the squared
    first components of its eigenvectors the weights (Golub & Meurant).
    """
    _, alphas, betas = krylov_basis(op, v0, steps)
    return alphas, betas
