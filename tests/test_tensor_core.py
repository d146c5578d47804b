"""Tensor-core accumulator models: an exact rational model, and published behaviour."""

from __future__ import annotations

import math

import _tensor_core_ref as ref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpsim
from fpsim.numerics import _tensor_core as tc

DN_VEC = (((0,), (0,)), ((), ()))  # dot product of two vectors
DN_ROWS = (((1,), (1,)), ((0,), (0,)))  # row-wise dot products of two (B, K) arrays


def grid(rng, shape, fmt, spread):
    """Signed values on ``fmt``'s grid with exponents spread over +-spread, 10% zeros."""
    x = rng.standard_normal(shape) * 2.0 ** rng.integers(-spread, spread + 1, shape)
    x[rng.random(shape) < 0.1] = 0
    return np.array(fpsim.quantize(jnp.asarray(x, jnp.float32), fmt, saturate=True))


CASES = [
    ("fp32", "fp16", 24),
    ("v100_fp16", "fp16", 37),
    ("a100_fp16", "fp16", 37),
    ("a100_fp16", "bf16", 37),
    ("a100_tf32", "tf32", 37),
    ("h100_fp16", "fp16", 70),
    ("h100_fp16", "bf16", 70),
    ("h100_tf32", "tf32", 37),
    ("hopper_fp8", "e4m3", 70),
    ("hopper_fp8", "e5m2", 70),
    ("hopper_fp8_promote128", "e4m3", 300),
]


@pytest.mark.parametrize("name, inputs, k", CASES)
@pytest.mark.parametrize("spread", [1, 6])
def test_bit_exact_against_rational_model(name, inputs, k, spread):
    rng = np.random.default_rng(hash((name, inputs, spread)) % 2**32)
    fmt = fpsim.get_format(inputs)
    a, b = grid(rng, (3, k), fmt, spread), grid(rng, (k, 4), fmt, spread)
    got = np.asarray(tc.tc_matmul(a, b, name, inputs=fmt))
    want = np.array(ref.matmul(a, b, tc.PRESETS[name], fmt), np.float32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "model",
    [
        tc.AccumulatorModel("near", group_size=4, kept_bits=12, alignment="nearest"),
        tc.AccumulatorModel(
            "fp16acc", group_size=8, kept_bits=14, accumulator="fp16", rounding="nearest"
        ),  # fmt: skip
        tc.AccumulatorModel("sticky", group_size=2, kept_bits=20, sticky=True),
    ],
)
def test_custom_models_bit_exact(model):
    rng = np.random.default_rng(7)
    fmt = fpsim.get_format("fp16")
    a, b = grid(rng, (2, 45), fmt, 5), grid(rng, (45, 3), fmt, 5)
    got = np.asarray(tc.tc_matmul(a, b, model, inputs=fmt))
    np.testing.assert_array_equal(got, np.array(ref.matmul(a, b, model, fmt), np.float32))


def test_fp32_preset_is_correctly_rounded_sequential_sum():
    # an independent oracle: s = fl32(s + a_i b_i), exact rational rounding each step
    rng = np.random.default_rng(3)
    fmt = fpsim.get_format("bf16")
    a, b = grid(rng, (6, 50), fmt, 12), grid(rng, (6, 50), fmt, 12)
    got = np.asarray(tc.tc_dot_general(a, b, DN_ROWS, "fp32", inputs=fmt))
    want = [ref.sequential_fp32(a[i].tolist(), b[i].tolist()) for i in range(6)]
    np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_subnormal_inputs_and_products_outside_float32():
    # BF16 products 2**-100 * 2**-27 = 2**-127 are float32 subnormals (XLA on CPU flushes
    # them to zero); the integer adder keeps them, and the subnormal input too
    fmt = fpsim.get_format("bf16")
    a = np.array([2.0**-100, 2.0**-100, 2.0**-126 * 0.5], np.float32)  # last: subnormal
    b = np.array([2.0**-27, 2.0**-27, 2.0**1], np.float32)
    got = float(tc.tc_dot_general(a, b, DN_VEC, "h100_fp16", inputs=fmt))
    assert got == ref.dot(a.tolist(), b.tolist(), tc.H100_FP16, fmt) == 2.0**-125


def test_summation_order_changes_the_result():
    # a large product truncates the small ones in its group, not in a group of their own
    fmt = fpsim.get_format("e4m3")
    x = np.array([256.0] + [1.125 * 2.0**-4] * 63, np.float32)
    ones = np.ones_like(x)
    first = float(tc.tc_dot_general(x, ones, DN_VEC, "hopper_fp8", inputs=fmt))
    last = float(tc.tc_dot_general(x[::-1].copy(), ones, DN_VEC, "hopper_fp8", inputs=fmt))
    assert first == ref.dot(x.tolist(), ones.tolist(), tc.HOPPER_FP8, fmt) == 259.9375
    assert last == ref.dot(x[::-1].tolist(), ones.tolist(), tc.HOPPER_FP8, fmt) == 260.1875
    assert math.fsum(x.astype(float)) == 260.4296875


