"""The figures in ``figures/``: one function per figure, all listed in :data:`FIGURES`.

``fpsim figures --outdir DIR`` (or :func:`write_figures`) regenerates every PNG
deterministically: fixed seeds, the Agg renderer, no timestamps in the files. Data that
would come from training (loss curves, the loss scale, underflow per layer) is synthetic
here and says so in its title; the demo replaces it with recorded runs.

To add a figure, write a function that returns a ``matplotlib.figure.Figure`` and add
``(file name, function)`` to :data:`FIGURES` (or call :func:`register_figure`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fpsim.formats import E2M1, E2M3, E3M2, E4M3, E5M2, FP16, get_format


def _figure(figsize, rows=1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(rows, 1, squeeze=False)[:, 0]


def numberline_e4m3():
    """Every value of E4M3 (OCP FP8) on one line."""
    from fpsim import plot

    fig, (ax,) = _figure((12, 2.8))
    plot.number_line(E4M3, ax=ax)
    return fig


def numberline_small():
    """E5M2, the two FP6 formats and FP4, one above the other."""
    from fpsim import plot

    formats = (E5M2, E3M2, E2M3, E2M1)
    fig, axes = _figure((12, 2.6 * len(formats)), rows=len(formats))
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
    fig, (top, bottom) = _figure((10, 9), rows=2)
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


def loss_scale_run(steps: int = 600, seed: int = 0, fmt="fp16", interval: int = 100):
    """A synthetic dynamic-loss-scaling run: the scale and which steps were skipped.

    Each step's largest gradient is log-normal; scaled by the current scale it overflows
    ``fmt`` (the step is skipped and the scale halved) or not (after ``interval`` good
    steps in a row the scale doubles).
    """
    fmt = get_format(fmt)
    rng = np.random.default_rng(seed)
    scale, good = 2.0**16, 0
    scales, skipped = np.empty(steps), np.zeros(steps, bool)
    for t in range(steps):
        scales[t] = scale
        if np.exp2(rng.normal(-4.0, 1.0)) * scale > fmt.max:
            skipped[t], scale, good = True, scale / 2, 0
        else:
            good += 1
            if good == interval:
                scale, good = scale * 2, 0
    return scales, skipped


def loss_scale():
    """A loss-scale trajectory (synthetic) with the skipped steps marked."""
    from fpsim import plot

    scales, skipped = loss_scale_run()
    fig, (ax,) = _figure((9, 4.5))
    plot.loss_scale_plot(
        scales,
        skipped,
        ax=ax,
        title="Dynamic loss scaling in FP16 "
        "(synthetic gradients): halve on overflow, double after 100 good "
        "steps",
    )
    return fig


def training_curves():
    """Loss curves of the same model in several formats (synthetic data)."""
    from fpsim import plot

    rng = np.random.default_rng(0)
    t = np.arange(400)
    base = 0.05 + 2.2 * np.exp(-t / 60)

    def noisy(floor, scale=0.03):
        return (
            base
            + floor * (1 - np.exp(-t / 80))
            + scale * rng.standard_normal(t.size) * base
        )

    e4m3 = noisy(0.15, 0.06)
    e4m3[250:] = np.nan
    runs = {
        "fp32": noisy(0.0),
        "bf16": noisy(0.01),
        "fp16 + loss scaling": noisy(0.005),
        "fp16, no loss scaling": noisy(0.5),
        "e4m3 everywhere": e4m3,
    }
    fig, (ax,) = _figure((9, 5))
    plot.training_curves(
        runs,
        ax=ax,
        logy=True,
        title="Training loss by format (synthetic example data; a cross marks divergence)",
    )
    return fig


def underflow_heatmap():
    """Fraction of activation gradients flushed to zero per layer (synthetic)."""
    from fpsim import plot

    rng = np.random.default_rng(0)
    steps = np.arange(60)
    layers = [f"dense_{i}" for i in range(6)]
    depth = np.arange(len(layers))[:, None]
    frac = 1 / (1 + np.exp(-(steps[None, :] / 10 - 3 + depth)))  # deeper layers sooner
    frac = np.clip(frac * (0.2 + 0.12 * depth) + 0.02 * rng.random(frac.shape), 0, 1)
    fig, (ax,) = _figure((9, 4.2))
    plot.underflow_heatmap(
        frac,
        layers=layers,
        ax=ax,
        label="fraction of gradient values flushed to zero in fp16",
        title="Underflow per layer during training (synthetic)",
    )
    return fig


#: (file name, function returning a Figure): everything ``fpsim figures`` writes.
#: The demo's figures join this list (see :func:`register_figure`).
FIGURES: list[tuple[str, Callable]] = [
    ("numberline_e4m3.png", numberline_e4m3),
    ("numberline_e5m2_fp6_fp4.png", numberline_small),
    ("spacing_and_relative_error.png", spacing),
    ("gradient_histogram_fp16.png", gradient_histogram_fp16),
    ("loss_scale.png", loss_scale),
    ("training_curves.png", training_curves),
    ("underflow_per_layer.png", underflow_heatmap),
]


def register_figure(filename: str, function: Callable) -> None:
    """Add (or replace) a figure that ``fpsim figures`` writes."""
    FIGURES[:] = [(n, f) for n, f in FIGURES if n != filename] + [(filename, function)]


def save(fig, path, dpi: int = 110) -> Path:
    """Save a figure as a reproducible PNG (no software/version stamp in the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return path


def write_figures(outdir="figures", only=None) -> list[Path]:
    """Write every figure of :data:`FIGURES` (or those named in ``only``) to ``outdir``.

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
        fig = function()
        written.append(save(fig, Path(outdir) / name))
        fig.clear()
    return written
