"""What a format does to training: loss curves, the loss scale, underflow per layer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fpsim.plot._style import OKABE_ITO, new_axes, pow2_label, style


def training_curves(
    runs: Mapping[str, Sequence[float]],
    *,
    ax=None,
    logy: bool = False,
    xlabel: str = "step",
    ylabel: str = "training loss",
    title: str | None = None,
):
    """One line per run, e.g. the same model trained in FP32, BF16, FP16 and FP8.

    A run whose values turn inf or NaN (divergence) ends at its last finite value with
    a cross and the step where it diverged.

    Args:
      runs: run name -> values, one per step (steps 0, 1, 2, ...).
      ax: axes to draw into; a new figure when None.
      logy: logarithmic y axis (losses often span decades).
      xlabel, ylabel, title: labels.

    Returns:
      The Axes; run ``name`` is the ``Line2D`` with gid ``"run:<name>"``.
    """
    ax = new_axes(ax)
    for i, (name, values) in enumerate(runs.items()):
        y = np.asarray(values, np.float64).ravel()
        s = style(i)
        bad = np.flatnonzero(~np.isfinite(y))
        label = name if not bad.size else f"{name} (diverged at step {bad[0]})"
        ax.plot(
            np.arange(y.size),
            y,
            color=s["color"],
            linestyle=s["linestyle"],
            marker=s["marker"],
            markevery=max(1, y.size // 8),
            markersize=5,
            linewidth=1.6,
            label=label,
            gid=f"run:{name}",
        )
        if bad.size and bad[0] > 0:
            ax.plot(
                bad[0] - 1,
                y[bad[0] - 1],
                marker="X",
                markersize=11,
                color=s["color"],
                markeredgecolor="black",
                linestyle="none",
            )
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Training curves (a cross marks where a run diverged to inf/NaN)")
    ax.grid(True, color="0.88", linewidth=0.5)
    ax.legend(fontsize=9)
    return ax


def loss_scale_plot(
    scale: Sequence[float],
    skipped: Sequence | None = None,
    *,
    ax=None,
    title: str | None = None,
):
    """The dynamic loss scale per step (log2 axis), with skipped steps marked.

    Dynamic loss scaling multiplies the loss by ``scale`` so that small gradients do
    not underflow; when the scaled gradients overflow (inf/NaN), the step is skipped
    and the scale is halved; after a run of good steps it is doubled again.

    Args:
      scale: the loss scale at each step.
      skipped: which steps were skipped: a boolean per step, or a list of step indices.
      ax: axes to draw into; a new figure when None.
      title: overrides the default title.

    Returns:
      The Axes; the scale is the ``Line2D`` with gid ``"loss_scale"``, the skipped
      steps the one with gid ``"skipped"``.
    """
    y = np.asarray(scale, np.float64).ravel()
    steps = np.arange(y.size)
    idx = np.zeros(0, int)
    if skipped is not None:
        sk = np.asarray(skipped)
        idx = np.flatnonzero(sk) if sk.dtype == bool else sk.astype(int).ravel()
    ax = new_axes(ax)
    ax.plot(
        steps,
        y,
        drawstyle="steps-post",
        color=OKABE_ITO[0],
        linewidth=1.6,
        label="loss scale",
        gid="loss_scale",
    )
    ax.plot(
        idx,
        y[idx],
        linestyle="none",
        marker="X",
        markersize=8,
        color=OKABE_ITO[1],
        markeredgecolor="black",
        label=f"skipped step: gradients overflowed ({idx.size})",
        gid="skipped",
    )
    ax.set_yscale("log", base=2)
    pos = y[np.isfinite(y) & (y > 0)]
    if pos.size:
        lo, hi = math.floor(math.log2(pos.min())), math.ceil(math.log2(pos.max()))
        step = max(1, math.ceil((hi - lo) / 10))
        ks = list(range(lo, hi + 1, step))
        ax.set_yticks([2.0**k for k in ks], [pow2_label(k) for k in ks])
        ax.set_ylim(2.0 ** (lo - 0.5), 2.0 ** (hi + 0.5))
    ax.set_xlabel("step")
    ax.set_ylabel("loss scale")
    ax.set_title(
        title
        or "Dynamic loss scaling: halve on overflow (step skipped), "
        "grow after a run of good steps"
    )
    ax.grid(True, color="0.88", linewidth=0.5)
    ax.legend(fontsize=9)
    return ax


def underflow_heatmap(
    fractions,
    *,
    layers: Sequence[str] | None = None,
    ax=None,
    label: str = "fraction of values flushed to zero",
    title: str | None = None,
):
    """A heat map of a per-layer statistic over time (layers x steps).

    Args:
      fractions: a 2-D array ``[layer, step]``, or a mapping layer name -> values per
        step (then the names label the rows).
      layers: row labels for an array.
      ax: axes to draw into; a new figure when None.
      label: the colour bar's label.
      title: overrides the default title.

    Returns:
      The Axes; the image (``ax.images[0]``) holds the array as given. The colour map
      is cividis, which reads the same for colour-blind readers and in grayscale
      (darker is less).
    """
    if isinstance(fractions, Mapping):
        layers = list(fractions) if layers is None else layers
        data = np.asarray([np.asarray(v, np.float64).ravel() for v in fractions.values()])
    else:
        data = np.asarray(fractions, np.float64)
    if data.ndim != 2:
        raise ValueError(f"expected a [layer, step] array, got shape {data.shape}")
    ax = new_axes(ax, figsize=(9, 0.45 * data.shape[0] + 2))
    image = ax.imshow(
        data,
        aspect="auto",
        cmap="cividis",
        interpolation="nearest",
        vmin=0.0,
        vmax=max(float(np.nanmax(data)) if data.size else 1.0, 1e-12),
        extent=(-0.5, data.shape[1] - 0.5, data.shape[0] - 0.5, -0.5),
    )
    ax.set_yticks(
        range(data.shape[0]),
        layers if layers is not None else [f"layer {i}" for i in range(data.shape[0])],
    )
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_title(title or "Underflow per layer over training")
    ax.figure.colorbar(image, ax=ax, label=label)
    return ax