def test_multi_operand_addition_is_not_monotonic():
    # Fasi et al. (2021): raising one input can lower the result. Group 1 sums to
    # 2 - 2**-22; raising a[2] to 1 makes it exactly 2, whose larger exponent costs each of
    # the four products of group 2 its last bit (2**-23), more than the 2**-22 gained.
    fmt = fpsim.get_format("fp16")
    a = np.array([1, 1 - 2**-11, 1 - 2**-11, 0] + [1 + 2**-10] * 4, np.float32)
    b = np.array([1, 1, 2**-11, 0] + [2**-13] * 4, np.float32)
    up = a.copy()
    up[2] = 1.0
    lo = float(tc.tc_dot_general(a, b, DN_VEC, "v100_fp16", inputs=fmt))
    hi = float(tc.tc_dot_general(up, b, DN_VEC, "v100_fp16", inputs=fmt))
    assert lo == 2 + 2**-11 + 2**-22 and hi == 2 + 2**-11  # larger input, smaller result
    assert (lo, hi) == tuple(
        ref.dot(v.tolist(), b.tolist(), tc.V100_FP16, fmt) for v in (a, up)
    )
    exact = [float(tc.tc_dot_general(v, b, DN_VEC, "fp32", inputs=fmt)) for v in (a, up)]
    assert exact[1] >= exact[0]  # correctly rounded sequential sums are monotone


def _long_positive_dots():
    rng = np.random.default_rng(0)
    fmt = fpsim.get_format("e4m3")
    a = np.asarray(
        fpsim.quantize(jnp.asarray(rng.uniform(0, 1, (16, 4096)), jnp.float32), fmt)
    )
    b = np.asarray(
        fpsim.quantize(jnp.asarray(rng.uniform(0, 1, (16, 4096)), jnp.float32), fmt)
    )
    exact = np.array([math.fsum(np.float64(a[i]) * np.float64(b[i])) for i in range(16)])
    return a, b, fmt, exact


def test_truncation_bias_and_promotion_recovers_accuracy():
    # K = 4096 positive FP8 products (sum ~ 1000): truncation only ever drops bits
    a, b, fmt, exact = _long_positive_dots()
    rel = {}
    for name in ("fp32", "hopper_fp8", "hopper_fp8_promote128"):
        r = np.asarray(tc.tc_dot_general(a, b, DN_ROWS, name, inputs=fmt)).astype(float)
        rel[name] = (r - exact) / exact
    assert np.all(rel["hopper_fp8"] < 0) and np.all(rel["hopper_fp8_promote128"] <= 0)
    # measured: mean -6.6% without promotion, -0.05% with it, 3e-8 for FP32
    assert -0.07 < rel["hopper_fp8"].mean() < -0.06
    assert -6e-4 < rel["hopper_fp8_promote128"].mean() < -4e-4
    assert np.abs(rel["fp32"]).max() < 3e-7
    gain = np.abs(rel["hopper_fp8"]).mean() / np.abs(rel["hopper_fp8_promote128"]).mean()
    assert gain > 100  # measured 134x


def test_jit_batch_dims_and_specials():
    fmt = fpsim.get_format("fp16")
    rng = np.random.default_rng(5)
    x, y = grid(rng, (2, 3, 9), fmt, 3), grid(rng, (2, 9, 4), fmt, 3)
    dn = (((2,), (1,)), ((0,), (0,)))
    f = jax.jit(lambda p, q: tc.tc_dot_general(p, q, dn, "v100_fp16", inputs=fmt))
    got = np.asarray(f(x, y))
    assert got.shape == (2, 3, 4)
    want = [ref.matmul(x[i], y[i], tc.V100_FP16, fmt) for i in range(2)]
    np.testing.assert_array_equal(got, np.array(want, np.float32))
    x[0, 0, 0], x[1, 2, 3] = np.inf, np.nan
    got = np.asarray(f(x, y))
    assert np.all(np.isnan(got[1, 2])) and not np.any(np.isnan(got[0, 1:]))


def test_bad_input_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="at most 12 significant bits"):
        tc.tc_matmul(np.ones((2, 2)), np.ones((2, 2)), "fp32", inputs="fp32")
    with pytest.raises(ValueError, match="presets: fp32, v100_fp16"):
        tc.get_accumulator("a100")
    with pytest.raises(ValueError, match="valid: truncate, nearest"):
        tc.AccumulatorModel("x", 4, 23, alignment="floor")
    with pytest.raises(ValueError, match="overflows"):
        tc.AccumulatorModel("x", 64, 27)
    with pytest.raises(ValueError, match="multiple of group_size=32"):
        tc.AccumulatorModel("x", 32, 13, promote_every=100)
    assert hash(tc.HOPPER_FP8_PROMOTE128) == hash(tc.PRESETS["hopper_fp8_promote128"])
