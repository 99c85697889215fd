"""Data sets by name, all in memory, never downloaded; or the user's own data function.

MNIST-1D (default, generated offline), scikit-learn digits, a synthetic Gaussian mixture, and
MNIST / Fashion-MNIST / CIFAR-10 read from a local torchvision-format folder.

Every built-in set is small enough to live in memory, so it comes back as a pair of
:class:`torch.utils.data.TensorDataset` (train, test) with float inputs and int64 labels. A
:class:`DataSpec` (a :class:`~sharpness.specs.Spec`: name + arguments) is stored in each checkpoint so
analysis rebuilds identical data. Nothing is ever downloaded.

A spec may also name the user's own function, registered with :func:`register_data` or as
``"pkg.module:fn"`` (see :mod:`sharpness.specs` for when a name read from a checkpoint may be imported).
It returns ``(train, test)``, each an ``(X, y)`` pair of tensors, a ``Dataset`` or a ``DataLoader``.

Data root (``$SHARPNESS_DATA``): a checkpoint must not make the toolkit read files the user did not
point it at. A data spec read from a checkpoint (``load_data(..., trusted=False)``, as
:meth:`~sharpness.checkpoint.Checkpoint.datasets` loads it) whose arguments hold a ``root`` is loaded only
when that folder, symbolic links resolved, lies inside the folder ``$SHARPNESS_DATA`` names. The
variable is unset by default, so such a root is refused until the user sets it, or passes the root
themselves (``--data-arg root=PATH``, ``data_args={"root": ...}``, ``load_data(..., root=...)``): a
root the user gives is read wherever it is.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from .errors import SharpnessError
from .errors import short as _short
from .io import write_npz
from .specs import Registry, Spec, as_spec, check_args, check_int, check_number

__all__ = ["DataSpec", "load_data", "dataset_names", "register_data", "DATASETS", "input_shape",
           "num_classes", "model_args_from_data", "as_tensors", "data_root"]

DataSpec = Spec  # the name this module used before specs were shared; kept for existing imports


def cache_dir() -> Path:
    """Where generated data are cached: ``$SHARPNESS_CACHE`` or ``~/.cache/sharpness``."""
    return Path(os.environ.get("SHARPNESS_CACHE", Path.home() / ".cache" / "sharpness"))


def _cached_arrays(key: dict, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return ``make()``, cached on disk under a hash of ``key`` so the second load is instant."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{key['name']}-{digest}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:  # a corrupt cache entry is regenerated, never trusted
            pass
    arrays = make()
    try:
        write_npz(path, arrays)
    except (OSError, SharpnessError):  # a read-only home still gets the data, just uncached
        pass
    return arrays


def _check_like(what: str, key: str, value: Any, default: Any) -> None:
    """``value`` has the kind of the generator's default for ``key`` (a flag, a number, a list of numbers)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)
        ok = ok and (not isinstance(default, int) or isinstance(value, int))
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise SharpnessError(f"{what}: {key} must be like its default {default!r} (got {value!r})")


# Sizes a data spec may ask the built-in generators for (a checkpoint's spec must not exhaust memory).
MAX_EXAMPLES = 10**7     # examples in a generated set
MAX_LENGTH = 10**5       # a length, dimension or class count
MAX_VALUES = 10**9       # values in a generated set's arrays
# The length-like arguments of the MNIST-1D generator, with their least value.
_MNIST1D_LENGTHS = {"template_len": 1, "max_translation": 1, "final_seq_length": 1}


