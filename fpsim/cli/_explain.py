"""``fpsim explain VALUE``: what happens to one number in a format, bit by bit."""

from __future__ import annotations

import math
import re
from fractions import Fraction

from fpsim.formats import FORMATS, Format
from fpsim.reference import (
    Num,
    brief,
    classify,
    code_of,
    decimal,
    decode_exact,
    fields,
    neighbours,
    round_exact,
    ulp_exact,
)

MODES = ("nearest", "toward_zero", "up", "down")
_PATTERN = re.compile(r"0[xX][0-9a-fA-F_]+|0[bB][01_]+")
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


def parse_value(text: str) -> Num | int:
    """A decimal (``0.1``, ``-1e-8``, ``1/3``), ``inf``/``nan``, or a bit pattern (int)."""
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
    try:
        x = Fraction(t)
        return Num(t.startswith("-"), abs(x))
    except (ValueError, ZeroDivisionError):
        pass
    try:
        f = float(t)
    except ValueError:
        f = 0.0
    if math.isinf(f) or math.isnan(f):
        return Num(t.startswith("-"), "inf" if math.isinf(f) else "nan")
    raise CliError(
        f"cannot read VALUE {text!r}: give a decimal number (0.1, -1e-8, 1/3), inf, nan, "
        "or a bit pattern (0x3c00, 0b00111000)"
    )


def show(v: Num) -> str:
    """A value of a format, exactly, as a learner reads it."""
    if v.mag == "nan":
        return "NaN"
    if v.mag == "inf":
        return "-inf" if v.neg else "+inf"
    return ("-" if v.neg else "") + decimal(v.mag)


def _brief_show(v: Num) -> str:
    return show(v) if not v.finite else ("-" if v.neg else "") + brief(v.mag, 34)


def _hex(code: int, fmt: Format) -> str:
    return f"0x{code:0{(fmt.bits + 3) // 4}x}"


def bit_string(v: Num, fmt: Format) -> str:
    """``"0 01011 1001100110"``: sign, exponent and mantissa fields."""
    s, e, f = fields(v, fmt)
    mant = f"{f:0{fmt.mantissa_bits}b}" if fmt.mantissa_bits else "-"
    return f"{s} {e:0{fmt.exponent_bits}b} {mant}"


def _layout(fmt: Format) -> str:
    return (
        f"{fmt.bits} bits: 1 sign, {fmt.exponent_bits} exponent, "
        f"{fmt.mantissa_bits} mantissa; bias {fmt.bias}"
    )


def _over(fmt: Format) -> str:
    return {"ieee": "±inf", "none": "±max (no inf or NaN)"}.get(fmt.convention, "NaN")


def _fields_lines(v: Num, fmt: Format) -> list[str]:
    s, e, f = fields(v, fmt)
    m = fmt.mantissa_bits
    lines = [f"  sign       {s}  ->  {'-' if s else '+'}"]
    if not v.finite:
        return lines + [f"  exponent   {e:0{fmt.exponent_bits}b}  ->  special pattern"]
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
            f"  mantissa   {f:0{m}b} = {f}  ->  {lead} + {f}/{2**m} = {decimal(sig)}"
        )
    return lines


