"""The training loop: SB/LB runs with checkpoints, per-epoch history, and exact resume.

A run folder holds ``init.pt``, ``ckpt_epochN.pt`` every ``save_every`` epochs, ``ckpt_stepS.pt`` at
chosen update counts, ``last.pt`` (the resume state, rewritten every epoch), ``final.pt``,
``history.json`` and a ``done`` marker (every one written atomically: a symlink placed there is replaced,
never written through), and ``.lock``, held while a process trains there. Every random draw of an epoch (shuffling, dropout) comes from a
seed derived from (seed, epoch), so resuming from the last finished epoch replays the interrupted one
exactly: on CPU a killed and restarted run ends bit-identical to an uninterrupted one.

Data-parallel (under ``torchrun``, or any default process group of W > 1 ranks): ``batch_size`` stays the
global batch B; every update's B examples (the same seeded permutation on every rank) are split
i ≡ rank (mod W) and the model is wrapped in ``DistributedDataParallel``. Each rank's loss is weighted by
its share of the batch, so the averaged gradient is the gradient of the mean over all B examples, uneven
last batches included; BatchNorm (and ghost BN) normalizes over each rank's part of the batch. The
per-epoch evaluation is data-parallel too (:mod:`sharpness.distributed`). Rank 0 alone writes files;
the checkpoints record ``world_size`` and each rank's examples, and a run resumes only with the world
size it was started with (that is what keeps it exact).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..batches import leaves, nonfinite_example, tree_map
from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..checks import check_device, is_number
from ..data import load_data, model_args_from_data
from ..distributed import is_main, rank_and_world, shard
from ..errors import SharpnessError, printable
from ..errors import short as _short
from ..io import locked, make_folder, remove_stale_temporaries, write_json, write_text
from ..losses import make_loss
from ..model_state import preserved
from ..models import build_model
from ..objective import Objective, flat_params
from ..progress import progress_bar
from ..specs import Spec
from ..tracker import SharpnessTracker
from .config import TrainConfig
from .sam import SAM
from .schedules import Schedule

__all__ = ["train", "evaluate", "TRACE_STEPS"]

# ~10 update counts per decade, 1 … 10⁷: where trace_log_steps records the distance from initialization.
TRACE_STEPS = frozenset(int(round(10 ** (k / 10))) for k in range(71))


def evaluate(model: nn.Module, data: Any, y: torch.Tensor | None = None, batch_size: int = 4096, *,
             loss: Any = None, **objective_args: Any) -> tuple[float, float | None]:
    """Mean loss and accuracy (None where undefined) of ``model`` over ``data`` in eval mode.

    ``evaluate(model, x, y)`` with tensors, or ``evaluate(model, data)`` with any data the
    :class:`~sharpness.objective.Objective` takes; ``loss`` defaults to cross-entropy.
    """
    data = data if y is None else (data, y)
    return Objective(model, loss, data, batch_size=batch_size, **objective_args).evaluate()


class _TrainBatches:
    """Training batches by index: tensor slices for in-memory data, else the Dataset's own items."""

    def __init__(self, data: Any, device: torch.device):
        self.device = device
        if isinstance(data, DataLoader):  # its sampler is replaced by the run's seeded permutation
            data, self.collate = data.dataset, data.collate_fn
        else:
            self.collate = torch.utils.data.default_collate
        if isinstance(data, TensorDataset):
            self.tensors = tuple(t.to(device) for t in data.tensors)
        else:
            self.tensors, self.dataset = None, data
        self.n = len(self.tensors[0]) if self.tensors is not None else len(data)

    def __call__(self, idx: torch.Tensor) -> Any:
        if self.tensors is not None:
            return tuple(t[idx] for t in self.tensors)
        batch = self.collate([self.dataset[int(i)] for i in idx])
        return tree_map(lambda t: t.to(self.device), batch)


@contextlib.contextmanager
def _calling(what: str) -> Iterator[None]:
    """A user function (data set, model, loss) that calls ``sys.exit`` inside the block: one line naming it.

    ``SystemExit(0)`` would otherwise end ``train`` as a success having trained nothing. KeyboardInterrupt
    passes unchanged (Ctrl-C stops the run; it resumes from ``last.pt``).
    """
    try:
        yield
    except SystemExit as e:
        raise SharpnessError(f"{what} called sys.exit({printable(e.code, 60)}) during training: a user function "
                             "must return or raise, not exit; the run stopped here") from None


