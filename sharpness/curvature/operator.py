"""The Hessian of the mean loss over a data set, as a linear operator on flat parameter vectors.

H = ∇²_θ L(θ), L(θ) = (1/N) Σ_i ℓ_i(θ) the mean loss of an :class:`~sharpness.objective.Objective`
(whatever the loss's reduction and the batching: :mod:`sharpness.losses`). Products use Pearlmutter's
trick (1994): Hv = ∇_θ (∇_θ L · v), a double backward, accumulated as Σ_b H_b v / N over batches b, with
H_b the Hessian of batch b's summed loss.

Kept graphs: the graph of batch b's first gradient is built once and reused by every later product, so
a product is a single backward pass through it (≈ 1.5–2× a gradient instead of ≈ 2.5–3× for a fresh
forward and double backward). All data in one batch: its graph is always kept (one product needs it
anyway). Several batches: graphs are kept while their measured size (the tensors autograd saves) fits
``graph_bytes`` — by default a quarter of the available host memory on CPU, half of the free device
memory on CUDA; batches past the budget are recomputed at each product. A ``DataLoader`` may reorder its
batches between passes, so its graphs are kept only when all of them fit. Kept graphs are dropped when
the weights or buffers change (version counters, storage or values differ), so an operator never
answers for stale weights.

Block products: ``matmat(V)`` with k columns makes one pass over the data and, per batch, k backward
passes through the same graph. On CPU these run one after another (a vectorized backward,
``autograd.grad(is_grads_batched=True)``, was measured slower there: its batched kernels do not beat
the plain ones); on CUDA, where kernel launches dominate small products, the vectorized route is the
default (``block="auto"``). Both routes give the same products to rounding.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..checks import require
from ..distributed import all_sum, all_sum_floats
from ..errors import SharpnessError
from ..model_state import preserved, set_mode
from ..objective import Objective, as_objective, denominator, differentiable, with_dtype

__all__ = ["HessianOperator", "DenseOperator", "as_operator"]


class HessianOperator:
    """The Hessian of the mean loss over all of the data with respect to the model's parameters.

    Args:
        model: an ``nn.Module`` (never modified: modes and buffers are restored after each product), or
            an :class:`~sharpness.objective.Objective` (then ``loss_fn`` and ``data`` are None).
        loss_fn: a loss name, ``"pkg.module:fn"``, a loss module or callable (None: cross-entropy).
        data: (X, y) tensors, a list of batches, a Dataset or a DataLoader.
        params: parameter names or glob patterns (``"layers.2.*"``) to restrict to; None = all that
            require grad.
        batch_size: split tensor/Dataset data into batches of this size (memory); None = one batch.
        mode: ``"eval"`` (default; BN uses running statistics, no dropout) or ``"train"`` (batch
            statistics; dropout masks fixed per batch by ``seed``: see :mod:`sharpness.objective`).
        dtype: compute in this dtype (e.g. ``torch.float64``) on a copy of the model.
        graph_bytes: memory for kept gradient graphs of several batches (module docstring); None: a quarter
            of the available host memory on CPU, half of the free device memory on CUDA; 0: keep none.
        block: how ``matmat`` runs its k products per batch: ``"loop"`` (one backward after another),
            ``"vmap"`` (one vectorized backward) or ``"auto"`` (vmap on CUDA, loop elsewhere).
        **objective_args: ``batch_fn``, ``forward_fn``, ``loss_args``, ``seed``, ``cache_bytes`` of the
            :class:`~sharpness.objective.Objective`.

    Vectors are flat tensors of length ``num_params`` on ``device``, ordered as the selected parameters.
    """

    def __init__(self, model: nn.Module | Objective, loss_fn: Callable | str | None = None, data: Any = None, *,
                 params: str | Iterable[str] | None = None, batch_size: int | None = None,
                 mode: str = "eval", dtype: torch.dtype | None = None, graph_bytes: float | None = None,
                 block: str = "auto", **objective_args: Any):
        if not isinstance(model, (nn.Module, Objective)):
            raise SharpnessError(f"HessianOperator needs an nn.Module (with loss_fn and data) or an Objective "
                                 f"(got {type(model).__name__})")
        require("graph_bytes", graph_bytes, float, optional=True, ge=0)
        require("block", block, str, choices=("auto", "loop", "vmap"))
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point
                                      and not dtype.is_complex):
            raise SharpnessError(f"dtype must be None or a real floating-point torch dtype such as torch.float64 "
                                 f"(got {dtype!r})"[:300])
        if isinstance(model, Objective):
            obj = as_objective(model, loss_fn, data)
            if dtype is not None and dtype != obj.dtype:
                raise SharpnessError("convert the model to the dtype before building the Objective")
            if params is not None or not all(p.requires_grad for p in obj.params):
                obj = Objective(obj.model, data=obj.data, params=params or obj.names, trainable_only=True,
                                **{k: v for k, v in obj._settings.items() if k not in ("params", "trainable_only")})
        else:
            obj = Objective(with_dtype(model, dtype), loss_fn, data, params=params, trainable_only=True,
                            batch_size=batch_size, mode=mode, **objective_args)
        self.objective = obj
        self.model, self.mode = obj.model, obj.mode
        self.device, self.dtype = obj.device, obj.dtype
        self.params = obj.params
        self.shapes = [p.shape for p in self.params]
        self.num_params = obj.num_params
        self.n_hvps = 0
        self.graph_bytes = graph_bytes
        self.block = ("vmap" if self.device.type == "cuda" else "loop") if block == "auto" else block
        self._kept: dict | None = None  # kept gradient graphs: see _keep

    @property
    def shape(self) -> tuple[int, int]:
        """(num_params, num_params)."""
        return (self.num_params, self.num_params)

    @property
    def num_samples(self) -> int:
        """N, the number of examples the loss is averaged over."""
        return self.objective.num_samples

    def _state(self) -> list[torch.Tensor]:
        return list(self.params) + list(self.model.buffers())

    def _versions(self) -> tuple:
        return tuple((t._version, t.data_ptr()) for t in self._state())

    def _stale(self) -> bool:
        """Whether a parameter or buffer changed since the kept graphs were built.

        Version counters and storage catch in-place writes and replaced tensors; a write through ``.data``
        (older optimizers, SAM-style code) moves neither, so the values are compared too (O(P), small
        next to a product's O(N·P)).
        """
        kept = self._kept
        return kept["versions"] != self._versions() or \
            not all(torch.equal(t.detach(), s) for t, s in zip(self._state(), kept["values"]))

    def _budget(self) -> float:
        if self.graph_bytes is not None:
            return self.graph_bytes
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0] / 2
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 4
        except (ValueError, OSError, AttributeError):  # no sysconf (Windows): keep only a single batch's graph
            return 0.0

    def _grad_graph(self, i: int, inputs: Any, targets: Any, extra: tuple) -> tuple[list, int]:
        """First gradient of a batch's summed loss, with its graph, and the graph's bytes.

        Entries that cannot depend on θ are None. The bytes are those of the tensors autograd saved for
        the graph (its memory; parameters not counted).
        """
        obj = self.objective
        params = {p.data_ptr() for p in self.params}
        saved: dict = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.data_ptr() not in params:
                saved[t.data_ptr()] = t.untyped_storage().nbytes()
            return t

        with preserved(self.model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            set_mode(self.model, self.mode)
            with torch.enable_grad():
                total = differentiable(obj.loss.total(obj.output(i, inputs, double_backward=True), targets, extra),
                                       obj.loss.name)
                grads = torch.autograd.grad(total, self.params, create_graph=True, allow_unused=True)
        return [g if (g is not None and g.requires_grad) else None for g in grads], sum(saved.values())

    def _hvps(self, grads: list, V: torch.Tensor) -> torch.Tensor:
        """H_b V for one batch's gradient graph; V is (P, k). Keeps the graph for the next call."""
        live = [i for i, g in enumerate(grads) if g is not None]
        out = torch.zeros_like(V)
        if not live:
            return out
        offsets = np.cumsum([0] + [p.numel() for p in self.params])
        if self.block == "vmap" and V.shape[1] > 1:  # one vectorized backward for the k columns
            pieces = [V[offsets[i]:offsets[i + 1]].T.reshape(V.shape[1], *self.shapes[i]) for i in live]
            hv = torch.autograd.grad([grads[i] for i in live], self.params, grad_outputs=pieces,
                                     retain_graph=True, allow_unused=True, is_grads_batched=True)
            return torch.cat([(h if h is not None else torch.zeros(V.shape[1], *p.shape, dtype=V.dtype,
                                                                   device=V.device)).reshape(V.shape[1], -1)
                              for h, p in zip(hv, self.params)], dim=1).T
        for j in range(V.shape[1]):
            pieces = [V[offsets[i]:offsets[i + 1], j].view(self.shapes[i]) for i in live]
            hv = torch.autograd.grad([grads[i] for i in live], self.params, grad_outputs=pieces,
                                     retain_graph=True, allow_unused=True)
            out[:, j] = torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                   for h, p in zip(hv, self.params)])
        return out

    def _keep(self) -> dict:
        """The kept graphs, emptied when the weights changed.

        {"versions", "values", "graphs": {batch: (graph, normalizer)}, "bytes", "complete", "over"};
        complete: every batch's graph is kept, no data pass needed; over: a loader's graphs did not all
        fit, so none are kept until the weights change.
        """
        if self._kept is None or self._stale():
            self._kept = None  # free the old graphs before building new ones
            self._kept = {"versions": self._versions(), "values": [t.detach().clone() for t in self._state()],
                          "graphs": {}, "bytes": 0, "complete": False, "over": False}
        return self._kept

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for V of shape (num_params, k): k products, one pass over the data (none if all graphs are kept)."""
        if not isinstance(V, torch.Tensor) or V.is_complex() or V.dtype == torch.bool:
            raise SharpnessError(f"V must be a real ({self.num_params}, k) tensor (got {type(V).__name__}"
                                 f"{' ' + str(V.dtype) if isinstance(V, torch.Tensor) else ''})")
        V = V.to(device=self.device, dtype=self.dtype)
        if V.dim() != 2 or V.shape[0] != self.num_params:
            raise SharpnessError(f"expected shape ({self.num_params}, k), got {tuple(V.shape)}")
        self.n_hvps += V.shape[1]
        kept = self._keep()
        out, norm = torch.zeros_like(V), 0.0
        if kept["complete"]:
            for graph, count in kept["graphs"].values():
                out += self._hvps(graph, V)
                norm += count
        else:
            data = self.objective.data
            ordered = data.stored is not None  # batches come in the same order every pass
            budget, single = self._budget(), data.single
            for i, inputs, targets, extra, n in self.objective.batches():
                count = float(self.objective.loss.count(targets, n))  # N, or Σ class weights (losses.py)
                if i in kept["graphs"]:
                    graph = kept["graphs"][i][0]
                else:
                    graph, nbytes = self._grad_graph(i, inputs, targets, extra)
                    if single or (not kept["over"] and kept["bytes"] + nbytes <= budget):
                        kept["graphs"][i] = (graph, count)
                        kept["bytes"] += nbytes
                out += self._hvps(graph, V)
                norm += count
            if len(kept["graphs"]) == len(data):
                kept["complete"] = True
            elif not ordered:  # a loader's next pass may batch other examples: keep all or none
                kept["graphs"], kept["bytes"], kept["over"] = {}, 0, True
        world = self.objective.world  # data-parallel: each rank's sum, all-reduced (sharpness.distributed)
        norm = denominator(all_sum_floats([norm], world, self.device)[0], self.objective.loss.name,
                           self.objective.name)
        return all_sum(out.detach(), world) / norm

    def release(self) -> None:
        """Drop the kept gradient graphs (their memory); the next product builds them again."""
        self._kept = None

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length num_params."""
        if not isinstance(v, torch.Tensor) or v.numel() != self.num_params:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise SharpnessError(f"v must be a flat tensor of {self.num_params} values (got {got})")
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    __matmul__ = matvec

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the mean loss (one pass over the data)."""
        return self.objective.gradient()

    def to_dense(self, max_params: int = 20_000) -> torch.Tensor:
        """The full P × P Hessian (P products); for small models only."""
        require("max_params", max_params, int, ge=1)
        if self.num_params > max_params:
            raise SharpnessError(f"{self.num_params} parameters: too many for a dense Hessian "
                             f"(max_params={max_params})")
        eye = torch.eye(self.num_params, device=self.device, dtype=self.dtype)
        return torch.cat([self.matmat(eye[:, i:i + 256]) for i in range(0, self.num_params, 256)], dim=1)

    def as_linear_operator(self):
        """A scipy ``LinearOperator`` view (float64 NumPy in and out; crosses to the host per product)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(v: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(v).reshape(-1), device=self.device, dtype=self.dtype)
            return self.matvec(t).double().cpu().numpy()

        def mm(V: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(V), device=self.device, dtype=self.dtype)
            return self.matmat(t).double().cpu().numpy()

        return LinearOperator(self.shape, matvec=mv, matmat=mm, rmatvec=mv, dtype=np.float64)


