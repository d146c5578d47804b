"""Round to nearest by XLA's own conversion (``fpsim.rounding.NATIVE_NEAREST``), per value.

``quantize(x, fp16)`` and ``quantize(x, bf16)`` to nearest are computed as
``x.astype(float16).astype(float32)`` (bfloat16), with a guard for NaN inputs. These tests
prove that path bit-identical to the integer rounding every other format uses and to
ml_dtypes, on the values where roundings go wrong: every tie and its float32 neighbours,
subnormals of both formats and of float32, the overflow boundary, inf, and NaN payloads
(signalling and quiet, both signs). The exhaustive sweep (``tests/test_exhaustive.py``)
checks both paths over all 2^32 inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import assert_bits_equal, f32_bits, from_bits, ml_round, neighbour_points

import fpsim
from fpsim.rounding import NATIVE_NEAREST, _round_bits, native_dtype


def bit_patterns(fmt: fpsim.Format, n_random: int = 1 << 20) -> np.ndarray:
    """float32 inputs: random bit patterns, every exponent field with the mantissas on
    and around each possible tie position, ``fmt``'s ties and neighbours, specials."""
    rng = np.random.default_rng(7)
    rand = rng.integers(0, 1 << 32, n_random, dtype=np.uint64).astype(np.uint32)
    mant = {0, 1, (1 << 23) - 1}
    for t in range(23):  # the dropped bits exactly half, just under, just over
        h = 1 << t
        mant |= {h, h - 1, h + 1, h | (h << 1), (h << 1) - 1, (1 << 23) - h}
    mant = np.array(sorted(m & 0x7FFFFF for m in mant), np.uint32)
    grid = (np.arange(256, dtype=np.uint32)[:, None] << 23 | mant[None, :]).ravel()
    nans = [0x7F800001, 0x7F800100, 0x7F802000, 0x7FA00000, 0x7FBFFFFF, 0x7FC00000,
            0x7FC00001, 0x7FFFFFFF, 0x7F801FFF]  # fmt: skip
    nans = np.array(nans, np.uint32)
    pts = f32_bits(neighbour_points(fmt))
    bits = np.concatenate([rand, grid, nans, pts, [0x7F800000]])
    return np.concatenate([bits, bits ^ np.uint32(0x80000000)])


@pytest.mark.parametrize("name", sorted(NATIVE_NEAREST))
def test_native_path_is_the_integer_rounding_and_ml_dtypes(name):
    fmt = fpsim.get_format(name)
    assert native_dtype(fmt, "nearest") == NATIVE_NEAREST[name]
    x = from_bits(bit_patterns(fmt))
    got = np.asarray(fpsim.quantize(jnp.asarray(x), fmt))  # the path users get
    integer = jax.jit(lambda v: _round_bits(v, None, fmt, "nearest", False, True, None))
    want = ml_round(x, fmt)
    # bit for bit, NaN patterns included (sign and payload)
    np.testing.assert_array_equal(f32_bits(got), f32_bits(want))
    np.testing.assert_array_equal(f32_bits(integer(jnp.asarray(x))), f32_bits(want))


@pytest.mark.parametrize("name", sorted(NATIVE_NEAREST))
def test_native_path_inside_a_fused_computation(name):
    """The narrowing and widening converts survive XLA's fusion and simplification."""
    fmt = fpsim.get_format(name)
    rng = np.random.default_rng(3)
    a = rng.standard_normal(1 << 16) * 2.0 ** rng.integers(-30, 20, 1 << 16)
    b = rng.standard_normal(1 << 16) * 2.0**-12
    a, b = a.astype(np.float32), b.astype(np.float32)
    f = jax.jit(lambda a, b: jnp.abs(fpsim.quantize(a + b, fmt)) * 2 - 1)
    with np.errstate(all="ignore"):
        want = np.abs(ml_round(a + b, fmt)) * np.float32(2) - np.float32(1)
    assert_bits_equal(f(a, b), want)


