"""FP8 with a float32 scale per block, per tile or per tensor ("current scaling").

DeepSeek-V3 trains in FP8 (E4M3) with one float32 scale per 1x128 activation tile and
per 128x128 weight tile; Transformer Engine's per-tensor "current scaling" uses one
scale for the whole tensor. Both choose the scale from the amax of the values it
covers:

``"amax"``
    ``scale = amax / element_max`` (float32, rounded once: for E4M3 ``amax / 448``);
    elements ``x / scale`` rounded to the element format and saturated at its max
    (a quotient rounded up past the max, ``448.00003``, comes back as 448); values
    ``element * scale`` rounded once. DeepSeek's kernels divide by the scale as here;
    Transformer Engine multiplies by its reciprocal ``max / amax``, which can differ by
    one element step in rare ties.
``"pow2"``
    the scale rounded *up* to a power of two (``2**ceil(log2(amax / max))``, clamped to
    ``2**-127 .. 2**127``): no element exceeds the max, and dividing and multiplying
    by the scale are exact.

A block of zeros has scale 0 ("amax") or ``2**-127`` ("pow2") and gives zeros; a block
holding inf or NaN gives NaN. Every step is exact for float32 subnormals too (integer
arithmetic where XLA would flush them). The directed roundings "up" and "down" are not
offered here (a quotient below ``2**-126`` would flush before rounding).
"""

from __future__ import annotations

import jax.numpy as jnp

from fpsim.blocks import _f32
from fpsim.blocks._format import BlockFormat
from fpsim.codec import decode, encode
from fpsim.rounding import quantize

ROUNDINGS = ("nearest", "stochastic", "toward_zero")


def _odd_split(v: float) -> tuple[int, int]:
    from fpsim.blocks._mx import odd_split

    return odd_split(v)


def scales(xb, bfmt: BlockFormat, mode: str):
    """float32 scales of blocks along the last axis (shape ``xb.shape[:-1]``)."""
    amax = _f32.amax_bits(xb)
    d, k = _odd_split(bfmt.element_max)
    s = _f32.div_small(jnp.minimum(amax, jnp.uint32(0x7F7FFFFF)), d, k)  # bits, exact
    if mode == "pow2":
        e = (s >> 23).astype(jnp.int32)
        up = (s & jnp.uint32(0x7FFFFF)) != 0
        sub_e = _f32.floor_log2(jnp.maximum(s, 1)) + ((s & (s - 1)) != 0)  # subnormal s
        p = jnp.where(e > 0, e - 127 + up, sub_e)
        s = _f32.bits(_f32.ldexp(jnp.float32(1.0), jnp.clip(p, -127, 127)))
    s = _f32.from_bits(s)
    return jnp.where(amax >= 0x7F800000, jnp.float32(jnp.nan), s)


def _log2(s):
    """log2 of power-of-two float32 scales (subnormal 2**-127 included)."""
    return _f32.floor_log2(_f32.bits(s) & jnp.uint32(0x7FFFFFFF))


def elements(xb, s, bfmt: BlockFormat, mode, rounding, key, random_bits):
    """Elements on the element grid (float32): ``x / scale`` rounded and saturated."""
    if mode == "pow2":
        k = _log2(s)
        (f1, f2) = _f32.per_block(*_f32.pow2_pair(-k))
        y = _f32.scale_pow2(xb, (f1, f2))
    else:  # divide operands shifted by a common power of two: no subnormal divisor
        sb = _f32.bits(s)
        # s < 2**-60: x and s times 2**24, so that neither is subnormal; otherwise a
        # flushed subnormal x had |x / s| < 2**-66: zero, stochastically too
        small = sb < jnp.uint32(0x21800000)
        k = jnp.where(small, 24, 0)
        s_n = jnp.where(small, _f32.ldexp(s, 24), s)
        (f1, f2), s_n, zero = _f32.per_block(*_f32.pow2_pair(k)), *_f32.per_block(
            s_n, sb == 0)  # fmt: skip
        y = _f32.scale_pow2(xb, (f1, f2)) / jnp.where(zero, jnp.float32(1.0), s_n)
        y = jnp.where(zero, xb * 0, y)
    y = jnp.where(jnp.isnan(y), 0.0, y)  # the scale carries a block's NaN
    return quantize(
        y, bfmt.element, rounding, key=key, saturate=True, random_bits=random_bits
    )


def dequantize(q, s, mode):
    """``q * scale`` rounded once (exactly, subnormals included); NaN for a NaN scale."""
    if mode == "pow2":
        k = _log2(s)
        g = _f32.pow2(jnp.minimum(k + 149, 127))
        f1, f2, g, nan = _f32.per_block(*_f32.pow2_pair(k), g, jnp.isnan(s))
        return jnp.where(nan, jnp.nan, _f32.mul_pow2(q, (f1, f2), g))
    return _f32.mul_narrow(jnp.broadcast_to(s[..., None], q.shape), q)


def element_codes(q, bfmt: BlockFormat):
    return encode(q, bfmt.element)


def element_values(codes, bfmt: BlockFormat):
    return decode(codes, bfmt.element)
