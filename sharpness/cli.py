"""Command-line entry points: argparse only, then one library call each.

``sharpness train|analyze|figures ...`` dispatches here, and ``python -m sharpness.train`` etc. are
shims onto the same functions. The parsers live in this module rather than in ``train.py`` and
friends so that importing them never shadows the library functions of the same name on the package.
Bad input (:class:`SharpnessError`) prints one line and exits with code 2, no traceback.

Progress: ``train``, ``analyze`` and ``run`` pass ``progress=True`` unless ``--no-progress``: a bar on a
terminal, a log line every 10 s in a log file (:mod:`sharpness.progress`). Output folders: ``run`` writes
to ``results/NAME/`` and ``figures``/``correlate`` read ``figures/NAME/results.json`` and write to
``results/NAME/``, so the committed figures change only when asked (``--figures figures``, ``--out
figures``, ``--in-place``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

from .errors import SharpnessError, printable

# A message longer than this is cut (a 20 MB error line from a user's function stays one screen line).
_MESSAGE_LIMIT = 500


def _say(text: object) -> None:
    """One line on stderr: control characters escaped, whitespace runs folded, the length capped."""
    from .errors import printable

    try:
        text = str(text)
    except Exception:  # a message whose str() fails (a 5000-digit int in it, say)
        text = "(an error whose message cannot be shown)"
    text = " ".join(text[: 4 * _MESSAGE_LIMIT].split())
    print(printable(text, _MESSAGE_LIMIT), file=sys.stderr)


class _ArgparseExit(SystemExit):
    """argparse's own exit (``--help``, a usage error): passed through, unlike a user function's SystemExit."""


def _ignore_file_size_signal() -> None:
    """Make a write past ``ulimit -f`` fail with EFBIG (an OSError, said in one line), not kill the process."""
    import signal

    if hasattr(signal, "SIGXFSZ"):
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except (ValueError, OSError):  # not the main thread
            pass


def _guard(fn: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    def run(argv: list[str] | None = None) -> int:
        from .allocator import keep_freed_memory

        _ignore_file_size_signal()
        keep_freed_memory()  # CPU forwards ~1.6× faster on glibc (see sharpness/allocator.py)
        shown = warnings.showwarning
        warnings.showwarning = _one_line_warning  # a warning is one line, as an error is
        try:
            return fn(argv)
        except SharpnessError as e:
            _say(f"error: {e}")  # one line, whatever the message holds
            return 2
        except KeyboardInterrupt:
            print("interrupted: finished work is kept; run the same command again to continue",
                  file=sys.stderr)
            return 130
        except _ArgparseExit:
            raise
        except SystemExit as e:
            if isinstance(e.code, int) and not isinstance(e.code, bool) and e.code != 0:
                raise  # an exit with an error status: kept (a rank that is not 0 under torchrun exits 2)
            # sys.exit() / exit(0) from a user's function (model, data, loss, measure) would end the command
            # with status 0 having done nothing: it is an error
            _say(f"error: a function called by the command raised SystemExit({e.code!r}); nothing was finished "
                 "(a model, data, loss or measure function must return or raise, not exit)")
            return 2
        except RecursionError:
            _say("error: input nested too deeply (a JSON or TOML value, or a structure in a file)")
            return 2
        except OSError as e:  # a file the toolkit could not open or write, outside io's own checks
            name = f"{e.filename}: " if getattr(e, "filename", None) else ""
            _say(f"error: {name}{e.strerror or e}")
            return 2
        finally:
            warnings.showwarning = shown
    run.__name__ = fn.__name__
    return run


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warning: <message>`` on one line (Python's own format adds the source file and line of the toolkit)."""
    print("warning: " + printable(" ".join(str(message).split())), file=file or sys.stderr)


