"""Every Python block of the README runs as written, in order, in a fresh folder."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch, restore_measures):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "an" / "report.json").exists() and (tmp_path / "contour.png").exists()
    assert "grad_norm" in (tmp_path / "an_sb" / "report.json").read_text()
