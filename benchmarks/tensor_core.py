"""Benchmark fpsim's tensor-core accumulator models against XLA's float32 dot.

For each preset of :data:`fpsim.numerics.ACCUMULATOR_PRESETS`, ``tc_matmul`` of two
``n x n`` matrices (on the input format's grid) against ``a @ b`` in float32, both
jitted and timed in this run, runs interleaved so that load hits both alike. Two ratios:
wall-clock time, and process CPU time (all threads), which a loaded machine disturbs
less. Also printed: the path taken (see ``fpsim.numerics._tensor_core.PATHS``), the
compile time and the size of the optimised HLO.

Run: ``python benchmarks/tensor_core.py [--sizes 512 256] [--presets hopper_fp8 ...]``.
XLA on CPU vectorises with 256-bit registers by default; on an AVX-512 machine
``XLA_FLAGS=--xla_cpu_prefer_vector_width=512`` lets it use 512-bit ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

import fpsim
from fpsim.numerics import ACCUMULATOR_PRESETS, tc_matmul
from fpsim.numerics._tensor_core import _choose_path

#: the input format each preset is measured with
INPUTS = {"fp32": "fp16", "v100_fp16": "fp16", "a100_fp16": "fp16", "a100_tf32": "tf32",
          "h100_fp16": "fp16", "h100_tf32": "tf32", "hopper_fp8": "e4m3",
          "hopper_fp8_promote128": "e4m3"}  # fmt: skip


def times(fns, *args, runs: int):
    """Median (wall, CPU) seconds per call of each fn, runs interleaved."""
    wall, cpu = [[] for _ in fns], [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            wall[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
    return [
        (statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 256])
    p.add_argument("--presets", nargs="+", default=list(ACCUMULATOR_PRESETS))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    print(f"jax {jax.__version__}, {platform.machine()}, {jax.devices()[0].device_kind}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")  # fmt: skip
    print(f"{'size':>5} {'preset':<22} {'input':<5} {'path':<5} {'compile':>8} {'HLO':>7} "
          f"{'tc wall':>9} {'f32 wall':>9} {'ratio':>6} {'ratio CPU':>9}")  # fmt: skip
    for n in args.sizes:
        for name in args.presets:
            fmt = INPUTS[name]
            a = fpsim.quantize(jax.random.normal(jax.random.key(0), (n, n)), fmt)
            b = fpsim.quantize(jax.random.normal(jax.random.key(1), (n, n)), fmt)
            xla = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
            t0 = time.perf_counter()
            tc = jax.jit(lambda a, b, name=name, fmt=fmt: tc_matmul(a, b, name, inputs=fmt))
            tc = tc.lower(a, b).compile()
            t_compile = time.perf_counter() - t0
            hlo = len(tc.as_text())
            path = _choose_path("auto", ACCUMULATOR_PRESETS[name], fpsim.get_format(fmt))
            jax.block_until_ready((xla(a, b), tc(a, b)))
            (wx, cx), (wt, ct) = times([xla, tc], a, b, runs=args.runs)
            print(f"{n:>5} {name:<22} {fmt:<5} {path:<5} {t_compile:7.1f}s "
                  f"{hlo // 1000:6d}k {wt * 1e3:7.1f}ms {wx * 1e3:7.2f}ms {wt / wx:5.1f}x "
                  f"{ct / cx:8.1f}x", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
