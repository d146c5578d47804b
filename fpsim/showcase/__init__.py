"""The showcase: fpsim's demos and the figures in ``figures/`` (the top floor).

Nothing in the library imports this package; it uses the library as a learner would.

* ``fpsim.showcase.mlp_demo``: ``fpsim demo``, one MLP on the digits data trained in
  five number formats.
* ``fpsim.showcase.lm_demo``: ``fpsim demo lm``, a character-level transformer on
  Shakespeare trained under each precision recipe.
* ``fpsim.showcase.figures``: ``fpsim figures``, every committed PNG, one function each.
* ``fpsim.showcase.halp``: :func:`run_halp_least_squares`, HALP vs SVRG vs (LP-)SGD on
  least squares, the comparison lesson 10 draws.

Modules load on first use, so importing one demo does not import the others' packages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_NAMES = {
    "run_halp_least_squares": "fpsim.showcase.halp",
    "write_figures": "fpsim.showcase.figures",
    "FIGURES": "fpsim.showcase.figures",
}
_SUBMODULES = ("figures", "halp", "lm_demo", "mlp_demo")

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"fpsim.showcase.{name}")
    raise AttributeError(f"module 'fpsim.showcase' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))


if TYPE_CHECKING:
    from fpsim.showcase import figures, halp, lm_demo, mlp_demo
    from fpsim.showcase.figures import FIGURES, write_figures
    from fpsim.showcase.halp import run_halp_least_squares
