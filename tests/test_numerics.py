"""quantizer / fake_quant, lp_sum, lp_dot, lp_matmul against exact references."""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _numerics_ref import grid_values, ordered_sum, rnd

import fpsim

ORDERS = ["sequential", "pairwise", "chunked", "kahan"]
ACCUMS = [fpsim.FP16, fpsim.BF16, fpsim.E5M2, fpsim.E4M3]


def f32(x) -> float:
    return float(np.float32(x))


# --- quantizer -----------------------------------------------------------------------
def test_quantizer_forward_and_backward_formats():
    q = fpsim.quantizer("e4m3", "e5m2")
    x = jnp.array([1.1, -3.3, 500.0], jnp.float32)
    g = jnp.array([0.3, 1e-7, 70000.0], jnp.float32)
    y, vjp = jax.vjp(q, x)
    want_y = np.asarray(x).astype(jnp.dtype("float8_e4m3fn")).astype(np.float32)
    want_g = np.asarray(g).astype(jnp.dtype("float8_e5m2")).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(y), want_y)
    np.testing.assert_array_equal(np.asarray(vjp(g)[0]), want_g)


def test_quantizer_none_is_identity_and_straight_through():
    x = jnp.array([1.1, 2.7], jnp.float32)
    assert jnp.array_equal(fpsim.quantizer(None)(x), x)
    grad = jax.grad(lambda v: jnp.sum(fpsim.fake_quant(v, "fp16") * 3.0))(x)
    np.testing.assert_array_equal(np.asarray(grad), [3.0, 3.0])  # bwd None: unchanged


def test_quantizer_stochastic_keys():
    q = fpsim.quantizer("fp16", "e5m2", grad_rounding="stochastic")
    with pytest.raises(ValueError, match="key"):
        q(jnp.ones(3))
    g = jnp.full(4096, 1.1, jnp.float32)  # between e5m2 neighbours 1.0 and 1.25

    def back(key):
        return jax.vjp(lambda v: q(v, key), jnp.ones(4096))[1](g)[0]

    b0, b1 = jax.jit(back)(jax.random.key(0)), jax.jit(back)(jax.random.key(1))
    assert set(np.unique(np.asarray(b0))) <= {1.0, 1.25}
    assert not jnp.array_equal(b0, b1)  # different keys, different rounding
    assert abs(float(jnp.mean(b0)) - 1.1) < 0.01  # unbiased
    assert jnp.array_equal(jax.jit(back)(jax.random.key(0)), b0)  # reproducible


# --- lp_sum ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ACCUMS, ids=lambda f: f.name)
@pytest.mark.parametrize("order", ORDERS)
def test_lp_sum_matches_exact_reference(fmt, order):
    scale = np.float32(64 if fmt.emax > 8 else 4)
    x = grid_values(fmt, 3 * 23, seed=len(order), min_abs=2.0**-90).reshape(3, 23) / scale
    x = np.asarray(fpsim.quantize(x, fmt))
    got = fpsim.lp_sum(x, accum=fmt, order=order, chunk=4)  # three rows of 23 terms
    for row, g in zip(x, np.asarray(got), strict=True):
        want = ordered_sum([Fraction(float(v)) for v in row], fmt, order, chunk=4)
        assert float(g) == float(want), row.tolist()


def test_lp_sum_axis_and_jit():
    x = jax.random.normal(jax.random.key(0), (5, 7, 9))
    got = jax.jit(
        lambda v: fpsim.lp_sum(v, axis=1, accum="fp16", order="chunked", chunk=3)
    )(x)
    assert got.shape == (5, 9)
    xq = np.asarray(fpsim.quantize(x, "fp16"))
    want = float(
        ordered_sum([Fraction(float(v)) for v in xq[2, :, 4]], fpsim.FP16, "chunked", 3)
    )
    assert float(got[2, 4]) == want


def test_fp16_accumulator_stops_at_2048():
    ones = jnp.ones(3000)
    assert float(fpsim.lp_sum(ones, accum="fp16")) == 2048.0
    assert float(fpsim.lp_sum(ones, accum="fp16", order="kahan")) == 3000.0
    assert float(fpsim.lp_sum(ones, accum="fp16", order="chunked", chunk=64)) == 3000.0
    assert float(fpsim.lp_sum(ones, accum="fp32")) == 3000.0
    sr = fpsim.lp_sum(ones, accum="fp16", rounding="stochastic", key=jax.random.key(3))
    assert 2600.0 < float(sr) < 3400.0  # stochastic rounding keeps growing on average


