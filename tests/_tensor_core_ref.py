"""Exact rational model of a tensor-core accumulator (the spec of fpsim's _tensor_core).

Slow and obviously correct: every value is a ``Fraction``; alignment, truncation and the
final rounding are written from the definition, with no bit tricks. One dot product:

* the contraction is cut into chunks of ``promote_every`` products (one chunk if None),
  each chunk into consecutive groups of ``group_size``;
* a group step takes the group's exact products and the running sum ``c`` (which starts
  at 0 in every chunk); ``E`` is the largest term exponent (a product's is the sum of its
  operands' exponents ``max(floor(log2|x|), emin)``; ``c``'s is its own, with the
  accumulator's ``emin``); every term is cut to a multiple of ``2**(E - p)`` (toward zero,
  or to nearest-even; with a sticky bit: to ``2**(E-p)``, then one more bit that is 1 when
  anything was cut); the exact sum is rounded to the accumulator format;
* with promotion, each chunk's result is added to an FP32 total, rounded to nearest.
"""

from __future__ import annotations

import math
from fractions import Fraction

import fpsim

F32 = fpsim.get_format("fp32")


def floor_log2(x: Fraction) -> int:
    """``floor(log2(x))`` for ``x > 0``, exactly."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    return e


def field_exponent(x: Fraction, emin: int) -> int:
    return max(floor_log2(abs(x)), emin)


def round_to(x: Fraction, fmt: fpsim.Format, mode: str) -> float:
    """Round ``x`` to ``fmt``: ``"nearest"`` (ties to even) or ``"toward_zero"``."""
    if x == 0:
        return 0.0
    a = abs(x)
    q = Fraction(2) ** (max(floor_log2(a), fmt.emin) - fmt.mantissa_bits)
    n, r = divmod(a, q)
    if mode == "nearest" and (2 * r > q or (2 * r == q and n % 2 == 1)):
        n += 1
    v = n * q
    if v > Fraction(fmt.max):
        v = math.inf if mode == "nearest" else fmt.max
    return float(v) if x > 0 else -float(v)


def cut(x: Fraction, unit: Fraction, mode: str) -> Fraction:
    """``x`` as a multiple of ``unit``: truncated toward zero or rounded to nearest-even."""
    n, r = divmod(abs(x), unit)
    if mode == "nearest" and (2 * r > unit or (2 * r == unit and n % 2 == 1)):
        n += 1
    return n * unit if x >= 0 else -n * unit


def group_step(c: Fraction, pairs, model, inputs: fpsim.Format) -> Fraction:
    """One fused step of ``model``: ``c`` plus the products of ``pairs``.

    An accumulator that overflowed to infinity (rounding to nearest) stays there."""
    if isinstance(c, float):
        return c
    terms = []
    for a, b in pairs:
        a, b = Fraction(a), Fraction(b)
        if a != 0 and b != 0:
            terms.append(
                (a * b, field_exponent(a, inputs.emin) + field_exponent(b, inputs.emin))
            )
    if c != 0:
        terms.append((c, field_exponent(c, model.accumulator.emin)))
    if not terms:
        return Fraction(0)
    big = max(e for _, e in terms)
    unit = Fraction(2) ** (big - model.kept_bits)
    total = Fraction(0)
    for x, _ in terms:
        t = cut(x, unit, model.alignment)
        if model.sticky:
            t += (unit / 2) * (1 if x > 0 else -1) * (t != x)
        total += t
    out = round_to(total, model.accumulator, model.rounding)
    return out if math.isinf(out) else Fraction(out)


def dot(a, b, model, inputs, scales=None) -> float:
    """The model's dot product of two sequences of floats (on ``inputs``'s grid).

    ``scales``: None, or one ``(scale_a, scale_b)`` pair per chunk (a scaled GEMM): the
    chunk's result ``c`` becomes ``fl32(fl32(scale_a * scale_b) * c)`` before it is
    promoted (or returned, without promotion).
    """
    k = len(a)
    chunk = model.promote_every or max(k, 1)
    n = model.group_size
    total = Fraction(0)
    for s in range(0, k, chunk):
        c = Fraction(0)
        for g in range(s, min(s + chunk, k), n):
            end = min(g + n, s + chunk, k)
            c = group_step(c, list(zip(a[g:end], b[g:end], strict=True)), model, inputs)
        if scales is not None:
            sa, sb = scales[s // chunk]
            s_ab = Fraction(round_to(Fraction(sa) * Fraction(sb), F32, "nearest"))
            c = Fraction(round_to(s_ab * c, F32, "nearest"))
        if model.promote_every is None:
            return float(c)
        total = Fraction(round_to(total + c, F32, "nearest"))
    return float(total)


def matmul(a, b, model, inputs):
    """``a @ b`` (nested lists or 2-D arrays) with :func:`dot` for every output."""
    m, k = len(a), len(a[0])
    n = len(b[0])
    cols = [[float(b[i][j]) for i in range(k)] for j in range(n)]
    return [[dot([float(v) for v in a[i]], cols[j], model, inputs) for j in range(n)]
            for i in range(m)]  # fmt: skip


def sequential_fp32(a, b) -> float:
    """``s = fl32(s + a_i b_i)`` with exact products: an FMA loop, correctly rounded."""
    s = Fraction(0)
    for x, y in zip(a, b, strict=True):
        s = Fraction(round_to(s + Fraction(x) * Fraction(y), F32, "nearest"))
    return float(s)
