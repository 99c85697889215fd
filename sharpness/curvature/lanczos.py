"""Extreme Hessian eigenpairs: thick-restart Lanczos with full reorthogonalization, in torch on the device.

The Krylov basis lives on the operator's device in its dtype; only the small projected matrix
T = Vᵀ H V (at most ``max_basis`` square) goes to the host for its eigendecomposition. Each step
orthogonalizes the new vector twice against the whole basis (classical Gram–Schmidt, twice: Giraud et
al. 2005), and the coefficients fill T, so T stays exact after restarts (Wu & Simon 2000, thick restart).
A Ritz pair (θ, y = V s) has residual ‖Hy − θy‖ = β_m |s_m| (the Lanczos relation HV = VT + β v eₘᵀ),
so convergence is checked without extra products.

Multiplicities: a Lanczos run from one start vector sees one copy of each eigenvalue (in exact
arithmetic; rounding reveals the others only late), so a repeated eigenvalue can be missed while every
residual is small. After convergence (for ``which="both"``, each end on its own), the operator deflated
by the found vectors, (I − VVᵀ)H(I − VVᵀ) (with the found directions set to the k-th value, so they
cannot pass for a copy), is searched for its extreme eigenvalue from a fresh start vector; its vector,
orthogonalized against the found ones and measured by one more product (its own Rayleigh quotient and
residual), is a missed copy if it reaches beyond the k-th found value by more than the tolerance: it
joins the set, the k-th drops out, and the search repeats (one equal to the k-th is a tie at the cut: the
set is already a valid top k). ``converged`` is true only when the residuals meet the tolerance *and*
this check found no missed copy; ``extra["copies_found"]`` counts the copies it added. The guarantee is
that of the check's own Lanczos run: a copy is missed only if that run also misses it.

Smallest eigenvalues. A trained network's smallest Hessian eigenvalue sits at the edge of a dense cluster
around zero, barely apart from its neighbours, and Lanczos needs many steps to resolve it. A shift does
not help: H − σI has the same Krylov spaces as H, so Lanczos on it takes the same steps (a shift is what
*power iteration* needs to reach λ_min); folding, (H − τI)², squares the spread of the spectrum and is
slower. What helps is not throwing steps away: a basis large enough not to restart (``max_basis``; the
``analyze`` setting reads the shared 80-step run without a restart). Measured in
``benchmarks/smallest.py``. When to trust the value: for any symmetric H the residual ‖Hy − θy‖ bounds
the distance from θ to the nearest eigenvalue, so ``values[-1]`` is within ``residuals[-1]`` of an
eigenvalue of H even when ``converged`` is False — that error bar is what to report; that it is the
*smallest* eigenvalue (not one near it) rests on the Krylov space having reached the bottom end, which
Lanczos approaches first.

Block Lanczos (``method="block-lanczos"``, Golub & Underwood 1977; Cullum & Donath 1974): b start vectors,
one ``matmat`` of b columns per step — one pass over the data for b products — with full
reorthogonalization (classical Gram–Schmidt twice, block-wise) and no restart. The residual of a Ritz pair
comes from the block Lanczos relation HQ = QT + Q₊B₊Eᵀ: ‖Hy − θy‖ = ‖B₊ s_last‖, no extra products. A block
of b vectors sees up to b copies of a repeated eigenvalue in exact arithmetic, so multiplicities up to b
come out directly (the copy check still runs after it when ``copies``). It pays where a pass over the data
costs more than the products in it: data streamed from a ``DataLoader`` or past the kept-graph budget
(a block of b columns runs one forward per batch for b products: ``benchmarks/block.py``). With all graphs
kept, single-vector Lanczos needs fewer products and is the default.

One Krylov pass, several measures: a :class:`Krylov` run is extendable and keeps its basis and
coefficients, so the eigenvalue search, stochastic Lanczos quadrature (its tridiagonal) and
Krylov-aware Hutch++ (its basis) can read the same run instead of each starting its own from scratch.
Each function takes ``krylov=`` and gives what it gives alone at the same seed: the run is the one it
would have computed, started from :func:`start_vector` ``(…, seed)``; steps read from it cost nothing
again (and count toward a budget as if taken, so budgets stop at the same step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..checks import require
from ..errors import SharpnessError
from ..objective import SEED_MAX
from ..progress import progress_bar
from ..threads import one_blas_thread
from .operator import as_operator

MAX_HVPS = 10**9  # a product budget beyond this is a typo (10⁹ products of the smallest model: days)

__all__ = ["EigenResult", "Krylov", "hessian_eigenvalues", "lanczos_tridiagonal", "krylov_basis",
           "start_vector"]


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


def _matmat(op, X: torch.Tensor) -> torch.Tensor:
    """H X for columns X: the operator's ``matmat``, or its ``matvec`` column by column (a user's object)."""
    if hasattr(op, "matmat"):
        return op.matmat(X)
    return torch.stack([op.matvec(x) for x in X.T], 1)


def start_vector(op, seed: int) -> torch.Tensor:
    """The unit start vector every Krylov method here draws at ``seed``: Gaussian, normalized.

    Uniform on the sphere, so E[vvᵀ] = I/P: a valid probe for stochastic Lanczos quadrature too. Drawn on
    the operator's device: a CPU draw of a ResNet-sized vector costs more than the products.
    """
    op = as_operator(op)
    require("seed", seed, int, ge=0, le=SEED_MAX)
    g = torch.Generator(device=op.device).manual_seed(seed)
    v = torch.randn(op.num_params, generator=g, device=op.device, dtype=op.dtype)
    return v / v.norm()


def _check_starts(starts, n: int) -> torch.Tensor:
    """Start vectors as a real (r, n) tensor of finite values, no row zero; else one line naming ``starts``."""
    if isinstance(starts, np.ndarray) and starts.dtype.kind in "fiu":
        starts = torch.as_tensor(starts)
    if not isinstance(starts, torch.Tensor):
        raise SharpnessError(f"starts must be a tensor of shape ({n},) or (r, {n}) (got {type(starts).__name__})")
    if not starts.is_floating_point():
        raise SharpnessError(f"starts must be a real floating-point tensor (got {starts.dtype})")
    if starts.dim() not in (1, 2) or starts.shape[-1] != n or starts.numel() == 0:
        raise SharpnessError(f"starts must have shape ({n},) or (r, {n}): one value per parameter "
                             f"(got {tuple(starts.shape)})")
    S = starts.reshape(-1, n)
    if len(S) > 4096:
        raise SharpnessError(f"starts: at most 4096 runs advanced together (got {len(S)})")
    if not bool(torch.isfinite(S).all()):
        raise SharpnessError("starts hold NaN or Inf values")
    if not bool((S.double().norm(dim=1) > 0).all()):
        raise SharpnessError("starts: a start vector is zero (it has no direction to normalize)")
    return S


class Krylov:
    """Lanczos runs from r start vectors, advanced together, with full reorthogonalization; extendable.

    Each step multiplies the r current vectors in one ``matmat`` (one pass over the data for all runs)
    and orthogonalizes each run's new vector twice against its own basis (classical Gram–Schmidt). Run i
    builds V_i (rows) and the tridiagonal T_i = V_iᵀ H V_i (α on the diagonal, β off it); a run stops at
    an invariant subspace (β ≤ 1e-10 of the largest |α| or β so far) or at the dimension. ``extend(steps)`` takes the
    steps not yet taken, so one run serves every reader (module docstring).

    Args:
        op: a :class:`HessianOperator`, an object with ``matvec``/``num_params``, or a square matrix.
        starts: start vectors, (P,) or (r, P); normalized here.
    """

    def __init__(self, op, starts: torch.Tensor):
        self.op = op = as_operator(op)
        S = _check_starts(starts, op.num_params).to(device=op.device, dtype=op.dtype)
        if not bool((S.norm(dim=1) > 0).all()) or not bool(torch.isfinite(S.norm(dim=1)).all()):
            raise SharpnessError(f"starts: a start vector is zero or overflows in the operator's dtype {op.dtype}")
        self.runs = S.shape[0]
        self._V = torch.empty(8, self.runs, op.num_params, device=op.device, dtype=op.dtype)
        self._V[0] = S / S.norm(dim=1, keepdim=True)
        self.coeffs: list[np.ndarray] = []  # step j: (j + 1, r) Gram–Schmidt coefficients; row j is α_j
        self.norms: list[np.ndarray] = []   # step j: (r,) the norm of the new vector, β_{j+1}
        self.lengths = np.zeros(self.runs, dtype=int)  # steps each run has taken
        self.stopped = np.zeros(self.runs, dtype=bool)
        self._amax = np.zeros(self.runs)  # max |α|, β so far per run (≈ ‖H‖): the invariant-subspace test's scale

    def __len__(self) -> int:
        return len(self.coeffs)

    def extend(self, steps: int) -> "Krylov":
        """Take steps until every run has ``steps`` (or has stopped); returns self."""
        require("steps", steps, int, ge=0)
        n = self.op.num_params
        while len(self) < min(steps, n) and not self.stopped.all():
            j, live = len(self), np.flatnonzero(~self.stopped)
            if j + 1 >= self._V.shape[0]:  # grow the basis buffer geometrically
                grown = torch.empty(min(2 * self._V.shape[0], n + 1), *self._V.shape[1:],
                                    device=self._V.device, dtype=self._V.dtype)
                grown[:j + 1] = self._V[:j + 1]
                self._V = grown
            every = len(live) == self.runs
            B = self._V[:j + 1] if every else self._V[:j + 1, live]
            W = _matmat(self.op, B[j].T).T
            h = torch.einsum("jrp,rp->jr", B, W)
            W = W - torch.einsum("jrp,jr->rp", B, h)
            h2 = torch.einsum("jrp,rp->jr", B, W)
            W = W - torch.einsum("jrp,jr->rp", B, h2)
            h = (h + h2).double().cpu().numpy()
            beta = W.norm(dim=1).double().cpu().numpy()
            coeffs, norms = np.zeros((j + 1, self.runs)), np.zeros(self.runs)
            coeffs[:, live], norms[live] = h, beta
            self.coeffs.append(coeffs)
            self.norms.append(norms)
            self.lengths[live] += 1
            self._amax[live] = np.maximum(self._amax[live], np.maximum(np.abs(h[j]), beta))
            ends = (beta <= 1e-10 * self._amax[live]) | (j + 1 >= n)  # relative: a Hessian of any scale
            self.stopped[live[ends]] = True
            self._V[j + 1] = 0.0
            self._V[j + 1, live] = W / torch.as_tensor(np.where(ends, 1.0, beta), device=W.device, dtype=W.dtype)[:, None]
        return self

    def _run(self, run: int) -> int:
        return require("run", run, int, ge=0, le=self.runs - 1)

    def alphas(self, run: int = 0) -> np.ndarray:
        """Diagonal of run ``run``'s tridiagonal."""
        self._run(run)
        return np.array([self.coeffs[j][j, run] for j in range(self.lengths[run])])

    def betas(self, run: int = 0) -> np.ndarray:
        """Off-diagonal of run ``run``'s tridiagonal (one shorter than :meth:`alphas`)."""
        self._run(run)
        return np.array([self.norms[j][run] for j in range(self.lengths[run] - 1)])

    def basis(self, run: int = 0, steps: int | None = None) -> torch.Tensor:
        """The first ``steps`` (default: all taken; at most those taken) orthonormal basis vectors of run ``run``, as rows."""
        self._run(run)
        require("steps", steps, int, optional=True, ge=0)
        m = self.lengths[run] if steps is None else steps
        return self._V[:m, run]


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


