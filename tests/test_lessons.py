"""Execute every lesson in lessons/ (MyST markdown notebooks) with a real Jupyter kernel.

Each lesson is read with jupytext and run top to bottom with nbclient, in *fast mode*:
the test sets ``FPSIM_FAST=1`` in the kernel's environment, and the first code cell of
every lesson reads it (``FAST = os.environ.get("FPSIM_FAST") == "1"``) to shrink its
sizes. The lessons check themselves with ``assert`` cells; a failing assert, an
exception or a cell running past the timeout fails the test. New lessons are picked up
automatically: the test is parametrized over ``sorted(lessons/*.md)``.

Run only these:  pytest -m lessons tests/test_lessons.py
One lesson:      pytest -m lessons tests/test_lessons.py -k 02_rounding
Full mode by hand (what a learner runs): see lessons/README.md ("Opening the lessons").
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

LESSONS_DIR = Path(__file__).resolve().parent.parent / "lessons"
#: Every lesson notebook, in course order (README.md is the syllabus, not a lesson).
LESSONS = sorted(p for p in LESSONS_DIR.glob("*.md") if p.name != "README.md")
#: Per-cell limit; a whole lesson must stay under 90 s in fast mode (see README.md).
CELL_TIMEOUT_S = 300
#: Lessons too slow to execute here, each with the reason. Keep it empty if you can.
EXCLUDE: dict[str, str] = {}

# The first cell run in the kernel: it proves the kernel is the interpreter running the
# tests (the project's virtual environment, where fpsim is installed), not some other
# Python found on the PATH.
_KERNEL_CHECK = f"""
import sys, os
assert sys.prefix == {sys.prefix!r}, (sys.executable, {sys.executable!r})
assert os.environ.get("FPSIM_FAST") == "1"
import fpsim
"""


def _read(path: Path):
    jupytext = pytest.importorskip("jupytext")
    return jupytext.read(path)


@pytest.mark.lessons
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if path.stem in EXCLUDE:
        pytest.skip(EXCLUDE[path.stem])
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")

    nb = _read(path)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_KERNEL_CHECK))
    # The kernel inherits this process's environment.
    monkeypatch.setenv("FPSIM_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # kernel_name="python3": jupyter_client starts a kernelspec whose command is a bare
    # "python" with sys.executable, so the kernel runs in this test's environment
    # (_KERNEL_CHECK asserts it).
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(LESSONS_DIR)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    print(f"{path.stem}: {seconds:.1f} s in fast mode")


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_shape(path: Path) -> None:
    """Cheap checks, no kernel: the parts every lesson must have (see README.md)."""
    text = path.read_text(encoding="utf-8")
    assert re.match(r"\d\d_[a-z0-9_]+$", path.stem), "name lessons NN_topic.md"
    assert "formats: md:myst" in text.split("---", 2)[1], "needs the jupytext MyST header"
    headings = [h.strip().lower() for h in re.findall(r"^#+ (.*)$", text, re.M)]
    assert any("learning goals" in h for h in headings), "needs a 'Learning goals' section"
    assert any(h.startswith("exercises") for h in headings), "needs an 'Exercises' section"
    assert "```{code-cell} ipython3" in text
    first_code = text.split("```{code-cell} ipython3", 1)[1]
    assert 'FAST = os.environ.get("FPSIM_FAST") == "1"' in first_code.split("```", 1)[0], (
        "the first code cell must define the fast-mode switch"
    )
    nb = _read(path)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
