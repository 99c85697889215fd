"""The checkpoint format: saved atomically, loaded with ``torch.load(weights_only=True)`` only.

A toolkit checkpoint is a plain dict (tensors, numbers, strings, lists, dicts; nothing that unpickles
to code) holding::

    format="sharpness-checkpoint", version, model (Spec dict), data (Spec dict), config,
    state_dict, epoch, step, history (list of per-epoch dicts), optimizer (state dict or None), torch,
    extra, checksum

so :func:`load_checkpoint` rebuilds the model and the exact data without the training code.
``checksum`` is ``{"algorithm": "sha256", "tensors": <hex>, "covers": ["state_dict", "optimizer"]}``:
the SHA-256 of every tensor of the state_dict and of the optimizer state (see :func:`tensor_checksum`),
verified on load, so a file whose tensor bytes were changed after it was written (a flipped bit on
disk, an edit that kept the zip archive valid) is refused instead of analyzed. It detects corruption,
not forgery: whoever can rewrite the file can rewrite the checksum. Checkpoints written before it
existed (no ``checksum`` key) still load.

The specs may name the user's own ``"pkg.module:fn"``; a name read from a file is imported only under
the policy of :mod:`sharpness.specs` (the user's own code, never the standard library or an installed
package), unless the caller passes it explicitly; a data ``root`` read from a file must lie inside
``$SHARPNESS_DATA`` (:mod:`sharpness.data`). Other weights load too when the caller supplies the model:
a bare ``state_dict`` ``.pt`` file, one wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``
(Lightning, common scripts), or a Hugging Face ``.safetensors`` file; keys carrying one common prefix
such as ``model.`` (Lightning) or ``module.`` (DDP) are loaded stripped of it; a wrapper's top-level
``epoch`` and ``global_step`` (Lightning) or ``step`` are kept as the checkpoint's epoch and step.

A module in memory becomes a checkpoint too (:meth:`Checkpoint.from_module`: path None, identified by
the :func:`tensor_checksum` of its state_dict), so ``analyze`` has one code path for files and modules.
A factory or registered name that takes ``input_shape`` / ``num_classes`` and was not given them gets
them from the data, as the trainer does (``Checkpoint.model(data=(train, test))``).
"""

from __future__ import annotations

import copy
import errno
import functools
import hashlib
import math
import os
import pickle
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .checks import check_device, is_number
from .data import DataSpec, load_data, model_args_from_data, valid_root
from .errors import SharpnessError, printable
from .errors import short as _short
from .io import atomic_write
from .models import MODELS, ModelSpec, _takes, build_model
from .specs import Spec, as_spec

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint", "tensor_checksum", "FORMAT", "VERSION"]

FORMAT = "sharpness-checkpoint"
VERSION = 1
CHECKSUM = "sha256"
_COVERED = ("state_dict", "optimizer")  # the parts of the payload whose tensors the checksum covers

# Model arguments that come from the data, not from the model's choice: they carry over to another
# factory the caller names for a toolkit checkpoint.
_DATA_ARGS = ("input_shape", "num_classes")


_MESSAGE = 1000  # characters of an error message built from a file's contents (names, specs, paths)


def _one_line(fn: Callable) -> Callable:
    """A SharpnessError of ``fn`` with every control character escaped and its length capped.

    Names, specs, a loss, a data root and paths read from a checkpoint (or a stranger's folder) reach these
    messages; an ESC byte there must never reach the terminal raw (see :func:`sharpness.errors.printable`).
    """
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SharpnessError as e:
            text = str(e)
            safe = printable(text, _MESSAGE)
            if safe == text:
                raise
            raise SharpnessError(safe) from e.__cause__  # a user function's own error stays chained
    return wrapped


def _tensors(obj: Any, path: tuple) -> Any:
    """(path, tensor) for every tensor in nested dicts, lists and tuples; dict keys in sorted order."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            yield from _tensors(obj[k], path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, path + (i,))


def _tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's elements as one flat uint8 tensor: its bytes in row-major order, on the CPU."""
    t = t.detach()
    if t.is_quantized:
        t = t.int_repr()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.dtype != torch.uint8 else t


def tensor_checksum(payload: dict) -> str:
    """SHA-256 (hex) of the tensors of a checkpoint's ``state_dict`` and ``optimizer`` state.

    Each tensor contributes its path (``state_dict``, then its name; for the optimizer, the keys down to
    it), dtype, shape and bytes, in sorted key order, so the digest depends on the values only, never on
    the order of a dict or on the zip archive around them. The optimizer state (momentum buffers, step
    counts) is covered too: a resumed run continues from it, so a corrupted buffer would silently change
    the rest of the training. Config, history and specs are not (they are numbers and strings the
    loader checks as it reads them).
    """
    h = hashlib.sha256()
    for part in _COVERED:
        for where, t in _tensors(payload.get(part), (part,)):
            name = "/".join(str(k) if isinstance(k, str) else repr(k) for k in where).encode()
            data = _tensor_bytes(t)
            h.update(f"{len(name)}:".encode() + name + f"|{t.dtype}|{tuple(t.shape)}|{data.numel()}\n".encode())
            h.update(data.numpy())
    return h.hexdigest()


