"""Correctly rounded arithmetic in a narrow format, computed in float32.

Why computing in float32 and rounding is enough (mostly): for the basic operations
``+ - * / sqrt`` on operands with ``p`` significant bits, rounding the exact result to
float32 (24 bits) and then to the ``p``-bit format gives the correctly rounded result
whenever ``24 >= 2p + 2`` (Figueroa 1995, "When is double rounding innocuous?"), for
round-to-nearest. That covers every format of at most 11 significant bits (10 stored
mantissa bits): FP16 has ``p = 11`` and ``2p + 2 = 24``, exactly float32's precision;
BF16, TF32 and the FP8s have fewer. Directed modes get no such guarantee: see
:func:`add_round` for sums.

The argument assumes the float32 intermediate neither overflows nor underflows. BF16
has float32's exponent range, so a BF16 result can be a float32 subnormal, and XLA on
CPU flushes float32 subnormals (inputs and results of float operations) to zero. BF16
arithmetic whose operands or results lie below ``2**-126`` (BF16's own subnormals) is
therefore flushed to zero here, exactly as on hardware that runs BF16 with FTZ.

Sums whose addends are *not* on the narrow grid (an FP16 accumulator plus an exact
float32 product of two FP16 numbers, which has up to 22 bits) are a different case: a
float32 sum rounded again can be double-rounded wrong. :func:`add_round` computes the
float32 sum *rounded to odd* (Boldo & Melquiond 2008) with an error-free TwoSum, which
makes the second rounding correct for every format of at most 22 significant bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from fpsim.formats import Format
from fpsim.rounding import quantize


def is_float32_format(fmt: Format) -> bool:
    """Whether rounding to ``fmt`` is the identity on float32 values."""
    return fmt.mantissa_bits >= 23 and fmt.emin <= -126 and fmt.convention == "ieee"


def round_to(x, fmt: Format | None, rounding: str = "nearest", key=None):
    """``quantize`` that is skipped for None and float32 (round-to-nearest) formats."""
    if fmt is None or (is_float32_format(fmt) and rounding == "nearest"):
        return x
    return quantize(x, fmt, rounding, key=key)


def sum_to_odd(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` rounded to float32 with round-to-odd: inexact results get an odd last bit.

    TwoSum (Knuth) recovers the rounding error ``err = (a + b) - fl(a + b)`` exactly
    with six float32 operations. If ``err != 0`` and ``fl(a + b)`` is even, the exact sum
    lies strictly between it and its neighbour toward ``err``: step to that neighbour,
    which is odd. Both candidates bracket the exact sum, and the odd one tells a later
    rounding "there was something beyond".
    """
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    sb = lax.bitcast_convert_type(s, jnp.uint32)
    eb = lax.bitcast_convert_type(err, jnp.uint32)
    finite = (sb & 0x7FFFFFFF) < 0x7F800000
    inexact = ((eb & 0x7FFFFFFF) != 0) & ((eb & 0x7FFFFFFF) < 0x7F800000)
    fix = finite & inexact & ((sb & 1) == 0)
    same_sign = (sb >> 31) == (eb >> 31)  # toward err: away from zero if same sign
    stepped = jnp.where(same_sign, sb + 1, sb - 1)
    return lax.bitcast_convert_type(jnp.where(fix, stepped, sb), jnp.float32)


def check_exact_sum(fmt: Format, rounding: str) -> None:
    """Raise unless :func:`add_round` rounds sums to ``fmt`` exactly in ``rounding``.

    Round-to-odd makes the second rounding exact for formats at least two bits narrower
    than float32 (at most 21 mantissa bits), in every mode. A float32 accumulator is
    exact for round-to-nearest only (XLA's own addition); other modes would need the
    sum's error term, which a float32 result cannot carry.
    """
    if fmt.mantissa_bits <= 21 or (is_float32_format(fmt) and rounding == "nearest"):
        return
    raise ValueError(
        f"sums rounded to {fmt.name} ({fmt.mantissa_bits} mantissa bits) with "
        f"rounding={rounding!r} cannot be simulated exactly in float32: use "
        "rounding='nearest' with a float32 accumulator, or an accumulator of at most "
        "21 mantissa bits (FP16, BF16, TF32, FP8, ...) for directed or stochastic modes"
    )


def add_round(a, b, fmt: Format, rounding: str = "nearest", key=None) -> jax.Array:
    """``fmt(a + b)``: the exact sum of two float32 values, rounded once to ``fmt``.

    Raises:
      ValueError: where that is not possible in float32 (see :func:`check_exact_sum`).
    """
    if is_float32_format(fmt) and rounding == "nearest":
        return a + b
    check_exact_sum(fmt, rounding)
    return quantize(sum_to_odd(a, b), fmt, rounding, key=key)


def sub_round(a, b, fmt: Format, rounding: str = "nearest", key=None) -> jax.Array:
    """``fmt(a - b)``, as :func:`add_round` (negation is exact)."""
    return add_round(a, -b, fmt, rounding, key)
