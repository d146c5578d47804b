"""The exact reference: rounding a rational number to a format, with Fractions.

``fpsim.quantize`` rounds float32 inputs with integer bit tricks. This module does the
same rounding the slow, obviously-correct way, on Python ``Fraction``s: no float is
involved anywhere, every mode is read from the one table of rounding modes
(:data:`fpsim._modes.MODES`), and each step is the definition from the textbook. It is
what ``fpsim explain`` prints (the decimal number 0.1 itself, rounded, digit for digit)
and the oracle the tests hold ``quantize``, ``encode`` and the emulated sums against.

Plain Python: no JAX, no numpy, so the CLI can import it in a few milliseconds.

Example:
  >>> from fractions import Fraction
  >>> from fpsim.formats import FP16
  >>> round_value(Fraction(1, 10), FP16)
  0.0999755859375
  >>> lo, hi, p_up = stochastic_exact(num(Fraction(1, 3)), FP16)
  >>> float(lo.mag), float(hi.mag), p_up
  (0.333251953125, 0.33349609375, Fraction(1, 3))
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

from fpsim._modes import get_mode
from fpsim.formats import Format


class Num(NamedTuple):
    """A sign and a magnitude: a Fraction, or the strings ``"inf"`` or ``"nan"``."""

    neg: bool
    mag: Fraction | str

    @property
    def finite(self) -> bool:
        return isinstance(self.mag, Fraction)

    @property
    def value(self) -> Fraction:
        return -self.mag if self.neg else self.mag


NAN = Num(False, "nan")


def num(x: float | int | Fraction) -> Num:
    """A :class:`Num` of a Python number (the sign of -0.0 and of -inf kept)."""
    if isinstance(x, float):
        if math.isnan(x):
            return Num(math.copysign(1.0, x) < 0, "nan")
        if math.isinf(x):
            return Num(x < 0, "inf")
        return Num(math.copysign(1.0, x) < 0, abs(Fraction(x)))
    x = Fraction(x)
    return Num(x < 0, abs(x))


def to_float(v: Num) -> float:
    """The Python float of a :class:`Num` (exact for every value of a format).

    NaN keeps its sign bit (``-math.nan`` is a NaN with the sign bit set).
    """
    mag = {"nan": math.nan, "inf": math.inf}.get(v.mag) if not v.finite else float(v.mag)
    return -mag if v.neg else mag


def floor_log2(x: Fraction) -> int:
    """``floor(log2(x))`` of a positive Fraction, exactly."""
    k = x.numerator.bit_length() - x.denominator.bit_length()
    return k if Fraction(2) ** k <= x else k - 1


def _overflow(neg: bool, fmt: Format) -> Num:
    if fmt.convention == "ieee":
        return Num(neg, "inf")
    if fmt.convention == "none":
        return Num(neg, Fraction(fmt.max))
    return _nan(neg, fmt)


def _nan(neg: bool, fmt: Format) -> Num:
    """NaN with its sign ("fnuz" formats have one NaN, the pattern of -0: negative)."""
    return Num(neg or fmt.convention == "fnuz", "nan")


def _special(x: Num, fmt: Format) -> Num | None:
    """The result for NaN, inf and zero inputs (the same in every mode), else None."""
    if x.mag == "nan":  # formats without NaN give a zero of the opposite sign (ml_dtypes)
        return _nan(x.neg, fmt) if fmt.has_nan else Num(not x.neg, Fraction(0))
    if x.mag == "inf":
        return _overflow(x.neg, fmt)
    if x.mag == 0:
        return Num(x.neg and fmt.convention != "fnuz", Fraction(0))
    return None


def _grid(mag: Fraction, fmt: Format) -> tuple[int, Fraction, Fraction]:
    """``mag = (n + rem) * q``: ``q`` the grid spacing at ``mag``, ``0 <= rem < 1``."""
    q = Fraction(2) ** (max(floor_log2(mag), fmt.emin) - fmt.mantissa_bits)
    n = mag / q
    lo = math.floor(n)
    return lo, n - lo, q


def _finish(neg: bool, r: Fraction, fmt: Format, overflows: bool) -> tuple[Num, bool]:
    """Apply the range: past max, overflow (``overflows``) or stay at max."""
    if r > Fraction(fmt.max):
        return (_overflow(neg, fmt) if overflows else Num(neg, Fraction(fmt.max))), True
    if r == 0 and fmt.convention == "fnuz":
        return Num(False, r), False
    return Num(neg, r), False


def round_exact(x: Num, fmt: Format, mode: str) -> tuple[Num, bool]:
    """Round ``x`` to ``fmt`` with a deterministic mode, as ``fpsim.quantize`` does.

    Returns:
      The rounded value, and whether it overflowed (its rounded magnitude, with an
      unbounded exponent, exceeded ``fmt.max``).

    Raises:
      ValueError: for an unknown mode, or for ``"stochastic"`` (its result is random:
        :func:`stochastic_exact` gives the two candidates and the probability).
    """
    rm = get_mode(mode)
    if not rm.deterministic:
        raise ValueError(
            f"{mode!r} rounding is random; stochastic_exact(x, fmt) gives the two "
            "candidates and the exact probability of rounding up"
        )
    special = _special(x, fmt)
    if special is not None:
        return special, False
    lo, rem, q = _grid(x.mag, fmt)
    if rm.step == "nearest":
        up = rem > Fraction(1, 2) or (rem == Fraction(1, 2) and lo % 2 == 1)
    else:
        up = rem > 0 and rm.magnitude_up(x.neg)
    return _finish(x.neg, (lo + up) * q, fmt, rm.overflows(x.neg))


def stochastic_exact(x: Num, fmt: Format) -> tuple[Num, Num, Fraction]:
    """Stochastic rounding of ``x``: the value rounding down, rounding up, and P(up).

    ``lo <= |x| < hi`` are neighbours on ``fmt``'s grid (with an unbounded exponent;
    ``hi`` past max overflows as the format says) and ``P(up) = (|x| - lo) / (hi -
    lo)`` exactly, so the expected magnitude is ``|x|``. Values on the grid and
    specials have ``lo == hi`` and P(up) = 0.
    """
    special = _special(x, fmt)
    if special is not None:
        return special, special, Fraction(0)
    lo, rem, q = _grid(x.mag, fmt)
    down = _finish(x.neg, lo * q, fmt, True)[0]
    if rem == 0:
        return down, down, Fraction(0)
    return down, _finish(x.neg, (lo + 1) * q, fmt, True)[0], rem


def round_value(x: float | int | Fraction, fmt: Format, mode: str = "nearest") -> float:
    """:func:`round_exact` of a Python number, as a Python float: the tests' oracle.

    Signed zeros, inf and NaN follow the format's convention, as ``fpsim.quantize``.
    """
    return to_float(round_exact(num(x), fmt, mode)[0])


def neighbours(v: Num, fmt: Format) -> tuple[Num, Num]:
    """The values of ``fmt`` just below and just above the finite value ``v``."""
    half = Fraction(fmt.min_subnormal) / 2

    def of(y: Fraction, mode: str) -> Num:
        return round_exact(Num(y < 0, abs(y)), fmt, mode)[0]

    return of(v.value - half, "down"), of(v.value + half, "up")


def ulp_exact(v: Num, fmt: Format) -> Fraction:
    """The spacing of ``fmt``'s grid at ``|v|`` (as ``fpsim.ulp``)."""
    e = fmt.emin if v.mag == 0 else max(floor_log2(v.mag), fmt.emin)
    return Fraction(2) ** (min(e, fmt.emax) - fmt.mantissa_bits)


