"""Build the web site (docs/: Sphinx + MyST-NB) and check what a reader gets.

Two builds, each once per session into a temporary folder:

* ``structure`` (default suite, about a minute): lessons not executed
  (``nb_execution_mode=off``). Checks the front page, a page per lesson, the API pages,
  the folded worked answers, the downloadable notebooks and every internal link.
* ``executed`` (marked ``slow``: it executes every lesson, as tests/test_lessons.py does,
  several minutes on 2 cores): the lessons in fast mode (``FPSIM_FAST=1``) with a cold
  jupyter-cache. Checks that the build fails on no cell, that every figure of every
  executed notebook is on its page, and the links again.

Run:  pytest tests/test_site.py            (structure)
      pytest -m slow tests/test_site.py    (executed)
The build command a person runs is ``FPSIM_FAST=1 make -C docs html`` (docs/Makefile).
A screenshot test runs when Chromium is installed (apt-get install chromium).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")
pytest.importorskip("sphinx_book_theme")
pytest.importorskip("sphinx_togglebutton")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LESSONS = sorted((ROOT / "lessons").glob("[0-9]*.md"))
API_MODULES = [
    "fpsim", "fpsim.numerics", "fpsim.stats", "fpsim.nn", "fpsim.optim", "fpsim.plot",
]  # fmt: skip
BUILD_TIMEOUT_S = 3600


class Site:
    """A built site: its html folder, the executed notebooks, the warnings."""

    def __init__(self, out: Path, warnings: str, cache: Path) -> None:
        self.html = out / "html"
        self.cache = cache
        self.warnings = warnings


def _build(out: Path, *, execute: bool) -> Site:
    env = dict(os.environ, FPSIM_FAST="1", PYTHONPATH=str(ROOT))
    warnings = out / "warnings.txt"
    cmd = [
        sys.executable, "-m", "sphinx", "-b", "html", "-q",
        "-c", str(DOCS), "-w", str(warnings),
        "-d", str(out / "doctrees"),
        "-D", f"nb_execution_cache_path={out / 'jupyter_cache'}",
        "-D", f"nb_execution_mode={'cache' if execute else 'off'}",
        str(ROOT), str(out / "html"),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    log = f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    assert proc.returncode == 0, f"sphinx failed:\n{log}"
    return Site(out, warnings.read_text(encoding="utf-8"), out / "jupyter_cache")


@pytest.fixture(scope="module")
def structure(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return _build(tmp_path_factory.mktemp("site_structure"), execute=False)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return _build(tmp_path_factory.mktemp("site_executed"), execute=True)


class _Page(HTMLParser):
    """The links, images and element ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.ids: set[str] = set()
        self.classes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        self.classes.extend((a.get("class") or "").split())
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "link" and a.get("href"):
            self.links.append(a["href"])
        if tag == "script" and a.get("src"):
            self.links.append(a["src"])
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "refresh":
            self.links.append((a.get("content") or "").split("url=", 1)[-1])


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _internal(url: str) -> bool:
    parts = urlsplit(url)
    return not (parts.scheme or parts.netloc or url.startswith(("#", "mailto:", "data:")))


def _broken_links(html: Path) -> list[str]:
    """Every relative href/src of every page points to a file that exists, and every
    #fragment into a page to an id on it."""
    # _static holds the theme's files, templates among them, not pages
    pages = {p: _parse(p) for p in html.rglob("*.html") if "_static" not in p.parts}
    broken = []
    for path, page in pages.items():
        for url in page.links + page.images:
            parts = urlsplit(url)
            if url.startswith("#") and len(url) > 1:
                target = path
            elif _internal(url):
                target = (path.parent / unquote(parts.path)).resolve()
                if parts.path == "" or parts.path.endswith("/"):
                    target = target / "index.html"
            else:
                continue
            rel = path.relative_to(html)
            if not target.exists():
                broken.append(f"{rel}: {url} (no file)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{rel}: {url} (no id)")
    return broken


def _answer_count(lesson: Path) -> int:
    text = lesson.read_text(encoding="utf-8")
    answers = re.split(r"^#+ worked answers\s*$", text, flags=re.M | re.I)
    if len(answers) < 2:
        return 0
    return len(re.findall(r"^\*\*\d+\.?\*\*", answers[1].split("\n## ", 1)[0], re.M))


# -- the structure build (default suite) -------------------------------------------------


def test_lessons_found() -> None:
    assert len(LESSONS) >= 10, LESSONS


def test_front_page_is_the_readme(structure: Site) -> None:
    readme = structure.html / "README.html"
    assert readme.exists()
    index = _parse(structure.html / "index.html")
    assert set(index.links) == {"README.html"}, "index.html should redirect to the README"
    text = readme.read_text(encoding="utf-8")
    assert "bit-exact simulator" in text
    page = _parse(readme)
    assert page.images, "the README's figure is missing"
    for stem in (p.stem for p in LESSONS):  # the navigation lists every lesson
        assert f"lessons/{stem}.html" in page.links, stem