def _mnist1d_check(num_samples: Any, train_split: Any, seed: Any, overrides: dict) -> None:
    what = "data set 'mnist1d'"
    defaults: dict = {}
    if overrides:  # the generator's own argument names (imported only then: it takes a while)
        from mnist1d.data import get_dataset_args

        defaults = get_dataset_args(as_dict=True)
    unknown = [k for k in overrides if k not in defaults or k in ("num_samples", "train_split", "seed")]
    if unknown:
        accepted = ["num_samples", "train_split", "seed"] + [k for k in defaults if k not in
                                                             ("num_samples", "train_split", "seed")]
        raise SharpnessError(f"bad arguments for {what}: unknown argument{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(repr(k) for k in unknown)}; accepted: {', '.join(accepted)}")
    check_int(what, "num_samples", num_samples, 10, MAX_EXAMPLES,
              why=" (the generator makes num_samples // 10 per class)")
    check_number(what, "train_split", train_split, 0, 1, open_low=True, open_high=True)
    check_int(what, "seed", seed, 0, 2**32 - 1)
    for k, v in overrides.items():
        _check_like(what, k, v, defaults[k])
        if k in _MNIST1D_LENGTHS:
            check_int(what, k, v, _MNIST1D_LENGTHS[k], MAX_LENGTH)
    if "padding" in overrides:
        low, high = overrides["padding"]
        if not 0 <= low <= high <= MAX_LENGTH:
            raise SharpnessError(f"{what}: padding must be [low, high] with 0 ≤ low ≤ high ≤ {MAX_LENGTH} "
                                 f"(got {_short(overrides['padding'])})")
    args = {**defaults, **overrides}
    if args:  # the longest signal the generator makes per example: the dilated template or the output
        length = max(args["template_len"] + args["padding"][1], args["final_seq_length"])
        if num_samples * length > MAX_VALUES:
            raise SharpnessError(f"{what}: num_samples={num_samples} examples of {length} values would make "
                                 f"{num_samples * length:.3g} values (at most {MAX_VALUES:.0e})")
    n = num_samples // 10 * 10
    cut = int(n * train_split)
    if cut == 0 or cut == n:
        raise SharpnessError(f"{what}: num_samples={num_samples} with train_split={train_split} leaves the "
                             f"{'train' if cut == 0 else 'test'} set empty")


def _mnist1d(num_samples: int = 5000, train_split: float = 0.8, seed: int = 42, **overrides: Any):
    """MNIST-1D (Greydanus & Kobak 2020), generated by the ``mnist1d`` package; 40 features, 10 classes.

    The package's defaults give 4000 train / 1000 test; ``num_samples=10000`` gives 8000 / 2000.
    ``overrides`` are other arguments of the generator (``mnist1d.data.get_dataset_args()``: template_len,
    padding, scale_coeff, max_translation, corr_noise_scale, iid_noise_scale, shear_scale, shuffle_seq,
    final_seq_length, url), each of the kind of its default. ``num_samples`` is an integer ≥ 10 (the
    generator makes ``num_samples // 10`` examples per class), ``train_split`` in (0, 1), and both sets
    must come out non-empty.
    """
    _mnist1d_check(num_samples, train_split, seed, overrides)

    def make() -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
        for k, v in overrides.items():
            setattr(args, k, v)
        state = np.random.get_state()  # make_dataset reseeds numpy's global RNG; give the caller theirs back
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(state)
        return {"x": d["x"], "y": d["y"], "x_test": d["x_test"], "y_test": d["y_test"]}

    key = {"name": "mnist1d", "num_samples": num_samples, "train_split": train_split, "seed": seed,
           **overrides}
    a = _cached_arrays(key, make)
    return a["x"], a["y"], a["x_test"], a["y_test"]


def _digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's bundled 8×8 digits (1797 images), pixels scaled to [0, 1], a fixed seeded split."""
    check_number("data set 'digits'", "test_fraction", test_fraction, 0, 1, open_low=True, open_high=True)
    check_int("data set 'digits'", "seed", seed, 0)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = d.target
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _gaussian(n_train: int = 512, n_test: int = 256, dim: int = 10, classes: int = 3,
              separation: float = 2.0, seed: int = 0):
    """A synthetic Gaussian mixture: one unit-variance cluster per class, means ~ N(0, separation²).

    ``n_train``, ``n_test``, ``dim`` and ``classes`` are integers ≥ 1, ``separation`` ≥ 0, ``seed`` ≥ 0.
    """
    what = "data set 'gaussian'"
    for key, value in (("n_train", n_train), ("n_test", n_test)):
        check_int(what, key, value, 1, MAX_EXAMPLES)
    for key, value in (("dim", dim), ("classes", classes)):
        check_int(what, key, value, 1, MAX_LENGTH)
    check_number(what, "separation", separation, 0)
    check_int(what, "seed", seed, 0)
    values = (n_train + n_test + classes) * dim
    if values > MAX_VALUES:
        raise SharpnessError(f"{what}: n_train={n_train}, n_test={n_test} and classes={classes} in dim={dim} "
                             f"would make {values:.3g} values (at most {MAX_VALUES:.0e})")
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, separation, size=(classes, dim))

    def draw(n: int):
        y = rng.integers(0, classes, size=n)
        return (means[y] + rng.normal(size=(n, dim))).astype(np.float32), y

    x, y = draw(n_train)
    xt, yt = draw(n_test)
    return x, y, xt, yt


