"""Block scaling one value at a time, exactly: what ``fpsim explain`` shows (MX, NVFP4).

Plain Python on ``fractions.Fraction`` (no JAX, no NumPy), step by step as
:func:`fpsim.blocks.quantize_blocks` computes it, and bit for bit the same (the tests
check every format, scale mode and edge class against it):

* every input is first a float32 (``quantize_blocks`` casts its input; here the exact
  decimal is rounded to float32 once);
* MX: the block's amax picks an E8M0 scale code by the scale mode (the rules of
  :mod:`fpsim.blocks._mx`, on the float32 bits of the amax); each element is ``x /
  2**k`` (exact) rounded to nearest even on the element grid and saturated at its max;
  the value is ``element * 2**k`` rounded to float32;
* NVFP4: each float32 operation of :mod:`fpsim.blocks._nvfp4` is one exact operation
  rounded to float32 (:func:`f32`): the tensor scale ``amax / 2688``, the block scale
  rounded to E4M3, the reciprocal ``(1 / tensor_scale) / block_scale``, ``x`` times it,
  and ``element * (tensor_scale * block_scale)``.

Also :func:`e8m0_code`: a float32 rounded to E8M0 as ml_dtypes does (and
``fpsim.encode``), for ``fpsim explain VALUE --format e8m0``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

from fpsim import reference as ref
from fpsim.blocks._format import INT8, BlockFormat, check_scale_mode
from fpsim.formats import E2M1, E4M3, FP32

Num = ref.Num
INF_BITS = 0x7F800000
MAX_BITS = 0x7F7FFFFF  # float32's largest finite value
NAN_CODE = 0xFF
_TWO = Fraction(2)


# --- float32 --------------------------------------------------------------------------
def f32(x: Num) -> Num:
    """``x`` rounded to float32 (nearest even; inf beyond the range; NaN stays NaN)."""
    return ref.round_exact(x, FP32, "nearest")[0]


def bits(v: Num) -> int:
    """Magnitude bits of a float32 value (the sign bit cleared)."""
    return ref.code_of(v, FP32) & 0x7FFFFFFF


def from_bits(b: int) -> Num:
    return ref.decode_exact(b, FP32)


def _div(a: Num, b: Num) -> Num:
    """float32 ``a / b`` for finite ``a >= 0``, ``b >= 0``: rounded once; ``/0`` is inf."""
    if b.mag == 0:
        return Num(False, "inf")
    return f32(Num(False, a.mag / b.mag))


def _mul(a: Num, b: Num) -> Num:
    """float32 ``a * b`` rounded once, with IEEE's inf and NaN (``0 * inf`` is NaN)."""
    if a.mag == "nan" or b.mag == "nan":
        return Num(a.neg, "nan")
    neg = a.neg != b.neg
    if a.mag == "inf" or b.mag == "inf":
        return Num(neg, "nan" if 0 in (a.mag, b.mag) else "inf")
    return f32(Num(neg, a.mag * b.mag))


# --- elements -------------------------------------------------------------------------
class Element(NamedTuple):
    """One element of a block: input, its quotient, code and values.

    Attributes:
      x: the input as float32.
      y: what is rounded to the element grid (MX: ``x / scale`` exactly; NVFP4: the
        float32 product ``x * reciprocal``, clipped to +-6).
      code: the element's bit pattern (MXINT8: the two's-complement byte).
      element: the element's value.
      value: ``element * scale``, as float32: what ``quantize_blocks`` returns.
      flushed: a nonzero input whose element is zero.
      saturated: ``|y|`` was beyond the element max (or inf) and came back as the max.
    """

    x: Num
    y: Num
    code: int
    element: Num
    value: Num
    flushed: bool
    saturated: bool


def _saturating(y: Num, bfmt: BlockFormat) -> tuple[int, Num, bool]:
    """(code, value, saturated) of ``y`` rounded to nearest on the element grid."""
    fmt = bfmt.element
    if bfmt.element == INT8:
        if not y.finite:
            r = 0 if y.mag == "nan" else (-128 if y.neg else 127)
        else:
            r = round(y.value * 64)  # half to even
            r = max(-128, min(127, r))
        sat = (y.mag == "inf") or (y.finite and abs(y.value * 64) > 127 + Fraction(1, 2))
        return r & 0xFF, Num(r < 0, abs(Fraction(r, 64))), sat
    q, over = ref.round_exact(y, fmt, "nearest")
    sat = over or y.mag == "inf"
    if sat:
        q = Num(y.neg, Fraction(fmt.max))
    return ref.code_of(q, fmt), q, sat


def _flushed(x: Num, q: Num) -> bool:
    return x.finite and x.mag != 0 and q.finite and q.mag == 0


# --- MX -------------------------------------------------------------------------------
def _odd_split(v: Fraction) -> tuple[int, int]:
    k = 0
    while v.denominator != 1 or v.numerator % 2 == 0:
        v, k = (v * 2, k - 1) if v.denominator != 1 else (v / 2, k + 1)
    return v.numerator, k


def mx_scale_code(amax_bits: int, bfmt: BlockFormat, mode: str) -> int:
    """The E8M0 scale code of a block whose amax has float32 magnitude bits
    ``amax_bits`` (the rules of :mod:`fpsim.blocks._mx`)."""
    check_scale_mode(mode)
    a = amax_bits
    if a > INF_BITS:
        return NAN_CODE
    if mode == "rceil":
        d = bits(_div(from_bits(min(a, MAX_BITS)), Num(False, Fraction(bfmt.element_max))))
        e = d >> 23
        code = e + (d & 0x7FFFFF != 0) if e > 0 else int(d > 0x400000)
        return 254 if a == INF_BITS else min(code, 254)
    if mode == "even":
        a = (a + (1 << (22 - bfmt.element_mantissa_bits))) & INF_BITS
    e = (a >> 23) - 127  # inf: 128; zero and subnormals: -127
    if mode == "ceil":
        e += (a & 0x7FFFFF) != 0
    return max(-127, min(127, e - bfmt.element_emax)) + 127


