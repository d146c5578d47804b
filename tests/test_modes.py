"""The rounding modes are one table: every reader agrees with it, and a new entry works."""

from fractions import Fraction
from typing import get_args

import numpy as np
import pytest

import fpsim
from fpsim import _modes, reference, rounding


def test_one_table_of_names():
    assert fpsim.ROUNDING_MODES == tuple(_modes.MODES) == get_args(rounding.Rounding)
    assert [m.name for m in _modes.MODES.values() if m.needs_key] == ["stochastic"]
    assert all(m.deterministic != m.needs_key for m in _modes.MODES.values())


def test_unknown_mode_lists_the_table():
    with pytest.raises(ValueError, match="unknown rounding mode 'nearst'.*toward_zero"):
        fpsim.quantize(1.0, "fp16", "nearst")


def test_overflow_directions():
    m = _modes.MODES
    assert m["nearest"].overflows(True) and m["nearest"].overflows(False)
    assert not m["toward_zero"].overflows(False) and not m["toward_zero"].overflows(True)
    assert m["up"].overflows(False) and not m["up"].overflows(True)
    assert m["down"].overflows(True) and not m["down"].overflows(False)


def test_a_new_mode_is_one_table_entry(monkeypatch):
    """Round away from zero: one RoundingMode; quantize, stats and the reference agree."""
    away = _modes.RoundingMode("away", "directed", up_positive=True, up_negative=True)
    monkeypatch.setitem(_modes.MODES, "away", away)
    fmt = fpsim.E4M3
    v = fpsim.all_values(fmt).astype(np.float64)
    x = np.concatenate([v, (v[:-1] + v[1:]) / 2, [500.0, -500.0, 1e-4, -1e-4]])
    x = x.astype(np.float32)
    got = np.asarray(fpsim.quantize(x, fmt, "away"))
    want = np.array([reference.round_value(Fraction(float(t)), fmt, "away") for t in x])
    np.testing.assert_array_equal(got, want.astype(np.float32))
    classes = [fpsim.VALUE_CLASSES[int(k)] for k in fpsim.value_classes(x, fmt, "away")]
    assert classes[-4:] == ["overflow", "overflow", "subnormal", "subnormal"]
