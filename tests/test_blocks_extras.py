"""Per-block statistics (exact counts on crafted blocks); the random Hadamard transform."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fpsim.blocks import (
    EXPONENTS,
    block_stats,
    inverse_random_hadamard,
    quantize_blocks,
    random_hadamard,
)


def test_stats_mxfp8_underflow_and_saturation_counts():
    x = np.ones((2, 32), np.float32)
    # block 0: amax 957 -> scale 2**1; the smallest step is 2**-9 * 2, so 0.001 < 2**-9
    # rounds to zero (16 of them); 957 / 2 > 448 saturates (896); 0 is not counted
    x[0, 0], x[0, 1:17], x[0, 17] = 957.0, 0.001, 0.0
    # block 1: amax 1 -> scale 2**-8; 0.001 / 2**-8 = 0.256 is representable
    x[1, 1:17] = 0.001
    st = block_stats(x, "mxfp8")
    assert st.underflow.shape == (2, 1)  # the scales' shape: one per block
    assert np.asarray(st.underflow).ravel().tolist() == [16 / 32, 0.0]
    assert np.asarray(st.saturated).ravel().tolist() == [1 / 32, 0.0]
    assert np.asarray(st.scale_exponent).ravel().tolist() == [1, -8]
    counts = np.asarray(st.exponent_counts)
    assert counts.sum() == 2 and counts[EXPONENTS.index(1)] == 1
    assert counts[EXPONENTS.index(-8)] == 1
    # "ceil" never saturates: 957 -> scale 2**2, 957/4 = 239.25 -> 240 (no clipping)
    assert float(block_stats(x, "mxfp8", scale_mode="ceil").saturated[0, 0]) == 0.0


def test_stats_mxfp4_ties_negative_and_axis0():
    # E2M1 with scale 2**0 (amax 7: floor(log2 7) = 2 = emax): step 0.5, half step 0.25
    col = np.array([7.0, 0.2, -0.25, 0.3, 0.0, -0.0, -6.5, 6.0] + [1.0] * 24, np.float32)
    x = np.stack([col, col * 2], axis=1)  # blocks run along axis 0
    st = block_stats(x, "mxfp4", axis=0)
    # underflow: 0.2 and -0.25 (a tie, to even: 0); saturated: 7 and -6.5 (> 6)
    assert np.asarray(st.underflow).tolist() == [[2 / 32, 2 / 32]]
    assert np.asarray(st.saturated).tolist() == [[2 / 32, 2 / 32]]
    assert np.asarray(st.scale_exponent).tolist() == [[0, 1]]


def test_stats_histogram_of_exponents_and_nan_blocks():
    e = np.arange(-20, 20)
    x = np.repeat(np.exp2(e).astype(np.float32)[:, None], 32, axis=1)
    x[5, 7] = np.nan
    st = block_stats(x, "mxfp8_e5m2")  # emax 15: scale exponent e - 15
    want = np.where(np.arange(40) == 5, -128, e - 15)
    assert np.asarray(st.scale_exponent).ravel().tolist() == want.tolist()
    counts = np.asarray(st.exponent_counts)
    assert counts.sum() == 39 and counts[EXPONENTS.index(-35)] == 1
    assert not np.asarray(st.underflow).any() and not np.asarray(st.saturated).any()


def test_stats_nvfp4_and_mxint8():
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    st = block_stats(x, "nvfp4")
    assert st.underflow.shape == (8, 4) and int(np.asarray(st.exponent_counts).sum()) == 32
    q, xs = np.asarray(quantize_blocks(x, "nvfp4")), x.reshape(8, 4, 16)
    want = ((q.reshape(8, 4, 16) == 0) & (xs != 0)).mean(-1)
    assert np.array_equal(np.asarray(st.underflow), want)
    y = np.full(32, 0.5, np.float32)
    y[0], y[1] = 1.999, 0.001  # scale 2**0: 1.999 * 64 = 127.9 -> 128 -> clipped to 127
    sti = block_stats(y, "mxint8")
    assert float(sti.saturated[0]) == 1 / 32 and float(sti.underflow[0]) == 1 / 32


def test_hadamard_is_orthonormal_and_inverts():
    m = np.asarray(random_hadamard(np.eye(16, dtype=np.float32), 7))
    np.testing.assert_allclose(m @ m.T, np.eye(16), atol=1e-6)
    assert set(np.round(np.abs(m.ravel()), 6)) == {0.25}
    x = np.random.default_rng(1).standard_normal((32, 48)).astype(np.float32)
    for axis in (0, -1):
        y = random_hadamard(x, jax.random.key(3), axis=axis)
        np.testing.assert_allclose(
            np.asarray(inverse_random_hadamard(y, jax.random.key(3), axis=axis)),
            x, rtol=0, atol=2e-6,
        )  # fmt: skip
    # dot products along the transformed axis are unchanged (same key on both sides)
    a, b = x[:, :16], x[:, 16:32]
    ha, hb = np.asarray(random_hadamard(a, 5)), np.asarray(random_hadamard(b, 5))
    np.testing.assert_allclose(ha @ hb.T, a @ b.T, atol=1e-4)
    # the sign vector is the key's: another key gives another transform
    assert not np.allclose(np.asarray(random_hadamard(a, 6)), ha)


def test_hadamard_spreads_an_outlier():
    x = np.zeros(16, np.float32)
    x[3] = 64.0
    assert np.abs(np.asarray(random_hadamard(x, 0))).tolist() == [16.0] * 16
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    x[np.arange(2000), rng.integers(0, 16, 2000)] = 40.0  # one outlier per block
    y = np.asarray(random_hadamard(x, 11))
    crest = lambda v: np.abs(v).max(-1) / np.sqrt((v**2).mean(-1))  # noqa: E731
    assert crest(x).mean() > 3.5 and crest(y).mean() < 2.0
    # in NVFP4 the outlier sets the block scale: most ordinary values become zero ...
    assert float(np.mean(block_stats(x, "nvfp4").underflow)) > 0.5
    # ... after the transform almost none do (the error is spread over the block)
    assert float(np.mean(block_stats(y, "nvfp4").underflow)) < 0.05
    back = np.asarray(inverse_random_hadamard(quantize_blocks(y, "nvfp4"), 11))
    assert np.abs(back - x).max() < 6.0  # E2M1 steps of ~1 at |y| ~ 10, spread back


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: random_hadamard(np.ones(16, np.float32), 0, block=12), "power of two"),
        (lambda: random_hadamard(np.ones(24, np.float32), 0), "multiple"),
        (lambda: random_hadamard(np.ones(16, np.int32), 0), "floating"),
        (lambda: block_stats(np.ones(16, np.float32), "mxfp8"), "block size 32"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
