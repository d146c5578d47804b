"""The recipes' GEMM operands against torchao's CPU code, bit for bit.

``tests/fixtures/recipes/gemms.npz`` holds one linear layer (x: 128 x 256 with four
outlier features, W: 256 x 128, g: 128 x 128 spread over 2**-24 .. 2**-9) and, for each
recipe, what torchao 0.18 feeds the tensor core in each of the three GEMMs: element
codes and scales (``generate.py`` says which torchao function made each). fpsim must
make the same codes from the same operands along the same axes; where it does not, the
count of differing codes is pinned here and explained (the two libraries round the
scale differently; see ``fpsim/blocks/_fp32scale.py``).
"""

from __future__ import annotations

import pathlib
from fractions import Fraction

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import fpsim
from fpsim.blocks import FP8_TENSOR, FP8_BLOCK_1x128, FP8_BLOCK_128x128
from fpsim.nn import _recipes as recipes

FIX = np.load(pathlib.Path(__file__).parent / "fixtures" / "recipes" / "gemms.npz")
X, W, G = FIX["x"], FIX["w"], FIX["g"]
E4M3 = ml_dtypes.float8_e4m3fn


def _codes(a, bfmt, axis):
    c = fpsim.encode_blocks(a, bfmt, axis=axis)
    return np.asarray(c.elements), np.asarray(c.scales), c.tensor_scale


def _vjp(recipe):
    dot = fpsim.nn.recipe_dot_general(recipe)
    f = lambda x, w: dot(x, w, (((1,), (0,)), ((), ())))  # noqa: E731
    y, back = jax.vjp(f, jnp.asarray(X), jnp.asarray(W))
    dx, dw = back(jnp.asarray(G))
    return np.asarray(y), np.asarray(dx), np.asarray(dw)


def _close(ours, theirs, a, b):
    """Equal up to float32 summation order: |diff| <= K * 2**-24 * (|a| @ |b|)."""
    bound = a.shape[-1] * 2.0**-24 * (np.abs(a) @ np.abs(b)) + 1e-45
    np.testing.assert_array_less(np.abs(ours - theirs.astype(np.float64)), bound)


# ------------------------------------------------------------------------------ mxfp8
# (fixture operand, fpsim operand, fpsim axis, transpose fpsim's codes to torchao's)
MX_OPERANDS = {
    "fprop/x": (X, 1, False),  # x along K
    "fprop/w": (W, 0, True),  # W along K (torchao: rows of W^T)
    "dgrad/g": (G, 1, False),  # g along N
    "dgrad/w": (W, 1, False),  # W along N
    "wgrad/x": (X, 0, True),  # x along M (torchao: rows of x^T)
    "wgrad/g": (G, 0, True),  # g along M
}


@pytest.mark.parametrize("name", list(MX_OPERANDS))
def test_mxfp8_operand_codes_equal_torchao(name):
    a, axis, transpose = MX_OPERANDS[name]
    fmt = recipes.MXFP8.activation  # E4M3, blocks of 32, RCEIL
    elements, scales, _ = _codes(a, fmt, axis)
    if transpose:
        elements, scales = elements.T, scales.T
    np.testing.assert_array_equal(elements, FIX[f"mxfp8/{name}/elements"])
    np.testing.assert_array_equal(scales, FIX[f"mxfp8/{name}/scales"])


def test_mxfp8_recipe_operands_are_torchao_values():
    """The recipe's own GEMM operands (which axis each GEMM blocks) decode to
    torchao's dequantized values exactly (power-of-two scales: no rounding)."""

    def deq(name):
        e = FIX[f"mxfp8/{name}/elements"].view(E4M3).astype(np.float64)
        s = np.exp2(FIX[f"mxfp8/{name}/scales"].astype(np.float64) - 127)
        return e * np.repeat(s, 32, axis=1)

    r = recipes.MXFP8
    xq, wq = recipes.fprop_operands(r, jnp.asarray(X), jnp.asarray(W))[0]
    np.testing.assert_array_equal(np.asarray(xq), deq("fprop/x"))
    np.testing.assert_array_equal(np.asarray(wq), deq("fprop/w").T)
    gq, wq = recipes.dgrad_operands(r, jnp.asarray(G), jnp.asarray(W), None)[0]
    np.testing.assert_array_equal(np.asarray(gq), deq("dgrad/g"))
    np.testing.assert_array_equal(np.asarray(wq), deq("dgrad/w"))
    xq, gq = recipes.wgrad_operands(r, jnp.asarray(X), jnp.asarray(G), None)[0]
    np.testing.assert_array_equal(np.asarray(xq), deq("wgrad/x").T)
    np.testing.assert_array_equal(np.asarray(gq), deq("wgrad/g").T)


