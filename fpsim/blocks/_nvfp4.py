"""NVFP4: E2M1 elements, an E4M3 scale per 16 elements, a float32 scale per tensor.

The two-level recipe, as torchao's pure-torch path (and NVIDIA's kernels) compute it:

1. ``tensor_scale = amax_tensor / (448 * 6)``: the largest block scale lands at E4M3's
   max 448 when the largest element lands at E2M1's max 6.
2. per block, ``block_scale = E4M3(clamp((amax_block / 6) / tensor_scale, 2**-6, 448))``
   (rounded to nearest even; E4M3 has 3 mantissa bits, so scales are not only powers
   of two).
3. elements ``E2M1(clamp(x * ((1 / tensor_scale) / block_scale), -6, 6))``: a
   multiplication by a reciprocal that has been rounded twice, as the kernels do, not a
   division. This is why a value can land one E2M1 step away from ``x / scale``.
4. decode: ``element * (tensor_scale * block_scale)``, the product rounded to float32.

fpsim's choices where torchao is undefined: an all-zero tensor gives zeros (tensor
scale 0, block scales 2**-6; torchao computes 0/0 = NaN); a tensor holding inf or NaN
gives NaN everywhere. Every float32 step is rounded once, subnormals included: the
divisions by 6 and 2688 are exact integer divisions (:func:`._f32.div_small`), the
other quotients are computed on operands shifted by a common power of two (the ratio
does not change) so that XLA never sees a subnormal.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fpsim.blocks import _f32
from fpsim.codec import decode, encode
from fpsim.formats import E2M1, E4M3
from fpsim.rounding import quantize

_MIN_SCALE = 2.0**-6


def _div(a, b):
    """``a / b`` for float32 ``a >= 0`` and a finite scalar ``b > 0``, rounded once.

    Both are multiplied by ``2**j`` that brings ``b`` to [1, 2): the quotient does not
    change and the divisor is normal. A numerator that stays below 2**-126 may flush
    to zero: the quotient is then below 2**-126 and is clipped to 2**-6 by the caller.
    """
    j = -_f32.floor_log2(_f32.bits(b) & jnp.uint32(0x7FFFFFFF))
    return _f32.scale_pow2(a, _f32.pow2_pair(j)) / _f32.ldexp(b, j)


def scales(xb):
    """(tensor_scale, block scales on E4M3's grid) for blocks on the last axis."""
    amax_b = _f32.materialize(_f32.amax_bits(xb))
    amax_t = jnp.max(amax_b)  # from the block maxima: one pass over the tensor
    finite = amax_t < 0x7F800000
    ts = _f32.from_bits(_f32.div_small(jnp.minimum(amax_t, 0x7F7FFFFF), 21, 7))
    ts = jnp.where(finite, ts, jnp.float32(jnp.nan))
    bsf = _f32.from_bits(_f32.div_small(jnp.minimum(amax_b, 0x7F7FFFFF), 3, 1))
    safe_ts = jnp.where(finite & (amax_t > 0), ts, jnp.float32(1.0))
    ratio = jnp.where(amax_t > 0, _div(bsf, safe_ts), 0.0)
    bs = _f32.materialize(quantize(jnp.clip(ratio, _MIN_SCALE, 448.0), E4M3))
    return ts, bs, safe_ts


def _mul(x, r):
    """``x * r`` rounded once, for float32 ``x`` that may be subnormal (``r`` normal)."""
    sub = (_f32.bits(x) & jnp.uint32(0x7F800000)) == 0
    k = jnp.where(sub, 24, 0)
    return _f32.ldexp(_f32.ldexp(x, k) * r, -k)


def _reciprocal(ts, bs, safe_ts):
    """``(1 / tensor_scale) / block_scale`` per block, each step rounded once."""
    j = -_f32.floor_log2(_f32.bits(safe_ts))
    inv_ts = _f32.ldexp(1.0 / _f32.ldexp(safe_ts, j), j)  # 1/ts, rounded once
    return inv_ts / bs  # normal: 1/ts >= 2**-117 and bs in [2**-6, 448]


def _block_scale(ts, bs):
    """``ts * bs`` per block, rounded once."""
    return _f32.mul_narrow(jnp.broadcast_to(ts, bs.shape), bs)


def _slow_elements(xb, rcp, rounding, key, random_bits):
    """Elements on E2M1's grid (float32), exactly for subnormal ``x`` too."""
    y = jnp.clip(_mul(xb, rcp[..., None]), -6.0, 6.0)
    return quantize(y, E2M1, rounding, key=key, random_bits=random_bits)


def _slow_dequantize(q, ts, bs):
    """``q * (ts * bs)`` by integer arithmetic (:func:`._f32.mul_narrow`), the reference."""
    out = _f32.mul_narrow(_block_scale(ts, bs)[..., None], q)
    return jnp.where(jnp.isfinite(ts), out, jnp.nan)


# -- The fast path ---------------------------------------------------------------------
# ``x * rcp`` and ``q * (ts * bs)`` as float multiplications, exact (rounded once)
# whenever operands and results are normal; XLA on CPU flushes subnormals, so:
#
# * a subnormal x is first multiplied by 2**24 (exactly, through an integer conversion)
#   and the rounded product by 2**-24, as the exact path does. A product below 2**-126
#   may flush to a signed zero: it rounds to that zero in E2M1 anyway (smallest step
#   0.5; stochastically too, with <= 32 random bits). The directed modes "up" and
#   "down" would round it up to 0.5, so they take the exact path.
# * a block scale s = ts * bs below 2**-125 is multiplied by 2**24 first, and a result
#   below 2**-126 is assembled from its bits: |q| * s is (2|q|) * n_s / 2 units of
#   2**-149 (n_s the integer significand of s), halved with ties to even.
FAST_ROUNDINGS = ("nearest", "stochastic", "toward_zero")


def _fast_elements(xb, rcp, rounding, key, random_bits):
    (rcp,) = _f32.per_block(rcp)
    b = _f32.bits(xb)
    sub = (b & jnp.uint32(0x7F800000)) == 0
    xf = jnp.where(sub, _f32.ldexp_subnormal_24(b), xb)
    y = xf * rcp
    y = jnp.where(sub, y * jnp.float32(2.0**-24), y)
    y = jnp.clip(y, -6.0, 6.0)
    return quantize(y, E2M1, rounding, key=key, random_bits=random_bits)


def dequantize(q, ts, bs):
    """``q * (ts * bs)``, each product rounded once; NaN for a non-finite tensor scale."""
    s = _f32.materialize(_block_scale(ts, bs))
    sb = _f32.bits(s)  # s >= 0; compare bits: XLA flushes subnormal operands to zero
    small = sb < jnp.uint32(0x01000000)  # s < 2**-125
    s_big = jnp.where(small, _f32.ldexp(s, 24), s)
    post = jnp.where(small, jnp.float32(2.0**-24), jnp.float32(1.0))
    n_s = _f32.split(jnp.where(small, sb, jnp.uint32(0)))[0]  # < 2**24
    s_big, post, n_s, small = _f32.per_block(s_big, post, n_s, small)
    big = (q * s_big) * post
    q2 = (jnp.abs(q) * 2).astype(jnp.int32)  # 2|q| in 0..12 (signed convert: vectorises)
    p = lax.bitcast_convert_type(q2, jnp.uint32) * n_s  # < 2**28
    t = (p >> 1) + (p & (p >> 1) & jnp.uint32(1))  # p / 2 to nearest even
    tiny = small & (t <= jnp.uint32(1 << 23))
    out = jnp.where(tiny, _f32.from_bits((_f32.bits(q) & jnp.uint32(1 << 31)) | t), big)
    return jnp.where(jnp.isfinite(ts), out, jnp.nan)


def elements(xb, ts, bs, safe_ts, rounding, key, random_bits):
    """Elements on E2M1's grid (float32)."""
    rcp = _reciprocal(ts, bs, safe_ts)
    fn = _fast_elements if rounding in FAST_ROUNDINGS else _slow_elements
    return fn(xb, rcp, rounding, key, random_bits)


def values(xb, ts, bs, safe_ts, rounding, key, random_bits):
    """The NVFP4 values of ``xb`` (float32): elements times ``ts * bs``."""
    return dequantize(elements(xb, ts, bs, safe_ts, rounding, key, random_bits), ts, bs)


def element_codes(q):
    return encode(q, E2M1)


def scale_codes(bs):
    return encode(bs, E4M3)


def scale_values(codes):
    return decode(codes, E4M3)


def element_values(codes):
    return decode(codes, E2M1)
