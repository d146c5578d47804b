"""Throughput of fpsim.quantize against XLA's native conversions and ml_dtypes.

Run: python benchmarks/quantize.py [--log2n 24] [--repeats 9] [--sr-only] [--eager-only]

The last table is the cost of one eager call on 1000 values (``timeit``, median of 5 x
200 calls) against a trivial jitted call in the same run (issue 13: at most 20 us).

Every figure is the median of --repeats timed runs after a warm-up, measured in this one
run, so ratios compare like with like on whatever machine this is.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

import fpsim

NATIVE = {
    "fp16": (jnp.float16, np.float16),
    "bf16": (jnp.bfloat16, ml_dtypes.bfloat16),
    "e4m3": (jnp.float8_e4m3fn, ml_dtypes.float8_e4m3fn),
    "e5m2": (jnp.float8_e5m2, ml_dtypes.float8_e5m2),
}


def median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log2n", type=int, default=24)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--sr-only", action="store_true", help="only the stochastic rounding")
    p.add_argument("--eager-only", action="store_true", help="only the eager calls")
    args = p.parse_args()
    if args.eager_only:
        return eager()
    n = 1 << args.log2n
    rng = np.random.default_rng(0)
    host = (rng.standard_normal(n) * np.exp2(rng.uniform(-30, 20, n))).astype(np.float32)
    x = jax.device_put(host)
    rate = lambda s: n / s / 1e6  # noqa: E731  (M values/s)
    dev = jax.devices()[0]
    print(f"# {n:,} float32 values, median of {args.repeats}; {dev.device_kind}")
    print(f"# jax {jax.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'format':6} {'fpsim M/s':>10} {'native M/s':>11} {'fpsim/native':>13} "
          f"{'ml_dtypes M/s':>14}")  # fmt: skip
    for name, (jdt, ndt) in ({} if args.sr_only else NATIVE).items():
        fmt = fpsim.get_format(name)
        ours = median_seconds(jax.jit(lambda v, f=fmt: fpsim.quantize(v, f)), x,
                              repeats=args.repeats)  # fmt: skip
        native = median_seconds(jax.jit(lambda v, d=jdt: v.astype(d).astype(jnp.float32)),
                                x, repeats=args.repeats)  # fmt: skip
        with np.errstate(over="ignore"):
            mld = median_seconds(lambda v, d=ndt: v.astype(d).astype(np.float32), host,
                                 repeats=max(3, args.repeats // 3))  # fmt: skip
        print(f"{name:6} {rate(ours):10.0f} {rate(native):11.0f} {ours / native:12.2f}x "
              f"{rate(mld):14.0f}")  # fmt: skip

    print("\n# stochastic rounding to bf16 (cost relative to drawing the random bits)")
    key = jax.random.key(0)
    bits = median_seconds(jax.jit(lambda k: jax.random.bits(k, (n,), jnp.uint32)), key,
                          repeats=args.repeats)  # fmt: skip
    nearest = median_seconds(jax.jit(lambda v: fpsim.quantize(v, fpsim.BF16)), x,
                             repeats=args.repeats)  # fmt: skip
    print(f"random bits (uint32)     {rate(bits):8.0f} M/s")
    print(f"nearest                  {rate(nearest):8.0f} M/s")
    for rb in (None, 8):
        sr = median_seconds(
            jax.jit(lambda v, k, rb=rb: fpsim.quantize(v, fpsim.BF16, "stochastic", key=k,
                                                        random_bits=rb)),
            x, key, repeats=args.repeats,
        )  # fmt: skip
        label = "exact" if rb is None else f"random_bits={rb}"
        print(f"stochastic {label:13} {rate(sr):8.0f} M/s   "
              f"{sr / (bits + nearest):.2f}x of (random bits + nearest), "
              f"{sr / nearest:.2f}x nearest")  # fmt: skip
    for rb in (None, 8):  # the counter-based generator, computed inside the rounding
        sr = median_seconds(
            jax.jit(lambda v, k, rb=rb: fpsim.quantize(v, fpsim.BF16, "stochastic", key=k,
                                                        random_bits=rb, rng="hash")),
            x, key, repeats=args.repeats,
        )  # fmt: skip
        label = "exact" if rb is None else f"random_bits={rb}"
        print(f"stochastic {label:13} {rate(sr):8.0f} M/s   rng='hash': "
              f"{sr / nearest:.2f}x nearest")  # fmt: skip
    eager()


def eager() -> None:
    """Microseconds per eager ``fpsim.quantize`` call on 1000 float32 values."""
    import timeit

    x = jax.device_put(np.linspace(-3, 3, 1000, dtype=np.float32))
    trivial = jax.jit(lambda v: v * 2)
    calls = {"jitted x * 2": lambda: trivial(x)}
    calls |= {f"quantize {f}": lambda f=f: fpsim.quantize(x, f) for f in NATIVE}
    for fn in calls.values():  # compile and warm up
        for _ in range(20):
            jax.block_until_ready(fn())
    times = {k: [] for k in calls}
    for _ in range(5):  # interleaved, so load drifts hit all alike
        for k, fn in calls.items():
            t = timeit.timeit(lambda fn=fn: jax.block_until_ready(fn()), number=200)
            times[k].append(t / 200 * 1e6)
    base = statistics.median(times["jitted x * 2"])
    print("\n# eager call on 1000 float32 values (median of 5 x 200 calls)")
    for k, ts in times.items():
        us = statistics.median(ts)
        print(f"{k:16} {us:7.1f} us  {us / base:5.2f}x the trivial jitted call")


if __name__ == "__main__":
    main()