def save_checkpoint(path: str | Path, *, model: nn.Module, model_spec: ModelSpec, data_spec: DataSpec,
                    config: dict | None = None, epoch: int = 0, step: int = 0,
                    history: list | None = None, optimizer: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a toolkit checkpoint atomically (temporary file, then rename), with its tensors' checksum.

    Raises:
        SharpnessError: the file cannot be written (``"<path>: cannot write: <reason>"``, e.g. a full
            disk); no partial or temporary file is left.
    """
    payload = {
        "format": FORMAT, "version": VERSION,
        "model": model_spec.to_dict(), "data": data_spec.to_dict(), "config": config or {},
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "epoch": int(epoch), "step": int(step), "history": list(history or []),
        "optimizer": optimizer, "torch": str(torch.__version__), "extra": extra or {},
    }
    payload["checksum"] = {"algorithm": CHECKSUM, "tensors": tensor_checksum(payload), "covers": list(_COVERED)}

    def write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: a failed write surfaces as the OSError it is
            torch.save(payload, f)

    return atomic_write(path, write)


def _fitted(state_dict: dict, expected: set) -> dict:
    """The weights as they fit a model with keys ``expected``: as given, or stripped of one common prefix.

    Lightning saves ``model.``-prefixed keys, DDP ``module.``, ``torch.compile`` ``_orig_mod.``.
    """
    if set(state_dict) == expected or not all("." in k for k in state_dict):
        return state_dict
    heads = {k.split(".", 1)[0] for k in state_dict}
    if len(heads) == 1:
        stripped = {k.split(".", 1)[1]: v for k, v in state_dict.items()}
        if set(stripped) == expected:
            return stripped
    return state_dict


class Checkpoint:
    """A loaded checkpoint: specs, config, history and weights; rebuilds the model and its data.

    ``model_trusted`` / ``data_trusted`` say whether the specs came from the caller (True) or from the
    file (False: a ``"pkg.module:fn"`` must then be the user's own code, see :mod:`sharpness.specs`, and a
    data ``root`` must lie inside ``$SHARPNESS_DATA``, see :mod:`sharpness.data`). ``data_caller_args``,
    when not None, names the only data arguments that came from the caller (the others came from the
    file: a ``root`` among them is held to ``$SHARPNESS_DATA`` even when the caller named the data set).
    """

    def __init__(self, path: Path | None, state_dict: dict, *, model_spec: ModelSpec | None = None,
                 data_spec: DataSpec | None = None, config: dict | None = None, epoch: int | None = None,
                 step: int | None = None, history: list | None = None, optimizer: dict | None = None,
                 extra: dict | None = None, model_factory: Callable[..., nn.Module] | None = None,
                 model_trusted: bool = False, data_trusted: bool = False, data_caller_args: tuple | None = None):
        self.path = path  # None: a module in memory (from_module)
        self.state_dict = state_dict
        self.model_spec = model_spec
        self.data_spec = data_spec
        self.config = config or {}
        self.epoch = epoch
        self.step = step
        self.history = history or []
        self.optimizer = optimizer
        self.extra = extra or {}
        self._model_factory = model_factory  # a _Factory (the caller's factory or module), or any () → module
        self._model_trusted = model_trusted
        self._data_trusted = data_trusted
        self._data_caller_args = None if data_caller_args is None else tuple(data_caller_args)
        self._sha256: str | None = None

    @classmethod
    def from_module(cls, model: nn.Module, *, data: DataSpec | str | dict | None = None,
                    data_args: dict | None = None) -> "Checkpoint":
        """A module in memory as a checkpoint: path None, weights its state_dict (views, not copies).

        ``data`` / ``data_args`` name its data set as in :func:`load_checkpoint` (None: :meth:`datasets`
        has none to give; data in memory go to ``analyze`` itself).

        :meth:`model` returns a deep copy of ``model`` (never the module itself); :attr:`sha256` is the
        :func:`tensor_checksum` of its state_dict. Build it when it is used: later changes to the module's
        weights show through its state_dict.

        Raises:
            SharpnessError: ``model`` is not an ``nn.Module``; weights that are not dense real tensors.
        """
        if not isinstance(model, nn.Module):
            raise SharpnessError(f"expected an nn.Module (got {type(model).__name__})")
        state_dict = {k: v.detach() for k, v in model.state_dict().items()}
        where = "the model in memory"
        _check_weights(where, state_dict)
        _check_finite(where, state_dict)
        factory, _, _ = _model_choice(model, None, None)
        data_spec, _, _ = _data_choice(data, data_args, None)
        return cls(None, state_dict, data_spec=data_spec, model_factory=factory, model_trusted=True,
                   data_trusted=True)

    @property
    def where(self) -> str:
        """The file, or "the model in memory": how messages name this checkpoint."""
        return str(self.path) if self.path is not None else "the model in memory"

    @property
    def source(self) -> str:
        """``"file"`` or ``"memory"``."""
        return "file" if self.path is not None else "memory"

    @property
    def sha256(self) -> str:
        """SHA-256 identifying the weights in reports: of the file's bytes, or (in memory) :func:`tensor_checksum`."""
        if self._sha256 is None and self.path is None:
            self._sha256 = tensor_checksum({"state_dict": self.state_dict})
        if self._sha256 is None:
            h = hashlib.sha256()
            try:  # the file it was loaded from; replaced since by a FIFO, it must not hang the reader
                fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            except OSError as e:
                raise SharpnessError(f"{printable(self.path)}: {_os_reason(self.path, e)}") from None
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise SharpnessError(f"{printable(self.path)}: not a regular file (a pipe, socket or device)")
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._sha256 = h.hexdigest()
        return self._sha256

    @property
    @_one_line
    def loss_spec(self) -> Spec | None:
        """The loss the run trained with (``config["loss"]``, ``config["loss_args"]``), or None if unnamed.

        Raises:
            SharpnessError: the config's loss is malformed.
        """
        if not isinstance(self.config, dict):
            raise SharpnessError(f"{self.where}: malformed checkpoint config (a {type(self.config).__name__}, "
                                 "not a dict)")
        if self.config.get("loss") is None:
            return None
        try:
            return Spec.from_dict({"name": self.config["loss"], "args": self.config.get("loss_args")})
        except SharpnessError as e:
            raise SharpnessError(f"{self.where}: malformed loss in the checkpoint's config: {e}") from None

    @_one_line
    def model(self, device: str | torch.device | None = None, *, data: tuple | None = None) -> nn.Module:
        """The model with the saved weights, in eval mode, on ``device`` (default CPU).

        Args:
            device: where the model goes.
            data: the ``(train, test)`` the model will see (test may be None): a factory or name that takes
                ``input_shape`` / ``num_classes`` and was not given them gets them from these, as the
                trainer fills them (:func:`sharpness.data.input_shape`, :func:`sharpness.data.num_classes`).

        Raises:
            SharpnessError: the model cannot be built (unknown or refused name, bad arguments), the
                weights do not fit it, or ``device`` is not the CPU or an available CUDA device (``meta``,
                ``mps``, a missing ``cuda:N``: one line, before anything is built).
        """
        device = check_device(device, f"{self.where}: device")
        try:
            if isinstance(self._model_factory, _Factory):
                model = self._model_factory(data)
                what = type(model).__name__
            elif self._model_factory is not None:
                model = self._model_factory()
                what = type(model).__name__
            elif self.model_spec is not None:
                spec = self.model_spec
                if data is not None and any(k not in spec.args for k in _DATA_ARGS):
                    fn = MODELS.resolve(spec.name, trusted=self._model_trusted)
                    spec = Spec(spec.name, {**_data_model_args(spec.args, data, fn), **spec.args})
                model = build_model(spec, trusted=self._model_trusted)
                what = f"model '{printable(self.model_spec.name, 200)}'"
            else:
                raise SharpnessError("a bare state_dict; pass the model it belongs to "
                                     "(--model pkg.module:factory; model= in load_checkpoint and analyze)")
        except SharpnessError as e:
            raise SharpnessError(f"{self.where}: {e}") from e.__cause__  # a user factory's own error stays chained
        expected = model.state_dict()
        weights = _fitted(self.state_dict, set(expected))
        for name, t in weights.items():  # load_state_dict would cast int8/bool weights silently
            if name in expected and expected[name].is_floating_point() and isinstance(t, torch.Tensor) \
                    and not t.is_floating_point():
                raise SharpnessError(f"{self.where}: weight '{name}' has dtype {t.dtype}: only real floating-point "
                                     f"weights are analyzed ({what} holds it as {expected[name].dtype})")
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())
            raise SharpnessError(f"{self.where}: weights do not fit {what}: {detail[:300]}") from None
        try:
            return model.to(device).eval()
        except RuntimeError as e:  # a CUDA device out of memory, or one that failed
            raise SharpnessError(f"{self.where}: cannot move the model to {device}: "
                                 f"{' '.join(str(e).split())[:300]}") from None

    @_one_line
    def datasets(self) -> tuple:
        """The (train, test) data the run used, rebuilt from the data spec (see :func:`load_data`).

        Raises:
            SharpnessError: no data spec; the data cannot be loaded; or the file's data spec names a
                ``root`` outside ``$SHARPNESS_DATA`` (pass ``data_args={"root": ...}`` to read it).
        """
        if self.data_spec is None:
            raise SharpnessError(f"{self.where}: the checkpoint names no data set; pass it "
                                 "(--data NAME|pkg.module:fn; data= in load_checkpoint and analyze)")
        try:
            return load_data(self.data_spec, trusted=self._data_trusted, trusted_args=self._data_caller_args)
        except SharpnessError as e:
            raise SharpnessError(f"{self.where}: {e}") from e.__cause__  # a user function's own error stays chained

    def __repr__(self) -> str:
        name = printable(self.model_spec.name, 200) if self.model_spec else "user model"
        where = repr(str(self.path)) if self.path is not None else "<memory>"
        return f"Checkpoint({where}, model={name}, epoch={self.epoch}, step={self.step})"


