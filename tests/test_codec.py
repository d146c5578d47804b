"""encode/decode against ml_dtypes' bit patterns, and the small grid helpers."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
    ML_FORMATS,
    assert_bits_equal,
    from_bits,
    ml_round,
    neighbour_points,
    np_dtype,
)

import fpsim

CODE_TYPES = {8: np.uint8, 16: np.uint16}


def _uint(fmt):
    return CODE_TYPES[8 if fmt.bits <= 8 else 16]


@pytest.mark.parametrize("fmt", ML_FORMATS, ids=str)
def test_decode_every_bit_pattern(fmt):
    codes = np.arange(1 << fmt.bits).astype(_uint(fmt))
    want = codes.view(np_dtype(fmt)).astype(np.float32) if fmt.bits >= 8 else None
    if want is None:  # fp6/fp4 live in the low bits of a byte
        want = np.array([np.uint8(c).view(np_dtype(fmt)) for c in codes]).astype(np.float32)
    assert_bits_equal(fpsim.decode(codes, fmt), want)


@pytest.mark.parametrize("fmt", ML_FORMATS, ids=str)
def test_encode_matches_ml_dtypes_view(fmt, rng):
    x = np.concatenate([neighbour_points(fmt), rng.normal(size=4096).astype(np.float32),
                        np.float32([np.inf, -np.inf, np.nan, 0.0, -0.0])])  # fmt: skip
    got = np.asarray(fpsim.encode(x, fmt))
    assert got.dtype == _uint(fmt)
    with np.errstate(all="ignore"):
        want = x.astype(np_dtype(fmt)).view(np.uint8 if fmt.bits <= 8 else np.uint16)
    nan = np.isnan(ml_round(x, fmt))
    assert np.array_equal(got[~nan], want[~nan])
    assert np.isnan(np.asarray(fpsim.decode(got[nan], fmt))).all()  # any NaN pattern


@pytest.mark.parametrize("fmt", list(fpsim.FORMATS), ids=str)
def test_decode_encode_roundtrip_is_quantize(fmt, rng):
    x = from_bits(rng.integers(0, 2**32, 1 << 16, dtype=np.uint64).astype(np.uint32))
    x = np.concatenate([x, (rng.normal(size=4096) * fmt.max / 4).astype(np.float32)])
    assert_bits_equal(fpsim.decode(fpsim.encode(x, fmt), fmt), fpsim.quantize(x, fmt))


def test_code_widths_and_known_codes():
    assert int(fpsim.encode(1.0, "fp16")) == 0x3C00
    assert int(fpsim.encode(-2.0, "bf16")) == 0xC000
    assert int(fpsim.encode(448.0, "e4m3")) == 0x7E
    assert int(fpsim.encode(1.0, "tf32")) == 127 << 10
    assert fpsim.encode(1.0, "tf32").dtype == jnp.uint32
    assert fpsim.encode(1.0, "fp32").dtype == jnp.uint32
    assert int(fpsim.encode(6.0, "e2m1")) == 0b0111
    assert float(fpsim.decode(0x3C00, "fp16")) == 1.0
    assert float(fpsim.decode(1, "bf16")) == 2.0**-133  # a float32 subnormal, exactly
    assert float(fpsim.decode((127 << 10) | 1, "tf32")) == 1 + 2**-10


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError, match="does not fit in e4m3's 8 bits"):
        fpsim.decode(0x1FF, "e4m3")
    with pytest.raises(ValueError, match="0x10"):
        fpsim.decode(np.array([3, 16]), "e2m1")
    with pytest.raises(TypeError, match="integer bit patterns"):
        fpsim.decode(1.5, "fp16")


@pytest.mark.parametrize("fmt", [f for f in fpsim.FORMATS if f.bits <= 16], ids=str)
def test_all_values_sorted_unique_finite(fmt):
    v = fpsim.all_values(fmt)
    assert (np.diff(v) > 0).all() and np.isfinite(v).all()
    assert v[-1] == fmt.max and v[0] == -fmt.max
    assert v[v > 0][0] == fmt.min_subnormal
    n_zero_codes = 1 if fmt.convention == "fnuz" else 2
    assert v.size == fmt.num_values - n_zero_codes + 1 - 2 * fmt.has_inf
    if fmt.has_inf:
        assert np.isinf(fpsim.all_values(fmt, include_inf=True)[[0, -1]]).all()


def test_all_values_refuses_wide_formats():
    with pytest.raises(ValueError, match="up to 16"):
        fpsim.all_values("tf32")


@pytest.mark.parametrize("fmt", [fpsim.FP16, fpsim.BF16, fpsim.E4M3, fpsim.E2M1], ids=str)
def test_ulp_and_neighbours(fmt):
    v = fpsim.all_values(fmt)
    pos = v[v >= 0]
    gaps = np.diff(pos)
    assert np.array_equal(np.asarray(fpsim.ulp(pos[:-1], fmt)), gaps)  # ulp = gap above
    assert np.array_equal(np.asarray(fpsim.next_up(v[:-1], fmt)), v[1:])
    assert np.array_equal(np.asarray(fpsim.next_down(v[1:], fmt)), v[:-1])
    assert float(fpsim.ulp(1.0, fmt)) == fmt.eps


def test_next_up_at_the_top():
    assert np.isinf(float(fpsim.next_up(65504, "fp16")))
    assert np.isnan(float(fpsim.next_up(448, "e4m3")))  # E4M3 has no inf
    assert float(fpsim.next_up(6, "e2m1")) == 6  # FP4 has nothing beyond max
    assert float(fpsim.next_up(-np.inf, "fp16")) == -65504
    assert float(fpsim.next_up(-0.0, "fp16")) == 2.0**-24