def test_bad_arguments():
    with pytest.raises(ValueError, match="valid"):
        fpsim.lp_sum(jnp.ones(3), order="random")
    with pytest.raises(ValueError, match="all-reduce"):
        fpsim.lp_sum(jnp.ones(3), accum="fp16", order="ring")
    with pytest.raises(ValueError, match="now called 'pairwise'"):
        fpsim.lp_sum(jnp.ones(3), accum="fp16", order="tree")
    with pytest.raises(ValueError, match="native"):
        fpsim.lp_dot(jnp.ones(3), jnp.ones(3), products="fp16", order="native")
    with pytest.raises(ValueError, match="chunk"):
        fpsim.lp_sum(jnp.ones(3), order="chunked", chunk=0)
    with pytest.raises(ValueError, match="key"):
        fpsim.lp_sum(jnp.ones(3), rounding="stochastic")
    with pytest.raises(ValueError, match="shape"):
        fpsim.lp_dot(jnp.ones(3), jnp.ones(4))
    with pytest.raises(ValueError, match="lp_matmul"):
        fpsim.lp_matmul(jnp.ones(3), jnp.ones((3, 2)))


# --- lp_dot / lp_matmul -------------------------------------------------------------
def _ref_dot(a, b, inputs, products, accum, order, chunk):
    a = [rnd(Fraction(f32(v)), inputs) for v in a]
    b = [rnd(Fraction(f32(v)), inputs) for v in b]
    terms = [Fraction(x) * Fraction(y) for x, y in zip(a, b, strict=True)]
    if products is not None:
        terms = [Fraction(rnd(t, products)) for t in terms]
    return float(ordered_sum(terms, accum, order, chunk))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    "inputs,products,accum",
    [(fpsim.FP16, None, fpsim.FP16), (fpsim.E4M3, fpsim.FP16, fpsim.FP16),
     (fpsim.BF16, None, fpsim.BF16), (fpsim.E5M2, None, fpsim.E5M2),
     (fpsim.FP16, None, fpsim.BF16)],
    ids=["fp16", "e4m3-fp16prod", "bf16", "e5m2", "fp16-bf16acc"],
)  # fmt: skip
def test_lp_dot_matches_exact_reference(order, inputs, products, accum):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 19)).astype(np.float32) * 3
    b = rng.standard_normal((3, 19)).astype(np.float32) * 3
    got = fpsim.lp_dot(a, b, inputs=inputs, products=products, accum=accum, order=order,
                       chunk=4)  # fmt: skip
    for i in range(3):
        assert float(got[i]) == _ref_dot(a[i], b[i], inputs, products, accum, order, 4)


def test_lp_matmul_batched_and_native():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 3, 10)).astype(np.float32)
    b = rng.standard_normal((10, 4)).astype(np.float32)
    got = fpsim.lp_matmul(a, b, inputs="fp16", accum="fp16", order="chunked", chunk=4)
    for i, j, k in [(0, 0, 0), (1, 2, 3), (1, 1, 2)]:
        want = _ref_dot(a[i, j], b[:, k], fpsim.FP16, None, fpsim.FP16, "chunked", 4)
        assert float(got[i, j, k]) == want
    # with an FP32 accumulator the default is XLA's dot on the rounded inputs
    native = fpsim.lp_matmul(a, b, inputs="fp16", output="fp16")
    aq, bq = fpsim.quantize(a, "fp16"), fpsim.quantize(b, "fp16")
    ref = np.einsum("bik,kj->bij", np.float64(aq), np.float64(bq))
    np.testing.assert_allclose(np.asarray(native), ref, rtol=2**-10)
    bb = rng.standard_normal((2, 10, 4)).astype(np.float32)
    assert fpsim.lp_matmul(a, bb, accum="fp16").shape == (2, 3, 4)


