"""Value statistics against block formats, and subnormal inputs in block statistics."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import fpsim
from fpsim.blocks import block_stats

CLASSES = fpsim.VALUE_CLASSES


def names(codes):
    return [CLASSES[int(k)] for k in np.asarray(codes)]


def test_mxfp8_block_classes():
    """One MXFP8 block (E4M3, emax 8): amax 957 gives scale 2**(9 - 8) = 2, so 957 / 2
    = 478.5 > 448 saturates; 0.001 / 2 = 2**-10.97 < 2**-10 (half E4M3's smallest
    subnormal 2**-9) flushes; 0.003 / 2 is an E4M3 subnormal; 0.25 is normal."""
    x = np.full(32, 0.001, np.float32)
    x[:5] = [957.0, 0.25, 0.0, 0.003, -0.0]
    got = names(fpsim.value_classes(x, "mxfp8"))
    assert got[:6] == ["overflow", "normal", "zero", "subnormal", "zero", "underflow"]


def test_inf_block_and_nan_block():
    """An inf sets its block's scale to the top (as torchao does): every finite
    element of that block flushes. A NaN makes the whole block NaN."""
    x = np.ones((3, 32), np.float32)
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    got = np.asarray(fpsim.value_classes(x, "mxfp4"))
    assert set(names(got[0])) == {"normal"}
    assert names(got[1, 2:5]) == ["nan", "nan", "nan"]
    assert names(got[2, :2]) == ["inf", "underflow"]


def test_subnormal_inputs_that_flush_are_counted():
    """float32 subnormals beside a 1.0 in an MXFP8 block: scale 2**-8, so 1e-39 / 2**-8
    is far below E4M3's 2**-9 and flushes. XLA on CPU reads subnormal operands of float
    compares as zero, so a float test ``x != 0`` would miss all 31."""
    x = np.full(32, np.float32(1e-39))
    x[0] = 1.0
    st = block_stats(x, "mxfp8")
    assert float(st.underflow[0]) == 31 / 32
    c = fpsim.value_counts(x, "mxfp8")
    assert (int(c.underflow), int(c.normal), int(c.total)) == (31, 1, 32)


def test_tiny_block_is_exact_not_flushed():
    """A block of subnormals on its own gets a scale near 2**-127 and keeps them: no
    underflow (uniform(0, 1e-38), the case torchao's users reported)."""
    x = np.random.default_rng(0).uniform(1e-39, 1e-38, 32).astype(np.float32)
    c = fpsim.value_counts(x, "mxfp8")
    assert int(c.underflow) == 0 and int(c.zero) == 0


def test_counts_agree_with_block_stats_on_random_tensors():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 64)) * np.exp2(rng.integers(-12, 12, (64, 64)))
    x = x.astype(np.float32)
    for fmt in ("mxfp8", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4"):
        for axis in (0, -1):
            st = block_stats(x, fmt, axis=axis)
            c = fpsim.value_counts(x, fmt, axis=axis)
            bs = fpsim.get_block_format(fmt).block_size
            assert int(c.underflow) == round(float(np.sum(st.underflow)) * bs), fmt
            assert int(c.overflow) == round(float(np.sum(st.saturated)) * bs), fmt
            assert int(c.total) == x.size


def test_pytrees_fractions_and_jit():
    x = np.full((4, 32), 0.001, np.float32)
    x[:, 0] = 957.0
    tree = {"a": x, "b": np.arange(3)}  # integer leaves are not counted
    frac = fpsim.value_fractions(tree, "mxfp8")
    assert frac["overflow"] == 1 / 32 and frac["underflow"] == 31 / 32
    per_leaf = fpsim.stats.tree_value_counts(tree, fpsim.MXFP8_E4M3)
    assert int(per_leaf["a"].underflow) == 124 and int(per_leaf["b"].total) == 0
    jitted = jax.jit(lambda t: fpsim.value_counts(t, "mxfp8"))(tree)
    assert int(jitted.underflow) == 124


def test_block_format_needs_nearest_and_a_block_multiple():
    with pytest.raises(ValueError, match="nearest"):
        fpsim.value_counts(np.ones(32, np.float32), "mxfp8", "toward_zero")
    with pytest.raises(ValueError, match="32"):
        fpsim.value_counts(np.ones(20, np.float32), "mxfp8")