def _is_safetensors(path: Path, head: bytes) -> bool:
    # The format: an 8-byte little-endian header length, then the JSON header. Its first byte may be
    # 0x80, like a pickle's, so the content is checked before the pickle test; the name says it too.
    fits = len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") + 8 <= path.stat().st_size
    return fits or (path.suffix == ".safetensors" and head[:4] != b"PK\x03\x04")


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise SharpnessError(f"{path}: reading .safetensors needs the safetensors package "
                             "(pip install safetensors)") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types for a bad header or short file
        reason = " ".join(str(e).split())[:200]
        raise SharpnessError(f"{path}: truncated or corrupt safetensors file ({reason})") from None


def _os_reason(path: Path, e: OSError) -> str:
    """Why ``path`` cannot be opened, in words that name the actual problem."""
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOENT:
        if os.path.islink(path):
            return f"no such file (a symbolic link to '{os.readlink(path)}', which does not exist)"
        return "no such file"
    if e.errno == errno.ENOTDIR:
        return "no such file (a part of its path is a file, not a folder)"
    return f"cannot read: {e.strerror or type(e).__name__}"


def _torch_zip_problem(path: Path) -> str | None:
    """What keeps a zip archive from being a torch checkpoint (None when it looks like one)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError):  # no central directory: cut short
        return "truncated or corrupt checkpoint (an incomplete zip archive)"
    if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"not a PyTorch checkpoint (a zip archive without a data.pkl record; it holds: {shown or 'nothing'})"
    return None


def _read(path: Path) -> Any:
    try:
        st = os.stat(path)
    except OSError as e:
        raise SharpnessError(f"{path}: {_os_reason(path, e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise SharpnessError(f"{path}: is a folder, not a checkpoint file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise SharpnessError(f"{path}: not a regular file (a pipe, socket or device)")
    if st.st_size == 0:
        raise SharpnessError(f"{path}: empty file")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise SharpnessError(f"{path}: {_os_reason(path, e)}") from None
    if _is_safetensors(path, head):
        return _read_safetensors(path)
    # torch.save writes a zip archive (or, in the legacy format, a pickle starting with PROTO 0x80).
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
        raise SharpnessError(f"{path}: not a PyTorch checkpoint")
    if head[:4] == b"PK\x03\x04":
        problem = _torch_zip_problem(path)
        if problem:
            raise SharpnessError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():  # torch's notes on legacy pickles would add lines to a one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or "global" in str(e):  # a class or function the pickle would import and call
            raise SharpnessError(f"{path}: refused: it holds Python objects that could run code "
                                 "(checkpoints are loaded with weights_only=True)") from None
        if "truncated" in str(e):
            raise SharpnessError(f"{path}: truncated or corrupt checkpoint (the pickle ends early)") from None
        raise SharpnessError(f"{path}: not a PyTorch checkpoint (unreadable pickle)") from None
    except PermissionError:
        raise SharpnessError(f"{path}: permission denied") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as e:
        if zipfile.is_zipfile(path) or "zip" in str(e).lower() or isinstance(e, EOFError):
            raise SharpnessError(f"{path}: truncated or corrupt checkpoint") from None
        raise SharpnessError(f"{path}: not a PyTorch checkpoint") from None
    except Exception:
        raise SharpnessError(f"{path}: not a PyTorch checkpoint") from None


def _bare_state_dict(obj: Any) -> dict | None:
    """The weights of a file that is not a toolkit checkpoint: the dict itself, or the one it wraps."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict) and obj[key] and all(
                    isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj[key].items()):
                return obj[key]
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def _wrapper_counts(obj: Any, state_dict: dict) -> tuple[int | None, int | None]:
    """(epoch, step) that a wrapper around the weights records at its top level.

    Lightning: ``epoch``, ``global_step``; other scripts: ``step``. None where it records none, or not an
    integer in [0, 10**9].
    """
    if obj is state_dict or not isinstance(obj, dict):
        return None, None
    epoch = obj.get("epoch")
    step = obj.get("global_step", obj.get("step"))
    return (epoch if _is_count(epoch) else None), (step if _is_count(step) else None)