class DenseOperator:
    """A symmetric matrix as an operator: lets every algorithm run on a dense reference in tests."""

    def __init__(self, matrix: torch.Tensor | np.ndarray):
        try:
            self.matrix = torch.as_tensor(matrix)
        except (TypeError, RuntimeError, ValueError):
            raise SharpnessError(f"expected a real square matrix (got {type(matrix).__name__})") from None
        m = self.matrix
        if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
            raise SharpnessError(f"expected a square matrix (got shape {tuple(m.shape)})")
        if not m.is_floating_point():
            raise SharpnessError(f"expected a floating-point matrix (got {m.dtype})")
        if not torch.isfinite(m).all():
            raise SharpnessError("the matrix holds NaN or Inf")
        # the algorithms assume symmetry (a Hessian's); a non-symmetric matrix would give wrong "converged" values
        if not torch.allclose(m, m.T, rtol=1e-6, atol=1e-6 * float(m.abs().max())):
            raise SharpnessError("expected a symmetric matrix (max |M − Mᵀ| = "
                                 f"{float((m - m.T).abs().max()):.3g})")
        self.num_params = self.matrix.shape[0]
        self.device, self.dtype = self.matrix.device, self.matrix.dtype
        self.n_hvps = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(n, n)."""
        return tuple(self.matrix.shape)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """M V."""
        self.n_hvps += V.shape[1]
        return self.matrix @ V.to(device=self.device, dtype=self.dtype)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """M v."""
        self.n_hvps += 1
        return self.matrix @ v.to(device=self.device, dtype=self.dtype)

    def to_dense(self) -> torch.Tensor:
        """The matrix itself."""
        return self.matrix


def as_operator(op: Any):
    """Accept a HessianOperator-like object (``matvec``, ``num_params``) or a dense square matrix."""
    if isinstance(op, (torch.Tensor, np.ndarray)):
        return DenseOperator(op)
    if not hasattr(op, "matvec") or not hasattr(op, "num_params"):
        raise SharpnessError("expected a HessianOperator, an object with matvec/num_params, or a square matrix "
                             f"(got {type(op).__name__})")
    return op
