"""Exact float32 arithmetic on the bits, for the pieces of block scaling that need it.

A block scale can be as small as ``2**-127``, a float32 *subnormal*, and the scaled
elements of a block of tiny values (``uniform(0, 1e-38)``) are subnormal before they are
scaled. XLA on CPU flushes float32 subnormals in float arithmetic (``1e-39 * 2`` gives
0), so ``x / scale`` and ``q * scale`` are computed here with integers: a float is a
significand ``n`` and an exponent ``p`` (``|x| = n * 2**p``), and multiplying by a power
of two is adding to ``p``. Only the final step rounds, once, to nearest even.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_INF = 0x7F800000
_ABS = 0x7FFFFFFF


def bits(x):
    """float32 -> uint32 bit pattern."""
    return lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)


def from_bits(b):
    """uint32 bit pattern -> float32."""
    return lax.bitcast_convert_type(b.astype(jnp.uint32), jnp.float32)


def split(b):
    """Magnitude bits -> (significand n with the implicit bit, exponent p): |x| = n*2**p."""
    e = (b >> 23).astype(jnp.int32)
    n = (b & jnp.uint32(0x7FFFFF)) | jnp.where(e > 0, jnp.uint32(1 << 23), jnp.uint32(0))
    return n, jnp.maximum(e, 1) - 150


def round_to_f32(n, p):
    """Magnitude bits of ``n * 2**p`` rounded to nearest even float32 (inf on overflow).

    ``n`` is a uint32 (0 allowed), ``p`` an int32; both broadcast. Exact whenever the
    value is a float32, subnormals included.
    """
    n = n.astype(jnp.uint32)
    top = 31 - lax.clz(n).astype(jnp.int32)  # index of n's leading bit (-1 for n == 0)
    e = top + p  # the value lies in [2**e, 2**(e+1))
    q = jnp.maximum(e, -126) - 23  # exponent of float32's quantum there
    s = q - p  # bits of n below the quantum (negative: shift left, exact)
    left = n << jnp.clip(-s, 0, 31).astype(jnp.uint32)
    sr = jnp.clip(s, 1, 32).astype(jnp.uint32)  # >= 32: n * 2**-s < 1/2, rounds to 0
    big = sr >= 32
    s31 = jnp.minimum(sr, jnp.uint32(31))
    keep = jnp.where(big, jnp.uint32(0), n >> s31)
    mask = jnp.where(big, jnp.uint32(0xFFFFFFFF), (jnp.uint32(1) << s31) - jnp.uint32(1))
    rem = n & mask
    half = jnp.uint32(1) << (sr - jnp.uint32(1))
    up = (rem > half) | ((rem == half) & ((keep & jnp.uint32(1)) == 1))
    right = keep + up.astype(jnp.uint32)
    r = jnp.where(s <= 0, left, right)  # the value in quanta: 2**23 <= r <= 2**24 if normal
    normal = ((e + 126).astype(jnp.uint32) << 23) + r
    out = jnp.where(e >= -126, normal, r)  # a subnormal's bits are its quanta count
    out = jnp.where((e >= 128) | (out >= _INF), jnp.uint32(_INF), out)
    return jnp.where(n == 0, jnp.uint32(0), out)


def ldexp(x, k):
    """``x * 2**k`` for float32 ``x`` and int32 ``k``, rounded once (nearest even).

    Exact when the result is a float32 (subnormals included); overflow gives +-inf;
    inf and NaN pass through.
    """
    b = bits(x)
    a = b & jnp.uint32(_ABS)
    n, p = split(a)
    mag = round_to_f32(n, p + jnp.asarray(k, jnp.int32))
    mag = jnp.where(a >= _INF, a, mag)
    return from_bits((b & jnp.uint32(1 << 31)) | mag)


def floor_log2(a):
    """floor(log2 |x|) of magnitude bits ``a`` (finite, nonzero), subnormals included."""
    n, p = split(a)
    return 31 - lax.clz(n).astype(jnp.int32) + p


def div_small(a, d: int, k: int):
    """Magnitude bits of float32 ``a / (d * 2**k)`` rounded to nearest even, exactly.

    ``d`` is a small odd integer (3, 7, 15, 21: the odd parts of 6, 448, 57344, 7.5,
    2688): a 32-bit long division of the significand, its remainder kept as a sticky
    bit, then one rounding (:func:`round_to_f32`). ``a`` must be finite.
    """
    n, p = split(a)
    lead = lax.clz(n).astype(jnp.int32) - 1  # normalise n to 31 bits: room for quotient
    nn = n << jnp.clip(lead, 0, 31).astype(jnp.uint32)
    quo = nn // jnp.uint32(d)
    sticky = (nn % jnp.uint32(d) != 0).astype(jnp.uint32)
    # quo has >= 27 significant bits, so or-ing the sticky bit into its lowest bit
    # (round to odd) keeps the one rounding to 24 bits correct.
    return round_to_f32(quo | sticky, p - lead - k)


def mul_narrow(x, b):
    """``x * b`` rounded once (nearest even), exactly, when ``b`` has <= 8 significant bits.

    ``b`` is an E4M3/E2M1 value, a power of two or an int8: its significand fits in 8
    bits, so the product of significands fits in 32. Subnormal inputs and results are
    exact; inf * 0 and NaN give NaN.
    """
    bx, bb = bits(x), bits(b)
    ax, ab = bx & jnp.uint32(_ABS), bb & jnp.uint32(_ABS)
    nx, px = split(ax)
    nb, pb = split(ab)
    drop = jnp.maximum(32 - lax.clz(nb).astype(jnp.int32) - 8, 0)  # keep b's top 8 bits
    mag = round_to_f32(nx * (nb >> drop.astype(jnp.uint32)), px + pb + drop)
    sign = (bx ^ bb) & jnp.uint32(1 << 31)
    inf = (ax == _INF) | (ab == _INF)
    mag = jnp.where(inf, jnp.uint32(_INF), mag)
    nan = (ax > _INF) | (ab > _INF) | (inf & ((ax == 0) | (ab == 0)))
    return jnp.where(nan, jnp.float32(jnp.nan), from_bits(sign | mag))
