"""Every one of the 2^32 float32 inputs, against ml_dtypes bit for bit (pytest -m slow).

``quantize`` rounds to nearest FP16 and BF16 by XLA's own conversion (with a guard for
signalling NaNs): the sweep checks that path, the one users get, and separately the
integer rounding those formats still use with saturation, flush to zero or directed
modes.
"""

import time

import jax
import numpy as np
import pytest
from conftest import ml_round

import fpsim
from fpsim.rounding import _round_bits

CHUNK = 1 << 24

CASES = [(f, "quantize") for f in (fpsim.FP16, fpsim.BF16, fpsim.E4M3, fpsim.E5M2)]
CASES += [(fpsim.FP16, "integer"), (fpsim.BF16, "integer")]


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "path"), CASES, ids=lambda v: str(v))
def test_all_float32_inputs(fmt, path):
    if path == "integer":
        rnd = jax.jit(lambda v: _round_bits(v, None, fmt, "nearest", False, True, None))
    else:
        rnd = lambda v: fpsim.quantize(v, fmt)  # noqa: E731
    t0 = time.perf_counter()
    mismatches = 0
    for start in range(0, 1 << 32, CHUNK):
        bits = np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32)
        got = np.asarray(rnd(x))
        want = ml_round(x, fmt)
        # bit for bit, NaN patterns included (sign and payload, as ml_dtypes)
        mismatches += int(np.sum(got.view(np.uint32) != want.view(np.uint32)))
    seconds = time.perf_counter() - t0
    print(f"\n{fmt.name} ({path}): {mismatches} bit mismatches in 2^32 inputs, "
          f"{seconds:.0f} s")  # fmt: skip
    assert mismatches == 0
