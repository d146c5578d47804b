"""2-D tiles and float32 scales: DeepSeek-V3's FP8 blocks, per-tensor current scaling,
NVFP4's 16x16 weight tiles; numpy (which does not flush subnormals) as the reference."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from fpsim.blocks import (
    FP8_TENSOR,
    FP8_TENSOR_POW2,
    FP8_BLOCK_1x128,
    FP8_BLOCK_128x128,
    NVFP4_16x16,
    decode_blocks,
    encode_blocks,
    get_block_format,
    quantize_blocks,
)

E4M3 = ml_dtypes.float8_e4m3fn


def _same(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return bool(
        ((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))).all()
    )


def _deepseek(block: np.ndarray) -> tuple[np.float32, np.ndarray]:
    """DeepSeek-V3's act_quant / weight_quant in numpy float32: s = amax / 448."""
    s = np.float32(np.abs(block).max()) / np.float32(448)
    y = np.clip(block / s, -448, 448).astype(E4M3).astype(np.float32)
    return s, (y * s).astype(np.float32)


def _data(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x[min(5, shape[0] - 1), 7] = 1000.0  # an outlier in one tile only
    return x


def test_128x128_tile_has_one_scale_amax_over_448():
    x = _data((256, 384))
    codes = encode_blocks(x, FP8_BLOCK_128x128)
    assert codes.scales.shape == (2, 3) and codes.scales.dtype == np.float32
    q = np.asarray(quantize_blocks(x, FP8_BLOCK_128x128))
    for i in range(2):
        for j in range(3):
            tile = x[128 * i : 128 * (i + 1), 128 * j : 128 * (j + 1)]
            s, want = _deepseek(tile)
            assert np.float32(codes.scales[i, j]) == s
            assert _same(q[128 * i : 128 * (i + 1), 128 * j : 128 * (j + 1)], want)
    assert _same(decode_blocks(codes, FP8_BLOCK_128x128), q)
    # the tile axes can be any pair: the transpose along (1, 0)
    qt = quantize_blocks(x.T.copy(), FP8_BLOCK_128x128, axis=(1, 0))
    assert _same(np.asarray(qt).T, q)


def test_1x128_activation_tiles_and_tiny_values():
    x = _data((4, 256))
    x[2] = np.random.default_rng(1).uniform(-1e-38, 1e-38, 256)  # float32 subnormals
    q = np.asarray(quantize_blocks(x, FP8_BLOCK_1x128))
    for r in range(4):
        for c in range(2):
            assert _same(
                q[r, 128 * c : 128 * (c + 1)], _deepseek(x[r, 128 * c : 128 * (c + 1)])[1]
            )
    assert np.count_nonzero(q[2]) > 200  # the tiny row survives: its own scale
    q0 = quantize_blocks(x.T.copy(), FP8_BLOCK_1x128, axis=0)
    assert _same(np.asarray(q0).T, q)


def test_per_tensor_current_scaling_and_pow2():
    x = _data((64, 48))
    codes = encode_blocks(x, FP8_TENSOR)
    assert codes.scales.shape == () and np.float32(codes.scales) == np.float32(1000) / 448
    assert _same(quantize_blocks(x, FP8_TENSOR), _deepseek(x)[1])
    c2 = encode_blocks(x, FP8_TENSOR_POW2)
    s = float(c2.scales)
    assert s == 4.0  # 1000 / 448 = 2.23 -> rounded up to a power of two
    q2 = np.asarray(quantize_blocks(x, FP8_TENSOR_POW2))
    want = (x / np.float32(4)).astype(E4M3).astype(np.float32) * np.float32(4)
    assert _same(q2, want) and np.abs(q2 / s).max() <= 448
    z = np.zeros((4, 4), np.float32)
    assert not np.asarray(quantize_blocks(z, FP8_TENSOR)).any()
    z[1, 1] = np.inf
    assert np.isnan(np.asarray(quantize_blocks(z, FP8_TENSOR))).all()


def test_nvfp4_16x16_weight_tiles():
    x = _data((32, 48))
    codes = encode_blocks(x, NVFP4_16x16)
    assert codes.scales.shape == (2, 3) and codes.elements.shape == x.shape
    q = np.asarray(quantize_blocks(x, NVFP4_16x16))
    assert _same(decode_blocks(codes, NVFP4_16x16), q)
    # one tile == the same 256 values as 16 blocks... of the 1-D format? No: one scale
    # for all 256. Check it: the tile's scale is E4M3((amax_tile / 6) / tensor_scale).
    ts = np.float32(np.abs(x).max()) / np.float32(2688)
    tile = x[16:32, 16:32]
    bs = ((np.float32(np.abs(tile).max()) / np.float32(6)) / ts).astype(E4M3)
    assert codes.scales[1, 1] == bs.view(np.uint8)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: quantize_blocks(np.ones((128, 200), np.float32), FP8_BLOCK_128x128),
         "partial"),
        (lambda: quantize_blocks(np.ones((128, 128), np.float32), FP8_BLOCK_128x128,
                                 axis=0), "pair"),
        (lambda: quantize_blocks(np.ones(128, np.float32), FP8_BLOCK_1x128, rounding="up"),
         "not offered"),
        (lambda: quantize_blocks(np.ones(128, np.float32), FP8_BLOCK_1x128,
                                 scale_mode="floor"), "amax, pow2"),
    ],
)  # fmt: skip
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tile_format_fields():
    assert FP8_BLOCK_128x128.block_size == 16384 and FP8_BLOCK_128x128.block_shape == (
        128,
        128,
    )
    assert FP8_BLOCK_1x128.bits_per_element == 8.25 and FP8_TENSOR.bits_per_element == 8.0
    assert NVFP4_16x16.bits_per_element == 4 + 8 / 256
    assert get_block_format("fp8_block_128x128") is FP8_BLOCK_128x128