def explain(value: Num | int, fmt: Format) -> str:
    """The full explanation of ``value`` (a Num, or an int bit pattern) in ``fmt``."""
    out = []
    if isinstance(value, int):
        x = decode_exact(value, fmt)
        r, overflowed = x, False
        out.append(f"bit pattern {_hex(value, fmt)} in {fmt.name} ({_layout(fmt)})")
    else:
        x = value
        r, overflowed = round_exact(x, fmt, "nearest")
        out.append(f"{show(x)} stored in {fmt.name} ({_layout(fmt)}), rounding to nearest")
    cls = classify(x, r, overflowed, fmt)
    code = code_of(r, fmt)
    out += ["", f"  bits       {bit_string(r, fmt)}   ({_hex(code, fmt)})"]
    out += _fields_lines(r, fmt)
    text = _CLASS_TEXT[cls].format(
        mn=decimal(Fraction(fmt.min_normal)), p=fmt.mantissa_bits + 1,
        mx=decimal(Fraction(fmt.max)), over=_over(fmt),
    )  # fmt: skip
    out.append(f"  class      {text}")
    out.append(f"  stored     {show(r)}" + ("   (exact decimal)" if r.finite else ""))
    if not isinstance(value, int) and x.finite:
        out.append(f"  input      {show(x)}")
        if r.finite:
            err = r.value - x.value
            u = ulp_exact(r, fmt)
            rel = "" if x.mag == 0 else f"\n             relative {brief(err / x.mag)}"
            out.append(
                f"  error      absolute (stored - input) {brief(err)}{rel}\n"
                f"             in ulps {brief(err / u)}  (1 ulp here = {decimal(u)})"
            )
    if r.finite:
        lo, hi = neighbours(r, fmt)
        out.append(f"  neighbours {show(lo)}  <  stored  <  {show(hi)}")
    if not isinstance(value, int):
        out += ["", "  rounding mode  result"]
        results = {mode: round_exact(x, fmt, mode)[0] for mode in MODES}
        for mode, v in results.items():
            note = "   (ties to even; the default)" if mode == "nearest" else ""
            line = f"  {mode:<13}  {show(v)}  ({_hex(code_of(v, fmt), fmt)}){note}"
            out.append(line)
        out.append("  " + _stochastic(x, results, fmt))
    return "\n".join(out)


def _stochastic(x: Num, results: dict[str, Num], fmt: Format) -> str:
    lo, hi = results["down"], results["up"]
    if x.finite and lo.finite != hi.finite:
        # one neighbour overflowed: stochastic rounding draws against the virtual next
        # value max + ulp(max) (as fpsim.quantize does), so it overflows with probability
        # (|x| - max) / ulp(max) as long as |x| < max + ulp(max)
        near, over = (lo, hi) if lo.finite else (hi, lo)
        p_over = (x.mag - near.mag) / ulp_exact(near, fmt)
        if p_over < 1:
            virtual = near.mag + ulp_exact(near, fmt)
            return (
                f"{'stochastic':<13}  {show(near)} with probability {brief(1 - p_over, 10)}"
                f", overflow to {show(over)} with probability {brief(p_over, 10)} (as if "
                f"the next value were {'-' if x.neg else ''}{decimal(virtual)})"
            )
        return f"{'stochastic':<13}  {show(over)}  (no choice to make)"
    if not (x.finite and lo.finite and hi.finite) or lo.value == hi.value:
        return f"{'stochastic':<13}  {show(results['nearest'])}  (no choice to make)"
    p_hi = (x.value - lo.value) / (hi.value - lo.value)
    return (
        f"{'stochastic':<13}  {show(hi)} with probability {brief(p_hi, 10)}, "
        f"{show(lo)} with probability {brief(1 - p_hi, 10)} (mean = input)"
    )


def explain_all(value: Num | int) -> str:
    """One line per predefined format."""
    head = f"{'format':<12} {'bits (sign exponent mantissa)':<36} {'hex':<10} class"
    lines = [head + "      stored value                  relative error", "-" * 122]
    for fmt in FORMATS:
        if isinstance(value, int):
            if value >= 1 << fmt.bits:
                lines.append(f"{fmt.name:<12} (pattern too wide for {fmt.bits} bits)")
                continue
            x = r = decode_exact(value, fmt)
            cls, rel = classify(x, r, False, fmt), ""
        else:
            x = value
            r, overflowed = round_exact(x, fmt, "nearest")
            cls = classify(x, r, overflowed, fmt)
            rel = ""
            if x.finite and r.finite and x.mag != 0:
                rel = brief((r.value - x.value) / x.mag, 10)
        code = _hex(code_of(r, fmt), fmt)
        lines.append(
            f"{fmt.name:<12} {bit_string(r, fmt):<36} {code:<10} {cls:<10} "
            f"{_brief_show(r):<34} {rel}"
        )
    return "\n".join(lines)
