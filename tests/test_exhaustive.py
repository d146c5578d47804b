"""Every one of the 2^32 float32 inputs, against ml_dtypes bit for bit (pytest -m slow)."""

import time

import numpy as np
import pytest
from conftest import ml_round

import fpsim

CHUNK = 1 << 24


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [fpsim.FP16, fpsim.BF16, fpsim.E4M3, fpsim.E5M2], ids=str)
def test_all_float32_inputs(fmt):
    t0 = time.perf_counter()
    mismatches = 0
    for start in range(0, 1 << 32, CHUNK):
        bits = np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32)
        x = bits.view(np.float32)
        got = np.asarray(fpsim.quantize(x, fmt))
        want = ml_round(x, fmt)
        # bit for bit, NaN patterns included (sign and payload, as ml_dtypes)
        mismatches += int(np.sum(got.view(np.uint32) != want.view(np.uint32)))
    seconds = time.perf_counter() - t0
    print(f"\n{fmt.name}: {mismatches} bit mismatches in 2^32 inputs, {seconds:.0f} s")
    assert mismatches == 0