def fields(v: Num, fmt: Format) -> tuple[int, int, int]:
    """Sign, exponent field and mantissa field of a value of ``fmt`` (NaN: canonical)."""
    m, top = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    if v.mag == "nan":
        if fmt.convention == "fnuz":
            return 1, 0, 0
        if fmt.convention == "fn":
            return int(v.neg), top, 2**m - 1
        return int(v.neg), top, 1 << (m - 1)
    if v.mag == "inf":
        return int(v.neg), top, 0
    if v.mag == 0:
        return int(v.neg), 0, 0
    e = floor_log2(v.mag)
    if e < fmt.emin:
        return int(v.neg), 0, int(v.mag / Fraction(fmt.min_subnormal))
    return int(v.neg), e + fmt.bias, int((v.mag / Fraction(2) ** e - 1) * 2**m)


def code_of(v: Num, fmt: Format) -> int:
    """The bit pattern of a value of ``fmt``."""
    s, e, f = fields(v, fmt)
    return (s << (fmt.bits - 1)) | (e << fmt.mantissa_bits) | f


def decode_exact(code: int, fmt: Format) -> Num:
    """The exact value of a bit pattern; ValueError when it is too wide for ``fmt``."""
    if not 0 <= code < 1 << fmt.bits:
        raise ValueError(
            f"bit pattern {code:#x} does not fit in {fmt.name}'s {fmt.bits} bits "
            f"(valid: 0x0 .. {(1 << fmt.bits) - 1:#x})"
        )
    m, top = fmt.mantissa_bits, 2**fmt.exponent_bits - 1
    neg = bool(code >> (fmt.bits - 1))
    e, f = (code >> m) & top, code & (2**m - 1)
    if fmt.convention == "fnuz" and code == 1 << (fmt.bits - 1):
        return NAN
    if e == top and fmt.convention == "ieee":
        return Num(neg, "inf") if f == 0 else Num(neg, "nan")
    if e == top and fmt.convention == "fn" and f == 2**m - 1:
        return Num(neg, "nan")
    if e == 0:
        return Num(neg, f * Fraction(fmt.min_subnormal))
    return Num(neg, (1 + Fraction(f, 2**m)) * Fraction(2) ** (e - fmt.bias))