def test_native_path_only_where_it_is_the_same_rounding():
    assert native_dtype(fpsim.FP16, "nearest") == jnp.float16
    assert native_dtype(fpsim.BF16, "nearest") == jnp.bfloat16
    assert native_dtype(fpsim.FP16, "up") is None  # directed and stochastic: integer
    assert native_dtype(fpsim.FP16, "stochastic") is None
    assert native_dtype(fpsim.FP16, "nearest", saturate=True) is None
    assert native_dtype(fpsim.BF16, "nearest", subnormals=False) is None
    assert native_dtype(fpsim.BF16, "nearest", dtype=jnp.float64) is None
    assert native_dtype(fpsim.E4M3, "nearest") is None
    assert native_dtype(fpsim.Format("half", 5, 10), "nearest") is None  # not ml_dtypes'
    x = jnp.asarray([65520.0, 2.0**-25, -(2.0**-26), 1 + 2.0**-11])
    assert_bits_equal(fpsim.quantize(x, "fp16", saturate=True), [65504, 0, -0.0, 1])
    assert_bits_equal(fpsim.quantize(x, "fp16", subnormals=False), [np.inf, 0, -0.0, 1])


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_xla_fp8_conversions_are_exact_too(name):
    """XLA's float32 -> FP8 -> float32 conversions give quantize's bits as well (NaN,
    overflow to NaN or inf and subnormals included); they are not in NATIVE_NEAREST only
    because they are slower than the integer rounding on CPU."""
    fmt = fpsim.get_format(name)
    x = jnp.asarray(from_bits(bit_patterns(fmt, 1 << 18)))
    dt = getattr(ml_dtypes, fmt.dtype_name)
    native = jax.jit(lambda v: v.astype(dt).astype(jnp.float32))(x)
    np.testing.assert_array_equal(f32_bits(native), f32_bits(fpsim.quantize(x, fmt)))


@pytest.mark.parametrize("name", ["fp16", "bf16", "e4m3", "e3m2"])
def test_quantize_result_is_quantize_for_computed_values(name):
    """quantize_result skips the signalling-NaN guard: the same bits as quantize for
    every input whose NaNs are quiet, which is every result of float arithmetic."""
    from fpsim.rounding import quantize_result

    fmt = fpsim.get_format(name)
    bits = bit_patterns(fmt, 1 << 16)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    x = jnp.asarray(from_bits(np.where(nan, bits | 0x00400000, bits)))  # NaNs quieted
    np.testing.assert_array_equal(
        f32_bits(quantize_result(x, fmt)), f32_bits(fpsim.quantize(x, fmt))
    )
    # arithmetic on a signalling NaN delivers a quiet one, under jit as eagerly
    snan = jnp.asarray(from_bits(np.array([0x7F800001, 0xFFA00000], np.uint32)))
    total = jax.jit(lambda a: a + jnp.float32(1))(snan)
    assert (f32_bits(total) & 0x00400000).all()
    np.testing.assert_array_equal(
        f32_bits(quantize_result(total, fmt)), f32_bits(fpsim.quantize(total, fmt))
    )
    assert (f32_bits(fpsim.quantize(snan, "fp16")) & 0x00400000 == 0).all()  # kept


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_rounding_survives_xla_conversion_simplification(fmt):
    """Under jit, XLA's CPU pipeline deletes an f32 -> bf16 -> f32 conversion pair
    (SimplifyFPConversions, allowed by xla_allow_excess_precision, on by default), so
    a reduction fed by ``quantize`` saw the unrounded values: ``max(quantize(x))``
    differed in every row (lesson 14's BF16 softmax errors shrank by 10x). The bits
    of the rounded values must reach the reduction."""
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32) * 300
    want = ml_round(x, fpsim.get_format(fmt))
    got_max = jax.jit(lambda a: jnp.max(fpsim.quantize(a, fmt), axis=-1))(x)
    np.testing.assert_array_equal(np.asarray(got_max), want.max(axis=-1))
    got_min = jax.jit(lambda a: jnp.min(fpsim.quantize(a * 1.0, fmt), axis=0))(x)
    np.testing.assert_array_equal(np.asarray(got_min), want.min(axis=0))
