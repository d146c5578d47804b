"""Histogram of log2|x| held against a format's range (Micikevicius et al. 2017, Fig. 3).

The figure that motivated loss scaling: most activation gradients of a network trained
in FP32 lie below FP16's smallest subnormal, so stored in FP16 they would become zero.
Here it is for any array or pytree and any format.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fpsim.formats import Format, get_format
from fpsim.plot._style import BANDS, band_span, new_axes, number_label, pow2_label
from fpsim.stats import Log2Histogram, log2_histogram, value_counts


class BandFractions(NamedTuple):
    """Where the values fall in a format's range, as fractions of the nonzero values.

    One basis everywhere (figures, ``fpsim demo``'s "grads lost", ``fpsim.nn``'s
    ``grad_underflow``): the four bands are fractions of the *nonzero finite* values,
    so they sum to 1. Exact zeros stay zero in every format and are counted apart.

    Attributes:
      underflow: nonzero values that would be flushed to zero.
      subnormal: values that would become subnormal (fewer significant bits).
      normal: values that keep full relative precision.
      overflow: finite values too large: inf, NaN or max, depending on the format.
      zero: inputs that are exactly zero, as a fraction of all values.
      nonfinite: inputs that are inf or NaN, as a fraction of all values.
      total: the number of values (zeros and inf/NaN included).
      nonzero: the number of nonzero finite values (the basis of the four bands).
      exact: True when computed from the values (rounding to nearest, exact);
        False when estimated from a histogram by binade (a bin counts in the band its
        lower edge lies in, except that the binade just below the smallest subnormal
        counts as subnormal: rounding to nearest lifts it to min_subnormal).
    """

    underflow: float
    subnormal: float
    normal: float
    overflow: float
    zero: float
    nonfinite: float
    total: int
    nonzero: int
    exact: bool


def _band_of_bins(edges: np.ndarray, fmt: Format) -> np.ndarray:
    # Rounding to nearest, the binade [min_subnormal/2, min_subnormal) rounds up to
    # min_subnormal (all of it but its lower edge, a tie that goes to 0): it counts as
    # subnormal, not as flushed.
    lower = edges[:-1]
    return np.where(
        lower < math.log2(fmt.min_subnormal) - 1,
        "underflow",
        np.where(
            lower < fmt.emin,
            "subnormal",
            np.where(lower < math.log2(fmt.max), "normal", "overflow"),
        ),
    )


def band_fractions(data, fmt: Format | str) -> BandFractions:
    """The fraction of ``data`` in each band of ``fmt``'s range.

    Args:
      data: an array or pytree of arrays (classified exactly, rounding to nearest, by
        :func:`fpsim.value_counts`), or a :class:`fpsim.Log2Histogram` (estimated by
        binade).
      fmt: the format.
    """
    fmt = get_format(fmt)
    if isinstance(data, Log2Histogram):
        counts = np.asarray(data.counts, np.int64)
        zeros, nonfinite = int(data.zeros), int(data.nonfinite)
        nonzero = int(counts.sum())
        total = nonzero + zeros + nonfinite
        bands = _band_of_bins(np.asarray(data.edges), fmt)
        n, m = max(nonzero, 1), max(total, 1)
        per = {b: int(counts[bands == b].sum()) / n for b in BANDS}
        return BandFractions(
            **per, zero=zeros / m, nonfinite=nonfinite / m, total=total,
            nonzero=nonzero, exact=False,
        )  # fmt: skip
    c = value_counts(data, fmt)
    total = int(c.total)
    nonzero = int(c.underflow) + int(c.subnormal) + int(c.normal) + int(c.overflow)
    n, m = max(nonzero, 1), max(total, 1)
    return BandFractions(
        underflow=int(c.underflow) / n,
        subnormal=int(c.subnormal) / n,
        normal=int(c.normal) / n,
        overflow=int(c.overflow) / n,
        zero=int(c.zero) / m,
        nonfinite=(int(c.inf) + int(c.nan)) / m,
        total=total,
        nonzero=nonzero,
        exact=True,
    )


def _histogram_for(data, fmt: Format, lo, hi) -> Log2Histogram:
    if isinstance(data, Log2Histogram):
        return data
    if lo is None or hi is None:  # cover the data and the format's range, 3 binades spare
        full = log2_histogram(data)
        nz = np.flatnonzero(np.asarray(full.counts))
        edges = np.asarray(full.edges)
        d_lo = int(edges[nz[0]]) if nz.size else 0
        d_hi = int(edges[nz[-1] + 1]) if nz.size else 0
        f_lo = math.floor(math.log2(fmt.min_subnormal))
        f_hi = math.ceil(math.log2(fmt.max))
        lo = min(d_lo, f_lo) - 3 if lo is None else lo
        hi = max(d_hi, f_hi) + 3 if hi is None else hi
    return log2_histogram(data, lo=int(lo), hi=int(hi))


def range_histogram(
    data,
    fmt: Format | str,
    *,
    ax=None,
    lo: int | None = None,
    hi: int | None = None,
    what: str = "values",
    logy: bool = False,
    title: str | None = None,
):
    """Histogram of ``log2|x|`` with the bands of ``fmt``'s range and their fractions.

    One bar per binade ``[2**k, 2**(k+1))``; the first bar also holds every smaller
    value and the last every larger one (they are hatched and labelled so). Background
    bands mark where values would be flushed to zero (below ``fmt.min_subnormal / 2``:
    rounding to nearest lifts the binade just below ``min_subnormal`` up to it), become
    subnormal (up to ``fmt.min_normal``), stay normal (up to ``fmt.max``), or overflow.
    Each band is labelled with its share of the *nonzero* values, as
    :func:`band_fractions` counts them: what is drawn is what is counted.

    Args:
      data: an array or pytree of arrays, or a :class:`fpsim.Log2Histogram`.
      fmt: the format whose range to show.
      ax: axes to draw into; a new figure when None.
      lo, hi: integer log2 edges of the histogram; default: the data's extent and the
        format's range, with three binades to spare (ignored for a histogram).
      what: what the values are, for the title (e.g. ``"activation gradients"``).
      logy: logarithmic count axis.
      title: overrides the default title.

    Returns:
      The Axes. The bars are ``ax.containers[0]``; the band patches have gids
      ``"band:underflow"``, ``"band:subnormal"``, ``"band:normal"``, ``"band:overflow"``.
    """
    fmt = get_format(fmt)
    hist = _histogram_for(data, fmt, lo, hi)
    fr = band_fractions(data, fmt)
    counts, edges = np.asarray(hist.counts), np.asarray(hist.edges, np.float64)
    ax = new_axes(ax, figsize=(10, 4.8))
    bars = ax.bar(
        edges[:-1],
        counts,
        width=1.0,
        align="edge",
        color="0.25",
        edgecolor="white",
        linewidth=0.5,
        label="values per binade",
        zorder=3,
    )
    left, right = float(edges[0]), float(edges[-1])
    cuts = [math.log2(fmt.min_subnormal), float(fmt.emin), math.log2(fmt.max)]
    flush_edge = cuts[0] - 1  # min_subnormal / 2: below it, rounding to nearest gives 0
    spans = {
        "underflow": (left, flush_edge),
        "subnormal": (flush_edge, cuts[1]),
        "normal": (cuts[1], cuts[2]),
        "overflow": (cuts[2], right),
    }
    for i, (name, (a, b)) in enumerate(spans.items()):
        label, color, _ = BANDS[name]
        band_span(ax, name, a, b, alpha=0.3, zorder=1)
        if b <= left or a >= right:
            continue
        a, b = max(a, left), min(b, right)
        x, ha = (a + b) / 2, "center"
        if b - a < 0.12 * (right - left) and name in ("underflow", "overflow"):
            x, ha = (left + 0.3, "left") if name == "underflow" else (right - 0.3, "right")
        ax.text(
            x,
            0.97 - 0.11 * (i % 2),
            f"{label}\n{100 * getattr(fr, name):.1f}% of nonzero",
            transform=ax.get_xaxis_transform(),
            ha=ha,
            va="top",
            fontsize=8,
            zorder=4,
            bbox={"facecolor": "white", "edgecolor": color, "alpha": 0.9},
        )
    names = ("min subnormal", "min normal", "max")
    dashes = ("--", "-.", ":")
    values = (fmt.min_subnormal, fmt.min_normal, fmt.max)
    for x, name, value, ls in zip(cuts, names, values, dashes, strict=True):
        ax.axvline(
            x, color="black", linestyle=ls, linewidth=1.2, zorder=2,
            label=f"{name} = {number_label(value)}", gid=f"edge:{name}",
        )  # fmt: skip
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, fontsize=8, frameon=False
    )
    _mark_end_bars(ax, bars, counts, edges)  # after the legend, which shows a plain bar
    ax.set_xlim(left, right)
    top = (max(counts.max(), 1) if counts.size else 1) * (3 if logy else 1.35)
    if logy:  # set the scale first: limits set on a linear axis include the bars' 0
        ax.set_yscale("log")
        ax.set_ylim(0.7, top)
    else:
        ax.set_ylim(0, top)
    step = max(1, math.ceil((right - left) / 16))
    ks = [k for k in range(math.ceil(left), math.floor(right) + 1) if k % step == 0]
    ax.set_xticks(ks, [pow2_label(k) for k in ks], fontsize=8)
    ax.set_xlabel("|x|  (log2 scale, one bar per binade $[2^k, 2^{k+1})$)", fontsize=9)
    ax.set_ylabel("number of values")
    note = "" if fr.exact else " (estimated by binade)"
    extra = []
    if fr.zero:
        extra.append(f"{100 * fr.zero:.1f}% exact zeros")
    if fr.nonfinite:
        extra.append(f"{100 * fr.nonfinite:.1f}% inf/NaN")
    ax.set_title(
        title
        or (
            f"{what}: {fr.nonzero:,} nonzero values against the range of {fmt.name}"
            f"{note}" + (f"; not shown: {', '.join(extra)}" if extra else "")
        ),
        fontsize=10,
    )
    return ax


def _mark_end_bars(ax, bars, counts, edges) -> None:
    """Hatch and label the end bars: they hold every value beyond the histogram."""
    if not len(counts):
        return
    ends = [(0, f"all < {pow2_label(edges[1])}"), (len(counts) - 1, "")]
    ends[1] = (len(counts) - 1, f"all ≥ {pow2_label(edges[-2])}")
    for i, text in ends:
        if counts[i] == 0:
            continue
        bars[i].set_hatch("..")
        bars[i].set_facecolor("0.55")
        ax.annotate(
            text, (edges[i] + 0.5, counts[i]), xytext=(0, 3), textcoords="offset points",
            ha="left" if i == 0 else "right", va="bottom", fontsize=8, zorder=5,
            gid="end_bar",
        )  # fmt: skip
