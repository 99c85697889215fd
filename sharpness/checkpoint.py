"""The checkpoint format: saved atomically, loaded with ``torch.load(weights_only=True)`` only.

A toolkit checkpoint is a plain dict (tensors, numbers, strings, lists, dicts; nothing that unpickles
to code) holding::

    format="sharpness-checkpoint", version, model (ModelSpec dict), data (DataSpec dict), config,
    state_dict, epoch, step, history (list of per-epoch dicts), optimizer (state dict or None), torch

so :func:`load_checkpoint` rebuilds the model and the exact data without the training code. A user's
own bare ``state_dict`` file loads too when the caller supplies the model.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .data import DataSpec, load_data
from .errors import SharpnessError
from .io import atomic_write
from .models import ModelSpec, build_model

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint", "FORMAT", "VERSION"]

FORMAT = "sharpness-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, *, model: nn.Module, model_spec: ModelSpec, data_spec: DataSpec,
                    config: dict | None = None, epoch: int = 0, step: int = 0,
                    history: list | None = None, optimizer: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a toolkit checkpoint atomically (temporary file, then rename)."""
    payload = {
        "format": FORMAT, "version": VERSION,
        "model": model_spec.to_dict(), "data": data_spec.to_dict(), "config": config or {},
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "epoch": int(epoch), "step": int(step), "history": list(history or []),
        "optimizer": optimizer, "torch": str(torch.__version__), "extra": extra or {},
    }
    return atomic_write(path, lambda p: torch.save(payload, p))


class Checkpoint:
    """A loaded checkpoint: specs, config, history and weights; rebuilds the model and its data."""

    def __init__(self, path: Path, state_dict: dict, *, model_spec: ModelSpec | None = None,
                 data_spec: DataSpec | None = None, config: dict | None = None, epoch: int | None = None,
                 step: int | None = None, history: list | None = None, optimizer: dict | None = None,
                 extra: dict | None = None, model_factory: Callable[[], nn.Module] | None = None):
        self.path = path
        self.state_dict = state_dict
        self.model_spec = model_spec
        self.data_spec = data_spec
        self.config = config or {}
        self.epoch = epoch
        self.step = step
        self.history = history or []
        self.optimizer = optimizer
        self.extra = extra or {}
        self._model_factory = model_factory
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """SHA-256 of the checkpoint file's bytes (identifies it in reports)."""
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._sha256 = h.hexdigest()
        return self._sha256

    def model(self, device: str | torch.device | None = None) -> nn.Module:
        """The model with the saved weights, in eval mode, on ``device`` (default CPU).

        Raises:
            SharpnessError: the weights do not fit the model.
        """
        if self._model_factory is not None:
            model = self._model_factory()
            what = type(model).__name__
        elif self.model_spec is not None:
            model = build_model(self.model_spec)
            what = f"model '{self.model_spec.name}'"
        else:
            raise SharpnessError(f"{self.path}: a bare state_dict; pass model=... to load_checkpoint")
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())
            raise SharpnessError(f"{self.path}: weights do not fit {what}: {detail[:300]}") from None
        return model.to(device or "cpu").eval()

    def datasets(self) -> tuple:
        """The (train, test) data the run used, rebuilt from the stored data spec."""
        if self.data_spec is None:
            raise SharpnessError(f"{self.path}: the checkpoint names no data set; pass data=... "
                                 "to load_checkpoint")
        return load_data(self.data_spec)

    def __repr__(self) -> str:
        name = self.model_spec.name if self.model_spec else "user model"
        return f"Checkpoint({str(self.path)!r}, model={name}, epoch={self.epoch}, step={self.step})"


def _read(path: Path) -> Any:
    if not path.exists():
        raise SharpnessError(f"{path}: no such file")
    if path.is_dir():
        raise SharpnessError(f"{path}: is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise SharpnessError(f"{path}: empty file")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (or, in the legacy format, a pickle starting with PROTO 0x80).
    if head != b"PK\x03\x04" and head[:1] != b"\x80":
        raise SharpnessError(f"{path}: not a PyTorch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or "global" in str(e):  # a class or function the pickle would import and call
            raise SharpnessError(f"{path}: refused: it holds Python objects that could run code "
                                 "(checkpoints are loaded with weights_only=True)") from None
        raise SharpnessError(f"{path}: not a PyTorch checkpoint (unreadable pickle)") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as e:
        if zipfile.is_zipfile(path) or "zip" in str(e).lower() or isinstance(e, EOFError):
            raise SharpnessError(f"{path}: truncated or corrupt checkpoint") from None
        raise SharpnessError(f"{path}: not a PyTorch checkpoint") from None
    except Exception:
        raise SharpnessError(f"{path}: not a PyTorch checkpoint") from None


def _bare_state_dict(obj: Any) -> dict | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict) and obj[key] and all(
                    isinstance(v, torch.Tensor) for v in obj[key].values()):
                return obj[key]
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    return None


def _check_finite(path: Path, state_dict: dict) -> None:
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise SharpnessError(f"{path}: weight '{name}' contains NaN or Inf")


def load_checkpoint(path: str | Path, *, model: nn.Module | Callable[[], nn.Module] | None = None,
                    data: DataSpec | str | dict | None = None) -> Checkpoint:
    """Load a checkpoint safely (``torch.load(weights_only=True)``: a file can never run code).

    Args:
        path: a toolkit checkpoint, or a bare ``state_dict`` file (then ``model`` is required).
        model: for a bare ``state_dict``, the module to load into (copied, never modified) or a
            zero-argument factory returning one.
        data: a data spec to use instead of (or, for a bare ``state_dict``, in the absence of) the
            stored one.

    Raises:
        SharpnessError: missing, empty, truncated or foreign file; a pickle that would run code;
            an unknown format version; NaN/Inf weights; a bare state_dict without ``model``.
    """
    path = Path(path)
    obj = _read(path)
    data_spec = None
    if data is not None:
        data_spec = DataSpec.from_dict(data) if isinstance(data, dict) else (
            DataSpec(data) if isinstance(data, str) else data)
    factory = None
    if model is not None:
        factory = (lambda: copy.deepcopy(model)) if isinstance(model, nn.Module) else model

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise SharpnessError(f"{path}: checkpoint format version {obj.get('version')} is not "
                                 f"supported (this toolkit reads version {VERSION})")
        try:
            ckpt = Checkpoint(path, obj["state_dict"], model_spec=ModelSpec.from_dict(obj["model"]),
                              data_spec=data_spec or DataSpec.from_dict(obj["data"]),
                              config=obj.get("config"), epoch=obj.get("epoch"), step=obj.get("step"),
                              history=obj.get("history"), optimizer=obj.get("optimizer"),
                              extra=obj.get("extra"), model_factory=factory)
        except (KeyError, TypeError) as e:
            raise SharpnessError(f"{path}: malformed sharpness checkpoint (missing {e})") from None
    else:
        state_dict = _bare_state_dict(obj)
        if state_dict is None:
            raise SharpnessError(f"{path}: not a model checkpoint (no state_dict of tensors inside)")
        if factory is None:
            raise SharpnessError(f"{path}: a bare state_dict; pass the model it belongs to "
                                 "(model=... here, --model pkg.module:factory on the command line)")
        ckpt = Checkpoint(path, state_dict, data_spec=data_spec, model_factory=factory)
    _check_finite(path, ckpt.state_dict)
    return ckpt
