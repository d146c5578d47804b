"""Value statistics: classification against exact references, counts, histograms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fpsim
from fpsim.reference import classify, num, round_exact

FORMATS = [fpsim.FP16, fpsim.BF16, fpsim.E4M3, fpsim.E5M2, fpsim.E4M3FNUZ,
           fpsim.E5M2FNUZ, fpsim.E3M4, fpsim.E2M3, fpsim.E3M2, fpsim.E2M1,
           fpsim.E4M3_SAT, fpsim.TF32]  # fmt: skip
DIRECTED = ["nearest", "toward_zero", "up", "down"]


# --- the exact reference (Fractions, fpsim.reference): rounding and its classes -------
def reference_class(x: float, fmt: fpsim.Format, rounding: str) -> str:
    v = num(x)
    r, overflowed = round_exact(v, fmt, rounding)
    return classify(v, r, overflowed, fmt)


def interesting_values(fmt: fpsim.Format, n_random: int = 300, seed: int = 0) -> np.ndarray:
    """Boundaries of the classes (and float32 neighbours of them) plus random values."""
    f32 = np.float32
    top_ulp = 2.0 ** (fmt.emax - fmt.mantissa_bits)
    anchors = [fmt.min_subnormal / 2, fmt.min_subnormal, fmt.min_normal, fmt.max,
               fmt.max + top_ulp / 2, fmt.max + top_ulp, 1.0, 1e-40, 2.0**-149]  # fmt: skip
    vals = []
    for a in anchors:
        v = f32(min(a, 3.4e38))
        vals += [v, np.nextafter(v, f32(0)), np.nextafter(v, f32(np.inf))]
    rng = np.random.default_rng(seed)
    exps = rng.uniform(math.log2(fmt.min_subnormal) - 3, math.log2(fmt.max) + 2, n_random)
    rand = np.minimum(2.0**exps * rng.uniform(1, 2, n_random), 3.4e38)
    vals += list(rand.astype(np.float32))
    vals = np.array(vals, np.float32)
    return np.concatenate([vals, -vals, np.array([0, -0.0, np.inf, -np.inf, np.nan], f32)])


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("rounding", DIRECTED)
def test_classes_match_exact_reference(fmt, rounding):
    x = interesting_values(fmt)
    got = fpsim.value_classes(x, fmt, rounding)
    names = [fpsim.VALUE_CLASSES[int(k)] for k in np.asarray(got)]
    want = [reference_class(float(v), fmt, rounding) for v in x]
    bad = [(float(v), g, w) for v, g, w in zip(x, names, want, strict=True) if g != w]
    assert not bad, bad[:5]


@pytest.mark.parametrize(
    "fmt", [f for f in FORMATS if f.dtype_name and f.has_nan], ids=lambda f: f.name
)
def test_nearest_matches_ml_dtypes(fmt):
    """Underflow / subnormal / normal / overflow read off ml_dtypes' own conversion."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, 20000, dtype=np.uint32).view(np.float32)
    x = np.concatenate([x, interesting_values(fmt)])
    with np.errstate(invalid="ignore", over="ignore"):
        y = x.astype(jnp.dtype(fmt.dtype_name)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        want = np.select(
            [np.isnan(x), np.isinf(x), x == 0, ~np.isfinite(y), y == 0,
             np.abs(y) < fmt.min_normal],
            [6, 5, 0, 4, 1, 2], default=3,
        )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(fpsim.value_classes(x, fmt)), want)


def test_hand_checked_fp16():
    x = [2.0**-25, 2.0**-24, 2.0**-14, 65519.0, 65520.0, 0.0, -0.0]
    names = [fpsim.VALUE_CLASSES[int(k)] for k in fpsim.value_classes(x, fpsim.FP16)]
    assert names == [
        "underflow",
        "subnormal",
        "normal",
        "normal",
        "overflow",
        "zero",
        "zero",
    ]
    # toward zero, 65520 clamps to max: still an overflow in the IEEE sense
    assert fpsim.VALUE_CLASSES[
        int(fpsim.value_classes(65536.0, "fp16", "toward_zero"))
    ] == ("overflow")
    assert int(fpsim.value_classes(65535.0, "fp16", "toward_zero")) == 3


