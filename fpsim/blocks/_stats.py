"""Per-block statistics: what a block's shared scale does to its elements.

A block's scale follows its largest magnitude (amax), so the other elements are
measured against the amax's binade. Two things can go wrong, block by block:

* **underflow**: an element much smaller than the amax falls below half the smallest
  step of the block's grid (``element min_subnormal * scale``) and becomes zero. In
  MXFP4 (E2M1, smallest step 0.5) a block whose amax is 6 loses everything below
  0.25: the same value survives in a block of small values.
* **saturation**: with the OCP "floor" rule, the amax lands in the elements' top binade
  but can lie above the elements' max (957 in MXFP8 E4M3: scale 2, 957 / 2 = 478.5 >
  448), and is clipped to ``max * scale`` (896). "ceil" and "rceil" never saturate.

:func:`block_stats` counts both per block and gives the histogram of the scales'
exponents (how many binades the tensor's blocks span).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fpsim.blocks import _f32
from fpsim.blocks._api import _axes, _scales_out, _to_blocks, decode_blocks, encode_blocks
from fpsim.blocks._format import INT8, BlockFormat, get_block_format
from fpsim.codec import decode
from fpsim.formats import FP32

#: The exponents the histogram counts, ``exponent_counts[i]`` is for ``EXPONENTS[i]``.
EXPONENTS = tuple(range(-127, 128))


class BlockStats(NamedTuple):
    """Per-block statistics of a tensor in a block format (see :func:`block_stats`).

    Attributes:
      underflow: float32, the scales' shape: per block, the fraction of its elements
        that are nonzero (and finite) but come back as zero.
      saturated: float32, the scales' shape: per block, the fraction of its elements
        whose magnitude exceeds the largest the block can hold (``element max *
        scale``) and are clipped to it.
      scale_exponent: int32, the scales' shape: ``log2`` of each block's scale (MX:
        the E8M0 code minus 127; NVFP4: ``floor(log2)`` of the E4M3 block scale, the
        tensor scale left out; float32 scales: ``floor(log2)``). NaN blocks give -128.
      exponent_counts: int32[255]: how many blocks have each scale exponent in
        :data:`EXPONENTS` (-127 .. 127); NaN blocks are not counted.
    """

    underflow: jax.Array
    saturated: jax.Array
    scale_exponent: jax.Array
    exponent_counts: jax.Array


def _element_values(codes, bfmt: BlockFormat):
    if bfmt.element == INT8:
        return codes.astype(jnp.int8).astype(jnp.float32) * jnp.float32(2.0**-6)
    return decode(codes, bfmt.element)


def element_flags(x, bfmt: BlockFormat, *, axis=-1, scale_mode: str | None = None):
    """What block quantization does to each element of float32 ``x``.

    Returns ``(codes, q, underflow, saturated)``: the :class:`BlockCodes`, the decoded
    values, and two boolean arrays of ``x``'s shape: *underflow*, a finite nonzero
    element that comes back as zero (its block's scale, set by the block's largest
    element, put it below the element format's smallest value); *saturated*, a finite
    element whose magnitude exceeds the largest its block can hold and is clipped to it.
    Both are computed on bit patterns: XLA on CPU reads float32 subnormal operands of
    float compares as zero, and a block of tiny values is made of subnormals.
    """
    codes = encode_blocks(x, bfmt, axis=axis, scale_mode=scale_mode)
    q = decode_blocks(codes, bfmt, axis=axis)
    if bfmt.element == INT8:
        at_max = (codes.elements == 0x7F) | (codes.elements == 0x80)
    else:
        elem = jnp.abs(_element_values(codes.elements, bfmt))
        at_max = elem == jnp.float32(bfmt.element_max)
    ax, aq = (_f32.bits(v) & jnp.uint32(_f32._ABS) for v in (x, q))
    finite = ax < jnp.uint32(_f32._INF)
    under = finite & (ax != 0) & (aq == 0)
    sat = finite & at_max & (ax > aq)
    return codes, q, under, sat


def block_stats(
    x: jax.typing.ArrayLike,
    bfmt: BlockFormat | str,
    *,
    axis: int = -1,
    scale_mode: str | None = None,
) -> BlockStats:
    """Underflow and saturation per block, and the histogram of scale exponents.

    Elements round to nearest even, as :func:`fpsim.blocks.encode_blocks` does.

    Example:
      >>> import numpy as np
      >>> from fpsim.blocks import block_stats
      >>> x = np.full(32, 0.001, np.float32)
      >>> x[0] = 957.0  # scale 2**1: 0.001 / 2 < 2**-10 underflows; 957 saturates
      >>> st = block_stats(x, "mxfp8")
      >>> float(st.underflow[0]) * 32, float(st.saturated[0]) * 32
      (31.0, 1.0)
      >>> int(st.scale_exponent[0])
      1
    """
    bfmt = get_block_format(bfmt)
    x = jnp.asarray(x, jnp.float32)
    codes, q, under, sat = element_flags(x, bfmt, axis=axis, scale_mode=scale_mode)
    axes = _axes(x.ndim, bfmt, axis)

    def per_block(flags):
        f = _to_blocks(flags.astype(jnp.float32), axes, bfmt)
        return _scales_out(jnp.mean(f, axis=-1), axes, bfmt)

    if bfmt.tensor_scale or bfmt.scale == FP32:  # the block scale's binade
        bs = codes.scales if bfmt.scale == FP32 else decode(codes.scales, bfmt.scale)
        exp = _f32.floor_log2(_f32.bits(bs) & jnp.uint32(0x7FFFFFFF))
        abits = _f32.bits(bs) & jnp.uint32(_f32._ABS)
        valid = (abits > 0) & (abits < jnp.uint32(_f32._INF))
    else:
        code = codes.scales.astype(jnp.int32)
        exp, valid = code - 127, code != 0xFF
    exp = jnp.where(valid, exp, -128)
    counts = (
        jnp.zeros(len(EXPONENTS), jnp.int32)
        .at[jnp.where(valid, exp + 127, 255)]
        .add(1, mode="drop")
    )
    return BlockStats(per_block(under), per_block(sat), exp, counts)
