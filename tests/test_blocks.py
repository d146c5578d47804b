"""Block formats: the contract, properties, and clear errors for bad input."""

from __future__ import annotations

import jax
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fpsim.blocks import (
    BLOCK_FORMATS,
    MXFP4,
    MXFP8_E4M3,
    MXINT8,
    NVFP4,
    BlockCodes,
    BlockFormat,
    decode_blocks,
    encode_blocks,
    get_block_format,
    quantize_blocks,
)
from fpsim.formats import E4M3, E8M0

MX_FORMATS = [f for f in BLOCK_FORMATS if not f.tensor_scale]


def _same(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return bool(
        ((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))).all()
    )


def test_contract_fields():
    assert MXFP8_E4M3.block_size == 32 and MXFP8_E4M3.scale is E8M0
    assert MXFP8_E4M3.scale_mode == "floor" and not MXFP8_E4M3.tensor_scale
    assert NVFP4.block_size == 16 and NVFP4.scale is E4M3 and NVFP4.tensor_scale
    assert MXINT8.element == "int8"
    bits = {f.name: f.bits_per_element for f in BLOCK_FORMATS}
    assert bits["mxfp8_e4m3"] == 8.25 and bits["mxfp6_e2m3"] == 6.25
    assert bits["mxfp4"] == 4.25 and bits["nvfp4"] == 4.5
    assert hash(MXFP4) == hash(get_block_format("MXFP4"))
    assert get_block_format("mxfp8") is MXFP8_E4M3


def test_saturation_957_becomes_896():
    # amax 957 = 1.87 * 2**9: FLOOR scale 2**(9 - 8) = 2; 957 / 2 = 478.5 > 448 -> 448
    x = np.zeros(32, np.float32)
    x[0] = 957.0
    assert float(quantize_blocks(x, "mxfp8")[0]) == 896.0
    assert float(quantize_blocks(x, "mxfp8", scale_mode="ceil")[0]) == 960.0


def test_tiny_values_exact_despite_subnormal_flush():
    # float32 subnormals: XLA on CPU flushes them in float arithmetic
    x = np.random.default_rng(1).uniform(0, 1e-38, (8, 32)).astype(np.float32)
    et = ml_dtypes.float8_e4m3fn
    want = (x.astype(np.float64) * 2.0**127).astype(et).astype(np.float64) * 2.0**-127
    assert _same(quantize_blocks(x, "mxfp8"), want.astype(np.float32))
    assert np.count_nonzero(np.asarray(quantize_blocks(x, "mxfp8"))) > 200


def test_rceil_zero_code_block_gives_zeros():
    x = np.full(32, 2.0**-125, np.float32)  # d = amax / 448 < 2**-127 -> code 0
    codes = encode_blocks(x, "mxfp8", scale_mode="rceil")
    assert int(codes.scales[0]) == 0
    assert not np.asarray(quantize_blocks(x, "mxfp8", scale_mode="rceil")).any()
    assert float(quantize_blocks(x, "mxfp8")[0]) == 2.0**-125  # FLOOR keeps them


def test_mxint8_minus_two_and_negative_zero():
    x = np.full(32, 0.5, np.float32)
    x[0], x[1], x[2] = -1.0, -0.0, 1.0  # amax 1: scale 2**0; -1 * 64 = -64
    codes = encode_blocks(x, MXINT8)
    assert int(codes.elements[0]) == 0xC0 and int(codes.elements[1]) == 0
    y = np.full(32, 0.1, np.float32)
    y[0] = -1.999
    assert float(quantize_blocks(y, MXINT8)[0]) == -2.0  # -127.9 rounds to -128


def test_nvfp4_all_zero_and_nonfinite():
    assert not np.asarray(quantize_blocks(np.zeros((2, 32), np.float32), NVFP4)).any()
    x = np.ones((2, 32), np.float32)
    x[1, 5] = np.nan
    assert np.isnan(np.asarray(quantize_blocks(x, NVFP4))).all()


