"""Spacing (ulp) and relative rounding error across magnitudes, several formats at once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fpsim.formats import Format, get_format
from fpsim.plot._style import new_axes, pow2_label, style
from fpsim.rounding import ulp

DEFAULT_FORMATS = ("fp32", "tf32", "bf16", "fp16", "e5m2", "e4m3")


class Spacing(NamedTuple):
    """The grid spacing of a format, one binade ``[2**k, 2**(k+1))`` at a time.

    Attributes:
      x: the start ``2**k`` of each binade from ``min_subnormal`` up, then ``max``.
      ulp: ``fpsim.ulp(x, fmt)``: the distance between neighbouring values in the
        binade (constant inside it).
      relative_error: ``ulp / (2 x)``: the largest relative error of rounding to
        nearest for a value in the binade: ``eps / 2`` (the unit roundoff) in the normal
        range, doubling with each binade down through the subnormals to 1/2.
    """

    x: np.ndarray
    ulp: np.ndarray
    relative_error: np.ndarray


def spacing_data(fmt: Format | str) -> Spacing:
    """Spacing and worst relative rounding error of ``fmt``, binade by binade."""
    fmt = get_format(fmt)
    lo, hi = round(math.log2(fmt.min_subnormal)), math.floor(math.log2(fmt.max))
    x = np.append(np.exp2(np.arange(lo, hi + 1, dtype=np.float64)), fmt.max)
    u = np.asarray(ulp(x.astype(np.float32), fmt), np.float64)
    starts = np.exp2(np.floor(np.log2(x)))
    return Spacing(x, u, u / (2 * starts))


def _draw(formats, ax, field: str):
    for i, fmt in enumerate(get_format(f) for f in formats):
        data = spacing_data(fmt)
        y = getattr(data, field)
        s = style(i)
        ax.plot(
            data.x,
            y,
            color=s["color"],
            linestyle=s["linestyle"],
            marker=s["marker"],
            markevery=max(1, len(y) // 5),
            markersize=5,
            linewidth=1.4,
            label=f"{fmt.name} (eps $2^{{{-fmt.mantissa_bits}}}$, max {fmt.max:.3g})",
            gid=f"{field}:{fmt.name}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.grid(True, which="major", color="0.85", linewidth=0.5)
    lo, hi = ax.get_xlim()
    ks = range(math.ceil(math.log2(lo)), math.floor(math.log2(hi)) + 1)
    ks = [k for k in ks if k % 16 == 0]
    ax.set_xticks([2.0**k for k in ks], [pow2_label(k) for k in ks])
    return ax


def ulp_plot(formats: Sequence[Format | str] = DEFAULT_FORMATS, *, ax=None):
    """The spacing between neighbouring values (one ulp) against magnitude, log-log.

    A staircase per format: the spacing doubles with each binade, is constant across
    the subnormal range (left end), and each line stops at the format's max.
    """
    ax = _draw(formats, new_axes(ax), "ulp")
    ax.set_ylabel("spacing of values (1 ulp)")
    ax.set_xlabel("magnitude |x|")
    ax.set_title("Spacing: how far apart neighbouring values are")
    ax.legend(fontsize=8, loc="upper left")
    return ax


def relative_error_plot(formats: Sequence[Format | str] = DEFAULT_FORMATS, *, ax=None):
    """Worst relative error of rounding to nearest (half an ulp over |x|), log-log.

    Flat at the unit roundoff ``eps/2`` across each format's normal range, so precision
    does not depend on magnitude there; doubling with each binade down through the
    subnormals, where precision is lost, to 1/2. The width of each line is the format's
    range, its height the format's precision.
    """
    ax = _draw(formats, new_axes(ax), "relative_error")
    yk = [k for k in range(-24, 0) if k % 4 == 0]
    ax.set_yticks([2.0**k for k in yk], [pow2_label(k) for k in yk])
    ax.set_ylabel("worst relative rounding error\nin the binade (ulp / 2^k)")
    ax.set_xlabel("magnitude |x|  (left end: smallest subnormal; right end: max)")
    ax.set_title(
        "Relative error: precision is flat over the normal range, "
        "then degrades in the subnormals"
    )
    return ax


def spacing_figure(formats: Sequence[Format | str] = DEFAULT_FORMATS):
    """Spacing and relative error of several formats, stacked, sharing the x axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 7.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    ulp_plot(formats, ax=top)
    top.set_xlabel("")
    relative_error_plot(formats, ax=bottom)
    top.legend(fontsize=8, loc="upper left", ncols=2)
    fig.suptitle(
        "Range versus precision: " + ", ".join(get_format(f).name for f in formats)
    )
    return fig
