"""Arithmetic rounded once: the exact sum of two carrier values, rounded to a format.

Every sum fpsim simulates (an accumulator, a weight update, a step of an all-reduce)
is ``fmt(a + b)``: the *exact* sum of two values, rounded once to ``fmt``. The values
are held in a carrier (float32, or float64 under x64; see ``fpsim._bits``), and the
carrier's own addition rounds too, so ``quantize(a + b, fmt)`` rounds *twice*:

* Round to nearest: the carrier sum can land exactly on a tie of ``fmt`` that the exact
  sum was not on (``2048 + 1 + 2**-24`` must round up in FP16; float32 drops the
  ``2**-24`` and FP16 then rounds the tie ``2049`` to even, 2048).
* Directed modes: the carrier drops a tiny addend entirely (``2048 + 2**-24`` rounded
  "up" to FP16 must be 2050, but float32 holds 2048, already on the grid).
* Stochastic rounding: the probability of rounding up must be the exact remainder over
  the grid spacing; the carrier sum has thrown part of the remainder away.

The cure is an error-free transformation. TwoSum (Knuth; six carrier operations)
returns ``s = fl(a + b)`` and the exact error ``err = (a + b) - s``: together they
*are* the exact sum. Then:

:func:`sum_to_odd`
    Round to odd (Boldo & Melquiond 2008): if ``err != 0`` and ``s`` is even, step
    ``s`` one carrier ulp toward ``err``; the odd last bit records "something beyond".
    Rounding that value to any format at least two bits narrower than the carrier, to
    nearest, or one bit narrower, in a directed mode, is rounding the exact sum once.
:func:`add_round` with ``rounding="stochastic"``
    The exact sum lies strictly between ``s`` and its neighbour ``t`` toward ``err``,
    a fraction ``f = |err| / |t - s|`` of the way. Take ``t`` with probability ``f``
    (an independent draw), else ``s``, and round that stochastically. No grid point of
    ``fmt`` lies strictly between ``s`` and ``t``, and the probability of rounding up
    is linear in the value between two grid points, so the mixture rounds up with
    probability exactly ``(exact - lo) / (hi - lo)``, for every format on the carrier's
    grid (to ``2**-W`` of the carrier's ulp, with ``W`` = 32 or 64 random bits).

Single operations on operands already on a narrow grid need none of this: for ``+ - *
/ sqrt`` of ``p``-bit operands, rounding the carrier's correctly rounded result again
to ``p`` bits is correct to nearest whenever the carrier has at least ``2p + 2`` bits
(Figueroa 1995, "When is double rounding innocuous?"): every format of at most 11
significant bits in float32. :func:`fpsim.emulate` relies on that.

One caveat of XLA on CPU: float32 subnormal inputs and results of float operations are
flushed to zero, so sums below ``2**-126`` (BF16's own subnormals) become 0 there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fpsim import _bits, _keys
from fpsim.formats import Format
from fpsim.rounding import quantize, quantize_result


def covers(fmt: Format, c: _bits.Carrier) -> bool:
    """Whether every value of carrier ``c`` is a value of ``fmt`` (rounding is a no-op)."""
    return (
        fmt.mantissa_bits >= c.mant and fmt.emin <= 1 - c.bias and fmt.convention == "ieee"
    )


def is_float32_format(fmt: Format) -> bool:
    """Whether rounding to ``fmt`` is the identity on float32 values."""
    return covers(fmt, _bits.F32)


def round_to(x, fmt: Format | None, rounding: str = "nearest", key=None):
    """``quantize`` that is skipped for None, and for formats that hold every carrier value
    (FP32 for float32 data) with round-to-nearest."""
    if fmt is None:
        return x
    if rounding == "nearest" and covers(fmt, _bits.carrier_of(x.dtype)):
        return x
    return quantize(x, fmt, rounding, key=key)


def two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(s, err)`` with ``s = fl(a + b)`` and ``s + err == a + b`` exactly (Knuth)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return s, err


def _toward_err(s, err, c: _bits.Carrier):
    """``s``'s bits, the bits of its neighbour toward ``err``, and whether to use it.

    ``use`` is set where ``a + b`` was inexact (``err`` nonzero) and finite. The integer
    order of a float's magnitude bits is the value order, so the neighbour is one step
    of the bit pattern: up in magnitude if ``err`` has ``s``'s sign, else down.
    """
    u = c.uint
    sb, eb = c.to_bits(s), c.to_bits(err)
    ea = eb & u(c.abs_mask)
    finite = (sb & u(c.abs_mask)) < u(c.inf_bits)
    use = finite & (ea != 0) & (ea < u(c.inf_bits))
    same_sign = (sb >> u(c.width - 1)) == (eb >> u(c.width - 1))
    return sb, jnp.where(same_sign, sb + u(1), sb - u(1)), use


def sum_to_odd(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` rounded to the carrier with round-to-odd: inexact sums get an odd last bit.

    If ``err != 0`` and ``fl(a + b)`` is even, the exact sum lies strictly between it and
    its neighbour toward ``err``: step to that neighbour, which is odd.
    """
    s, err = two_sum(a, b)
    c = _bits.carrier_of(s.dtype)
    sb, stepped, use = _toward_err(s, err, c)
    fix = use & ((sb & c.uint(1)) == 0)
    return c.from_bits(jnp.where(fix, stepped, sb))


