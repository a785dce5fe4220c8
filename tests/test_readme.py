"""The README's Python examples run as written, each on its own (a reader may copy any one of
them into a fresh interpreter), in a temporary folder so that nothing lands in the checkout."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs_on_its_own(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    exec(compile(BLOCKS[index], f"{README} (python block {index + 1})", "exec"), {"__name__": "__readme__"})