def test_long_fp16_dot_swamps_and_chunking_repairs():
    n = 8192
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, n), jnp.float32)
    exact = float(np.dot(np.float64(fpsim.quantize(x, "fp16")), np.ones(n)))
    ones = jnp.ones(n)
    seq = float(fpsim.lp_dot(x, ones, inputs="fp16", accum="fp16"))
    chunked = float(fpsim.lp_dot(x, ones, inputs="fp16", accum="fp16", order="chunked"))
    kahan = float(fpsim.lp_dot(x, ones, inputs="fp16", accum="fp16", order="kahan"))
    assert abs(seq - exact) / exact > 0.3  # stuck near 2048..4096
    assert abs(chunked - exact) / exact < 2e-3
    assert abs(kahan - exact) / exact < 1e-3


@pytest.mark.parametrize("mode", ["up", "down", "toward_zero"])
@pytest.mark.parametrize("fmt", [fpsim.FP16, fpsim.BF16, fpsim.E5M2], ids=str)
def test_directed_accumulation_matches_exact_reference(fmt, mode):
    from conftest import ref_round

    vals = grid_values(fmt, 400, seed=7, min_abs=2.0**-120)
    vals = vals[np.abs(vals) <= fmt.max / 256][:48]
    acc = Fraction(0)
    for v in vals:  # the exact sum, rounded once per addition in the mode
        acc = Fraction(ref_round(acc + Fraction(float(v)), fmt, mode))
    got = fpsim.lp_sum(vals, accum=fmt, order="sequential", rounding=mode)
    assert float(got) == float(acc)
    # the case a float32 intermediate gets wrong: 2048 + 2^-24 rounded up is 2050
    up = fpsim.lp_sum(np.float32([2048, 2**-24]), accum="fp16", order="sequential",
                      rounding="up")  # fmt: skip
    assert float(up) == 2050.0


def test_float32_accumulator_refuses_modes_it_cannot_simulate():
    with pytest.raises(ValueError, match="cannot be simulated exactly"):
        fpsim.lp_sum(np.ones(4, np.float32), accum="fp32", rounding="up")
    with pytest.raises(ValueError, match="cannot be simulated exactly"):
        fpsim.lp_dot(np.ones(4, np.float32), np.ones(4, np.float32), rounding="toward_zero")


# --- exact stochastic rounding of sums (issue 11, item 1) ----------------------------
E8M21 = fpsim.Format("e8m21", 8, 21)


def test_stochastic_sum_fp16_mean_excess():
    """1 + 4096 * 2**-24 in an FP16 accumulator: every partial sum rounds up with
    probability (exact remainder) / ulp, so the mean excess over 1 is 4096 * 2**-24 =
    2.44e-4 (rounding float32's 1 + 2**-24 = 1 + 2**-23 after round-to-odd gave 4.9e-4)."""
    cols = 2048
    x = np.full((4097, cols), 2.0**-24, np.float32)
    x[0] = 1.0
    got = np.asarray(fpsim.lp_sum(x, axis=0, accum="fp16", rounding="stochastic",
                                  key=jax.random.key(0)), np.float64)  # fmt: skip
    excess = got - 1.0
    want = 4096 * 2.0**-24
    sigma = excess.std() / np.sqrt(cols)
    assert abs(excess.mean() - want) < 4 * sigma, (excess.mean(), want, sigma)
    assert excess.mean() < 3.5e-4


def _ups(values) -> int:
    values = np.asarray(values)
    assert set(np.unique(values)) <= {1.0, 1.0 + 2.0**-21}
    return int((values > 1).sum())


