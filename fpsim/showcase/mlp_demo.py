"""The flagship demo: one model, five number formats, and what happens to its gradients.

``fpsim demo`` trains the same small MLP on scikit-learn's bundled digits (8x8 images of
handwritten digits, 1,797 of them; nothing is downloaded) five times:

========================  =================================================================
run                       recipe
========================  =================================================================
float32                   the reference
fp16 (no loss scaling)    everything in FP16, weights too ("pure" FP16): as the model
                          converges, its activation gradients shrink below FP16's smallest
                          subnormal (2**-24) and are flushed to zero
fp16 + loss scaling       FP16 compute with float32 master weights and PyTorch
                          GradScaler's dynamic loss scaling (Micikevicius et al. 2017);
                          the growth interval is shortened from 2000 to 100 steps so that
                          the scale's growth shows in a short run
bf16                      BF16 compute, float32 master weights: float32's range, so no
                          underflow, but only 8 significant bits
fp8 hybrid                E4M3 forward, E5M2 backward, per-tensor delayed scaling from an
                          amax history (NVIDIA Transformer Engine's recipe)
========================  =================================================================

It prints a summary table and writes four figures (training curves, the loss scale,
underflow per layer over time, and the gradient histogram against FP16's range).
Everything is seeded: the same seed gives the same numbers (times aside).
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

DEFAULT_STEPS = 600
FAST_STEPS = 150
BATCH = 64
LEARNING_RATE = 0.1
MOMENTUM = 0.9


class RunResult(NamedTuple):
    """One training run, recorded step by step (numpy arrays over steps)."""

    name: str
    loss: np.ndarray
    loss_scale: np.ndarray
    finite: np.ndarray
    grad_underflow: np.ndarray  # fraction of nonzero activation-gradient values lost
    layer_underflow: dict[str, np.ndarray]  # the same, per layer
    last_grad_hist: Any  # fpsim.Log2Histogram of the last step's activation gradients
    test_accuracy: float
    seconds: float


def load_digits_split(seed: int = 0):
    """Digits scaled to [0, 1], shuffled with ``seed``: 1,500 to train, 297 to test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def _mlp():
    import flax.linen as nn

    class MLP(nn.Module):
        """64 -> 128 -> 128 -> 128 -> 10, ReLU."""

        @nn.compact
        def __call__(self, x):
            for width in (128, 128, 128):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(10)(x)

    return MLP()


def _recipes():
    """(name, policy preset, optimizer, loss_scale reader) of the five runs."""
    import optax

    import fpsim.optim

    sgd = optax.sgd(LEARNING_RATE, MOMENTUM)
    scaled = fpsim.optim.dynamic_loss_scaling(
        optax.sgd(LEARNING_RATE, MOMENTUM), growth_interval=100
    )
    return [
        ("float32", "float32", sgd, None),
        ("fp16 (no loss scaling)", "fp16_pure", sgd, None),
        ("fp16 + loss scaling", "fp16_mixed", scaled, fpsim.optim.current_loss_scale),
        ("bf16", "bf16_mixed", sgd, None),
        ("fp8 hybrid", "fp8_hybrid", sgd, None),
    ]