def test_float32_subnormal_inputs_are_classified_exactly():
    # 1e-40 is a float32 subnormal, which XLA's float compares on CPU see as zero
    c = fpsim.value_counts(jnp.array([1e-40, -1e-40]), fpsim.BF16)
    assert int(c.subnormal) == 2 and int(c.zero) == 0
    assert int(fpsim.value_counts(jnp.array([1e-40]), fpsim.FP16).underflow) == 1


def test_value_counts_tree_jit_and_partition():
    tree = {"a": jnp.array([0.0, 1e-9, 1e-6, 1.0, 7e4]),
            "b": [jnp.array([jnp.inf, jnp.nan])],
            "step": jnp.array(3, jnp.int32)}  # fmt: skip
    want = fpsim.ValueCounts(7, 1, 1, 1, 1, 1, 1, 1)
    jitted = jax.jit(fpsim.value_counts, static_argnums=1)
    for c in (fpsim.value_counts(tree, "fp16"), jitted(tree, fpsim.FP16)):
        assert [int(v) for v in c] == list(want)
        assert all(v.dtype == jnp.int32 for v in c)
        assert int(c.total) == sum(int(v) for v in c[1:])


def test_value_fractions_and_tree_counts():
    tree = {"a": jnp.array([0.0, 1.0, 1.0, 1e9]), "b": jnp.ones(3)}
    fr = fpsim.value_fractions(tree, "fp16")
    assert fr["normal"] == 5 / 7 and fr["zero"] == 1 / 7 and fr["overflow"] == 1 / 7
    assert set(fr) == set(fpsim.VALUE_CLASSES)
    per = fpsim.tree_value_counts(tree, "fp16")
    assert int(per["a"].overflow) == 1 and int(per["b"].normal) == 3
    assert fpsim.value_fractions(fpsim.value_counts(tree, "fp16")) == fr
    assert fpsim.value_fractions({}, "fp16")["normal"] == 0.0


def test_bad_input_errors():
    with pytest.raises(ValueError, match="nearest"):
        fpsim.value_counts(jnp.ones(2), "fp16", rounding="stochastic")
    with pytest.raises(ValueError, match="valid"):
        fpsim.value_counts(jnp.ones(2), "fp17")
    with pytest.raises(ValueError, match="lo < hi"):
        fpsim.log2_histogram(jnp.ones(2), lo=3, hi=3)


def test_log2_histogram_against_numpy():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(5000) * 10.0 ** rng.uniform(-9, 6, 5000)).astype(np.float32)
    x = np.concatenate([x, [0.0, -0.0, np.inf, np.nan, 1e-40, 3e38]]).astype(np.float32)
    h = fpsim.log2_histogram({"x": jnp.asarray(x)}, fpsim.FP16)
    lo, hi = int(h.edges[0]), int(h.edges[-1])
    assert lo == -24 - 4 and hi == 15 + 1 + 4
    a = np.abs(x[np.isfinite(x) & (x != 0)]).astype(np.float64)
    k = np.floor(np.log2(a)).astype(int)  # exact for float32 values in float64
    want = np.bincount(np.clip(k - lo, 0, hi - lo - 1), minlength=hi - lo)
    np.testing.assert_array_equal(np.asarray(h.counts), want)
    assert int(h.zeros) == 2 and int(h.nonfinite) == 2
    np.testing.assert_array_equal(np.asarray(h.edges), np.arange(lo, hi + 1))


def test_log2_histogram_default_is_all_float32_and_jits():
    h = jax.jit(fpsim.log2_histogram)(jnp.array([2.0**-149, 2.0**127, 0.75]))
    assert h.counts.shape == (277,) and int(h.counts[0]) == 1 and int(h.counts[-1]) == 1
    assert int(h.counts[-1 + 149]) == 1  # 0.75 is in [2**-1, 2**0)
