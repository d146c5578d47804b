"""Per-tensor scaling rules: FP8 delayed and current scaling, adaptive loss scaling.

Each rule chooses a *scale* for a tensor before it is rounded to a narrow format:
``x_stored = round(x * scale)``, read back as ``x_stored / scale``. With a power-of-two
scale the unscaling is exact, and the scale only decides *where* the values land in the
format's range, and so how many underflow or overflow.

* :class:`DelayedScaling` (Transformer Engine's default FP8 recipe): the scale comes
  from the amaxes of the previous steps, kept in a history (:class:`ScaleState`).
* :class:`CurrentScaling` (Transformer Engine's ``Float8CurrentScaling``): the scale
  comes from this tensor's own amax.
* :class:`AdaptiveLossScaling` (after Zhao et al. 2019): a power-of-two scale per
  layer, chosen in the backward pass from the activation gradient.

The rules are values (frozen dataclasses); their state, where they have one, is a
NamedTuple of arrays that the caller carries from step to step.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fpsim.formats import Format
from fpsim.rounding import quantize


class ScaleState(NamedTuple):
    """Delayed-scaling state of one tensor.

    Attributes:
      scale: float32 scalar used for the *last* quantization (``x * scale`` is rounded).
      amax_history: float32[history_len], the most recent amax first.
    """

    scale: jax.Array
    amax_history: jax.Array


@dataclasses.dataclass(frozen=True)
class DelayedScaling:
    """Per-tensor FP8 scaling from a history of amax values (Transformer Engine's recipe).

    An FP8 format has so few exponents (E4M3 spans ``2**-9 .. 448``) that a tensor only
    fits if it is first multiplied by a *scale* that moves its largest magnitude near the
    format's max. Computing that maximum ("amax") of the tensor being quantized would
    need a pass over it before the cast; Transformer Engine's ``DelayedScaling`` instead
    uses the amaxes of the *previous* ``history_len`` steps:

        scale = fmt.max / max(amax_history) / 2**margin      (kept if that amax is 0)
        x_fp8 = saturate(round(x * scale))     dequantized: x_fp8 / scale

    and then pushes this step's amax into the history (:meth:`update`).

    Warm-up: the history starts empty (scale 1), so the first steps run unscaled. For
    activation gradients it fills from the top of the network down: a layer's cotangent
    is only nonzero once the layers above it pass nonzero gradients down, so a deep
    model needs a few steps (about one per layer at worst) before every gradient tensor
    is scaled. The newest amax is ``ScaleState.amax_history[0]``.

    Non-finite amax: like Transformer Engine (``_default_sf_compute``: the previous
    scale is kept where the amax is not finite or is 0), a non-finite amax never becomes
    a scale. Unlike Transformer Engine, which records every step's amax, fpsim's
    training helpers discard the whole state update of a step that loss scaling skips
    (:func:`fpsim.nn.make_train_step`), so a skipped step leaves the histories as they
    were instead of freezing the scales for ``history_len`` steps.

    Attributes:
      history_len: number of past amax values kept per tensor.
      margin: extra headroom in powers of two below the format's max.
    """

    history_len: int = 16
    margin: int = 0

    def __post_init__(self):
        if not (isinstance(self.history_len, int) and self.history_len >= 1):
            raise ValueError(
                f"history_len must be a positive int, got {self.history_len!r}"
            )
        if not (isinstance(self.margin, int) and self.margin >= 0):
            raise ValueError(f"margin must be a non-negative int, got {self.margin!r}")

    def init(self) -> ScaleState:
        """Scale 1 and an empty (all-zero) history, as Transformer Engine starts."""
        return ScaleState(
            jnp.ones((), jnp.float32), jnp.zeros((self.history_len,), jnp.float32)
        )

    def scale(self, state: ScaleState, fmt: Format) -> jax.Array:
        """The scale for this step: ``fmt.max / max(history) / 2**margin``.

        Kept at the previous value while the history holds no finite positive amax (the
        first step, or after a step whose tensor was all zeros or non-finite).
        """
        amax = jnp.max(state.amax_history)
        new = (fmt.max / amax) / (2.0**self.margin)
        ok = (amax > 0) & jnp.isfinite(amax) & jnp.isfinite(new)
        return jnp.where(ok, new, state.scale).astype(jnp.float32)

    def update(self, state: ScaleState, x: jax.Array, scale: jax.Array) -> ScaleState:
        """The state after quantizing ``x`` with ``scale``: ``x``'s amax enters the
        history."""
        amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
        history = jnp.concatenate([amax[None], state.amax_history[:-1]])
        return ScaleState(jnp.asarray(scale, jnp.float32), history)


@dataclasses.dataclass(frozen=True)
class CurrentScaling:
    """Per-tensor scaling from the tensor's own amax (``Float8CurrentScaling``).

    ``scale = fmt.max / amax(x) / 2**margin``, rounded *down* to a power of two with
    ``power_of_two=True`` (so that unscaling is exact). As in Transformer Engine's
    ``compute_scale_from_amax``: an amax of 0 or inf gives scale 1, a scale that
    overflows float32 becomes float32 max (before the power-of-two rounding).

    Attributes:
      margin: powers of two of headroom below the format's max.
      power_of_two: round the scale down to a power of two.
    """

    margin: int = 0
    power_of_two: bool = False

    def __post_init__(self):
        if not (isinstance(self.margin, int) and self.margin >= 0):
            raise ValueError(f"margin must be a non-negative int, got {self.margin!r}")

    def scale(self, x: jax.Array, fmt: Format) -> jax.Array:
        amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
        s = (jnp.float32(fmt.max) / amax) / jnp.float32(2.0**self.margin)
        s = jnp.where(jnp.isinf(s), jnp.finfo(jnp.float32).max, s)
        s = jnp.where((amax == 0) | jnp.isinf(amax) | jnp.isnan(s), 1.0, s)
        s = s.astype(jnp.float32)
        if self.power_of_two:  # keep sign and exponent: round down to 2**floor(log2 s)
            bits = lax.bitcast_convert_type(s, jnp.uint32) & jnp.uint32(0xFF800000)
            s = lax.bitcast_convert_type(bits, jnp.float32)
        return s


@dataclasses.dataclass(frozen=True)
class AdaptiveLossScaling:
    """Layer-wise loss scales chosen during the backward pass (after Zhao et al. 2019).

    When the backward pass reaches a layer, the incoming activation gradient ``g`` is
    multiplied by the largest power of two ``alpha`` that keeps ``max|g| * alpha`` below
    ``fmt.max / 2**margin`` (``margin`` leaves room for the growth of the sums in the
    layer's backward matrix products), capped at ``2**max_log2``. The layer's backward
    pass then runs on scaled values: its weight gradient comes out multiplied by
    ``alpha`` (the optimizer undoes it: ``grad_scales``) and the gradient it passes down
    is unscaled again at the layer's input. Small gradients are therefore lifted above
    the underflow threshold layer by layer, each layer by what it can afford.

    Attributes:
      margin: powers of two of headroom below the grad format's max.
      max_log2: largest scale exponent allowed.
    """

    margin: int = 8
    max_log2: int = 64

    def scale(self, g: jax.Array, fmt: Format | None) -> jax.Array:
        """``alpha = 2**floor(log2(fmt.max / 2**margin / max|g|))``, in [1, 2**max_log2].

        1 when ``g`` is all zeros or not finite (nothing to protect, or the step will be
        skipped anyway).
        """
        top = (fmt.max if fmt is not None else 2.0**127) / 2.0**self.margin
        amax = jnp.max(jnp.abs(g)).astype(jnp.float32)
        ok = (amax > 0) & jnp.isfinite(amax)
        e = jnp.floor(jnp.log2(top) - jnp.log2(jnp.where(ok, amax, 1.0)))
        e = jnp.clip(e, 0, self.max_log2).astype(jnp.int32)
        # ldexp is exact; exp2 on CPU is a polynomial and may miss the power of two
        return jnp.where(ok, jnp.ldexp(jnp.float32(1.0), e), 1.0).astype(jnp.float32)


def quantize_scaled(x, fmt: Format | None, scale, rounding: str, key, saturate: bool):
    """``round(x * scale) / scale`` on ``fmt`` (``scale=None``: plain rounding).

    Saturation clamps *finite* values that overflow to ``+-fmt.max`` (CUDA's
    ``satfinite``); an inf or NaN input is not clamped into a number: it becomes what
    the format makes of it without saturation (inf, or NaN in formats without inf), so
    a non-finite tensor stays visible to loss scaling instead of turning into max.
    """
    if fmt is None:
        return x
    y = x if scale is None else x * scale
    q = quantize(y, fmt, rounding, key=key, saturate=saturate)
    if saturate:
        q = jnp.where(jnp.isfinite(x), q, quantize(y, fmt, "nearest", saturate=False))
    if scale is not None:
        q = q / scale
    return q.astype(x.dtype)


__all__ = [
    "AdaptiveLossScaling", "CurrentScaling", "DelayedScaling", "ScaleState",
    "quantize_scaled",
]  # fmt: skip
