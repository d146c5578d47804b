"""One block of a block-scaled format on the grid its shared scale puts it on.

A block format stores narrow elements and one scale per block: every value the block
can hold is ``element value * scale``. The scale follows the block's largest magnitude,
so the same grid serves the large and the small elements alike: elements below half its
smallest step are **flushed** to zero, and (with the OCP "floor" rule) an amax above
``element max * scale`` is **saturated** to it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fpsim.blocks._format import INT8, BlockFormat, get_block_format
from fpsim.codec import all_values, decode
from fpsim.formats import E8M0, FP32
from fpsim.plot._style import new_axes, number_label, style


class BlockGrid(NamedTuple):
    """What :func:`block_plot` draws (all float64 arrays, one block).

    Attributes:
      x: the block's values (float32, as given).
      q: what the block format gives back for them (``quantize_blocks``).
      grid: every finite value the block can hold with its scale, ascending.
      scale: the factor an element is multiplied by (MX: ``2**(code - 127)``; NVFP4:
        ``tensor_scale * block_scale`` rounded to float32). NaN for a NaN block.
      flushed: nonzero finite elements that come back as zero.
      saturated: finite elements clipped to the largest magnitude of the grid.
    """

    x: np.ndarray
    q: np.ndarray
    grid: np.ndarray
    scale: float
    flushed: np.ndarray
    saturated: np.ndarray


def _element_values(bfmt: BlockFormat) -> np.ndarray:
    if bfmt.element == INT8:
        return np.arange(-128, 128, dtype=np.float64) / 64
    v = all_values(bfmt.element).astype(np.float64)
    return v[np.isfinite(v)]


def block_plot_data(x, bfmt: BlockFormat | str, *, scale_mode: str | None = None):
    """The block ``x`` (one block: ``block_size`` values; per-tensor formats: any
    length) quantized by ``bfmt``, with the grid its scale makes."""
    from fpsim.blocks import encode_blocks, quantize_blocks

    bfmt = get_block_format(bfmt)
    x = np.asarray(x, np.float32)
    if bfmt.block_shape is not None:
        raise ValueError(
            f"block_plot draws one 1-D block; {bfmt.name} has 2-D tiles "
            f"{bfmt.block_shape}: pass a 1-D format (an MX format, nvfp4, fp8_tensor)"
        )
    if x.ndim != 1 or (not bfmt.per_tensor and x.size != bfmt.block_size):
        raise ValueError(
            f"block_plot draws one block: x must be 1-D with {bfmt.block_size} values "
            f"for {bfmt.name}, got shape {x.shape}"
        )
    codes = encode_blocks(x, bfmt, scale_mode=scale_mode)
    q = np.asarray(quantize_blocks(x, bfmt, scale_mode=scale_mode), np.float64)
    code = np.asarray(codes.scales).reshape(-1)[0]
    if bfmt.scale == E8M0:
        scale = np.nan if code == 0xFF else 2.0 ** (int(code) - 127)
        grid = _element_values(bfmt) * scale
    else:
        if bfmt.scale == FP32:
            s = np.float32(code)
        else:  # NVFP4: tensor scale times the E4M3 block scale, rounded to float32
            bs = np.float32(decode(np.uint8(code), bfmt.scale))
            s = np.float32(codes.tensor_scale) * bs
        scale = float(s)
        grid = (_element_values(bfmt).astype(np.float32) * s).astype(np.float64)
    grid = np.unique(grid[np.isfinite(grid)])
    xf = x.astype(np.float64)
    finite = np.isfinite(xf)
    top = np.abs(grid).max() if grid.size else np.nan
    flushed = finite & (xf != 0) & (q == 0)
    saturated = finite & (np.abs(q) == top) & (np.abs(xf) > np.abs(q))
    return BlockGrid(xf, q, grid, scale, flushed, saturated)


def block_plot(
    x,
    bfmt: BlockFormat | str,
    ax=None,
    *,
    scale_mode: str | None = None,
    title: str | None = None,
    legend: bool = True,
):
    """Draw one block's values above the grid its shared scale makes.

    Each element is a dot (top) joined to the grid value it becomes (bottom); the grid
    (every ``element value * scale``) is the row of ticks. Flushed elements (nonzero,
    come back as 0) and saturated ones (clipped to the grid's largest magnitude) are
    marked; the band where values flush and the region past the largest grid value are
    shaded. The axis is linear: a block has one scale, so its grid is what a linear
    axis shows.

    Args:
      x: one block: ``bfmt.block_size`` float values (per-tensor formats: any 1-D).
      bfmt: a block format or its name (1-D blocks: MX formats, NVFP4, FP32 scales).
      ax: axes to draw into; a new figure when None.
      scale_mode: overrides the format's E8M0 scale rule ("floor", "ceil", "even",
        "rceil").
      title: the title; a default one names the format, the scale and the counts.
      legend: whether to draw the legend.

    Returns:
      The Axes. Artists carry gids: ``"grid"``, ``"values"``, ``"flushed"``,
      ``"saturated"``, ``"band:flush"``, ``"band:saturate"``.
    """
    bfmt = get_block_format(bfmt)
    d = block_plot_data(x, bfmt, scale_mode=scale_mode)
    ax = new_axes(ax, figsize=(10, 3.2))
    finite = np.isfinite(d.x)
    top = float(np.abs(d.grid).max()) if d.grid.size else 1.0
    reach = max(top, float(np.abs(d.x[finite]).max()) if finite.any() else 0.0)
    lim = 1.12 * (reach or 1.0)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-0.7, 2.0)
    step = float(np.min(d.grid[d.grid > 0])) if (d.grid > 0).any() else 0.0
    ax.axvspan(
        -step / 2,
        step / 2,
        color="#E69F00",
        alpha=0.3,
        lw=0,
        gid="band:flush",
        label=f"flushes to 0 (|x| <= {number_label(step / 2)})",
    )
    for i, (a, b) in enumerate(((-lim, -top), (top, lim))):
        ax.axvspan(
            a,
            b,
            color="#D55E00",
            alpha=0.15,
            lw=0,
            gid="band:saturate",
            label=None if i else f"past the max {number_label(top)}: saturates",
        )
    ax.plot(
        d.grid,
        np.zeros_like(d.grid),
        ls="none",
        marker="|",
        ms=14,
        color="0.35",
        gid="grid",
        label=f"grid: element values x {number_label(d.scale)}",
    )
    y = 1.0 + 0.25 * (np.argsort(np.argsort(d.x)) % 4)  # stagger neighbours
    xs = np.clip(d.x, -lim, lim)
    for xi, yi, qi in zip(xs[finite], y[finite], d.q[finite], strict=True):
        ax.plot([xi, qi], [yi, 0.08], color="0.6", lw=0.7, zorder=1)
    ok = finite & ~d.flushed & ~d.saturated
    kept = style(0)
    ax.plot(
        xs[ok],
        y[ok],
        ls="none",
        marker="o",
        ms=5,
        color=kept["color"],
        gid="values",
        label=f"element ({ok.sum()})",
    )
    for mask, marker, ms, color, gid, what in (
        (d.flushed, "X", 8, "#E69F00", "flushed", "flushed to 0"),
        (d.saturated, "^", 9, "#D55E00", "saturated", "saturated"),
    ):
        ax.plot(
            xs[mask], y[mask], ls="none", marker=marker, ms=ms, color=color, mec="k",
            mew=0.5, gid=gid, label=f"{what} ({mask.sum()})",
        )  # fmt: skip
    ax.axhline(0, color="0.3", lw=0.6, zorder=0)
    ax.set_yticks([0, 1.375], ["grid", "block"])
    for side in ("right", "top", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("value (linear axis: one block has one scale)", fontsize=8)
    mode = scale_mode or bfmt.scale_mode
    ax.set_title(
        title
        or (
            f"{bfmt.name}, scale {number_label(d.scale)}"
            + (f" ({mode})" if bfmt.scale == E8M0 else "")
            + f": {d.flushed.sum()} flushed, {d.saturated.sum()} saturated"
        ),
        fontsize=10,
    )
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return ax
