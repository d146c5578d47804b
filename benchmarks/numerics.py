"""Benchmark fpsim.numerics: prints ratios against a float32 baseline measured in this run.

1. MLP 784-1024-1024-10, batch 256, forward + backward: ``jax.grad(loss)`` under
   ``fpsim.emulate`` (FP16 compute, float32 accumulation) vs the plain float32 step.
2. 512x512x512 matmul with an FP16 accumulator (``--accum``: others), in each order,
   vs XLA's float32 matmul, and Kahan's time over the sequential sum's.

Each timing is the median of >= 7 jitted runs after warm-up, with block_until_ready.
Run: ``python benchmarks/numerics.py [--quick] [--no-mlp] [--accum fp16 bf16 e4m3]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import fpsim


def median_times(fns, *args, runs: int = 11) -> list[float]:
    """Median seconds per call of each fn, runs interleaved so load noise hits all alike."""
    for fn in fns:  # compile + warm up
        jax.block_until_ready(fn(*args))
        jax.block_until_ready(fn(*args))
    times = [[] for _ in fns]
    for _ in range(runs):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def mlp_params(key, sizes=(784, 1024, 1024, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (m, n)) / jnp.sqrt(m), jnp.zeros(n))
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def loss(params, x, y):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    logits = x @ w + b
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=-1))


def main(quick: bool = False, mlp: bool = True, accums=("fp16",)) -> None:
    print(f"jax {jax.__version__}, {platform.machine()}, {jax.devices()[0].device_kind}, "
          f"python {platform.python_version()}")  # fmt: skip
    if mlp:
        bench_mlp()
    bench_matmul(quick, accums)


def bench_mlp() -> None:
    key = jax.random.key(0)
    params = mlp_params(key)
    x = jax.random.normal(jax.random.key(1), (256, 784))
    y = jax.nn.one_hot(jnp.arange(256) % 10, 10)

    base = jax.jit(jax.grad(loss))
    emul = jax.jit(fpsim.emulate(jax.grad(loss), fpsim.EmulationPolicy(compute="fp16")))
    t_base, t_emul = median_times([base, emul], params, x, y)
    print(f"MLP fwd+bwd  float32 {t_base * 1e3:8.2f} ms | emulate fp16 "
          f"{t_emul * 1e3:8.2f} ms | ratio {t_emul / t_base:5.2f}x")  # fmt: skip


def bench_matmul(quick: bool, accums) -> None:
    n = 128 if quick else 512
    a = jax.random.normal(jax.random.key(2), (n, n))
    b = jax.random.normal(jax.random.key(3), (n, n))
    orders = ("sequential", "chunked", "pairwise", "kahan")
    for accum in accums:
        fns = [jax.jit(lambda a, b: a @ b)] + [
            jax.jit(
                lambda a, b, o=o, acc=accum: fpsim.lp_matmul(
                    a, b, inputs="fp16", accum=acc, order=o, chunk=32
                )
            )  # fmt: skip
            for o in orders
        ]
        t_nat, *t_lp = median_times(fns, a, b, runs=7)
        t = dict(zip(orders, t_lp, strict=True))
        print(f"matmul {n}^3   float32 XLA {t_nat * 1e3:8.2f} ms")
        for order in orders:
            print(f"  {accum} accum {order:<10} {t[order] * 1e3:9.2f} ms | ratio "
                  f"{t[order] / t_nat:8.1f}x")  # fmt: skip
        print(
            f"  {accum} kahan / sequential {t['kahan'] / t['sequential']:.2f}x "
            f"(issue 13 goals for fp16: pairwise <= 20x XLA, kahan <= 3x sequential)"
        )


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128^3 instead of 512^3")
    p.add_argument("--no-mlp", action="store_true", help="skip the MLP benchmark")
    p.add_argument("--accum", nargs="+", default=["fp16"],
                   help="accumulator formats of the matmul (default fp16)")  # fmt: skip
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    main(args.quick, not args.no_mlp, args.accum)
