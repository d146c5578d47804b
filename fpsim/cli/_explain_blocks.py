"""``fpsim explain V1 V2 ... --format mxfp8``: one block of a block-scaled format, exactly.

The block's amax, the scale rule and the scale it picks, and for every value: the
quotient that is rounded, the element's code, its value and the value stored. All of it
exact (:mod:`fpsim.blocks._reference`, plain Python), bit for bit what
``fpsim.quantize_blocks`` and ``encode_blocks`` give for the same float32 inputs. Also
``fpsim explain VALUE --format e8m0``: a float32 rounded to the MX scale type.
"""

from __future__ import annotations

from fractions import Fraction

from fpsim import reference as ref
from fpsim.blocks import _reference as R
from fpsim.blocks._format import INT8, SCALE_MODES, BlockFormat
from fpsim.cli._explain import CliError, Input, bit_string, short, show
from fpsim.formats import E4M3

#: At most this many values (a few blocks): the answer stays readable.
MAX_VALUES = 256
_RULES = {
    "floor": "floor (OCP MX v1.0): 2^(E - emax), E = floor(log2 amax)",
    "ceil": "ceil: 2^(E - emax), E = ceil(log2 amax); never saturates",
    "even": "even (torchao): amax rounded to the elements' {m} mantissa bits\n"
    "             (ties away), then 2^(E - emax), E = floor(log2 of that)",
    "rceil": "rceil (NVIDIA cvt.rp.ue8m0, Transformer Engine): d = amax / max\n"
    "             (a float32), rounded up to a power of two",
}


def _pow2(k: int) -> str:
    v = Fraction(2) ** k
    return f"2^{k} = {ref.decimal(v)}" if -10 <= k <= 16 else f"2^{k}"


def _f32_text(v: R.Num, digits: int = 8) -> str:
    """A float32 value: its exact decimal when short, else ``digits`` significant ones."""
    if not v.finite:
        return show(v)
    exact = ref.decimal(v.mag)
    text = exact if len(exact) <= 12 else short(v.mag, digits)
    approx = "≈" if text.startswith("≈") else ""
    return approx + ("-" if v.neg else "") + text.removeprefix("≈")


def _inputs(values: list[Input | int], bfmt: BlockFormat) -> list[R.Num]:
    xs = []
    for v in values:
        if isinstance(v, int):
            raise CliError(
                f"{bfmt.name} takes decimal values (0.1, -7, 1e-3), not bit patterns"
            )
        xs.append(R.f32(v.num))
    return xs


def _element_bits(code: int, bfmt: BlockFormat) -> str:
    if bfmt.element == INT8:
        return f"{code:08b}"
    return bit_string(code, bfmt.element)


def _hex2(code: int) -> str:
    return f"0x{code:02x}"


def _note(e: R.Element, bfmt: BlockFormat) -> str:
    if e.saturated:
        mx = ref.decimal(Fraction(bfmt.element_max))
        what = "inf" if e.y.mag == "inf" else f"|{_f32_text(R.Num(False, e.y.mag))}|"
        return f"saturated ({what} > max {mx})"
    if e.flushed and e.value.mag != "nan":
        return "flushed to 0"
    if e.x.mag == "nan":
        return "NaN"
    return ""


