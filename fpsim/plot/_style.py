"""Shared look of fpsim's figures: a colour-blind-safe palette that also reads in grayscale.

Colours are Okabe and Ito's palette (safe for the common colour-vision deficiencies);
every series also gets its own line style, marker or hatch, so a figure printed in
grayscale still tells the series apart.
"""

from __future__ import annotations

import math

#: Okabe-Ito palette (Okabe & Ito 2008), in an order that keeps neighbours distinct.
PALETTE = OKABE_ITO = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#E69F00",  # orange
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (light: only for fills)
)
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X")

#: How each region of a format's range is drawn: (label, face colour, hatch).
BANDS = {
    "underflow": ("flushed to zero", "#E69F00", "xx"),
    "subnormal": ("subnormal", "#56B4E9", "//"),
    "normal": ("normal", "#009E73", ""),
    "overflow": ("overflow", "#D55E00", "\\\\"),
}


def band_span(ax, name: str, a: float, b: float, **kwargs):
    """Shade ``[a, b]`` as the band ``name`` of :data:`BANDS` (colour, hatch, gid).

    The gid ``"band:<name>"`` lets tests read the drawn band edges back.
    """
    _, color, hatch = BANDS[name]
    return ax.axvspan(
        a, b, facecolor=color, hatch=hatch, edgecolor=color, linewidth=0,
        gid=f"band:{name}", **kwargs,
    )  # fmt: skip


def style(i: int) -> dict:
    """Line colour, line style and marker of the i-th series.

    Use it for every series of a figure, ``ax.plot(x, y, **fpsim.plot.style(i))``, so
    that neighbouring series differ in colour (colour-blind safe), dash and marker.
    """
    return {
        "color": OKABE_ITO[i % 7],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
        "marker": MARKERS[i % len(MARKERS)],
    }


def new_figure(figsize=(8.0, 4.5), rows: int = 1, *, pyplot: bool = False):
    """A new Figure with ``rows`` stacked Axes: ``(fig, axes)``, ``axes`` an array.

    With ``pyplot=False`` (scripts, ``fpsim figures``, tests) the Figure is standalone:
    pyplot never sees it, so it is freed when dropped and never pops up. With
    ``pyplot=True`` it is a pyplot figure, which a notebook shows inline.
    """
    if pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=figsize, layout="constrained")
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(rows, 1, squeeze=False)[:, 0]


def new_axes(ax, figsize=(8.0, 4.5)):
    """``ax`` itself, or the Axes of a new pyplot figure (shown inline in notebooks)."""
    if ax is not None:
        return ax
    return new_figure(figsize, pyplot=True)[1][0]


def save(fig, path, dpi: int = 110):
    """Save ``fig`` as a reproducible PNG (no software/version stamp); returns the Path."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return path


def pow2_label(k: float) -> str:
    """``2^k`` as mathtext, for tick labels."""
    return f"$2^{{{int(k)}}}$" if float(k).is_integer() else f"$2^{{{k:g}}}$"


def number_label(x: float) -> str:
    """A short human label for a format constant: ``448``, ``2^-9``, ``65504``."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    k = math.log2(abs(x))
    if k.is_integer() and not (0 <= k <= 10):
        return pow2_label(k)
    return f"{x:g}"


def pow2_formatter(base_is_log2: bool = False):
    """A tick formatter that writes powers of two as ``2^k`` (mathtext), for axes.

    ``ax.xaxis.set_major_formatter(fpsim.plot.pow2_formatter())`` on a ``base=2`` log
    axis labels 0.25 as 2^-2; with ``base_is_log2=True`` the data are already
    exponents (a log2 histogram's x axis) and -2 is labelled 2^-2. Ticks that are not
    powers of two keep a plain label.
    """
    from matplotlib.ticker import FuncFormatter

    def fmt(x, _pos=None):
        if base_is_log2:
            return pow2_label(x)
        if x <= 0 or not math.isfinite(x):
            return f"{x:g}"
        k = math.log2(x)
        return pow2_label(k) if k.is_integer() else f"{x:g}"

    return FuncFormatter(fmt)