# The dtypes a weight may have: real floating point (analyzed), and integer or bool (buffers such as
# BN's num_batches_tracked; refused where the model holds a floating-point tensor, see Checkpoint.model).
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTEGERS = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) + tuple(
    getattr(torch, n) for n in ("uint16", "uint32", "uint64") if isinstance(getattr(torch, n, None), torch.dtype))
# A tensor stored as a view repeating fewer bytes (torch.expand: stride 0) may not become larger than this
# once materialized (the checksum and the model read it densely); the toolkit never writes one.
_EXPAND_LIMIT = 1 << 26


def _shown(name: str, limit: int = 120) -> str:
    """A weight name on one line (escapes shown as such), cut to ``limit`` characters."""
    text = repr(name)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_tensor(path: Path, what: str, t: torch.Tensor) -> None:
    """Refuse a tensor that cannot be read densely: a meta one (no data), a sparse layout, an expanded view."""
    if t.device.type not in ("cpu", "cuda"):  # a file is loaded to the CPU: a meta (data-less) tensor stays meta
        raise SharpnessError(f"{path}: {what} is a {t.device.type} tensor, which holds no values to read "
                             "(weights are real data, on the CPU or a CUDA GPU)")
    if t.layout != torch.strided:
        raise SharpnessError(f"{path}: {what} has the {str(t.layout).removeprefix('torch.')} layout: only dense "
                             "tensors are read")
    dense = math.prod(t.shape) * t.element_size()
    try:
        stored = t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):  # quantized or other storage-less tensors
        stored = 0
    if dense > max(stored, _EXPAND_LIMIT):
        raise SharpnessError(f"{path}: {what} of shape {tuple(t.shape)} would take {dense:.3g} bytes, but the file "
                             f"holds {stored} bytes of it (a view expanded beyond its data): refused")