def classify(x: Num, r: Num, overflowed: bool, fmt: Format) -> str:
    """The class of input ``x`` rounded to ``r``, in ``fpsim.value_counts``' terms."""
    if not x.finite:
        return x.mag
    if x.mag == 0:
        return "zero"
    if overflowed:
        return "overflow"
    if r.mag == 0:
        return "underflow"
    return "subnormal" if r.mag < Fraction(fmt.min_normal) else "normal"


def decimal(x: Fraction) -> str:
    """``x`` in decimal, digit for digit when it ends (every dyadic fraction does).

    Plain notation from 1e-6 to 1e21, scientific beyond; a fraction that does not end
    in decimal (1/3) is shown to 17 significant digits after a ``≈``.
    """
    n, d = abs(x.numerator), x.denominator
    a, b = (d & -d).bit_length() - 1, 0
    rest = d >> a
    while rest % 5 == 0:
        rest, b = rest // 5, b + 1
    if rest != 1:
        return f"≈{float(x):.17g}"
    sign = "-" if x < 0 else ""
    if n == 0:
        return sign + "0"
    k = max(a, b)
    digits = str(n * 2 ** (k - a) * 5 ** (k - b))  # x = digits * 10**-k
    stripped = digits.rstrip("0")
    exp10 = len(digits) - 1 - k  # of the leading digit
    if -7 < exp10 < 21:
        s = digits.rjust(k + 1, "0")
        whole, frac = s[: len(s) - k], s[len(s) - k :].rstrip("0")
        return sign + whole + ("." + frac if frac else "")
    mant = stripped[0] + ("." + stripped[1:] if len(stripped) > 1 else "")
    return f"{sign}{mant}e{exp10:+d}"


def short(x: Fraction, digits: int = 6) -> str:
    """``x`` to ``digits`` significant digits, with ``≈`` when that is not exact."""
    s = f"{float(x):.{digits}g}"
    return s if Fraction(s) == x else "≈" + s


def brief(x: Fraction, limit: int = 24) -> str:
    """Exact decimal when it is short, else :func:`short`."""
    s = decimal(x)
    return s if len(s) <= limit and not s.startswith("≈") else short(x, 6)
