"""OCP MX blocks: one E8M0 scale per block, chosen from the block's amax.

Everything here works on blocks laid out along the last axis, ``(..., n_blocks,
block_size)``, and on float32 *bits*: the scale exponent is read off the amax's
exponent field, and scaling by ``2**s`` is integer arithmetic (:mod:`._f32`), so blocks
of float32 subnormals are exact on every backend.

The scale modes, for a block with amax ``A = 1.f * 2**E`` and elements whose largest
binade is ``2**emax`` (E4M3 8, E5M2 15, E3M2 4, E2M3 2, E2M1 2, INT8 0):

``"floor"`` (OCP MX v1.0, gfloat, torchao's default)
    ``s = E - emax``. The amax lands in the elements' top binade; its mantissa may
    exceed the elements' max, and then it saturates: in MXFP8 E4M3, 957 has E = 9,
    s = 1, 957 / 2 = 478.5 > 448, so it comes back as 448 * 2 = 896.
``"ceil"``
    ``s = E + (f != 0) - emax``: never saturates, but wastes up to a binade.
``"even"`` (torchao's name)
    amax is first rounded to the elements' mantissa width (adding half an element
    ulp to the bits, ties away from zero), then ``"floor"``.
``"rceil"`` (NVIDIA's ``cvt.rp.satfinite.ue8m0x2.f32``, as Transformer Engine uses it)
    the float32 quotient ``d = A / max_elem`` rounded up to a power of two: exponent
    of d plus one if any mantissa bit of d is set; a subnormal d gives code 0 if
    ``d <= 2**-127``, else 1. Elements are multiplied by ``2**(127 - code)``, but by 1
    for code 0 (as TE does: such blocks come out as zeros). fpsim computes ``d`` and
    its rounding exactly; torchao's CPU emulation takes a float32 ``log2(d)``, which
    rounds to an integer just above powers of two and loses the +1.

Common to all modes: the exponent clamps to E8M0's range ``-127 .. 127``; a NaN in the
block makes the scale code 0xFF and the whole block NaN; an inf makes ``E = 128`` (the
inf exponent field, as torchao reads it), the inf element saturates to the element max
and decodes back to inf by float32 overflow (gfloat clips the scale to 2**127 and
returns a finite float64; microxcaling sets the block to NaN). A block whose scale code
is 0 is scaled by ``2**-127`` both ways (the spec and gfloat; torchao scales the
elements by ``2**-126`` but decodes with ``2**-127``, halving such blocks).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fpsim.blocks import _f32
from fpsim.blocks._format import INT8, BlockFormat
from fpsim.codec import decode, encode
from fpsim.rounding import quantize

NAN = 255


def odd_split(v: float) -> tuple[int, int]:
    """``v = d * 2**k`` with ``d`` an odd integer: (d, k)."""
    k = 0
    while v != math.floor(v):
        v, k = v * 2, k - 1
    d = int(v)
    while d % 2 == 0:
        d, k = d // 2, k + 1
    return d, k


def scale_codes(xb: jax.Array, bfmt: BlockFormat, mode: str) -> jax.Array:
    """E8M0 scale codes (int32) of blocks along the last axis: shape ``xb.shape[:-1]``."""
    amax = _f32.amax_bits(xb)
    is_nan = amax > 0x7F800000
    if mode == "rceil":
        d, k = odd_split(bfmt.element_max)
        desc = _f32.div_small(jnp.minimum(amax, jnp.uint32(0x7F7FFFFF)), d, k)
        e = (desc >> 23).astype(jnp.int32)
        up = (desc & jnp.uint32(0x7FFFFF)) != 0
        code = jnp.where(e > 0, e + up, (desc > 0x400000).astype(jnp.int32))
        code = jnp.where(amax == 0x7F800000, 254, jnp.minimum(code, 254))
    else:
        if mode == "even":  # round amax to the elements' precision, ties away
            half_ulp = 1 << (22 - bfmt.element_mantissa_bits)
            amax = (amax + jnp.uint32(half_ulp)) & jnp.uint32(0x7F800000)
        e = (amax >> 23).astype(jnp.int32) - 127  # inf: 128; zero and subnormals: -127
        if mode == "ceil":
            e = e + ((amax & jnp.uint32(0x7FFFFF)) != 0)
        code = jnp.clip(e - bfmt.element_emax, -127, 127) + 127
    return jnp.where(is_nan, NAN, code)


def element_shift(code: jax.Array, mode: str) -> jax.Array:
    """log2 of the factor the elements are multiplied by before rounding."""
    shift = 127 - code
    return jnp.where(code == 0, 0, shift) if mode == "rceil" else shift


def _round_int8(y, rounding, key, random_bits):
    """Round to integers, then clip to int8 (MXINT8's elements times 64)."""
    if rounding == "nearest":
        r = jnp.round(y)  # half to even
    elif rounding == "stochastic":
        fl = jnp.floor(y)
        k = 32 if random_bits is None else random_bits
        frac = jnp.ldexp(y - fl, k)  # exact: y - floor(y) has y's bits, |y| < 2**24
        rand = jax.random.bits(key, y.shape, jnp.uint32) >> (32 - k)
        r = fl + (rand.astype(jnp.float32) < jnp.floor(frac))
    elif rounding == "toward_zero":
        r = jnp.trunc(y)
    elif rounding == "up":
        r = jnp.ceil(y)
    else:
        r = jnp.floor(y)
    r = jnp.where(r == 0, 0.0, r)  # two's complement has no -0: -0.0 gives code 0
    return jnp.clip(r, -128, 127)


def _slow_elements(xb, code, bfmt: BlockFormat, mode, rounding, key, random_bits):
    """The elements by exact integer scaling (:func:`._f32.ldexp`): any block."""
    shift = element_shift(code, mode)[..., None]
    if bfmt.element == INT8:
        y = _f32.ldexp(xb, shift + 6)
        y = jnp.where(jnp.isnan(y), 0.0, y)  # the scale code carries the NaN
        return _f32.ldexp(_round_int8(y, rounding, key, random_bits), -6)
    y = _f32.ldexp(xb, shift)
    return quantize(
        y, bfmt.element, rounding, key=key, saturate=True, random_bits=random_bits
    )


# -- The fast path ---------------------------------------------------------------------
# Scaling by a power of two is a float multiplication, exact whenever operands and
# product are normal: :func:`._f32.scale_pow2` and :func:`._f32.mul_pow2` keep them so
# (a subnormal x is normalised through an integer conversion, a factor outside the
# normal range is split in two, a subnormal block value is assembled from its bits).
# What is left to XLA's flushing is a scaled element below 2**-126 (x far below its
# block's amax): it comes out as a signed zero instead of a tiny float. To nearest,
# toward zero, or stochastically with <= 32 random bits it rounds to that zero anyway
# (the elements' smallest step is >= 2**-16), so these modes give the exact path's
# bits; "up" and "down" would round it to the smallest step, so they take the exact
# integer path (:func:`._f32.ldexp`, about 10x slower).
FAST_ROUNDINGS = ("nearest", "stochastic", "toward_zero")


def _fast_elements(xb, code, bfmt: BlockFormat, mode, rounding, key, random_bits):
    """The elements by float multiplication (see above)."""
    shift = element_shift(code, mode)
    if bfmt.element == INT8:
        f = _f32.per_block(*_f32.pow2_pair(shift + 6))
        y = _f32.scale_pow2(xb, f)
        y = jnp.where(jnp.isnan(y), 0.0, y)
        return _round_int8(y, rounding, key, random_bits) * jnp.float32(2.0**-6)
    y = _f32.scale_pow2(xb, _f32.per_block(*_f32.pow2_pair(shift)))
    return quantize(
        y, bfmt.element, rounding, key=key, saturate=True, random_bits=random_bits
    )


def elements(xb, code, bfmt: BlockFormat, mode, rounding, key, random_bits):
    """The elements on their own grid (float32): x / scale rounded, saturated."""
    fn = _fast_elements if rounding in FAST_ROUNDINGS else _slow_elements
    return fn(xb, code, bfmt, mode, rounding, key, random_bits)


def values(xb, code, bfmt: BlockFormat, mode, rounding, key, random_bits):
    """The block-scaled values (float32): elements times their block's scale."""
    return apply_scale(elements(xb, code, bfmt, mode, rounding, key, random_bits), code)


def element_codes(q, bfmt: BlockFormat):
    """uint8 codes of element values already on the element grid."""
    if bfmt.element == INT8:
        return _f32.ldexp(q, 6).astype(jnp.int8).astype(jnp.uint8)
    return encode(q, bfmt.element)


def element_values(codes, bfmt: BlockFormat):
    if bfmt.element == INT8:
        return _f32.ldexp(codes.astype(jnp.int8).astype(jnp.float32), -6)
    return decode(codes, bfmt.element)


def apply_scale(q, code):
    """``q * 2**(code - 127)`` exactly (inf on overflow), NaN for scale code 0xFF."""
    k = code - 127
    g = _f32.pow2(jnp.minimum(k + 149, 127))
    f1, f2, g, nan = _f32.per_block(*_f32.pow2_pair(k), g, code == NAN)
    return jnp.where(nan, jnp.nan, _f32.mul_pow2(q, (f1, f2), g))
