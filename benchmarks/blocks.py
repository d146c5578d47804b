"""quantize_blocks against quantize to the element format, in the same run.

    PYTHONPATH=. python benchmarks/blocks.py [log2_size]   # default 24 (2**24 values)

Prints, per block format, the best-of-7 time (runs interleaved) of ``quantize_blocks``
and of ``fpsim.quantize`` to its element format (MXINT8: to E4M3 as the baseline) and
their ratio. Targets: at most 2x for MX, 3x for NVFP4.
"""

from __future__ import annotations

import sys
import time

import jax
import numpy as np

import fpsim
from fpsim.blocks import BLOCK_FORMATS, TILE_FORMATS, quantize_blocks


def _time_pair(fa, fb, x, reps: int = 7) -> tuple[float, float]:
    """Best of ``reps`` runs of each, interleaved (a, b, a, b, ...): on a shared machine
    both see the same background load, the ratio is steadier than that of two series
    timed one after the other."""
    fa(x).block_until_ready()  # compile
    fb(x).block_until_ready()
    ta, tb = [], []
    for _ in range(reps):
        for fn, times in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            fn(x).block_until_ready()
            times.append(time.perf_counter() - t0)
    return float(np.min(ta)), float(np.min(tb))


def main(log2_size: int = 24) -> None:
    x = jax.numpy.asarray(
        np.random.default_rng(0).standard_normal((1 << (log2_size - 10), 1024), np.float32)
    )
    head = f"{'format':<18}{'blocks ms':>11}{'element ms':>12}{'ratio':>8}"
    print(f"{head}  ({x.size} values)")
    for bfmt in BLOCK_FORMATS + TILE_FORMATS:
        elem = fpsim.formats.E4M3 if bfmt.element == "int8" else bfmt.element
        tb, te = _time_pair(
            jax.jit(lambda v, b=bfmt: quantize_blocks(v, b)),
            jax.jit(lambda v, e=elem: fpsim.quantize(v, e)),
            x,
        )
        print(f"{bfmt.name:<18}{tb * 1e3:>11.1f}{te * 1e3:>12.1f}{tb / te:>8.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 24)
