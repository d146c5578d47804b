"""E8M0, the exponent-only scale type of OCP MX, bit for bit as ml_dtypes' float8_e8m0fnu.

An E8M0 code ``e`` (0..254) *is* the power of two ``2**(e - 127)``; code 255 is NaN.
There is no sign, no zero, no infinity and no mantissa, so converting a float32 ``x``
to E8M0 is choosing a power of two. ml_dtypes' rules, read off the library by
experiment (``tests/test_blocks_e8m0.py`` pins each of them):

* a normal float32 ``x = 1.f * 2**E`` goes to ``2**E`` if ``f < 1/2`` and to
  ``2**(E+1)`` if ``f >= 1/2``: to nearest *in the mantissa*, ties (``1.5 * 2**E``)
  **up**. Note that the tie point is the arithmetic midpoint ``1.5 * 2**E``, not the
  geometric one ``sqrt(2) * 2**E``;
* a float32 subnormal goes to ``2**-127`` (code 0) if it is below ``1.5 * 2**-127``
  and to ``2**-126`` (code 1) from there on: the same midpoint rule, ties up, and
  everything below ``2**-127`` goes to it (there is no zero). This is ml_dtypes 0.7;
  earlier versions sent every subnormal above ``2**-127`` to ``2**-126``;
* ``+-0``, every negative number, ``+-inf``, NaN and anything that rounds past
  ``2**127`` (``x >= 1.5 * 2**127``) go to NaN (code 255).

All of it is integer arithmetic on the float32 bits: ``2**-127`` is a float32 subnormal,
and XLA on CPU flushes subnormals in float arithmetic.

The other rounding modes are the exact ones: ``"up"`` is the hardware's round up to a
power of two (``cvt.rp.ue8m0``: the exponent plus one if any mantissa bit is set; a
subnormal goes to code 0 if ``<= 2**-127``, else 1); ``"down"`` and ``"toward_zero"``
truncate to ``2**E`` (values below ``2**-127`` stay at the bottom code: there is no
zero to go to). ``saturate=True`` sends overflow and ``+inf`` to ``2**127``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fpsim import _bits
from fpsim.formats import Format

NAN_CODE = 0xFF
_HALF = 1 << 22  # float32 mantissa bit worth one half
_SUB_2M127 = 0x00400000  # float32 bits of 2**-127 (a subnormal)
_SUB_MID = 0x00600000  # 1.5 * 2**-127: the midpoint between codes 0 and 1


def _check(fmt: Format) -> None:
    if fmt.exponent_bits != 8 or fmt.bias != 127 or fmt.mantissa_bits != 0:
        raise NotImplementedError(
            f"{fmt.name}: fpsim implements the 'fnu' convention for E8M0 only "
            "(8 exponent bits, bias 127)"
        )


def codes_from_f32(x: jax.Array, rounding: str = "nearest", saturate: bool = False):
    """E8M0 codes (uint8) of float32 values, by ml_dtypes' rules (see module doc)."""
    b = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    neg = (b >> 31) != 0
    a = b & jnp.uint32(0x7FFFFFFF)
    e = (a >> 23).astype(jnp.int32)
    mant = a & jnp.uint32(0x7FFFFF)
    if rounding == "nearest":
        up = mant >= _HALF
    elif rounding == "up":
        up = mant != 0
    elif rounding in ("down", "toward_zero"):
        up = jnp.zeros_like(mant, bool)
    else:
        raise ValueError(
            f"rounding {rounding!r} to E8M0 is not supported; valid: nearest, up, down, "
            "toward_zero"
        )
    normal = e + up.astype(jnp.int32)  # code = E - 127 + 127, plus the carry
    if rounding in ("down", "toward_zero"):
        sub = jnp.zeros_like(e)
    elif rounding == "nearest":
        sub = (a >= _SUB_MID).astype(jnp.int32)
    else:
        sub = (a > _SUB_2M127).astype(jnp.int32)
    code = jnp.where(e == 0, sub, normal)
    finite = e < 255
    over = finite & (code > 254)
    top = jnp.int32(254 if saturate else NAN_CODE)
    code = jnp.where(over, top, code)
    code = jnp.where(a == 0x7F800000, top, code)  # +inf (negative inf is NaN below)
    bad = neg | (a == 0) | (a > 0x7F800000)
    return jnp.where(bad, NAN_CODE, code).astype(jnp.uint8)


def f32_from_codes(code: jax.Array, dtype=jnp.float32) -> jax.Array:
    """The values ``2**(code - 127)`` of E8M0 codes, exactly; code 255 is NaN."""
    c = _bits.carrier_of(dtype)
    u = c.uint
    k = code.astype(jnp.int32) - 127
    field = k + c.bias
    normal = field.astype(u) << c.mant
    # float32 only: 2**-127 is the subnormal with the top mantissa bit set
    sub = u(1) << jnp.clip(c.mant - 1 + field, 0, c.mant - 1).astype(u)
    bits = jnp.where(field >= 1, normal, sub)
    bits = jnp.where(code.astype(jnp.int32) == NAN_CODE, u(c.qnan_bits), bits)
    return c.from_bits(bits)


def quantize(x: jax.Array, fmt: Format, rounding: str, *, saturate: bool) -> jax.Array:
    """``x`` rounded to E8M0, as a float of ``x``'s dtype (float32 or float64)."""
    _check(fmt)
    return f32_from_codes(codes_from_f32(x, rounding, saturate), x.dtype)


def encode(q: jax.Array, fmt: Format) -> jax.Array:
    """Codes of values already on E8M0's grid (the output of :func:`quantize`)."""
    _check(fmt)
    return codes_from_f32(q, "nearest", saturate=False)


def decode(code: jax.Array, fmt: Format) -> jax.Array:
    """float32 values of E8M0 codes."""
    _check(fmt)
    return f32_from_codes(code)
