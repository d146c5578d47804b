"""``fpsim explain VALUE``: what happens to one number in a format, bit by bit.

Everything here is exact rational arithmetic (``fractions.Fraction``) on the input as
typed: no float, no NumPy, no JAX, so the command answers at once. The one place a
float appears is the line that shows what ``fpsim.quantize`` would do with the same
Python literal (decimal -> float64 -> the format: two roundings).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import NamedTuple

from fpsim import _modes
from fpsim import reference as ref  # the exact reference: rounding of rationals
from fpsim.formats import FORMATS, Format

Num = ref.Num
#: The deterministic modes, in the table's order (stochastic gets its own line).
MODES = tuple(name for name, mode in _modes.MODES.items() if mode.deterministic)
_PATTERN = re.compile(r"0[xX][0-9a-fA-F_]+|0[bB][01_]+")
_DECIMAL = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?")
#: Inputs beyond 10^±LIMIT are not built as exact Fractions (10^999999999 would take
#: forever): every format overflows above 10^39 and underflows below 10^-46, so a
#: stand-in at 10^±LIMIT rounds the same way in every mode.
LIMIT = 1000
_CLASS_TEXT = {
    "zero": "zero",
    "underflow": "underflow: too small even for the smallest subnormal, flushed to 0",
    "subnormal": "subnormal: below min normal {mn}, so fewer significant bits",
    "normal": "normal: full precision ({p} significant bits)",
    "overflow": "overflow: beyond max {mx}, becomes {over}",
    "inf": "infinity: becomes {over}",
    "nan": "not a number",
}


class CliError(ValueError):
    """Bad command-line input: reported as one line, exit status 2."""


class Input(NamedTuple):
    """A decimal input: its exact value, or a stand-in when it is astronomically far.

    ``far`` is 0 for an exact ``num``; +1 when ``|x| > 10^LIMIT`` and -1 when
    ``|x| < 10^-LIMIT``: then ``num`` is the stand-in ``10^±LIMIT`` (same roundings in
    every mode) and ``log10`` is ``log10|x|``, enough to print how far it is.
    """

    num: Num
    text: str
    far: int = 0
    log10: float = 0.0


# --- reading the input, with bounded work ---------------------------------------------
def _int(digits: str) -> int:
    """``int(digits)`` for any length (Python refuses more than 4300 digits at once)."""
    n = 0
    for i in range(0, len(digits), 4000):
        chunk = digits[i : i + 4000]
        n = n * 10 ** len(chunk) + int(chunk)
    return n


def _parse_decimal(t: str) -> tuple[bool, int, int, str] | None:
    """``(neg, digits as int, exponent, digits)`` with value digits * 10^exponent."""
    m = _DECIMAL.fullmatch(t)
    if not m or not (m.group(2) or m.group(3)):
        return None
    sign, whole, frac, exp = m.groups()
    digits = ((whole or "") + (frac or "")).lstrip("0")
    e10 = (int(exp) if exp else 0) - len(frac or "")
    return sign == "-", _int(digits) if digits else 0, e10, digits


def _magnitude(digits: str, e10: int) -> float:
    """log10 of digits * 10^e10 (digits nonempty), good to about 15 significant digits."""
    lead = digits[:17]
    return math.log10(int(lead)) + e10 + (len(digits) - len(lead))


def _sci(neg: bool, digits: str, e10: int) -> str:
    """A short scientific text for digits * 10^e10, with ≈ when digits are dropped."""
    lead = digits[:17].rstrip("0") or "0"
    exp = e10 + len(digits) - 1
    mant = lead[0] + ("." + lead[1:] if len(lead) > 1 else "")
    approx = "≈" if digits[17:].strip("0") else ""
    return f"{approx}{'-' if neg else ''}{mant}e{exp:+d}"


def _read_number(t: str, text: str) -> Input | None:
    parts = t.split("/")
    if len(parts) > 2:
        return None
    parsed = [_parse_decimal(p.strip()) for p in parts]
    if any(p is None for p in parsed):
        return None
    neg, n, e10, digits = parsed[0]
    log10 = _magnitude(digits, e10) if digits else -math.inf
    show = None
    if len(parsed) == 2:
        dneg, dn, de10, ddigits = parsed[1]
        if dn == 0:
            raise CliError(f"cannot read VALUE {text!r}: division by zero")
        if dneg or (parts[1].strip().startswith("+")):
            raise CliError(f"cannot read VALUE {text!r}: give the sign on the numerator")
        log10 -= _magnitude(ddigits, de10)
    if n == 0:
        return Input(Num(neg, Fraction(0)), "-0" if neg else "0")
    if abs(log10) > LIMIT:
        far = 1 if log10 > 0 else -1
        stand_in = Fraction(10) ** LIMIT if far > 0 else Fraction(1, 10**LIMIT)
        if len(parsed) == 1:
            show = _sci(neg, digits, e10)
        else:
            k = math.floor(log10)
            show = f"≈{'-' if neg else ''}{10 ** (log10 - k):.10g}e{k:+d}"
        return Input(Num(neg, stand_in), show, far, log10)
    x = Fraction(n) * Fraction(10) ** e10
    if len(parsed) == 2:
        x /= parsed[1][1] * Fraction(10) ** parsed[1][2]
    return Input(Num(neg, x), _show_fraction(neg, x))


def parse_value(text: str) -> Input | int:
    """A decimal (``0.1``, ``-1e-8``, ``1/3``), ``inf``/``nan``, or a bit pattern (int).

    Work is bounded whatever the input: 5000 digits, ``1e999999999`` and
    ``1e-999999999`` answer at once (see :class:`Input`).
    """
    t = text.strip()
    if _PATTERN.fullmatch(t):
        try:
            return int(t, 0)
        except ValueError:
            base = "hex" if t[1] in "xX" else "binary"
            raise CliError(
                f"malformed {base} bit pattern {text!r}: give digits after the prefix, "
                "with '_' only between them (0x3c00, 0x3c_00, 0b0011_1000)"
            ) from None
    number = _read_number(t, text)
    if number is not None:
        return number
    low = t.lower().lstrip("+-")
    if low in ("inf", "infinity", "nan"):
        mag = "nan" if low == "nan" else "inf"
        return Input(Num(t.startswith("-"), mag), show(Num(t.startswith("-"), mag)))
    raise CliError(
        f"cannot read VALUE {text!r}: give a decimal number (0.1, -1e-8, 1/3), inf, nan, "
        "or a bit pattern (0x3c00, 0b00111000)"
    )


def _as_input(value: Input | Num | int) -> Input | int:
    if isinstance(value, Input | int):
        return value
    return Input(value, show(value) if not value.finite else _show_fraction(*value))


# --- showing numbers without floats ---------------------------------------------------
def _floor_log10(x: Fraction) -> int:
    """``floor(log10(x))`` of a positive Fraction, exactly (no float, no str of ints)."""
    k = math.floor((x.numerator.bit_length() - x.denominator.bit_length()) * 0.30103)
    while Fraction(10) ** k > x:
        k -= 1
    while Fraction(10) ** (k + 1) <= x:
        k += 1
    return k


def short(x: Fraction, digits: int = 6) -> str:
    """``x`` to ``digits`` significant digits, with ``≈`` when that is not exact.

    Exact integer arithmetic: no float overflow (1e400/3) or underflow (1/3e400).
    """
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    a = abs(x)
    k = _floor_log10(a)
    scaled = a * Fraction(10) ** (digits - 1 - k)
    n = round(scaled)
    if n == 10**digits:  # rounding carried into a new digit
        n, k = n // 10, k + 1
    exact = n == scaled
    s = str(n).rstrip("0") or "0"
    mant = s[0] + ("." + s[1:] if len(s) > 1 else "")
    if -5 <= k < digits:  # plain notation, as Python's g format
        text = ref.decimal(Fraction(n) * Fraction(10) ** (k - digits + 1))
    else:
        text = f"{mant}e{k:+d}"
    return ("" if exact else "≈") + sign + text


def brief(x: Fraction, limit: int = 24) -> str:
    """Exact decimal when it is short, else :func:`short`."""
    if _is_small(x):
        s = ref.decimal(x)
        if len(s) <= limit and not s.startswith("≈"):
            return s
    return short(x, 6)


def _is_small(x: Fraction) -> bool:
    """Whether ``x``'s exact decimal is cheap to write (and short enough to read)."""
    return x.numerator.bit_length() < 400 and x.denominator.bit_length() < 400