def _trust_flag(p: argparse.ArgumentParser) -> None:
    """``--trust-code``: names read from files (checkpoints, TOMLs, results) may be imported (sharpness.specs)."""
    p.add_argument("--trust-code", action="store_true",
                   help="import the pkg.module:fn names read from checkpoints, TOML and results files even when "
                        "your code has not imported them (default: never on a file's say-so; also "
                        "SHARPNESS_TRUST_CODE=1)")


def _trusting(a: argparse.Namespace):
    from .specs import trust_code

    return trust_code(bool(getattr(a, "trust_code", False)))


def _folder(flag: str, value: str | None) -> str | None:
    """A folder flag's value, refused when empty ("" would write into the current folder)."""
    if value is not None and not value.strip():
        raise SharpnessError(f"{flag} is empty: name a folder (use {flag} . for the current folder)")
    if value is not None:
        for part in Path(value).parts:
            if len(part.encode("utf-8", "replace")) > 255:
                raise SharpnessError(f"{flag}: a folder name of {len(part)} characters is too long "
                                     "(at most 255 bytes per path component)")
    return value


def _json_or_text(text: str) -> object:
    """``text`` read as JSON when it parses (numbers, lists, true/false), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _kv(text: str) -> tuple[str, object]:
    """Parse KEY=VALUE, VALUE read as JSON when it parses, else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    key, value = text.split("=", 1)
    return key, _json_or_text(value)


def _scalar(typ: type) -> Callable[[str], object]:
    """An argparse type: text → ``typ`` where it converts, else the text itself.

    Bad values are left for :meth:`TrainConfig.validated`, whose message names the field, the value and
    what it allows (``batch_size must be an integer ≥ 1 (got 3.7)``).
    """
    def convert(text: str) -> object:
        for t in (int, float) if typ is int else (typ,):  # an int field given 3.7 is reported as 3.7
            try:
                return t(text)
            except ValueError:
                pass
        return text
    return convert


def _numbers(text: str) -> list:
    """Comma-separated values, each read as JSON where it parses (``30,60`` → [30, 60]); "" → []."""
    return [_json_or_text(v.strip()) for v in text.split(",") if v.strip()]


_PROGRESS_HELP = ("no progress output (default: a bar on a terminal; in a log file or pipe, a line every 10 s "
                  "saying what is measured, done/total and the ETA)")


def _add_figure_flags(p: argparse.ArgumentParser) -> None:
    """``--format``, ``--dpi``, ``--style`` and ``--title``: how the command's figures are written."""
    g = p.add_argument_group("figures")
    g.add_argument("--format", default="png", metavar="FMT[,FMT...]",
                   help="figure formats, comma-separated, from pdf, svg, png (default: png)")
    g.add_argument("--dpi", default="300", metavar="INT", help="resolution of PNGs (default: 300)")
    g.add_argument("--style", default="default", metavar="{default,neurips,icml,iclr}",
                   help="sizes and fonts: default (3.3-inch column, 8 pt) or a venue's template (default: default)")
    g.add_argument("--title", default=None, metavar="TEXT",
                   help="the title of every figure written (instead of the default or the experiment's titles)")


def _figure_options(a: argparse.Namespace):
    """The checked ``figure_options`` of ``--format``/``--dpi``/``--style``, before any work is done.

    Raises:
        SharpnessError: a bad value, named with its flag.
    """
    from .plots.style import FORMATS, STYLES, figure_options, parse_formats

    try:
        formats = parse_formats(a.format)
    except SharpnessError:
        raise SharpnessError(f"--format must be one or more of {', '.join(FORMATS)}, comma-separated "
                             f"(got {a.format!r})") from None
    try:
        dpi = int(a.dpi)
    except ValueError:
        dpi = None
    if dpi is None or not 10 <= dpi <= 2400:
        raise SharpnessError(f"--dpi must be an integer from 10 to 2400 (got {a.dpi!r})")
    if a.style not in STYLES:
        raise SharpnessError(f"--style must be one of {', '.join(STYLES)} (got {a.style!r})")
    try:
        STYLES[a.style]()
    except ImportError:
        raise SharpnessError(f"--style {a.style} needs the tueplots package (pip install tueplots)") from None
    return figure_options(formats=formats, dpi=dpi, style=a.style, title=a.title)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors are bad input too: one line, exit 2
        from .errors import printable

        self.exit(2, f"error: {printable(message, _MESSAGE_LIMIT)} (see --help)\n")

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            self._print_message(message, sys.stderr)
        raise _ArgparseExit(status)