def valid_root(name: str, root: Any) -> str:
    """``root`` as a path string: a string or path without NUL characters, else a one-line SharpnessError."""
    if isinstance(root, os.PathLike):
        root = os.fspath(root)
    if not isinstance(root, str):
        raise SharpnessError(f"data set '{name}': root must be a folder path (got {_short(root)})")
    if "\x00" in root:
        raise SharpnessError(f"data set '{name}': root {_short(root)} is not a folder path (it holds a NUL character)")
    return root


def _require_root(root: str | None, name: str) -> Path:
    if not root:
        raise SharpnessError(f"data set '{name}' is read from a local folder: pass root=PATH "
                             "(a torchvision-format data folder); nothing is downloaded")
    path = Path(os.path.expanduser(valid_root(name, root)))
    if not path.is_dir():
        raise SharpnessError(f"data folder '{path}' for '{name}' does not exist")
    return path


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rb") as f:
                data = f.read()
            ndim = data[3]
            shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
            return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    raise FileNotFoundError(path)


def _mnist_like(folder_name: str, name: str):
    def load(root: str | None = None):
        base = _require_root(root, name)
        raw = base / folder_name / "raw"
        try:
            x = _read_idx(raw / "train-images-idx3-ubyte")
            y = _read_idx(raw / "train-labels-idx1-ubyte")
            xt = _read_idx(raw / "t10k-images-idx3-ubyte")
            yt = _read_idx(raw / "t10k-labels-idx1-ubyte")
        except FileNotFoundError as e:
            raise SharpnessError(f"'{name}' files not found in '{raw}' (missing {Path(str(e)).name}); "
                                 "expected torchvision's layout") from None
        scale = lambda a: (a.astype(np.float32) / 255.0)[:, None]  # noqa: E731
        return scale(x), y.astype(np.int64), scale(xt), yt.astype(np.int64)

    return load


def _numpy_reconstruct() -> Callable:
    try:  # numpy ≥ 2 moved the array internals; old pickles still name numpy.core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _plain_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # object arrays would hold arbitrary pickled objects; CIFAR holds bytes
        raise pickle.UnpicklingError("an object dtype")
    return dtype


