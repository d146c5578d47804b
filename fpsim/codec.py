"""Bit patterns of a format: ``encode`` a value to its code, ``decode`` a code to a value.

A code of ``fmt`` is the unsigned integer ``sign | exponent field | mantissa field``, as
it would sit in memory on hardware that has the format. fpsim stores codes in the
smallest unsigned type that holds them (uint8 up to 8 bits, uint16 up to 16, uint32
beyond), exactly as ml_dtypes' ``x.astype(T).view(uintN)`` does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fpsim import _bits, _e8m0
from fpsim.formats import Format, get_format
from fpsim.rounding import FormatLike, Rounding, nan_payload_kept, quantize


def code_dtype(fmt: FormatLike) -> np.dtype:
    """The unsigned integer type fpsim stores ``fmt``'s codes in."""
    bits = get_format(fmt).bits
    return np.dtype(np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)


def _nan_code(fmt: Format, sign, payload):
    """The code of a NaN, as ml_dtypes writes it (``payload``: q's top mantissa bits)."""
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    if fmt.convention == "fnuz":
        return jnp.full_like(sign, 1 << (fmt.bits - 1))
    if fmt.convention == "fn":
        return sign | ((1 << (e + m)) - 1)
    top = sign | (((1 << e) - 1) << m)
    if nan_payload_kept(fmt):  # quantize already kept a nonzero payload in the top bits
        return top | payload
    return top | (1 << (m - 1))  # the canonical quiet NaN


@functools.partial(jax.jit, static_argnums=(1,))
def _encode_f32(q, fmt: Format):
    c = _bits.carrier_of(q.dtype)
    u, P, m = c.uint, c.mant, fmt.mantissa_bits
    b = c.to_bits(q)
    a = b & u(c.abs_mask)
    sign = ((b >> (c.width - 1)) << (fmt.bits - 1)).astype(jnp.uint32)
    big_e = (a >> P).astype(jnp.int32)
    e_eff = jnp.maximum(big_e, 1)
    sig = (a & u((1 << P) - 1)) | jnp.where(big_e > 0, u(1 << P), u(0))
    # q is on fmt's grid, so dropping `shift` bits loses nothing (see rounding.py)
    shift = _bits.grid_shift(big_e, fmt, c).astype(u)
    n = (sig >> jnp.minimum(shift, u(c.width - 1))).astype(jnp.uint32)
    field = jnp.maximum(e_eff - c.bias - fmt.emin, 0).astype(jnp.uint32)
    code = sign | ((field << m) + n)  # n carries the implicit 1 into the field
    inf_code = sign | (((1 << fmt.exponent_bits) - 1) << m)
    code = jnp.where(a == u(c.inf_bits), inf_code, code)
    if fmt.has_nan:  # (formats without NaN never see one: quantize made it a zero)
        payload = ((a & u((1 << P) - 1)) >> u(P - m)).astype(jnp.uint32)
        code = jnp.where(a > u(c.inf_bits), _nan_code(fmt, sign, payload), code)
    return code.astype(code_dtype(fmt))


def encode(
    x: jax.typing.ArrayLike,
    fmt: FormatLike,
    rounding: Rounding = "nearest",
    **quantize_kwargs,
) -> jax.Array:
    """The bit patterns of ``x`` in ``fmt``, after rounding.

    Equal to ml_dtypes' ``x.astype(T).view(uintN)``, NaN patterns included: the sign
    and the canonical quiet NaN (fp16 keeps the top 10 payload bits, as numpy does;
    "fnuz" formats have the one NaN code 0x80).

    Args:
      x: floating-point values.
      fmt: the format.
      rounding: and ``**quantize_kwargs``: as for :func:`fpsim.quantize`.

    Returns:
      uint8 codes for formats of up to 8 bits, uint16 up to 16, uint32 beyond.

    Example:
      >>> import fpsim
      >>> hex(int(fpsim.encode(1.0, "fp16")))
      '0x3c00'
    """
    fmt = get_format(fmt)
    if fmt.convention == "fnu":  # E8M0: no sign, no mantissa (see fpsim._e8m0)
        return _e8m0.encode(quantize(x, fmt, rounding, **quantize_kwargs), fmt)
    return _encode_f32(quantize(x, fmt, rounding, **quantize_kwargs), fmt)


