"""Block-scaled formats: OCP MX (MXFP8, MXFP6, MXFP4, MXINT8) and NVIDIA's NVFP4.

A block-scaled tensor stores narrow elements and one scale per block of consecutive
elements; see :mod:`fpsim.blocks._format` for the formats and :mod:`fpsim.blocks._mx`
and :mod:`fpsim.blocks._nvfp4` for how scales are chosen and where the reference
implementations (torchao, gfloat, ml_dtypes, Transformer Engine) disagree. Also here:
2-D tiles and float32 scales (DeepSeek-V3's FP8 blocks, per-tensor current scaling:
:mod:`fpsim.blocks._fp32scale`), per-block statistics (:func:`block_stats`; reduced
per tensor in the same pass as the quantization: :func:`quantize_with_summary`) and the
random Hadamard transform of NVFP4 training (:func:`random_hadamard`).

>>> import numpy as np
>>> from fpsim.blocks import MXFP4, quantize_blocks
>>> x = np.array([0.1, 0.2, 0.3, 5.0] * 8, np.float32)
>>> quantize_blocks(x, MXFP4)[:4].tolist()  # scale 2**0; 5 ties to 4
[0.0, 0.0, 0.5, 4.0]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fpsim.blocks._format import (
    BLOCK_FORMATS,
    FP8_TENSOR,
    FP8_TENSOR_POW2,
    FP32_SCALE_MODES,
    MXFP4,
    MXFP6_E2M3,
    MXFP6_E3M2,
    MXFP8_E4M3,
    MXFP8_E5M2,
    MXINT8,
    NVFP4,
    SCALE_MODES,
    TILE_FORMATS,
    BlockFormat,
    FP8_BLOCK_1x128,
    FP8_BLOCK_128x128,
    NVFP4_16x16,
    block_format_names,
    get_block_format,
)
from fpsim.formats import E8M0

# What computes (and so imports JAX) loads on first use: the formats above are plain
# Python, so `fpsim formats` can list them without starting JAX.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("BlockCodes", "decode_blocks", "encode_blocks", "quantize_blocks"), "_api"
    ),
    **dict.fromkeys(
        ("hadamard_matrix", "inverse_random_hadamard", "random_hadamard"), "_hadamard"
    ),
    **dict.fromkeys(
        (
            "EXPONENTS",
            "BlockStats",
            "BlockSummary",
            "block_stats",
            "quantize_with_summary",
        ),
        "_stats",
    ),  # fmt: skip
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"fpsim.blocks.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fpsim.blocks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from fpsim.blocks._api import BlockCodes, decode_blocks, encode_blocks, quantize_blocks
    from fpsim.blocks._hadamard import (
        hadamard_matrix,
        inverse_random_hadamard,
        random_hadamard,
    )
    from fpsim.blocks._stats import (
        EXPONENTS,
        BlockStats,
        BlockSummary,
        block_stats,
        quantize_with_summary,
    )

__all__ = [
    "BLOCK_FORMATS", "E8M0", "EXPONENTS", "FP32_SCALE_MODES", "FP8_BLOCK_1x128",
    "FP8_BLOCK_128x128", "FP8_TENSOR", "FP8_TENSOR_POW2", "MXFP4", "MXFP6_E2M3",
    "MXFP6_E3M2", "MXFP8_E4M3", "MXFP8_E5M2", "MXINT8", "NVFP4", "NVFP4_16x16",
    "SCALE_MODES", "TILE_FORMATS", "BlockCodes", "BlockFormat", "BlockStats",
    "BlockSummary", "block_format_names", "block_stats", "decode_blocks",
    "encode_blocks", "get_block_format", "hadamard_matrix", "inverse_random_hadamard",
    "quantize_blocks", "quantize_with_summary", "random_hadamard",
]  # fmt: skip