def _out_folder(out_dir: Any) -> Path:
    """The run folder the caller named: a non-empty path (``""`` would train into the current folder)."""
    if not isinstance(out_dir, (str, os.PathLike)) or isinstance(out_dir, bytes):
        raise SharpnessError(f"out_dir must be a folder path (got {_short(out_dir, 80)}, "
                             f"of type {type(out_dir).__name__})")
    text = os.fspath(out_dir)
    if not isinstance(text, str) or not text.strip() or "\0" in text:
        raise SharpnessError(f"out_dir must name a folder (got {_short(text, 80)}): the run's files go there")
    return Path(text)


def _part(i: int) -> str:
    return {0: "inputs", 1: "targets"}.get(i, f"tensor {i}")


def _bad_data(which: str, what: str, dataset: str) -> SharpnessError:
    return SharpnessError(f"the {which} data hold NaN or Inf ({what}): bad data, not a learning-rate problem; "
                          f"fix data set '{printable(dataset, 200)}' (nothing was trained)")


def _check_tensor_data(data: Any, which: str, dataset: str) -> None:
    """NaN/Inf in the float tensors of an in-memory data set (a TensorDataset): one line, before training."""
    if isinstance(data, DataLoader):
        data = data.dataset
    if not isinstance(data, TensorDataset):
        return  # a Dataset's items are read as training goes: checked where a loss is not finite
    for i, t in enumerate(data.tensors):
        j = nonfinite_example(t)
        if j is not None:
            raise _bad_data(which, f"{_part(i)} of example {j}", dataset)


def _batch_non_finite(parts: tuple) -> str | None:
    """Which part of a batch ``(inputs, targets, extra)`` holds NaN or Inf in a float tensor; None if none."""
    for i, part in enumerate(parts):
        for t in leaves(part):
            if isinstance(t, torch.Tensor) and nonfinite_example(t.detach()) is not None:
                return ("inputs", "targets", "extra inputs")[min(i, 2)]
    return None


def _scan_non_finite(obj: Objective) -> str | None:
    """Where the data of ``obj`` hold NaN or Inf (batch and part), reading them once; None if nowhere."""
    for i, inputs, targets, extra, _ in obj.batches():
        part = _batch_non_finite((inputs, targets, extra))
        if part is not None:
            return f"{part} of batch {i}"
    return None


def _optimizer(model: nn.Module, c: TrainConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if c.weight_decay and not c.decay_bn_and_bias:
        # Goyal 2017: no weight decay on BN γ/β; 1-D parameters are exactly the biases and BN affines.
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": c.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    else:
        groups = [{"params": params, "weight_decay": c.weight_decay}]
    if c.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=c.momentum, nesterov=c.nesterov)
    else:
        opt = (torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam)(groups, lr=lr)
    return SAM(opt, c.sam_rho, adaptive=c.sam == "asam") if c.sam != "none" else opt


def _try_model(model: nn.Module, loss_fn: Any, obj: Objective, batches: _TrainBatches, c: TrainConfig,
               sizes: set[int]) -> None:
    """Try the model and loss on two examples, in eval mode, before any file is written.

    A model or loss that cannot take the data is bad input, said in one line. Eval mode draws no random
    numbers, so the run stays bit-identical to one without this check. ``sizes``: the batch sizes the
    schedule uses.
    """
    if c.batch_size > batches.n:
        raise SharpnessError(f"batch_size {c.batch_size} is larger than the training set ({batches.n} examples)")
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # BatchNorm cannot normalize one example in training mode: a batch of one would fail mid-run
        for b in sorted(sizes):
            if b == 1 or batches.n % b == 1:
                raise SharpnessError(f"batch_size {b} with {batches.n} training examples leaves a batch of one "
                                     "example, which BatchNorm cannot train on; choose another batch size")
    try:
        with torch.no_grad(), preserved(model):
            model.eval()
            inputs, targets, extra = obj.split(batches(torch.arange(min(2, batches.n))))
            loss_fn.mean(obj.forward_fn(model, inputs), targets, extra)
    except (SharpnessError, KeyboardInterrupt):
        raise
    except Exception as e:
        text = " ".join(str(e).split())[:300]
        raise SharpnessError(printable(f"model '{c.model}' (with loss '{c.loss}') does not accept data set "
                                       f"'{c.dataset}': {type(e).__name__}: {text}", 1000)) from None


