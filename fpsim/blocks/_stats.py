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
exponents (how many binades the tensor's blocks span). :func:`quantize_with_summary`
quantizes and counts in one pass, reduced to a few numbers per tensor
(:class:`BlockSummary`): what a training step can afford to report for every operand
of every GEMM (:mod:`fpsim.nn`'s recipe statistics).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fpsim.blocks import _f32
from fpsim.blocks._api import _from_blocks, _scales_out, _to_blocks, checked, parts
from fpsim.blocks._format import BlockFormat
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
    x, bfmt, mode, ax, _ = checked(x, bfmt, axis, scale_mode, "nearest", None, None)
    return _block_stats(x, bfmt, mode, ax)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _block_stats(x, bfmt, mode, ax):
    xb = _to_blocks(x, ax, bfmt)
    el, out, scales, _ = parts(xb, None, bfmt, mode, "nearest", None)
    _, under, sat = _flags(xb, el, out, bfmt)

    def per_block(flags):
        return _scales_out(jnp.mean(flags.astype(jnp.float32), axis=-1), ax, bfmt)

    exp, valid = scale_exponents(scales, bfmt)
    exp_out = _scales_out(jnp.where(valid, exp, -128), ax, bfmt)
    return BlockStats(
        per_block(under), per_block(sat), exp_out, exponent_histogram(exp, valid)
    )


def _flags(xb, elements, values, bfmt: BlockFormat):
    """Per element: (nonzero and finite, flushed to zero, saturated).

    Magnitudes are compared as bit patterns: XLA on CPU reads float32 subnormal
    operands of float compares as zero, and a block of tiny values is made of them.
    """
    ax, av = (_f32.bits(v) & jnp.uint32(_f32.ABS) for v in (xb, values))
    finite = ax < jnp.uint32(_f32.INF)
    nonzero = finite & (ax != 0)
    flushed = nonzero & (av == 0)
    # at the elements' max (MXINT8: 127/64, or -2 whose magnitude is above it)
    at_max = jnp.abs(elements) >= jnp.float32(bfmt.element_max)
    return nonzero, flushed, finite & at_max & (ax > av)


def element_flags(x, bfmt: BlockFormat, axis=-1):
    """Per element of ``x`` (validated float32, ``axis`` as ``quantize_blocks`` takes
    it): ``(elements, values, flushed, saturated)``, in ``x``'s layout: each element
    on its own grid, the value it comes back as, whether it was nonzero and finite
    and came back as zero (its block's scale, set by the block's largest element, put
    it below the grid), and whether it was clipped to the largest its block holds."""
    x, bfmt, mode, ax, _ = checked(x, bfmt, axis, None, "nearest", None, None)
    xb = _to_blocks(x, ax, bfmt)
    el, out, _, _ = parts(xb, None, bfmt, mode, "nearest", None)
    _, under, sat = _flags(xb, el, out, bfmt)
    back = functools.partial(_from_blocks, axes=ax, bfmt=bfmt, shape=x.shape)
    return back(el), back(out), back(under), back(sat)


def scale_exponents(scales, bfmt: BlockFormat) -> tuple[jax.Array, jax.Array]:
    """``(log2 of each block scale, whether the scale is a number)`` (int32, bool).

    ``scales`` as stored: E8M0 codes (MX: the exponent is the code minus 127, code
    0xFF is NaN), NVFP4's E4M3 block scales as values or float32 scales (both:
    ``floor(log2)``; zero, inf and NaN are not numbers here).
    """
    if bfmt.tensor_scale or bfmt.scale == FP32:  # the block scale's binade
        a = _f32.bits(scales) & jnp.uint32(_f32.ABS)  # bits: a scale may be subnormal
        return _f32.floor_log2(a), (a > 0) & (a < jnp.uint32(_f32.INF))
    code = scales.astype(jnp.int32)
    return code - 127, code != 0xFF


def exponent_histogram(exp, valid) -> jax.Array:
    """int32[255]: how many valid scales have each exponent of :data:`EXPONENTS`."""
    idx = jnp.where(valid, exp + 127, 255).reshape(-1)
    return jnp.zeros(len(EXPONENTS), jnp.int32).at[idx].add(1, mode="drop")


class BlockSummary(NamedTuple):
    """What quantizing one tensor to a block format lost, reduced to a few numbers.

    Attributes:
      underflow: float32 scalar: of the tensor's nonzero finite elements, the fraction
        that came back as zero (too small for their block's scale: below half the
        smallest step ``element min_subnormal * scale``; with stochastic rounding,
        those this draw rounded down to zero).
      saturated: float32 scalar: of the nonzero finite elements, the fraction whose
        magnitude exceeded the largest their block holds (``element max * scale``)
        and were clipped to it.
      nonzero: int32 scalar: how many nonzero finite elements the fractions are of
        (``underflow * nonzero`` is the number flushed, to sum over tensors).
      exponent_counts: int32[255]: how many blocks have each scale exponent of
        :data:`EXPONENTS`, as in :class:`BlockStats`.
    """

    underflow: jax.Array
    saturated: jax.Array
    nonzero: jax.Array
    exponent_counts: jax.Array


def summarize(xb, elements, values, scales, bfmt: BlockFormat) -> BlockSummary:
    """:class:`BlockSummary` of blocks ``xb`` quantized to ``elements`` (on their own
    grid) and ``values``, from the quantization's own intermediates (any layout in
    which ``xb``, ``elements`` and ``values`` correspond element by element)."""
    # one reduction for the three counts: XLA on CPU recomputes the quantization inside
    # every reduction that reads it (cheap integer steps are duplicated, not stored),
    # so three sums would cost three quantizations, this one costs one
    flags = jnp.stack(_flags(xb, elements, values, bfmt)).reshape(3, -1)
    n, flushed, saturated = jnp.sum(flags, axis=1, dtype=jnp.int32)
    per = jnp.maximum(n, 1).astype(jnp.float32)
    exp, valid = scale_exponents(scales, bfmt)
    return BlockSummary(
        flushed.astype(jnp.float32) / per,
        saturated.astype(jnp.float32) / per,
        n,
        exponent_histogram(exp, valid),
    )


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _quantize_summary(x, key, bfmt, mode, rounding, random_bits, ax):
    xb = _to_blocks(x, ax, bfmt)
    el, out, scales, _ = parts(xb, key, bfmt, mode, rounding, random_bits)
    return _from_blocks(out, ax, bfmt, x.shape), summarize(xb, el, out, scales, bfmt)


def quantize_with_summary(
    x: jax.typing.ArrayLike,
    bfmt: BlockFormat | str,
    *,
    axis: int | tuple[int, int] = -1,
    scale_mode: str | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    random_bits: int | None = None,
) -> tuple[jax.Array, BlockSummary]:
    """:func:`~fpsim.blocks.quantize_blocks` and, from the same pass, a
    :class:`BlockSummary` of what the elements lost.

    The arguments are :func:`~fpsim.blocks.quantize_blocks`'s and the values are bit for
    bit its result. The summary counts what :func:`block_stats` counts per block, over
    the whole tensor (and for any rounding: :func:`block_stats` rounds to nearest),
    from the quantization's own elements and scales: a few comparisons and sums more
    than quantizing, no second quantization.

    Example:
      >>> import numpy as np
      >>> from fpsim.blocks import quantize_with_summary
      >>> x = np.full(64, 0.1, np.float32)
      >>> x[0] = 6.0  # first block: scale 2**0, 0.1 < 0.25 flushes (31 of its 32)
      >>> x[32] = 1.0  # second block: scale 2**-2, 0.1 / 0.25 = 0.4 rounds to 0.5
      >>> q, s = quantize_with_summary(x, "mxfp4")
      >>> round(float(s.underflow) * int(s.nonzero)), int(s.nonzero), float(s.saturated)
      (31, 64, 0.0)
      >>> [int(e) for e in np.flatnonzero(s.exponent_counts) - 127]  # the two scales
      [-2, 0]
    """
    x, bfmt, mode, ax, key = checked(x, bfmt, axis, scale_mode, rounding, key, random_bits)
    return _quantize_summary(x, key, bfmt, mode, rounding, random_bits, ax)
