"""The one data loop: batches of any structure, cached on the device or streamed from the host.

A *batch* is whatever a data set yields: a tuple ``(x, y)``, ``(x, y, w)``, ``((x1, x2), y)``, a dict
``{"input_ids": ..., "labels": ...}`` — any nesting of tuples, lists and dicts whose tensor leaves share
their first dimension (the examples). :class:`Batches` accepts

- in-memory data: a tuple/list of tensors ``(X, y, ...)``, a ``TensorDataset``, a dict of tensors, or
  any tuple/dict nesting of them — split into ``batch_size`` chunks (None: one batch);
- a *list* of batches ``[(X1, y1), (X2, y2), ...]`` (curvlinops' usual input), kept as given;
- a map-style ``Dataset``, read through a ``DataLoader`` of ``batch_size`` (None: one batch);
- a ``DataLoader``, iterated once per pass with its own batching, workers and transforms.

In-memory data and lists of batches are **cached** on the device when they fit ``cache_bytes`` (default:
everything on CPU, a quarter of the free memory on CUDA); otherwise they stay on the host (pinned on
CUDA) and each batch is copied when it is needed, the next one's copy issued before the current one is
used, so the transfer overlaps the compute. A ``Dataset`` is read once and cached the same way when it
fits. A ``DataLoader`` is never frozen: every pass iterates it again, drawing the same random numbers
(below) — a shuffling loader gives its examples in the same order each pass, and random augmentation
gives one fixed loss, of the augmented examples (pass the un-augmented data to measure the plain loss).
Floating-point leaves are cast to the model's dtype as they reach the device.

A ``DataLoader`` draws random numbers as it is iterated — its workers' base seed and a shuffling
sampler's seed come from torch's global generator (or the loader's own ``generator``), even with
``shuffle=False`` — and main-process transforms may draw from torch, NumPy and Python's ``random``. Every
step of a loader here runs on private generators instead (:class:`_PrivateRandom`: reset from one seed
at each pass, swapped in around each ``next`` and swapped out before the batch is used), so iterating a
user's loader leaves every one of the caller's random states bit for bit as it was — a training loop that
analyzes or tracks its model trains exactly as one that does not — and each pass draws the same numbers
(the same order, the same augmentation), so two passes see one and the same loss.
"""

from __future__ import annotations

import contextlib
import math
import random
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from .checks import require
from .data import dataset_length
from .errors import SharpnessError, printable
from .errors import short as _short

__all__ = ["Batches", "tree_map", "leaves", "length", "cat", "index", "split"]


