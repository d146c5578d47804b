"""Scale arithmetic rounded once, without flushing subnormals to zero.

A loss scale is a float32 number that is multiplied, divided and grown by factors, and
every framework does that arithmetic a little differently. Two things make the obvious
float32 code (``scale * factor``, ``g * (1 / scale)``) give different numbers from
PyTorch at the extremes:

* **Flushing.** XLA on CPU runs float32 arithmetic with subnormals flushed to zero (FTZ
  and DAZ). ``1 / 2**127`` is the float32 subnormal ``2**-127``: XLA gives 0, and a
  gradient unscaled by it becomes 0. PyTorch on CPU keeps it.
* **The factor's precision.** PyTorch's ``_amp_update_scale_`` multiplies the float32
  scale by a C++ ``double`` factor and converts the double product to float:
  ``53084.164f * 0.3`` is ``15925.249``. Multiplying by ``float32(0.3)`` instead
  rounds the factor first and gives ``15925.25``.

Every function here computes the exact result in float64 (a product or quotient of a
float32 and a double fits, or is rounded once to 53 bits, exactly as C++ does) inside a
scoped ``jax.enable_x64``, and converts to float32 with :func:`f64_to_f32`, which rounds
to nearest-even *including* the subnormal range (integer arithmetic on the bits, so no
flush). Inputs and outputs are float32; nothing outside this module sees a float64.

For a product or quotient of two float32 numbers, rounding first to double and then to
float32 gives the correctly rounded float32 result (53 >= 2 * 24 + 2: double rounding
is innocuous for these operations), so :func:`mul` and :func:`div` are the IEEE float32
operations as a CPU without FTZ computes them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_MIN_NORMAL = 2.0**-126
_SUB_ULP_LOG2 = 149  # the float32 subnormal spacing is 2**-149


def f64_to_f32(d: jax.Array) -> jax.Array:
    """Round a float64 to float32 (nearest-even), keeping subnormal results.

    Call it inside ``jax.enable_x64(True)``. The normal range uses XLA's conversion;
    magnitudes below ``2**-126`` are rounded on the subnormal grid ``k * 2**-149``
    (``k = round_half_even(|d| * 2**149)``, exact in float64) and assembled from bits.
    """
    d = jnp.asarray(d, jnp.float64)
    native = d.astype(jnp.float32)
    mag = jnp.abs(d)
    k = jnp.round(mag * 2.0**_SUB_ULP_LOG2).astype(jnp.uint32)  # <= 2**23: min normal
    sign = jnp.where(jnp.signbit(d), jnp.uint32(0x80000000), jnp.uint32(0))
    sub = lax.bitcast_convert_type(sign | k, jnp.float32)
    return jnp.where(mag < _MIN_NORMAL, sub, native)


def f32_to_f64(x: jax.Array) -> jax.Array:
    """Widen a float32 to float64 exactly, subnormal inputs included (XLA's conversion
    treats them as zero on CPU). Call it inside ``jax.enable_x64(True)``."""
    x = jnp.asarray(x, jnp.float32)
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    frac = (bits & jnp.uint32(0x007FFFFF)).astype(jnp.float64) * 2.0**-_SUB_ULP_LOG2
    sub = jnp.where(bits >> 31 == 1, -frac, frac)
    return jnp.where((bits & jnp.uint32(0x7F800000)) == 0, sub, x.astype(jnp.float64))


def mul(x: jax.ArrayLike, factor: jax.ArrayLike) -> jax.Array:
    """``float(double(x) * factor)``: a float32 times a double, as C++ computes it.

    ``factor`` is a Python float (used as a double) or an array. Pass
    ``float(np.float32(f))`` to multiply by a float32 factor (Flax, jmp, Keras): the
    product of two float32 numbers is then the IEEE float32 product, without flushing.
    """
    with jax.enable_x64(True):
        d = f32_to_f64(x) * jnp.asarray(factor, jnp.float64)
        return f64_to_f32(d)


def reciprocal(s: jax.ArrayLike) -> jax.Array:
    """``float(1.0 / double(s))``: PyTorch's ``inv_scale`` (subnormal kept)."""
    with jax.enable_x64(True):
        return f64_to_f32(1.0 / f32_to_f64(s))


def div(g: jax.ArrayLike, s: jax.ArrayLike) -> jax.Array:
    """``g / s`` in float32, correctly rounded, subnormal results kept."""
    with jax.enable_x64(True):
        g64 = f32_to_f64(g)
        return f64_to_f32(g64 / f32_to_f64(s))


def mul_f32(g: jax.ArrayLike, inv: jax.ArrayLike) -> jax.Array:
    """``g * inv`` in float32 (both float32), correctly rounded, subnormals kept."""
    with jax.enable_x64(True):
        g64 = f32_to_f64(g)
        return f64_to_f32(g64 * f32_to_f64(inv))


__all__ = ["div", "f32_to_f64", "f64_to_f32", "mul", "mul_f32", "reciprocal"]
