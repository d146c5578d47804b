"""The counter-based generator of stochastic rounding (``rng="hash"``).

Frequencies and bias are checked with the stochastic tests of
``tests/test_quantize_modes.py`` (run for both generators); here: the hash itself
against an independent NumPy implementation, uniformity of the words, independence of
neighbouring elements (lags 1, 2 and powers of two, rows of a 2-D array) and of the
streams of derived keys, reproducibility, and the float64 paths. Every statistical
check is a chi-square test at 5 sigma (Wilson-Hilferty normal approximation), as strict
as the 5-sigma frequency tests of exact stochastic rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpsim
from fpsim import _hashrng, _keys


def _z(stat: float, dof: int) -> float:
    """How many sigma a chi-square statistic lies above its mean (Wilson-Hilferty)."""
    c = 2 / (9 * dof)
    return ((stat / dof) ** (1 / 3) - (1 - c)) / np.sqrt(c)


def _chi2_uniform(codes: np.ndarray, cells: int) -> float:
    counts = np.bincount(codes.ravel(), minlength=cells)
    expected = codes.size / cells
    return _z(float(((counts - expected) ** 2 / expected).sum()), cells - 1)


def _np_lowbias32(h):
    h = h.astype(np.uint64)
    m = np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x7FEB352D)) & m
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x846CA68B)) & m
    h ^= h >> np.uint64(16)
    return h


def _words(key, n):
    kd = _keys.key_data(key)
    return np.asarray(_hashrng.hash_words(kd, (n,), 32, None))


def test_hash_matches_an_independent_numpy_implementation():
    key = jax.random.key(7)
    k0, k1 = (int(v) for v in np.asarray(_keys.key_data(key)))
    i = np.arange(4096, dtype=np.uint64)
    inner = _np_lowbias32(i ^ np.uint64(k0))
    want = _np_lowbias32((inner + np.uint64(k1)) & np.uint64(0xFFFFFFFF))
    np.testing.assert_array_equal(_words(key, 4096), want.astype(np.uint32))
    # the published lowbias32 value of 1 (Wellons' hash-prospector)
    assert int(_np_lowbias32(np.uint64(1))) == int(_hashrng._mix(jnp.uint32(1)))


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_words_are_uniform(seed):
    w = _words(jax.random.key(seed), 1 << 20)
    assert _chi2_uniform(w >> 24, 256) < 5  # top byte
    assert _chi2_uniform(w & 0xFF, 256) < 5  # bottom byte
    bits = (w[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    p = bits.mean(0)  # each of the 32 bit positions is a fair coin
    assert np.all(np.abs(p - 0.5) < 5 * np.sqrt(0.25 / w.size))


@pytest.mark.parametrize("lag", [1, 2, 3, 64, 1024, 4096])
def test_neighbouring_elements_are_independent(lag):
    w = _words(jax.random.key(3), (1 << 20) + lag)
    a, b = w[:-lag] >> 28, w[lag:] >> 28  # top 4 bits of each: 256 pairs
    assert _chi2_uniform(a * 16 + b, 256) < 5
    a, b = w[:-lag] & 0xF, w[lag:] & 0xF  # low 4 bits (what a 4-bit remainder uses)
    assert _chi2_uniform(a * 16 + b, 256) < 5


@pytest.mark.parametrize("p_num", [1, 2])
def test_rounding_decisions_of_neighbours_are_independent(p_num):
    # 1 + p/4 of an fp16 ulp: rounds up with probability p/4 (1/4, or 1/2 at a tie)
    v = np.float32(1 + p_num * 2**-12)
    x = jnp.full((512, 1024), v)  # a 2-D array: also the element one row down
    up = np.asarray(fpsim.quantize(x, "fp16", "stochastic", key=5, rng="hash")) > 1
    p = p_num / 4
    for a, b in [(up[:, :-1], up[:, 1:]), (up[:-1, :], up[1:, :])]:
        cells = np.bincount((2 * a + b).ravel(), minlength=4)
        probs = np.array([(1 - p) ** 2, (1 - p) * p, p * (1 - p), p * p])
        exp = probs * a.size
        assert _z(float(((cells - exp) ** 2 / exp).sum()), 3) < 5


def test_streams_of_derived_keys_are_independent():
    base = jax.random.key(11)
    n = 1 << 16
    w = np.stack([_words(_keys.derive(base, s), n) for s in range(64)])
    # step s against step s + 1 at the same element, and against the next key
    for s in (0, 1, 31, 62):
        assert _chi2_uniform((w[s] >> 28) * 16 + (w[s + 1] >> 28), 256) < 5
    # over 64 steps the bit of each element is Binomial(64, 1/2): the counts' histogram
    ones = ((w >> 31) & 1).sum(0)
    from math import comb

    probs = np.array([comb(64, k) for k in range(65)], float) / 2.0**64
    counts = np.bincount(ones, minlength=65)
    keep = probs * n >= 5  # pool the sparse tails
    exp = np.append(probs[keep] * n, probs[~keep].sum() * n)
    obs = np.append(counts[keep], counts[~keep].sum())
    assert _z(float(((obs - exp) ** 2 / exp).sum()), exp.size - 1) < 5
    # a key and its data give the same stream; different seeds different streams
    assert not np.array_equal(w[0], w[1])


def test_reproducible_eager_and_jitted_and_unbiased():
    x = jnp.full((200_000,), 1 + 2**-12, jnp.float32)
    key = jax.random.key(42)
    a = fpsim.quantize(x, fpsim.FP16, "stochastic", key=key, rng="hash")
    b = jax.jit(lambda v, k: fpsim.quantize(v, "fp16", "stochastic", key=k, rng="hash"))(
        x, key
    )
    c = fpsim.quantize(x, fpsim.FP16, "stochastic", key=_keys.key_data(key), rng="hash")
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(a), np.asarray(c))
    other = fpsim.quantize(x, fpsim.FP16, "stochastic", key=43, rng="hash")
    assert not np.array_equal(np.asarray(a), np.asarray(other))
    err = float(jnp.mean(a)) - (1 + 2**-12)
    assert abs(err) < 5 * 2**-10 * np.sqrt(0.25 * 0.75 / x.size)


def test_threefry_stays_the_default():
    x = jnp.full((4096,), 1 + 2**-12, jnp.float32)
    key = jax.random.key(0)
    default = fpsim.quantize(x, "bf16", "stochastic", key=key)
    threefry = fpsim.quantize(x, "bf16", "stochastic", key=key, rng="threefry")
    hashed = fpsim.quantize(x, "bf16", "stochastic", key=key, rng="hash")
    assert np.array_equal(np.asarray(default), np.asarray(threefry))
    assert not np.array_equal(np.asarray(default), np.asarray(hashed))


def test_unknown_generator_is_an_error():
    with pytest.raises(ValueError, match="threefry, hash"):
        fpsim.quantize(1.0, "fp16", "stochastic", key=0, rng="philox")


def _freq_ok(got, v, fmt, n):
    lo = float(fpsim.quantize(v, fmt, "down"))
    hi = float(fpsim.quantize(v, fmt, "up"))
    got = np.asarray(got, np.float64)
    assert set(np.unique(got).tolist()) <= {lo, hi}
    p = (float(v) - lo) / (hi - lo)
    freq = (got == hi).mean()
    assert abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_host_float64_data():
    # x64 off: float64 host data, probability exact to 2**-32 (p = 1/3 here)
    v = 1 + 2**-10 / 3
    n = 100_000
    got = fpsim.quantize(np.full(n, v), "fp16", "stochastic", key=1, rng="hash")
    _freq_ok(got, v, fpsim.FP16, n)


def test_float64_under_x64_uses_64_random_bits():
    n = 100_000
    with jax.enable_x64(True):
        x = jnp.full((n,), 1 + 2**-52, jnp.float64)  # float32 cannot hold it
        got = fpsim.quantize(x, "fp32", "stochastic", key=2, rng="hash")
        assert got.dtype == jnp.float64
        w = _hashrng.hash_words(_keys.key_data(jax.random.key(2)), (n,), 64, None)
        assert w.dtype == jnp.uint64
        top = np.asarray(w >> jnp.uint64(56)).astype(np.int64)
        assert _chi2_uniform(top, 256) < 5
        v = 1 + 2**-24 + 2**-26  # to float32: P(up) = 1/4 + ... exact in float64
        x = jnp.full((n,), v, jnp.float64)
        got = fpsim.quantize(x, "fp32", "stochastic", key=3, rng="hash")
        _freq_ok(got, v, fpsim.FP32, n)