def _specs(c: TrainConfig, train_set, test_set) -> tuple[Spec, Spec]:
    args = {**model_args_from_data(train_set, test_set), **c.model_args}
    if c.ghost_batch_size is not None:
        args["ghost_batch_size"] = c.ghost_batch_size
    return Spec(c.model, args), Spec(c.dataset, dict(c.data_args))


def _warm_start(c: TrainConfig, model: nn.Module) -> dict | None:
    """The weights (and buffers) of ``c.init_from``'s checkpoint, checked against the model; None without one."""
    if c.init_from is None:
        return None
    state = load_checkpoint(c.init_from).state_dict  # the safe loader: a checkpoint cannot run code
    problem = _misfit(state, model)
    if problem:
        raise SharpnessError(printable(f"init_from {c.init_from}: its weights do not fit model '{c.model}' "
                                       f"({problem})", 1000))
    return state


def _misfit(state: dict, model: nn.Module) -> str | None:
    """Why the weights ``state`` do not fit ``model`` (names, shapes, floating point or not); None if they do."""
    want = model.state_dict()
    missing, unknown = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing:
        return f"weight '{missing[0]}' is missing" + (f", and {len(missing) - 1} more" if len(missing) > 1 else "")
    if unknown:
        return f"weight '{unknown[0]}' is not one of the model's"
    for k, w in want.items():
        t = state[k]
        if tuple(t.shape) != tuple(w.shape):
            return f"weight '{k}' has shape {list(t.shape)}, the model's {list(w.shape)}"
        if t.is_floating_point() != w.is_floating_point():
            return f"weight '{k}' has dtype {t.dtype}, the model's {w.dtype}"
    return None


def _normalized(saved: dict) -> dict:
    """A stored config with the defaults of fields added since it was written (so old runs still resume)."""
    defaults = TrainConfig().to_dict()
    return {**defaults, **saved} if set(saved) <= set(defaults) else saved