_METAVARS = {int: "INT", float: "FLOAT", str: "TEXT"}


def _shown_default(o) -> object:
    if o.type is bool:
        return "on" if o.default else "off"
    if o.type is list:
        return ",".join(map(str, o.default)) or "none"
    return o.default


def _flag_examples(doc: str, flag: str) -> str:
    """A dict field's comment with its TOML examples as flags: ``{"k": 1}`` → ``--data-arg k=1``.

    ``...`` (a value left to the reader) becomes ``PATH`` for a root, else ``VALUE``.
    """
    import re

    def one(m: re.Match) -> str:
        key, value = m.group(1), m.group(2).strip()
        if value == "...":
            value = "PATH" if key in ("root", "path") else "VALUE"
        else:
            try:
                parsed = json.loads(value)
                value = parsed if isinstance(parsed, str) else json.dumps(parsed, separators=(",", ":"))
            except json.JSONDecodeError:
                pass
        return f"{flag} {key}={value}"

    return re.sub(r'\{\s*"(\w+)"\s*:\s*([^{}]*?)\s*\}', one, doc)


def _add_option(p: argparse.ArgumentParser, o) -> None:
    """Add the flag of one :class:`TrainConfig` field (an :class:`~sharpness.training.config.Option`).

    Its help is the field's source comment, what it allows where that says more than the metavar (bounds,
    a check), and the default.
    """
    flag = "--" + o.name.replace("_", "-")
    says_more = any(k in o.allowed for k in ("ge", "gt", "le", "lt", "check"))
    doc = "; ".join(filter(None, [o.doc, o.describe() if says_more else ""]))
    if o.type is dict:  # data_args → --data-arg KEY=VALUE, given once per key
        flag = flag.removesuffix("s")
        p.add_argument(flag, dest=o.name, type=_kv, action="append", default=[], metavar="KEY=VALUE",
                       help=f"{_flag_examples(doc, flag)}; repeatable, VALUE read as JSON when it parses"
                       .replace("%", "%%"))
        return
    help = f"{doc} (default: {_shown_default(o)})".replace("%", "%%")  # argparse formats help with %
    if o.type is bool:
        p.add_argument(flag, dest=o.name, action=argparse.BooleanOptionalAction, default=None, help=help)
    elif o.type is list:
        item = _METAVARS.get(o.item, "X")
        p.add_argument(flag, dest=o.name, type=_numbers, metavar=f"{item},{item},...", help=help)
    else:
        choices = o.allowed.get("choices")
        metavar = "{" + ",".join(choices) + "}" if choices else _METAVARS.get(o.type, "VALUE")
        p.add_argument(flag, dest=o.name, type=_scalar(o.type), metavar=metavar, help=help)


