"""What the fpsim site adds to Sphinx + MyST-NB: navigation, folded answers, notebooks.

* **Navigation.** ``README.md`` is the front page (the root document) and stays a plain
  README in the repository: the toctrees of the site (the lessons, found by the glob
  ``lessons/[0-9]*``, and the reference pages) are appended to it when Sphinx reads it.
* **Folded answers.** Every lesson ends with a ``## Worked answers`` section whose answers
  start with a bold number (``**1.** ...``) followed by text and code cells. Each answer
  becomes a collapsed "Answer N" admonition (the ``dropdown`` class of
  sphinx-togglebutton), so a reader sees the exercises first and opens one answer at a
  time. The lesson files need no site-specific markup, and run unchanged in Jupyter.
* **Notebooks to download.** Each lesson page links to ``_sources/lessons/NN_x.ipynb``
  (also the book theme's download button): the lesson converted by jupytext, without
  outputs, with a first cell that installs fpsim when it is missing (Colab, Binder,
  Kaggle, a fresh virtual environment).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Pages that are lessons: lessons/NN_topic (the syllabus lessons/README is not one).
LESSON_DOC = re.compile(r"^lessons/\d+_[^/]+$")
#: Section titles whose content is folded.
ANSWER_TITLES = ("worked answers", "answers", "solutions")
#: A paragraph that starts an answer: its first child is bold "N." (or "N").
_ANSWER_NUMBER = re.compile(r"^(\d+)\.?$")

_NAVIGATION = """

```{{toctree}}
:hidden:
:caption: Course
:glob:

About the course <lessons/README>
lessons/[0-9]*
```

```{{toctree}}
:hidden:
:caption: Reference

docs/api/index
ARCHITECTURE
benchmarks/RESULTS
```
"""

INSTALL_CELL = """\
# Run this cell first on a hosted notebook service (Colab, Binder, Kaggle) or in a fresh
# environment: it installs fpsim when it is missing; where fpsim is installed, it does
# nothing. (Not "pip install fpsim": on PyPI that name is another project.)
import importlib.util

FPSIM_SOURCE = "{source}"  # a git URL, a wheel, or the path of a clone of the repository
if importlib.util.find_spec("fpsim") is None:
    if not FPSIM_SOURCE:
        raise RuntimeError("set FPSIM_SOURCE to where fpsim installs from, then rerun")
    %pip install --quiet {{FPSIM_SOURCE}}
import fpsim

