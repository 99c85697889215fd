"""The training loop: SB/LB runs with checkpoints, per-epoch history, and exact resume.

A run folder holds ``init.pt``, ``ckpt_epochN.pt`` every ``save_every`` epochs, ``ckpt_stepS.pt`` at
chosen update counts, ``last.pt`` (the resume state, rewritten every epoch), ``final.pt``,
``history.json`` and a ``done`` marker. Every random draw of an epoch (shuffling, dropout) comes from a
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

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..batches import tree_map
from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..data import load_data, model_args_from_data
from ..distributed import is_main, rank_and_world, shard
from ..errors import SharpnessError
from ..io import write_json
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
        raise SharpnessError(f"model '{c.model}' (with loss '{c.loss}') does not accept data set "
                             f"'{c.dataset}': {type(e).__name__}: {text}") from None


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
    want = model.state_dict()
    bad = sorted(set(want) ^ set(state)) or [k for k in want if tuple(want[k].shape) != tuple(state[k].shape)]
    if bad:
        raise SharpnessError(f"init_from {c.init_from}: its weights do not fit model '{c.model}' "
                             f"(first mismatch: {bad[0]})")
    return state


def _normalized(saved: dict) -> dict:
    """A stored config with the defaults of fields added since it was written (so old runs still resume)."""
    defaults = TrainConfig().to_dict()
    return {**defaults, **saved} if set(saved) <= set(defaults) else saved


def _resume_state(out: Path, c: TrainConfig, world: int) -> Checkpoint | None:
    last = out / "last.pt"
    if not last.exists():
        return None
    ckpt = load_checkpoint(last)
    if ckpt.extra.get("world_size", 1) != world:
        raise SharpnessError(f"{out} was trained on {ckpt.extra.get('world_size', 1)} process(es); resume it with "
                             f"as many (now {world}): the split of every batch depends on it")
    saved = _normalized(ckpt.config)
    if saved != c.to_dict():
        diff = sorted(k for k in set(saved) | set(c.to_dict()) if saved.get(k) != c.to_dict().get(k))
        raise SharpnessError(f"{out} holds a different run (config differs in: {', '.join(diff)}); "
                             "choose another output folder")
    return ckpt


def train(config: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> Checkpoint:
    """Train one model as ``config`` says, writing checkpoints to ``out_dir``; resume if interrupted.

    Same config and seed give the same run. A finished run (``done`` marker) is not trained again.

    Returns:
        The final checkpoint, loaded.
    """
    config = config.validated()
    out = Path(out_dir)
    if (out / "done").exists() and (out / "final.pt").exists():
        final = load_checkpoint(out / "final.pt", model=config.model)  # the config's name: the user's own
        if _normalized(final.config) != config.to_dict():
            raise SharpnessError(f"{out} holds a different finished run; choose another output folder")
        return final
    if out.exists() and not out.is_dir():
        raise SharpnessError(f"--out {out}: is a file, not a folder")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SharpnessError("device 'cuda' requested but CUDA is not available")
    train_set, test_set = load_data(Spec(config.dataset, dict(config.data_args)))
    model_spec, data_spec = _specs(config, train_set, test_set)
    loss_fn = make_loss(config.loss, config.loss_args)
    batches = _TrainBatches(train_set, device)
    sched = Schedule.from_config(config)
    cfg = config.to_dict()
    rank, world = rank_and_world()
    if batches.n < world:
        raise SharpnessError(f"{batches.n} training examples cannot be split over {world} processes")
    parallel = {"world_size": world,
                "examples_per_rank": [len(shard(batches.n, r, world)) for r in range(world)]} if world > 1 else {}

    # Keep the caller's global RNG as it was: training reseeds it per epoch.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = build_model(model_spec).to(device)
        warm = _warm_start(config, model)  # before anything is written: a bad path is bad input
        # The one evaluator: full-data loss and accuracy in eval mode, data cached on the device once.
        evals = [Objective(model, loss_fn, d, batch_size=config.eval_batch_size) for d in (train_set, test_set)]
        sizes = {sched.batch_size(e) for e in range(sched.epochs)}
        _try_model(model, loss_fn, evals[0], batches, config, sizes)  # before anything is written
        opt = _optimizer(model, config, sched.lr(0.0))
        # Curvature along training: the training-mode loss of a fixed subset (sharpness.tracker).
        tracker = SharpnessTracker(loss_fn, train_set, every=config.track_every, measures=config.track_measures,
                                   subset=config.track_samples, seed=config.seed) if config.track_every else None
        state = _resume_state(out, config, world)
        if state is None:
            if warm is not None:
                model.load_state_dict(warm)
            if is_main():
                save_checkpoint(out / "init.pt", model=model, model_spec=model_spec, data_spec=data_spec,
                                config=cfg, extra=parallel)
            epoch0, step, history, trace = 0, 0, [], []
            # Epoch 0: the model before any update, so curves start where training starts.
            (train_loss, train_acc), (test_loss, test_acc) = (e.evaluate() for e in evals)
            history.append({"epoch": 0, "step": 0, "examples": 0, "wall_time": 0.0, "lr": sched.lr(0.0),
                            "batch_size": sched.batch_size(0), "train_loss": train_loss, "train_acc": train_acc,
                            "test_loss": test_loss, "test_acc": test_acc, "dist_from_init": 0.0})
        else:
            model.load_state_dict(state.state_dict)
            opt.load_state_dict(state.optimizer)
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
        init = load_checkpoint(out / "init.pt").state_dict
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
        (out / "done").write_text("done\n")
    if world > 1:
        torch.distributed.barrier()  # final.pt is written
    return load_checkpoint(out / "final.pt", model=config.model)