def _latin1(text: str, encoding: str) -> bytes:
    # Python 3 writes bytes at protocol 2 as _codecs.encode(text, "latin1"); only that use is admitted.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's python batches: a pickle may import and call anything, so only what they need.

    A batch is a dict of byte strings, lists of ints and one uint8 numpy array; anything else the pickle
    would import is refused before it is imported.
    """

    def __init__(self, file: Any, path: Path):
        super().__init__(file, encoding="bytes")  # the batches were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: _plain_dtype,
            ("_codecs", "encode"): lambda: _latin1,
        }
        if (module, name) not in allowed:
            raise SharpnessError(f"'cifar10' file '{self.path}' refused: it would import {module}.{name}, "
                                 "which a CIFAR-10 batch never needs")
        return allowed[module, name]()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise SharpnessError(f"'cifar10' file '{path}' not found; expected torchvision's layout")
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, path).load()
    except SharpnessError:
        raise
    except Exception as e:  # truncated or foreign file, or a refused dtype/encoding
        raise SharpnessError(f"'cifar10' file '{path}' is not a CIFAR-10 batch "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    data = d.get(b"data") if isinstance(d, dict) else None
    labels = d.get(b"labels") if isinstance(d, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072 or \
            not isinstance(labels, list) or len(labels) * 3072 != data.size:
        raise SharpnessError(f"'cifar10' file '{path}' is not a CIFAR-10 batch (expected b'data', uint8 "
                             "N×3072, and b'labels', N ints)")
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, np.array(labels, dtype=np.int64)


def _cifar10(root: str | None = None):
    """CIFAR-10 from torchvision's ``cifar-10-batches-py`` folder (the user's own local copy).

    The batches are pickles; they are read with an unpickler that admits only numpy arrays, so a file
    in that folder cannot run code.
    """
    folder = _require_root(root, "cifar10") / "cifar-10-batches-py"
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    xt, yt = _read_cifar_batch(folder / "test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xt, yt


def _tensor_set(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    to_t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return TensorDataset(to_t(x, torch.float32), to_t(y, torch.int64))


def _from_arrays(fn: Callable[..., tuple]) -> Callable[..., tuple[TensorDataset, TensorDataset]]:
    """A built-in loader of ``(x, y, x_test, y_test)`` arrays as a data function: (train, test) tensors."""

    @functools.wraps(fn)  # keeps fn's signature, so bad arguments are still reported as such
    def load(**args: Any) -> tuple[TensorDataset, TensorDataset]:
        x, y, xt, yt = fn(**args)
        return _tensor_set(x, y), _tensor_set(xt, yt)

    return load


DATASETS = Registry("data set", option="data")
for _name, _fn in {
    "mnist1d": _mnist1d,
    "digits": _digits,
    "gaussian": _gaussian,
    "mnist": _mnist_like("MNIST", "mnist"),
    "fashion-mnist": _mnist_like("FashionMNIST", "fashion-mnist"),
    "cifar10": _cifar10,
}.items():
    DATASETS.register(_name, _from_arrays(_fn))


def register_data(name: str, fn: Callable | None = None) -> Callable:
    """Register a data function under ``name`` (replacing any earlier one); without ``fn``, a decorator.

    ``fn(**args)`` returns ``(train, test)``, each an ``(X, y)`` pair of tensors, a ``Dataset`` or a
    ``DataLoader`` (test may be None).
    """
    return DATASETS.register(name, fn)


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_data` (besides ``"pkg.module:fn"``)."""
    return DATASETS.names()


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"{type(value).__name__}({inner})"
    return type(value).__name__


# Examples in one data set: a larger __len__ is refused (nothing the toolkit runs could pass over it,
# and a length read as the size of an index or a permutation would allocate by it).
MAX_DATASET_LENGTH = 10**9


def dataset_length(data: Any, what: str = "data set") -> int:
    """``len(data)`` of a map-style Dataset (a DataLoader's dataset), checked: an integer in [0, 10⁹].

    Raises:
        SharpnessError: an IterableDataset (no length, no indexing), a ``__len__`` that fails or returns
            something else than such an integer.
    """
    ds = _dataset(data)
    if isinstance(ds, IterableDataset):
        raise SharpnessError(f"{what} {type(ds).__name__} is an IterableDataset: it has no length and no "
                             "indexing; give a map-style Dataset (__getitem__ and __len__), or a DataLoader "
                             "over it where only analysis reads it")
    try:
        n = len(ds)
    except Exception as e:  # noqa: BLE001 - the user's __len__: one line, whatever it raised
        raise SharpnessError(f"{what} {type(ds).__name__}: len() failed: {type(e).__name__}: "
                             f"{_short(str(e), 200)}") from None
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_DATASET_LENGTH:
        raise SharpnessError(f"{what} {type(ds).__name__}: len() is {_short(n)}, not a number of examples "
                             f"in [0, {MAX_DATASET_LENGTH}]")
    return n


def _one_set(name: str, part: Any, result: Any) -> Any:
    """One of the (train, test) a data function returned: tensors become a TensorDataset.

    A Dataset's length is checked (:func:`dataset_length`); a bare IterableDataset is refused (nothing
    can index it); a DataLoader over one is kept (analysis iterates it; the trainer refuses it).
    """
    if isinstance(part, DataLoader):
        if not isinstance(part.dataset, IterableDataset):
            dataset_length(part, f"data function '{name}' returned a DataLoader whose dataset")
        return part
    if isinstance(part, Dataset):
        dataset_length(part, f"data function '{name}' returned data set")
        return part
    if isinstance(part, (tuple, list)) and len(part) == 2 and all(isinstance(t, torch.Tensor) for t in part):
        x, y = part
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise SharpnessError(f"data function '{name}' returned X and y of shapes {tuple(x.shape)} and "
                                 f"{tuple(y.shape)}: they need one first dimension (the examples)")
        return TensorDataset(x, y)
    raise SharpnessError(f"data function '{name}' returned {_describe(result)}; expected (train, test), "
                         "each an (X, y) pair of tensors, a Dataset or a DataLoader")


