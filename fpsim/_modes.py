"""The rounding modes, described once: the table every part of fpsim reads.

Rounding a value that lies between two neighbours ``lo < |x| < hi`` of a format's grid
(magnitudes) means choosing one of them. A mode is fully described by two answers:

* **how the magnitude steps** when ``x`` is not on the grid: to the *nearest*
  neighbour (ties to the even one), *randomly* (up with probability
  ``(|x| - lo) / (hi - lo)``), or in a fixed *direction* that may depend on the sign
  (``"up"`` = toward +inf rounds positive magnitudes up and negative ones down);
* **which way overflow goes**: a result beyond ``fmt.max`` either *overflows* (to inf,
  NaN or max, as the format's convention says) or stays at ``max``. A mode that never
  rounds a magnitude up past ``max`` (toward zero) keeps ``max``.

:func:`fpsim.quantize` (the JAX core), :mod:`fpsim.stats` (which inputs overflow),
:mod:`fpsim.reference` (exact Fraction rounding, the tests' oracle and the CLI) all read
:data:`MODES`. Adding a mode is one entry here plus its core arithmetic when its step is
new. This module is plain Python: no JAX, no numpy.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Step = Literal["nearest", "random", "directed"]


@dataclasses.dataclass(frozen=True)
class RoundingMode:
    """One rounding mode.

    Attributes:
      name: the string users pass (``rounding="toward_zero"``).
      step: ``"nearest"`` (ties to even), ``"random"`` (stochastic rounding) or
        ``"directed"`` (the direction below).
      up_positive: directed modes: an inexact *positive* value's magnitude rounds up.
      up_negative: directed modes: an inexact *negative* value's magnitude rounds up.
      summary: one line for tables and error messages.
    """

    name: str
    step: Step
    up_positive: bool = False
    up_negative: bool = False
    summary: str = ""

    @property
    def deterministic(self) -> bool:
        """Whether the result depends only on the input (not on random bits)."""
        return self.step != "random"

    @property
    def needs_key(self) -> bool:
        """Whether the mode draws random bits, so the caller must pass a key."""
        return self.step == "random"

    def magnitude_up(self, negative: bool) -> bool:
        """Directed modes: whether an inexact magnitude of this sign rounds up."""
        return self.up_negative if negative else self.up_positive

    def overflows(self, negative: bool) -> bool:
        """Whether a result of this sign past ``max`` overflows (else it stays ``max``).

        Nearest and stochastic rounding can land on the virtual grid point past
        ``max``, so they overflow; a directed mode overflows exactly when it rounds
        that sign's magnitude up.
        """
        return self.step != "directed" or self.magnitude_up(negative)


#: Every rounding mode, by name, in the order fpsim lists them.
MODES: dict[str, RoundingMode] = {
    m.name: m
    for m in (
        RoundingMode("nearest", "nearest", summary="to the nearest value, ties to even"),
        RoundingMode("toward_zero", "directed", summary="truncate: magnitude down"),
        RoundingMode("up", "directed", up_positive=True, summary="toward +inf"),
        RoundingMode("down", "directed", up_negative=True, summary="toward -inf"),
        RoundingMode(
            "stochastic", "random", summary="up with probability (|x| - lo) / (hi - lo)"
        ),
    )
}

#: The names, in order (``fpsim.ROUNDING_MODES``).
MODE_NAMES: tuple[str, ...] = tuple(MODES)


def get_mode(name: str) -> RoundingMode:
    """The :class:`RoundingMode` called ``name``; ValueError naming the valid ones."""
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown rounding mode {name!r}; valid: {', '.join(MODE_NAMES)}"
        ) from None