def test_jit_vmap_and_axis():
    x = np.random.default_rng(2).standard_normal((3, 64, 4)).astype(np.float32)
    f = jax.jit(lambda v: quantize_blocks(v, "mxfp6_e3m2", axis=1))
    moved = np.moveaxis(
        np.asarray(quantize_blocks(np.moveaxis(x, 1, -1), "mxfp6_e3m2")), -1, 1
    )
    assert _same(f(x), moved)
    assert _same(jax.vmap(f)(x[None])[0], moved)
    codes = encode_blocks(x, "mxfp6_e3m2", axis=1)
    assert codes.elements.shape == x.shape and codes.scales.shape == (3, 2, 4)
    assert _same(decode_blocks(codes, "mxfp6_e3m2", axis=1), moved)


def test_stochastic_rounding_unbiased_and_keyed():
    x = np.tile(np.array([1.25] + [4.0] * 15, np.float32), (4000, 1))  # E2M1: 1 or 1.5
    x = np.tile(x, (1, 2))
    q = np.asarray(quantize_blocks(x, MXFP4, rounding="stochastic", key=jax.random.key(0)))
    assert set(np.unique(q[:, 0])) == {1.0, 1.5}
    assert abs(q[:, 0].mean() - 1.25) < 0.02
    q8 = quantize_blocks(
        x, NVFP4, rounding="stochastic", key=jax.random.key(0), random_bits=8
    )
    assert abs(float(np.asarray(q8)[:, 0].mean()) - 1.25) < 0.02
    qi = quantize_blocks(x[:, :16].repeat(2, 1), MXINT8, rounding="stochastic", key=1)
    assert np.asarray(qi).shape == (4000, 32)


_BAD_CODES = BlockCodes(np.zeros(32, np.uint8), np.zeros(2, np.uint8), None)
_ONES = np.ones(32, np.float32)


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda: quantize_blocks(_ONES[:16], "mxfp8"), ValueError, "block size 32"),
        (lambda: quantize_blocks(np.ones(48, np.float32), "mxfp8"), ValueError, "partial"),
        (lambda: quantize_blocks(_ONES, "mxfp8", scale_mode="round"),
         ValueError, "floor, ceil, even, rceil"),
        (lambda: quantize_blocks(_ONES, "mxfp8", rounding="stochastic"),
         ValueError, "key"),
        (lambda: quantize_blocks(np.ones(32, np.int32), "mxfp8"), TypeError, "floating"),
        (lambda: quantize_blocks(_ONES, "mxfp9"), ValueError, "mxfp8"),
        (lambda: quantize_blocks(_ONES, "nvfp4", scale_mode="ceil"),
         ValueError, "MX"),
        (lambda: BlockFormat("x", E4M3, scale=E4M3), ValueError, "NVFP4"),
        (lambda: decode_blocks(_BAD_CODES, "mxfp8"), ValueError, "expected"),
    ],
)  # fmt: skip
def test_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()


_floats = hnp.arrays(
    np.float32,
    (2, 32),
    elements=st.floats(-(2.0**100), 2.0**100, width=32, allow_subnormal=True),
)


@settings(max_examples=25, deadline=None)
@given(x=_floats, k=st.integers(0, len(BLOCK_FORMATS) - 1), mode=st.sampled_from(
    ["floor", "ceil", "even", "rceil"]))  # fmt: skip
def test_properties(x, k, mode):
    bfmt = BLOCK_FORMATS[k]
    mode = None if bfmt.tensor_scale or (bfmt is MXINT8 and mode == "rceil") else mode
    q = np.asarray(quantize_blocks(x, bfmt, scale_mode=mode))
    codes = encode_blocks(x, bfmt, scale_mode=mode)
    assert _same(decode_blocks(codes, bfmt), q)  # decode(encode(x)) == quantize(x)
    if not bfmt.tensor_scale:
        assert _same(quantize_blocks(q, bfmt, scale_mode=mode), q)  # idempotent (MX)
        # on the grid: every value is an element value times the block's scale
        scale = np.exp2(np.asarray(codes.scales, np.float64) - 127)[..., None]
        scale = np.repeat(scale, bfmt.block_size, -1).reshape(q.shape)
        elems = q.astype(np.float64) / scale
        if bfmt is MXINT8:
            assert np.all(elems * 64 == np.round(elems * 64)) and np.abs(elems).max() <= 2
        else:
            grid = set(np.asarray(decode_blocks(
                BlockCodes(np.arange(256, dtype=np.uint8)[: 1 << bfmt.element.bits],
                           np.full(1, 127, np.uint8), None),
                BlockFormat("g", bfmt.element, block_size=1 << bfmt.element.bits),
            )).tolist())  # fmt: skip
            assert set(elems.ravel().tolist()) <= grid


