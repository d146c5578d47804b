"""Number formats: what a binary floating-point format is, and the ones in use.

A binary floating-point number is ``(-1)**sign * 2**exponent * significand``. A *format*
fixes how many bits store each part:

* ``exponent_bits`` store the exponent, offset by the ``bias`` so that the field is an
  unsigned integer. Field value ``e`` in ``1 .. top`` means a *normal* number
  ``2**(e - bias) * 1.mmm``: the leading 1 is implicit and not stored.
* ``mantissa_bits`` store the fraction ``mmm`` after the binary point. With ``p =
  mantissa_bits + 1`` significant bits, neighbouring numbers in ``[1, 2)`` are ``2**-m``
  apart: that is the format's ``eps``.
* Field value ``e = 0`` means a *subnormal* number ``2**(1 - bias) * 0.mmm``: no implicit
  1, so the numbers keep the same spacing all the way down to zero (gradual underflow).

Formats differ in what the top of the code space means. fpsim knows five conventions,
which are the five ml_dtypes uses:

``"ieee"``
    IEEE 754 (FP32, FP16, BF16, E5M2, ml_dtypes' ``float8_e4m3``): the all-ones exponent
    is reserved; mantissa 0 is +-inf, anything else NaN.
``"fn"``
    OCP FP8 "finite, NaN" (E4M3): no infinities; only the all-ones pattern ``S.1111.111``
    is NaN, so the top exponent holds numbers too, and E4M3 reaches 448 instead of 240.
``"fnuz"``
    "finite, NaN, unsigned zero" (AMD/Graphcore FP8): no inf, no -0; the pattern of -0
    (``1000 0000``) is the single NaN.
``"none"``
    No special values at all (OCP MX element types FP6 and FP4): every pattern is a
    number. Overflow and infinities clamp to +-max; NaN has nowhere to go and becomes 0.
``"fnu"``
    "finite, NaN, unsigned" (OCP MX's scale type E8M0, ml_dtypes' ``float8_e8m0fnu``):
    no sign bit, no mantissa, no zero, no inf, no subnormals. Every code ``e`` is the
    power of two ``2**(e - bias)``, field 0 included (``2**-127``); all ones is NaN.
    It only scales other numbers, so zero, negative and infinite inputs become NaN.

This module is plain Python: no JAX, so it can be imported and read anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

Convention = Literal["ieee", "fn", "fnuz", "none", "fnu"]
CONVENTIONS: tuple[str, ...] = ("ieee", "fn", "fnuz", "none", "fnu")


@dataclasses.dataclass(frozen=True)
class Format:
    """A binary floating-point format (with a sign bit, except "fnu" scale formats).

    Frozen and hashable, so it can be a static argument of ``jax.jit`` and a key of a
    cache. Every derived number (``max``, ``eps``, ...) is a property computed exactly
    from the four fields, never stored.

    Attributes:
      name: short name, e.g. ``"e4m3"``; used in tables and figures.
      exponent_bits: width of the exponent field (1 to 8).
      mantissa_bits: width of the stored fraction (0 to 23), without the implicit bit.
      bias: exponent bias; ``None`` means the IEEE choice ``2**(exponent_bits-1) - 1``.
      convention: how special values are encoded: ``"ieee"``, ``"fn"``, ``"fnuz"`` or
        ``"none"`` (see the module docstring).

    fpsim simulates a format by rounding float32 values onto its grid, so every value of
    the format must be a float32 value: the exponent range must fit inside float32's.

    Example:
      >>> e5m6 = Format("e5m6", exponent_bits=5, mantissa_bits=6)
      >>> e5m6.bits, e5m6.max, e5m6.eps
      (12, 65024.0, 0.015625)
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int | None = None
    convention: Convention = "ieee"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exponent_bits - 1) - 1)
        if self.convention not in CONVENTIONS:
            raise ValueError(
                f"unknown convention {self.convention!r}; valid: {', '.join(CONVENTIONS)}"
            )
        if not 1 <= self.exponent_bits <= 8:
            raise ValueError(f"exponent_bits must be 1..8, got {self.exponent_bits}")
        if not 0 <= self.mantissa_bits <= 23:
            raise ValueError(f"mantissa_bits must be 0..23, got {self.mantissa_bits}")
        if self.convention == "ieee" and self.exponent_bits < 2:
            raise ValueError("an 'ieee' format needs at least 2 exponent bits")
        if self.convention == "fn" and self.exponent_bits + self.mantissa_bits < 2:
            raise ValueError("an 'fn' format needs at least 2 exponent+mantissa bits")
        if self.convention == "ieee" and self.mantissa_bits < 1:
            raise ValueError("an 'ieee' format needs a mantissa bit to encode NaN")
        if self.convention == "fnu" and self.mantissa_bits != 0:
            raise ValueError(
                "the 'fnu' convention is for exponent-only scale formats (E8M0): "
                f"mantissa_bits must be 0, got {self.mantissa_bits}"
            )
        # an "fnu" format's lowest code is 2**-bias; float32 holds 2**-127 (subnormal)
        lowest = -127 if self.convention == "fnu" else -126
        if self.emin < lowest or self.emax > 127:
            raise ValueError(
                f"{self.name}: normal exponents {self.emin}..{self.emax} do not fit in "
                "float32's -126..127 (fpsim computes in float32); choose a bias <= 127 "
                "and an exponent range no wider than float32's"
            )

    # --- the layout -------------------------------------------------------------------
    @property
    def bits(self) -> int:
        """Total width: sign + exponent + mantissa (no sign bit in ``"fnu"`` formats)."""
        sign = 0 if self.convention == "fnu" else 1
        return sign + self.exponent_bits + self.mantissa_bits

    @property
    def has_inf(self) -> bool:
        """Whether +-inf exist (only the IEEE convention has them)."""
        return self.convention == "ieee"

    @property
    def has_nan(self) -> bool:
        """Whether NaN exists (every convention but ``"none"``)."""
        return self.convention != "none"

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number: ``1 - bias`` (``-bias`` for "fnu")."""
        if self.convention == "fnu":
            return -self.bias  # field 0 is a number, 2**-bias, not the subnormal binade
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number."""
        top = 2**self.exponent_bits - 1
        if self.convention in ("ieee", "fnu"):
            top -= 1  # the all-ones exponent holds inf and NaN (in "fnu": NaN)
        elif self.convention == "fn" and self.mantissa_bits == 0:
            top -= 1  # S.111 is the only pattern there, and it is NaN
        return top - self.bias

    # --- derived values (exact Python floats) -----------------------------------------
    @property
    def max(self) -> float:
        """Largest finite value."""
        m = self.mantissa_bits
        top_mantissa = 2**m - 1
        if self.convention == "fn" and m > 0:
            top_mantissa -= 1  # S.1111.111 is NaN, so the top binade stops one short
        return math.ldexp(2**m + top_mantissa, self.emax - m)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, ``2**emin``."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, ``2**(emin - mantissa_bits)``."""
        return math.ldexp(1.0, self.emin - self.mantissa_bits)

    @property
    def eps(self) -> float:
        """Distance from 1.0 to the next larger value, ``2**-mantissa_bits``."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def unit_roundoff(self) -> float:
        """Largest relative error of rounding to nearest in the normal range, eps/2."""
        return self.eps / 2

    @property
    def decimal_digits(self) -> float:
        """Decimal digits of precision, ``(mantissa_bits + 1) * log10(2)``."""
        return (self.mantissa_bits + 1) * math.log10(2)

    @property
    def dynamic_range(self) -> float:
        """Binades from the smallest subnormal to the largest value, ``log2(max/min)``."""
        return math.log2(self.max / self.min_subnormal)

    @property
    def num_values(self) -> int:
        """Number of bit patterns that are numbers (NaN patterns excluded, -0 included)."""
        nans = {
            "ieee": 2 * (2**self.mantissa_bits - 1),
            "fn": 2,
            "fnuz": 1,
            "none": 0,
            "fnu": 1,
        }
        return 2**self.bits - nans[self.convention]

    @property
    def dtype_name(self) -> str | None:
        """Name of the ml_dtypes/numpy type with exactly these semantics, if any."""
        return _DTYPE_NAMES.get(self)

    def __str__(self) -> str:
        return self.name


def _as_int(value, field: str, *, optional: bool = False) -> int | None:
    """``value`` as a Python int: ints and numpy integers pass, anything else raises."""
    if value is None and optional:
        return None
    integral = hasattr(value, "__index__") and not isinstance(value, bool)
    if not integral:  # bool, float (even 4.0), str, ...: say which field and why
        raise TypeError(
            f"Format {field} must be an integer, got {value!r} ({type(value).__name__})"
        )
    return value.__index__()


def _check_fields(fmt: Format) -> None:
    """Validate the field types at construction (numpy integers become Python ints)."""
    if not isinstance(fmt.name, str):
        raise TypeError(f"Format name must be a string, got {type(fmt.name).__name__}")
    for field in ("exponent_bits", "mantissa_bits", "bias"):
        value = _as_int(getattr(fmt, field), field, optional=field == "bias")
        object.__setattr__(fmt, field, value)


def _fmt(name: str, e: int, m: int, convention: Convention = "ieee", bias=None) -> Format:
    return Format(name, e, m, bias, convention)


FP32 = _fmt("fp32", 8, 23)
TF32 = _fmt("tf32", 8, 10)
FP16 = _fmt("fp16", 5, 10)
BF16 = _fmt("bf16", 8, 7)
E4M3 = _fmt("e4m3", 4, 3, "fn")
E5M2 = _fmt("e5m2", 5, 2)
E4M3FNUZ = _fmt("e4m3fnuz", 4, 3, "fnuz", bias=8)
E5M2FNUZ = _fmt("e5m2fnuz", 5, 2, "fnuz", bias=16)
E4M3B11FNUZ = _fmt("e4m3b11fnuz", 4, 3, "fnuz", bias=11)
E4M3_IEEE = _fmt("e4m3_ieee", 4, 3)
E3M4 = _fmt("e3m4", 3, 4)
E2M3 = _fmt("e2m3", 2, 3, "none")
E3M2 = _fmt("e3m2", 3, 2, "none")
E2M1 = _fmt("e2m1", 2, 1, "none")
#: Graphcore/"saturating" E4M3 with no special values: max 480.
E4M3_SAT = _fmt("e4m3_sat", 4, 3, "none")

FP6_E2M3, FP6_E3M2, FP4_E2M1 = E2M3, E3M2, E2M1
#: OCP MX's shared block scale: an unsigned power of two 2**-127 .. 2**127, 0xFF = NaN.
E8M0 = Format("e8m0", 8, 0, bias=127, convention="fnu")

_DTYPE_NAMES: dict[Format, str] = {
    FP32: "float32",
    FP16: "float16",
    BF16: "bfloat16",
    E4M3: "float8_e4m3fn",
    E5M2: "float8_e5m2",
    E4M3FNUZ: "float8_e4m3fnuz",
    E5M2FNUZ: "float8_e5m2fnuz",
    E4M3B11FNUZ: "float8_e4m3b11fnuz",
    E4M3_IEEE: "float8_e4m3",
    E3M4: "float8_e3m4",
    E2M3: "float6_e2m3fn",
    E3M2: "float6_e3m2fn",
    E2M1: "float4_e2m1fn",
    E8M0: "float8_e8m0fnu",
}

#: Every predefined format, widest first.
FORMATS: tuple[Format, ...] = (
    FP32, TF32, FP16, BF16, E4M3, E5M2, E4M3FNUZ, E5M2FNUZ, E4M3B11FNUZ,
    E4M3_IEEE, E3M4, E4M3_SAT, E2M3, E3M2, E2M1,
)  # fmt: skip

_ALIASES: dict[str, Format] = {f.name: f for f in (*FORMATS, E8M0)}
_ALIASES.update({name: f for f, name in _DTYPE_NAMES.items()})
_ALIASES.update(
    {
        "float": FP32,
        "single": FP32,
        "half": FP16,
        "tensorfloat32": TF32,
        "fp8": E4M3,
        "fp8_e4m3": E4M3,
        "fp8_e5m2": E5M2,
        "e4m3fn": E4M3,
        "fp6": E2M3,
        "fp6_e2m3": E2M3,
        "fp6_e3m2": E3M2,
        "fp4": E2M1,
        "fp4_e2m1": E2M1,
    }
)

#: Names of block-scaled formats: not element types, so get_format refuses them.
_BLOCK_NAMES = frozenset(
    {"mxfp8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4",
     "mxint8", "nvfp4"}
)  # fmt: skip


def format_names() -> list[str]:
    """All names :func:`get_format` accepts, sorted."""
    return sorted(_ALIASES)


def _dtype_name(dtype) -> str:
    """The numpy name of a dtype-like (np.dtype, np.float32, jnp.bfloat16, ml_dtypes)."""
    import numpy as np  # only when a dtype is passed: formats.py stays numpy-free

    try:
        return np.dtype(dtype).name
    except TypeError:
        raise TypeError(
            "expected a format name, an fpsim.Format or a floating-point dtype "
            f"(jnp.bfloat16, ml_dtypes.float8_e4m3fn, np.dtype('float16')), got "
            f"{type(dtype).__name__}"
        ) from None


def get_format(name: str | Format | object) -> Format:
    """Look a format up by name, case-insensitively, or by dtype; a Format passes through.

    Accepts fpsim's short names (``"fp16"``, ``"e4m3"``), the ml_dtypes names
    (``"float8_e4m3fn"``, ``"bfloat16"``, ``"float4_e2m1fn"``), a few common aliases,
    and dtypes: ``jnp.bfloat16``, ``np.float16``, ``ml_dtypes.float8_e5m2``,
    ``np.dtype("float32")`` (what Flax users write as ``dtype=``), mapped by their
    name to the format with the same semantics.

    Block-scaled formats (``"mxfp4"``, ``"nvfp4"``, ...) are not element types: they
    pair a format with a shared scale per block, so they have their own lookup,
    ``fpsim.get_block_format``.

    Raises:
      ValueError: for an unknown name or a dtype without a format (float64, int8);
        the message lists the valid ones.
      TypeError: for something that is neither a string, a Format nor a dtype.
    """
    if isinstance(name, Format):
        return name
    if name is None or isinstance(name, bool | int | float):
        raise TypeError(f"expected a format name, an fpsim.Format or a dtype, got {name!r}")
    if not isinstance(name, str):
        dtype_name = _dtype_name(name)
        fmt = next((f for f, n in _DTYPE_NAMES.items() if n == dtype_name), None)
        if fmt is None:
            raise ValueError(
                f"dtype {dtype_name} has no fpsim format; dtypes with one: "
                f"{', '.join(sorted(_DTYPE_NAMES.values()))}"
            )
        return fmt
    key = name.strip().lower()
    try:
        return _ALIASES[key]
    except KeyError:
        if key in _BLOCK_NAMES:
            raise ValueError(
                f"{name!r} is a block-scaled format (elements sharing one scale per "
                f"block), not an element type; use fpsim.get_block_format({key!r})"
            ) from None
        raise ValueError(
            f"unknown format {name!r}; valid names: {', '.join(format_names())}"
        ) from None
