"""Directed and stochastic rounding, saturation and flush-to-zero."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ALL_FORMATS, ML_FORMATS, assert_bits_equal, ml_round

import fpsim
from fpsim.reference import round_value

SMALL = [f for f in ALL_FORMATS if f.bits <= 16]


def _finite_samples(fmt, rng, n=1 << 14):
    lo = np.log2(fmt.min_subnormal) - 3
    mag = np.exp2(rng.uniform(lo, np.log2(fmt.max) + 1, n))
    mag = np.minimum(mag, np.finfo(np.float32).max)
    x = (rng.choice([-1, 1], n) * mag).astype(np.float32)
    if fmt.bits <= 16:
        x = np.concatenate([x, fpsim.all_values(fmt).astype(np.float32)])
    return x


@pytest.mark.parametrize("fmt", SMALL, ids=str)
def test_directed_modes_neighbour_property(fmt, rng):
    x = _finite_samples(fmt, rng)
    x = x[np.abs(x) <= fmt.max]
    lo = np.asarray(fpsim.quantize(x, fmt, "down"))
    hi = np.asarray(fpsim.quantize(x, fmt, "up"))
    tz = np.asarray(fpsim.quantize(x, fmt, "toward_zero"))
    grid = set(fpsim.all_values(fmt).tolist())
    assert set(lo.tolist()) <= grid and set(hi.tolist()) <= grid
    assert (lo <= x).all() and (x <= hi).all()
    exact = lo == hi
    assert np.array_equal(exact, np.isin(x, list(grid)))
    # no value of the format strictly between lo and hi: hi is lo's successor
    assert np.array_equal(hi[~exact], np.asarray(fpsim.next_up(lo[~exact], fmt)))
    assert np.array_equal(tz, np.where(x >= 0, lo, hi))


@pytest.mark.parametrize("mode", ["toward_zero", "up", "down", "nearest"])
@pytest.mark.parametrize("fmt", ALL_FORMATS[1:], ids=str)
def test_all_modes_against_exact_reference(fmt, mode, rng):
    x = _finite_samples(fmt, rng, 600)[:600]
    want = np.array([round_value(float(t), fmt, mode) for t in x], np.float32)
    assert_bits_equal(fpsim.quantize(x, fmt, mode), want)


def test_directed_overflow_follows_ieee():
    big = np.float32([1e6, -1e6])
    assert np.asarray(fpsim.quantize(big, fpsim.FP16, "toward_zero")).tolist() == [
        65504,
        -65504,
    ]
    up = np.asarray(fpsim.quantize(big, fpsim.FP16, "up"))
    assert np.isposinf(up[0]) and up[1] == -65504
    down = np.asarray(fpsim.quantize(big, fpsim.E4M3, "down"))
    assert down[0] == 448 and np.isnan(down[1])  # no inf in E4M3: NaN


def test_saturate(rng):
    x = np.float32([1e6, -1e6, np.inf, -np.inf, np.nan, 300.0, 465.0])
    got = np.asarray(fpsim.quantize(x, fpsim.E4M3, saturate=True))
    assert got[:4].tolist() == [448, -448, 448, -448]
    assert np.isnan(got[4]) and got[5:].tolist() == [288, 448]
    got = np.asarray(fpsim.quantize(x, fpsim.FP16, saturate=True))
    assert got[:4].tolist() == [65504, -65504, 65504, -65504] and np.isnan(got[4])
    # saturate agrees with nearest wherever nearest stays finite
    y = rng.normal(size=4096).astype(np.float32) * 300
    fin = np.isfinite(ml_round(y, fpsim.E4M3))
    assert_bits_equal(fpsim.quantize(y, fpsim.E4M3, saturate=True)[fin],
                      ml_round(y, fpsim.E4M3)[fin])  # fmt: skip


@pytest.mark.parametrize("fmt", ML_FORMATS, ids=str)
def test_flush_to_zero_keeps_sign(fmt, rng):
    x = _finite_samples(fmt, rng)
    got = np.asarray(fpsim.quantize(x, fmt, subnormals=False))
    ref = ml_round(x, fmt)
    sub = (np.abs(ref) < fmt.min_normal) & (ref != 0)
    assert sub.any()
    assert (got[sub] == 0).all()
    want_sign = np.signbit(x[sub]) & (fmt.convention != "fnuz")
    assert np.array_equal(np.signbit(got[sub]), want_sign)
    assert_bits_equal(got[~sub], ref[~sub])


class TestStochastic:
    def test_needs_a_key(self):
        with pytest.raises(ValueError, match="needs a random key"):
            fpsim.quantize(1.0, fpsim.FP16, "stochastic")
        with pytest.raises(TypeError, match="JAX random key"):
            fpsim.quantize(1.0, fpsim.FP16, "stochastic", key="three")
        # an int seed is a key too (fpsim._keys.canonical_key, the project's one way)
        seeded = fpsim.quantize(1.0, fpsim.FP16, "stochastic", key=3)
        assert float(seeded) == 1.0

    @pytest.mark.parametrize("gen", ["threefry", "hash"])
    @pytest.mark.parametrize(
        "fmt", [fpsim.FP16, fpsim.BF16, fpsim.E4M3, fpsim.E2M1], ids=str
    )
    def test_result_is_a_neighbour_with_the_right_frequency(self, fmt, rng, gen):
        n = 20000
        vals = _finite_samples(fmt, rng, 16)
        vals = vals[np.abs(vals) <= fmt.max][:8]
        for i, v in enumerate(vals):
            x = np.full(n, v, np.float32)
            got = fpsim.quantize(x, fmt, "stochastic", key=jax.random.key(i), rng=gen)
            got = np.asarray(got)
            lo = float(fpsim.quantize(v, fmt, "down"))
            hi = float(fpsim.quantize(v, fmt, "up"))
            assert set(np.unique(got).tolist()) <= {lo, hi}
            if lo == hi:
                assert (got == v).all()  # representable inputs are unchanged
                continue
            p = (float(v) - lo) / (hi - lo)
            freq = (got == hi).mean()
            assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-9

    @pytest.mark.parametrize("gen", ["threefry", "hash"])
    def test_unbiased_mean_and_reproducible(self, gen):
        x = jnp.full((200_000,), 1 + 2**-12, jnp.float32)  # 1/4 of an fp16 ulp above 1
        key = jax.random.key(42)
        a = fpsim.quantize(x, fpsim.FP16, "stochastic", key=key, rng=gen)
        b = fpsim.quantize(x, fpsim.FP16, "stochastic", key=key, rng=gen)
        assert np.array_equal(np.asarray(a), np.asarray(b))
        err = float(jnp.mean(a)) - (1 + 2**-12)
        assert abs(err) < 5 * 2**-10 * np.sqrt(0.25 * 0.75 / x.size)
        assert float(jnp.mean(fpsim.quantize(x, fpsim.FP16))) == 1.0  # nearest: biased

    @pytest.mark.parametrize("gen", ["threefry", "hash"])
    def test_tiny_values_keep_exact_probability(self, gen):
        # 2^-30 is 2^-6 of fp16's smallest subnormal: P(up) = 1/64 exactly
        x = jnp.full((400_000,), 2.0**-30, jnp.float32)
        got = fpsim.quantize(x, fpsim.FP16, "stochastic", key=jax.random.key(0), rng=gen)
        freq = float(jnp.mean(got == 2.0**-24))
        assert abs(freq - 1 / 64) < 5 * np.sqrt((1 / 64) * (63 / 64) / x.size)

    @pytest.mark.parametrize("gen", ["threefry", "hash"])
    def test_random_bits_quantizes_probabilities(self, gen):
        # remainder 1/4 + 1/64 of an ulp: with 2 random bits the remainder truncates to 1/4
        v = np.float32(1 + 2**-12 + 2**-16)
        x = jnp.full((200_000,), v)
        for bits, p in [(2, 0.25), (None, 0.25 + 1 / 64)]:
            got = fpsim.quantize(x, fpsim.FP16, "stochastic", key=jax.random.key(1),
                                 random_bits=bits, rng=gen)  # fmt: skip
            freq = float(jnp.mean(got > 1))
            assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / x.size)
        with pytest.raises(ValueError, match="random_bits"):
            fpsim.quantize(
                x, fpsim.FP16, "stochastic", key=jax.random.key(1), random_bits=0
            )

    @pytest.mark.parametrize("gen", ["threefry", "hash"])
    def test_overflow_and_specials(self, gen):
        x = jnp.float32([70000.0, np.inf, np.nan, -0.0])
        got = fpsim.quantize(x, fpsim.FP16, "stochastic", key=jax.random.key(3), rng=gen)
        got = np.asarray(got)
        assert np.isinf(got[0]) and np.isinf(got[1]) and np.isnan(got[2])
        assert got[3] == 0 and np.signbit(got[3])
