"""Edge cases an outside review found (issue 11, items 4-10), each pinned to its value."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ML_FORMATS, np_dtype

import fpsim
from fpsim.reference import round_value

E8M22 = fpsim.Format("e8m22", 8, 22)
E8M21 = fpsim.Format("e8m21", 8, 21)
DETERMINISTIC = ["nearest", "toward_zero", "up", "down"]


def _bits(x) -> list[int]:
    return np.asarray(x, np.float32).view(np.uint32).ravel().tolist()


# --- item 4: float64 host input is rounded once, for every format width ---------------
def test_double_rounding_at_22_mantissa_bits():
    # before: 1.0 (round-to-odd to float32 keeps only one extra bit for e8m22)
    assert float(fpsim.quantize(1 + 2**-23 + 2**-40, E8M22)) == 1 + 2**-22
    assert float(fpsim.quantize(-(1 + 2**-23 + 2**-40), E8M22)) == -(1 + 2**-22)
    assert float(fpsim.quantize(1 + 2**-24 + 2**-50, "fp32")) == 1 + 2**-23


@pytest.mark.parametrize(
    "fmt", [E8M22, fpsim.FP32, E8M21, fpsim.FP16, fpsim.E4M3, fpsim.E2M1]
)
@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_float64_host_input_matches_exact_reference(fmt, mode):
    rng = np.random.default_rng(7)
    exps = rng.uniform(np.log2(fmt.min_subnormal) - 2, np.log2(fmt.max) + 1, 400)
    x = 2.0**exps * rng.uniform(1, 2, 400)
    v = fpsim.all_values(fmt) if fmt.bits <= 16 else np.array([1.0, 2.0**-126])
    ties = (v[:-1] + v[1:]).astype(np.float64) / 2
    x = np.concatenate([x, ties, ties * (1 + 2**-40), ties * (1 - 2**-40)])
    x = np.concatenate([x, -x])
    got = _bits(fpsim.quantize(x, fmt, mode))
    want = _bits(np.array([round_value(Fraction(t), fmt, mode) for t in x], np.float32))
    assert got == want


def test_stochastic_rounding_of_float64_host_data_is_exact():
    # P(up) for 1 + 2**-30 in e8m21 is 2**-9; before, round-to-odd made it 0.25
    n = 1 << 15
    x = np.full(n, 1 + 2**-30)
    got = np.asarray(fpsim.quantize(x, E8M21, "stochastic", key=jax.random.key(0)))
    assert set(np.unique(got).tolist()) <= {1.0, 1 + 2**-21}
    ups = int(np.sum(got != 1.0))
    assert abs(ups - n * 2**-9) < 5 * np.sqrt(n * 2**-9)


# --- item 5: tiny float64 under x64 ---------------------------------------------------
def test_tiny_float64_to_fp32_under_x64():
    with jax.enable_x64(True):
        q = lambda v: float(fpsim.quantize(jnp.float64(v), "fp32"))  # noqa: E731
        assert q(3e-46) == 0.0  # before: 1.4e-45 (float32 carrier assumed)
        assert q(2.0**-150) == 0.0  # the tie goes to the even neighbour, 0
        assert q(2.0**-150 * (1 + 2**-40)) == 2.0**-149
        assert q(-(2.0**-151)) == 0.0 and np.signbit(q(-(2.0**-151)))
        assert q(1.4e-45) == 2.0**-149


# --- item 6: eager and jit, stated ----------------------------------------------------
def test_eager_rounds_float64_once_and_the_rule_is_documented():
    x = np.float64(1 + 2**-11 + 2**-40)
    assert float(fpsim.quantize(x, "fp16")) == 1 + 2**-10  # one rounding
    # under jit (x64 off) JAX makes it float32 first: 1 + 2**-11, a tie, goes to 1.0
    assert float(jax.jit(lambda v: fpsim.quantize(v, "fp16"))(x)) == 1.0
    assert "jax.jit" in fpsim.quantize.__doc__ and "twice" in fpsim.quantize.__doc__


# --- item 7: NaN bit patterns as ml_dtypes --------------------------------------------
_NAN_PATTERNS = [
    0x7F800001, 0x7F800002, 0x7F801FFF, 0x7F802000, 0x7F804000, 0x7F900000,
    0x7FA00000, 0x7FBFFFFF, 0x7FC00000, 0x7FC00001, 0x7FE00000, 0x7FFFFFFF,
]  # fmt: skip
_SPECIALS = np.array(
    _NAN_PATTERNS + [p | 0x80000000 for p in _NAN_PATTERNS] + [0x7F800000, 0xFF800000],
    np.uint32,
).view(np.float32)


@pytest.mark.parametrize("fmt", ML_FORMATS + [fpsim.FP32], ids=str)
def test_nan_and_inf_bits_match_ml_dtypes(fmt):
    x = np.concatenate([_SPECIALS, np.float32([1e6, -1e6, 3e38, -3e38])])
    with np.errstate(all="ignore"):
        t = x.astype(np_dtype(fmt))
    want = t.astype(np.float32)
    assert _bits(fpsim.quantize(x, fmt)) == _bits(want)
    if fmt.bits <= 16:
        view = np.uint8 if fmt.bits <= 8 else np.uint16
        assert np.asarray(fpsim.encode(x, fmt)).tolist() == t.view(view).tolist()
        codes = np.arange(1 << fmt.bits, dtype=np.uint32)
        decoded = codes.astype(view).view(np_dtype(fmt)).astype(np.float32)
        assert _bits(fpsim.decode(codes, fmt)) == _bits(decoded)


def test_nan_examples_from_the_issue():
    f = np.array([0x7F800001], np.uint32).view(np.float32)
    assert _bits(fpsim.quantize(f, "fp16")) == [0x7F802000]  # before: 0x7F800001
    assert _bits(fpsim.quantize(np.float32(np.inf), "e4m3fnuz")) == [0xFFC00000]  # 7FC00000


# --- item 8: ulp and neighbours at the ends --------------------------------------------
def test_ulp_of_inf_and_nan_is_nan():
    assert np.isnan(float(fpsim.ulp(np.inf, "fp16")))  # before: 32.0
    assert np.isnan(float(fpsim.ulp(np.nan, "e2m1")))  # before: 0.5
    assert np.isnan(float(fpsim.ulp(-np.inf, "e4m3")))
    assert float(fpsim.ulp(1e6, "fp16")) == 32.0  # past max: the top binade's spacing


def test_next_down_of_min_subnormal_in_fnuz_is_plus_zero():
    for fmt in (fpsim.E4M3FNUZ, fpsim.E5M2FNUZ, fpsim.E4M3B11FNUZ):
        got = fpsim.next_down(fmt.min_subnormal, fmt)
        assert _bits(got) == [0]  # before: -0.0 (0x80000000), which fnuz cannot hold
    assert _bits(fpsim.next_down(fpsim.FP16.min_subnormal, "fp16")) == [0]


def test_neighbours_at_the_ends_are_documented():
    assert np.isnan(float(fpsim.next_up(448.0, "e4m3")))
    assert float(fpsim.next_up(65504.0, "fp16")) == np.inf
    assert float(fpsim.next_down(-480.0, "e4m3_sat")) == -480.0
    assert float(fpsim.next_up(480.0, "e4m3_sat")) == 480.0
    for fn in (fpsim.next_up, fpsim.next_down):
        assert "e4m3_sat" in fn.__doc__


def test_neighbours_of_float64_host_values_are_exact():
    x = 1 + 2**-23 + 2**-40
    assert float(fpsim.next_up(x, E8M22)) == 1 + 2**-22
    assert float(fpsim.next_down(x, E8M22)) == 1.0
    # float32's nearest 0.1 lies above 0.1, so it is the next float32 up from 0.1
    assert float(fpsim.next_up(0.1, "fp32")) == float(np.float32(0.1))  # was one more
    assert float(fpsim.next_down(0.1, "fp16")) == 0.0999755859375


# --- item 9: formats without mantissa bits --------------------------------------------
@pytest.mark.parametrize("e", [2, 5, 7])
def test_encode_with_zero_mantissa_bits(e):
    fmt = fpsim.Format(f"e{e}m0", e, 0, convention="none")
    codes = np.arange(1 << fmt.bits, dtype=np.uint32)
    values = np.asarray(fpsim.decode(codes, fmt))
    assert np.asarray(fpsim.encode(values, fmt)).tolist() == codes.tolist()  # used to raise
    assert int(fpsim.encode(1.0, fmt)) == fmt.bias  # 2**0: the field is the bias


# --- item 10: Format validates its field types ----------------------------------------
def test_format_field_types_are_validated():
    assert fpsim.Format("x", np.int64(4), np.int32(3)) == fpsim.Format("x", 4, 3)
    assert type(fpsim.Format("x", np.int64(4), 3).exponent_bits) is int
    for kwargs, field in [
        ({"bias": 7.5}, "bias"),
        ({"exponent_bits": 4.0}, "exponent_bits"),
        ({"exponent_bits": 4.5}, "exponent_bits"),
        ({"mantissa_bits": True}, "mantissa_bits"),
        ({"bias": "7"}, "bias"),
    ]:
        args = {"name": "x", "exponent_bits": 4, "mantissa_bits": 3} | kwargs
        with pytest.raises(TypeError, match=f"Format {field} must be an integer"):
            fpsim.Format(**args)
