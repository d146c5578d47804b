"""Tensor-core accumulation: exact products, aligned in groups, added in fixed point.

A tensor core does not add a dot product one rounded addition at a time. Measurements on
NVIDIA GPUs (Fasi, Higham, Mikaitis and Pranesh 2021; Khattak and Mikaitis 2025) show a
*multi-operand adder*: each step takes ``n`` products and the running sum ``c``, and

1. forms every product **exactly** (a 4-bit by 4-bit FP8 significand product has 8
   bits, an 11-bit FP16 one 22 bits);
2. finds the largest exponent ``E`` among the terms. A product's exponent is the *sum
   of its operands' exponents* (its significand, in ``[1, 4)``, is not normalised
   first); the running sum's exponent is its own;
3. shifts every significand right to align it with ``2**E`` and keeps only ``p``
   fraction bits below ``2**E``: the bits shifted out are **truncated** (dropped), with
   no guard or sticky bits. This is where a tensor core loses accuracy;
4. adds the aligned terms in fixed point (exactly: the adder is wide enough), and
5. normalises the sum *once* and rounds it into the accumulator format (toward zero on
   NVIDIA's FP32 outputs).

The spec in one line: ``c <- round_acc( sum_i trunc_p(t_i) )`` over
``t = (a_1 b_1, ..., a_n b_n, c)``, where ``trunc_p`` cuts each term to a multiple of
``2**(E - p)``. Two consequences the papers demonstrate, and the tests check:

* **Truncation bias**: every dropped bit makes a positive term smaller, so a long sum of
  positive products drifts low, by about ``n/2`` units of ``2**(E-p)`` per step.
* **Non-monotonicity**: increasing one term can *decrease* the result, because a larger
  term raises ``E`` and every other term loses a bit (Fasi et al. 2021, section 6).

Hopper's FP8 tensor cores keep only ``p = 13`` bits (about 14 significant bits, as
DeepSeek-V3 measured), so long FP8 dot products lose accuracy. DeepSeek-V3's remedy is
*promotion*: every ``N_C = 128`` products the partial sum is moved to an FP32 register on
the CUDA cores and added there with an ordinary FP32 addition; the tensor core restarts
from zero. :class:`AccumulatorModel` ``promote_every`` simulates that.

Implementation: pure JAX, bit-exact on any backend, in one of four ways (``PATHS``), all
checked against an exact rational model by the tests:

* ``"int"``: operands split into integer significand and exponent; the product of the
  significands (at most 12 x 12 bits) and every shift are int32, and the fixed-point
  sum too (or two halves of it, added into a uint32 magnitude, when ``n * 2**(p+2)``
  passes ``2**31``). Normalisation and rounding build the float32 bit pattern
  directly, so neither XLA's flush-to-zero of float32 subnormals nor any float
  rounding can interfere.
* ``"float"``: where every product is a normal float32 (FP16, FP8 inputs) and the sum
  stays below ``2**24`` units (Hopper's FP8 adder): the exact product is scaled by
  ``2**-(E - p)``, floored, and the terms added in float32, all exactly.
* ``"fma"``: the exact FP32 accumulator is a float32 multiply-add loop where products
  and sums can never be subnormal (FP16, FP8 inputs).
* ``"reference"``: the first implementation, one ``(n, M, N)`` block per group.

The fast paths write a group's ``n`` products as ``n`` separate ``(M, N)`` expressions,
so that XLA fuses each group step (alignment, fixed-point sum, normalisation) into one
vectorised loop over the outputs; a ``lax.scan`` walks the groups, with each step's
operands sliced one iteration ahead (:func:`_pipelined_scan`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from fpsim import _bits
from fpsim.formats import FP32, Format, get_format
from fpsim.numerics._operands import canonical_operands as _canonical
from fpsim.rounding import quantize

Alignment = Literal["truncate", "nearest"]
Normalisation = Literal["toward_zero", "nearest"]
ALIGNMENTS: tuple[str, ...] = ("truncate", "nearest")
NORMALISATIONS: tuple[str, ...] = ("toward_zero", "nearest")

#: inputs wider than this many significant bits do not fit the int32 product
MAX_INPUT_BITS = 12
_ZERO_EXP = -(1 << 20)  # exponent given to zero terms: below every real exponent


@dataclasses.dataclass(frozen=True)
class AccumulatorModel:
    """How a dot-product unit adds products: group size, kept bits, roundings.

    Frozen and hashable: a static argument of ``jax.jit`` and a field of a policy.

    Attributes:
      name: short name for tables (``"hopper_fp8"``).
      group_size: ``n``, products added in one fused step (with the running sum).
      kept_bits: ``p``, fraction bits kept below ``2**E`` after alignment, where ``E`` is
        the largest term exponent of the step (a product's exponent is the sum of its
        operands' exponents). Khattak and Mikaitis call ``p - 23`` the number of extra
        alignment bits (``neab``).
      alignment: what happens to the bits shifted out: ``"truncate"`` (dropped, as all
        measured NVIDIA tensor cores do) or ``"nearest"`` (round each aligned term to
        nearest, ties to even: a hypothetical better adder, for comparison).
      sticky: keep one more bit below the ``p`` bits that is 1 when any shifted-out bit
        was 1 (a sticky bit). With ``p = 26`` and ``group_size = 1`` this makes every
        step a correctly rounded addition (the ``fp32`` preset). Truncation only.
      accumulator: format of the running sum; every step's result is rounded to it.
      rounding: how the normalised sum is rounded into ``accumulator``:
        ``"toward_zero"`` (NVIDIA with FP32 output) or ``"nearest"`` (ties to even).
      promote_every: ``None``, or ``N``: the tensor core accumulates ``N`` products from
        zero, then the partial sum is added to an FP32 accumulator with an ordinary
        round-to-nearest FP32 addition (DeepSeek-V3's promotion). A multiple of
        ``group_size``.
    """

    name: str
    group_size: int
    kept_bits: int
    alignment: Alignment = "truncate"
    sticky: bool = False
    accumulator: Format = FP32
    rounding: Normalisation = "toward_zero"
    promote_every: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "accumulator", get_format(self.accumulator))
        if not (isinstance(self.group_size, int) and self.group_size >= 1):
            raise ValueError(f"group_size must be a positive int, got {self.group_size!r}")
        if not (isinstance(self.kept_bits, int) and 1 <= self.kept_bits <= 28):
            raise ValueError(f"kept_bits must be an int in 1..28, got {self.kept_bits!r}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(
                f"unknown alignment {self.alignment!r}; valid: {', '.join(ALIGNMENTS)}"
            )
        if self.rounding not in NORMALISATIONS:
            raise ValueError(
                f"unknown rounding {self.rounding!r}; valid: {', '.join(NORMALISATIONS)}"
            )
        if self.sticky and self.alignment != "truncate":
            raise ValueError("sticky=True needs alignment='truncate'")
        if self.promote_every is not None and not (
            isinstance(self.promote_every, int)
            and self.promote_every >= 1
            and self.promote_every % self.group_size == 0
        ):
            raise ValueError(
                f"promote_every must be None or a positive multiple of group_size="
                f"{self.group_size}, got {self.promote_every!r}"
            )
        if self.accumulator.mantissa_bits > 23 or self.accumulator.exponent_bits > 8:
            raise ValueError(f"accumulator {self.accumulator.name} is wider than FP32")
        if self.sum_bound >= 2**32:
            raise ValueError(
                f"group_size={self.group_size} with kept_bits={self.kept_bits} overflows "
                f"the 32-bit fixed-point adder: need n * 2**(p+2) + 2**(p+1) < 2**32"
            )

    @property
    def sum_bound(self) -> int:
        """Bound on the fixed-point sum, in units: products < ``2**(p+2)`` units each
        (significands in [1, 4)), the running sum < ``2**(p+1)``."""
        u = self.unit_bits
        return self.group_size * 2 ** (u + 2) + 2 ** (u + 1)

    @property
    def unit_bits(self) -> int:
        """Bits below ``2**E`` of the fixed-point grid (``p``, plus the sticky bit)."""
        return self.kept_bits + int(self.sticky)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------
#: An exact FP32 accumulator: each product (exact) is added to the FP32 running sum with
#: one correctly rounded addition (nearest-even), as an FMA loop on a CPU. Not a
#: hardware measurement: the ideal reference. (Implemented as a 1-product adder with 26
#: kept bits and a sticky bit, which rounds correctly; the tests check it against exact
#: rational sums.)
FP32_EXACT = AccumulatorModel(
    "fp32", group_size=1, kept_bits=26, sticky=True, accumulator=FP32, rounding="nearest"
)

#: NVIDIA V100 (Volta) tensor core, FP16 inputs, FP32 accumulator.
#: Measured (Fasi, Higham, Mikaitis, Pranesh, "Numerical behavior of NVIDIA tensor
#: cores", PeerJ Comput. Sci. 7:e330, 2021): products exact; 4 products and the
#: accumulator are added together, aligned to the largest exponent; the bits shifted
#: out are truncated (no guard digits); the sum is normalised only at the end and
#: rounded toward zero. Khattak and Mikaitis's bit-accurate model (V100TC.m: fma=4,
#: neab=0, frmode='rz') gives p = 23. The group is the hardware's; the order of groups
#: along K (consecutive, recursive) is the one both papers' models use.
V100_FP16 = AccumulatorModel("v100_fp16", group_size=4, kept_bits=23)

#: NVIDIA A100 (Ampere), FP16 or BF16 inputs, FP32 accumulator. Fasi et al. (2021)
#: measured groups of 8 products with truncation; Khattak and Mikaitis (2025,
#: "Accurate models of NVIDIA tensor cores", arXiv:2512.07004; A100TC.m: fma=8, neab=1,
#: 'rz') found one extra alignment bit: p = 24.
A100_FP16 = AccumulatorModel("a100_fp16", group_size=8, kept_bits=24)

#: NVIDIA A100, TF32 inputs: as :data:`A100_FP16` with groups of 4 (A100TC.m: fma=4).
A100_TF32 = AccumulatorModel("a100_tf32", group_size=4, kept_bits=24)

#: NVIDIA H100 (Hopper), FP16 or BF16 inputs, FP32 accumulator. Khattak and Mikaitis
#: (2025; H100TC.m: fma=16, neab=2, 'rz'): 16 products per step, p = 25, truncation.
H100_FP16 = AccumulatorModel("h100_fp16", group_size=16, kept_bits=25)

#: NVIDIA H100, TF32 inputs (H100TC.m: fma=8, neab=2).
H100_TF32 = AccumulatorModel("h100_tf32", group_size=8, kept_bits=25)

#: E8M13: FP32's exponent with 13 fraction bits, the running sum of Hopper's FP8 path.
E8M13 = Format("e8m13", exponent_bits=8, mantissa_bits=13)

#: NVIDIA H100, FP8 (E4M3 or E5M2) inputs, FP32 output ("fast accumulation").
#: Measured: DeepSeek-V3 technical report (arXiv:2412.19437, section 3.3.2) found that
#: FP8 GEMM on H800 "is limited to retaining around 14 bits", far below FP32; Khattak and
#: Mikaitis (2025; H100TC.m: fma=32, neab=-10, 'rz') modelled it bit-accurately as 32
#: products per step, p = 23 - 10 = 13 kept bits, and a running sum truncated to 13
#: fraction bits (E8M13). Assumed here: the 32 products are consecutive along K (the
#: paper notes the hardware interleaves two 16-element vectors).
HOPPER_FP8 = AccumulatorModel("hopper_fp8", group_size=32, kept_bits=13, accumulator=E8M13)

#: :data:`HOPPER_FP8` with DeepSeek-V3's promotion: every N_C = 128 products (4 WGMMA
#: instructions of K = 32) the partial sum is added to an FP32 register on the CUDA
#: cores (round to nearest) and the tensor core restarts from zero. The interval is
#: DeepSeek-V3's (section 3.3.2); the FP32 addition is assumed correctly rounded.
HOPPER_FP8_PROMOTE128 = dataclasses.replace(
    HOPPER_FP8, name="hopper_fp8_promote128", promote_every=128
)

PRESETS: dict[str, AccumulatorModel] = {
    m.name: m
    for m in (
        FP32_EXACT,
        V100_FP16,
        A100_FP16,
        A100_TF32,
        H100_FP16,
        H100_TF32,
        HOPPER_FP8,
        HOPPER_FP8_PROMOTE128,
    )
}


def get_accumulator(model: str | AccumulatorModel) -> AccumulatorModel:
    """An :class:`AccumulatorModel` from itself or a preset name."""
    if isinstance(model, AccumulatorModel):
        return model
    if isinstance(model, str) and model in PRESETS:
        return PRESETS[model]
    raise ValueError(f"unknown accumulator model {model!r}; presets: {', '.join(PRESETS)}")


# --------------------------------------------------------------------------------------
# Integer views of float32 values
# --------------------------------------------------------------------------------------
def _split(x, drop: int, emin: int):
    """``x == sig * 2**f`` with a signed int32 ``sig``, and the alignment exponent.

    ``drop`` low significand bits are known to be zero (x is on a grid with
    ``23 - drop`` fraction bits) and are removed. The alignment exponent is
    ``max(floor(log2|x|), emin)``: the exponent *field* of the value in its format,
    which for a subnormal is ``emin``. Zero gets a huge negative exponent.
    """
    bits = lax.bitcast_convert_type(x, jnp.int32)
    biased = (bits >> 23) & 0xFF
    mant = (bits & 0x7FFFFF) | jnp.where(biased > 0, 1 << 23, 0)
    f = jnp.maximum(biased, 1) - 150
    mag = mant >> drop
    f = f + drop
    sig = jnp.where(bits < 0, -mag, mag)
    lead = 31 - lax.clz(jnp.maximum(mag, 1))  # bit length - 1
    e = jnp.where(mag == 0, _ZERO_EXP, jnp.maximum(f + lead, emin))
    return sig, f, e


def _mask(r):
    """``2**r - 1`` for int32 ``0 <= r <= 31`` (without overflowing at 31)."""
    return jnp.where(r >= 31, 0x7FFFFFFF, (1 << jnp.minimum(r, 30)) - 1)


def _align(sig, f, g, model: AccumulatorModel):
    """``sig * 2**f`` as a signed int32 number of units ``2**g``, truncated or rounded.

    ``|sig| < 2**25``. Truncation drops the bits below ``2**g`` from the magnitude
    (sign-magnitude, so toward zero); with a sticky bit the lowest unit (``2**g``) is
    the OR of everything below ``2**(g+1)``.
    """
    mag = jnp.abs(sig)
    sh = g - f  # > 0: shift right, <= 0: shift left (exact)
    left = mag << jnp.clip(-sh, 0, 31)
    if model.sticky:
        r = jnp.clip(sh + 1, 0, 31)
        q = ((mag >> r) << 1) | ((mag & _mask(r)) != 0).astype(jnp.int32)
    else:
        r = jnp.clip(sh, 0, 31)
        q = mag >> r
        if model.alignment == "nearest":
            rem = mag & _mask(r)
            half = 1 << jnp.clip(r - 1, 0, 30)
            up = (r >= 1) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
            q = q + up.astype(jnp.int32)
    t = jnp.where(sh <= 0, left, q)
    return jnp.where(sig < 0, -t, t)


def _normalise(s, g, acc: Format, rounding: str):
    """The float32 value of ``s * 2**g`` (int32 ``s``) rounded to ``acc`` with ``rounding``.

    Integer normalisation: find the leading bit, drop the bits below ``acc``'s grid
    (``2**(max(e, emin) - m)``), round, and assemble the float32 bit pattern.
    """
    neg = s < 0
    mag = jnp.abs(s)  # |s| < 2**31
    lead = 31 - lax.clz(jnp.maximum(mag, 1))
    u = jnp.maximum(g + lead, acc.emin) - acc.mantissa_bits  # acc's ulp exponent there
    d = u - g  # bits to drop
    dc = jnp.clip(d, 0, 31)
    q = jnp.where(d >= 32, 0, mag >> dc)
    if rounding == "nearest":
        rem = mag & _mask(dc)
        half = 1 << jnp.clip(dc - 1, 0, 30)
        up = (d >= 1) & (d <= 31) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
        q = q + up.astype(jnp.int32)
    h = g + jnp.maximum(d, 0)  # value = q * 2**h, 0 <= q <= 2**24
    lq = 31 - lax.clz(jnp.maximum(q, 1))
    ex = h + lq  # exponent of the result
    frac = jnp.where(lq <= 23, q << jnp.clip(23 - lq, 0, 31), q >> jnp.clip(lq - 23, 0, 31))
    normal = ((ex + 127) << 23) | (frac & 0x7FFFFF)
    sub = q << jnp.clip(h + 149, 0, 31)
    ieee = acc.convention == "ieee"
    if ieee:  # overflow: inf when rounding to nearest, else acc's largest value
        over = 0x7F800000 if rounding == "nearest" else _bits.F32.bits_of(acc.max)
        top = acc.emax
    else:  # float32's rule here, then acc's own convention (quantize) below
        over = 0x7F800000 if rounding == "nearest" else 0x7F7FFFFF
        top = 127
    bits = jnp.where(ex > top, over, jnp.where(ex >= -126, normal, sub))
    bits = jnp.where(q == 0, 0, bits) | jnp.where(neg, jnp.int32(-(2**31)), 0)
    out = lax.bitcast_convert_type(bits, jnp.float32)
    if not ieee:
        out = quantize(out, acc, rounding)  # acc's overflow rule (identity in range)
    return out


def _step(c, a_sig, a_f, a_e, b_sig, b_f, b_e, model: AccumulatorModel):
    """One fused step: ``c`` (B, M, N) plus the products of one group.

    ``a_*`` are (n, B, M, 1) and ``b_*`` (n, B, 1, N): the group's operands.
    """
    acc = model.accumulator
    c_sig, c_f, c_e = _split(c, 0, acc.emin)
    big = jnp.maximum(jnp.max(a_e + b_e, axis=0), c_e)  # E: largest term exponent
    g = big - model.unit_bits
    terms = _align(a_sig * b_sig, a_f + b_f, g, model)
    tc = _align(c_sig, c_f, g, model)
    if model.sum_bound < 2**31:
        s = jnp.sum(terms, axis=0) + tc
    else:  # up to 33 bits signed: add in two 16-bit halves, then keep a sticky bit
        s, g = _wide_sum(terms, tc, g)
    out = _normalise(s, g, acc, model.rounding)
    return jnp.where(jnp.isfinite(c), out, c)


def _wide_sum(terms, tc, g):
    """``sum(terms, axis=0) + tc`` when it may need 32 bits of magnitude.

    Each term is split as ``hi * 2**16 + lo`` (``0 <= lo < 2**16``); the halves are
    summed separately (no overflow), recombined into a uint32 magnitude, and, when it
    does not fit in 31 bits, halved with the lost bit ORed into the last one (a sticky
    bit: at that size at least 8 bits are rounded off, so the rounding is unchanged).
    """
    lo = jnp.sum(terms & 0xFFFF, axis=0) + (tc & 0xFFFF)
    hi = jnp.sum(terms >> 16, axis=0) + (tc >> 16) + (lo >> 16)
    lo = (lo & 0xFFFF).astype(jnp.uint32)
    neg = hi < 0
    mag = jnp.where(neg, (-hi).astype(jnp.uint32) << 16, hi.astype(jnp.uint32) << 16)
    mag = jnp.where(neg, mag - lo, mag + lo)
    wide = mag >= jnp.uint32(2**31)
    mag = jnp.where(wide, (mag >> 1) | (mag & 1), mag).astype(jnp.int32)
    return jnp.where(neg, -mag, mag), g + wide.astype(jnp.int32)


def _fp32_add(x, y):
    """Correctly rounded FP32 ``x + y`` in integers (immune to flush-to-zero)."""
    xs, xf, xe = _split(x, 0, FP32.emin)
    ys, yf, ye = _split(y, 0, FP32.emin)
    g = jnp.maximum(xe, ye) - FP32_EXACT.unit_bits
    s = _align(xs, xf, g, FP32_EXACT) + _align(ys, yf, g, FP32_EXACT)
    return jnp.where(jnp.isfinite(x) & jnp.isfinite(y), _normalise(s, g, FP32, "nearest"),
                     x + y)  # fmt: skip


# --------------------------------------------------------------------------------------
# The fast paths: one fused loop per group step, no (n, M, N) intermediate
# --------------------------------------------------------------------------------------
def _operand(x, fmt: Format):
    """``(mag, e, neg)`` with ``|x| == mag * 2**(e - fmt.mantissa_bits)``.

    ``e`` is the alignment exponent (``max(floor(log2|x|), emin)``, the exponent field
    of ``x`` in ``fmt``), so ``mag < 2**(mantissa_bits + 1)`` is the significand as
    ``fmt`` stores it, subnormals included; ``neg`` is 0 or -1 (a sign mask). ``x`` is
    on ``fmt``'s grid, so every shift here is exact.
    """
    sig, f, e = _split(x, 0, fmt.emin)
    mag = jnp.abs(sig)
    d = f - (e - fmt.mantissa_bits)  # the bits ``mag`` has beyond fmt's unit
    mag = jnp.where(d >= 0, mag << jnp.clip(d, 0, 31), mag >> jnp.clip(-d, 0, 31))
    return mag, e, jnp.where(sig < 0, -1, 0)


def _shr(x, s):
    """``x >> s`` (logical) for any ``s >= 0``: XLA gives 0 when ``s >= 32``."""
    return lax.shift_right_logical(x, s)


def _cut(mag, sh, model: AccumulatorModel):
    """Non-negative int32 ``mag`` in units ``2**-sh`` of the grid, cut to whole units.

    ``sh >= 0``; any size (XLA's shifts by 32 or more give 0, and ``(1 << s) - 1`` is
    then all ones, the right mask). The same cuts as :func:`_align`.
    """
    if model.sticky:
        s = jnp.minimum(sh + 1, 31)
        low = mag & ((jnp.int32(1) << s) - 1)
        return (_shr(mag, s) << 1) | (low != 0).astype(jnp.int32)
    q = _shr(mag, jnp.minimum(sh, 31))  # mag < 2**31: a shift by 31 leaves 0
    if model.alignment == "nearest":
        rem = mag & ((jnp.int32(1) << jnp.minimum(sh, 31)) - 1)
        half = jnp.int32(1) << jnp.clip(sh - 1, 0, 30)
        up = (sh >= 1) & (sh <= 31) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
        q = q + up.astype(jnp.int32)
    return q


def _add_wide(x, y, g):
    """``x + y`` (int32, ``|x + y| < 2**32``) as int32 units of ``2**g'``.

    The sum is formed as a uint32 magnitude (wrap-around addition, then the overflow
    decides the sign); a magnitude of ``2**31`` or more is halved with the lost bit
    ORed into the last one (a sticky bit), as in :func:`_wide_sum`.
    """
    w = x + y
    over = ((x ^ w) & (y ^ w)) < 0
    neg = jnp.where(over, x < 0, w < 0)
    mag = jnp.where(neg, (-w).astype(jnp.uint32), w.astype(jnp.uint32))
    wide = mag >= jnp.uint32(2**31)
    mag = jnp.where(wide, (mag >> 1) | (mag & 1), mag).astype(jnp.int32)
    return jnp.where(neg, -mag, mag), g + wide.astype(jnp.int32)


def _product_terms_int(a, b, big, es, model: AccumulatorModel, inputs: Format):
    """The group's products cut to units ``2**(E - u)``, in integers: ``a`` is (mag, e,
    neg) with ``mag`` pre-shifted (:func:`_pre_shift`); a shift per product."""
    extra = max(0, 2 * inputs.mantissa_bits - model.unit_bits)  # product units below
    terms = []
    for i, e in enumerate(es):
        mag = a[0][..., i, None] * b[0][..., i, None, :]
        q = _cut(mag, big - e + extra, model)
        s = a[2][..., i, None] ^ b[2][..., i, None, :]
        terms.append((q ^ s) - s)
    return terms


def _product_terms_float(a, b, big, es, model: AccumulatorModel, inputs: Format):
    """The same terms in float32: ``a`` is (|value|, e, sign as +-1.0).

    The product is exact in float32 (:func:`_float_ok`), and so is its scaling by
    ``2**-(E - u)``; ``floor`` of the magnitude cuts it to whole units (truncation
    toward zero once the sign is put back), ``round`` to nearest even; the sticky bit
    is "floor lost something". The terms are whole numbers below ``2**24`` in all, so
    their float32 sum is exact. A scaled product below ``2**-126`` may be flushed to
    zero by XLA on CPU: it is below one unit and cuts to 0 anyway (the sticky bit looks
    at the product itself).
    """
    g = jnp.clip(big - model.unit_bits, -126, 126)  # clipped only where no product
    scale = lax.bitcast_convert_type((127 - g) << 23, jnp.float32)  # 2**-g
    if model.sticky:
        scale = scale * 0.5
    terms = []
    for i in range(len(es)):
        p = a[0][..., i, None] * b[0][..., i, None, :]
        y = p * scale
        sign = a[2][..., i, None] * b[2][..., i, None, :]
        if model.alignment == "nearest":
            terms.append(lax.round(y, lax.RoundingMethod.TO_NEAREST_EVEN) * sign)
            continue
        q = jnp.floor(y)
        if model.sticky:
            lost = (q != y) | ((y == 0) & (p != 0))
            q = 2 * q + lost.astype(jnp.float32)
        terms.append(q * sign)
    return terms


def _fast_step(c, a, b, model: AccumulatorModel, inputs: Format, kind: str,
               safe: bool = False):  # fmt: skip
    """One fused step, every product formed where it is used.

    ``c`` (B, M, N) float32; ``a``: the group's lhs, each (B, M, n), and ``b`` (B, n, N),
    as :func:`_product_terms_int` or :func:`_product_terms_float` (``kind``) reads them,
    exponents second. The group's products are written as ``n`` separate (B, M, N)
    expressions, so XLA fuses the whole step into one elementwise loop. ``safe``: the
    sums are never subnormal nor overflow (:func:`_in_range`).
    """
    acc = model.accumulator
    n = a[0].shape[-1]
    c_sig, c_f, c_e = _split_normal(c) if safe else _split(c, 0, acc.emin)
    es = [a[1][..., i, None] + b[1][..., i, None, :] for i in range(n)]
    big = functools.reduce(jnp.maximum, es, c_e)  # E
    products = _product_terms_float if kind == "float" else _product_terms_int
    terms = products(a, b, big, es, model, inputs)
    g = big - model.unit_bits
    tc = _align(c_sig, c_f, g, model)
    if kind == "float":  # exact: whole numbers, |sum| < 2**24
        s = functools.reduce(jnp.add, terms, tc.astype(jnp.float32)).astype(jnp.int32)
    elif model.sum_bound < 2**31:
        s = functools.reduce(jnp.add, terms, tc)
    else:  # two halves that each fit in int32, added into a uint32 magnitude
        h = (n + 1) // 2
        s, g = _add_wide(functools.reduce(jnp.add, terms[:h]),
                         functools.reduce(jnp.add, terms[h:], tc), g)  # fmt: skip
    if safe:
        return _normalise_in_range(s, g, acc, model.rounding)
    out = _normalise(s, g, acc, model.rounding)
    return jnp.where(jnp.isfinite(c), out, c)


def _in_range(model: AccumulatorModel, inputs: Format, k: int) -> bool:
    """Whether every running sum of ``k`` products of ``inputs`` values is 0 or a normal
    number of the accumulator, so the fast paths can skip subnormals and overflow.

    A nonzero sum is a multiple of its step's unit ``2**(E - u)`` with ``E >= 2 * emin``
    (a product's exponent) or it is the previous sum, untouched (inductively at least
    ``2**(2 * emin - u)``); it is at most ``k`` products of at most ``max**2`` each, and
    a unit more per term when rounding to nearest (a factor 2 covers it)."""
    acc = model.accumulator
    small = 2 * inputs.emin - model.unit_bits
    big = max(k, 1).bit_length() + 2 * (inputs.emax + 1) + 1
    return acc.convention == "ieee" and small >= acc.emin and big <= acc.emax


def _split_normal(x):
    """:func:`_split` for float32 ``x`` that is 0 or normal: no leading-zero count."""
    bits = lax.bitcast_convert_type(x, jnp.int32)
    biased = (bits >> 23) & 0xFF
    mag = jnp.where(biased == 0, 0, (bits & 0x7FFFFF) | (1 << 23))
    return (
        jnp.where(bits < 0, -mag, mag),
        biased - 150,
        jnp.where(biased == 0, _ZERO_EXP, biased - 127),
    )


def _normalise_in_range(s, g, acc: Format, rounding: str):
    """:func:`_normalise` for a result that is 0 or normal in ``acc`` (:func:`_in_range`):
    keep ``acc``'s ``m + 1`` leading bits of ``|s|`` (rounding them), convert them to
    float32 (exact: at most 24 significant bits) and add ``g`` to the exponent field."""
    neg = s < 0
    mag = jnp.abs(s).astype(jnp.uint32)  # < 2**31; uint32 leaves room for rounding up
    lead = 31 - lax.clz(mag | 1).astype(jnp.int32)  # signed: lead - m may be negative
    drop = jnp.maximum(lead - acc.mantissa_bits, 0).astype(jnp.uint32)
    if rounding == "nearest":  # to even; a carry gives a power of two, still exact
        half = (jnp.uint32(1) << drop) >> 1
        mag = mag + jnp.where(drop > 0, half - 1 + ((mag >> drop) & 1), 0)
    q = mag & ~((jnp.uint32(1) << drop) - 1)
    bits = lax.bitcast_convert_type(q.astype(jnp.float32), jnp.int32) + (g << 23)
    bits = jnp.where(q == 0, 0, bits) | jnp.where(neg, jnp.int32(-(2**31)), 0)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _pipelined_scan(step, c, xs):
    """``c = step(c, x)`` over the leading axis of the tuple ``xs``, each step's operands
    sliced one iteration ahead and carried in the loop state.

    With ``lax.scan`` XLA fuses the slicing of ``xs`` (a dynamic slice) into the step's
    elementwise loop, and LLVM then does not vectorise it (measured 10-20x slower on a
    CPU); a slice carried from the previous iteration arrives as a plain buffer.
    (Fusing two or more group steps into one loop step measured slower still.)
    """
    first = tuple(x[0] for x in xs)

    def body(carry, i):
        c, cur = carry
        nxt = tuple(lax.dynamic_index_in_dim(x, i + 1, 0, keepdims=False) for x in xs)
        return (step(c, cur), nxt), None

    c, last = lax.scan(body, (c, first), jnp.arange(xs[0].shape[0] - 1))[0]
    return step(c, last)


def _pre_shift(model: AccumulatorModel, inputs: Format) -> int:
    """Left shift of the lhs significands so that every product cut is a right shift."""
    return max(0, model.unit_bits - 2 * inputs.mantissa_bits)


def _int_ok(model: AccumulatorModel, inputs: Format) -> bool:
    """Whether the integer path's int32 products and (half-)sums cannot overflow."""
    prod = 2 * inputs.mantissa_bits + 2 + _pre_shift(model, inputs)
    u = model.unit_bits
    half = -(-model.group_size // 2) * 2 ** (u + 2) + 2 ** (u + 1)
    return prod <= 31 and (model.sum_bound < 2**31 or half < 2**31)


def _float_ok(model: AccumulatorModel, inputs: Format) -> bool:
    """Whether every product of two ``inputs`` values is a normal float32 (exact), and
    ``2**-(E - u)`` is one wherever a product is nonzero (``E >= 2 * emin``)."""
    low = 2 * (inputs.emin - inputs.mantissa_bits)  # exponent of the smallest product
    return (
        _int_ok(model, inputs)
        and model.sum_bound <= 2**24
        and low >= -126
        and 2 * (inputs.emax + 1) <= 127
        and 2 * inputs.emin - model.unit_bits >= -126
    )


def _fma_ok(model: AccumulatorModel, inputs: Format) -> bool:
    """Whether the model is a correctly rounded FP32 addition of one exact product at a
    time (:data:`FP32_EXACT`: 26 kept bits and a sticky bit round correctly) and XLA's
    float32 ``c + a * b`` computes it: products exact and normal, and every sum a
    multiple of the smallest product, so never a (flushed) subnormal."""
    return (
        model.group_size == 1
        and model.sticky
        and model.kept_bits >= 26
        and model.accumulator == FP32
        and model.rounding == "nearest"
        and 2 * (inputs.emin - inputs.mantissa_bits) >= -126
        and 2 * (inputs.emax + 1) <= 127
    )


#: How ``tc_dot_general`` computes: ``"auto"`` picks ``"fma"`` for an exact FP32
#: accumulator (a float32 multiply-add loop), ``"float"`` where it is exact (FP16, FP8
#: inputs), else ``"int"``; ``"reference"`` is the first, unfused implementation (one
#: (n, M, N) block per step), kept as the tests' second opinion.
PATHS: tuple[str, ...] = ("auto", "fma", "float", "int", "reference")


def _choose_path(path: str, model: AccumulatorModel, inputs: Format) -> str:
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
    ok = {
        "fma": _fma_ok(model, inputs),
        "float": _float_ok(model, inputs),
        "int": _int_ok(model, inputs),
        "reference": True,
    }
    if path == "auto":
        return next(p for p in ("fma", "float", "int", "reference") if ok[p])
    if not ok[path]:
        raise ValueError(
            f"path {path!r} cannot compute {model.name} on {inputs.name} exactly"
        )
    return path


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------
def _check_inputs(inputs: Format) -> None:
    if inputs.mantissa_bits + 1 > MAX_INPUT_BITS:
        raise ValueError(
            f"tensor-core models support inputs of at most {MAX_INPUT_BITS} significant "
            f"bits (FP16, BF16, TF32, FP8, FP6, FP4, ...), got {inputs.name} with "
            f"{inputs.mantissa_bits + 1}: their exact products would not fit in int32"
        )


def _model_and_operands(model, inputs, a, b):
    """The accumulator model and input format looked up, both operands rounded to the
    inputs (the tensor core reads them in that format)."""
    model = get_accumulator(model)
    inputs = get_format(inputs)
    _check_inputs(inputs)
    a = quantize(jnp.asarray(a, jnp.float32), inputs)
    b = quantize(jnp.asarray(b, jnp.float32), inputs)
    return model, inputs, a, b


def tc_dot_general(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    dimension_numbers,
    model: str | AccumulatorModel,
    *,
    inputs: str | Format,
) -> jax.Array:
    """``lax.dot_general`` on a simulated tensor core: exact products, grouped alignment.

    Args:
      lhs: and ``rhs``: float32 operands; they are rounded to ``inputs`` first
        (round to nearest; the identity for values already on its grid).
      dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch,
        rhs_batch))`` as for ``lax.dot_general``; the output is batch dims, then lhs
        free dims, then rhs free dims. The contraction runs in order along the
        (flattened) contracting dims, in consecutive groups of ``model.group_size``;
        the last group is padded with zeros.
      model: an :class:`AccumulatorModel` or a preset name (see ``PRESETS``).
      inputs: the operands' format: at most 12 significant bits (FP16, BF16, TF32,
        E4M3, E5M2, ...), so that products are exact in int32.

    Returns:
      float32 array on the accumulator's grid (FP32 after promotion). NaN and inf in
      the operands give XLA's float32 result for the affected outputs.

    Example:
      >>> import jax.numpy as jnp
      >>> from fpsim.numerics._tensor_core import tc_dot_general
      >>> x = jnp.full(4096, 1.0 + 2.0**-3)  # every product is 1 + 2**-2 + 2**-6
      >>> dn = (((0,), (0,)), ((), ()))  # exact dot product: 5184
      >>> float(tc_dot_general(x, x, dn, "hopper_fp8", inputs="e4m3"))  # truncation
      4923.5
      >>> float(tc_dot_general(x, x, dn, "hopper_fp8_promote128", inputs="e4m3"))
      5184.0
    """
    model, inputs, lhs, rhs = _model_and_operands(model, inputs, lhs, rhs)
    dims = jax.tree_util.tree_map(int, dimension_numbers)
    dims = tuple(tuple(tuple(d) for d in pair) for pair in dims)
    return _tc_dot_general(lhs, rhs, dims, model, inputs)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 7))
