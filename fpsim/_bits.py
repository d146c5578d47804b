"""Bit views of float32 and float64: the carrier types fpsim rounds inside.

fpsim never rounds with floating-point operations. XLA on CPU treats float32 subnormal
inputs of float operations as zero, and may keep excess precision across a float round
trip, so ``x * 2**k`` or ``frexp`` tricks are not bit-exact everywhere. Instead a float is
reinterpreted (bitcast) as an unsigned integer; for a non-negative float, the integer
order *is* the value order, and rounding is integer arithmetic on the fields.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


@dataclasses.dataclass(frozen=True)
class Carrier:
    """An IEEE binary type that fpsim computes in (float32, or float64 under x64)."""

    dtype: type
    uint: type
    width: int  # total bits
    mant: int  # stored mantissa bits
    bias: int

    @property
    def sign_mask(self) -> int:
        return 1 << (self.width - 1)

    @property
    def abs_mask(self) -> int:
        return self.sign_mask - 1

    @property
    def inf_bits(self) -> int:
        return ((1 << (self.width - 1 - self.mant)) - 1) << self.mant

    @property
    def qnan_bits(self) -> int:
        return self.inf_bits | (1 << (self.mant - 1))

    @property
    def min_subnormal(self) -> float:
        """The smallest positive value of this type, ``2**(1 - bias - mant)``."""
        return 2.0 ** (1 - self.bias - self.mant)

    def bits_of(self, value: float) -> int:
        """The bit pattern of a Python float converted exactly to this type."""
        arr = np.array(value, dtype=self.dtype)
        if float(arr) != value and not np.isnan(value):
            raise ValueError(f"{value!r} is not exactly representable in {self.dtype}")
        return int(arr.view(self.uint))

    def to_bits(self, x: jnp.ndarray) -> jnp.ndarray:
        """The bit pattern of ``x`` (which must already be of this type)."""
        return lax.bitcast_convert_type(x, self.uint)

    def abs_bits(self, x: jax.typing.ArrayLike) -> jnp.ndarray:
        """``|x|`` as unsigned bits, after converting ``x`` to this type.

        For non-negative floats the integer order is the value order, so comparing
        these bits is exact where float compares are not (XLA on CPU treats subnormal
        inputs of float compares as zero).
        """
        return self.to_bits(jnp.asarray(x, self.dtype)) & self.uint(self.abs_mask)

    def from_bits(self, bits: jnp.ndarray) -> jnp.ndarray:
        return lax.bitcast_convert_type(bits, self.dtype)


F32 = Carrier(jnp.float32, jnp.uint32, 32, 23, 127)
F64 = Carrier(jnp.float64, jnp.uint64, 64, 52, 1023)


def grid_shift(big_e: jnp.ndarray, fmt, c: Carrier) -> jnp.ndarray:
    """How many low bits of a value's significand fall below ``fmt``'s grid (int32).

    A finite carrier value with biased exponent field ``E`` is ``sig * 2**(max(E, 1) -
    bias - P)``. ``fmt``'s grid there has spacing ``2**(max(e, emin) - m)``: the
    exponent stops falling at ``emin``, which is what makes the subnormals. The ratio
    of the two spacings is ``2**shift`` with
    ``shift = max(P - m, (emin - m + bias + P) - max(E, 1))``.
    """
    m, P = fmt.mantissa_bits, c.mant
    return jnp.maximum(P - m, fmt.emin - m + c.bias + P - jnp.maximum(big_e, 1))


def is_float(x) -> bool:
    """Whether ``x`` (an array, tracer, abstract value or dtype holder) is floating point.

    False for objects without a dtype and for extended dtypes such as random keys.
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    try:
        return bool(jnp.issubdtype(dtype, jnp.floating))
    except TypeError:  # pragma: no cover - dtypes numpy cannot compare
        return False


def carrier_of(dtype) -> Carrier:
    """The carrier for an input dtype (float64 only when JAX's x64 mode is on)."""
    return F64 if jnp.dtype(dtype) == jnp.float64 else F32
