"""The Hessian of the mean loss over a data set, as a linear operator on flat parameter vectors.

H = ∇²_θ (1/N) Σ_b n_b · L_b(θ), with L_b the (mean-reduced) loss of batch b of size n_b. Products use
Pearlmutter's trick (1994): Hv = ∇_θ (∇_θ L · v), a double backward. When the whole data set is one
batch, the graph of the first gradient is built once and reused by every product, so a product is a
single backward pass through it (≈ 2× a gradient instead of ≈ 3× for a fresh double backward).
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset

from ..data import as_tensors
from ..model_state import preserved, set_mode

__all__ = ["HessianOperator", "DenseOperator", "as_operator", "batches_on_device"]


def batches_on_device(data: Any, batch_size: int | None, device: torch.device,
                      dtype: torch.dtype | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Turn (X, y) tensors, a Dataset or a DataLoader into a list of (x, y) batches on ``device``.

    Tensors are split into ``batch_size`` chunks (None: one batch). A Dataset is batched with
    ``batch_size`` (None: one batch); a DataLoader keeps its own batching. Floating inputs are cast to
    ``dtype`` when given. The batches stay on the device, so repeated passes never copy data again.
    """
    pair = as_tensors(data)
    if pair is not None:
        x, y = pair
        chunks = list(zip(x.split(batch_size), y.split(batch_size))) if batch_size else [(x, y)]
    elif isinstance(data, DataLoader):
        chunks = [(b[0], b[1]) for b in data]
    elif isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=batch_size or len(data), shuffle=False)
        chunks = [(b[0], b[1]) for b in loader]
    else:
        raise TypeError("data must be (X, y) tensors, a Dataset or a DataLoader "
                        f"(got {type(data).__name__})")
    out = []
    for x, y in chunks:
        x = x.to(device)
        if dtype is not None and x.is_floating_point():
            x = x.to(dtype)
        y = y.to(device)
        if dtype is not None and y.is_floating_point():
            y = y.to(dtype)
        out.append((x, y))
    if not out or sum(len(y) for _, y in out) == 0:
        raise ValueError("data is empty")
    return out


def _select(model: nn.Module, params: str | Iterable[str] | None) -> list[tuple[str, nn.Parameter]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if params is None:
        return named
    patterns = [params] if isinstance(params, str) else list(params)
    chosen = [(n, p) for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not chosen:
        raise ValueError(f"no parameter matches {patterns}; names are e.g. {[n for n, _ in named[:5]]}")
    return chosen


class HessianOperator:
    """The Hessian of the mean of ``loss_fn`` over all of ``data`` with respect to model parameters.

    Args:
        model: any ``nn.Module``; never modified (modes and buffers are restored after each product).
        loss_fn: ``loss_fn(model(x), y)`` → mean loss of the batch (e.g. ``nn.CrossEntropyLoss()``).
        data: (X, y) tensors, a Dataset or a DataLoader. Batches are weighted by their size.
        params: parameter names or glob patterns (``"layers.2.*"``) to restrict to; None = all.
        batch_size: split tensor/Dataset data into batches of this size (memory); None = one batch.
        mode: ``"eval"`` (default; BN uses running statistics, no dropout) or ``"train"``.
        dtype: compute in this dtype (e.g. ``torch.float64``) on a copy of the model.

    Vectors are flat tensors of length ``num_params`` on ``device``, ordered as ``model.parameters()``.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable | None, data: Any, *,
                 params: str | Iterable[str] | None = None, batch_size: int | None = None,
                 mode: str = "eval", dtype: torch.dtype | None = None):
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train' (got {mode!r})")
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("model has no parameters")
        if dtype is not None and dtype != first.dtype:
            model = copy.deepcopy(model).to(dtype)
        self.model = model
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.mode = mode
        self.device = first.device
        self.named_params = _select(model, params)
        self.params = [p for _, p in self.named_params]
        self.dtype = self.params[0].dtype
        self.shapes = [p.shape for p in self.params]
        self.num_params = sum(p.numel() for p in self.params)
        self.batches = batches_on_device(data, batch_size, self.device, self.dtype)
        self.num_samples = sum(len(y) for _, y in self.batches)
        self.n_hvps = 0
        # One batch: keep the gradient graph for every later product.
        self._graph = self._grad_graph(*self.batches[0]) if len(self.batches) == 1 else None

    @property
    def shape(self) -> tuple[int, int]:
        """(num_params, num_params)."""
        return (self.num_params, self.num_params)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "train":
            # Train-mode BN writes its running statistics in the forward pass and saves them for
            # backward: run on clones, so the caller's buffers are never touched.
            buffers = {n: b.clone() for n, b in self.model.named_buffers()}
            return self.loss_fn(functional_call(self.model, buffers, (x,)), y)
        return self.loss_fn(self.model(x), y)

    def _grad_graph(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """First gradient of the batch loss with its graph; entries that cannot depend on θ are dropped."""
        with preserved(self.model):
            set_mode(self.model, self.mode)
            with torch.enable_grad():
                loss = self._loss(x, y)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return [g if (g is not None and g.requires_grad) else None for g in grads]

    def _hvps(self, grads: list, V: torch.Tensor) -> torch.Tensor:
        """H_b V for one batch's gradient graph; V is (P, k). Keeps the graph for the next call."""
        live = [i for i, g in enumerate(grads) if g is not None]
        out = torch.zeros_like(V)
        if not live:
            return out
        offsets = np.cumsum([0] + [p.numel() for p in self.params])
        for j in range(V.shape[1]):
            pieces = [V[offsets[i]:offsets[i + 1], j].view(self.shapes[i]) for i in live]
            hv = torch.autograd.grad([grads[i] for i in live], self.params, grad_outputs=pieces,
                                     retain_graph=True, allow_unused=True)
            out[:, j] = torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                   for h, p in zip(hv, self.params)])
        return out

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for V of shape (num_params, k): k products, one pass over the data."""
        V = V.to(device=self.device, dtype=self.dtype)
        if V.dim() != 2 or V.shape[0] != self.num_params:
            raise ValueError(f"expected shape ({self.num_params}, k), got {tuple(V.shape)}")
        self.n_hvps += V.shape[1]
        if self._graph is not None:
            return self._hvps(self._graph, V).detach()
        out = torch.zeros_like(V)
        for x, y in self.batches:
            out += (len(y) / self.num_samples) * self._hvps(self._grad_graph(x, y), V)
        return out.detach()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length num_params."""
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    __matmul__ = matvec

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the mean loss (one pass over the data)."""
        g = torch.zeros(self.num_params, device=self.device, dtype=self.dtype)
        with preserved(self.model):
            set_mode(self.model, self.mode)
            for x, y in self.batches:
                with torch.enable_grad():
                    grads = torch.autograd.grad(self._loss(x, y), self.params, allow_unused=True)
                g += (len(y) / self.num_samples) * torch.cat(
                    [(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                     for gi, p in zip(grads, self.params)])
        return g

    def to_dense(self, max_params: int = 20_000) -> torch.Tensor:
        """The full P × P Hessian (P products); for small models only."""
        if self.num_params > max_params:
            raise ValueError(f"{self.num_params} parameters: too many for a dense Hessian "
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
        self.matrix = torch.as_tensor(matrix)
        if self.matrix.dim() != 2 or self.matrix.shape[0] != self.matrix.shape[1]:
            raise ValueError("expected a square matrix")
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
        raise TypeError("expected a HessianOperator, an object with matvec/num_params, or a square matrix")
    return op