def test_mxfp8_gemms_match_torchao():
    y, dx, dw = _vjp("mxfp8")
    r = recipes.MXFP8
    xq, wq = map(np.asarray, recipes.fprop_operands(r, X, W)[0])
    _close(y, FIX["mxfp8/y"], xq, wq)
    gq, wq = map(np.asarray, recipes.dgrad_operands(r, G, W, None)[0])
    _close(dx, FIX["mxfp8/dx"], gq, wq.T)
    xq, gq = map(np.asarray, recipes.wgrad_operands(r, X, G, None)[0])
    _close(dw, FIX["mxfp8/dw"], xq.T, gq)


# ------------------------------------------------------------------------ fp8_current
def test_fp8_current_codes_against_torchao():
    """torchao (as Transformer Engine) multiplies by ``max / amax``; fpsim divides by
    ``amax / max`` (DeepSeek's kernels do). Each scale is rounded once, so the two
    quotients differ in their last bit for some values, and a value within that bit of
    a rounding boundary lands on the neighbouring code. That is rare (about one value
    in 2**20): none of this layer's 81,920 codes differ (the crafted test below finds
    such values); any that did would have to be neighbours."""
    fmts = {"x": FP8_TENSOR, "w": FP8_TENSOR, "g": recipes.FP8_TENSOR_E5M2}
    arrays = {"x": X, "w": W, "g": G}
    diffs = {}
    for name, fmt in fmts.items():
        elements, scale, _ = _codes(arrays[name], fmt, -1)
        theirs = FIX[f"fp8_current/{name}/elements"]
        # the scales agree as reciprocals to within one float32 rounding
        ours_inv = 1.0 / np.float64(scale)
        np.testing.assert_allclose(ours_inv, FIX[f"fp8_current/{name}/scale"], rtol=2**-23)
        ne = elements != theirs
        # differing codes are neighbours: same sign, magnitudes one step apart
        step = np.abs((elements[ne] & 0x7F).astype(int) - (theirs[ne] & 0x7F))
        assert np.all(step == 1) and np.all((elements[ne] ^ theirs[ne]) < 0x80)
        diffs[name] = int(ne.sum())
    assert diffs == EXPECTED_FP8_CURRENT_DIFFS


EXPECTED_FP8_CURRENT_DIFFS = {"x": 0, "w": 0, "g": 0}


def test_fp8_current_gemms_match_torchao():
    y, dx, dw = _vjp("fp8_current")
    assert np.max(np.abs(y - FIX["fp8_current/y"])) <= 1e-4 * np.max(np.abs(y))
    assert np.max(np.abs(dx - FIX["fp8_current/dx"])) <= 1e-3 * np.max(np.abs(dx))
    assert np.max(np.abs(dw - FIX["fp8_current/dw"])) <= 1e-3 * np.max(np.abs(dw))


# ---------------------------------------------------------------------- fp8_blockwise
BLOCKWISE = {  # fixture name: (array, format, fpsim axis, transpose to torchao's layout)
    "fprop/x": (X, FP8_BLOCK_1x128, 1, False),
    "fprop/w": (W, FP8_BLOCK_128x128, (0, 1), True),
    "dgrad/g": (G, FP8_BLOCK_1x128, 1, False),
    "dgrad/w": (W, FP8_BLOCK_128x128, (0, 1), False),
    "wgrad/g": (G, FP8_BLOCK_1x128, 0, True),
    "wgrad/x": (X, FP8_BLOCK_1x128, 0, False),
}


