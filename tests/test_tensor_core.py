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


# --------------------------------------------------------------------------------------
# the fast paths (float products, integer products) against the reference path and the
# rational model
# --------------------------------------------------------------------------------------
def crafted(rng, rows, k, fmt, spread):
    """Rows of ``grid`` values plus rows that stress the adder: a huge product next to
    tiny ones (shifts of 32 bits and more), exact cancellation, subnormal inputs,
    values at the format's top (accumulator overflow), all zeros, one sign."""
    x = grid(rng, (rows, k), fmt, spread)
    tiny = fmt.min_subnormal * rng.integers(1, 4, k)
    x[0] = np.where(np.arange(k) % 7 == 0, fmt.max, tiny)  # huge and subnormal
    x[1] = np.repeat(grid(rng, (k + 1) // 2, fmt, spread), 2)[:k] * np.resize([1, -1], k)
    x[2] = 0.0
    x[3] = np.abs(x[3])
    x[4] = fmt.max * np.resize([1, 1, -1], k)  # overflows a narrow accumulator
    return np.asarray(fpsim.quantize(jnp.asarray(x, jnp.float32), fmt, saturate=True))


NEAR = tc.AccumulatorModel("near", group_size=4, kept_bits=6, alignment="nearest")
STICKY = tc.AccumulatorModel("sticky", group_size=2, kept_bits=9, sticky=True)
FP16_ACC = tc.AccumulatorModel(
    "fp16acc", group_size=8, kept_bits=14, accumulator="fp16", rounding="nearest"
)
E8M13_NEAR = tc.AccumulatorModel(
    "e8m13_near", group_size=16, kept_bits=13, accumulator=tc.E8M13, rounding="nearest",
    promote_every=32,
)  # fmt: skip
PATH_CASES = [
    (tc.HOPPER_FP8, "e4m3"), (tc.HOPPER_FP8, "e5m2"), (tc.HOPPER_FP8_PROMOTE128, "e4m3"),
    (tc.V100_FP16, "fp16"), (tc.A100_FP16, "bf16"), (tc.A100_TF32, "tf32"),
    (tc.H100_FP16, "fp16"), (tc.H100_FP16, "bf16"), (tc.FP32_EXACT, "fp16"),
    (NEAR, "fp16"), (NEAR, "e4m3"), (STICKY, "e5m2"), (STICKY, "bf16"),
    (FP16_ACC, "fp16"), (E8M13_NEAR, "e4m3"),
]  # fmt: skip


@pytest.mark.parametrize("model, inputs", PATH_CASES, ids=lambda v: getattr(v, "name", v))
def test_fast_paths_match_reference_path_and_rational_model(model, inputs):
    fmt = fpsim.get_format(inputs)
    rng = np.random.default_rng(hash((model.name, inputs)) % 2**32)
    k = 2 * (model.promote_every or 40) + 3  # a padded last group, several chunks
    a = crafted(rng, 8, k, fmt, spread=12)
    b = crafted(rng, 6, k, fmt, spread=12).T.copy()
    dn = (((1,), (0,)), ((), ()))
    ref = np.asarray(tc._tc_dot_general(a, b, dn, model, fmt, "reference"))
    paths = [p for p in ("fma", "float", "int") if getattr(tc, f"_{p}_ok")(model, fmt)]
    assert "int" in paths
    for path in paths:
        for in_range in (True, False):  # with and without the normal-range shortcut
            got = np.asarray(tc._tc_dot_general(a, b, dn, model, fmt, path, None, in_range))
            np.testing.assert_array_equal(got, ref, err_msg=f"{path} {in_range}")
    rows = [0, 1, 2, 4, 5]  # the rational model is slow: the crafted rows, one random
    want = np.array(ref_matmul_rows(a[rows], b[:, :5], model, fmt), np.float32)
    np.testing.assert_array_equal(ref[rows][:, :5], want)


def ref_matmul_rows(a, b, model, fmt):
    return ref.matmul(a, b, model, fmt)


def test_normal_range_shortcut_only_where_no_sum_can_be_subnormal_or_overflow():
    fp16, bf16, e4m3 = (fpsim.get_format(f) for f in ("fp16", "bf16", "e4m3"))
    assert tc._in_range(tc.HOPPER_FP8, e4m3, 4096)  # sums between 2**-25 and 2**31
    assert tc._in_range(tc.V100_FP16, fp16, 4096)
    assert not tc._in_range(tc.H100_FP16, bf16, 4096)  # products as small as 2**-252
    assert not tc._in_range(FP16_ACC, fp16, 8)  # 65504**2 overflows FP16


def test_float_path_is_chosen_where_exact():
    e4m3, fp16, bf16 = (fpsim.get_format(f) for f in ("e4m3", "fp16", "bf16"))
    assert tc._choose_path("auto", tc.HOPPER_FP8, e4m3) == "float"
    assert tc._choose_path("auto", tc.FP32_EXACT, fp16) == "fma"
    assert tc._choose_path("auto", tc.FP32_EXACT, bf16) == "int"  # subnormal sums
    assert tc._choose_path("auto", tc.V100_FP16, fp16) == "int"  # sums beyond 2**24
    assert tc._choose_path("auto", tc.HOPPER_FP8, bf16) == "int"  # products leave f32
    with pytest.raises(ValueError, match="cannot compute"):
        tc._choose_path("float", tc.H100_FP16, fp16)
    with pytest.raises(ValueError, match="valid: auto, fma, float, int, reference"):
        tc._choose_path("fastest", tc.H100_FP16, fp16)


def test_ties_round_to_even_in_the_nearest_models():
    # NEAR keeps 6 bits below 2**E: 1 + 2**-7 (a product 1 * (1 + 2**-7)) is half a unit
    # above 1, and ties to 1; 1 + 3 * 2**-7 ties up to 1 + 2**-5 (even)
    fmt = fpsim.get_format("fp16")
    a = np.array([[1.0, 1 + 2**-7, 0, 0], [1.0, 1 + 3 * 2**-7, 0, 0]], np.float32)
    b = np.array([[0.0], [1.0], [0.0], [0.0]], np.float32)
    a[:, 0] = 2.0  # the largest exponent of the group: 2**1 * 2**0 ... with b = 0
    dn = (((1,), (0,)), ((), ()))
    for path in ("int", "float", "reference"):
        got = np.asarray(tc._tc_dot_general(a, b, dn, NEAR, fmt, path))[:, 0]
        assert got.tolist() == [1.0, 1 + 2**-5], path
    assert got.tolist() == np.array(ref.matmul(a, b, NEAR, fmt), np.float32)[:, 0].tolist()


# --------------------------------------------------------------------------------------
# the wiring: lp_dot_general, emulate's policy, scaled GEMMs, recipes
# --------------------------------------------------------------------------------------
def test_lp_dot_general_takes_an_accumulator_model():
    rng = np.random.default_rng(3)
    fmt = fpsim.get_format("e4m3")
    a, b = grid(rng, (4, 300), fmt, 4), grid(rng, (300, 5), fmt, 4)
    want = np.asarray(tc.tc_matmul(a, b, "hopper_fp8_promote128", inputs=fmt))
    got = fpsim.lp_matmul(a, b, inputs="e4m3", accumulator="hopper_fp8_promote128")
    np.testing.assert_array_equal(np.asarray(got), want)
    as_bf16 = fpsim.lp_matmul(a, b, inputs="e4m3", accumulator=tc.HOPPER_FP8_PROMOTE128,
                              output="bf16")  # fmt: skip
    np.testing.assert_array_equal(
        np.asarray(as_bf16), np.asarray(fpsim.quantize(want, "bf16"))
    )
    # the model differs from an FP32 accumulator: truncation loses a little, always low
    f32 = np.asarray(fpsim.lp_matmul(a, b, inputs="e4m3"))
    assert not np.array_equal(want, f32)
    with pytest.raises(ValueError, match="order, chunk cannot be given with it"):
        fpsim.lp_matmul(a, b, inputs="e4m3", accumulator="hopper_fp8", order="pairwise",
                        chunk=8)  # fmt: skip
    with pytest.raises(ValueError, match="accum cannot be given"):
        fpsim.lp_matmul(a, b, inputs="e4m3", accumulator="hopper_fp8", accum="fp32")
    with pytest.raises(ValueError, match="needs inputs="):
        fpsim.lp_matmul(a, b, accumulator="hopper_fp8")
    with pytest.raises(ValueError, match="presets: fp32, v100_fp16"):
        fpsim.lp_matmul(a, b, inputs="e4m3", accumulator="h100")


def test_emulate_policy_with_an_accumulator_model():
    rng = np.random.default_rng(4)
    fmt = fpsim.get_format("fp16")
    x, w = grid(rng, (3, 64), fmt, 3), grid(rng, (64, 2), fmt, 3)
    acc = fpsim.Accumulation(model="v100_fp16")
    pol = fpsim.EmulationPolicy(compute="fp16", accumulation=acc)
    got = np.asarray(fpsim.emulate(lambda p, q: p @ q, pol)(x, w))
    want = fpsim.quantize(tc.tc_matmul(x, w, "v100_fp16", inputs=fmt), fmt)
    np.testing.assert_array_equal(got, np.asarray(want))
    with pytest.raises(ValueError, match="drop products= and order="):
        fpsim.Accumulation(model="v100_fp16", order="pairwise")


def test_scaled_matmul_applies_the_scales_on_promotion():
    rng = np.random.default_rng(6)
    fmt = fpsim.get_format("e4m3")
    a, b = grid(rng, (3, 256), fmt, 3), grid(rng, (256, 2), fmt, 3)
    sa = rng.uniform(0.001, 0.01, (3, 2)).astype(np.float32)  # 1x128 blocks
    sb = rng.uniform(0.001, 0.01, (2, 2)).astype(np.float32)
    model = tc.HOPPER_FP8_PROMOTE128
    got = np.asarray(tc.tc_scaled_matmul(a, b, sa, sb, model, inputs=fmt))
    want = [[ref.dot(a[i].tolist(), b[:, j].tolist(), model, fmt,
                     scales=[(float(sa[i, c]), float(sb[c, j])) for c in range(2)])
             for j in range(2)] for i in range(3)]  # fmt: skip
    np.testing.assert_array_equal(got, np.array(want, np.float32))
    # one scale per tensor: the same as scaling every chunk
    one = np.asarray(tc.tc_scaled_matmul(a, b, sa[0, 0], sb[0, 0], model, inputs=fmt))
    full = np.full((3, 2), sa[0, 0]), np.full((2, 2), sb[0, 0])
    same = np.asarray(tc.tc_scaled_matmul(a, b, *full, model, inputs=fmt))
    np.testing.assert_array_equal(one, same)
    with pytest.raises(ValueError, match="must promote every 128 products"):
        tc.tc_scaled_matmul(a, b, sa, sb, "hopper_fp8", inputs=fmt)


def test_recipe_with_deepseek_v3_accumulator():
    from fpsim.blocks import encode_blocks
    from fpsim.nn import _recipes

    recipe = _recipes.FP8_BLOCKWISE.replace(name="ds", accumulator="hopper_fp8_promote128")
    x = jax.random.normal(jax.random.key(0), (128, 256))  # 128 tokens: one block
    w = jax.random.normal(jax.random.key(1), (256, 128)) / 16
    y = fpsim.nn.recipe_dot_general(recipe)(x, w, (((1,), (0,)), ((), ())))
    # the same GEMM by hand: the encoded elements and scales on the tensor core
    cx = encode_blocks(x, "fp8_block_1x128", axis=1)
    cw = encode_blocks(w, "fp8_block_128x128", axis=(0, 1))
    ex, ew = (fpsim.decode(c.elements, "e4m3") for c in (cx, cw))
    sw = jnp.repeat(cw.scales, 128, axis=1)
    want = tc.tc_scaled_matmul(ex, ew, cx.scales, sw, recipe.accumulator, inputs="e4m3")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    plain = fpsim.nn.recipe_dot_general("fp8_blockwise")(x, w, (((1,), (0,)), ((), ())))
    assert 0 < np.abs(np.asarray(y) - np.asarray(plain)).max() < 1e-3 * np.abs(plain).max()
    dg = fpsim.nn.recipe_dot_general(recipe)
    g = jax.grad(lambda w: jnp.sum(dg(x, w, (((1,), (0,)), ((), ())))))(w)
    assert g.shape == w.shape and bool(jnp.all(jnp.isfinite(g)))
    with pytest.raises(ValueError, match="promote_every=None"):
        _recipes.FP8_BLOCKWISE.replace(accumulator="hopper_fp8")
    with pytest.raises(ValueError, match="need float32 scales"):
        _recipes.MXFP8.replace(accumulator="hopper_fp8_promote128")
    with pytest.raises(ValueError, match="one element format"):
        _recipes.FP8_CURRENT.replace(accumulator="hopper_fp8")