def _check_weights(path: Path, state_dict: Any) -> None:
    """The weights are a dict of dense real tensors by string name (NaN/Inf are checked separately)."""
    if not isinstance(state_dict, dict):
        raise SharpnessError(f"{path}: malformed sharpness checkpoint (state_dict is a "
                             f"{type(state_dict).__name__}, not a dict)")
    for name, t in state_dict.items():
        if not isinstance(name, str):
            raise SharpnessError(f"{path}: malformed state_dict (the key {_short(name)}, of type "
                                 f"{type(name).__name__}, is not a weight name)")
        if not isinstance(t, torch.Tensor):
            raise SharpnessError(f"{path}: weight '{_shown(name)}' is {_short(t)} (of type {type(t).__name__}), "
                                 "not a tensor")
        _check_tensor(path, f"weight '{_shown(name)}'", t)
        if t.dtype not in _FLOATS and t.dtype not in _INTEGERS:
            raise SharpnessError(f"{path}: weight '{_shown(name)}' has dtype {t.dtype}: only real "
                                 "floating-point weights are analyzed")


def _check_finite(path: Path, state_dict: dict) -> None:
    for name, t in state_dict.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SharpnessError(f"{path}: weight '{_shown(name)}' contains NaN or Inf")


def _as_set(data: Any) -> Any:
    """In-memory tensors ``(X, y, ...)`` as a TensorDataset, for the data helpers; other data as given."""
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        try:
            return TensorDataset(*data)
        except (AssertionError, ValueError):  # tensors of different lengths: not examples
            return None
    return data if isinstance(data, (Dataset, DataLoader)) else None


def _data_model_args(given: dict, data: tuple | None, fn: Callable) -> dict:
    """``input_shape`` / ``num_classes`` from ``data = (train, test)`` for a factory ``fn`` that takes them.

    Only the ones ``given`` lacks, and only what the data can tell (regression targets: no classes; a
    data set whose inputs are not tensors: no shape): the trainer's rule, so a bare state_dict analyzed
    with ``--model mlp --data mnist1d`` is built as ``train --model mlp --dataset mnist1d`` built it.
    """
    wanted = [k for k in _DATA_ARGS if k not in given and _takes(fn, k)] if data is not None else []
    if not wanted:
        return {}
    train, test = (_as_set(d) for d in data)
    if train is None:
        return {}
    return {k: v for k, v in model_args_from_data(train, test, strict=False).items() if k in wanted}