def _fresh(op, count: int, seed: int) -> torch.Tensor:
    """``count`` seeded Gaussian directions (columns) to go on with where a Krylov space closed."""
    g = torch.Generator(device=op.device).manual_seed(seed)
    return torch.randn(op.num_params, count, generator=g, device=op.device, dtype=op.dtype)


def _met(theta: np.ndarray, idx: np.ndarray, res: np.ndarray, kk: int, tol: float) -> bool:
    """All kk wanted Ritz pairs have ‖Hy − θy‖ ≤ tol·max(|θ|, 1e-3·max|θ|) (the search's residual test)."""
    scale = np.maximum(np.abs(theta[idx]), 1e-3 * np.abs(theta).max())
    return len(idx) == kk and bool(np.all(res <= tol * scale))


@one_blas_thread
def hessian_eigenvalues(op, k: int = 1, *, which: str = "largest", tol: float = 1e-4,
                        max_hvps: int | None = None, max_basis: int | None = None, seed: int = 0,
                        method: str = "lanczos", block_size: int | None = None, copies: bool = True,
                        krylov: Krylov | None = None, progress: bool | None = None) -> EigenResult:
    """The k extreme eigenpairs of a symmetric operator (a Hessian, or a dense matrix in tests).

    Lanczos (default) stops when every wanted Ritz pair has ‖Hv − λv‖ ≤ tol·max(|λ|, 1e-3·‖H‖ₑₛₜ), the
    floor keeping eigenvalues near zero from demanding an impossible relative accuracy.
    ``method="block-lanczos"`` takes ``block_size`` products per pass over the data (module docstring);
    ``method="power"`` runs deflated power iteration (PyHessian's algorithm) with the same residual test,
    for comparison.

    Args:
        op: a :class:`HessianOperator`, an object with ``matvec`` and ``num_params``, or a square matrix.
        k: number of eigenpairs (for ``which="both"``: k from each end).
        which: ``"largest"`` (algebraically), ``"smallest"`` or ``"both"``.
        tol: relative residual tolerance.
        max_hvps: product budget (default: 40·k + 200, at most the dimension for Lanczos + 1).
        max_basis: Krylov basis size before a thick restart. Default for ``"largest"``: max(4k + 40, 60);
            for ``"smallest"`` and ``"both"`` (where restarts cost most: module docstring) the whole budget
            ``max_hvps``, as far as the basis fits in 2 GiB (at least max(4k + 40, 60)).
        seed: seed of the random start vector.
        method: ``"lanczos"``, ``"block-lanczos"`` or ``"power"``.
        block_size: vectors per block for ``"block-lanczos"`` (default: k, for ``"both"`` 2k; at most 64);
            copies of an eigenvalue up to this many are found by the block itself.
        copies: after convergence, search the deflated operator for missed copies of repeated eigenvalues
            (module docstring; one more Lanczos run, plus one per copy found). False: the residual test
            alone, which cannot see a missed copy.
        krylov: a :class:`Krylov` run on this operator from ``start_vector(op, seed)`` to read steps from
            (shared with SLQ and the trace: module docstring); the result is the one computed without it.
        progress: show a progress bar (None: only on a terminal).

    Returns:
        :class:`EigenResult` with values descending.
    """
    op = as_operator(op)
    n = op.num_params
    require("which", which, str, choices=("largest", "smallest", "both"))
    require("method", method, str, choices=("lanczos", "block-lanczos", "power"))
    require("block_size", block_size, int, optional=True, ge=1, le=64)
    if block_size is not None and method != "block-lanczos":
        raise SharpnessError(f"block_size is for method='block-lanczos' (method is {method!r})")
    if krylov is not None and method != "lanczos":
        raise SharpnessError(f"krylov: a shared single-vector run is read by method='lanczos' only (method is {method!r})")
    require("k", k, int, ge=1, le=n // (2 if which == "both" else 1))
    require("tol", tol, float, gt=0)
    require("max_hvps", max_hvps, int, optional=True, ge=1, le=MAX_HVPS)
    require("seed", seed, int, ge=0, le=SEED_MAX)
    require("copies", copies, bool)
    require("progress", progress, bool, optional=True)
    check_krylov(krylov, op)
    kk = k * (2 if which == "both" else 1)
    require("max_basis", max_basis, int, optional=True, ge=kk + 2, le=MAX_HVPS)  # a restart keeps kk and adds a step
    max_hvps = max_hvps or 40 * kk + 200
    start, hvps0 = time.perf_counter(), getattr(op, "n_hvps", 0)
    extra = {}
    if method in ("lanczos", "block-lanczos"):
        if method == "lanczos":
            values, vectors, residuals, converged, steps, hscale = _lanczos(
                op, k, which, tol, max_hvps, max_basis, seed, progress, krylov)
        else:
            b = min(block_size or kk, n, max_hvps)
            values, vectors, residuals, converged, steps, passes, hscale = _block_lanczos(
                op, k, which, tol, max_hvps, max_basis, seed, b, progress)
            extra = {"block_size": b, "passes": passes}  # passes of the block run (the copy check: its own)
        require("copies", copies, bool)
        if copies and converged:
            values, vectors, residuals, converged, checked = _check_copies(
                op, k, which, tol, max_hvps - steps, max_basis, seed, values, vectors, residuals, hscale)
            extra.update(checked)
    elif method == "power":
        if which != "largest":
            raise SharpnessError("method='power' finds the largest eigenvalues only")
        values, vectors, residuals, converged = _power(op, k, tol, max_hvps, seed, progress)
    order = np.argsort(-values, kind="stable")
    return EigenResult(values=values[order], vectors=vectors[torch.as_tensor(order, device=vectors.device)],
                       residuals=residuals[order], converged=converged,
                       n_hvps=getattr(op, "n_hvps", 0) - hvps0, seconds=time.perf_counter() - start,
                       method=method, which=which, tol=tol, seed=seed, extra=extra)


def check_krylov(krylov, op) -> None:
    """A shared run must be a :class:`Krylov` on this very operator (or on the same dense matrix)."""
    if krylov is None:
        return
    if not isinstance(krylov, Krylov):
        raise SharpnessError(f"krylov must be a Krylov run (got {type(krylov).__name__})")
    if krylov.op.num_params != op.num_params:
        raise SharpnessError(f"krylov: a run over {krylov.op.num_params} parameters, the operator has {op.num_params}")
    same = krylov.op is op or getattr(krylov.op, "matrix", None) is getattr(op, "matrix", False)
    if not same:
        raise SharpnessError("krylov: the run was built on another operator; build it on this one")


class _Deflated:
    """(I − VVᵀ) H (I − VVᵀ) + c·VVᵀ for orthonormal rows V: H with the found eigenvectors set to c.

    On span(V) the plain deflation (c = 0) has the eigenvalue 0, which beyond the k-th found value
    (all-positive smallest ones, all-negative largest ones) would pass for a missed copy; c = the k-th
    value makes those directions a tie at the cut, never beyond it.
    """

    def __init__(self, op, V: torch.Tensor, c: float):
        self.op, self.V, self.c = op, V, float(c)
        self.num_params, self.device, self.dtype = op.num_params, op.device, op.dtype
        self.n_hvps = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        self.n_hvps += X.shape[1]
        C = self.V @ X
        X = X - self.V.T @ C
        W = _matmat(self.op, X)
        return W - self.V.T @ (self.V @ W) + self.c * (self.V.T @ C)


def _check_copies(op, k, which, tol, budget, max_basis, seed, values, vectors, residuals, hscale):
    """The copy check for one end, or for ``"both"`` each end on its own (half the budget each).

    For ``"both"`` the other end's vectors are deflated too, so an eigenvalue both ends reach (a null
    space, say) is not taken twice.
    """
    if which != "both":
        return _copies(op, k, which, tol, budget, max_basis, seed, values, vectors, residuals, hscale)
    order = np.argsort(-values, kind="stable")
    parts = [[values[sel], vectors[torch.as_tensor(sel.copy(), device=vectors.device)], residuals[sel], True]
             for sel in (order[:k], order[::-1][:k])]
    found, status = 0, "none missed"
    for i, end in enumerate(("largest", "smallest")):
        v, x, r, _ = parts[i]
        *parts[i], checked = _copies(op, k, end, tol, budget // 2, max_basis, seed, v, x, r, hscale,
                                     others=parts[1 - i][1])
        found += checked["copies_found"]
        status = status if checked["copy_check"] == "none missed" else checked["copy_check"]
    (v1, x1, r1, ok1), (v2, x2, r2, ok2) = parts
    return (np.concatenate([v1, v2]), torch.cat([x1, x2]), np.concatenate([r1, r2]), ok1 and ok2,
            {"copies_found": found, "copy_check": status})


def _copies(op, k, which, tol, budget, max_basis, seed, values, vectors, residuals, hscale, others=None):
    """Search the deflated operator for missed copies of the wanted eigenvalues (module docstring).

    ``hscale`` (‖H‖ as the search saw it) sets the floor of the tolerance, as in the search: near a zero
    eigenvalue (a null space) the found values' own size would make rounding pass for a copy. ``others``:
    vectors found at the other end (``which="both"``), deflated too and kept orthogonal to.
    """
    found, rounds = 0, 0
    if len(values) + (0 if others is None else len(others)) >= op.num_params:  # the whole space is found
        return values, vectors, residuals, True, {"copies_found": 0, "copy_check": "none missed"}

    def tolerance(vals):
        return tol * np.maximum(np.abs(vals), 1e-3 * max(hscale, np.abs(values).max()))

    while rounds <= 2 * k and budget > 2 and len(values) < op.num_params:
        rounds += 1
        edge = values.min() if which == "largest" else values.max()
        found_all = vectors if others is None else torch.cat([vectors, others])
        D = _Deflated(op, found_all, edge)
        v, x, r, ok, _, seen_scale = _lanczos(D, 1, which, tol, budget, max_basis, seed + 7919 * rounds, False)
        budget -= D.n_hvps
        hscale = max(hscale, seen_scale)
        if not ok:  # the check itself did not settle: no guarantee
            return values, vectors, residuals, False, {"copies_found": found, "copy_check": "unsettled"}
        scale = float(tolerance(edge))

        def beyond(value):  # beyond the k-th by more than the tolerance (equal to it: a tie at the cut, fine)
            return value > edge + scale if which == "largest" else value < edge - scale

        missed = beyond(v[0])
        if missed:
            # The candidate as a direction orthogonal to the found ones, with its own Rayleigh quotient and
            # residual (one product): near a cluster straddling the cut the deflated run's vector can lean on
            # the found directions, and appending it would spoil the orthonormal set later checks deflate by.
            x = _orthogonalize(found_all, x.T)[0].T
            norm = float(x.norm())
            if norm > 0.5:
                x = x / norm
                hx = _matmat(op, x.T).T
                budget -= 1
                v = np.array([float((x * hx).sum())])
                r = np.array([float((hx - v[0] * x).norm())])
            missed = norm > 0.5 and beyond(v[0])  # in the found directions' span: no new direction
        if not missed:
            met = bool(np.all(residuals <= tolerance(values)))
            return values, vectors, residuals, met, {"copies_found": found, "copy_check": "none missed"}
        found += 1
        values = np.concatenate([values, v])
        vectors = torch.cat([vectors, x])
        residuals = np.concatenate([residuals, r])
        order = np.argsort(-values if which == "largest" else values, kind="stable")[:k]
        values, vectors, residuals = values[order], vectors[torch.as_tensor(order, device=vectors.device)], residuals[order]
    return values, vectors, residuals, False, {"copies_found": found, "copy_check": "budget or rounds spent"}


def _lanczos(op, k, which, tol, max_hvps, max_basis, seed, progress, krylov=None):
    """Thick-restart Lanczos.

    Until the first restart its steps are those of a :class:`Krylov` run (the one given, else a fresh one
    from :func:`start_vector` at ``seed``); after it, its own basis. Returns (values, vectors, residuals,
    converged, products, max|θ|: ‖H‖ as far as the last basis saw it).
    """
    n = op.num_params
    kk = k * (2 if which == "both" else 1)
    floor = max(4 * kk + 40, 60)
    if max_basis is None and which != "largest":  # no restart within the budget, if the basis fits 2 GiB
        max_basis = max(floor, min(max_hvps, _basis_cap(n, op.dtype)))
    max_basis = min(n, max_basis or floor)
    K = krylov if krylov is not None else Krylov(op, start_vector(op, seed))
    V = None  # the own basis, from the first restart on
    T = np.zeros((max_basis, max_basis))
    m, hvps, beta = 0, 0, 0.0
    bar = progress_bar(progress, total=max_hvps, desc="lanczos", unit="hvp")
    while True:
        if V is None:  # a step of the Krylov run: taken now, or read if a reader took it before
            K.extend(m + 1)
            h, beta = K.coeffs[m][:, 0], float(K.norms[m][0])
            breakdown = bool(K.stopped[0]) and K.lengths[0] == m + 1
        else:
            w, h = _orthogonalize(V[:m + 1], op.matvec(V[m]))
            h = h.double().cpu().numpy()
            beta = float(w.norm())
        hvps += 1
        bar.update(1)
        T[:m + 1, m] = h
        T[m, :m + 1] = h
        m += 1
        theta, S = np.linalg.eigh(T[:m, :m])
        idx = _wanted(theta, k, which)
        res = np.abs(beta * S[m - 1, idx])
        done = _met(theta, idx, res, kk, tol)
        if V is not None:  # an invariant subspace was found
            breakdown = beta <= 1e-10 * max(np.abs(theta).max(), beta)  # relative, as in Krylov.extend
        if done or m == n or hvps >= max_hvps:
            break
        if breakdown:  # an invariant subspace before k pairs met the test: go on from a fresh direction
            if V is None:
                V = torch.empty(max_basis + 1, n, device=op.device, dtype=op.dtype)
                V[:m] = K.basis(0, m)
            w = _orthogonalize(V[:m], _fresh(op, 1, seed + 104729 * m)[:, 0])[0]
            V[m] = w / w.norm()
        elif V is not None:
            V[m] = w / beta
        if m == max_basis:  # thick restart: keep the Ritz vectors nearest the wanted end(s)
            if V is None:  # leave the Krylov run: its basis and next vector become our own
                V = torch.empty(max_basis + 1, n, device=op.device, dtype=op.dtype)
                V[:m + 1] = K.basis(0, m + 1)
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
    vectors = S_w.T @ (K.basis(0, m) if V is None else V[:m])
    return theta[idx].copy(), vectors, res, done, hvps, float(np.abs(theta).max())


def _basis_cap(n: int, dtype: torch.dtype) -> int:
    """Basis vectors of length n that fit in 2 GiB (the no-restart searches' memory bound)."""
    return int(2**31 / (n * torch.finfo(dtype).bits / 8)) - 1


def _block_lanczos(op, k, which, tol, max_hvps, max_basis, seed, b, progress):
    """Block Lanczos with full reorthogonalization, no restart (module docstring).

    The block after W = (I − QQᵀ)HQ_last is the left singular basis of W (B₊ = ΣVᵀ), reorthogonalized
    once more against Q (its small singular directions amplify rounding). Directions with σ ≤ 100ε·‖H‖ₑₛₜ
    are not in the Krylov space (rounding, or an invariant subspace) and are replaced by fresh random
    directions orthogonal to the basis; the couplings dropped with them are outside the residual formula,
    so after such a run the residuals are measured (one more pass of the wanted vectors). The last block is
    cut to the dimension left.

    Returns (values, vectors, residuals, converged, products, passes, max|θ|).
    """
    n = op.num_params
    kk = k * (2 if which == "both" else 1)
    b = min(b, n, max_hvps)
    cap = min(n, max(b, max_basis or max(max_hvps, kk + 2 * b)), _basis_cap(n, op.dtype) + 1)
    starts = torch.stack([start_vector(op, seed + 7907 * i) for i in range(b)], 1)
    Q = torch.empty(n, cap, device=op.device, dtype=op.dtype)
    Q[:, :b] = torch.linalg.qr(starts)[0]
    T = np.zeros((cap, cap))
    m, width, passes, amax, replaced = 0, b, 0, 0.0, False
    small_floor = 100 * torch.finfo(op.dtype).eps  # rounding noise of W after two passes is ≈ ε·max|T|
    bar = progress_bar(progress, total=max_hvps, desc="block lanczos", unit="hvp")
    while True:
        blk = slice(m, m + width)
        W = _matmat(op, Q[:, blk])
        passes += 1
        bar.update(width)
        Qa = Q[:, :m + width]
        W, h = _orthogonalize(Qa.T, W)
        h = h.double().cpu().numpy()
        T[:m + width, blk] = h
        T[blk, :m + width] = h.T
        T[blk, blk] = (h[m:] + h[m:].T) / 2  # the diagonal block: symmetric up to rounding
        m += width
        U, sig, Vh = torch.linalg.svd(W, full_matrices=False)  # W = Q₊B₊ with Q₊ = U, B₊ = diag(σ)Vᵀ
        Bn = (sig[:, None] * Vh).double().cpu().numpy()
        amax = max(amax, float(np.abs(T[:m, :m]).max()), float(sig.max()))  # ≈ ‖H‖: the scale of 'small'
        theta, S = np.linalg.eigh(T[:m, :m])
        idx = _wanted(theta, k, which)
        res = np.linalg.norm(Bn @ S[m - width:m, idx], axis=0)  # ‖Hy − θy‖ = ‖B₊ s_last‖
        done = _met(theta, idx, res, kk, tol)
        nxt = min(b, n - m)  # the last block: what is left of the dimension
        if done or nxt == 0 or m + nxt > cap or m + nxt > max_hvps:
            break
        small = (sig <= small_floor * amax).cpu().numpy()  # σ sorted descending: the small ones are last
        U = U[:, :nxt].clone()
        fresh = np.flatnonzero(small[:nxt])
        replaced |= bool(len(fresh))
        if len(fresh):  # not in the Krylov space: fresh directions (their B₊ rows ≈ 0)
            U[:, torch.as_tensor(fresh, device=op.device)] = _fresh(op, len(fresh), seed + 104729 * m)
        U = _orthogonalize(Qa.T, U)[0]  # once more against the basis (fresh columns: twice, as every new vector)
        Q[:, m:m + nxt] = torch.linalg.qr(U)[0]
        width = nxt
    bar.close()
    vectors = torch.as_tensor(S[:, idx], device=op.device, dtype=op.dtype).T @ Q[:, :m].T
    if replaced and m < n:  # dropped couplings (≤ the floor) are outside the residual formula: measure them
        R = _matmat(op, vectors.T).T - torch.as_tensor(theta[idx], device=op.device, dtype=op.dtype)[:, None] * vectors
        res = R.norm(dim=1).double().cpu().numpy()
        done = _met(theta, idx, res, kk, tol)
        m, passes = m + len(idx), passes + 1
    return theta[idx].copy(), vectors, res, done, m, passes, float(np.abs(theta).max())


def _power(op, k, tol, max_hvps, seed, progress):
    """Deflated power iteration: each eigenvector in turn, orthogonalized against those found."""
    found: list[torch.Tensor] = []
    values, residuals, conv = [], [], True
    budget = max_hvps
    bar = progress_bar(progress, total=max_hvps, desc="power", unit="hvp")
    for i in range(k):
        v = start_vector(op, seed + i)
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
    """``steps`` Lanczos steps from v0 with full reorthogonalization (one :class:`Krylov` run).

    Returns the orthonormal Krylov basis V (rows), and α (diagonal) and β (off-diagonal) of the
    tridiagonal T = VᵀHV. Stops early, with a shorter basis, at an invariant subspace.
    """
    K = Krylov(op, v0).extend(steps)
    return K.basis(), K.alphas(), K.betas()


def lanczos_tridiagonal(op, v0: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(α, β) of the Lanczos tridiagonal after ``steps`` steps from v0 (see :func:`krylov_basis`).

    Used by stochastic Lanczos quadrature: the eigenvalues of T are the quadrature nodes and the squared
    first components of its eigenvectors the weights (Golub & Meurant).
    """
    return krylov_basis(op, v0, steps)[1:]