def _show_fraction(neg: bool, x: Fraction) -> str:
    """An input as a learner reads it: exact decimal when it ends, else 17 digits."""
    sign = "-" if neg else ""
    if _is_small(x):
        s = ref.decimal(x)
        if not s.startswith("≈"):
            return sign + s
    s = short(x, 17)
    return "≈" + sign + s[1:] if s.startswith("≈") else sign + s


def _negate_text(t: str) -> str:
    approx = "≈" if t.startswith("≈") else ""
    t = t.removeprefix("≈")
    return approx + (t[1:] if t.startswith("-") else "-" + t)


def show(v: Num) -> str:
    """A value of a format, exactly, as a learner reads it."""
    if v.mag == "nan":
        return "NaN"
    if v.mag == "inf":
        return "-inf" if v.neg else "+inf"
    return ("-" if v.neg else "") + ref.decimal(v.mag)


def _pow10(log10: float, neg: bool = False) -> str:
    """``≈m e k`` for a magnitude known by its log10 (too far from 1 for a float)."""
    k = math.floor(log10)
    return f"≈{'-' if neg else ''}{10 ** (log10 - k):.3g}e{k:+d}"


def _brief_show(v: Num, width: int) -> str:
    """A stored value in at most ``width`` characters, exactly: decimal or m×2^e."""
    if not v.finite:
        return show(v)
    s = show(v)
    if len(s) <= width or v.mag == 0:
        return s
    e = ref.floor_log2(v.mag)
    m = v.mag / Fraction(2) ** e
    while m.denominator != 1:
        m, e = m * 2, e - 1
    return f"{'-' if v.neg else ''}{m.numerator}×2^{e}"