def train_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m sharpness.train``: one flag per :class:`TrainConfig` field, generated."""
    from .training import TrainConfig

    # No abbreviations: a prefix that is unique today may stop being so when a field is added.
    p = _Parser(prog="python -m sharpness.train", description="Train one model and write checkpoints.",
                allow_abbrev=False)
    p.add_argument("config", nargs="?", help="a TOML training config (flags override it)")
    p.add_argument("--out", required=True, help="run folder (resumed if it holds an unfinished run)")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help=_PROGRESS_HELP)
    _trust_flag(p)
    options = p.add_argument_group("training options (the fields of TrainConfig; also TOML keys)")
    for o in TrainConfig.options():
        _add_option(options, o)
    return p


def _config(a: argparse.Namespace):
    """The TrainConfig of parsed arguments: the TOML file (or the defaults), then the flags given."""
    from .training import TrainConfig

    base = TrainConfig.from_toml(a.config).to_dict() if a.config else TrainConfig().to_dict()
    for o in TrainConfig.options():
        value = getattr(a, o.name)
        if o.type is dict:
            base[o.name] = {**base[o.name], **dict(value)}
        elif value is not None:
            base[o.name] = value
    return TrainConfig.from_dict(base)


def _screen_toml_names(a: argparse.Namespace, config) -> None:
    """The model, data set and loss a TOML names (not a flag) are names read from a file (sharpness.specs)."""
    from .data import DATASETS
    from .losses import LOSSES
    from .models import MODELS

    if a.config:
        for registry, name in ((MODELS, "model"), (DATASETS, "dataset"), (LOSSES, "loss")):
            if getattr(a, name) is None:
                registry.screen(getattr(config, name), a.config)


def config_from_args(argv: list[str]):
    """The :class:`TrainConfig` that ``train_main(argv)`` would train with; parses only.

    Raises:
        SharpnessError: a bad value, named with its field.
        SystemExit: a usage error (unknown flag, missing ``--out``), after one line on stderr.
    """
    return _config(train_parser().parse_args(argv))


@_guard
def train_main(argv: list[str] | None = None) -> int:
    from .distributed import is_main, launched
    from .training import train

    a = train_parser().parse_args(argv)
    _folder("--out", a.out)
    config = _config(a)
    with _trusting(a), launched(config.device):  # under torchrun: DistributedDataParallel over the ranks
        _screen_toml_names(a, config)
        ckpt = train(config, a.out, progress=not a.quiet)
        main = is_main()
    if not main:
        return 0
    last = ckpt.history[-1] if ckpt.history else {}
    shown = {k: f"{last[k]:.4f}" if isinstance(last.get(k), (int, float)) else "—"  # no accuracy for regression
             for k in ("train_loss", "train_acc", "test_acc")}
    print(f"{a.out}/final.pt  train loss {shown['train_loss']}  train acc {shown['train_acc']}  "
          f"test acc {shown['test_acc']}")
    return 0


@_guard
def info_main(argv: list[str] | None = None) -> int:
    from .checkpoint import load_checkpoint
    from .data import DATASETS
    from .errors import printable
    from .losses import LOSSES
    from .models import MODELS

    p = _Parser(prog="python -m sharpness.info", description="Describe a checkpoint (safe load; imports nothing "
                                                             "the checkpoint names).")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="a toolkit checkpoint, or a bare state_dict .pt / .safetensors file with --model")
    p.add_argument("--model", default=None, metavar="NAME|MODULE:FACTORY",
                   help="the model, for a bare state_dict (or to override the checkpoint's): rebuilt with the "
                        "weights to show its class and parameters")
    p.add_argument("--model-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the model factory, e.g. widths=[512,512]; repeatable")
    _trust_flag(p)
    a = p.parse_args(argv)

    def show(text: object) -> None:  # every string of the checkpoint escaped: no terminal control from a file
        print(printable(text, 2000))

    def policy(registry, spec_name: object) -> str:
        return registry.describe(spec_name)

    with _trusting(a):
        # load_checkpoint validated the structure: state_dict of tensors, history a list of dicts, config a dict
        ckpt = load_checkpoint(a.checkpoint, model=a.model, model_args=dict(a.model_arg) or None)
        last = ckpt.history[-1] if ckpt.history else {}
        n = sum(t.numel() for t in ckpt.state_dict.values() if t.is_floating_point())
        model = ckpt.model_spec.to_dict() if ckpt.model_spec is not None else None
        show(f"{ckpt.path}: model {model}, epoch {ckpt.epoch}, step {ckpt.step}, {n} floats in state_dict")
        if a.model is not None or a.model_arg:  # the user named the model: build it and load the weights
            net = ckpt.model()
            params = sum(t.numel() for t in net.parameters())
            show(f"built: {type(net).__module__}.{type(net).__qualname__}, {params} parameters, weights loaded")
        elif model is not None:
            show(f"model {model['name']!r}: {policy(MODELS, model['name'])}")
        data = ckpt.data_spec.to_dict() if ckpt.data_spec is not None else None
        show(f"data: {data}")
        if data is not None:
            show(f"data set {data['name']!r}: {policy(DATASETS, data['name'])}")
        if data is not None and data["args"].get("root") is not None:  # a path string without NUL (validated)
            root = os.path.realpath(os.path.expanduser(str(data["args"]["root"])))
            show(f"data would be read from: {Path(root)}")
        loss_args = ckpt.config.get("loss_args")
        loss = ckpt.config.get("loss", "cross_entropy")
        show(f"loss: {loss}" + (f" {loss_args}" if loss_args else ""))
        if isinstance(loss, str) and ":" in loss:
            show(f"loss {loss!r}: {policy(LOSSES, loss)}")
        if last:
            show("last epoch: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in last.items()))
    return 0


@_guard
def analyze_main(argv: list[str] | None = None) -> int:
    from . import analysis
    from .checks import check_device
    from .distributed import is_main, launched

    _import_plugins(sys.argv[1:] if argv is None else argv)  # before the parser: their measures are in --help
    names = analysis.measure_names()
    p = _Parser(prog="python -m sharpness.analyze",
                description="Every measure of one or more checkpoints: report.json, arrays.npz and figures.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT",
                   help="checkpoint files: toolkit checkpoints, or bare state_dict .pt / .safetensors files "
                        "with --model (and --data)")
    p.add_argument("--out", default=None, help="output folder (default: analysis/ beside the first checkpoint)")
    p.add_argument("--measures", default=None, help=f"comma-separated subset of: {','.join(names)}")
    p.add_argument("--quick", action="store_true", help="cheaper settings on a 1000-example subset: seconds on small models")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="evaluate data in batches (memory only)")
    p.add_argument("--max-samples", type=int, default=None, help="fixed random subset of the training data")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="end within this many seconds (counted from the start of the analysis: Python's start-up "
                        "comes before it): data subset, grid points, products and draws chosen from the measured "
                        "unit costs; a measure that cannot fit is skipped with the reason")
    p.add_argument("--dry-run", action="store_true", help="print the plan (each measure's planned seconds) and stop")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every random choice: subset, probe vectors, directions (default: 0)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="MEASURE.KEY=VALUE",
                   help="a setting of one measure, e.g. --set eigenvalues.k=3 --set landscape2d.steps=21; "
                        "VALUE read as JSON when it parses; repeatable")
    p.add_argument("--label", dest="labels", action="append", default=[], metavar="TEXT",
                   help="the name of a checkpoint in the report and figures; once per checkpoint, in order")
    p.add_argument("--params", type=_list, default=None, metavar="GLOB[,GLOB...]",
                   help="measure only the parameters whose names match, e.g. 'fc*.weight,head.*'")
    p.add_argument("--model", default=None, metavar="NAME|MODULE:FACTORY",
                   help="the model, for a bare state_dict (or to override the checkpoint's)")
    p.add_argument("--model-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the model factory; repeatable")
    p.add_argument("--data", default=None, metavar="NAME|PKG.MODULE:FN",
                   help="the data set, for a bare state_dict (or to override the checkpoint's)")
    p.add_argument("--data-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the data function, e.g. --data-arg root=PATH; repeatable")
    p.add_argument("--loss", default=None, metavar="NAME|PKG.MODULE:FN",
                   help="cross_entropy, mse, nll, bce_with_logits or pkg.module:fn "
                        "(default: the checkpoint's loss, else inferred from the data: class indices → "
                        "cross_entropy, real targets shaped like the outputs → mse, said in a warning)")
    p.add_argument("--loss-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument of the loss, e.g. reduction=sum; repeatable")
    p.add_argument("--force", action="store_true", help="recompute measures already in the report")
    p.add_argument("--plugin", action="append", default=[], metavar="PKG.MODULE",
                   help="import a module that registers measures (sharpness.register_measure); repeatable")
    p.add_argument("--no-progress", action="store_true", help=_PROGRESS_HELP)
    _trust_flag(p)
    _add_figure_flags(p)
    a = p.parse_args(argv)
    _folder("--out", a.out)
    check_device(a.device, "--device", available=False)
    options = _figure_options(a)
    extra: dict = {}  # keywords given only when their flags are: analyze's defaults otherwise
    if a.settings:
        extra["settings"] = _measure_settings(a.settings, names)
    if a.labels:
        if len(a.labels) != len(a.checkpoints):
            raise SharpnessError(f"--label given {len(a.labels)} time(s) for {len(a.checkpoints)} checkpoint(s): "
                                 "give one per checkpoint, in order")
        extra["labels"] = a.labels
    if a.params is not None:
        extra["params"] = a.params
    if a.budget is not None:
        extra["budget"] = a.budget
    if a.dry_run:
        extra["dry_run"] = True

    out = a.out or str(Path(a.checkpoints[0]).resolve().parent / "analysis")
    if not a.out and Path(out).is_symlink():  # a folder the toolkit names, not the user: never through a link
        raise SharpnessError(f"{printable(out, 300)}: is a symlink; name the output folder with --out")
    measures = [m.strip() for m in a.measures.split(",") if m.strip()] if a.measures else None
    with options, _trusting(a), launched(a.device) as device:  # under torchrun: data-parallel over the ranks
        report = analysis.analyze(a.checkpoints, out=out, measures=measures, quick=a.quick, device=device,
                                  batch_size=a.batch_size, max_samples=a.max_samples, seed=a.seed,
                                  model=a.model, model_args=dict(a.model_arg) or None, data=a.data,
                                  data_args=dict(a.data_arg) or None, loss=a.loss,
                                  loss_args=dict(a.loss_arg) or None, force=a.force,
                                  progress=False if a.no_progress or not is_main() else True, **extra)
        main = is_main()
    if not main:  # rank 0 wrote the report and says what is in it
        return 0
    if a.dry_run:  # the plan is printed (stderr); nothing was written
        return 0
    print(report.table())
    print(f"report: {Path(report.out or out) / 'report.json'}" + ("  (quick settings)" if a.quick else ""))
    if report.failed:  # the report is written; the exit code says that some measures are missing from it
        print(f"{len(report.failed)} measure(s) failed; the others are in the report", file=sys.stderr)
        return 1
    return 0


def _measure_settings(items: list[str], names: list[str]) -> dict[str, dict]:
    """``--set MEASURE.KEY=VALUE`` items → analyze's ``settings`` ({measure: {key: value}}), checked.

    Raises:
        SharpnessError: an item that is not MEASURE.KEY=VALUE, an unknown measure, or a key or value the
            measure does not take (its registered settings and their types).
    """
    from .checks import check_settings
    from .measures.registry import MEASURES

    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        measure, dot, name = key.partition(".")
        if not sep or not dot or not measure.strip() or not name.strip():
            raise SharpnessError(f"--set expects MEASURE.KEY=VALUE, e.g. --set eigenvalues.k=3 (got {item!r})")
        measure, name = measure.strip(), name.strip()
        if measure not in names:
            raise SharpnessError(f"--set {item}: unknown measure {measure!r}; measures: {', '.join(names)}")
        try:
            out.setdefault(measure, {})[name] = _json_or_text(value)
        except RecursionError:
            raise SharpnessError(f"--set {measure}.{name}: the value is nested too deeply") from None
        except ValueError as e:  # a 5000-digit integer (Python's int-to-str limit)
            raise SharpnessError(f"--set {measure}.{name}: {' '.join(str(e).split())[:120]}") from None
    for measure, over in out.items():
        check_settings(MEASURES[measure], over, f"--set {measure}")
    return out


def _import_plugins(argv: list[str]) -> None:
    """Import every ``--plugin MODULE`` (the user typed it: trusted) so its measures are registered."""
    import importlib

    from .specs import user_folder_on_path

    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[1] if arg.startswith("--plugin=") else (
            argv[i + 1] if arg == "--plugin" and i + 1 < len(argv) else None)
        if name is not None:
            user_folder_on_path()
            try:
                importlib.import_module(name)
            except Exception as e:  # not found, a syntax error, a relative name, the module's own failure
                reason = " ".join(str(e).split())[:300]
                raise SharpnessError(f"--plugin {name!r}: cannot import it ({type(e).__name__}: {reason})") from None


@_guard
def run_main(argv: list[str] | None = None) -> int:
    from .distributed import is_main, launched, launched_world
    from .experiments import load_experiment, run_experiment

    p = _Parser(prog="python -m sharpness.run", description="Run an experiment: trainings, analyses, figures.")
    p.add_argument("experiment", help="an experiment TOML file, or the name of one that ships with the package "
                                      "(e.g. quickstart: experiments/quickstart.toml)")
    p.add_argument("--jobs", type=int, default=1, help="train independent runs in parallel processes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set base.dataset=digits --set grid.seed=[0,1]")
    p.add_argument("--runs", default="runs", help="where run folders go")
    p.add_argument("--figures", default="results", metavar="DIR",
                   help="where NAME/results.json and the figures go (default: results, a scratch folder; "
                        "--figures figures regenerates the committed paper figures)")
    p.add_argument("--no-progress", action="store_true", help=_PROGRESS_HELP)
    _trust_flag(p)
    _add_figure_flags(p)
    a = p.parse_args(argv)
    _folder("--runs", a.runs)
    _folder("--figures", a.figures)
    device = "cpu"  # the process group's backend follows the experiment's device (under torchrun only)
    if launched_world() > 1:
        device = str(load_experiment(a.experiment, a.set).get("base", {}).get("device", "cpu"))
    with _figure_options(a), _trusting(a), launched(device):  # under torchrun: every run trained and analysed data-parallel
        path = run_experiment(a.experiment, runs_root=a.runs, figures_root=a.figures, jobs=a.jobs,
                              overrides=a.set, progress=False if a.no_progress or not is_main() else True)
        main = is_main()
    if main:
        print(f"results: {path}")
    return 0


def _rename(text: str) -> tuple[str, str]:
    """OLD=NEW, both kept as text (a label of digits stays a label)."""
    old, sep, new = text.partition("=")
    if not sep or not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError(f"expected OLD=NEW, got {text!r}")
    return old.strip(), new.strip()


def _add_output_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"where {what} go: DIR/NAME/ (default: results, a scratch folder; --out figures "
                        "or --in-place rewrites the committed ones)")
    p.add_argument("--in-place", action="store_true", help=f"write {what} beside each results.json")


def _output_dir(a: argparse.Namespace, results: Path) -> Path:
    """Where a command's output of ``results`` (DIR/NAME/results.json) goes: ``--out``/NAME or beside it."""
    return results.parent if a.in_place else Path(a.out or "results") / results.parent.name