def data_root() -> Path | None:
    """The folder a data spec read from a checkpoint may read files in: ``$SHARPNESS_DATA`` (resolved).

    None when the variable is unset or empty (then no such spec may name a ``root``).
    """
    value = os.environ.get("SHARPNESS_DATA")
    return Path(os.path.realpath(os.path.expanduser(value))) if value else None


def _check_root(name: str, root: Any) -> None:
    """Refuse a ``root`` read from a checkpoint that lies outside ``$SHARPNESS_DATA`` (see the module docstring)."""
    if root is None:
        return
    allowed = data_root()
    shown = f"'{os.environ['SHARPNESS_DATA']}'" if allowed is not None else "unset"
    if not isinstance(root, (str, os.PathLike)):
        raise SharpnessError(f"data set '{name}': the checkpoint's data root {_short(root)} is not a path")
    root = valid_root(name, root)
    resolved = os.path.realpath(os.path.expanduser(root))
    try:
        inside = allowed is not None and os.path.commonpath([resolved, str(allowed)]) == str(allowed)
    except ValueError:  # different drives (Windows)
        inside = False
    if not inside:
        where = f"'{root}'" + (f" (resolves to '{resolved}')" if resolved != os.fspath(root) else "")
        raise SharpnessError(f"data set '{name}': the checkpoint's data root {where} is outside $SHARPNESS_DATA "
                             f"({shown}); pass --data-arg root=PATH (or data_args={{'root': ...}}) to read it")


def load_data(spec: DataSpec | str | dict = "mnist1d", *, trusted: bool = True,
              trusted_args: Any = None, **args: Any) -> tuple:
    """Build the (train, test) data sets a spec names.

    Built-in sets come back as in-memory TensorDatasets of float32 inputs and int64 labels; a user data
    function's ``(X, y)`` tensors as a TensorDataset of them unchanged, its Datasets and DataLoaders as
    given (its test set may be None).

    Args:
        spec: a :class:`DataSpec`, its dict form, a registered name or ``"pkg.module:fn"`` (then ``args``
            are its arguments, laid over the spec's own).
        trusted: False when the spec was read from a checkpoint: ``"pkg.module:fn"`` must then be the
            user's own code (see :mod:`sharpness.specs`), and a ``root`` among its arguments must lie
            inside ``$SHARPNESS_DATA`` (see the module docstring).
        trusted_args: when not None, the names of the spec's arguments that the caller gave, the others
            having been read from a checkpoint: a ``root`` not among them is held to ``$SHARPNESS_DATA``
            even when ``trusted`` is True (a data set the caller named, with the file's arguments).
            ``args`` are always the caller's.
        **args: arguments for the named set (e.g. ``num_samples=10000`` for mnist1d, ``root=`` for mnist).

    Raises:
        SharpnessError: unknown or refused name, unknown arguments (the accepted ones listed) or bad
            values, a checkpoint's ``root`` outside ``$SHARPNESS_DATA``, local files missing, or a data
            function that fails (the cause chained) or returns something else than (train, test).
    """
    spec = as_spec(spec, args, "data set")
    fn = DATASETS.resolve(spec.name, trusted=trusted)
    root_given = "root" in args or (trusted if trusted_args is None else "root" in trusted_args)
    if "root" in spec.args and not root_given:
        _check_root(spec.name, spec.args["root"])
    check_args(fn, spec.args, f"data set '{spec.name}'")
    try:
        result = fn(**spec.args)
    except TypeError as e:
        raise SharpnessError(f"bad arguments for data set '{spec.name}': {' '.join(str(e).split())}") from None
    except SharpnessError:
        raise
    except Exception as e:  # the function's own failure, e.g. a bad value: one line, the cause kept
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise SharpnessError(f"data function '{spec.name}' failed: {type(e).__name__}: {first}") from e
    if not (isinstance(result, (tuple, list)) and len(result) == 2) or result[0] is None:
        raise SharpnessError(f"data function '{spec.name}' returned {_describe(result)}; expected (train, test), "
                             "each an (X, y) pair of tensors, a Dataset or a DataLoader")
    train, test = result
    return _one_set(spec.name, train, result), None if test is None else _one_set(spec.name, test, result)


