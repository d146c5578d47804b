"""fpsim: an educational, bit-exact simulator of floating-point formats for JAX.

Every public name of the top level is listed in :data:`_NAMES` below, with the module
that defines it: read the table to find where a name lives. The names load on first
use (PEP 562), so ``import fpsim`` imports neither JAX nor NumPy, and ``fpsim explain``
answers at once; ``fpsim.quantize`` imports JAX the first time it is touched.

The names a learner needs first are here: the formats, rounding (``quantize``, ``ulp``,
``next_up``), bit patterns (``encode``, ``decode``, ``all_values``), what a format does
to a tensor (the statistics) and emulated low-precision arithmetic (``lp_sum``,
``lp_matmul``, ``emulate``). The rest lives in subpackages, also loaded on first use:

* ``fpsim.nn``: Flax integration (precision policies, per-layer statistics, training).
* ``fpsim.optim``: optax transforms (loss scaling, quantized updates, HALP).
* ``fpsim.scaling``: framework-free scaling rules (loss scaling, FP8 delayed scaling).
* ``fpsim.comm``: simulated low-precision all-reduce.
* ``fpsim.plot``: matplotlib figures and the shared figure style.
* ``fpsim.reference``: the slow, exact rounding of rational numbers (the tests' oracle).
* ``fpsim.showcase``: the demo and the committed figures; ``fpsim.cli``: the command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_FORMAT_CONSTANTS = (
    "BF16", "E2M1", "E2M3", "E3M2", "E3M4", "E4M3", "E4M3B11FNUZ", "E4M3FNUZ", "E4M3_IEEE",
    "E4M3_SAT", "E5M2", "E5M2FNUZ", "FP16", "FP32", "FP4_E2M1", "FP6_E2M3", "FP6_E3M2",
    "TF32",
)  # fmt: skip

#: Public name -> the module that defines it. This is the whole top-level API.
_NAMES: dict[str, str] = {
    # number formats (pure Python: no JAX)
    "Format": "fpsim.formats",
    "FORMATS": "fpsim.formats",
    "format_names": "fpsim.formats",
    "get_format": "fpsim.formats",
    **{name: "fpsim.formats" for name in _FORMAT_CONSTANTS},
    # rounding onto a format's grid
    "quantize": "fpsim.rounding",
    "ulp": "fpsim.rounding",
    "next_up": "fpsim.rounding",
    "next_down": "fpsim.rounding",
    "ROUNDING_MODES": "fpsim.rounding",
    "Rounding": "fpsim.rounding",
    "FormatLike": "fpsim.rounding",
    # bit patterns
    "encode": "fpsim.codec",
    "decode": "fpsim.codec",
    "all_values": "fpsim.codec",
    "code_dtype": "fpsim.codec",
    # what a format does to a tensor
    "VALUE_CLASSES": "fpsim.stats",
    "value_counts": "fpsim.stats",
    "value_classes": "fpsim.stats",
    "value_fractions": "fpsim.stats",
    "tree_value_counts": "fpsim.stats",
    "log2_histogram": "fpsim.stats",
    "ValueCounts": "fpsim.stats",
    "Log2Histogram": "fpsim.stats",
    # emulated low-precision arithmetic
    "lp_sum": "fpsim.numerics",
    "lp_dot": "fpsim.numerics",
    "lp_matmul": "fpsim.numerics",
    "lp_dot_general": "fpsim.numerics",
    "ORDERS": "fpsim.numerics",
    "emulate": "fpsim.numerics",
    "Emulated": "fpsim.numerics",
    "EmulationPolicy": "fpsim.numerics",
    "EmulationReport": "fpsim.numerics",
    "Accumulation": "fpsim.numerics",
    "FLOAT32_OPS": "fpsim.numerics",
    "quantizer": "fpsim.numerics",
    "fake_quant": "fpsim.numerics",
    # block-scaled formats (OCP MX, NVFP4, FP8 with per-tile scales)
    "E8M0": "fpsim.formats",
    **{
        name: "fpsim.blocks"
        for name in (
            "BlockFormat",
            "BlockCodes",
            "BlockStats",
            "MXFP8_E4M3",
            "MXFP8_E5M2",
            "MXFP6_E3M2",
            "MXFP6_E2M3",
            "MXFP4",
            "MXINT8",
            "NVFP4",
            "get_block_format",
            "quantize_blocks",
            "encode_blocks",
            "decode_blocks",
            "block_stats",
        )
    },  # fmt: skip
    # models of tensor-core accumulators
    "AccumulatorModel": "fpsim.numerics",
    "ACCUMULATOR_PRESETS": "fpsim.numerics",
    "get_accumulator": "fpsim.numerics",
    "tc_dot_general": "fpsim.numerics",
    "tc_matmul": "fpsim.numerics",
    "tc_scaled_matmul": "fpsim.numerics",
}

#: Subpackages, loaded as attributes on first use (``fpsim.nn``, ``fpsim.plot``, ...).
_SUBMODULES = (
    "blocks", "cli", "comm", "nn", "numerics", "optim", "plot", "reference", "scaling",
    "showcase",
    "stats",
)  # fmt: skip

__all__ = sorted(_NAMES) + ["__version__"]


def __getattr__(name: str):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"fpsim.{name}")
    raise AttributeError(f"module 'fpsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))


if TYPE_CHECKING:  # what type checkers and IDEs see; the same table as _NAMES
    from fpsim import (
        blocks,
        cli,
        comm,
        nn,
        numerics,
        optim,
        plot,
        reference,
        scaling,
        showcase,
        stats,
    )
    from fpsim.blocks import (
        MXFP4,
        MXFP6_E2M3,
        MXFP6_E3M2,
        MXFP8_E4M3,
        MXFP8_E5M2,
        MXINT8,
        NVFP4,
        BlockCodes,
        BlockFormat,
        BlockStats,
        block_stats,
        decode_blocks,
        encode_blocks,
        get_block_format,
        quantize_blocks,
    )
    from fpsim.codec import all_values, code_dtype, decode, encode
    from fpsim.formats import (
        BF16,
        E2M1,
        E2M3,
        E3M2,
        E3M4,
        E4M3,
        E4M3_IEEE,
        E4M3_SAT,
        E4M3B11FNUZ,
        E4M3FNUZ,
        E5M2,
        E5M2FNUZ,
        E8M0,
        FORMATS,
        FP4_E2M1,
        FP6_E2M3,
        FP6_E3M2,
        FP16,
        FP32,
        TF32,
        Format,
        format_names,
        get_format,
    )
    from fpsim.numerics import (
        ACCUMULATOR_PRESETS,
        FLOAT32_OPS,
        ORDERS,
        Accumulation,
        AccumulatorModel,
        Emulated,
        EmulationPolicy,
        EmulationReport,
        emulate,
        fake_quant,
        get_accumulator,
        lp_dot,
        lp_dot_general,
        lp_matmul,
        lp_sum,
        quantizer,
        tc_dot_general,
        tc_matmul,
        tc_scaled_matmul,
    )
    from fpsim.rounding import (
        ROUNDING_MODES,
        FormatLike,
        Rounding,
        next_down,
        next_up,
        quantize,
        ulp,
    )
    from fpsim.stats import (
        VALUE_CLASSES,
        Log2Histogram,
        ValueCounts,
        log2_histogram,
        tree_value_counts,
        value_classes,
        value_counts,
        value_fractions,
    )
