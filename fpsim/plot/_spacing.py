"""Spacing (ulp) and relative rounding error across magnitudes, several formats at once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fpsim.formats import Format, get_format
from fpsim.plot._style import new_axes, number_label, pow2_label, style
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
            label=f"{fmt.name} (eps {pow2_label(-fmt.mantissa_bits)}, "
            f"{pow2_label(math.log2(fmt.min_subnormal))} to {number_label(fmt.max)})",
            gid=f"{field}:{fmt.name}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.grid(True, which="major", color="0.85", linewidth=0.5)
    _pow2_ticks(ax.xaxis, *ax.get_xlim())
    return ax


def _pow2_ticks(axis, lo: float, hi: float, most: int = 12) -> None:
    """Ticks at powers of two, every 1, 2, 4, 8, 16 or 32 binades, at most ``most``."""
    a, b = math.ceil(math.log2(lo)), math.floor(math.log2(hi))
    step = next((s for s in (1, 2, 4, 8, 16, 32) if (b - a) // s < most), 64)
    ks = [k for k in range(a, b + 1) if k % step == 0]
    axis.set_ticks([2.0**k for k in ks], [pow2_label(k) for k in ks])


def _zoom(axes, formats, lo: float, hi: float) -> None:
    """Show magnitudes [lo, hi] only, with y limits fitted to what is visible there."""
    for ax, field in zip(axes, ("ulp", "relative_error"), strict=True):
        ys = []
        for fmt in formats:
            d = spacing_data(fmt)
            inside = (d.x >= lo) & (d.x <= hi)
            ys.append(getattr(d, field)[inside])
        ys = np.concatenate(ys)
        ax.set_xlim(lo, hi)
        ax.set_ylim(ys.min() / 2, ys.max() * 2)
        _pow2_ticks(ax.xaxis, lo, hi)
        _pow2_ticks(ax.yaxis, ys.min() / 2, ys.max() * 2, most=9)


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
    _pow2_ticks(ax.yaxis, *ax.get_ylim(), most=9)
    ax.set_ylabel("worst relative rounding error\nin the binade: (ulp / 2) / $2^k$")
    ax.set_xlabel("magnitude |x|  (left end: smallest subnormal; right end: max)")
    ax.set_title(
        "Relative error: precision is flat over the normal range, "
        "then degrades in the subnormals"
    )
    return ax


def spacing_figure(formats: Sequence[Format | str] = DEFAULT_FORMATS, *, xlim=None):
    """Spacing and relative error of several formats, stacked, sharing the x axis.

    Args:
      formats: the formats to draw.
      xlim: the magnitudes shown, ``(lo, hi)``. Default: the range of the formats
        with at most 5 exponent bits (FP16, FP8), with a binade to spare, so that they
        are not squeezed by FP32's 2^-149 .. 2^128 (wider formats run off the sides;
        the legend gives each format's whole range). Without such formats: all.
    """
    from matplotlib.figure import Figure

    formats = [get_format(f) for f in formats]
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    ulp_plot(formats, ax=top)
    top.set_xlabel("")
    relative_error_plot(formats, ax=bottom)
    narrow = [f for f in formats if f.exponent_bits <= 5]
    if xlim is None and narrow and len(narrow) < len(formats):
        xlim = (min(f.min_subnormal for f in narrow) / 2, max(f.max for f in narrow) * 2)
    if xlim is not None:
        _zoom((top, bottom), formats, *xlim)
        bottom.set_xlabel(
            "magnitude |x|  (each line: smallest subnormal to max; wider formats "
            "continue off the sides)"
        )
    top.legend(fontsize=8, loc="upper left", ncols=2)
    fig.suptitle(
        "Range versus precision: " + ", ".join(get_format(f).name for f in formats)
    )
    return fig
