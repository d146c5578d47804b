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

#: float32 bit masks: +inf (all exponent bits) and the magnitude (all but the sign)
INF = 0x7F800000
ABS = 0x7FFFFFFF


def bits(x):
    """float32 -> uint32 bit pattern."""
    return lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)


def from_bits(b):
    """uint32 bit pattern -> float32."""
    return lax.bitcast_convert_type(b.astype(jnp.uint32), jnp.float32)


def amax_bits(xb):
    """Magnitude bits of each block's largest |x| (blocks along the last axis); a NaN
    gives bits above ``0x7F800000``, an inf exactly that.

    Compared as uint32, magnitude bits order like the magnitudes (NaN above inf). A
    last axis longer than 32 that is a multiple of 32 is reduced 32 at a time first,
    in one fused pass over ``x`` (reshaped before the bit operations), then the
    per-32 maxima (``lax.optimization_barrier`` keeps XLA from merging the two
    reductions back into one). Given one reduction over 128 or 16384 elements, XLA on
    CPU splits it into a windowed reduction that first writes ``|x|`` out in full,
    about three times as long.
    """
    n = xb.shape[-1]
    if n <= 32 or n % 32:
        return jnp.max(bits(xb) & jnp.uint32(ABS), axis=-1)
    xb = xb.reshape(*xb.shape[:-1], n // 32, 32)
    m = lax.optimization_barrier(jnp.max(bits(xb) & jnp.uint32(ABS), axis=-1))
    return jnp.max(m, axis=-1)


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
    out = jnp.where((e >= 128) | (out >= INF), jnp.uint32(INF), out)
    return jnp.where(n == 0, jnp.uint32(0), out)


def ldexp(x, k):
    """``x * 2**k`` for float32 ``x`` and int32 ``k``, rounded once (nearest even).

    Exact when the result is a float32 (subnormals included); overflow gives +-inf;
    inf and NaN pass through.
    """
    b = bits(x)
    a = b & jnp.uint32(ABS)
    n, p = split(a)
    mag = round_to_f32(n, p + jnp.asarray(k, jnp.int32))
    mag = jnp.where(a >= INF, a, mag)
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
    ax, ab = bx & jnp.uint32(ABS), bb & jnp.uint32(ABS)
    nx, px = split(ax)
    nb, pb = split(ab)
    drop = jnp.maximum(32 - lax.clz(nb).astype(jnp.int32) - 8, 0)  # keep b's top 8 bits
    mag = round_to_f32(nx * (nb >> drop.astype(jnp.uint32)), px + pb + drop)
    sign = (bx ^ bb) & jnp.uint32(1 << 31)
    inf = (ax == INF) | (ab == INF)
    mag = jnp.where(inf, jnp.uint32(INF), mag)
    nan = (ax > INF) | (ab > INF) | (inf & ((ax == 0) | (ab == 0)))
    return jnp.where(nan, jnp.float32(jnp.nan), from_bits(sign | mag))


# --------------------------------------------------------------------------------------
# Fast exact scaling by float multiplication, where flushing cannot change the answer
# --------------------------------------------------------------------------------------
# Multiplying a float32 by a power of two is exact when the factor and the product are
# normal. XLA on CPU flushes subnormal inputs and results to signed zero, so the two
# helpers below keep every operand normal: a subnormal ``x`` is first made normal
# (``x * 2**24``, exact through an integer conversion), a factor ``2**k`` with k out of
# float32's normal range is split in two. What can still flush is a *result* below
# ``2**-126``; :func:`scale_pow2` leaves those to the caller (they round to zero in any
# narrow format whose smallest step is far above them), :func:`mul_pow2` computes them
# exactly with integers.
def pow2(e):
    """float32 ``2**e`` for int32 ``e``: 0 below -126, ``e`` clipped at 127."""
    e = jnp.asarray(e, jnp.int32)
    b = (jnp.clip(e, -126, 127) + 127).astype(jnp.uint32) << 23
    return jnp.where(e < -126, jnp.float32(0.0), from_bits(b))


def ldexp_subnormal_24(b):
    """``x * 2**24`` exactly for a subnormal (or zero) float32 ``x`` given its bits ``b``:
    its magnitude bits are an integer number of units ``2**-149``."""
    n = lax.bitcast_convert_type(b & jnp.uint32(ABS), jnp.int32)  # signed: vectorises
    mag = n.astype(jnp.float32) * jnp.float32(2.0**-125)
    return from_bits(bits(mag) | (b & jnp.uint32(1 << 31)))


def pow2_pair(k):
    """Two float32 factors whose product is ``2**k`` (int32 ``k`` in -252..252), each
    normal, for :func:`scale_pow2` and :func:`mul_pow2`.

    Compute them once per block and pass them through ``lax.optimization_barrier``
    before broadcasting: XLA would otherwise fuse this integer work into the
    elementwise loop and redo it for every element.
    """
    k = jnp.asarray(k, jnp.int32)
    k1 = k >> 1
    return pow2(k1), pow2(k - k1)


def scale_pow2(x, f):
    """``x * 2**k`` for float32 ``x`` (subnormals included), ``f = pow2_pair(k)``.

    Exact when the result is a normal float32 (overflow gives +-inf); a result below
    ``2**-126`` may come out as a signed zero (XLA on CPU flushes it). The factors are
    usually one pair per block, broadcast against the block's elements.
    """
    b = bits(x)
    sub = (b & jnp.uint32(INF)) == 0  # zero or subnormal
    xf = jnp.where(sub, ldexp_subnormal_24(b), x)
    y = (xf * f[0]) * f[1]
    return jnp.where(sub, y * jnp.float32(2.0**-24), y)


def mul_pow2(q, f, g):
    """``q * 2**k`` exactly, subnormal results included, with ``f = pow2_pair(k)`` and
    ``g = pow2(min(k + 149, 127))``, for ``q`` on a grid of step ``2**e`` with
    ``k + e >= -149`` (so that the product is a float32) and ``k >= -149``: elements
    of narrow formats times their block scale.
    """
    t = jnp.abs(q) * g  # the result in units of 2**-149: an integer when below 2**23
    sign = bits(q) & jnp.uint32(1 << 31)
    units = jnp.minimum(t, jnp.float32(2.0**23)).astype(jnp.int32)  # signed: vectorises
    small = from_bits(sign | lax.bitcast_convert_type(units, jnp.uint32))
    big = (q * f[0]) * f[1]
    return jnp.where(t < jnp.float32(2.0**23), small, big)


def materialize(a):
    """``a`` unchanged, but computed once into its own buffer.

    XLA fuses cheap elementwise producers into their consumers, so integer work on a
    block's scale would run once per *element* (16 or 32 times), and work shared by
    several consumers once per consumer. It does not fuse a reduction into an
    elementwise consumer: ``a`` goes through a max with zero over a new axis of two (a
    pad, evaluated once), an identity on its uint32 bits.
    """
    u = a.astype(jnp.uint32) if a.dtype == jnp.bool_ else lax.bitcast_convert_type(
        a, jnp.uint32)  # fmt: skip
    u = jnp.max(jnp.stack([u, jnp.zeros_like(u)], axis=-1), axis=-1)
    return u != 0 if a.dtype == jnp.bool_ else lax.bitcast_convert_type(u, a.dtype)


def per_block(*arrays):
    """Per-block values materialised (:func:`materialize`), with a trailing axis of one
    to broadcast against the block's elements."""
    return tuple(materialize(a)[..., None] for a in arrays)