def _resume_state(out: Path, c: TrainConfig, world: int) -> Checkpoint | None:
    last = out / "last.pt"
    if not last.exists() and not last.is_symlink():
        return None
    ckpt = load_checkpoint(last)
    if ckpt.extra.get("world_size", 1) != world:
        raise SharpnessError(f"{out} was trained on {_short(ckpt.extra.get('world_size', 1), 40)} "
                             f"process(es); resume it with as many (now {world}): the split of every batch "
                             "depends on it")
    saved = _normalized(ckpt.config)
    if saved != c.to_dict():
        diff = sorted(k for k in set(saved) | set(c.to_dict()) if saved.get(k) != c.to_dict().get(k))
        raise SharpnessError(printable(f"{out} holds a different run (config differs in: {', '.join(diff)}); "
                                       "choose another output folder", 1000))
    return ckpt


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _steps_until(sched: Schedule, epoch: int, n: int) -> int:
    """The updates a run makes in its first ``epoch`` epochs: ⌈n / B⌉ per epoch at that epoch's B."""
    return sum(-(-n // sched.batch_size(e)) for e in range(epoch))


# Per-parameter optimizer state the trainer's optimizers keep: (required when the state is not empty, allowed)
_OPT_STATE = {torch.optim.SGD: (set(), {"momentum_buffer"}),
              torch.optim.Adam: ({"step", "exp_avg", "exp_avg_sq"}, {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
              torch.optim.AdamW: ({"step", "exp_avg", "exp_avg_sq"}, {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})}
_PLAIN = (bool, int, float, str, type(None), tuple, list)


def _screen_optimizer(bad, saved: Any, opt: torch.optim.Optimizer) -> None:
    """The saved optimizer state fits ``opt`` (its groups, parameters and per-parameter tensors); else ``bad``."""
    base = opt.base if isinstance(opt, SAM) else opt
    if not isinstance(saved, dict):
        raise bad("optimizer", "is missing: a resume state holds the optimizer's state")
    groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(groups, list) or not isinstance(state, dict):
        raise bad("optimizer", "is not a torch optimizer state {'state': ..., 'param_groups': [...]}")
    if len(groups) != len(base.param_groups):
        raise bad("optimizer.param_groups", f"has {len(groups)} group(s); the run's {type(base).__name__} has "
                                            f"{len(base.param_groups)}")
    params: dict[Any, torch.Tensor] = {}
    for i, (g, mine) in enumerate(zip(groups, base.param_groups)):
        where = f"optimizer.param_groups[{i}]"
        ids = g.get("params") if isinstance(g, dict) else None
        if not isinstance(ids, list) or not all(_is_int(k) for k in ids):
            raise bad(where, "is not a parameter group (a dict whose 'params' lists integer ids)")
        if len(ids) != len(mine["params"]):
            raise bad(f"{where}.params", f"lists {len(ids)} parameter(s); the model's group has {len(mine['params'])}")
        for k, p in zip(ids, mine["params"]):
            if k in params:
                raise bad(f"{where}.params", f"lists parameter id {k} twice")
            params[k] = p
        for key, value in mine.items():
            if key == "params" or key not in g:
                continue
            got = g[key]
            if key == "lr":
                if not (is_number(got, finite=True) and got >= 0):
                    raise bad(f"{where}.lr", f"is {_short(got, 40)}, not a finite number ≥ 0")
            elif not isinstance(got, _PLAIN) or type(got) is not type(value) and not (
                    is_number(got, finite=True) and is_number(value, finite=True)) or got != value:
                raise bad(f"{where}.{printable(key, 40)}", f"is {_short(got, 40)}; the run's config "
                                                           f"gives {_short(value, 40)}")
    required, allowed = _OPT_STATE.get(type(base), (set(), None))
    for k, entry in state.items():
        where = f"optimizer.state[{_short(k, 40)}]"
        if k not in params:
            raise bad(where, "belongs to no parameter of the optimizer's groups")
        if not isinstance(entry, dict) or not all(isinstance(n, str) for n in entry):
            raise bad(where, "is not a dict of the parameter's state")
        p = params[k]
        if entry and allowed is not None:
            extra, missing = sorted(set(entry) - allowed), sorted(required - set(entry))
            if extra or missing:
                raise bad(where, f"{'holds ' + repr(printable(extra[0], 40)) if extra else 'lacks ' + repr(missing[0])}"
                                 f" (a {type(base).__name__} keeps {', '.join(sorted(allowed))})")
        for name, v in entry.items():
            what = f"{where}.{printable(name, 40)}"
            if isinstance(v, torch.Tensor):
                if not v.is_floating_point():
                    raise bad(what, f"has dtype {v.dtype}, not a floating-point tensor")
                if tuple(v.shape) != tuple(p.shape) and v.ndim != 0:
                    raise bad(what, f"has shape {list(v.shape)}; its parameter's is {list(p.shape)}")
                if tuple(v.shape) != tuple(p.shape) and name != "step":
                    raise bad(what, f"is a scalar; its parameter's shape is {list(p.shape)}")
                if not bool(torch.isfinite(v).all()):
                    raise bad(what, "holds NaN or Inf")
                if name == "step" and not (v.numel() == 1 and float(v) >= 0 and float(v) == int(float(v))):
                    raise bad(what, f"is {_short(v.tolist(), 40)}, not a count of updates ≥ 0")
                if name in ("exp_avg_sq", "max_exp_avg_sq") and bool((v < 0).any()):
                    raise bad(what, "holds negative entries (a mean of squared gradients is ≥ 0)")
            elif v is None and name == "momentum_buffer":
                continue
            elif not (is_number(v, finite=True) and name == "step" and v >= 0):
                raise bad(what, f"is {_short(v, 40)}, not a tensor of its parameter's shape")


# What each key of a tracker record holds (sharpness.tracker); a user measure's value is a number.
_RECORD_KINDS = {"mode": lambda v: v in ("train", "eval"), "converged": lambda v: isinstance(v, bool),
                 "warm": lambda v: isinstance(v, bool), "trace_converged": lambda v: isinstance(v, bool),
                 "n_hvps": lambda v: _is_int(v) and v >= 0,
                 "top": lambda v: isinstance(v, list) and all(is_number(x) for x in v)}


def _wrong_record_key(record: dict) -> str | None:
    """The first key of a tracker record whose value is not of the kind the tracker writes; None if none."""
    for key, value in record.items():
        ok = _RECORD_KINDS[key](value) if key in _RECORD_KINDS else (
            value is None or isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            return key
    return None


def _screen_resume(ckpt: Checkpoint, c: TrainConfig, model: nn.Module, opt: torch.optim.Optimizer,
                   tracker: SharpnessTracker | None, sched: Schedule, n: int) -> None:
    """A resume state (``last.pt``) fits the run before anything is loaded into it: one line naming the field.

    The loader has checked its types (:func:`load_checkpoint`); here it must fit this run: the weights fit
    the model, epoch and step are where the schedule puts them, the history ends at that epoch, the
    optimizer's groups and per-parameter tensors fit the optimizer, the tracker's state and the trace are
    the kinds the trainer wrote.
    """
    where = printable(ckpt.where, 300)

    def bad(field: str, why: str) -> SharpnessError:
        return SharpnessError(f"{where}: tampered or foreign resume state: '{field}' {why}")

    problem = _misfit(ckpt.state_dict, model)
    if problem:
        raise bad("state_dict", f"does not fit model '{printable(c.model, 100)}': {printable(problem, 200)}")
    epoch, step, history = ckpt.epoch, ckpt.step, ckpt.history
    if not _is_int(epoch) or not 1 <= epoch <= sched.epochs:
        raise bad("epoch", f"is {_short(epoch, 40)}, not an integer in [1, {sched.epochs}] "
                           "(the epochs this run trains)")
    expected = _steps_until(sched, epoch, n)
    if not _is_int(step) or step != expected:
        raise bad("step", f"is {_short(step, 40)}; {epoch} epoch(s) of this run make {expected} updates")
    if not isinstance(history, list) or not history or not all(isinstance(e, dict) for e in history):
        raise bad("history", "is not a non-empty list of per-epoch records")
    epochs = [e.get("epoch") for e in history]
    first = epochs[0]
    if first not in (0, 1) or epochs != list(range(first, first + len(history))) or epochs[-1] != epoch:
        raise bad("history", f"records epochs {_short(epochs[:8], 80)}, not one per epoch up to {epoch}")
    last = history[-1]
    if last.get("step") != step:
        raise bad(f"history[{len(history) - 1}].step", f"is {_short(last.get('step'), 40)}, not {step}")
    if last.get("examples") != epoch * n:
        raise bad(f"history[{len(history) - 1}].examples",
                  f"is {_short(last.get('examples'), 40)}; {epoch} epoch(s) of {n} examples make {epoch * n}")
    for key in ("wall_time", "train_loss"):
        if not (is_number(last.get(key), finite=True) and (key != "wall_time" or last[key] >= 0)):
            raise bad(f"history[{len(history) - 1}].{key}", f"is {_short(last.get(key), 40)}, "
                                                            "not a finite number")
    _screen_optimizer(bad, ckpt.optimizer, opt)
    extra = ckpt.extra
    if c.trace_log_steps:
        trace = extra.get("trace")
        if not isinstance(trace, list):
            raise bad("extra.trace", "is missing: the run logs a trace (trace_log_steps)")
        for i, t in enumerate(trace):
            if not (isinstance(t, dict) and _is_int(t.get("step")) and 1 <= t["step"] <= step
                    and _is_int(t.get("examples")) and all(is_number(t.get(k)) for k in ("batch_loss", "dist_from_init"))):
                raise bad(f"extra.trace[{i}]", "is not a record {step, examples, batch_loss, dist_from_init} "
                                               f"of an update ≤ {step}")
    if tracker is not None:
        state = extra.get("tracker")
        if not isinstance(state, dict):
            raise bad("extra.tracker", f"is {_short(state, 40)}, not the tracker's state "
                                       "{'history': [...], 'vectors': ...} (the run tracks curvature)")
        records = state.get("history")
        if not isinstance(records, list):
            raise bad("extra.tracker.history", f"is {_short(records, 40)}, not a list of records")
        for i, r in enumerate(records):
            if not (isinstance(r, dict) and all(isinstance(k, str) for k in r) and _is_int(r.get("step"))
                    and 0 <= r["step"] <= step and is_number(r.get("lambda_max"))):
                raise bad(f"extra.tracker.history[{i}]", f"is not a record with a step ≤ {step} and a lambda_max")
            wrong = _wrong_record_key(r)
            if wrong is not None:
                raise bad(f"extra.tracker.history[{i}].{printable(wrong, 40)}",
                          f"is {_short(r[wrong], 40)}, not what the tracker records")
        v = state.get("vectors")
        if v is not None:
            count = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.ndim != 2 \
                    or v.shape[1] != count or not 1 <= v.shape[0] <= 1024:
                shown = list(v.shape) if isinstance(v, torch.Tensor) else _short(v, 40)
                raise bad("extra.tracker.vectors", f"is {shown}, not None or k × {count} floating-point eigenvectors")
            if not bool(torch.isfinite(v).all()):
                raise bad("extra.tracker.vectors", "holds NaN or Inf")


def _init_weights(out: Path, c: TrainConfig, model: nn.Module) -> dict:
    """The run's initial weights (``init.pt``, written when it started), checked against the model."""
    init = load_checkpoint(out / "init.pt")
    if _normalized(init.config) != c.to_dict():
        raise SharpnessError(printable(f"{init.where}: the initial weights of a different run (its config "
                                       "differs); choose another output folder", 1000))
    problem = _misfit(init.state_dict, model)
    if problem:
        raise SharpnessError(printable(f"{init.where}: tampered or foreign initial weights: they do not fit "
                                       f"model '{c.model}' ({problem})", 1000))
    return init.state_dict


def train(config: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> Checkpoint:
    """Train one model as ``config`` says, writing checkpoints to ``out_dir``; resume if interrupted.

    Same config and seed give the same run. A finished run (``done`` marker) is not trained again.

    Every input is checked before the first update and before any file is written: the config, the
    schedule it resolves to, the device, the data (NaN/Inf in the training or test tensors is bad data,
    not divergence), the model and loss on two examples, and, on resume, the whole resume state
    (``last.pt``, ``init.pt``: see ``_screen_resume``). The folder is locked while the run writes to it;
    temporary files a killed run left there are removed.

    Returns:
        The final checkpoint, loaded.

    Raises:
        SharpnessError: bad input, in one line (a user function calling ``sys.exit`` included); a run that
            diverges on finite data.
    """
    if not isinstance(config, TrainConfig):
        raise SharpnessError(f"config must be a TrainConfig (got {type(config).__name__}); "
                             "TrainConfig.from_dict(...) builds one from a dict")
    config = config.validated()
    out = _out_folder(out_dir)
    if (out / "done").exists() and (out / "final.pt").exists():
        final = load_checkpoint(out / "final.pt", model=config.model)  # the config's name: the user's own
        if _normalized(final.config) != config.to_dict():
            raise SharpnessError(f"{printable(out)} holds a different finished run; choose another output folder")
        return final
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise SharpnessError(f"--out {printable(out)}: is a file, not a folder")
    device = check_device(config.device)
    sched = Schedule.from_config(config)  # bounded: epochs, learning rates, batch growth
    with _calling(f"data set '{printable(config.dataset, 200)}'"):
        train_set, test_set = load_data(Spec(config.dataset, dict(config.data_args)))
    for which, d in (("training", train_set), ("test", test_set)):
        _check_tensor_data(d, which, config.dataset)
    model_spec, data_spec = _specs(config, train_set, test_set)
    with _calling(f"loss '{printable(config.loss, 200)}'"):
        loss_fn = make_loss(config.loss, config.loss_args)
    batches = _TrainBatches(train_set, device)
    cfg = config.to_dict()
    rank, world = rank_and_world()
    if batches.n < world:
        raise SharpnessError(f"{batches.n} training examples cannot be split over {world} processes")
    parallel = {"world_size": world,
                "examples_per_rank": [len(shard(batches.n, r, world)) for r in range(world)]} if world > 1 else {}
    user = f"model '{printable(config.model, 200)}' or loss '{printable(config.loss, 200)}'"

    # Keep the caller's global RNG as it was: training reseeds it per epoch.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _calling(user), \
            contextlib.ExitStack() as held:
        torch.manual_seed(config.seed)
        model = build_model(model_spec).to(device)
        warm = _warm_start(config, model)  # before anything is written: a bad path is bad input
        # The one evaluator: full-data loss and accuracy in eval mode, data cached on the device once.
        evals = [Objective(model, loss_fn, d, batch_size=config.eval_batch_size) for d in (train_set, test_set)]
        _try_model(model, loss_fn, evals[0], batches, config, sched.batch_sizes())  # before anything is written
        opt = _optimizer(model, config, sched.lr(0.0))
        # Curvature along training: the training-mode loss of a fixed subset (sharpness.tracker).
        tracker = SharpnessTracker(loss_fn, train_set, every=config.track_every, measures=config.track_measures,
                                   subset=config.track_samples, seed=config.seed) if config.track_every else None
        state = _resume_state(out, config, world)
        init = None
        if state is not None:  # screened whole before it is loaded and before anything is written
            _screen_resume(state, config, model, opt, tracker, sched, batches.n)
            init = _init_weights(out, config, model)
        else:
            if warm is not None:
                model.load_state_dict(warm)
            # Epoch 0: the model before any update, so curves start where training starts. Evaluated before
            # init.pt is written: data that make the loss NaN/Inf are refused with nothing written.
            (train_loss, train_acc), (test_loss, test_acc) = (e.evaluate() for e in evals)
            for which, e, value in (("training", evals[0], train_loss), ("test", evals[1], test_loss)):
                if not math.isfinite(value):
                    where = _scan_non_finite(e)
                    if where is not None:
                        raise _bad_data(which, where, config.dataset)
                    raise SharpnessError(f"the {which} loss of the initial model is {value} on finite data: "
                                         f"{user} gives NaN or Inf before any update (nothing was trained)")
        if is_main():  # one writer in the folder; then what a killed writer left there goes
            make_folder(out)
            held.enter_context(locked(out / ".lock", f"{printable(out)} is being trained by another process; "
                                                     "wait for it or choose another output folder"))
            remove_stale_temporaries(out)
        if state is None:
            if is_main():
                save_checkpoint(out / "init.pt", model=model, model_spec=model_spec, data_spec=data_spec,
                                config=cfg, extra=parallel)
            epoch0, step, history, trace = 0, 0, [], []
            history.append({"epoch": 0, "step": 0, "examples": 0, "wall_time": 0.0, "lr": sched.lr(0.0),
                            "batch_size": sched.batch_size(0), "train_loss": train_loss, "train_acc": train_acc,
                            "test_loss": test_loss, "test_acc": test_acc, "dist_from_init": 0.0})
        else:
            model.load_state_dict(state.state_dict)
            try:
                opt.load_state_dict(state.optimizer)
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise SharpnessError(f"{printable(state.where)}: tampered or foreign resume state: 'optimizer' does "
                                     f"not load: {printable(' '.join(str(e).split()), 200)}") from None
            epoch0, step, history = state.epoch, state.step, list(state.history)
            trace = list(state.extra.get("trace", []))
            if tracker is not None:  # its records and warm-start vectors: the replayed epoch measures as before
                tracker.load_state_dict(state.extra.get("tracker", {}))
        if world > 1:
            torch.distributed.barrier()  # init.pt is written
            # Gradients averaged over the ranks; parameters and buffers start equal (broadcast from rank 0).
            net = nn.parallel.DistributedDataParallel(model)
        else:
            net = model
        if init is None:
            init = _init_weights(out, config, model)
        w0 = torch.cat([init[n].reshape(-1) for n, _ in model.named_parameters()]).to(device)
        examples = history[-1]["examples"] if history else 0
        wall = history[-1]["wall_time"] if history else 0.0
        save_steps = set(int(s) for s in config.save_steps)

        def traced() -> dict:
            return {**({"trace": trace} if config.trace_log_steps else {}),
                    **({"tracked": tracker.history} if tracker is not None else {})}

        def ckpt(path: Path, epoch: int, extra: dict | None = None, with_opt: bool = False) -> None:
            extra = {**(extra or {}), **traced(), **parallel,
                     **({"tracker": tracker.state_dict()} if tracker is not None and with_opt else {})}
            if is_main():
                save_checkpoint(path, model=model, model_spec=model_spec, data_spec=data_spec, config=cfg,
                                epoch=epoch, step=step, history=history,
                                optimizer=opt.state_dict() if with_opt else None, extra=extra)

        def reached_target() -> bool:
            return (config.target_train_loss is not None and bool(history)
                    and history[-1]["train_loss"] <= config.target_train_loss)

        bar = progress_bar(bool(progress) and rank == 0, range(epoch0, sched.epochs), initial=epoch0,
                           total=sched.epochs, desc=f"train B={config.batch_size}", unit="epoch")
        for epoch in bar:
            if reached_target():  # resuming a run that had already reached its target
                break
            t0 = time.perf_counter()
            bsz = sched.batch_size(epoch)
            torch.manual_seed(config.seed * 1_000_003 + epoch + 7919 * rank)  # dropout and friends, per epoch
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            order = torch.randperm(batches.n, generator=gen).to(device).split(bsz)
            model.train()
            for i, idx in enumerate(order):
                lr = sched.lr(epoch + i / len(order))
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                mine = idx[rank::world]  # this rank's part of the global batch
                share = len(mine) * world / len(idx)
                # A last batch smaller than W leaves a rank > 0 without examples: it still runs a forward
                # and backward (DDP's all-reduce needs every rank), on one example, weighted 0.
                inputs, targets, extra = evals[0].split(batches(mine if len(mine) else idx[:1]))

                def backward() -> torch.Tensor:  # the batch loss and its gradient at the current weights
                    loss = loss_fn.mean(evals[0].forward_fn(net, inputs), targets, extra)
                    # DDP averages over the ranks: weighting by the rank's share makes it the mean over the batch
                    (loss * share if world > 1 else loss).backward()
                    if config.grad_clip:
                        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    return loss

                loss = backward()
                if not torch.isfinite(loss):
                    part = _batch_non_finite((inputs, targets, extra))  # a Dataset's items are read here
                    if part is not None:
                        raise _bad_data("training", f"{part} of the batch of update {step + 1}, epoch {epoch + 1}",
                                        config.dataset)
                    raise SharpnessError(f"training diverged at epoch {epoch + 1}, update {step + 1} "
                                         f"(loss {loss.item()}); lower the learning rate")
                if isinstance(opt, SAM):  # the gradient again, at w + ε̂, on the same batch
                    opt.step(lambda: (opt.zero_grad(set_to_none=True), backward())[1])
                else:
                    opt.step()
                step += 1
                if tracker is not None:
                    tracker(model, step)
                examples += len(idx)
                if config.trace_log_steps and step in TRACE_STEPS:
                    trace.append({"step": step, "examples": examples, "batch_loss": loss.item(),
                                  "dist_from_init": (flat_params(model, trainable_only=False) - w0).norm().item()})
                if step in save_steps:
                    ckpt(out / f"ckpt_step{step}.pt", epoch, extra={"mid_epoch": True})
            wall += time.perf_counter() - t0
            (train_loss, train_acc), (test_loss, test_acc) = (e.evaluate() for e in evals)
            if not (math.isfinite(train_loss) and math.isfinite(test_loss)):  # diverged on the last updates
                for which, e in (("training", evals[0]), ("test", evals[1])):
                    where = _scan_non_finite(e)
                    if where is not None:
                        raise _bad_data(which, where, config.dataset)
                raise SharpnessError(f"training diverged in epoch {epoch + 1} (full-data training loss {train_loss}); "
                                     "lower the learning rate")
            history.append({
                "epoch": epoch + 1, "step": step, "examples": examples, "wall_time": wall, "lr": lr,
                "batch_size": bsz, "train_loss": train_loss, "train_acc": train_acc,
                "test_loss": test_loss, "test_acc": test_acc,
                "dist_from_init": (flat_params(model, trainable_only=False) - w0).norm().item(),
            })
            bar.set_postfix(loss=f"{train_loss:.4f}", **({"acc": f"{train_acc:.3f}", "test_acc": f"{test_acc:.3f}"}
                                                        if train_acc is not None else {}))
            # Epoch checkpoint before the resume state: a crash in between only replays this epoch.
            if config.save_every and (epoch + 1) % config.save_every == 0:
                ckpt(out / f"ckpt_epoch{epoch + 1}.pt", epoch + 1)
            ckpt(out / "last.pt", epoch + 1, with_opt=True)
            if is_main():
                write_json(out / "history.json", {"config": cfg, "history": history, **traced()})
            if reached_target():
                break
        bar.close()
        ckpt(out / "final.pt", history[-1]["epoch"] if history else sched.epochs)
        if is_main():
            write_text(out / "done", "done\n")  # atomic: a symlink placed at done is replaced, not written through
    if world > 1:
        torch.distributed.barrier()  # final.pt is written
    return load_checkpoint(out / "final.pt", model=config.model)