@_guard
def figures_main(argv: list[str] | None = None) -> int:
    from .plots.experiments import draw

    p = _Parser(prog="python -m sharpness.figures", description="Redraw figures from saved results only.")
    p.add_argument("names", nargs="*", help="experiment names (default: every folder of --figures)")
    p.add_argument("--figures", default="figures", metavar="DIR",
                   help="where the results are read: DIR/NAME/results.json (default: figures, the committed ones)")
    _add_output_flags(p, "the figures")
    p.add_argument("--label", dest="labels", type=_rename, action="append", default=[], metavar="OLD=NEW",
                   help="show run/variant label OLD as NEW in the figures, e.g. --label LB='large batch'; "
                        "repeatable")
    _trust_flag(p)  # figures import nothing a results file names; accepted so every command takes it
    _add_figure_flags(p)
    a = p.parse_args(argv)
    _folder("--out", a.out)
    _folder("--figures", a.figures)
    options = _figure_options(a)
    if a.in_place and a.out is not None:
        raise SharpnessError("--in-place writes beside the results; give it or --out, not both")
    root = Path(a.figures)
    names = a.names or sorted(d.name for d in root.iterdir() if (d / "results.json").exists()) if root.is_dir() else []
    if not names:
        raise SharpnessError(f"no results.json under '{root}'; run an experiment first")
    results = [root / n / "results.json" for n in names]
    missing = [r for r in results if not r.exists()]
    if missing:
        raise SharpnessError(f"{missing[0]}: no such results file")
    with options, _trusting(a):
        for res in results:
            for fig in draw(res, _output_dir(a, res), labels=dict(a.labels) or None):
                print(fig)
    return 0


