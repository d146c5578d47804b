"""Time per jitted training step under each fpsim.nn preset, relative to plain float32.

Run: python benchmarks/train_step.py [--repeats 9] [--watch] [--model mlp|block|both]

Two models: an MLP 784-1024-1024-10 at batch 256, and a transformer block (width 128,
4 heads, 64 tokens, batch 32). The baseline is the same model's ordinary float32 training
step (jax.grad + optax, no fpsim). Each preset's step is fpsim.nn.make_train_step (with
``--watch``: also collecting per-layer statistics). Timings are medians of --repeats
runs after a warm-up, interleaved with the baseline, all in this one run.

The transformer block also runs today's recipes (:data:`RECIPES`: every linear layer's
three GEMMs quantized as the recipe says, NVFP4 with its Hadamard transform and
stochastic rounding), with the input projection (32 features: not a whole 128-tile)
and the 10-way head (10 outputs) kept in float32, and no recipe statistics. The MLP's
784 input features are not a whole block either, so it runs the element presets only.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import flax.linen as nn
import jax
import optax

import fpsim

PRESETS = ("float32", "fp16_mixed", "bf16_mixed", "fp16_pure", "fp8_hybrid")
#: Issue 13's goals for the transformer block: at most this many times the float32 step.
GOALS = {"fp16_mixed": 1.3, "fp16_pure": 1.5, "bf16_mixed": 1.3}
#: Recipes timed on the transformer block, with issue 15's goals (times float32).
RECIPES = {"fp8_current": 2.0, "fp8_blockwise": 2.0, "mxfp8": 2.5, "nvfp4": 3.0}
KEEP = ("Dense_0", "Dense_3")  # the block's input projection and 10-way head


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(1024)(x))
        x = nn.relu(nn.Dense(1024)(x))
        return nn.Dense(10)(x)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Dense(128)(x)
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4)(h, h)
        h = nn.LayerNorm()(x)
        x = x + nn.Dense(128)(nn.gelu(nn.Dense(512)(h)))
        return nn.Dense(10)(nn.LayerNorm()(x).mean(1))


def baseline_step(model, opt):
    def step(params, opt_state, x, y):
        def loss(p):
            return fpsim.nn.cross_entropy(model.apply({"params": p}, x), y)

        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step)


def timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def bench(name, model, x, y, repeats, watch, recipes=()):
    opt = optax.adam(1e-3)
    params = model.init(jax.random.key(0), x)["params"]
    base = baseline_step(model, opt)
    base_state = (params, opt.init(params))
    steps = {}
    policies = {p: p for p in PRESETS}
    for r in recipes:
        policies[r] = fpsim.nn.get_policy(r).with_overrides(
            *((layer, "float32") for layer in KEEP)
        )
    for label, pol in policies.items():
        ts = fpsim.nn.make_train_step(model, pol, opt, watch=watch, recipe_stats=False)
        steps[label] = (ts.step, ts.init(jax.random.key(0), x))
    run_base = lambda: base(*base_state, x, y)  # noqa: E731
    timed(run_base)
    for step, state in steps.values():
        timed(lambda s=step, st=state: s(st, (x, y)))
    times = {"baseline": []} | {p: [] for p in policies}
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all alike
        times["baseline"].append(timed(run_base))
        for pol, (step, state) in steps.items():
            times[pol].append(timed(lambda s=step, st=state: s(st, (x, y))))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n### {name}")
    print("| step | median ms | vs float32 baseline |\n|---|---|---|")
    print(f"| plain float32 (jax.grad + optax) | {med['baseline'] * 1e3:.2f} | 1.00x |")
    for pol in policies:
        ratio = med[pol] / med["baseline"]
        print(f"| fpsim.nn `{pol}` | {med[pol] * 1e3:.2f} | {ratio:.2f}x |")
    if name.startswith("transformer"):  # issues 13's and 15's goals for the block
        for pol, goal in (GOALS | {r: RECIPES[r] for r in recipes}).items():
            ratio = med[pol] / med["baseline"]
            verdict = "met" if ratio <= goal else "not met"
            print(f"# goal {pol} <= {goal}x float32: {ratio:.2f}x, {verdict}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--watch", action="store_true", help="collect per-layer statistics too")
    p.add_argument("--model", choices=("mlp", "block", "both"), default="both")
    args = p.parse_args()
    dev = jax.devices()[0]
    print(
        f"# median of {args.repeats} after warm-up; watch={args.watch}; {dev.device_kind}"
    )
    print(f"# jax {jax.__version__}, {platform.processor() or platform.machine()}")
    k1, k2 = jax.random.split(jax.random.key(1))
    x = jax.random.normal(k1, (256, 784))
    y = jax.random.randint(k2, (256,), 0, 10)
    if args.model in ("mlp", "both"):
        bench("MLP 784-1024-1024-10, batch 256", MLP(), x, y, args.repeats, args.watch)
    if args.model == "mlp":
        return
    xs = jax.random.normal(k1, (32, 64, 32))
    bench("transformer block, width 128, 64 tokens, batch 32", Block(), xs, y[:32],
          args.repeats, args.watch, recipes=tuple(RECIPES))  # fmt: skip


if __name__ == "__main__":
    main()