assert hasattr(fpsim, "quantize"), "this 'fpsim' is not the floating-point simulator"
"""


def _add_navigation(app: Sphinx, docname: str, source: list[str]) -> None:
    if docname == app.config.root_doc:
        source[0] += _NAVIGATION.format()


class FoldAnswers(SphinxTransform):
    """Fold each worked answer of a "Worked answers" section into a dropdown admonition."""

    default_priority = 400

    def apply(self) -> None:
        for section in list(self.document.findall(nodes.section)):
            if not section.children or not isinstance(section[0], nodes.title):
                continue
            title = section[0].astext().strip().lower()
            if title.startswith(ANSWER_TITLES):
                _fold_section(section)


def _leading(node: nodes.Element) -> list[nodes.Node]:
    """The children of ``node`` from its first one that is not blank text."""
    children = list(node.children)
    while children and isinstance(children[0], nodes.Text) and not children[0].strip():
        children.pop(0)
    return children


def _answer_number(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.paragraph):
        children = _leading(node)
        if children and isinstance(children[0], nodes.strong):
            match = _ANSWER_NUMBER.match(children[0].astext().strip())
            if match:
                return match.group(1)
    return None


def _drop_number(para: nodes.paragraph) -> None:
    """Remove the bold "N." that starts an answer (the dropdown's title says it)."""
    children = _leading(para)
    for child in para.children[: para.index(children[0]) + 1]:
        para.remove(child)
    if para.children and isinstance(para[0], nodes.Text):
        para.replace(para[0], nodes.Text(para[0].astext().lstrip()))


def _dropdown(title: str, body: list[nodes.Node]) -> nodes.admonition:
    box = nodes.admonition("", classes=["tip", "dropdown", "fpsim-answer"])
    box += nodes.title("", title)
    box.extend(body)
    return box


def _fold_section(section: nodes.section) -> None:
    """Group the section's content into answers, each starting at a "**N.**" paragraph."""
    content = list(section.children[1:])
    groups: list[tuple[str, list[nodes.Node]]] = []
    lead: list[nodes.Node] = []  # text before the first answer stays visible
    for node in content:
        if isinstance(node, nodes.section):  # a sub-heading ends the answers
            break
        number = _answer_number(node)
        if number is not None:
            _drop_number(node)
            groups.append((f"Answer {number}", [node]))
        elif groups:
            groups[-1][1].append(node)
        else:
            lead.append(node)
    if not groups:  # no numbered answers: fold the whole section into one
        if not lead:
            return
        groups, lead = [("Show the worked answers", lead)], []
    for node in content:
        if any(node is n for _, body in groups for n in body):
            section.remove(node)
    for title, body in groups:
        section += _dropdown(title, body)


def _notebook_href(docname: str) -> str:
    return "../" * docname.count("/") + f"_sources/{docname}.ipynb"


class NotebookLink(SphinxTransform):
    """Under a lesson's title: a link to the lesson as a notebook."""

    default_priority = 410

    def apply(self) -> None:
        docname = self.env.docname
        if not LESSON_DOC.match(docname):
            return
        section = next(iter(self.document.findall(nodes.section)), None)
        if section is None:
            return
        name = Path(docname).name + ".ipynb"
        link = nodes.reference("", "", refuri=_notebook_href(docname))
        link += nodes.literal("", name)
        para = nodes.paragraph("", "", classes=["fpsim-notebook"])
        para += nodes.Text("Run this lesson yourself: download ")
        para += link
        para += nodes.Text(
            " and open it in Jupyter, Colab or any notebook service; its first cell"
            " installs fpsim where it is missing."
        )
        section.insert(1, para)


def lesson_notebook(path: Path, install_source: str) -> nbformat.NotebookNode:
    """The lesson at ``path`` as a notebook without outputs, an install cell first."""
    import jupytext

    nb = jupytext.read(path)
    nb.metadata.pop("jupytext", None)
    cell = nbformat.v4.new_code_cell(INSTALL_CELL.format(source=install_source))
    cell.metadata["tags"] = ["fpsim-install"]
    nb.cells.insert(0, cell)
    for c in nb.cells:  # ids are required by nbformat 4.5 and must be unique
        c.pop("id", None)
    nb.nbformat, nb.nbformat_minor = 4, 5
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i}"
    return nb


def _write_notebook(app: Sphinx, pagename: str, templatename, context, doctree) -> None:
    if not LESSON_DOC.match(pagename) or app.builder.format != "html":
        return
    src = Path(app.env.doc2path(pagename))
    out = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(lesson_notebook(src, app.config.fpsim_install_source), out)
    context["ipynb_source"] = f"{pagename}.ipynb"  # the book theme's download button


def _warn_install_source(app: Sphinx) -> None:
    if not app.config.fpsim_install_source:
        logger.info(
            "fpsim_site: no [project.urls] Repository in pyproject.toml and no "
            "FPSIM_INSTALL_SOURCE: the notebooks' install cell asks the reader for a source"
        )


def setup(app: Sphinx) -> dict:
    app.add_config_value("fpsim_fast", False, "env")
    app.add_config_value("fpsim_install_source", "", "html")
    app.connect("source-read", _add_navigation)
    app.connect("builder-inited", _warn_install_source)
    app.add_transform(FoldAnswers)
    app.add_transform(NotebookLink)
    # before the book theme's header buttons (priority 501) read context["ipynb_source"]
    app.connect("html-page-context", _write_notebook, priority=500)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