def tree_map(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to every tensor leaf of a nesting of tuples, lists and dicts."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return type(tree)((k, tree_map(fn, v)) for k, v in tree.items())
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


def _zip_map(fn: Callable[[list], Any], trees: list) -> Any:
    """Like :func:`tree_map` over several trees of one structure: ``fn`` gets the list of leaves."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return fn(trees)
    if isinstance(first, dict):
        return type(first)((k, _zip_map(fn, [t[k] for t in trees])) for k in first)
    if isinstance(first, (tuple, list)):
        items = [_zip_map(fn, [t[i] for t in trees]) for i in range(len(first))]
        return type(first)(*items) if hasattr(first, "_fields") else type(first)(items)
    return first


def leaves(tree: Any) -> list[torch.Tensor]:
    """The tensor leaves, depth first."""
    out: list[torch.Tensor] = []
    tree_map(out.append, tree)
    return out


def length(tree: Any) -> int:
    """Number of examples: the first dimension of the first tensor leaf."""
    ts = leaves(tree)
    if not ts or ts[0].dim() == 0:
        raise SharpnessError("a batch has no tensor with a batch dimension")
    return int(ts[0].shape[0])


def cat(trees: list) -> Any:
    """Concatenate batches of one structure along the example dimension."""
    return _zip_map(lambda ts: torch.cat(ts), trees)


def index(tree: Any, idx: torch.Tensor) -> Any:
    """The examples ``idx`` of a batch."""
    return tree_map(lambda t: t[idx.to(t.device)], tree)


def split(tree: Any, size: int) -> list:
    """Consecutive chunks of ``size`` examples (the last may be smaller)."""
    n = length(tree)
    return [tree_map(lambda t, s=s: t[s:s + size], tree) for s in range(0, n, size)]


def _nbytes(tree: Any) -> int:
    return sum(t.numel() * t.element_size() for t in leaves(tree))


def _move(tree: Any, device: torch.device, dtype: torch.dtype | None, non_blocking: bool = False) -> Any:
    def one(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t.to(device, non_blocking=non_blocking)
    return tree_map(one, tree)


def _in_memory(data: Any) -> Any | None:
    """The data as one batch tree when they are tensors in memory (not a list of batches), else None."""
    if isinstance(data, TensorDataset):
        return tuple(data.tensors)
    if isinstance(data, torch.Tensor):
        raise SharpnessError("data is a single tensor: pass (inputs, targets), e.g. (X, y)")
    if isinstance(data, list) and data and all(isinstance(b, (tuple, list, dict)) for b in data):
        return None  # a list of batches
    if isinstance(data, (tuple, list, dict)) and leaves(data):
        sizes = {int(t.shape[0]) if t.dim() else -1 for t in leaves(data)}
        if len(sizes) != 1 or -1 in sizes:
            raise SharpnessError(f"data tensors disagree on the number of examples (first dimensions {sorted(sizes)})")
        return data
    return None


class _PrivateRandom:
    """Generators a DataLoader's steps run on, in place of the caller's (see the module docstring).

    Covers torch's global CPU generator, the loader's own ``generator`` (and its sampler's), NumPy's and
    Python's global generators. :meth:`reset` starts a pass from the same seed; :meth:`step` swaps the
    private states in and, on exit, saves them and puts the caller's back (also when the step raises).
    """

    def __init__(self, loader: DataLoader, seed: int = 0):
        self.seed = seed
        own = [loader.generator, getattr(loader.sampler, "generator", None)]
        self.generators = [g for i, g in enumerate(own) if g is not None and all(g is not o for o in own[:i])]
        self.reset()

    def reset(self) -> None:
        """Private states as drawn from ``seed``: every pass draws the same numbers."""
        g = torch.Generator().manual_seed(self.seed)
        self.states = [g.get_state()] + [torch.Generator().manual_seed(self.seed + 1 + i).get_state()
                                          for i in range(len(self.generators))]
        self.np_state = np.random.RandomState(self.seed).get_state()
        self.py_state = random.Random(self.seed).getstate()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """The private states in place of the caller's for the body; the caller's back after it."""
        mine = [torch.get_rng_state()] + [g.get_state() for g in self.generators]
        mine_np, mine_py = np.random.get_state(), random.getstate()
        torch.set_rng_state(self.states[0])
        for g, st in zip(self.generators, self.states[1:]):
            g.set_state(st)
        np.random.set_state(self.np_state)
        random.setstate(self.py_state)
        try:
            yield
        finally:
            self.states = [torch.get_rng_state()] + [g.get_state() for g in self.generators]
            self.np_state, self.py_state = np.random.get_state(), random.getstate()
            torch.set_rng_state(mine[0])
            for g, st in zip(self.generators, mine[1:]):
                g.set_state(st)
            np.random.set_state(mine_np)
            random.setstate(mine_py)


_CHUNK = 1 << 22  # elements per finiteness check: a bounded temporary, whatever the data's size


def nonfinite_example(t: torch.Tensor, *, nan_only: bool = False) -> int | None:
    """The first example (index along dim 0) of a float tensor holding NaN or ±Inf (``nan_only``: NaN), or None.

    Read in slices of about ``_CHUNK`` elements, so the check's temporary stays small whatever the data.
    """
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
        return None
    bad = torch.isnan if nan_only else (lambda x: ~torch.isfinite(x))
    if t.ndim == 0:
        return 0 if bool(bad(t)) else None
    rows = max(1, _CHUNK // max(1, t[0].numel()))
    for start in range(0, len(t), rows):
        part = bad(t[start:start + rows]).reshape(min(rows, len(t) - start), -1).any(1)
        if bool(part.any()):
            return start + int(part.nonzero()[0, 0])
    return None


def _nonfinite(tree: Any, path: tuple = ()) -> tuple | None:
    """The position (indices/keys from the top) of the first float tensor leaf holding NaN or ±Inf, else None.

    Walks tensors, tuples, lists, dicts, TensorDatasets and DataLoaders over them (data in memory only;
    other Datasets are left to the two-example probe). A leaf under a dict key naming a mask
    (``attention_mask``, ``src_mask``) may hold −inf, as additive masks do: there only NaN is bad.
    """
    if isinstance(tree, DataLoader):
        return _nonfinite(tree.dataset, path)
    if isinstance(tree, TensorDataset):
        return _nonfinite(tuple(tree.tensors), path)
    if isinstance(tree, torch.Tensor):
        mask = any(isinstance(k, str) and "mask" in k.lower() for k in path)
        return path if nonfinite_example(tree.detach(), nan_only=mask) is not None else None
    if isinstance(tree, (tuple, list)):
        items = enumerate(tree)
    elif isinstance(tree, dict):
        items = tree.items()
    else:
        return None
    for k, v in items:
        found = _nonfinite(v, (*path, k))
        if found is not None:
            return found
    return None


def _field(path: tuple, batches: bool) -> str:
    """A leaf's position in words: ``inputs`` / ``targets`` of an ``(X, y)`` pair, ``batch 3``, ``['image']``."""
    parts = []
    if batches and path:
        parts.append(f"batch {path[0]}")
        path = path[1:]
    for i, k in enumerate(path):
        if i == 0 and isinstance(k, int) and k < 2:
            parts.append(("inputs (X)", "targets (y)")[k])
        else:
            parts.append(f"[{_short(k, 40)}]")
    return ", ".join(parts) or "the tensor"


def check_finite(data: Any, where: str = "", name: str = "") -> None:
    """Bad data said as such, before any measure: a NaN or Inf in a float leaf of ``data`` (kept in memory).

    Every :class:`Batches` over data in memory is checked once when made, so a library call (an
    eigenvalue, a surface, the tracker) says "bad data" rather than returning NaN or failing in LAPACK.
    """
    is_batches = isinstance(data, list) and bool(data) and all(isinstance(b, (tuple, list, dict)) for b in data)
    found = _nonfinite(data)
    if found is not None:
        raise SharpnessError(f"{where + ': ' if where else ''}the {name + ' ' if name else ''}data hold NaN or Inf "
                             f"values ({_field(found, is_batches)}); bad data, not a training problem: clean or "
                             "drop those examples")


DATASET_BATCH = 4096  # a Dataset without batch_size is read in batches of this many examples (one if smaller)


def _dataset_length(data: Dataset) -> int:
    """``len(data)`` of a map-style Dataset, checked by :func:`sharpness.data.dataset_length`; empty: refused."""
    n = dataset_length(data, "data: the")
    if n == 0:
        raise SharpnessError("data is empty")
    return n


def _default_budget(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 4
    return math.inf  # on the host the data are in memory already: caching copies nothing


class Batches:
    """Re-iterable batches on ``device``: cached there when they fit ``cache_bytes``, else streamed.

    Args:
        data: see the module docstring for the accepted forms.
        batch_size: batch size for in-memory data and Datasets (memory only; None: one batch).
        device: where batches are delivered.
        dtype: floating-point leaves are cast to it (None: kept).
        cache_bytes: device-memory budget for caching (None: all on CPU, ¼ of free memory on CUDA).
    """

    def __init__(self, data: Any, *, batch_size: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, cache_bytes: float | None = None):
        require("batch_size", batch_size, int, optional=True, ge=1)
        require("cache_bytes", cache_bytes, float, optional=True, ge=0)
        try:
            device = torch.device(device)
        except (TypeError, RuntimeError, ValueError):
            raise SharpnessError(f"device must be a torch device or its name, e.g. 'cpu' or 'cuda:0' "
                                 f"(got {_short(device)})") from None
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise SharpnessError(f"dtype must be None or a floating-point torch dtype (got {_short(dtype)})")
        self.device, self.dtype = device, dtype
        self.budget = _default_budget(self.device) if cache_bytes is None else float(cache_bytes)
        self.loader: DataLoader | None = None
        self.stored: list | None = None      # the batches, on the device (cached) or on the host
        self.cached = False
        self._cache_after_pass = False
        self.num_samples: int | None = None  # known after the first pass for loaders
        self._batches_seen = 0  # batches of the last pass (a loader over an IterableDataset has no len)
        self.source = data
        self.random: _PrivateRandom | None = None  # a loader's private generators (set below)
        tree = _in_memory(data)
        check_finite(data)  # in memory (tensors, batches, a loader over a TensorDataset): NaN/Inf is bad data
        if tree is not None:
            self._store(split(tree, batch_size) if batch_size else [tree])
        elif isinstance(data, list) and data:
            self._store(list(data))
        elif isinstance(data, DataLoader):
            if not isinstance(data.dataset, IterableDataset):
                _dataset_length(data.dataset)  # a declared length past any real data set: refused before a pass
            self.loader = data
            if data.drop_last:
                warnings.warn("the DataLoader drops its last incomplete batch (drop_last=True): the loss is "
                              "the mean over the examples it yields, not over the whole data set", stacklevel=3)
        elif isinstance(data, IterableDataset):
            raise SharpnessError(f"data is an IterableDataset ({type(data).__name__}): it has no length and no "
                                 "indexing, so a pass and a subset are not defined; wrap it in a DataLoader, e.g. "
                                 "DataLoader(data, batch_size=256), or give a map-style Dataset")
        elif isinstance(data, Dataset):
            n = _dataset_length(data)
            # one batch when it is small; never a batch (nor a buffer) sized by a declared length alone
            self.loader = DataLoader(data, batch_size=batch_size or min(n, DATASET_BATCH), shuffle=False)
            self._cache_after_pass = True
        else:
            raise SharpnessError("data must be (X, y) tensors, a TensorDataset, a list of batches, a Dataset or "
                                 f"a DataLoader (got {type(data).__name__})")
        if self.loader is not None:
            self.random = _PrivateRandom(self.loader)

    def _store(self, batches: list) -> None:
        if not batches or sum(length(b) for b in batches) == 0:
            raise SharpnessError("data is empty")
        self.num_samples = sum(length(b) for b in batches)
        if sum(_nbytes(b) for b in batches) <= self.budget:
            self.stored, self.cached = [_move(b, self.device, self.dtype) for b in batches], True
        else:  # stream: keep on the host, pinned so copies can run asynchronously
            pin = self.device.type == "cuda"
            self.stored = [tree_map(lambda t: t.pin_memory() if pin else t, b) for b in batches]

    @property
    def single(self) -> bool:
        """True when all the data are one batch already on the device (a gradient graph can be kept)."""
        return self.cached and len(self.stored) == 1

    def __len__(self) -> int:
        """Number of batches of a pass (a loader over an IterableDataset without a length: of the last pass)."""
        if self.stored is not None:
            return len(self.stored)
        try:
            return len(self.loader)
        except TypeError:  # an IterableDataset with no __len__: known once a pass has run
            return self._batches_seen

    def __iter__(self) -> Iterator[Any]:
        if self.cached:
            yield from self.stored
            return
        async_copy = self.device.type == "cuda"
        if self.stored is None:
            self.random.reset()
            with self.random.step():
                source = iter(self.loader)
        else:
            source = iter(self.stored)
        kept, n, nbytes, count = [], 0, 0, 0
        nxt = self._next(source)
        nxt = None if nxt is None else _move(nxt, self.device, self.dtype, async_copy)
        while nxt is not None:
            cur = nxt
            raw = self._next(source)  # issue the next copy before the current batch is used
            nxt = None if raw is None else _move(raw, self.device, self.dtype, async_copy)
            n += length(cur)
            count += 1
            if self._cache_after_pass:
                nbytes += _nbytes(cur)
                kept.append(cur)
                if nbytes > self.budget:
                    self._cache_after_pass, kept = False, []
            yield cur
        if n == 0:
            raise SharpnessError("data is empty")
        self.num_samples, self._batches_seen = n, count
        if self._cache_after_pass:  # a Dataset that fits: read once, like in-memory data
            self.stored, self.cached, self._cache_after_pass = kept, True, False

    def _next(self, source: Iterator) -> Any:
        """The next batch of ``source`` (None at its end); a loader's step on its private generators."""
        if self.stored is not None:
            return next(source, None)
        with self.random.step():
            try:
                return next(source, None)
            except (SharpnessError, MemoryError, torch.OutOfMemoryError):
                raise
            except Exception as e:  # the user's Dataset / collate_fn / transform raising: one line
                what = type(self.loader.dataset).__name__
                raise SharpnessError(f"data: reading a batch from the {what} failed ("
                                     f"{printable(f'{type(e).__name__}: {e}', 300)})") from e

    def examples(self, idx: torch.Tensor) -> Any:
        """The examples ``idx`` (positions in pass order) as one batch on the host or device."""
        if isinstance(self.source, (TensorDataset, tuple, dict)) or (
                isinstance(self.source, list) and _in_memory(self.source) is not None):
            return index(_in_memory(self.source), idx)
        loader = self.loader
        if loader is not None and not isinstance(loader.dataset, IterableDataset):
            # By data-set index, so a shuffling loader gives the same subset every time.
            self.random.reset()
            with self.random.step():
                try:
                    return loader.collate_fn([loader.dataset[int(i)] for i in idx])
                except (SharpnessError, MemoryError, torch.OutOfMemoryError):
                    raise
                except Exception as e:  # the user's Dataset / collate_fn raising: one line
                    raise SharpnessError(f"data: reading examples from the {type(loader.dataset).__name__} failed ("
                                         f"{printable(f'{type(e).__name__}: {e}', 300)})") from e
        return index(cat(list(self)), idx)