@pytest.mark.parametrize("order", ["sequential", "pairwise", "chunked", "kahan"])
def test_stochastic_sum_custom_accumulator_probability(order):
    """1 + 2**-30 rounded to 21 mantissa bits goes up with probability 2**-9 (was 1/4)."""
    n = 1 << 16
    want = n * 2.0**-9
    key = jax.random.key(1)
    x = np.zeros((2, n), np.float32)
    x[0], x[1] = 1.0, 2.0**-30
    s = fpsim.lp_sum(x, axis=0, accum=E8M21, order=order, rounding="stochastic", key=key)
    assert abs(_ups(s) - want) < 5 * np.sqrt(want)
    ones = np.ones((n, 2), np.float32)
    d = fpsim.lp_dot(x.T, ones, accum=E8M21, order=order, rounding="stochastic", key=key)
    assert abs(_ups(d) - want) < 5 * np.sqrt(want)
    a, b = x.T.reshape(n // 256, 256, 2), np.ones((2, 1), np.float32)
    m = fpsim.lp_matmul(a, b, accum=E8M21, order=order, rounding="stochastic", key=key)
    assert abs(_ups(m) - want) < 5 * np.sqrt(want)


def test_stochastic_threshold_is_exact():
    """The draw against |err| / |t - s| uses ceil(f * 2**32), checked with Fractions."""
    from fpsim import _bits
    from fpsim.arith import _fraction_threshold, two_sum

    rng = np.random.default_rng(0)
    a = (rng.standard_normal(4000) * 2.0 ** rng.integers(-20, 20, 4000)).astype(np.float32)
    b = (rng.standard_normal(4000) * 2.0 ** rng.integers(-40, 0, 4000)).astype(np.float32)
    a[:8] = [1.0, 1.0, -1.0, 2.0, 0.5, 1.0, -4.0, 3.0]  # powers of two, stepping down
    b[:8] = [-(2.0**-30), 2.0**-30, 2.0**-30, -(2.0**-26), -(2.0**-60), 2.0**-24, 1e-7, 0]
    s, err = (np.asarray(v) for v in two_sum(jnp.asarray(a), jnp.asarray(b)))
    got = np.asarray(_fraction_threshold(jnp.asarray(s), jnp.asarray(err), _bits.F32))
    for si, ei, g in zip(s, err, got, strict=True):
        if ei == 0:
            continue
        t = np.nextafter(si, np.float32(np.copysign(np.inf, ei)))
        f = Fraction(abs(float(ei))) / abs(Fraction(float(t)) - Fraction(float(si)))
        assert 0 < f <= Fraction(1, 2)
        assert int(g) == -(-(f * 2**32).numerator // (f * 2**32).denominator), (si, ei)


# --- float64 input under x64 (issue 11, item 2) --------------------------------------
@pytest.mark.parametrize("order", ["sequential", "pairwise", "chunked", "kahan", "native"])
def test_float64_input_under_x64(order):
    with jax.enable_x64(True):
        x = jnp.arange(1, 9, dtype=jnp.float64) / 3
        got = fpsim.lp_sum(x, accum="fp16", order=order, chunk=3)
        assert got.dtype == jnp.float64 and got.shape == ()
        terms = [Fraction(rnd(Fraction(float(v)), fpsim.FP16)) for v in np.asarray(x)]
        if order == "native":  # the float64 sum, rounded once
            want = rnd(sum(Fraction(float(v)) for v in terms), fpsim.FP16)
            assert abs(float(got) - want) <= 2.0**-8
        else:
            assert float(got) == float(ordered_sum(terms, fpsim.FP16, order, chunk=3))
        if order == "pairwise":
            assert float(got) == 12.0
        two = jnp.stack([x, x[::-1]], axis=1)
        assert fpsim.lp_sum(two, axis=0, accum="fp16", order=order).shape == (2,)
        a = jnp.asarray(np.random.default_rng(1).standard_normal((3, 11)))
        b = jnp.asarray(np.random.default_rng(2).standard_normal((11, 2)))
        if order != "native":
            m = fpsim.lp_matmul(a, b, inputs="fp16", accum="fp16", order=order, chunk=3)
            assert m.shape == (3, 2) and m.dtype == jnp.float64
            for i, j in [(0, 0), (2, 1)]:
                want = _ref_dot64(np.asarray(a)[i], np.asarray(b)[:, j], order)
                assert float(m[i, j]) == want
        d = fpsim.lp_dot(a, a, accum="fp32", order=order, chunk=3)
        assert d.shape == (3,) and d.dtype == jnp.float64
        sr = fpsim.lp_sum(x, accum="fp16", order=order, rounding="stochastic",
                          key=jax.random.key(0))  # fmt: skip
        assert sr.dtype == jnp.float64 and abs(float(sr) - 12.0) <= 0.05


def _ref_dot64(a, b, order):
    a = [rnd(Fraction(float(v)), fpsim.FP16) for v in a]
    b = [rnd(Fraction(float(v)), fpsim.FP16) for v in b]
    terms = [Fraction(x) * Fraction(y) for x, y in zip(a, b, strict=True)]
    return float(ordered_sum(terms, fpsim.FP16, order, chunk=3))


def test_native_order_narrow_accumulator_rounds_once():
    x = np.array([2048.0, 1.0, 1.0], np.float32)
    assert float(fpsim.lp_sum(x, accum="fp16", order="native")) == 2050.0
    assert float(fpsim.lp_sum(x, accum="fp16", order="sequential")) == 2048.0


@pytest.mark.parametrize("fmt", [fpsim.FP16, fpsim.BF16, fpsim.E4M3, fpsim.E5M2,
                                 fpsim.E2M1], ids=str)  # fmt: skip
@pytest.mark.parametrize("saturate", [False, True])
def test_add_round_on_grid_is_the_exact_rounding(fmt, saturate):
    """Sums of two values of fmt rounded straight from float32 (``on_grid=True``, no
    TwoSum: double rounding is innocuous for p <= 11 in float32) give add_round's bits:
    every pair of FP8/FP4 values; for FP16 and BF16 200,000 random pairs and the pairs
    around ties, overflow and subnormals."""
    from conftest import assert_bits_equal

    from fpsim.arith import add_round

    vals = fpsim.all_values(fmt)
    vals = vals[~np.isnan(vals)].astype(np.float32)
    if vals.size <= 512:  # every pair
        a, b = (v.ravel() for v in np.meshgrid(vals, vals))
    else:
        rng = np.random.default_rng(5)
        a, b = rng.choice(vals, 200_000), rng.choice(vals, 200_000)
        ulp = np.asarray(fpsim.ulp(a, fmt))
        b[:50_000] = ulp[:50_000] / 2  # ties: half an ulp of a (when on the grid)
        b[50_000:60_000] = fmt.min_subnormal
        a[60_000:70_000] = fmt.max
    b = np.asarray(fpsim.quantize(b, fmt))
    assert np.isin(a, vals).all() and np.isin(b[np.isfinite(b)], vals).all()
    got = add_round(jnp.asarray(a), jnp.asarray(b), fmt, saturate=saturate, on_grid=True)
    want = add_round(jnp.asarray(a), jnp.asarray(b), fmt, saturate=saturate)
    assert_bits_equal(got, want)


def test_pairwise_in_blocks_and_row_tiles_is_the_whole_tree(monkeypatch):
    """The pairwise tree summed 16 terms at a time, over tiles of lhs rows (padded at
    the end), gives the bits of the tree over all terms at once (stochastic rounding,
    which is never tiled, builds the whole tree)."""
    import fpsim.numerics._accumulate as acc
    import fpsim.numerics._dot as dot

    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 37, 70)) * 2.0 ** rng.integers(-8, 8, (3, 37, 70))
    b = rng.standard_normal((3, 70, 40))
    a, b = a.astype(np.float32), b.astype(np.float32)
    spec = dict(inputs="fp16", accum="bf16", order="pairwise")
    monkeypatch.setattr(dot, "PAIRWISE_TILE_BYTES", 16 * 4 * 3 * 40 * 5)  # 5 rows
    assert dot._pairwise_rows("pairwise", None, 3, 37, 70, 40) == 5
    tiled = fpsim.lp_matmul(a, b, **spec)
    monkeypatch.setattr(dot, "PAIRWISE_TILE_BYTES", 1 << 40)
    monkeypatch.setattr(acc, "PAIRWISE_BLOCK_LOG2", 10)  # one block: every term at once
    jax.clear_caches()
    whole = fpsim.lp_matmul(a, b, **spec)
    bits = lambda v: np.asarray(v, np.float32).view(np.uint32)  # noqa: E731
    np.testing.assert_array_equal(bits(tiled), bits(whole))
    for i, j in [(0, 0), (2, 36)]:  # and the exact reference, in a padded last tile too
        want = _ref_dot(a[i, 36], b[i, :, j], fpsim.FP16, None, fpsim.BF16, "pairwise", 1)
        assert float(tiled[i, 36, j]) == want