def test_every_lesson_has_a_page(structure: Site) -> None:
    for lesson in LESSONS:
        assert (structure.html / "lessons" / f"{lesson.stem}.html").exists(), lesson.stem


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_answers_are_folded(structure: Site, lesson: Path) -> None:
    """Every "**N.**" answer of the Worked answers section is its own closed dropdown."""
    want = _answer_count(lesson)
    assert want >= 3, "a lesson has 3-5 exercises with worked answers"
    page = _parse(structure.html / "lessons" / f"{lesson.stem}.html")
    assert page.classes.count("fpsim-answer") == want
    text = (structure.html / "lessons" / f"{lesson.stem}.html").read_text(encoding="utf-8")
    assert "Answer 1" in text and f"Answer {want}" in text


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_notebook_download(structure: Site, lesson: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    href = f"../_sources/lessons/{lesson.stem}.ipynb"
    page = _parse(structure.html / "lessons" / f"{lesson.stem}.html")
    assert href in page.links
    path = structure.html / "_sources" / "lessons" / f"{lesson.stem}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "code" and "%pip install" in first.source
    assert 'find_spec("fpsim") is None' in first.source
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    # the rest is the lesson itself, fast-mode switch included
    assert 'FAST = os.environ.get("FPSIM_FAST") == "1"' in nb.cells[2].source + "".join(
        c.source for c in nb.cells[1:4]
    )


def test_api_pages(structure: Site) -> None:
    for module in API_MODULES:
        path = structure.html / "docs" / "api" / "generated" / f"{module}.html"
        assert path.exists(), module
        ids = _parse(path).ids
        mod = __import__(module, fromlist=["__all__"])
        own = [n for n in mod.__all__ if f"{module}.{n}" in ids]
        assert len(own) >= len(mod.__all__) // 2, (module, sorted(ids)[:20])
    ids = _parse(structure.html / "docs" / "api" / "generated" / "fpsim.html").ids
    for name in ("fpsim.quantize", "fpsim.Format", "fpsim.encode", "fpsim.decode"):
        assert name in ids


def test_no_broken_internal_links(structure: Site) -> None:
    assert _broken_links(structure.html) == []


def test_no_reference_warnings(structure: Site) -> None:
    """Links between pages, toctrees and images: Sphinx warns when one does not resolve."""
    bad = [
        line
        for line in structure.warnings.splitlines()
        if re.search(
            r"xref_missing|Could not find document|toctree|not included in any toctree|"
            r"undefined label|image file not readable|unknown document",
            line,
        )
    ]
    assert bad == []


# -- the executed build (slow) ------------------------------------------------------------


def _executed_notebook(site: Site, lesson: Path):
    """The lesson as executed by the build, with its outputs, from the jupyter-cache
    (MyST-NB keeps executed notebooks there; a notebook whose execution failed has no
    cache record)."""
    jupytext = pytest.importorskip("jupytext")
    jupyter_cache = pytest.importorskip("jupyter_cache")
    cache = jupyter_cache.get_cache(site.cache)
    _, nb = cache.merge_match_into_notebook(jupytext.read(lesson))
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_page_holds_its_figures(executed: Site, lesson: Path) -> None:
    """Every PNG the executed notebook produced is an <img> on the page, and the file is
    there; no cell raised (nb_execution_raise_on_error would also have failed the build)."""
    nb = _executed_notebook(executed, lesson)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= 1, "a lesson draws figures"
    page_path = executed.html / "lessons" / f"{lesson.stem}.html"
    images = [s for s in _parse(page_path).images if "_images/" in s]
    assert len(images) == figures
    for src in images:
        assert (page_path.parent / src).resolve().stat().st_size > 1000, src
    assert "Traceback" not in page_path.read_text(encoding="utf-8")


@pytest.mark.slow
def test_executed_site_links(executed: Site) -> None:
    assert "Executing notebook failed" not in executed.warnings
    assert _broken_links(executed.html) == []


# -- screenshots, when Chromium is installed -----------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium)")
@pytest.mark.parametrize("width,height", [(1366, 900), (390, 844)], ids=["laptop", "phone"])
def test_screenshots(structure: Site, tmp_path: Path, width: int, height: int) -> None:
    """Headless Chromium renders the front page, a lesson and an API page. The PNGs are
    kept in the test's tmp folder to look at (pytest --basetemp=DIR)."""
    pages = {
        "front": structure.html / "README.html",
        "lesson": structure.html / "lessons" / f"{LESSONS[0].stem}.html",
        "api": structure.html / "docs" / "api" / "generated" / "fpsim.html",
    }
    for name, page in pages.items():
        png = tmp_path / f"{name}_{width}.png"
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                page.as_uri(),
            ],  # fmt: skip
            capture_output=True,
            timeout=120,
            check=True,
        )
        assert png.stat().st_size > 10_000, f"{name} at {width}px looks blank"
