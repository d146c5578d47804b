"""Per-tensor scaling: delayed FP8 scales (Transformer Engine) and adaptive loss scales.

Both scale a tensor before rounding it and unscale it afterwards. With a power-of-two
scale the unscaling is exact; the only effect of the scale is *where* the tensor's
values land in the format's range, and therefore how many underflow or overflow.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fpsim.formats import Format
from fpsim.nn._policy import AdaptiveLossScaling, DelayedScaling
from fpsim.rounding import quantize


class ScaleState(NamedTuple):
    """Delayed-scaling state of one tensor.

    Attributes:
      scale: float32 scalar used for the *last* quantization (``x * scale`` is rounded).
      amax_history: float32[history_len], the most recent amax first.
    """

    scale: jax.Array
    amax_history: jax.Array


def init_scale_state(recipe: DelayedScaling) -> ScaleState:
    """Scale 1 and an empty (all-zero) history, as Transformer Engine starts."""
    return ScaleState(
        jnp.ones((), jnp.float32), jnp.zeros((recipe.history_len,), jnp.float32)
    )


def delayed_scale(state: ScaleState, fmt: Format, recipe: DelayedScaling) -> jax.Array:
    """The scale for this step: ``fmt.max / max(history) / 2**margin``.

    Kept at the previous value while the history holds no finite positive amax (the first
    step, or after a step whose tensor was all zeros or non-finite).
    """
    amax = jnp.max(state.amax_history)
    new = (fmt.max / amax) / (2.0**recipe.margin)
    ok = (amax > 0) & jnp.isfinite(amax) & jnp.isfinite(new)
    return jnp.where(ok, new, state.scale).astype(jnp.float32)


def push_amax(state: ScaleState, x: jax.Array, scale: jax.Array) -> ScaleState:
    """The state after quantizing ``x`` with ``scale``: ``x``'s amax enters the history."""
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    history = jnp.concatenate([amax[None], state.amax_history[:-1]])
    return ScaleState(scale, history)


def round_scaled(x, fmt: Format | None, scale, rounding: str, key, saturate: bool):
    """``round(x * scale) / scale`` on ``fmt`` (``scale=None``: plain rounding)."""
    if fmt is None:
        return x
    if scale is None:
        return quantize(x, fmt, rounding, key=key, saturate=saturate).astype(x.dtype)
    y = quantize(x * scale, fmt, rounding, key=key, saturate=saturate)
    return (y / scale).astype(x.dtype)


def adaptive_scale(
    g: jax.Array, fmt: Format | None, rule: AdaptiveLossScaling
) -> jax.Array:
    """Zhao et al.-style layer scale: the power of two lifting ``max|g|`` near the top.

    ``alpha = 2**floor(log2(fmt.max / 2**margin / max|g|))``, between 1 and
    ``2**max_log2``; 1 when ``g`` is all zeros or not finite (nothing to protect, or
    the step will be skipped anyway).
    """
    top = (fmt.max if fmt is not None else 2.0**127) / 2.0**rule.margin
    amax = jnp.max(jnp.abs(g)).astype(jnp.float32)
    ok = (amax > 0) & jnp.isfinite(amax)
    e = jnp.floor(jnp.log2(top) - jnp.log2(jnp.where(ok, amax, 1.0)))
    e = jnp.clip(e, 0, rule.max_log2).astype(jnp.int32)
    # ldexp is exact; exp2 on CPU is a polynomial and may miss the power of two
    return jnp.where(ok, jnp.ldexp(jnp.float32(1.0), e), 1.0).astype(jnp.float32)
