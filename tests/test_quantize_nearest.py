"""Round to nearest even against ml_dtypes, bit for bit."""

import numpy as np
import pytest
from conftest import (
    ML_FORMATS,
    assert_bits_equal,
    from_bits,
    ml_round,
    neighbour_points,
)

import fpsim
from fpsim.reference import round_value

SPECIALS = from_bits(
    [
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
        0x7F800001, 0xFFFFFFFF, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000,
        0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000, 0x33800000, 0x33800001, 0x337FFFFF,
    ]
)  # fmt: skip


@pytest.mark.parametrize("fmt", ML_FORMATS, ids=str)
def test_neighbours_midpoints_and_ties(fmt):
    x = neighbour_points(fmt)
    assert_bits_equal(fpsim.quantize(x, fmt), ml_round(x, fmt))


@pytest.mark.parametrize("fmt", ML_FORMATS, ids=str)
def test_random_bit_patterns(fmt, rng):
    x = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    x = from_bits(x)
    assert_bits_equal(fpsim.quantize(x, fmt), ml_round(x, fmt))


@pytest.mark.parametrize("fmt", ML_FORMATS, ids=str)
def test_wide_range_and_float32_subnormals(fmt, rng):
    mag = np.minimum(np.exp2(rng.uniform(-150, 129, 1 << 18)), np.finfo(np.float32).max)
    x = (rng.choice([-1, 1], mag.size) * mag).astype(np.float32)
    x = np.concatenate([x, SPECIALS, from_bits(rng.integers(0, 1 << 23, 4096))])
    assert_bits_equal(fpsim.quantize(x, fmt), ml_round(x, fmt))


@pytest.mark.parametrize("fmt", ML_FORMATS, ids=str)
def test_signed_zeros_bitwise(fmt):
    got = np.asarray(fpsim.quantize(np.float32([0.0, -0.0, -1e-30, 1e-30]), fmt))
    want = ml_round(np.float32([0.0, -0.0, -1e-30, 1e-30]), fmt)
    assert_bits_equal(got, want)
    if fmt.convention == "fnuz":
        assert not np.signbit(got).any()  # no negative zero in fnuz formats
    else:
        assert np.signbit(got).tolist() == [False, True, True, False]


def test_documented_corners():
    q = lambda v, f: float(fpsim.quantize(np.float32(v), f))  # noqa: E731
    assert q(464, fpsim.E4M3) == 448 and np.isnan(q(465, fpsim.E4M3))
    assert np.isnan(q(np.inf, fpsim.E4M3)) and np.isnan(q(-np.inf, fpsim.E4M3FNUZ))
    assert q(np.inf, fpsim.E2M1) == 6 and q(-np.inf, fpsim.E3M2) == -28
    assert q(1e9, fpsim.E2M3) == 7.5
    assert q(65519, fpsim.FP16) == 65504 and np.isinf(q(65520, fpsim.FP16))
    assert q(2.0**-25, fpsim.FP16) == 0 and q(2.0**-25 * 1.0001, fpsim.FP16) == 2.0**-24


@pytest.mark.parametrize("fmt", [fpsim.TF32, fpsim.Format("e5m6", 5, 6)], ids=str)
def test_formats_without_ml_dtype_against_exact_reference(fmt, rng):
    """TF32 and a custom E5M6: an exact Fraction reference written from the definition."""
    mag = np.exp2(rng.uniform(fmt.emin - fmt.mantissa_bits - 2, fmt.emax + 2, 3000))
    mag = np.minimum(mag, np.finfo(np.float32).max)
    x = (rng.choice([-1, 1], mag.size) * mag).astype(np.float32)
    v = fpsim.all_values(fmt) if fmt.bits <= 16 else None
    if v is not None:  # ties and near-ties too
        mids = ((v[:-1].astype(np.float64) + v[1:]) / 2).astype(np.float32)
        x = np.concatenate([x, mids[:: max(1, mids.size // 2000)]])
    want = np.array([round_value(float(t), fmt) for t in x], np.float32)
    assert_bits_equal(fpsim.quantize(x, fmt), want)


def test_tf32_ties_and_subnormals():
    one_plus_half_ulp = from_bits([0x3F801000, 0x3F803000, 0x3F801001])  # 1+2^-11 ...
    got = np.asarray(fpsim.quantize(one_plus_half_ulp, fpsim.TF32))
    assert got.tolist() == [1.0, 1 + 2 * 2.0**-10, 1 + 2.0**-10]
    # TF32's smallest subnormal is 2^-136, the float32 pattern 0x2000
    tiny = from_bits([0x1000, 0x1001, 0x2000, 0x3000, 0x5000])
    got = np.asarray(fpsim.quantize(tiny, fpsim.TF32)).view(np.uint32)
    assert got.tolist() == [0x0, 0x2000, 0x2000, 0x4000, 0x4000]  # ties go to even


def test_fp32_is_identity_and_flushes_when_asked(rng):
    x = from_bits(rng.integers(0, 2**32, 1 << 16, dtype=np.uint64).astype(np.uint32))
    assert np.array_equal(np.asarray(fpsim.quantize(x, fpsim.FP32)).view(np.uint32),
                          x.view(np.uint32))  # fmt: skip
    sub = from_bits([0x00000001, 0x807FFFFF, 0x00800000])
    got = np.asarray(fpsim.quantize(sub, fpsim.FP32, subnormals=False))
    assert got.view(np.uint32).tolist() == [0, 0x80000000, 0x00800000]
