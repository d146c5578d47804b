"""The figures in ``figures/``: one function per figure, all listed in :data:`FIGURES`.

``fpsim figures --outdir DIR`` (or :func:`write_figures`) regenerates every PNG
deterministically: fixed seeds, the Agg renderer, no timestamps in the files. The
``demo_*`` figures come from the flagship demo's default run (``fpsim demo``: five
trainings of a small MLP on the digits data, about a minute or two on a laptop CPU),
``lm_training_curves.png`` from the language-model demo's (``fpsim demo lm``, twelve
trainings of a small transformer, many CPU-minutes): a figure of :data:`SLOW`, written
only when asked for (``fpsim figures --slow``, ``write_figures(slow=True)``, or by name
in ``--only``); otherwise the committed PNG stays as it is.

To add a figure, write a function that returns a ``matplotlib.figure.Figure`` and add
``(file name, function)`` to :data:`FIGURES` (or call :func:`register_figure`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fpsim.formats import E2M1, E2M3, E3M2, E4M3, E5M2, FP16
from fpsim.plot._style import new_figure, save


def numberline_e4m3():
    """Every value of E4M3 (OCP FP8) on one line."""
    from fpsim import plot

    fig, (ax,) = new_figure((12, 2.8))
    plot.number_line(E4M3, ax=ax)
    return fig


def numberline_small():
    """E5M2, the two FP6 formats and FP4, one above the other."""
    from fpsim import plot

    formats = (E5M2, E3M2, E2M3, E2M1)
    fig, axes = new_figure((12, 2.6 * len(formats)), rows=len(formats))
    for ax, fmt in zip(axes, formats, strict=True):
        plot.number_line(fmt, ax=ax)
    return fig


def spacing():
    """Spacing (ulp) and relative rounding error of FP32, TF32, FP16, BF16, E4M3, E5M2."""
    from fpsim import plot

    return plot.spacing_figure(("fp32", "tf32", "bf16", "fp16", "e5m2", "e4m3"))


def synthetic_gradients(n: int = 200_000, seed: int = 0) -> np.ndarray:
    """Gradient-like float32 values: random signs, log2|g| ~ Normal(-20, 6) in [-40, 0],
    and 5% exact zeros (as after a ReLU)."""
    rng = np.random.default_rng(seed)
    k = np.clip(rng.normal(-20.0, 6.0, n), -40.0, 0.0)
    g = np.exp2(k) * rng.choice([-1.0, 1.0], n)
    g[rng.random(n) < 0.05] = 0.0
    return g.astype(np.float32)


def gradient_histogram_fp16():
    """Micikevicius et al. (2017), Fig. 3, on synthetic gradients: FP16 loses most of
    them to underflow; scaling the loss by 2^12 moves them into range."""
    from fpsim import plot

    g = synthetic_gradients()
    fig, (top, bottom) = new_figure((10, 9), rows=2)
    plot.range_histogram(g, FP16, ax=top, lo=-45, hi=20, what="synthetic gradients")
    plot.range_histogram(
        g * np.float32(2**12),
        FP16,
        ax=bottom,
        lo=-45,
        hi=20,
        what="the same gradients × $2^{12}$ (loss scaling)",
    )
    return fig


def _demo_figure(name: str):
    """One of the flagship demo's figures, from its recorded default run (seed 0)."""
    from fpsim.showcase import mlp_demo

    results = mlp_demo.run_experiment(mlp_demo.DEFAULT_STEPS, 0, quiet=True)
    return mlp_demo.figures(results)[name]


def demo_training_curves():
    """Training loss of the demo's five runs (float32, FP16 with and without loss
    scaling, BF16, FP8 hybrid) on the digits data."""
    return _demo_figure("demo_training_curves.png")


def demo_loss_scale():
    """The demo's dynamic loss scale, with the skipped step marked."""
    return _demo_figure("demo_loss_scale.png")


def demo_underflow_per_layer():
    """Activation gradients flushed to zero per layer, pure FP16 without loss scaling."""
    return _demo_figure("demo_underflow_per_layer.png")


def demo_gradient_histogram():
    """The float32 run's activation gradients against FP16's range."""
    return _demo_figure("demo_gradient_histogram.png")


def lm_training_curves():
    """The language-model demo's loss figure (``fpsim demo lm``, its default run, seed
    0: twelve trainings of a small transformer; slow, see :data:`SLOW`)."""
    from fpsim.showcase import lm_demo

    results = lm_demo.run_experiment(lm_demo.DEFAULT, 0, lm_demo.RUNS, quiet=True)
    return lm_demo.loss_figure(results)


#: (file name, function returning a Figure): everything ``fpsim figures`` writes.
#: The demo's figures join this list (see :func:`register_figure`).
FIGURES: list[tuple[str, Callable]] = [
    ("numberline_e4m3.png", numberline_e4m3),
    ("numberline_e5m2_fp6_fp4.png", numberline_small),
    ("spacing_and_relative_error.png", spacing),
    ("gradient_histogram_fp16.png", gradient_histogram_fp16),
    ("demo_training_curves.png", demo_training_curves),
    ("demo_loss_scale.png", demo_loss_scale),
    ("demo_underflow_per_layer.png", demo_underflow_per_layer),
    ("demo_gradient_histogram.png", demo_gradient_histogram),
    ("lm_training_curves.png", lm_training_curves),
]


#: Figures that train a model for minutes: written only when asked for.
SLOW: frozenset[str] = frozenset({"lm_training_curves.png"})


def register_figure(filename: str, function: Callable) -> None:
    """Add (or replace) a figure that ``fpsim figures`` writes."""
    FIGURES[:] = [(n, f) for n, f in FIGURES if n != filename] + [(filename, function)]


def write_figures(outdir="figures", only=None, slow: bool = False) -> list[Path]:
    """Write every figure of :data:`FIGURES` (or those named in ``only``) to ``outdir``.

    Without ``only``, the figures of :data:`SLOW` are left out unless ``slow``; named in
    ``only`` they are written.

    Raises:
      ValueError: a name in ``only`` that is not a figure.
    """
    names = [n for n, _ in FIGURES]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(
            f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(names)}"
        )
    written = []
    for name, function in FIGURES:
        if only and name not in only:
            continue
        if not only and not slow and name in SLOW:
            continue
        fig = function()
        written.append(save(fig, Path(outdir) / name))
        fig.clear()
    return written
