"""Sphinx configuration of the fpsim web site: the course, the README and the API reference.

The source directory is the repository root (``make -C docs html`` runs
``sphinx-build -c docs .. _build/html``), so the site is built from the files as they are:
``README.md`` is the front page (its links to ``lessons/`` and its figures resolve as they
do on the forge), every ``lessons/[0-9]*.md`` notebook is a page, executed at build time by
MyST-NB, and ``docs/api/`` documents the public modules from their docstrings.

Lessons run in **fast mode** when the environment has ``FPSIM_FAST=1`` (the switch the
lessons and ``tests/test_lessons.py`` use); the executed notebooks are cached by
jupyter-cache under ``docs/_build/.jupyter_cache/{full,fast}``, so a rebuild re-executes
only the lessons whose code changed. The kernel and autodoc import the fpsim of this
checkout (``PYTHONPATH`` is set to the repository root below).

The site-specific behaviour (front page toctree, folded worked answers, the
downloadable notebooks) lives in ``docs/_ext/fpsim_site.py``.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
FAST = os.environ.get("FPSIM_FAST") == "1"

# autodoc and the lesson kernels (which inherit this environment) import this checkout.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)
# Figures as inline PNGs, whatever MPLBACKEND the caller's shell sets (e.g. Agg).
os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

_pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# -- Project -------------------------------------------------------------------------------

project = "fpsim"
author = "the fpsim authors"
copyright = "the fpsim authors"  # noqa: A001 (Sphinx's name)
release = _pyproject["version"]
version = release

# -- Sources -------------------------------------------------------------------------------

root_doc = "README"
# Only these files are pages (the source directory is the repository root).
include_patterns = [
    "README.md",
    "lessons/*.md",
    "benchmarks/RESULTS.md",
    "ARCHITECTURE.md",
    "docs/**",
]
exclude_patterns = [
    "docs/_build/**",
    "docs/_templates/**",
    "docs/_ext/**",
    "docs/README.md",
    "**/.ipynb_checkpoints",
]
# absolute: autosummary resolves templates_path against the source directory (the root)
templates_path = [str(DOCS / "_templates")]

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_togglebutton",
    "fpsim_site",
]

# -- MyST and notebook execution -----------------------------------------------------------

myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "cache"
nb_execution_cache_path = str(
    DOCS / "_build" / ".jupyter_cache" / ("fast" if FAST else "full")
)
nb_execution_timeout = 300  # per cell; a whole lesson stays under 90 s in fast mode
nb_execution_raise_on_error = True  # a failing cell (a lesson's assert) fails the build
nb_execution_show_tb = True
nb_execution_in_temp = False  # run in lessons/, as a learner does
nb_merge_streams = True

# -- API reference -------------------------------------------------------------------------

autosummary_generate = True
autosummary_ignore_module_all = False  # document what each module's __all__ exports
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML ----------------------------------------------------------------------------------

# `x` in a docstring is code, as in the Markdown the lessons use
default_role = "code"

html_theme = "sphinx_book_theme"
html_title = "fpsim: floating point for machine learning"
html_static_path = ["_static"]
html_css_files = ["fpsim.css"]
html_additional_pages = {"index": "fpsim_redirect.html"}  # / -> README.html
html_context = {"fpsim_root_page": f"{root_doc}.html"}
html_theme_options = {
    "home_page_in_toc": True,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_show_sourcelink = False
html_last_updated_fmt = None

# -- fpsim_site (docs/_ext/fpsim_site.py) --------------------------------------------------

fpsim_fast = FAST  # a change of mode re-reads every page
# Where the first cell of a downloaded lesson installs fpsim from. The PyPI name "fpsim"
# belongs to an unrelated project (a family-planning simulator), so it is never used:
# set [project.urls] Repository in pyproject.toml, or FPSIM_INSTALL_SOURCE at build time.
_repository = _pyproject.get("urls", {}).get("Repository", "")
fpsim_install_source = os.environ.get("FPSIM_INSTALL_SOURCE") or (
    f"git+{_repository}" if _repository else ""
)

# -- The API pages' members (read by _templates/autosummary/module.rst) --------------------

#: The public modules, one page each (docs/api/index.md lists them in this order).
API_MODULES = [
    "fpsim", "fpsim.numerics", "fpsim.stats", "fpsim.nn", "fpsim.optim", "fpsim.plot",
]  # fmt: skip


def _attr_docs() -> dict[str, str]:
    """The ``#:`` comments above module-level constants, by name, across fpsim's modules
    (a constant's docstring would otherwise be its type's)."""
    from sphinx.pycode import ModuleAnalyzer

    docs: dict[str, str] = {}
    for modname in sorted(m for m in sys.modules if m == "fpsim" or m.startswith("fpsim.")):
        try:
            found = ModuleAnalyzer.for_module(modname).find_attr_docs()
        except Exception:  # noqa: BLE001 (no source: nothing to read)
            continue
        for (scope, name), lines in found.items():
            if scope == "" and "".join(lines).strip():
                docs.setdefault(name, " ".join(line.strip() for line in lines).strip())
    return docs


def _short_value(obj: object) -> str:
    """A constant's repr, short and the same in every build (config values are compared
    between builds: a changed one re-reads every page)."""
    value = re.sub(r" at 0x[0-9a-f]+", "", repr(obj))
    if len(value) <= 100:
        return value
    size = f" of {len(obj)}" if hasattr(obj, "__len__") else ""
    return f"<{type(obj).__name__}{size}>"


def _api_members() -> dict[str, list[dict[str, str]]]:
    """Each module's ``__all__``: name, kind (class/function/data), the value and doc of a
    constant, and where a name is documented when the module only re-exports it (fpsim
    re-exports numerics and stats)."""
    import importlib
    import inspect

    modules = {name: importlib.import_module(name) for name in API_MODULES}
    attr_docs = _attr_docs()
    members = {}
    for name, module in modules.items():
        rows = []
        for attr in module.__all__:
            obj = getattr(module, attr)
            home = ""
            if name == "fpsim":
                homes = [o for o, m in modules.items() if o != name and attr in m.__all__]
                home = homes[0] if homes else ""
            if inspect.isclass(obj):
                kind = "class"
            elif callable(obj) and type(obj).__module__ not in ("typing", "types"):
                kind = "function"
            else:
                kind = "data"
            rows.append(
                {
                    "name": attr,
                    "kind": kind,
                    "home": home,
                    "value": _short_value(obj) if kind == "data" else "",
                    "doc": attr_docs.get(attr, ""),
                }
            )
        members[name] = rows
    return members


def _skip_fields(app, what, name, obj, skip, options):
    """NamedTuple fields are documented by the class docstring's Attributes section
    (napoleon); their descriptors ("Alias for field number 0") would list them twice."""
    if what == "class" and type(obj).__name__ == "_tuplegetter":
        return True
    return None


_ABS = re.compile(r"(?<![\\`|])\|([^|`\s][^|`]*?)\|(?![|`])")


def _escape_abs_bars(app, what, name, obj, options, lines):
    """Docstrings write ``|x|`` for an absolute value; RST would read it as a substitution
    reference. Outside ``literals``, escape the bars (no docstring uses substitutions)."""
    for i, line in enumerate(lines):
        parts = line.split("``")
        parts[::2] = [_ABS.sub(r"\\|\1\\|", part) for part in parts[::2]]
        lines[i] = "``".join(parts)


def setup(app):
    app.connect("autodoc-skip-member", _skip_fields)
    app.connect("autodoc-process-docstring", _escape_abs_bars)


autosummary_context = {"fpsim_api": _api_members()}
