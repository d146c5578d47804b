"""The number line of a small format: every value it can hold, and its regions."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fpsim.codec import all_values
from fpsim.formats import Format, get_format
from fpsim.plot._style import band_span, new_axes, number_label, pow2_label

_OVERFLOW_GOES_TO = {
    "ieee": "overflow: rounds to ±inf",
    "fn": "overflow: becomes NaN (no inf)",
    "fnuz": "overflow: becomes NaN (no inf)",
    "none": "overflow: clamps to ±max",
}
_KIND_STYLE = {  # label, colour, marker, size
    "zero": ("zero", "#000000", "o", 7),
    "subnormal": ("subnormal value", "#0072B2", "d", 6),
    "normal": ("normal value", "#009E73", "|", 16),
}


class NumberLine(NamedTuple):
    """What a number line draws: every finite value of a format and its class.

    Attributes:
      values: every finite value, ascending (one zero).
      kinds: ``"zero"``, ``"subnormal"`` or ``"normal"`` for each value.
      min_subnormal, min_normal, max: the format's band edges.
    """

    values: np.ndarray
    kinds: np.ndarray
    min_subnormal: float
    min_normal: float
    max: float


def number_line_data(fmt: Format | str) -> NumberLine:
    """Every finite value of ``fmt`` (at most 16 bits), classified."""
    fmt = get_format(fmt)
    values = all_values(fmt).astype(np.float64)
    mag = np.abs(values)
    kinds = np.where(
        mag == 0, "zero", np.where(mag < fmt.min_normal, "subnormal", "normal")
    )
    return NumberLine(values, kinds, fmt.min_subnormal, fmt.min_normal, fmt.max)


def _ticks(lo_k: int, hi_k: int, per_side: int = 8) -> list[int]:
    step = max(1, math.ceil((hi_k - lo_k) / per_side))
    ks = list(range(hi_k, lo_k - 1, -step))[::-1]
    return ks


def number_line(fmt: Format | str, *, ax=None, title: str | None = None, legend=True):
    """Draw every value of a format of at most 10 bits on a symmetric log2 axis.

    The axis is linear between ``-min_subnormal`` and ``+min_subnormal`` (so zero
    fits) and logarithmic in base 2 beyond, so each tick step doubles the magnitude:
    the tiny subnormals and the largest values are both visible. Shaded bands mark the
    subnormal range (hatched), the normal range, and the overflow region past ``max``
    (with what overflow turns into in this format).

    Args:
      fmt: the format (at most 10 bits; 8 or fewer reads best).
      ax: axes to draw into; a new figure when None.
      title: the title; a default one names the format's layout.
      legend: whether to draw the legend.

    Returns:
      The Axes. Each class of value is one ``Line2D`` with gid ``"values:<kind>"``,
      each band one patch with gid ``"band:<name>"``.
    """
    fmt = get_format(fmt)
    if fmt.bits > 10:
        raise ValueError(f"{fmt.name} has {fmt.bits} bits; a number line shows at most 10")
    data = number_line_data(fmt)
    ax = new_axes(ax, figsize=(12, 2.6))
    lim = 2.0 * fmt.max
    ax.set_xscale("symlog", base=2, linthresh=fmt.min_subnormal, linscale=1.0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-1, 1.6)
    spans = {
        "underflow": [(-fmt.min_subnormal, fmt.min_subnormal)],
        "subnormal": [
            (-fmt.min_normal, -fmt.min_subnormal),
            (fmt.min_subnormal, fmt.min_normal),
        ],
        "normal": [(-fmt.max, -fmt.min_normal), (fmt.min_normal, fmt.max)],
        "overflow": [(-lim, -fmt.max), (fmt.max, lim)],
    }
    labels = {
        "underflow": "rounds to ±0 or ±min subnormal",
        "subnormal": "subnormal range",
        "normal": "normal range",
        "overflow": _OVERFLOW_GOES_TO[fmt.convention],
    }
    for name, pieces in spans.items():
        for i, (a, b) in enumerate(pieces):
            if fmt.mantissa_bits == 0 and name == "subnormal":
                break
            label = None if i else labels[name]
            band_span(ax, name, a, b, ymin=0.2, ymax=0.6, alpha=0.25, label=label)
    for kind in ("normal", "subnormal", "zero"):
        sel = data.kinds == kind
        label, color, marker, size = _KIND_STYLE[kind]
        ax.plot(
            data.values[sel],
            np.zeros(sel.sum()),
            linestyle="none",
            marker=marker,
            markersize=size,
            color=color,
            gid=f"values:{kind}",
            label=f"{label} ({sel.sum()})",
        )
    ax.axhline(0, color="0.3", linewidth=0.6, zorder=0)
    marks = [(fmt.min_normal, "min normal"), (fmt.max, "max")]
    if fmt.mantissa_bits:
        marks.insert(0, (fmt.min_subnormal, "min subnormal"))
    for i, (x, text) in enumerate(marks):
        high = i % 2 == 0 and len(marks) == 3  # stagger the two labels near zero
        ax.axvline(
            x,
            ymin=0.15,
            ymax=0.77 if high else 0.65,
            color="0.2",
            linewidth=0.8,
            linestyle="--",
        )
        ax.annotate(
            f"{text} = {number_label(x)}",
            (x, 1.1 if high else 0.8),
            ha="right" if text == "max" else "center",  # clear of the legend on the right
            va="bottom",
            fontsize=8,
        )
    lo_k, hi_k = int(math.log2(fmt.min_subnormal)), math.ceil(math.log2(fmt.max))
    ks = [k for k in _ticks(lo_k, hi_k) if k > lo_k]  # min subnormal is labelled above
    ticks = [-(2.0**k) for k in ks[::-1]] + [0.0] + [2.0**k for k in ks]
    tick_labels = (
        ["$-$" + pow2_label(k) for k in ks[::-1]] + ["0"] + [pow2_label(k) for k in ks]
    )
    ax.set_xticks(ticks, tick_labels, fontsize=8)
    ax.set_xticks([s * 2.0**k for k in range(lo_k, hi_k + 1) for s in (-1, 1)], minor=True)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    n = len(data.values)
    ax.set_title(
        title
        or (
            f"{fmt.name.upper()}: {fmt.bits} bits = 1 sign + {fmt.exponent_bits} "
            f"exponent + {fmt.mantissa_bits} mantissa, {n} distinct finite values"
        ),
        fontsize=10,
    )
    ax.set_xlabel(
        "value (symmetric log scale: each tick step multiplies the magnitude by "
        "the same power of 2; linear around 0)",
        fontsize=8,
    )
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return ax