def _train_one(name, policy, optimizer, loss_scale, data, test, steps, seed, progress):
    import jax
    import jax.numpy as jnp

    import fpsim
    import fpsim.nn
    from fpsim.nn._stats import nonzero_fraction_lost

    x, y = (jnp.asarray(a) for a in data)
    ts = fpsim.nn.make_train_step(_mlp(), policy, optimizer, loss_scale=loss_scale)
    state = ts.init(jax.random.key(seed), x[:BATCH])
    order = np.random.default_rng(seed).permutation(np.arange(steps * BATCH) % len(x))
    rec: dict[str, list] = {"loss": [], "loss_scale": [], "finite": [], "under": []}
    layers: dict[str, list] = {}
    seconds = 0.0
    metrics = None
    for i in range(steps):
        idx = order[i * BATCH : (i + 1) * BATCH]
        t0 = time.perf_counter()
        state, metrics = ts.step(state, (x[idx], y[idx]))
        jax.block_until_ready(metrics["loss"])
        if i > 0:  # step 0 includes compilation
            seconds += time.perf_counter() - t0
        rec["loss"].append(float(metrics["loss"]))
        rec["loss_scale"].append(float(metrics["loss_scale"]))
        rec["finite"].append(bool(metrics["finite"]))
        rec["under"].append(float(metrics["grad_underflow"]))
        for layer, st in metrics["layers"].items():
            lost = nonzero_fraction_lost(st.grads.counts)
            layers.setdefault(layer, []).append(float(lost))
        progress.update(1)
    forward = jax.jit(lambda p, s, v: fpsim.nn.apply(ts.apply_fn, policy, p, v, state=s))
    logits = forward(state.params, state.policy_state, jnp.asarray(test[0]))
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(test[1])))
    grad_hists = [st.grads.hist for st in metrics["layers"].values()]
    hist = grad_hists[0]._replace(
        counts=sum(h.counts for h in grad_hists),
        zeros=sum(h.zeros for h in grad_hists),
        nonfinite=sum(h.nonfinite for h in grad_hists),
    )
    return RunResult(
        name,
        np.asarray(rec["loss"]),
        np.asarray(rec["loss_scale"]),
        np.asarray(rec["finite"]),
        np.asarray(rec["under"]),
        {k: np.asarray(v) for k, v in layers.items()},
        hist,
        accuracy,
        seconds,
    )


@functools.cache
def run_experiment(steps: int = DEFAULT_STEPS, seed: int = 0, quiet: bool = False):
    """Train the five runs; returns a tuple of :class:`RunResult` (cached per process)."""
    from tqdm.auto import tqdm

    data, test = load_digits_split(seed)
    recipes = _recipes()
    results = []
    with tqdm(
        total=steps * len(recipes),
        disable=True if quiet else None,
        file=sys.stderr,
        unit="step",
    ) as bar:
        for i, (name, policy, optimizer, loss_scale) in enumerate(recipes, 1):
            bar.set_description(f"{name:24}")
            t0 = time.perf_counter()
            r = _train_one(
                name, policy, optimizer, loss_scale, data, test, steps, seed, bar
            )
            results.append(r)
            if bar.disable and not quiet:  # no terminal (CI log, notebook's !fpsim demo)
                print(
                    f"  run {i}/{len(recipes)}: {name:24} {steps} steps in "
                    f"{time.perf_counter() - t0:5.1f} s, "
                    f"test accuracy {r.test_accuracy:.1%}",
                    flush=True,
                )
    return tuple(results)


