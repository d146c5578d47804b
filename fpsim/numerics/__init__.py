"""Emulated low-precision arithmetic (see DESIGN.md).

* :func:`quantizer` / :func:`fake_quant`: round forward to one format and the cotangent
  backward to another (a layer boundary of a low-precision network).
* :func:`lp_sum`, :func:`lp_dot`, :func:`lp_matmul`, :func:`lp_dot_general`: sums and dot
  products with an input, product, accumulation and output format and a choice of
  accumulation order (sequential, pairwise, chunked, Kahan).
* :func:`emulate`: run any JAX function with every floating-point primitive rounded.
* :class:`AccumulatorModel`, :func:`tc_matmul`, :func:`tc_scaled_matmul`: tensor-core
  accumulation (exact products added in groups, aligned and truncated), also reached
  through ``lp_dot_general(..., accumulator=...)``.
"""

from fpsim.numerics._accumulate import ORDERS as ORDERS
from fpsim.numerics._accumulate import lp_sum as lp_sum
from fpsim.numerics._dot import lp_dot as lp_dot
from fpsim.numerics._dot import lp_dot_general as lp_dot_general
from fpsim.numerics._dot import lp_matmul as lp_matmul
from fpsim.numerics._emulate import Emulated as Emulated
from fpsim.numerics._emulate import emulate as emulate
from fpsim.numerics._policy import FLOAT32_OPS as FLOAT32_OPS
from fpsim.numerics._policy import Accumulation as Accumulation
from fpsim.numerics._policy import EmulationPolicy as EmulationPolicy
from fpsim.numerics._policy import EmulationReport as EmulationReport
from fpsim.numerics._quantizer import fake_quant as fake_quant
from fpsim.numerics._quantizer import quantizer as quantizer
from fpsim.numerics._tensor_core import PRESETS as ACCUMULATOR_PRESETS
from fpsim.numerics._tensor_core import AccumulatorModel as AccumulatorModel
from fpsim.numerics._tensor_core import get_accumulator as get_accumulator
from fpsim.numerics._tensor_core import tc_dot_general as tc_dot_general
from fpsim.numerics._tensor_core import tc_matmul as tc_matmul
from fpsim.numerics._tensor_core import tc_scaled_matmul as tc_scaled_matmul

__all__: list[str] = [
    "FLOAT32_OPS", "Accumulation", "EmulationPolicy", "EmulationReport", "Emulated",
    "emulate", "ORDERS", "fake_quant", "lp_dot", "lp_dot_general", "lp_matmul", "lp_sum",
    "quantizer", "ACCUMULATOR_PRESETS", "AccumulatorModel", "get_accumulator",
    "tc_dot_general", "tc_matmul", "tc_scaled_matmul",
]  # fmt: skip