# --- bits -----------------------------------------------------------------------------
def _hex(code: int, fmt: Format) -> str:
    return f"0x{code:0{(fmt.bits + 3) // 4}x}"


def _split(code: int, fmt: Format) -> tuple[int, int, int]:
    m = fmt.mantissa_bits
    return (
        code >> (fmt.bits - 1),
        (code >> m) & (2**fmt.exponent_bits - 1),
        code & (2**m - 1),
    )


def bit_string(code: int, fmt: Format) -> str:
    """``"0 01011 1001100110"``: sign, exponent and mantissa fields of a bit pattern."""
    s, e, f = _split(code, fmt)
    mant = f"{f:0{fmt.mantissa_bits}b}" if fmt.mantissa_bits else "-"
    return f"{s} {e:0{fmt.exponent_bits}b} {mant}"


def round_nearest(x: Num, fmt: Format, mode: str = "nearest") -> tuple[Num, bool]:
    """:func:`fpsim.reference.round_exact`: NaN as ``fpsim.encode`` treats it too.

    A format without NaN (convention ``"none"``: FP4, FP6, E4M3_SAT) stores a NaN as a
    zero whose sign bit is the NaN's flipped (ml_dtypes' conversion, which
    ``fpsim.encode`` reproduces bit for bit): +NaN -> -0, -NaN -> +0.
    """
    return ref.round_exact(x, fmt, mode)


def code_of(v: Num, fmt: Format) -> int:
    """The bit pattern of a value of ``fmt`` (as ``fpsim.encode``)."""
    return ref.code_of(v, fmt)


# --- the explanation -------------------------------------------------------------------
def _layout(fmt: Format) -> str:
    return (
        f"{fmt.bits} bits: 1 sign, {fmt.exponent_bits} exponent, "
        f"{fmt.mantissa_bits} mantissa; bias {fmt.bias}"
    )


def _over(fmt: Format) -> str:
    return {"ieee": "±inf", "none": "±max (no inf or NaN)"}.get(fmt.convention, "NaN")


def _fields_lines(code: int, v: Num, fmt: Format) -> list[str]:
    s, e, f = _split(code, fmt)
    m = fmt.mantissa_bits
    lines = [f"  sign       {s}  ->  {'-' if s else '+'}"]
    if not v.finite:
        special = "special pattern"
        if v.mag == "nan" and m and fmt.convention == "ieee":
            quiet = "quiet" if f >> (m - 1) else "signalling"
            special += f" (NaN: mantissa {f:0{m}b} != 0, a {quiet} NaN, payload {f:#x})"
        return lines + [f"  exponent   {e:0{fmt.exponent_bits}b}  ->  {special}"]
    if e == 0:
        lines.append(
            f"  exponent   {e:0{fmt.exponent_bits}b} = 0  ->  subnormal or zero: "
            f"2^(1 - {fmt.bias}) = 2^{fmt.emin}, no implicit leading 1"
        )
        lead = 0
    else:
        lines.append(
            f"  exponent   {e:0{fmt.exponent_bits}b} = {e}  ->  "
            f"2^({e} - {fmt.bias}) = 2^{e - fmt.bias}"
        )
        lead = 1
    if m:
        sig = lead + Fraction(f, 2**m)
        lines.append(
            f"  mantissa   {f:0{m}b} = {f}  ->  {lead} + {f}/{2**m} = {ref.decimal(sig)}"
        )
    return lines


