"""Benchmark fpsim's tensor-core accumulator models against XLA's float32 dot.

For each preset of :data:`fpsim.numerics.ACCUMULATOR_PRESETS`, ``tc_matmul`` of two
``n x n`` matrices (inputs already on the input format's grid) against ``a @ b`` in
float32, both jitted and timed in this run (median of interleaved runs after warm-up),
so the ratio holds under load.

Run: ``python benchmarks/tensor_core.py [--sizes 512 256] [--presets hopper_fp8 ...]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import fpsim
from fpsim.numerics import ACCUMULATOR_PRESETS, tc_matmul

#: the input format each preset is measured with
INPUTS = {"fp32": "fp16", "v100_fp16": "fp16", "a100_fp16": "fp16", "a100_tf32": "tf32",
          "h100_fp16": "fp16", "h100_tf32": "tf32", "hopper_fp8": "e4m3",
          "hopper_fp8_promote128": "e4m3"}  # fmt: skip


def median_times(fns, *args, runs: int = 5) -> list[float]:
    """Median seconds per call of each fn, runs interleaved so load noise hits all alike."""
    for fn in fns:
        jax.block_until_ready(fn(*args))
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    p.add_argument("--presets", nargs="+", default=list(ACCUMULATOR_PRESETS))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    print(f"jax {jax.__version__}, {platform.machine()}, {jax.devices()[0].device_kind}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    xla = jax.jit(lambda a, b: a @ b)
    for n in args.sizes:
        for name in args.presets:
            fmt = INPUTS[name]
            a = fpsim.quantize(jax.random.normal(jax.random.key(0), (n, n)), fmt)
            b = fpsim.quantize(jax.random.normal(jax.random.key(1), (n, n)), fmt)
            tc = jax.jit(lambda a, b, name=name, fmt=fmt: tc_matmul(a, b, name, inputs=fmt))
            t_x, t_tc = median_times([xla, tc], a, b, runs=args.runs)
            print(f"{n}^3 {name:<22} {fmt:<5} tc {t_tc * 1e3:9.2f} ms | XLA f32 "
                  f"{t_x * 1e3:7.3f} ms | ratio {t_tc / t_x:7.1f}x", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