class _Factory:
    """The caller's model: a factory with its arguments (the data fill in what it lacks), or a module (copied)."""

    def __init__(self, fn: Callable | None = None, args: dict | None = None, module: nn.Module | None = None):
        self.fn, self.args, self.module = fn, dict(args or {}), module

    def __call__(self, data: tuple | None = None) -> nn.Module:
        if self.module is not None:
            return copy.deepcopy(self.module)  # the caller's module is never modified
        return build_model(self.fn, **{**_data_model_args(self.args, data, self.fn), **self.args})


def _model_choice(model: Any, model_args: dict | None, stored: Spec | None
                  ) -> tuple[_Factory | None, Spec | None, bool]:
    """(factory, spec, trusted) of the model to build: the caller's, else the stored spec's."""
    if model_args is not None and not isinstance(model_args, dict):
        raise SharpnessError(f"model_args must be a dict (got {type(model_args).__name__})")
    if model is None:
        if stored is None or not model_args:
            return None, stored, False
        return None, Spec(stored.name, {**stored.args, **model_args}), False  # the name is still the file's
    if isinstance(model, nn.Module):
        if model_args:
            raise SharpnessError("model_args given, but model is a module instance, not a factory")
        return _Factory(module=model), stored, True
    if not isinstance(model, str) and not callable(model):
        raise SharpnessError(f"model must be an nn.Module, a factory, a registered name or 'pkg.module:fn' "
                             f"(got {type(model).__name__})")
    # The stored arguments go to the same factory; another one gets only what the data fixed.
    same = stored is not None and model == stored.name
    base = stored.args if same else {k: v for k, v in (stored.args if stored else {}).items() if k in _DATA_ARGS}
    args = {**base, **(model_args or {})}
    if isinstance(model, str):
        return None, Spec(model, args), True
    return _Factory(model, args), stored, True


def _data_choice(data: Any, data_args: dict | None, stored: Spec | None
                 ) -> tuple[Spec | None, bool, tuple | None]:
    """(spec, trusted, caller's argument names) of the data to load: the caller's, else the stored spec's.

    The third item is None when every argument is as trusted as the spec; else the names of the
    arguments the caller gave, laid over the stored ones (a ``root`` given there may be read anywhere;
    one from the file must lie inside ``$SHARPNESS_DATA``).
    """
    if data_args is not None and not isinstance(data_args, dict):
        raise SharpnessError(f"data_args must be a dict (got {type(data_args).__name__})")
    if data is None:
        if stored is None or not data_args:
            return stored, False, None
        return Spec(stored.name, {**stored.args, **data_args}), False, tuple(data_args)
    if isinstance(data, str) and stored is not None and data == stored.name:  # the name is the caller's
        return Spec(data, {**stored.args, **(data_args or {})}), True, tuple(data_args or ())
    return as_spec(data, data_args, "data"), True, None


def _stored_spec(path: Path, obj: dict, key: str) -> Spec:
    try:
        spec = Spec.from_dict(obj[key])
        root = spec.args.get("root") if key == "data" else None
        if root is not None:  # shown by info, resolved by the loader: a path string without NUL
            if not isinstance(root, str):
                raise SharpnessError(f"data set '{spec.name}': the checkpoint's data root {_short(root)} is not a path")
            valid_root(spec.name, root)
        return spec
    except SharpnessError as e:
        raise SharpnessError(f"{path}: malformed '{key}' spec in the checkpoint: {e}") from None


def _check_version(path: Path, obj: dict) -> None:
    if "version" not in obj:
        raise SharpnessError(f"{path}: malformed sharpness checkpoint (no format version); "
                             f"this toolkit reads version {VERSION}")
    v = obj["version"]
    if type(v) is not int:  # "1" or True would compare equal or look equal to 1: not a version we wrote
        raise SharpnessError(f"{path}: unsupported checkpoint format version {_short(v)} (a {type(v).__name__}, "
                             f"not an integer); this toolkit reads the integer version {VERSION}")
    if v != VERSION:
        raise SharpnessError(f"{path}: unsupported checkpoint format version {v}; this toolkit reads version {VERSION}")