def _neighbour_text(r: Num, fmt: Format) -> str:
    lo, hi = ref.neighbours(r, fmt)
    mx = Fraction(fmt.max)
    lo_text = "none (most negative finite)" if r.value <= -mx else show(lo)
    hi_text = "none (largest finite)" if r.value >= mx else show(hi)
    return f"  neighbours {lo_text}  <  stored  <  {hi_text}"


def _error_lines(x: Input, r: Num, fmt: Format) -> list[str]:
    u = ref.ulp_exact(r, fmt)
    if x.far:  # the error is (almost) the whole input
        ulps = x.log10 - math.log10(u.numerator) + math.log10(u.denominator)
        approx = "" if r.mag == 0 else "≈"
        neg_x = _negate_text(x.text)
        return [
            f"  error      absolute (stored - input) {approx}{neg_x.removeprefix('≈')}\n"
            f"             relative {approx}-1\n"
            f"             in ulps {_pow10(ulps, neg=not x.num.neg)}"
            f"  (1 ulp here = {ref.decimal(u)})"
        ]
    err = r.value - x.num.value
    rel = "" if x.num.mag == 0 else f"\n             relative {brief(err / x.num.mag)}"
    return [
        f"  error      absolute (stored - input) {brief(err)}{rel}\n"
        f"             in ulps {brief(err / u)}  (1 ulp here = {ref.decimal(u)})"
    ]


def _via_float(x: Input, fmt: Format) -> tuple[Num, float] | None:
    """What ``fpsim.quantize`` does with the same Python literal: Python rounds the
    decimal to a float64, and quantize rounds that float64 once to ``fmt`` (round to
    odd on the way through float32). Returns (result, the float64), or None."""
    if x.far or not x.num.finite:
        return None
    try:
        f64 = float(x.num.mag)
    except OverflowError:
        f64 = math.inf
    as64 = Num(x.num.neg, Fraction(f64) if math.isfinite(f64) else "inf")
    return ref.round_exact(as64, fmt, "nearest")[0], -f64 if x.num.neg else f64


def _double_rounding_lines(x: Input, r: Num, fmt: Format) -> list[str]:
    via = _via_float(x, fmt)
    if via is None or code_of(via[0], fmt) == code_of(r, fmt):
        return []
    q, f64 = via
    return [
        "",
        "  double rounding: the value above is the exact decimal rounded once. But",
        f"  fpsim.quantize({x.text}, {fmt.name!r}) gives {show(q)} "
        f"({_hex(code_of(q, fmt), fmt)}), not {_hex(code_of(r, fmt), fmt)}:",
        f"  Python first rounds the literal to the float64 {f64!r}, and quantize",
        f"  rounds that to {fmt.name}. Two roundings in a row can land on the other "
        "neighbour.",
    ]


def explain(value: Input | Num | int, fmt: Format) -> str:
    """The full explanation of ``value`` (an :class:`Input`, a Num, or an int bit
    pattern) in ``fmt``."""
    value = _as_input(value)
    out = []
    if isinstance(value, int):
        r = ref.decode_exact(value, fmt)
        x, code, overflowed = r, value, False
        out.append(f"bit pattern {_hex(value, fmt)} in {fmt.name} ({_layout(fmt)})")
    else:
        x = value.num
        r, overflowed = round_nearest(x, fmt)
        code = code_of(r, fmt)
        out.append(
            f"{value.text} stored in {fmt.name} ({_layout(fmt)}), rounding to nearest"
        )
    cls = ref.classify(x, r, overflowed, fmt)
    out += ["", f"  bits       {bit_string(code, fmt)}   ({_hex(code, fmt)})"]
    out += _fields_lines(code, r, fmt)
    text = _CLASS_TEXT[cls].format(
        mn=ref.decimal(Fraction(fmt.min_normal)), p=fmt.mantissa_bits + 1,
        mx=ref.decimal(Fraction(fmt.max)), over=_over(fmt),
    )  # fmt: skip
    if x.mag == "nan" and r.finite:
        text = (
            f"not a number; {fmt.name} has no NaN: stored as a zero with the sign bit "
            "flipped (as ml_dtypes and fpsim.encode do)"
        )
    out.append(f"  class      {text}")
    out.append(f"  stored     {show(r)}" + ("   (exact decimal)" if r.finite else ""))
    if not isinstance(value, int) and x.finite:
        out.append(f"  input      {value.text}")
        if r.finite:
            out += _error_lines(value, r, fmt)
    if r.finite:
        out.append(_neighbour_text(r, fmt))
    if not isinstance(value, int):
        out += ["", "  rounding mode  result"]
        results = {mode: round_nearest(x, fmt, mode)[0] for mode in MODES}
        for mode, v in results.items():
            note = "   (ties to even; the default)" if mode == "nearest" else ""
            line = f"  {mode:<13}  {show(v)}  ({_hex(code_of(v, fmt), fmt)}){note}"
            out.append(line)
        out.append("  " + _stochastic(value, results, fmt))
        out += _double_rounding_lines(value, r, fmt)
    return "\n".join(out)