def test_fp8_blockwise_codes_against_torchao():
    """DeepSeek-V3's tiles: torchao's reference multiplies by ``448 / amax`` (computed
    in float64, rounded to float32); fpsim divides by ``amax / 448``. Same tiles, same
    axes; codes equal (a difference, as above, would be one step)."""
    diffs = {}
    for name, (a, fmt, axis, transpose) in BLOCKWISE.items():
        elements, scales, _ = _codes(a, fmt, axis)
        if transpose:
            elements = elements.T
        theirs = FIX[f"fp8_blockwise/{name}/elements"]
        ne = elements != theirs
        step = np.abs((elements[ne] & 0x7F).astype(int) - (theirs[ne] & 0x7F))
        assert np.all(step == 1) and np.all((elements[ne] ^ theirs[ne]) < 0x80)
        diffs[name] = int(ne.sum())
        inv = FIX[f"fp8_blockwise/{name}/inv_scale"]
        ours = np.asarray(scales).T if transpose else np.asarray(scales)
        np.testing.assert_allclose(ours.reshape(inv.shape), inv, rtol=2**-22)
    assert diffs == EXPECTED_BLOCKWISE_DIFFS


EXPECTED_BLOCKWISE_DIFFS = {
    "fprop/x": 0, "fprop/w": 0, "dgrad/g": 0, "dgrad/w": 0, "wgrad/g": 0, "wgrad/x": 0,
}  # fmt: skip


def test_fp8_blockwise_gemms_match_torchao():
    y, dx, dw = _vjp("fp8_blockwise")
    for ours, key in ((y, "y"), (dx, "dx"), (dw, "dw")):
        theirs = FIX[f"fp8_blockwise/{key}"]
        assert np.max(np.abs(ours - theirs)) <= 1e-3 * np.max(np.abs(ours)), key


# ------------------------------------------------------------------------------ nvfp4
@pytest.mark.parametrize("name,a,axis", [("x", X, 1), ("w", W, 0)])
def test_nvfp4_fprop_codes_equal_torchao(name, a, axis):
    """NVFP4's two-level scales (float32 tensor scale, E4M3 per 16) equal torchao's
    ``nvfp4_quantize`` bit for bit, elements, block scales and tensor scale."""
    elements, scales, tensor_scale = _codes(a, fpsim.NVFP4, axis)
    if axis == 0:
        elements, scales = elements.T, scales.T
    np.testing.assert_array_equal(elements, FIX[f"nvfp4/{name}/elements"])
    np.testing.assert_array_equal(scales, FIX[f"nvfp4/{name}/scales"])
    assert np.float32(tensor_scale) == FIX[f"nvfp4/{name}/tensor_scale"]


def test_nvfp4_fprop_gemm_matches_torchao():
    """The forward GEMM of ``nvfp4_1d_weights`` (torchao has no 16x16 tiles)."""
    r = recipes.RECIPES["nvfp4_1d_weights"]
    xq, wq = map(np.asarray, recipes.fprop_operands(r, X, W)[0])
    y = np.asarray(recipes._mm(xq, wq, (((1,), (0,)), ((), ()))))
    _close(y, FIX["nvfp4/y"], xq, wq)


def test_fp8_current_scale_rounding_disagreement_near_ties():
    """Crafted: amax 3.3 (so ``448 / 3.3`` and ``3.3 / 448`` are both inexact) and
    values within 3 float32 steps of the midpoint between two E4M3 codes. Multiplying
    by the rounded ``max / amax`` (torchao, TE) and dividing by the rounded
    ``amax / max`` (fpsim, DeepSeek) then round 8 of the 833 to different neighbours.
    Neither is the exact quotient ``x * 448 / amax`` rounded once: of the 8, fpsim's
    code is the nearer to it in 2, torchao's in 6."""
    x = FIX["fp8_current/ties/x"]
    ours, _, _ = _codes(x, FP8_TENSOR, -1)
    theirs = FIX["fp8_current/ties/elements"]
    ne = np.flatnonzero(ours != theirs)
    assert np.all(np.abs(ours[ne].astype(int) - theirs[ne]) == 1)
    assert len(x) - 1 == 833 and len(ne) == 8
    values = np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float64)
    amax = Fraction(float(x[0]))
    nearer = {"fpsim": 0, "torchao": 0}
    for i in ne:
        exact = Fraction(float(x[i])) * 448 / amax
        d_ours = abs(Fraction(values[ours[i]]) - exact)
        d_theirs = abs(Fraction(values[theirs[i]]) - exact)
        nearer["fpsim" if d_ours < d_theirs else "torchao"] += 1
    assert nearer == {"fpsim": 2, "torchao": 6}
