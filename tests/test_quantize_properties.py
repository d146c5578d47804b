"""Properties of rounding that hold for every input (hypothesis searches for exceptions)."""

import numpy as np
from conftest import ML_FORMATS, assert_bits_equal, ml_round
from hypothesis import given, settings
from hypothesis import strategies as st

import fpsim

FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
FORMATS = st.sampled_from(ML_FORMATS + [fpsim.TF32, fpsim.Format("e5m6", 5, 6)])
MODES = st.sampled_from(["nearest", "toward_zero", "up", "down"])
BATCH = st.lists(FLOATS, min_size=1, max_size=64)


@settings(max_examples=60, deadline=None)
@given(xs=BATCH, fmt=st.sampled_from(ML_FORMATS))
def test_nearest_equals_ml_dtypes(xs, fmt):
    x = np.asarray(xs, np.float32)
    assert_bits_equal(fpsim.quantize(x, fmt), ml_round(x, fmt))


@settings(max_examples=60, deadline=None)
@given(xs=BATCH, fmt=FORMATS, mode=MODES)
def test_idempotent_and_monotone(xs, fmt, mode):
    x = np.sort(np.asarray([v for v in xs if v == v], np.float32))  # NaN-free, sorted
    q = np.asarray(fpsim.quantize(x, fmt, mode))
    assert_bits_equal(fpsim.quantize(q, fmt, mode), q)  # values on the grid stay put
    kept = q[~np.isnan(q)]  # overflow in the FP8 "fn" formats gives NaN
    assert (kept[:-1] <= kept[1:]).all()  # rounding never reorders values


@settings(max_examples=60, deadline=None)
@given(xs=BATCH, fmt=FORMATS)
def test_directed_modes_bracket_the_input(xs, fmt):
    x = np.asarray([v for v in xs if np.isfinite(v) and abs(v) <= fmt.max], np.float32)
    lo = np.asarray(fpsim.quantize(x, fmt, "down"))
    hi = np.asarray(fpsim.quantize(x, fmt, "up"))
    near = np.asarray(fpsim.quantize(x, fmt))
    assert (lo <= x).all() and (x <= hi).all()
    assert ((near == lo) | (near == hi)).all()