def _verify_checksum(path: Path, obj: dict) -> None:
    """Compare the stored checksum of the tensors with theirs (a checkpoint without one is older: accepted)."""
    if "checksum" not in obj:
        return
    c = obj["checksum"]
    if not isinstance(c, dict) or not isinstance(c.get("tensors"), str):
        raise SharpnessError(f"{path}: malformed sharpness checkpoint (checksum is {_short(c)}, expected "
                             "{'algorithm': 'sha256', 'tensors': <hex>})")
    if c.get("algorithm") != CHECKSUM:
        raise SharpnessError(f"{path}: unsupported checksum algorithm {_short(c.get('algorithm'))}; "
                             f"this toolkit reads '{CHECKSUM}'")
    actual = tensor_checksum(obj)
    if actual != c["tensors"].lower():
        recorded = "".join(ch for ch in c["tensors"][:16] if ch.isalnum())  # printable, whatever was stored
        raise SharpnessError(f"{path}: checksum mismatch: the file was modified or corrupted (its tensors hash "
                             f"to sha256 {actual[:16]}..., the file records {recorded}...)")


_MAX_COUNT = 10**9  # epochs and update counts a checkpoint may record
# Per-epoch history records: the keys the trainer writes and reads back, with their kinds.
_HISTORY_INTS = ("epoch", "step", "examples", "batch_size")
_HISTORY_NUMBERS = ("wall_time", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "dist_from_init")
_RESUMED = ("epoch", "examples", "wall_time", "train_loss")  # what a resumed run reads of the last record


def _is_count(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _MAX_COUNT


def _str_keys(d: Any) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) for k in d)


def _check_structure(path: Path, obj: dict) -> None:
    """The parts of a toolkit checkpoint besides its specs have the types the toolkit writes.

    ``config``, ``extra``: dicts with string keys; ``epoch``, ``step``: integers in [0, 10**9];
    ``history``: a list of per-epoch dicts (their known keys of the right kind); ``optimizer``: None or a
    torch optimizer state dict; ``state_dict``: dense real tensors by name. A resumed run reads them back,
    so a tampered ``last.pt`` is refused here in one line.
    """
    def bad(key: str, value: Any, expected: str) -> SharpnessError:
        return SharpnessError(f"{path}: malformed sharpness checkpoint ('{key}' is {_short(value)}, "
                              f"expected {expected})")

    missing = [k for k in ("state_dict", "model", "data") if k not in obj]
    if missing:  # said as such: not a checksum mismatch over the weights that are not there
        raise SharpnessError(f"{path}: malformed sharpness checkpoint (missing {', '.join(map(repr, missing))}: "
                             f"{'no weights' if 'state_dict' in missing else 'the model or data spec is not there'})")

    for key in ("config", "extra"):
        if obj.get(key) is not None and not _str_keys(obj[key]):
            raise bad(key, obj[key], "a dict with string keys")
    for key in ("epoch", "step"):
        if obj.get(key) is not None and not _is_count(obj[key]):
            raise bad(key, obj[key], f"an integer in [0, {_MAX_COUNT}]")
    history = obj.get("history")
    if history is not None:
        if not isinstance(history, list):
            raise bad("history", history, "a list of per-epoch dicts")
        for i, entry in enumerate(history):
            if not _str_keys(entry):
                raise bad(f"history[{i}]", entry, "a dict with string keys")
            for k in _HISTORY_INTS:
                if entry.get(k) is not None and not _is_count(entry[k]):
                    raise bad(f"history[{i}].{k}", entry[k], f"an integer in [0, {_MAX_COUNT}]")
            for k in _HISTORY_NUMBERS:
                if entry.get(k) is not None and not is_number(entry[k]):
                    raise bad(f"history[{i}].{k}", entry[k], "a number")
    optimizer = obj.get("optimizer")
    if optimizer is not None:
        groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
        if not (_str_keys(optimizer) and isinstance(optimizer.get("state"), dict) and isinstance(groups, list)
                and all(_str_keys(g) and isinstance(g.get("params"), list) for g in groups)):
            raise bad("optimizer", optimizer, "None or a torch optimizer state dict {'state': ..., "
                      "'param_groups': [...]}")
        # A resume state (last.pt): the trainer continues from its last epoch's record.
        if history and not all(k in history[-1] for k in _RESUMED):
            raise bad(f"history[{len(history) - 1}]", history[-1], f"a per-epoch record with "
                      f"{', '.join(_RESUMED)} (a resume state holds the trainer's records)")
    extra = obj.get("extra") or {}
    if extra.get("trace") is not None and not (isinstance(extra["trace"], list)
                                               and all(_str_keys(e) for e in extra["trace"])):
        raise bad("extra.trace", extra["trace"], "a list of dicts")
    _check_weights(path, obj["state_dict"])
    for where, t in _tensors(obj.get("optimizer"), ("optimizer",)):
        _check_tensor(path, f"optimizer tensor '{_shown('/'.join(map(str, where)))}'", t)
    for key in sorted((k for k in obj if k not in ("state_dict", "optimizer")), key=repr):  # extra, history, ...
        for where, t in _tensors(obj[key], (key,)):
            _check_tensor(path, f"tensor '{_shown('/'.join(map(str, where)))}'", t)