def mx_shift(code: int, mode: str) -> int:
    """log2 of the factor the elements are multiplied by: ``127 - code`` (rceil's code
    0: no scaling, as Transformer Engine)."""
    return 0 if (mode == "rceil" and code == 0) else 127 - code


def _times_pow2(x: Num, k: int) -> Num:
    if not x.finite:
        return x
    return Num(x.neg, x.mag * _TWO**k)


def mx_block(xs: list[Num], bfmt: BlockFormat, mode: str) -> tuple[int, list[Element]]:
    """One MX block of float32 values: (scale code, elements)."""
    code = mx_scale_code(max(bits(x) for x in xs), bfmt, mode)
    shift = mx_shift(code, mode)
    out = []
    for x in xs:
        y = _times_pow2(x, shift)
        c, q, sat = _saturating(y, bfmt)
        v = Num(False, "nan") if code == NAN_CODE else f32(_times_pow2(q, code - 127))
        out.append(Element(x, y, c, q, v, _flushed(x, q), sat))
    return code, out


# --- NVFP4 ----------------------------------------------------------------------------
class NVFP4Scales(NamedTuple):
    """The float32 steps of NVFP4's two-level scale, for one tensor."""

    amax: Num  # the tensor's largest |x| (float32)
    tensor_scale: Num  # amax / 2688 (NaN if the tensor holds inf or NaN)
    inv_tensor_scale: Num  # 1 / tensor_scale (of 1 where that is NaN or 0/0)


def nvfp4_tensor(xs: list[Num]) -> NVFP4Scales:
    a = max(bits(x) for x in xs)
    finite = a < INF_BITS
    amax = from_bits(min(a, MAX_BITS))
    ts = _div(amax, Num(False, Fraction(448 * 6))) if finite else Num(False, "nan")
    safe = ts if finite and a > 0 else Num(False, Fraction(1))
    return NVFP4Scales(from_bits(a), ts, _div(Num(False, Fraction(1)), safe))


def nvfp4_block(xs: list[Num], t: NVFP4Scales) -> tuple[Num, Num, Num, list[Element]]:
    """One NVFP4 block: (E4M3 block scale, reciprocal, ``ts * bs``, elements)."""
    a_t = bits(t.amax)
    finite = t.tensor_scale.mag != "nan"
    bsf = _div(from_bits(min(max(bits(x) for x in xs), MAX_BITS)), Num(False, Fraction(6)))
    if a_t == 0:
        ratio = Num(False, Fraction(0))
    else:
        ratio = _div(bsf, t.tensor_scale if finite else Num(False, Fraction(1)))
    ratio_v = min(max(ratio.mag, Fraction(1, 64)), Fraction(448)) if ratio.finite else 448
    bs = ref.round_exact(Num(False, Fraction(ratio_v)), E4M3, "nearest")[0]
    rcp = _div(t.inv_tensor_scale, bs) if t.inv_tensor_scale.finite else t.inv_tensor_scale
    s = _mul(t.tensor_scale, bs) if finite else Num(False, "nan")
    out = []
    for x in xs:
        y = _mul(x, rcp)
        if y.mag == "nan" and x.mag != "nan":
            y = Num(True, "nan")  # 0 * inf: the machine's default NaN (sign bit set)
        sat = y.mag == "inf" or (y.finite and y.mag > 6)
        if y.mag == "inf" or (y.finite and y.mag > 6):
            y = Num(y.neg, Fraction(6))
        q = ref.round_exact(y, E2M1, "nearest")[0]
        v = _mul(q, s) if finite else Num(False, "nan")
        out.append(Element(x, y, ref.code_of(q, E2M1), q, v, _flushed(x, q), sat))
    return bs, rcp, s, out


# --- E8M0 -----------------------------------------------------------------------------
def e8m0_code(x: Num, rounding: str = "nearest", saturate: bool = False) -> int:
    """The E8M0 code of float32 ``x``, as ml_dtypes (``fpsim.encode``, ``quantize``).

    See :mod:`fpsim._e8m0`: ``1.f * 2**E`` goes to ``2**E`` or ``2**(E+1)`` by the
    mantissa (nearest: ``f >= 1/2`` up; "up": ``f != 0``; "down"/"toward_zero": never),
    a subnormal to code 0 or 1 by the same rule against ``2**-127`` and ``1.5 *
    2**-127``; zero, negatives, NaN, -inf and overflow go to NaN (``saturate``: +inf
    and overflow to 2**127).
    """
    if x.mag == "nan" or x.neg or x.mag == 0:
        return NAN_CODE
    top = 254 if saturate else NAN_CODE
    if x.mag == "inf":
        return top
    b = bits(x)
    e, mant = b >> 23, b & 0x7FFFFF
    if rounding == "nearest":
        up, sub = mant >= 1 << 22, b >= 0x600000
    elif rounding == "up":
        up, sub = mant != 0, b > 0x400000
    elif rounding in ("down", "toward_zero"):
        up, sub = False, False
    else:
        raise ValueError(
            f"rounding {rounding!r} to E8M0 is not supported; valid: nearest, up, down, "
            "toward_zero"
        )
    code = e + up if e > 0 else int(sub)
    return top if code > 254 else code


def e8m0_value(code: int) -> Num:
    """``2**(code - 127)``; code 255 is NaN."""
    return Num(False, "nan") if code == NAN_CODE else Num(False, _TWO ** (code - 127))
