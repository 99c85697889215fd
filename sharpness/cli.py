"""Command-line entry points: argparse only, then one library call each.

``sharpness train|analyze|figures ...`` dispatches here, and ``python -m sharpness.train`` etc. are
shims onto the same functions. The parsers live in this module rather than in ``train.py`` and
friends so that importing them never shadows the library functions of the same name on the package.
Bad input (:class:`SharpnessError`) prints one line and exits with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from .errors import SharpnessError


def _guard(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    def run(argv: list[str] | None = None) -> int:
        from .allocator import keep_freed_memory

        keep_freed_memory()  # CPU forwards ~1.6× faster on glibc (see sharpness/allocator.py)
        try:
            return fn(argv)
        except SharpnessError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: finished work is kept; run the same command again to continue",
                  file=sys.stderr)
            return 130
    run.__name__ = fn.__name__
    return run


def _kv(text: str) -> tuple[str, object]:
    """Parse KEY=VALUE, VALUE read as JSON when it parses (numbers, lists, true/false), else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors are bad input too: one line, exit 2
        self.exit(2, f"error: {message} (see --help)\n")


@_guard
def train_main(argv: list[str] | None = None) -> int:
    from .training import TrainConfig, train

    p = _Parser(prog="python -m sharpness.train", description="Train one model and write checkpoints.")
    p.add_argument("config", nargs="?", help="a TOML training config (flags override it)")
    p.add_argument("--out", required=True, help="run folder (resumed if it holds an unfinished run)")
    flags = {
        "--dataset": str, "--model": str, "--batch-size": int, "--lr": float, "--lr-scaling": str,
        "--base-batch-size": int, "--epochs": int, "--optimizer": str, "--seed": int,
        "--momentum": float, "--weight-decay": float, "--warmup-epochs": float, "--decay-factor": float,
        "--max-batch-size": int, "--grad-clip": float, "--ghost-batch-size": int, "--save-every": int,
        "--device": str, "--target-train-loss": float,
    }
    for flag, typ in flags.items():
        p.add_argument(flag, type=typ)
    p.add_argument("--milestones", type=_ints, help="comma-separated epochs, e.g. 30,60")
    p.add_argument("--save-steps", type=_ints, help="comma-separated update counts to checkpoint at")
    for flag in ("--nesterov", "--batch-growth", "--regime-adaptation"):
        p.add_argument(flag, action="store_true", default=None)
    p.add_argument("--data-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--model-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    base = TrainConfig.from_toml(a.config).to_dict() if a.config else TrainConfig().to_dict()
    for flag in list(flags) + ["--milestones", "--save-steps", "--nesterov", "--batch-growth",
                               "--regime-adaptation"]:
        key = flag[2:].replace("-", "_")
        if getattr(a, key) is not None:
            base[key] = getattr(a, key)
    base["data_args"] = {**base["data_args"], **dict(a.data_arg)}
    base["model_args"] = {**base["model_args"], **dict(a.model_arg)}
    ckpt = train(TrainConfig.from_dict(base), a.out, progress=not a.quiet)
    last = ckpt.history[-1] if ckpt.history else {}
    print(f"{a.out}/final.pt  train loss {last.get('train_loss', float('nan')):.4f}  "
          f"train acc {last.get('train_acc', float('nan')):.4f}  test acc {last.get('test_acc', float('nan')):.4f}")
    return 0


@_guard
def info_main(argv: list[str] | None = None) -> int:
    from .checkpoint import load_checkpoint

    p = _Parser(prog="python -m sharpness.info", description="Describe a checkpoint (safe load).")
    p.add_argument("checkpoint")
    a = p.parse_args(argv)
    ckpt = load_checkpoint(a.checkpoint)
    last = ckpt.history[-1] if ckpt.history else {}
    n = sum(t.numel() for t in ckpt.state_dict.values() if t.is_floating_point())
    print(f"{ckpt.path}: model {ckpt.model_spec.to_dict()}, data {ckpt.data_spec.to_dict()}, "
          f"epoch {ckpt.epoch}, step {ckpt.step}, {n} floats in state_dict")
    if last:
        print("last epoch: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in last.items()))
    return 0


@_guard
def analyze_main(argv: list[str] | None = None) -> int:
    from .analysis import MEASURES, analyze

    p = _Parser(prog="python -m sharpness.analyze",
                description="Every measure of one or more checkpoints: report.json, arrays.npz and figures.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    p.add_argument("--out", default=None, help="output folder (default: analysis/ beside the first checkpoint)")
    p.add_argument("--measures", default=None, help=f"comma-separated subset of: {','.join(MEASURES)}")
    p.add_argument("--quick", action="store_true", help="cheaper settings that finish in seconds")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=None, help="evaluate data in batches (memory only)")
    p.add_argument("--max-samples", type=int, default=None, help="fixed random subset of the training data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY", help="for a bare state_dict")
    p.add_argument("--data", default=None, help="data set name, for a bare state_dict")
    p.add_argument("--force", action="store_true", help="recompute measures already in the report")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    from pathlib import Path

    out = a.out or str(Path(a.checkpoints[0]).resolve().parent / "analysis")
    measures = [m.strip() for m in a.measures.split(",") if m.strip()] if a.measures else None
    report = analyze(a.checkpoints, out=out, measures=measures, quick=a.quick, device=a.device,
                     batch_size=a.batch_size, max_samples=a.max_samples, seed=a.seed, model=a.model, data=a.data,
                     force=a.force, progress=False if a.no_progress else None)
    print(report.table())
    print(f"report: {Path(out) / 'report.json'}" + ("  (quick settings)" if a.quick else ""))
    return 0


@_guard
def run_main(argv: list[str] | None = None) -> int:
    from .experiments import run_experiment

    p = _Parser(prog="python -m sharpness.run", description="Run an experiment: trainings, analyses, figures.")
    p.add_argument("experiment", help="experiments/NAME.toml")
    p.add_argument("--jobs", type=int, default=1, help="train independent runs in parallel processes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set base.dataset=digits --set grid.seed=[0,1]")
    p.add_argument("--runs", default="runs", help="where run folders go")
    p.add_argument("--figures", default="figures", help="where results.json and figures go")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    path = run_experiment(a.experiment, runs_root=a.runs, figures_root=a.figures, jobs=a.jobs, overrides=a.set,
                          progress=False if a.no_progress else None)
    print(f"results: {path}")
    return 0


@_guard
def figures_main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from .plots.experiments import draw

    p = _Parser(prog="python -m sharpness.figures", description="Redraw figures from saved results only.")
    p.add_argument("names", nargs="*", help="experiment names (default: every folder of --figures)")
    p.add_argument("--figures", default="figures")
    a = p.parse_args(argv)
    root = Path(a.figures)
    names = a.names or sorted(d.name for d in root.iterdir() if (d / "results.json").exists()) if root.exists() else []
    if not names:
        raise SharpnessError(f"no results.json under '{root}'; run an experiment first")
    for n in names:
        res = root / n / "results.json"
        if not res.exists():
            raise SharpnessError(f"{res}: no such results file")
        for fig in draw(res):
            print(fig)
    return 0


COMMANDS = {"train": train_main, "info": info_main, "analyze": analyze_main, "run": run_main,
            "figures": figures_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: sharpness {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