def _wide_blocks(seed: int, n_blocks: int = 256, block: int = 32) -> np.ndarray:
    """Blocks whose scales span most of E8M0's range; each block also holds values far
    below its amax, signed zeros, float32 subnormals, and a power-of-two amax or two."""
    rng = np.random.default_rng(seed)
    e = rng.integers(-110, 110, (n_blocks, 1))
    x = rng.standard_normal((n_blocks, block)) * np.exp2(
        e + rng.uniform(-40, 0, (n_blocks, block))
    )
    x = x.astype(np.float32)
    x[:, 0] = -0.0
    x[::3, 1] = np.float32(3e-39) * rng.choice([-1, 1], x[::3, 1].shape)  # subnormals
    x[::5, 2] = np.exp2(e[::5, 0]).astype(np.float32)  # an exact power of two
    x[::7, 3] = np.float32(np.inf)
    x[-4:] = rng.uniform(-1e-38, 1e-38, (4, block))  # blocks of float32-subnormal size
    return x


@pytest.mark.parametrize("rounding", ["nearest", "toward_zero", "stochastic"])
@pytest.mark.parametrize("bfmt", [f for f in BLOCK_FORMATS if not f.tensor_scale])
def test_mx_fast_path_bit_identical_to_exact_path(bfmt, rounding):
    """The float-multiplication path equals the exact integer path (ldexp), bit for bit
    (the same random words for stochastic rounding), blocks of subnormals included."""
    import jax.numpy as jnp

    from fpsim.blocks import _f32, _mx

    x = jnp.asarray(_wide_blocks(3).reshape(-1, 8, 32))
    key = jax.random.key(5) if rounding == "stochastic" else None
    modes = ["floor", "ceil", "even"] + ([] if bfmt is MXINT8 else ["rceil"])
    for mode in modes:
        code = _mx.scale_codes(x, bfmt, mode)
        args = (bfmt, mode, rounding, key, None)
        q = _mx._fast_elements(x, code, *args)
        fast = _mx.apply_scale(q, code)
        slow_q = _mx._slow_elements(x, code, *args)
        slow = _f32.ldexp(slow_q, (code - 127)[..., None])
        slow = jnp.where((code == 255)[..., None], jnp.nan, slow)
        assert _same(q, slow_q), (bfmt.name, mode)
        assert _same(fast, slow), (bfmt.name, mode)


@pytest.mark.parametrize("rounding", ["nearest", "toward_zero", "stochastic"])
def test_nvfp4_fast_path_bit_identical_to_exact_path(rounding):
    """The float-multiplication path equals the exact integer path (ldexp, mul_narrow),
    on tensors of ordinary, huge and tiny (float32-subnormal) values."""
    import jax.numpy as jnp

    from fpsim.blocks import _nvfp4

    rng = np.random.default_rng(4)
    x = rng.standard_normal((512, 16)) * np.exp2(
        rng.uniform(-12, 12, (512, 1)) + rng.uniform(-30, 0, (512, 16))
    )
    x = x.astype(np.float32)
    x[:, 0], x[::5, 1] = -0.0, np.exp2(np.round(np.log2(np.abs(x[::5, 2]))))
    key = jax.random.key(5) if rounding == "stochastic" else None
    for scale in (1.0, 2.0**-60, 2.0**-100, 2.0**-125, 2.0**-135, 2.0**100):
        xs = jnp.asarray((x * np.float64(scale)).astype(np.float32))
        xs = xs.at[::9, 5].set(np.float32(-3e-39)).at[::11, 6].set(rng.uniform(0, 1e-38))
        ts, bs, safe_ts = _nvfp4.scales(xs)
        rcp = _nvfp4._reciprocal(ts, bs, safe_ts)
        q = _nvfp4._fast_elements(xs, rcp, rounding, key, None)
        slow_q = _nvfp4._slow_elements(xs, rcp, rounding, key, None)
        assert _same(q, slow_q), scale
        assert _same(_nvfp4.dequantize(q, ts, bs), _nvfp4._slow_dequantize(q, ts, bs))
        assert _same(quantize_blocks(xs, NVFP4, rounding=rounding, key=key),
                     _nvfp4._slow_dequantize(slow_q, ts, bs))  # fmt: skip