def _list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list (got {value!r})")
    return items


@_guard
def correlate_main(argv: list[str] | None = None) -> int:
    import json

    from .correlation import correlate, left_out_note, results_rows
    from .io import atomic_write, read_text

    p = _Parser(prog="python -m sharpness.correlate",
                description="Rank the measures of an experiment's runs against their generalization gap "
                            "(Kendall τ and Jiang et al. 2020's granulated Ψ).")
    p.add_argument("results", help="an experiment's results: results/NAME/results.json or figures/NAME/results.json")
    p.add_argument("--gap", default="gap", help="gap (test − train loss, default) or gap_acc (train − test accuracy)")
    p.add_argument("--measures", type=_list, default=None, help="comma-separated measure.key columns (default: all)")
    p.add_argument("--axes", type=_list, default=None, help="hyperparameter axes for Ψ (default: the grid and variants)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for τ's interval")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default: 0)")
    p.add_argument("--replicates", default="auto", metavar="COLUMN|none",
                   help="the column whose runs are replicates of one configuration, averaged before τ and Ψ "
                        "(default: seed, where the rows have one; none: every run a point, as pooled before)")
    _add_output_flags(p, "correlation.md")
    a = p.parse_args(argv)
    _folder("--out", a.out)
    if a.in_place and a.out is not None:
        raise SharpnessError("--in-place writes beside the results; give it or --out, not both")
    path = Path(a.results)
    try:
        results = json.loads(read_text(path, "results file"))
        table = results_rows(results)
    except FileNotFoundError:
        raise SharpnessError(f"{path}: no such results file") from None
    except RecursionError:
        raise SharpnessError(f"{path}: not a readable results file (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SharpnessError(f"{path}: not a readable results file ({' '.join(str(e).split())[:200]})") from None
    res = correlate(table.rows, a.measures or table.measures, gap=a.gap,
                    axes=a.axes if a.axes is not None else table.axes, n_boot=a.n_boot, seed=a.seed,
                    replicates=None if a.replicates.lower() == "none" else a.replicates)
    text = res.markdown(str(path), left_out_note(table))
    out = atomic_write(_output_dir(a, path) / "correlation.md", lambda q: q.write_text(text))
    print(text + f"\nwritten: {out}")
    return 0


COMMANDS = {"train": train_main, "info": info_main, "analyze": analyze_main, "run": run_main,
            "figures": figures_main, "correlate": correlate_main}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        # As under `python -m sharpness.X`: `--model mynets:make_net` finds mynets.py in the current folder.
        sys.path.insert(0, os.getcwd())
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: sharpness {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