def summary_table(results) -> str:
    """The table ``fpsim demo`` prints."""
    head = (
        f"{'run':24} {'test acc':>8} {'final loss':>10} {'grads lost':>10} "
        f"{'skipped':>7} {'time':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        tail = r.grad_underflow[-max(len(r.grad_underflow) // 4, 1) :]
        final_loss = float(np.mean(r.loss[-max(len(r.loss) // 10, 1) :]))
        lines.append(
            f"{r.name:24} {r.test_accuracy:8.1%} {final_loss:10.4f} {np.mean(tail):10.2%} "
            f"{int((~r.finite).sum()):7d} {r.seconds:6.1f}s"
        )
    lines += [
        "",
        "test acc: accuracy on 297 held-out digits, forward pass in the run's formats.",
        "final loss: mean training loss over the last 10% of steps.",
        "grads lost: activation-gradient values flushed to zero in the backward pass, as a",
        "  share of the nonzero values (the basis of every percentage in the figures too),",
        "  mean over the last quarter of steps.",
        "skipped: steps the loss scaler rejected because a gradient overflowed.",
        "time: training loop after compilation (fpsim simulates formats in software).",
    ]
    return "\n".join(lines)


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each step (fewer at the start)."""
    c = np.cumsum(np.asarray(values, np.float64))
    lagged = np.concatenate([np.zeros(window), c])[: len(c)]
    return (c - lagged) / np.minimum(np.arange(1, len(c) + 1), window)


def _crop(hist, lo: int, hi: int):
    """The same Log2Histogram on the binades [lo, hi), end bins holding what is outside."""
    import jax.numpy as jnp

    edges = np.asarray(hist.edges).astype(int)
    counts = np.asarray(hist.counts)
    k = edges[:-1]
    inside = counts[(k >= lo) & (k < hi)].copy()
    inside[0] += counts[k < lo].sum()
    inside[-1] += counts[k >= hi].sum()
    return hist._replace(
        counts=jnp.asarray(inside), edges=jnp.arange(lo, hi + 1, dtype=jnp.float32)
    )


def figures(results) -> dict[str, Any]:
    """The demo's figures, by file name."""
    import fpsim
    import fpsim.plot
    from fpsim.plot import new_figure

    by_name = {r.name: r for r in results}
    out = {}
    fig, (ax,) = new_figure((8, 4.5))
    fpsim.plot.training_curves(
        {r.name: running_mean(r.loss, 10) for r in results},
        ax=ax,
        logy=True,
        ylabel="training loss (mean of 10 steps)",
        title="The same MLP on digits in five number formats",
    )
    out["demo_training_curves.png"] = fig

    scaled = by_name["fp16 + loss scaling"]
    fig, (ax,) = new_figure((8, 3.8))
    fpsim.plot.loss_scale_plot(
        scaled.loss_scale,
        ~scaled.finite,
        ax=ax,
        title="Dynamic loss scale (GradScaler rules, growth every 100 good steps)",
    )
    out["demo_loss_scale.png"] = fig

    pure = by_name["fp16 (no loss scaling)"]
    fig, (ax,) = new_figure((8, 3.5))
    names = list(pure.layer_underflow)
    rows = {
        f"{k} (logits)" if k == names[-1] else k: v for k, v in pure.layer_underflow.items()
    }
    fpsim.plot.underflow_heatmap(
        rows,
        ax=ax,
        label="share of the layer's nonzero output-\ngradient values flushed to zero",
        title="Pure FP16, no loss scaling: gradients lost per layer as training converges",
    )
    out["demo_underflow_per_layer.png"] = fig

    hist = by_name["float32"].last_grad_hist
    zeros = int(hist.zeros) / max(int(hist.zeros) + int(np.sum(hist.counts)), 1)
    fig, (ax,) = new_figure((8, 4.6))
    fpsim.plot.range_histogram(
        _crop(hist, -45, 20),
        fpsim.FP16,
        ax=ax,
        title="Activation gradients of the float32 run (last step) against FP16's range\n"
        f"% = share of the nonzero values; not shown: the {zeros:.0%} exact zeros "
        "(behind ReLUs)",
    )
    out["demo_gradient_histogram.png"] = fig
    return out


def check_outdir(outdir: Path) -> str | None:
    """Why figures cannot be written to ``outdir`` (None when they can)."""
    import tempfile

    if outdir.exists() and not outdir.is_dir():
        return "exists and is not a directory"
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as e:
        return f"cannot write there ({e.strerror or e})"
    return None


def run(
    steps: int | None = None,
    seed: int = 0,
    outdir: str | None = None,
    fast: bool = False,
) -> int:
    """Entry point of ``fpsim demo``: train, print the table, write the figures.

    The output directory is checked (created if missing, and written to) before any
    training, so a bad ``outdir`` fails at once rather than after minutes.
    """
    from fpsim.plot import save

    if steps is None:
        steps = FAST_STEPS if fast else DEFAULT_STEPS
    if steps < 1:
        print("fpsim demo: error: --steps must be at least 1", file=sys.stderr)
        return 2
    outdir = Path(outdir or "fpsim-demo")
    problem = check_outdir(outdir)
    if problem:
        print(f"fpsim demo: error: --outdir {outdir}: {problem}", file=sys.stderr)
        return 2
    print(
        f"Training a 64-128-128-128-10 MLP on the digits data set, {steps} steps of "
        f"{BATCH}, five ways (seed {seed}).",
        flush=True,
    )
    results = run_experiment(steps, seed)
    print()
    print(summary_table(results))
    written = [save(fig, outdir / name) for name, fig in figures(results).items()]
    print(f"\nfigures: {', '.join(str(p) for p in written)}")
    return 0
