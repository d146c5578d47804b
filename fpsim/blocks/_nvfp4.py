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

from fpsim.blocks import _f32
from fpsim.codec import decode, encode
from fpsim.formats import E2M1, E4M3
from fpsim.rounding import quantize

_MIN_SCALE = 2.0**-6


def _div(a, b):
    """``a / b`` for finite float32 ``b > 0`` normal after scaling; exact rounding."""
    j = -_f32.floor_log2(_f32.bits(b) & jnp.uint32(0x7FFFFFFF))
    return _f32.ldexp(a, j) / _f32.ldexp(b, j)


def scales(xb):
    """(tensor_scale, block scales on E4M3's grid) for blocks on the last axis."""
    a = _f32.bits(xb) & jnp.uint32(0x7FFFFFFF)
    amax_b = jnp.max(a, axis=-1)
    amax_t = jnp.max(amax_b)
    finite = amax_t < 0x7F800000
    ts = _f32.from_bits(_f32.div_small(jnp.minimum(amax_t, 0x7F7FFFFF), 21, 7))
    ts = jnp.where(finite, ts, jnp.float32(jnp.nan))
    bsf = _f32.from_bits(_f32.div_small(jnp.minimum(amax_b, 0x7F7FFFFF), 3, 1))
    safe_ts = jnp.where(finite & (amax_t > 0), ts, jnp.float32(1.0))
    ratio = jnp.where(amax_t > 0, _div(bsf, safe_ts), 0.0)
    bs = quantize(jnp.clip(ratio, _MIN_SCALE, 448.0), E4M3)
    return ts, bs, safe_ts


def _mul(x, r):
    """``x * r`` rounded once, for float32 ``x`` that may be subnormal (``r`` normal)."""
    sub = (_f32.bits(x) & jnp.uint32(0x7F800000)) == 0
    k = jnp.where(sub, 24, 0)
    return _f32.ldexp(_f32.ldexp(x, k) * r, -k)


def elements(xb, ts, bs, safe_ts, rounding, key, random_bits):
    """Elements on E2M1's grid (float32)."""
    j = -_f32.floor_log2(_f32.bits(safe_ts))
    inv_ts = _f32.ldexp(1.0 / _f32.ldexp(safe_ts, j), j)  # 1/ts, rounded once
    rcp = inv_ts / bs  # normal: 1/ts >= 2**-117 and bs in [2**-6, 448]
    y = jnp.clip(_mul(xb, rcp[..., None]), -6.0, 6.0)
    return quantize(y, E2M1, rounding, key=key, random_bits=random_bits)


def dequantize(q, ts, bs):
    """``q * (ts * bs)``, each product rounded once; NaN for a non-finite tensor scale."""
    s = _f32.mul_narrow(jnp.broadcast_to(ts, bs.shape), bs)
    out = _f32.mul_narrow(s[..., None], q)
    return jnp.where(jnp.isfinite(ts), out, jnp.nan)


def element_codes(q):
    return encode(q, E2M1)


def scale_codes(bs):
    return encode(bs, E4M3)


def scale_values(codes):
    return decode(codes, E4M3)


def element_values(codes):
    return decode(codes, E2M1)
