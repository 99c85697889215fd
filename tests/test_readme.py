"""The README runs as written: every Python block, in order, in a fresh folder; every command line parses."""

import re
import shlex
from pathlib import Path

import pytest

from sharpness import SharpnessError, cli
from sharpness.measures.registry import MEASURES

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
TORCHRUN_FLAGS = {"--nproc_per_node", "--nnodes", "--rdzv_backend", "--rdzv_endpoint"}


def test_readme_python_blocks_run(tmp_path, monkeypatch, restore_measures):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "an_lib" / "report.json").exists() and (tmp_path / "contour.png").exists()
    assert "grad_norm" in (tmp_path / "an_lib_sb" / "report.json").read_text()
    assert [r["step"] for r in namespace["tracker"].history] == [10, 20]
    assert (tmp_path / "trajectory.png").exists() and (tmp_path / "contour_eig.png").exists()


def _commands() -> list[tuple[str, list[str], str]]:
    """(command, argv, line) of every ``python -m sharpness.X``, ``-m sharpness.X`` or ``sharpness X``
    in the README's bash blocks (continuation lines joined, comments dropped, split at && and ;)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            segments, cur = [], []
            for t in tokens:
                if t in ("&&", ";", "||"):
                    segments.append(cur)
                    cur = []
                else:
                    cur.append(t)
            segments.append(cur)
            for seg in segments:
                for i, t in enumerate(seg):
                    if t == "-m" and i + 1 < len(seg) and seg[i + 1].startswith("sharpness."):
                        out.append((seg[i + 1].removeprefix("sharpness."), seg[i + 2:], line))
                        break
                    if t == "sharpness" and i == 0 and len(seg) > 1:
                        out.append((seg[1], seg[2:], line))
                        break
    return out


class _Built(Exception):
    pass


def _parsers() -> dict:
    """Every command's argparse parser, as its entry point builds it (stopped before it parses)."""
    parsers = {"train": cli.train_parser()}
    real = cli._Parser.parse_args

    def capture(self, args=None, namespace=None):
        raise _Built(self)

    cli._Parser.parse_args = capture
    try:
        for name, main in cli.COMMANDS.items():
            if name == "train":
                continue
            with pytest.raises(_Built) as got:
                main([])
            parsers[name] = got.value.args[0]
    finally:
        cli._Parser.parse_args = real
    return parsers


def test_readme_command_lines_parse(capsys):
    parsers = _parsers()
    commands = _commands()
    assert {"train", "info", "analyze", "run"} <= {c for c, _, _ in commands}
    for cmd, argv, line in commands:
        assert cmd in parsers, f"README: unknown command sharpness.{cmd} in: {line}"
        try:
            a = parsers[cmd].parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: {line}\n{capsys.readouterr().err}")
        if cmd == "train" and a.config is None:  # the values too (a TOML file of the README's is the reader's)
            try:
                cli.config_from_args(argv)
            except SharpnessError as e:
                pytest.fail(f"README command has a bad value: {line}\n{e}")
        for arg in argv:  # experiments named by path ship with the repository
            if arg.startswith("experiments/") and arg.endswith(".toml"):
                assert (ROOT / arg).is_file(), f"README: no {arg} ({line})"


def test_readme_flags_exist():
    """Every --flag the README names (prose included) is an option of some command; every TrainConfig
    flag and every registered measure is listed."""
    text = README.read_text()
    parsers = _parsers()
    options = {s for p in parsers.values() for s in p._option_string_actions}
    used = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text)) - TORCHRUN_FLAGS
    assert not used - options, f"README names flags no command has: {sorted(used - options)}"
    train = {s for s in parsers["train"]._option_string_actions
             if s.startswith("--") and not s.startswith("--no-") and s != "--help"}
    assert not train - used, f"train flags missing from the README: {sorted(train - used)}"
    listed = set(re.search(r"`--measures ([\w,]+)`", text).group(1).split(","))
    builtin = {n for n, m in MEASURES.items() if m.fn.__module__.startswith("sharpness.")}
    assert listed == builtin, f"README --measures list: missing {sorted(builtin - listed)}, extra {sorted(listed - builtin)}"