def _tc_dot_general(lhs, rhs, dims, model: AccumulatorModel, inputs: Format,
                    path: str = "auto", scales=None, in_range: bool = True):  # fmt: skip
    a, b, out_shape = _canonical(lhs, rhs, dims)
    nb, m, k = a.shape
    n_out = b.shape[2]
    n = model.group_size
    chunk = model.promote_every or -(-k // n) * n
    kp = -(-k // chunk) * chunk  # padded K: whole chunks of whole groups
    a = jnp.pad(a, ((0, 0), (0, 0), (0, kp - k)))
    b = jnp.pad(b, ((0, 0), (0, kp - k), (0, 0)))
    zero = jnp.zeros((nb, m, n_out), jnp.float32)
    path = _choose_path(path, model, inputs)
    if path == "fma":  # c = fl32(c + a_k b_k), several k per loop step
        unroll = max(u for u in (1, 2, 4, 8, 16) if chunk % u == 0)
        ga = [
            jnp.moveaxis(
                a.reshape(nb, m, kp // chunk, chunk // unroll, unroll), (2, 3), (0, 1)
            )
        ]
        gb = [
            jnp.moveaxis(
                b.reshape(nb, kp // chunk, chunk // unroll, unroll, n_out), (1, 2), (0, 1)
            )
        ]

        def step(c, g):
            for i in range(unroll):
                c = c + g[0][..., i, None] * g[1][..., i, None, :]
            return c

        run = functools.partial(_pipelined_scan, step)
    elif path != "reference":
        if path == "int":
            am, ae, an = _operand(a, inputs)
            a_ops, b_ops = (am << _pre_shift(model, inputs), ae, an), _operand(b, inputs)
        else:
            a_ops = (jnp.abs(a), _split(a, 0, inputs.emin)[2], jnp.where(a < 0, -1.0, 1.0))
            b_ops = (jnp.abs(b), _split(b, 0, inputs.emin)[2], jnp.where(b < 0, -1.0, 1.0))
        ga = [x.reshape(nb, m, kp // chunk, chunk // n, n) for x in a_ops]
        ga = [jnp.moveaxis(x, (2, 3), (0, 1)) for x in ga]  # (C, G, B, M, n)
        gb = [x.reshape(nb, kp // chunk, chunk // n, n, n_out) for x in b_ops]
        gb = [jnp.moveaxis(x, (1, 2), (0, 1)) for x in gb]  # (C, G, B, n, N)
        na = len(a_ops)

        safe = in_range and _in_range(model, inputs, chunk)

        def step(c, g):
            return _fast_step(c, g[:na], g[na:], model, inputs, path, safe)

        run = functools.partial(_pipelined_scan, step)
    else:
        drop = 23 - inputs.mantissa_bits
        a_sig, a_f, a_e = _split(a, drop, inputs.emin)
        b_sig, b_f, b_e = _split(b, drop, inputs.emin)

        def groups(x, axis):  # (B, ..K..) -> (chunks, groups per chunk, n, B, M or N)
            return jnp.moveaxis(x, axis, 0).reshape(kp // chunk, chunk // n, n, nb, -1)

        ga = [groups(t, 2)[..., :, None] for t in (a_sig, a_f, a_e)]  # (C, G, n, B, M, 1)
        gb = [groups(t, 1)[..., None, :] for t in (b_sig, b_f, b_e)]  # (C, G, n, B, 1, N)

        def step(c, g):
            return _step(c, *g, model), None

        def run(c, xs):
            return lax.scan(step, c, xs)[0]

    def tensor_core(total, xs):  # one chunk: groups in order, from zero
        if scales is not None:  # the chunk's scales, applied as it is promoted
            *xs, sa, sb = xs
            part = (sa * sb) * run(zero, xs)
        else:
            part = run(zero, xs)
        if model.promote_every is None:
            return part, None
        return _fp32_add(total, part), None

    xs = (*ga, *gb) if scales is None else (*ga, *gb, *scales)
    out = lax.scan(tensor_core, zero, xs)[0]
    special = ~(jnp.all(jnp.isfinite(lhs)) & jnp.all(jnp.isfinite(rhs)))
    xla = lax.dot_general(lhs, rhs, dims, precision=lax.Precision.HIGHEST)
    fix = special & ~jnp.isfinite(xla)
    return jnp.where(fix, xla, out.reshape(out_shape))


def tc_matmul(
    a: jax.typing.ArrayLike,
    b: jax.typing.ArrayLike,
    model: str | AccumulatorModel,
    *,
    inputs: str | Format,
) -> jax.Array:
    """``a @ b`` (``(..., m, k) @ (k, n)``) on a simulated tensor core; see
    :func:`tc_dot_general`."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.ndim < 1 or b.ndim != 2 or a.shape[-1] != b.shape[0]:
        raise ValueError(f"tc_matmul needs (..., m, k) @ (k, n), got {a.shape} @ {b.shape}")
    return tc_dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())), model, inputs=inputs)


def tc_scaled_matmul(
    a: jax.typing.ArrayLike,
    b: jax.typing.ArrayLike,
    a_scale: jax.typing.ArrayLike,
    b_scale: jax.typing.ArrayLike,
    model: str | AccumulatorModel,
    *,
    inputs: str | Format,
) -> jax.Array:
    """``(a * a_scale) @ (b * b_scale)`` as a scaled FP8 GEMM computes it: the tensor
    core multiplies the unscaled elements, the scales are applied on promotion.

    DeepSeek-V3's fine-grained FP8 GEMM (and DeepGEMM's kernel) keeps one float32 scale
    per 1x128 block of ``a`` and per 128x128 block of ``b`` along K. The tensor core
    adds 128 products of the elements (``model``, with ``promote_every = 128``), and
    the CUDA cores add ``(a_scale * b_scale) * partial`` to an FP32 accumulator
    (DeepGEMM: ``final_accum += scale_a * scale_b * accum``). Assumed here: the scale
    product, its product with the partial sum and the addition each round to nearest
    FP32 (the compiler may fuse the last two into one FMA, which would round once);
    the two multiplications use XLA's float32, which flushes subnormal results to zero
    on CPU.

    Args:
      a: ``(m, k)`` elements, on ``inputs``' grid (rounded to it otherwise).
      b: ``(k, n)`` elements.
      a_scale: ``(m, k // kb)`` scales, one per row and block of ``kb`` along K (or a
        scalar: one scale for the tensor).
      b_scale: ``(k // kb, n)`` scales (or a scalar); a 128x128 weight block's scale
        is repeated over its 128 columns.
      model: an :class:`AccumulatorModel` or preset name; with more than one block
        along K it must promote once per block (``promote_every == kb``).
      inputs: the elements' format.

    Returns:
      float32 ``(m, n)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from fpsim.numerics import tc_scaled_matmul
      >>> x = jnp.full((1, 256), 1.125)
      >>> s = jnp.array([[0.5, 0.25]])  # two blocks of 128 along K
      >>> y = tc_scaled_matmul(x, x.T, s, s.T, "hopper_fp8_promote128", inputs="e4m3")
      >>> float(y[0, 0])  # 128 * 1.125**2 = 162 per block: 162 * (0.5**2 + 0.25**2)
      50.625
    """
    model, inputs, a, b = _model_and_operands(model, inputs, a, b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(
            f"tc_scaled_matmul needs (m, k) @ (k, n), got {a.shape} @ {b.shape}"
        )
    (m, k), n = a.shape, b.shape[1]
    sa = jnp.asarray(a_scale, jnp.float32)
    sb = jnp.asarray(b_scale, jnp.float32)
    blocks = 1 if sa.ndim == 0 else sa.shape[-1]
    sa = jnp.broadcast_to(sa.reshape(-1, blocks) if sa.ndim else sa, (m, blocks))
    sb = jnp.broadcast_to(sb.reshape(blocks, -1) if sb.ndim else sb, (blocks, n))
    if k % blocks:
        raise ValueError(f"{blocks} scale blocks do not divide K = {k}")
    if blocks > 1 and model.promote_every != k // blocks:
        raise ValueError(
            f"scales per block of {k // blocks} along K are applied when the partial sum "
            f"is promoted, so the model must promote every {k // blocks} products; "
            f"{model.name} has promote_every={model.promote_every} (DeepSeek-V3: "
            "'hopper_fp8_promote128' with blocks of 128)"
        )
    if blocks == 1 and model.promote_every is not None and model.promote_every < k:
        chunks = -(-k // model.promote_every)  # one scale, every chunk
        sa, sb = jnp.broadcast_to(sa, (m, chunks)), jnp.broadcast_to(sb, (chunks, n))
    scales = (sa.T[:, None, :, None], sb[:, None, None, :])  # (C, 1, M, 1), (C, 1, 1, N)
    dims = (((1,), (0,)), ((), ()))
    return _tc_dot_general(a, b, dims, model, inputs, "auto", scales)