@functools.partial(jax.jit, static_argnums=(1,))
def _decode(code, fmt: Format):
    c = _bits.F32
    m, e = fmt.mantissa_bits, fmt.exponent_bits
    code = code.astype(jnp.uint32) & jnp.uint32((1 << fmt.bits) - 1)
    sign = (code >> (fmt.bits - 1)) << 31
    field = ((code >> m) & ((1 << e) - 1)).astype(jnp.int32)
    mant = code & jnp.uint32((1 << m) - 1)
    normal = ((field - fmt.bias + c.bias).astype(jnp.uint32) << c.mant) | (
        mant << (c.mant - m)
    )
    # subnormal: mant * 2**(emin - m); normalise with the position k of mant's top bit
    k = 31 - lax.clz(mant).astype(jnp.int32)
    exp = fmt.emin - m + k
    frac = (mant << (c.mant - k).astype(jnp.uint32)) & jnp.uint32((1 << c.mant) - 1)
    sub_normal_f32 = ((exp + c.bias).astype(jnp.uint32) << c.mant) | frac
    sub_subnormal_f32 = mant << max(fmt.emin - m + c.bias + c.mant - 1, 0)
    sub = jnp.where(exp >= 1 - c.bias, sub_normal_f32, sub_subnormal_f32)
    sub = jnp.where(mant == 0, jnp.uint32(0), sub)
    mag = jnp.where(field == 0, sub, normal)
    top = field == (1 << e) - 1
    if fmt.convention == "ieee":
        # float16 and bfloat16 widen a NaN's payload with it (a shift), as ml_dtypes
        nan = mant << (c.mant - m) if nan_payload_kept(fmt, widening=True) else c.qnan_bits
        mag = jnp.where(top, jnp.where(mant == 0, c.inf_bits, c.inf_bits | nan), mag)
    elif fmt.convention == "fn":
        mag = jnp.where(top & (mant == (1 << m) - 1), c.qnan_bits, mag)
    elif fmt.convention == "fnuz":
        mag = jnp.where(code == 1 << (fmt.bits - 1), c.qnan_bits, mag)
    return c.from_bits(sign | mag.astype(jnp.uint32))


def decode(bits: jax.typing.ArrayLike, fmt: FormatLike) -> jax.Array:
    """The float32 values of ``fmt``'s bit patterns; ``decode(encode(x)) == quantize(x)``.

    Args:
      bits: unsigned (or non-negative signed) integer codes, at most ``fmt.bits`` wide.
      fmt: the format.

    Raises:
      TypeError: for non-integer input.
      ValueError: for a concrete code that does not fit in ``fmt.bits`` bits.

    Example:
      >>> import fpsim
      >>> float(fpsim.decode(0x7E, "e4m3")), float(fpsim.decode(0x7F, "e4m3"))
      (448.0, nan)
    """
    fmt = get_format(fmt)
    if not hasattr(bits, "dtype"):
        bits = np.asarray(bits)
    if not jnp.issubdtype(bits.dtype, jnp.integer):
        raise TypeError(f"decode takes integer bit patterns, got dtype {bits.dtype}")
    if not isinstance(bits, jax.core.Tracer):
        arr = np.asarray(bits)
        if arr.size and (arr.min() < 0 or int(arr.max()) >= 1 << fmt.bits):
            bad = int(arr.max()) if arr.min() >= 0 else int(arr.min())
            raise ValueError(
                f"bit pattern {bad:#x} does not fit in {fmt.name}'s {fmt.bits} bits "
                f"(valid: 0x0 .. {(1 << fmt.bits) - 1:#x})"
            )
    if fmt.convention == "fnu":  # E8M0: every code a power of two (see fpsim._e8m0)
        return _e8m0.decode(jnp.asarray(bits), fmt)
    return _decode(jnp.asarray(bits), fmt)


def all_values(fmt: FormatLike, *, include_inf: bool = False) -> np.ndarray:
    """Every finite value of ``fmt``, sorted ascending, each once (+0 and -0 as one 0).

    Only for formats of at most 16 bits (65,536 codes). With ``include_inf=True``, IEEE
    formats add -inf and +inf at the ends.

    Example:
      >>> import fpsim
      >>> fpsim.all_values("e2m1").tolist()
      [-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    fmt = get_format(fmt)
    if fmt.bits > 16:
        raise ValueError(f"{fmt.name} has {fmt.bits} bits; all_values lists up to 16")
    values = np.asarray(decode(np.arange(1 << fmt.bits, dtype=np.uint32), fmt))
    keep = np.isfinite(values) | (include_inf & np.isinf(values))
    return np.unique(values[keep] + np.float32(0))  # + 0 folds -0 into 0