def _dataset(data: Any) -> Any:
    """A DataLoader's dataset; anything else as it is."""
    return data.dataset if isinstance(data, DataLoader) else data


def input_shape(ds: Dataset | DataLoader) -> tuple[int, ...]:
    """Shape of one input example: the first example's input (its first field, for tuple examples).

    Raises:
        SharpnessError: the data set is empty or its inputs are not tensors or arrays.
    """
    ds = _dataset(ds)
    if isinstance(ds, TensorDataset):
        return tuple(ds.tensors[0].shape[1:])
    try:
        if isinstance(ds, IterableDataset):
            item = next(iter(ds))
        else:  # ds[0] of an empty data set need not raise: ask its length first
            item = ds[0] if not hasattr(ds, "__len__") or dataset_length(ds) else None
    except (IndexError, KeyError, StopIteration):
        item = None
    if item is None:
        raise SharpnessError(f"data set {type(ds).__name__} is empty: it has no input shape")
    x = item[0] if isinstance(item, (tuple, list)) else item
    if not hasattr(x, "shape"):
        raise SharpnessError(f"cannot tell the input shape of {type(ds).__name__}: its first example's input "
                             f"is a {type(x).__name__}, not a tensor or array")
    return tuple(int(n) for n in x.shape)


def _targets(data: Any) -> torch.Tensor | None:
    """Every target of a data set (the second field of its examples), or None if examples have none."""
    ds = _dataset(data)
    if isinstance(ds, TensorDataset):
        return ds.tensors[1] if len(ds.tensors) > 1 else None
    # torchvision's data sets list their targets: no need to read (and decode) every example.
    if getattr(ds, "targets", None) is not None and getattr(ds, "target_transform", None) is None:
        try:
            return torch.as_tensor(ds.targets)
        except (TypeError, ValueError, RuntimeError):
            pass
    has_len = hasattr(ds, "__len__") and not isinstance(ds, IterableDataset)
    items = (ds[i] for i in range(dataset_length(ds))) if has_len else iter(ds)
    ys = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            return None
        try:
            ys.append(torch.as_tensor(item[1]).reshape(-1))
        except (TypeError, ValueError, RuntimeError):  # strings, dicts: not labels
            return None
    return torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)


def model_args_from_data(train: Any, test: Any = None, *, strict: bool = True) -> dict:
    """The model arguments the data decide: ``input_shape`` (of the training inputs) and ``num_classes``.

    ``num_classes`` is left out for targets that are not class labels (regression). ``strict`` False
    leaves out, instead of raising, an ``input_shape`` the data cannot tell (inputs that are not tensors).
    The trainer builds its model from these, and a bare state_dict's factory gets the same (``analyze``).
    """
    out: dict = {}
    try:
        out["input_shape"] = list(input_shape(train))
    except SharpnessError:
        if strict:
            raise
    try:
        classes = num_classes(train, test)
    except SharpnessError:
        if strict:
            raise
        classes = None
    if classes is not None:
        out["num_classes"] = classes
    return out


def num_classes(*sets: Dataset | DataLoader) -> int | None:
    """Number of classes (max label + 1 over the given sets), or None if targets are not class labels.

    Targets are the second field of each example (a data set without a ``targets`` list is read once
    through). Float or boolean targets (regression, multi-label) and examples without a target give None.
    """
    if not sets:
        raise SharpnessError("num_classes needs at least one data set")
    top = -1
    for s in sets:
        if s is None:
            continue
        y = _targets(s)
        if y is None or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            return None
        if y.numel():
            top = max(top, int(y.max()))
    return top + 1 if top >= 0 else None
def as_tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Return (X, y) if ``data`` is a pair of tensors or a TensorDataset, else None."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return data[0], data[1]
    return None