def _fraction_threshold(s, err, c: _bits.Carrier) -> jax.Array:
    """``ceil(f * 2**W)`` for ``f = |err| / |t - s|`` (``t``: ``s``'s neighbour toward
    ``err``), in integers, so that ``P(random W-bit word < threshold) = f``.

    With ``E`` the exponent fields, ``|err| = sig_e * 2**(max(Ee, 1) - bias - P)`` and
    the step ``|t - s| = 2**(e_step - bias - P)``, where ``e_step = max(Es, 1)``, one
    less when stepping down out of a binade (``s`` a power of two, ``t`` below it).
    """
    u, P, W = c.uint, c.mant, c.width
    sa, ea = c.to_bits(s) & u(c.abs_mask), c.to_bits(err) & u(c.abs_mask)
    big_es, big_ee = (sa >> u(P)).astype(jnp.int32), (ea >> u(P)).astype(jnp.int32)
    down = (jnp.signbit(s) != jnp.signbit(err)) & ((sa & u((1 << P) - 1)) == 0)
    e_step = jnp.maximum(big_es, 1) - (down & (big_es > 1)).astype(jnp.int32)
    sig_e = (ea & u((1 << P) - 1)) | jnp.where(big_ee > 0, u(1 << P), u(0))
    k = jnp.maximum(big_ee, 1) - e_step + W  # threshold = sig_e * 2**k, k <= W - P - 2
    left = jnp.clip(k, 0, W - 1).astype(u)
    right = jnp.clip(-k, 0, W - 1).astype(u)
    spill = (sig_e & ((u(1) << right) - u(1))) != 0  # bits shifted out: round up
    return jnp.where(k >= 0, sig_e << left, (sig_e >> right) + spill.astype(u))


def _exact_stochastic(a, b, fmt: Format, key, saturate: bool = False) -> jax.Array:
    """Stochastic rounding of the exact ``a + b`` (see the module docstring)."""
    s, err = two_sum(a, b)
    c = _bits.carrier_of(s.dtype)
    sb, stepped, use = _toward_err(s, err, c)
    key = _keys.canonical_key(key)
    draw = jax.random.bits(_keys.derive(key, 1), s.shape, jnp.dtype(c.uint))
    take = use & (draw < _fraction_threshold(s, err, c))
    x = c.from_bits(jnp.where(take, stepped, sb))
    return quantize(x, fmt, "stochastic", key=key, saturate=saturate)


def check_exact_sum(fmt: Format, rounding: str, c: _bits.Carrier = _bits.F32) -> None:
    """Raise unless :func:`add_round` rounds sums to ``fmt`` exactly in ``rounding``.

    In a carrier with ``P`` stored mantissa bits: round to nearest needs ``fmt`` to
    have at most ``P - 2`` (round-to-odd's two extra bits), or to hold every carrier
    value (then the carrier's own addition is the answer); directed modes need at most
    ``P - 1``; stochastic rounding works for at most ``P``.
    """
    m, P = fmt.mantissa_bits, c.mant
    limit = {"nearest": P - 2, "stochastic": P}.get(rounding, P - 1)
    if m <= limit or (rounding == "nearest" and covers(fmt, c)):
        return
    raise ValueError(
        f"sums rounded to {fmt.name} ({m} mantissa bits) with rounding={rounding!r} "
        f"cannot be simulated exactly in {jnp.dtype(c.dtype).name}: round to nearest "
        f"needs at most {P - 2} mantissa bits (or the carrier's own format), directed "
        f"modes at most {P - 1}, stochastic rounding at most {P}"
    )


def double_rounding_innocuous(fmt: Format, rounding: str, c: _bits.Carrier) -> bool:
    """Whether ``quantize(a + b, fmt)`` *is* ``fmt(a + b)`` for ``a``, ``b`` on ``fmt``'s
    grid: round to nearest, and ``fmt`` has ``p <= (P + 1 - 2) / 2`` significant bits
    against the carrier's ``P + 1`` (Figueroa 1995: ``2p + 2`` carrier bits suffice;
    every format of at most 10 mantissa bits in float32, FP16 and BF16 included)."""
    return rounding == "nearest" and 2 * (fmt.mantissa_bits + 1) + 2 <= c.mant + 1


def add_round(a, b, fmt: Format, rounding: str = "nearest", key=None, *,
              saturate: bool = False, on_grid: bool = False) -> jax.Array:  # fmt: skip
    """``fmt(a + b)``: the exact sum of two carrier values, rounded once to ``fmt``.

    ``rounding="stochastic"`` needs ``key``; it draws with ``key`` and with
    ``fpsim._keys.derive(key, 1)``. ``saturate`` clamps overflow to +-max, as in
    :func:`fpsim.quantize`. ``on_grid=True`` promises that ``a`` and ``b`` are values of
    ``fmt`` already (a Kahan step, a level of a pairwise tree): rounding to nearest then
    needs no TwoSum where :func:`double_rounding_innocuous` (the same bits, cheaper).

    Raises:
      ValueError: where that is not possible in the carrier (see
        :func:`check_exact_sum`).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    c = _bits.carrier_of(jnp.result_type(a, b))
    if rounding == "nearest" and covers(fmt, c):
        return quantize(a + b, fmt, saturate=True) if saturate else a + b
    check_exact_sum(fmt, rounding, c)
    if rounding == "stochastic":
        return _exact_stochastic(a, b, fmt, key, saturate)
    # the carrier values rounded are sums: their NaNs are quiet (quantize_result), and
    # for FP16 and BF16 to nearest the rounding is XLA's own conversion
    if on_grid and double_rounding_innocuous(fmt, rounding, c):
        return quantize_result(a + b, fmt, rounding, saturate=saturate)
    return quantize_result(sum_to_odd(a, b), fmt, rounding, saturate=saturate)


def sub_round(a, b, fmt: Format, rounding: str = "nearest", key=None) -> jax.Array:
    """``fmt(a - b)``, as :func:`add_round` (negation is exact)."""
    return add_round(a, -jnp.asarray(b), fmt, rounding, key)