def _table(
    elements: list[R.Element], first: int, bfmt: BlockFormat, ylabel: str
) -> list[str]:
    rows = [("#", "x (float32)", ylabel, "code", "bits", "element", "value", "")]
    for i, e in enumerate(elements):
        rows.append(
            (
                str(first + i),
                _f32_text(e.x),
                _f32_text(e.y) if e.y.mag != "nan" else "NaN",
                _hex2(e.code),
                _element_bits(e.code, bfmt),
                show(e.element) if e.element.finite else "NaN",
                _f32_text(e.value),
                _note(e, bfmt),
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(7)]
    out = []
    for r in rows:
        cells = [r[0].rjust(widths[0])] + [r[c].ljust(widths[c]) for c in range(1, 7)]
        out.append(("  " + "  ".join(cells) + "  " + r[7]).rstrip())
    return out


def _amax_line(amax: R.Num) -> str:
    if amax.mag == "nan":
        return "  amax       NaN (the block holds a NaN)"
    b = R.bits(amax)
    text = _f32_text(amax)
    if amax.mag == "inf":
        return f"  amax       inf (float32 bits {b:#010x}: exponent field 255, E = 128)"
    if amax.mag == 0:
        return "  amax       0 (all zeros)"
    e = ref.floor_log2(amax.mag)
    m = _f32_text(R.Num(False, amax.mag / Fraction(2) ** e))
    return f"  amax       {text} = 2^{e} × {m}  (float32 bits {b:#010x})"


def _mx_scale_lines(amax: R.Num, code: int, bfmt: BlockFormat, mode: str) -> list[str]:
    emax = bfmt.element_emax
    elem = "int8 (x 1/64)" if bfmt.element == INT8 else bfmt.element.name.upper()
    lines = [
        "  scale rule " + _RULES[mode].format(m=bfmt.element_mantissa_bits),
        f"             emax = {emax} (the largest binade of {elem}, max "
        f"{ref.decimal(Fraction(bfmt.element_max))})",
    ]
    a = R.bits(amax)
    if code == R.NAN_CODE:
        lines.append("  scale      NaN: E8M0 code 0xff; every value of the block is NaN")
        lines.append("             (the elements are still stored, as x × 2^(127 - 255))")
        return lines
    if mode == "rceil":
        d = R._div(
            R.from_bits(min(a, R.MAX_BITS)), R.Num(False, Fraction(bfmt.element_max))
        )
        lines.append(f"             d = {_f32_text(d)}" + (
            " (amax inf: the largest scale)" if a == R.INF_BITS else ""))  # fmt: skip
    else:
        aa = a
        if mode == "even":
            aa = (a + (1 << (22 - bfmt.element_mantissa_bits))) & R.INF_BITS
            lines.append(f"             amax rounded: {_f32_text(R.from_bits(aa))}")
        e = (aa >> 23) - 127
        sub = " (a float32 subnormal or zero reads as E = -127)" if aa >> 23 == 0 else ""
        if mode == "ceil" and aa & 0x7FFFFF:
            e += 1
        k = e - emax
        clamp = ""
        if k != code - 127:
            clamp = f", clamped to E8M0's range 2^-127 .. 2^127: 2^{code - 127}"
        lines.append(f"             E = {e}{sub}: 2^({e} - {emax}) = 2^{k}{clamp}")
    lines.append(
        f"  scale      {_pow2(code - 127)}   E8M0 code {code} ({_hex2(code)}, bits "
        f"{code:08b})"
    )
    if mode == "rceil" and code == 0:
        lines.append(
            "             code 0 under rceil: the elements are not scaled at all "
            "(as Transformer Engine), so the block comes out as zeros"
        )
    return lines


def _header(values, xs, bfmt: BlockFormat, mode: str | None) -> list[str]:
    elem = "int8 (x 1/64)" if bfmt.element == INT8 else bfmt.element.name.upper()
    scale = "one E4M3 scale" if bfmt.tensor_scale else "one E8M0 scale (a power of two)"
    n, bsz = len(values), bfmt.block_size
    how = (
        "a float32 scale per tensor" if bfmt.tensor_scale
        else f"scale mode {mode}" + (" (the default)" if mode == bfmt.scale_mode else "")
    )  # fmt: skip
    lines = [
        f"{bfmt.name}: blocks of {bsz} {elem} elements sharing {scale}",
        f"({bfmt.bits_per_element:g} bits per element); {how}",
    ]
    pad = -n % bsz
    if pad:
        lines.append(
            f"{n} value{'s' * (n != 1)}, padded with {pad} zeros to whole blocks (a zero "
            "never changes an amax)"
        )
    changed = [
        f"{v.text} -> {_f32_text(x, 17)}"
        for v, x in zip(values, xs, strict=True)
        if x.finite and x.value != (v.num.value if v.num.finite else None)
    ]
    if changed:
        lines.append("inputs rounded to float32 first (quantize_blocks casts them):")
        lines += [f"  {c}" for c in changed[:8]] + ["  ..."] * (len(changed) > 8)
    return lines


def explain_blocks(values: list[Input | int], bfmt: BlockFormat, mode: str | None) -> str:
    """The explanation of ``values`` (padded with zeros to whole blocks) in ``bfmt``."""
    if bfmt.scale.name == "fp32":
        raise CliError(
            f"explain covers the MX formats and NVFP4; {bfmt.name} has float32 scales: "
            "use fpsim.quantize_blocks or encode_blocks"
        )
    if bfmt.block_shape is not None:
        raise CliError(
            f"{bfmt.name} has 2-D tiles; explain shows blocks along one axis: try nvfp4"
        )
    if len(values) > MAX_VALUES:
        raise CliError(f"give at most {MAX_VALUES} values, got {len(values)}")
    if bfmt.tensor_scale:
        if mode is not None:
            raise CliError(
                f"{bfmt.name} chooses its E4M3 block scales by rounding to nearest; "
                "--scale-mode applies to E8M0 (MX) formats only"
            )
    else:
        mode = mode or bfmt.scale_mode
        if mode not in SCALE_MODES:
            raise CliError(f"unknown scale mode {mode!r}; valid: {', '.join(SCALE_MODES)}")
        if mode == "rceil" and bfmt.element == INT8:
            raise CliError("scale mode 'rceil' is defined for float elements, not MXINT8")
    xs = _inputs(values, bfmt)
    n, bsz = len(xs), bfmt.block_size
    padded = xs + [R.Num(False, Fraction(0))] * (-n % bsz)
    out = _header(values, xs, bfmt, mode)
    if bfmt.tensor_scale:
        t = R.nvfp4_tensor(padded)
        out += ["", "tensor"]
        out.append(f"  amax           {_f32_text(t.amax)}")
        out += [
            f"  tensor scale   amax / (448 × 6) = {_f32_text(t.tensor_scale)} (float32):",
            "                 the largest block scale lands at E4M3's max 448",
        ]
        if t.tensor_scale.finite and t.tensor_scale.mag == 0 and t.amax.mag != 0:
            out.append("                 (rounds to 0: every value of the tensor is 0)")
        if t.inv_tensor_scale.mag == "inf" and t.amax.mag != 0:
            out += [
                "  1 / tensor scale overflows float32 (amax < 2688 × 2^-128): every",
                "  nonzero element saturates (torchao's float32 arithmetic does the same)",
            ]
    for b0 in range(0, len(padded), bsz):
        blk = padded[b0 : b0 + bsz]
        shown = blk[: max(0, min(bsz, n - b0))]
        out += ["", f"block {b0 // bsz + 1} (values {b0 + 1}-{b0 + len(shown)})"]
        amax = R.from_bits(max(R.bits(x) for x in blk))
        out.append(_amax_line(amax))
        if bfmt.tensor_scale:
            bs, rcp, s, els = R.nvfp4_block(blk, t)
            bsf = R._div(
                R.from_bits(min(R.bits(amax), R.MAX_BITS)), R.Num(False, Fraction(6))
            )
            code_bs = ref.code_of(bs, E4M3)
            out += [
                f"  block scale    amax / 6 = {_f32_text(bsf)}; / tensor scale, clamped to",
                f"                 [2^-6, 448], rounded to E4M3: {show(bs)} (code "
                f"{_hex2(code_bs)}, bits {bit_string(code_bs, E4M3)})",
                f"  reciprocal     (1 / tensor scale) / block scale = {_f32_text(rcp)}",
                "                 (float32, each step rounded): elements are x × this",
                f"  scale          tensor scale × block scale = {_f32_text(s)} (float32);",
                "                 value = element × scale, rounded to float32",
            ]
            ylabel = "x × reciprocal"
        else:
            code, els = R.mx_block(blk, bfmt, mode)
            out += _mx_scale_lines(amax, code, bfmt, mode)
            ylabel = "x / scale"
        out += [""] + _table(els[: len(shown)], b0 + 1, bfmt, ylabel)
    return "\n".join(out)


# --- E8M0 -----------------------------------------------------------------------------
def explain_e8m0(value: Input | int) -> str:
    """A float32 rounded to E8M0 (ml_dtypes' rules), or an E8M0 bit pattern decoded."""
    layout = "an exponent only: 2^(code - 127)"
    if isinstance(value, int):
        if not 0 <= value <= 0xFF:
            raise CliError(f"bit pattern {value:#x} does not fit in e8m0's 8 bits")
        v = R.e8m0_value(value)
        stored = "NaN" if v.mag == "nan" else _pow2(value - 127)
        return "\n".join([
            f"bit pattern {_hex2(value)} in e8m0 ({layout})", "",
            f"  bits       {value:08b}", f"  stored     {stored}",
        ])  # fmt: skip
    x = R.f32(value.num)
    lines = [f"{value.text} stored in e8m0 ({layout}), rounding to nearest", ""]
    if x.finite and x.mag != 0:
        e = ref.floor_log2(x.mag)
        m = _f32_text(R.Num(False, x.mag / Fraction(2) ** e))
        lines.append(
            f"  float32    {_f32_text(x)} = 2^{e} × {m}"
            "\n             (the input is first a float32)"
        )
    code = R.e8m0_code(x)
    lines += [
        "  rule       1.f × 2^E goes to 2^E if f < 1/2, else to 2^(E+1): ties",
        "             (1.5 × 2^E) go up; anything below 1.5 × 2^-127 goes to 2^-127",
        "             (E8M0 has no zero); zero, negatives, NaN, -inf and anything from",
        "             1.5 × 2^127 up give NaN (ml_dtypes 0.7, fpsim.encode)",
        f"  bits       {code:08b}   ({_hex2(code)})",
        f"  stored     {'NaN' if code == R.NAN_CODE else _pow2(code - 127)}",
        "",
        "  rounding mode  result",
    ]
    for mode, note in (
        ("nearest", "   (the default)"),
        ("up", "   (cvt.rp.ue8m0: what MX's rceil uses)"),
        ("down", ""),
        ("toward_zero", ""),
    ):
        c = R.e8m0_code(x, mode)
        text = "NaN" if c == R.NAN_CODE else _pow2(c - 127)
        lines.append(f"  {mode:<13}  {text}  ({_hex2(c)}){note}")
    sat = R.e8m0_code(x, "nearest", saturate=True)
    if sat != code:
        lines.append(f"  saturate=True  {_pow2(sat - 127)}  ({_hex2(sat)})")
    return "\n".join(lines)
