"""Per-layer statistics: what the low-precision pass kept of each tensor."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fpsim.formats import FP32
from fpsim.stats import Log2Histogram, ValueCounts, log2_histogram, value_counts


class TensorStats(NamedTuple):
    """One tensor at one layer, as float32 had it and as the simulated pass holds it.

    Values are taken *as stored*: multiplied by the tensor's scale (1 without scaling),
    so that they can be read against the format's range.

    Attributes:
      counts: the float32 values classified against the format they are rounded to
        (:class:`fpsim.ValueCounts`): ``counts.underflow`` of them were nonzero and
        became zero, ``counts.overflow`` became inf/NaN (or saturated).
      hist: log2 histogram of the float32 values (times scale).
      hist_lp: log2 histogram of the rounded values (times scale).
      scale: the scale used (float32 scalar).
    """

    counts: ValueCounts
    hist: Log2Histogram
    hist_lp: Log2Histogram
    scale: jax.Array


class LayerStats(NamedTuple):
    """Statistics of one layer call during one training step.

    Attributes:
      inputs: the layer's (first) input, as read in the compute format.
      outputs: the layer's output, as written in the output format.
      grads: the activation gradient (cotangent of the output) in the grad format:
        ``grads.counts.underflow / grads.counts.total`` is the fraction lost to
        underflow at this layer.
    """

    inputs: TensorStats | None
    outputs: TensorStats | None
    grads: TensorStats | None


def tensor_stats(raw, lp, fmt, scale=None) -> TensorStats:
    """Statistics of ``raw`` (float32) rounded to ``lp`` in ``fmt`` (None: float32)."""
    fmt = FP32 if fmt is None else fmt
    scale = jnp.ones((), jnp.float32) if scale is None else jnp.asarray(scale, jnp.float32)
    raw = jnp.asarray(raw, jnp.float32)
    lp = jnp.asarray(lp, jnp.float32)
    # under the same scale the rounding saw: x * scale is what was rounded
    raw_s = raw if fmt is FP32 else raw * scale
    lp_s = lp if fmt is FP32 else lp * scale
    return TensorStats(
        counts=value_counts(raw_s, fmt),
        hist=log2_histogram(raw_s, fmt),
        hist_lp=log2_histogram(lp_s, fmt),
        scale=scale,
    )


def fraction(counts: ValueCounts, field: str = "underflow") -> jax.Array:
    """``counts.<field> / counts.total`` as float32 (0 for an empty tensor)."""
    total = jnp.maximum(counts.total, 1).astype(jnp.float32)
    return getattr(counts, field).astype(jnp.float32) / total


def nonzero_fraction_lost(counts: ValueCounts) -> jax.Array:
    """Underflowed values as a fraction of the nonzero finite values (what was lost)."""
    nonzero = counts.underflow + counts.subnormal + counts.normal + counts.overflow
    return counts.underflow.astype(jnp.float32) / jnp.maximum(nonzero, 1).astype(
        jnp.float32
    )