@_one_line
def load_checkpoint(path: str | Path, *, model: nn.Module | Callable[..., nn.Module] | str | None = None,
                    model_args: dict | None = None, data: DataSpec | str | dict | None = None,
                    data_args: dict | None = None) -> Checkpoint:
    """Load a checkpoint safely (``torch.load(weights_only=True)``: a file can never run code).

    Args:
        path: a toolkit checkpoint; or, with ``model``, a bare ``state_dict`` ``.pt`` file, one wrapped as
            ``{"state_dict": ...}`` / ``{"model": ...}``, or a ``.safetensors`` file.
        model: the model to load the weights into, instead of (or, for other files, in the absence of)
            the stored spec's: an ``nn.Module`` (copied, never modified), a factory, a registered name or
            ``"pkg.module:factory"`` (imported as given: the caller named it).
        model_args: arguments for a ``model`` factory or name. For a toolkit checkpoint they are laid over
            the stored arguments when ``model`` is None or the stored name; another factory gets only the
            stored ``input_shape`` and ``num_classes`` (and only if it takes them).
        data: a data set name, ``"pkg.module:fn"``, dict or Spec to use instead of (or, for other files, in
            the absence of) the stored one.
        data_args: arguments for ``data``; laid over the stored arguments when ``data`` is None or the
            stored name (e.g. ``data_args={"root": ...}`` for a CIFAR-10 folder elsewhere).

    Raises:
        SharpnessError: missing, unreadable (permission, symbolic link loop), empty, truncated or foreign
            file; a pickle that would run code; an unknown format version; tensors that do not match the
            stored checksum (``"<path>: checksum mismatch: the file was modified or corrupted (...)"``);
            a malformed spec; contents of the wrong kind (``config``/``extra`` not dicts, ``epoch``/``step`` not
            integers in [0, 10**9], ``history`` not a list of per-epoch dicts, ``optimizer`` neither None nor
            an optimizer state dict: a tampered resume state is refused here); weights that are not dense
            real tensors by string name (float8, complex, quantized, sparse, or a view expanded beyond the
            data the file holds: refused before anything reads it densely); NaN/Inf weights; other weights
            without ``model``. Integer weights load (buffers); :meth:`Checkpoint.model` refuses them where
            the model holds a floating-point tensor.
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise SharpnessError(f"load_checkpoint: path must be a file path, a str or pathlib.Path (got {_short(path)}, "
                             f"of type {type(path).__name__})")
    try:
        path = Path(path)
    except TypeError:  # an os.PathLike whose __fspath__ gives bytes or nothing
        raise SharpnessError(f"load_checkpoint: path must be a file path (got {_short(path)})") from None
    if not str(path) or str(path) == "." or "\0" in str(path):
        raise SharpnessError(f"load_checkpoint: path must name a checkpoint file (got {_short(str(path))})")
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        _check_version(path, obj)
        _check_structure(path, obj)  # before the checksum, which reads every tensor densely
        _verify_checksum(path, obj)
        try:
            stored_model, stored_data = _stored_spec(path, obj, "model"), _stored_spec(path, obj, "data")
            factory, model_spec, model_trusted = _model_choice(model, model_args, stored_model)
            data_spec, data_trusted, caller_args = _data_choice(data, data_args, stored_data)
            ckpt = Checkpoint(path, obj["state_dict"], model_spec=model_spec, data_spec=data_spec,
                              config=obj.get("config"), epoch=obj.get("epoch"), step=obj.get("step"),
                              history=obj.get("history"), optimizer=obj.get("optimizer"),
                              extra=obj.get("extra"), model_factory=factory, model_trusted=model_trusted,
                              data_trusted=data_trusted, data_caller_args=caller_args)
        except KeyError as e:
            raise SharpnessError(f"{path}: malformed sharpness checkpoint (missing {e})") from None
    else:
        state_dict = _bare_state_dict(obj)
        if state_dict is None:
            raise SharpnessError(f"{path}: not a model checkpoint (no state_dict of tensors inside)")
        _check_weights(path, state_dict)
        if model is None:
            raise SharpnessError(f"{path}: a bare state_dict; pass the model it belongs to "
                                 "(--model pkg.module:factory; model= in load_checkpoint and analyze)")
        factory, model_spec, _ = _model_choice(model, model_args, None)
        data_spec, _, _ = _data_choice(data, data_args, None)
        epoch, step = _wrapper_counts(obj, state_dict)
        ckpt = Checkpoint(path, state_dict, model_spec=model_spec, data_spec=data_spec, model_factory=factory,
                          model_trusted=True, data_trusted=True, epoch=epoch, step=step)
    _check_finite(path, ckpt.state_dict)
    return ckpt