def _stochastic(value: Input, results: dict[str, Num], fmt: Format) -> str:
    x = value.num
    lo, hi = results["down"], results["up"]
    if x.finite and lo.finite != hi.finite:
        # one neighbour overflowed: stochastic rounding draws against the virtual next
        # value max + ulp(max) (as fpsim.quantize does), so it overflows with probability
        # (|x| - max) / ulp(max) as long as |x| < max + ulp(max)
        near, over = (lo, hi) if lo.finite else (hi, lo)
        p_over = (x.mag - near.mag) / ref.ulp_exact(near, fmt)
        if p_over < 1:
            virtual = near.mag + ref.ulp_exact(near, fmt)
            return (
                f"{'stochastic':<13}  {show(near)} with probability {brief(1 - p_over, 10)}"
                f", overflow to {show(over)} with probability {brief(p_over, 10)} (as if "
                f"the next value were {'-' if x.neg else ''}{ref.decimal(virtual)})"
            )
        return f"{'stochastic':<13}  {show(over)}  (no choice to make)"
    if not (x.finite and lo.finite and hi.finite) or lo.value == hi.value:
        return f"{'stochastic':<13}  {show(results['nearest'])}  (no choice to make)"
    if value.far:  # astronomically small: the far neighbour is almost never drawn
        far, near = (hi, lo) if hi.mag != 0 else (lo, hi)
        sub = Fraction(fmt.min_subnormal)
        p = _pow10(value.log10 - math.log10(sub.numerator) + math.log10(sub.denominator))
        return (
            f"{'stochastic':<13}  {show(far)} with probability {p} (|input| / "
            f"{ref.decimal(sub)}), else {show(near)} (mean = input)"
        )
    p_hi = (x.value - lo.value) / (hi.value - lo.value)
    return (
        f"{'stochastic':<13}  {show(hi)} with probability {brief(p_hi, 10)}, "
        f"{show(lo)} with probability {brief(1 - p_hi, 10)} (mean = input)"
    )


def explain_all(value: Input | Num | int, wide: bool = False) -> str:
    """One line per predefined format; 80 columns unless ``wide`` (then the bit fields
    too)."""
    value = _as_input(value)
    bits_col = f"{'bits (sign exponent mantissa)':<36} " if wide else ""
    stored_w = 34 if wide else 30
    head = (
        f"{'format':<12}{bits_col}{'hex':<11}{'class':<10} {'stored value':<{stored_w}} "
        "rel. error"
    )
    lines = [head, "-" * len(head)]
    for fmt in FORMATS:
        if isinstance(value, int):
            if value >= 1 << fmt.bits:
                lines.append(f"{fmt.name:<12}(pattern too wide for {fmt.bits} bits)")
                continue
            x = r = ref.decode_exact(value, fmt)
            code, cls, rel = value, ref.classify(x, r, False, fmt), ""
        else:
            x = value.num
            r, overflowed = round_nearest(x, fmt)
            code = code_of(r, fmt)
            cls = ref.classify(x, r, overflowed, fmt)
            rel = ""
            if x.finite and r.finite and x.mag != 0:
                rel = "≈-1" if value.far else brief((r.value - x.value) / x.mag, 10)
        bits = f"{bit_string(code, fmt):<36} " if wide else ""
        lines.append(
            f"{fmt.name:<12}{bits}{_hex(code, fmt):<11}{cls:<10} "
            f"{_brief_show(r, stored_w):<{stored_w}} {rel}".rstrip()
        )
    return "\n".join(lines)
