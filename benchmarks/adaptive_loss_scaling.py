"""Layer-wise adaptive loss scaling on the LM demo in pure FP16: Zhao et al.'s rule
against fpsim's simple rule, no loss scaling and dynamic (GradScaler) loss scaling.

Run: python benchmarks/adaptive_loss_scaling.py [--steps 80] [--depth 1] [--seed 0]

Every run trains the demo's character transformer (``fpsim.showcase.lm_demo``) under
``fp16_pure`` with Adam, from the same seed and batches; the table is the demo's own
(held-out loss, gradients flushed, skipped steps, time of the loop after compilation),
followed by the log2 of the per-layer scales the two adaptive rules chose at the first
step. Times are comparable only within one run of this script.

Measured (``--steps 80``, one block, seed 0; a 2-core machine shared with other jobs,
load average 10-13, so the times say little):

=======================  ========  ==========  =======  =====
run                      held out  grads lost  non-fin  time
=======================  ========  ==========  =======  =====
float32                  2.625     0           0        14.3s
fp16 (no loss scaling)   2.624     0.95%       0        34.9s
fp16 + loss scaling      2.625     0           0        21.9s
fp16 adaptive (simple)   nan       0           78       17.9s
fp16 adaptive (zhao)     2.624     0.60%       0        15.6s
=======================  ========  ==========  =======  =====

The simple rule lifts every layer by 2**11-2**19 at step 0 and a weight gradient
(``mlp_out``'s, summed over 1024 tokens) overflows FP16 at step 2; with plain Adam
nothing skips the step and the weights become NaN. Zhao et al.'s rule scales by 1 at
step 0 (under its normal model fewer than 1e-3 of the backward products' entries fall
below ``2**-24``); over the run it loses 0.60% of the gradients against 0.95% unscaled,
so it lifted some layers later (the later scales are not recorded). At this size no
FP16 run's held-out loss differs from float32's by more than 0.001.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import fpsim
from fpsim.showcase import lm_demo


def policy(rule: str) -> fpsim.nn.Policy:
    """``fp16_pure`` with layer-wise adaptive loss scaling by ``rule``."""
    return fpsim.nn.get_policy("fp16_pure").replace(
        name=f"fp16_pure+adaptive[{rule}]",
        adaptive=fpsim.nn.AdaptiveLossScaling(rule=rule),
    )


RUNS = (
    lm_demo.RunSpec("float32", "float32", lesson="the reference"),
    lm_demo.RunSpec("fp16 (no loss scaling)", "fp16_pure"),
    lm_demo.RunSpec("fp16 + loss scaling", "fp16_pure", loss_scaling=True),
    lm_demo.RunSpec("fp16 adaptive (simple)", policy("simple")),
    lm_demo.RunSpec("fp16 adaptive (zhao)", policy("zhao")),
)


def layer_scales(pol, config: lm_demo.LMConfig, seed: int, params=None) -> dict:
    """``{layer: log2 scale}`` that ``pol`` picks on the first training batch (with the
    initial weights, or ``params``)."""
    data = lm_demo.corpus()
    model = lm_demo.make_model(data.vocab, config)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data.train) - config.context - 1, (1, config.batch))[0]
    x, y = (jnp.asarray(a) for a in lm_demo.windows(data.train, starts, config.context))
    if params is None:
        params = model.init(jax.random.key(seed), x)["params"]

    def loss(p, x, y):
        return fpsim.nn.cross_entropy(model.apply({"params": p}, x), y)

    vg = jax.jit(fpsim.nn.value_and_grad(loss, pol, watch=False))
    report = vg(params, None, x, y)[3]
    out = {}
    for _path, owner, name, s in fpsim.nn._apply.param_paths(report.grad_scales):
        if name in ("kernel", "embedding", "scale"):
            out[owner] = int(np.log2(float(s)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = dataclasses.replace(lm_demo.FAST, steps=args.steps, depth=args.depth)
    print(f"LM demo, {config}, seed {args.seed}; load average {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    results = lm_demo.run_experiment(config, args.seed, RUNS, quiet=False)
    print(lm_demo.summary_table(results))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print("\nlog2 of each layer's scale at step 0 (initial weights, first batch):")
    for rule in ("simple", "zhao"):
        print(f"  {rule:6}", layer_scales(policy(rule), config, args.seed))


if __name__ == "__main__":
    main()
