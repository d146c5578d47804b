"""E8M0 (OCP MX's scale type) bit for bit against ml_dtypes.float8_e8m0fnu."""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest

import fpsim
from fpsim.formats import E8M0, get_format

T = ml_dtypes.float8_e8m0fnu


def _ref_codes(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(x, np.float32).astype(T).view(np.uint8)


def _same(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return bool(
        np.array_equal(a.view(np.uint32), b.view(np.uint32))
        or (
            np.array_equal(np.isnan(a), np.isnan(b))
            and np.array_equal(
                a[~np.isnan(a)].view(np.uint32), b[~np.isnan(b)].view(np.uint32)
            )
        )
    )


def test_format_fields():
    assert get_format("e8m0") is E8M0 and get_format("float8_e8m0fnu") is E8M0
    assert (E8M0.bits, E8M0.emin, E8M0.emax) == (8, -127, 127)
    assert E8M0.max == 2.0**127 and E8M0.min_normal == E8M0.min_subnormal == 2.0**-127
    assert E8M0.num_values == 255 and E8M0.dtype_name == "float8_e8m0fnu"
    assert not E8M0.has_inf and E8M0.has_nan
    info = ml_dtypes.finfo(T)
    assert float(info.max) == E8M0.max and float(info.tiny) == E8M0.min_normal


def test_fnu_needs_exponent_only():
    with pytest.raises(ValueError, match="mantissa_bits must be 0"):
        fpsim.Format("x", 8, 1, bias=127, convention="fnu")


def test_decode_all_256_codes():
    codes = np.arange(256, dtype=np.uint8)
    ref = codes.view(T).astype(np.float32)
    got = np.asarray(fpsim.decode(codes, E8M0))
    assert _same(got, ref)
    assert got[0] == 2.0**-127 and got[127] == 1.0 and np.isnan(got[255])


_TINY = np.float32(2.0**-149)
_UP, _DOWN = np.float32(2.0**-127) + _TINY, np.float32(2.0**-127) - _TINY
EDGES = np.array(
    [0.0, -0.0, 1.0, -1.0, 1.5, 3.0, 0.75, 2.0**127, 1.5 * 2.0**127, 1.4999999 * 2.0**127,
     3.4e38, np.inf, -np.inf, np.nan, -np.nan, 2.0**-126, 1.5 * 2.0**-126, 2.0**-127,
     _UP, _DOWN,
     1.4 * 2.0**-127, 2.0**-128, 2.0**-149, -(2.0**-149), 1e-45, 1.0000001, 1.4999999,
     1.5000001, -1.5],
    dtype=np.float32,
)  # fmt: skip


@pytest.mark.parametrize("what", ["edges", "random", "subnormals"])
def test_quantize_encode_like_ml_dtypes(what):
    rng = np.random.default_rng(0)
    if what == "edges":
        x = EDGES
    elif what == "random":
        x = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
        x = x.view(np.float32)
    else:  # every positive float32 subnormal: ml_dtypes' own rule lives here
        x = np.arange(0, 1 << 23, dtype=np.uint32).view(np.float32)
    ref = _ref_codes(x)
    assert np.array_equal(np.asarray(fpsim.encode(x, E8M0)), ref)
    with np.errstate(all="ignore"):
        want = x.astype(T).astype(np.float32)
    assert _same(fpsim.quantize(x, E8M0), want)


def test_rules_read_off_ml_dtypes():
    """The rules of the _e8m0 docstring, with the values that show them."""
    enc = lambda v: int(fpsim.encode(np.float32(v), E8M0))  # noqa: E731
    assert enc(1.5) == 128 and enc(3.0) == 129 and enc(0.75) == 127  # ties go up
    assert enc(1.4999999) == 127  # below the arithmetic midpoint: down, though > sqrt(2)
    assert enc(2.0**-127) == 0 and enc(2.0**-128) == 0 and enc(2.0**-149) == 0
    tiny = np.float32(2.0**-149)
    assert enc(np.float32(2.0**-127) + tiny) == 0  # subnormals: the midpoint rule too
    assert enc(np.float32(1.5 * 2.0**-127) - tiny) == 0
    assert enc(1.5 * 2.0**-127) == 1 and enc(1.75 * 2.0**-127) == 1  # tie: up
    for bad in (0.0, -0.0, -1.0, np.inf, -np.inf, np.nan, 1.5 * 2.0**127):
        assert enc(bad) == 0xFF


def test_float64_host_input_goes_through_float32():
    """A float64 host array becomes float32 first (as JAX without x64 does), then E8M0.

    ml_dtypes 0.7 converts float64 directly instead: 1e-300 goes to 2**-127 there (code
    0; through float32 it is 0.0, which is NaN), and a float64 just below the midpoint
    ``1.5 * 2**-127`` stays at code 0 (through float32 it rounds up to the midpoint).
    """
    x = np.array([2.0**-127 * (1 + 2.0**-30), 1.4 * 2.0**-127, 1e-300, 1.5, 1e300])
    with np.errstate(all="ignore"):
        ref = x.astype(np.float32).astype(T).view(np.uint8)
    got = np.asarray(fpsim.encode(x, E8M0))
    assert np.array_equal(got, ref) and got.tolist() == [0, 0, 255, 128, 255]


def test_directed_and_saturate():
    x = np.array([1.0, 1.0000001, 1.9, 2.0**-127, 1.2 * 2.0**-127, 2.0**-140, 3e38, np.inf])
    x = x.astype(np.float32)
    up = np.asarray(fpsim.encode(x, E8M0, "up")).tolist()
    assert up == [127, 128, 128, 0, 1, 0, 255, 255]
    down = np.asarray(fpsim.encode(x, E8M0, "down")).tolist()
    assert down == [127, 127, 127, 0, 0, 0, 254, 255]
    sat = np.asarray(fpsim.encode(x, E8M0, saturate=True)).tolist()
    assert sat[-2:] == [254, 254]
    with pytest.raises(ValueError, match="not supported"):
        fpsim.quantize(x, E8M0, "stochastic", key=jax.random.key(0))


def test_jit_and_vmap():
    x = np.array([[0.3, 5.0], [1e-39, 7.0]], np.float32)
    f = jax.jit(lambda v: fpsim.quantize(v, E8M0))
    assert _same(f(x), x.astype(T).astype(np.float32))
    assert _same(jax.vmap(f)(x), x.astype(T).astype(np.float32))


def test_all_values():
    vals = fpsim.all_values(E8M0)
    assert len(vals) == 255 and vals[0] == 2.0**-127 and vals[-1] == 2.0**127


@pytest.mark.slow
def test_exhaustive_all_float32():
    step = 1 << 26
    for start in range(0, 1 << 32, step):
        b = np.arange(start, start + step, dtype=np.uint64).astype(np.uint32)
        x = b.view(np.float32)
        got = np.asarray(fpsim.encode(x, E8M0))
        assert np.array_equal(got, _ref_codes(x)), hex(start)
