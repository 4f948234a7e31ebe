"""Every ```python block of README.md runs as written.

Each block runs on its own, in a fresh interpreter, in an empty temporary directory (not the
repository), so a block must show its imports and set-up and reach the project's data through
``workbench.systems.data_file``: what a reader who copies one block gets. Tracebacks carry
README.md's own line numbers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT_S = 300.0  # per block; only stops a hung block, never a performance check
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line of the block's first code line, source) of every ```python block of ``text``."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text())


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3, "README.md should show its Python API in ```python blocks"


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> str:
    """A compilation cache the blocks share (programs repeated across blocks compile once);
    `dev.py test` gives its own, kept between runs."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("jax"))


@pytest.mark.parametrize(("line", "source"), BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, source, tmp_path, jax_cache):
    script = tmp_path / f"README_md_line{line}.py"
    script.write_text("\n" * (line - 1) + source)  # line numbers as in README.md
    # implicit rank promotion an error, as conftest makes it for the tests run in-process
    env = dict(os.environ, MPLBACKEND="Agg", JAX_COMPILATION_CACHE_DIR=jax_cache,
               JAX_NUMPY_RANK_PROMOTION="raise")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    env.pop("PYTHONPATH", None)  # the installed package, as a reader has it
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, (
        f"README.md's python block at line {line} failed (run from {tmp_path}):\n"
        f"{proc.stderr[-6000:]}")
