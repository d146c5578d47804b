"""Per-tensor scaling rules: FP8 delayed and current scaling, adaptive loss scaling.

Each rule chooses a *scale* for a tensor before it is rounded to a narrow format:
``x_stored = round(x * scale)``, read back as ``x_stored / scale``. With a power-of-two
scale the unscaling is exact, and the scale only decides *where* the values land in the
format's range, and so how many underflow or overflow.

* :class:`DelayedScaling` (Transformer Engine's default FP8 recipe): the scale comes
  from the amaxes of the previous steps, kept in a history (:class:`ScaleState`).
* :class:`CurrentScaling` (Transformer Engine's ``Float8CurrentScaling``): the scale
  comes from this tensor's own amax.
* :class:`AdaptiveLossScaling` (Zhao et al. 2019): a power-of-two scale per layer,
  chosen in the backward pass, by one of two rules: ``"simple"``, the largest scale
  that keeps the activation gradient's max ``2**margin`` below the format's max; or
  ``"zhao"``, Zhao et al.'s, the smallest scale that keeps the expected share of
  underflowing entries of the layer's backward product below ``underflow_rate``
  (from the statistics of the gradient and of the layer's weights,
  :class:`WeightStats`), bounded so that no entry can overflow.

The rules are values (frozen dataclasses); their state, where they have one, is a
NamedTuple of arrays that the caller carries from step to step.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fpsim.formats import FP32, Format
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


class WeightStats(NamedTuple):
    """What :class:`AdaptiveLossScaling`'s ``"zhao"`` rule needs to know of a layer's
    weight ``W`` (computed in the forward pass, where the weight is at hand).

    Attributes:
      sq_mean: float32 scalar ``E[W**2]`` (``sigma_W**2 + mu_W**2`` in Zhao et al.'s
        code), over all the weight's entries.
      amax: float32 scalar ``max|W|``.
      terms: number of products summed into each entry of the layer's backward product
        ``dx = dy . W^T`` (Zhao et al.'s ``fan_in``: a Dense layer's output features,
        a convolution's ``kh * kw * out_channels``).
    """

    sq_mean: jax.Array
    amax: jax.Array
    terms: int


def weight_stats(w: jax.Array, terms: int) -> WeightStats:
    """:class:`WeightStats` of the weight ``w`` (in float32; no gradient flows through)."""
    w = lax.stop_gradient(jnp.asarray(w, jnp.float32))
    return WeightStats(jnp.mean(w * w), jnp.max(jnp.abs(w)), int(terms))


#: The rules of :class:`AdaptiveLossScaling`.
ADAPTIVE_RULES: tuple[str, ...] = ("simple", "zhao")


@dataclasses.dataclass(frozen=True)
class AdaptiveLossScaling:
    """Layer-wise loss scales chosen during the backward pass (Zhao et al. 2019).

    When the backward pass reaches a layer, its incoming activation gradient ``g`` is
    multiplied by a power of two ``alpha`` chosen for that layer. The layer's backward
    pass then runs on scaled values: its weight gradient comes out multiplied by
    ``alpha`` (the optimizer undoes it: ``grad_scales``) and the gradient it passes down
    is unscaled again at the layer's input. Small gradients are thereby lifted above the
    underflow threshold layer by layer, each layer by what it can afford. Two rules
    choose ``alpha``:

    ``rule="simple"`` (fpsim's simplification): the largest power of two that keeps
    ``max|g| * alpha`` below ``fmt.max / 2**margin`` (``margin`` leaves room for the
    growth of the sums in the layer's backward products), in ``[1, 2**max_log2]``.
    The margin does not cover a weight gradient summed over many rows: on the LM demo
    in pure FP16 (1024 tokens a step, FP16 weight gradients) ``mlp_out``'s weight
    gradient overflows at the third step with the default margin of 8.

    ``rule="zhao"`` (Zhao et al.'s ``approx_range`` method, as their Chainer code
    computes it; see :meth:`scale`): the *smallest* scale that keeps the expected share
    of underflowing entries of the layer's backward product ``dx = g . W^T`` below
    ``underflow_rate``, modelling each entry as a zero-mean normal variable with the
    variance that the statistics of ``g`` and ``W`` give; capped so that no entry of
    ``dx`` can overflow (``terms * max|g| * max|W| * alpha <= fmt.max``) and at
    ``2**max_log2`` (their ``accum_upper_bound``, 1024 by default).

    fpsim unscales each layer's gradient at its input, so a layer's scale is the whole
    scale its backward pass runs at. Zhao et al.'s code instead lets the scales
    compound (the gradient passed down keeps ``alpha`` and the next layer multiplies
    its own in); the product is what ``accum_upper_bound`` bounds, and what this
    class's ``"zhao"`` scale stands for. Their per-layer factor bound
    (``scale_upper_bound``, 16) and the rule "never below the scale of the layer above"
    (their factor is at least 1) exist only in the compounding form and are not kept.

    Attributes:
      rule: ``"simple"`` or ``"zhao"``.
      margin: (simple) powers of two of headroom below the grad format's max.
      max_log2: largest scale exponent allowed; None: 64 for ``"simple"``, 10 for
        ``"zhao"`` (Zhao et al.'s ``accum_upper_bound = 1024``).
      underflow_rate: (zhao) the bound ``T_uf`` on the probability that an entry of the
        backward product underflows (their ``n_uf_threshold``, default ``1e-3``).
    """

    rule: str = "simple"
    margin: int = 8
    max_log2: int | None = None
    underflow_rate: float = 1e-3

    def __post_init__(self):
        if self.rule not in ADAPTIVE_RULES:
            raise ValueError(
                f"unknown adaptive loss-scaling rule {self.rule!r}; valid: "
                f"{', '.join(ADAPTIVE_RULES)}"
            )
        if not (isinstance(self.margin, int) and self.margin >= 0):
            raise ValueError(f"margin must be a non-negative int, got {self.margin!r}")
        if self.max_log2 is None:
            object.__setattr__(self, "max_log2", 64 if self.rule == "simple" else 10)
        if not (isinstance(self.max_log2, int) and 0 <= self.max_log2 <= 126):
            raise ValueError(
                f"max_log2 must be an int in [0, 126] or None, got {self.max_log2!r}"
            )
        rate = self.underflow_rate
        if not (isinstance(rate, float | int) and 0 < rate < 1):
            raise ValueError(
                f"underflow_rate must be a probability in (0, 1), got "
                f"{self.underflow_rate!r}"
            )

    @property
    def needs_weights(self) -> bool:
        """Whether :meth:`scale` uses the layer's :class:`WeightStats`."""
        return self.rule == "zhao"

    def scale(
        self, g: jax.Array, fmt: Format | None, weight: WeightStats | None = None
    ) -> jax.Array:
        """The layer's scale ``alpha`` (a float32 power of two) for the gradient ``g``.

        ``fmt`` is the format ``g`` is rounded to (None: float32). 1 when ``g`` is all
        zeros or not finite (nothing to protect, or the step will be skipped anyway).

        ``"simple"``: ``2**floor(log2(fmt.max / 2**margin / max|g|))`` in
        ``[1, 2**max_log2]``; ``weight`` is ignored.

        ``"zhao"``, with ``u_min`` the format's smallest subnormal, ``u_max`` its max,
        ``c = sqrt(2) * erfinv(underflow_rate)`` (``P(|Z| < c) = underflow_rate`` for a
        standard normal ``Z``) and, for a layer with a weight (``weight`` given)::

            sigma = sqrt(E[g**2] * E[W**2] * terms / 2)   # std of an entry of g . W^T
            low   = max(u_min / (c * sigma), 1)           # P(|alpha dx| < u_min) <= T_uf
            high  = u_max / terms / (max|g| * max|W|)     # no entry of alpha dx overflows
            alpha = 2**floor(log2(min(low, high, 2**max_log2)))

        (the ``1/2`` in ``sigma`` is their "assuming the existence of ReLU": half the
        products are zero). Without a weight (norms, embeddings) their code's branch
        for a bare gradient: ``sigma = std(g)``, ``high = u_max / max|g|``. ``alpha``
        is below 1 only when ``high`` is (a gradient that would overflow).
        """
        amax = jnp.max(jnp.abs(g)).astype(jnp.float32)
        ok = (amax > 0) & jnp.isfinite(amax)
        if self.rule == "simple":
            top = (fmt.max if fmt is not None else 2.0**127) / 2.0**self.margin
            e = jnp.floor(jnp.log2(top) - jnp.log2(jnp.where(ok, amax, 1.0)))
            e = jnp.clip(e, 0, self.max_log2).astype(jnp.int32)
            # ldexp is exact; exp2 on CPU is a polynomial and may miss the power of two
            return jnp.where(ok, jnp.ldexp(jnp.float32(1.0), e), 1.0).astype(jnp.float32)
        return self._zhao(g, amax, ok, fmt, weight)

    def _zhao(self, g, amax, ok, fmt, weight):
        f = FP32 if fmt is None else fmt
        c = statistics.NormalDist().inv_cdf(0.5 + self.underflow_rate / 2)
        g = jnp.where(ok, g.astype(jnp.float32), 0.0)
        if weight is not None:
            n = jnp.asarray(weight.terms, jnp.float32)
            sigma = jnp.sqrt(jnp.mean(g * g) * weight.sq_mean * (0.5 * n))
            high = (jnp.float32(f.max) / n) / (amax * weight.amax)
        else:
            sigma = jnp.std(g)
            high = jnp.float32(f.max) / amax
        low = jnp.maximum(jnp.float32(f.min_subnormal) / (jnp.float32(c) * sigma), 1.0)
        alpha = jnp.minimum(jnp.minimum(low, high), jnp.float32(2.0**self.max_log2))
        good = ok & (sigma > 0) & jnp.isfinite(alpha) & (alpha > 0)
        # floor(log2(alpha)) exactly: alpha = m * 2**e with m in [0.5, 1)
        _, e = jnp.frexp(jnp.where(good, alpha, 1.0))
        e = jnp.clip(e - 1, -126, self.max_log2).astype(jnp.int32)
        return jnp.where(good, jnp.ldexp(jnp.float32(1.0), e), 1.0).astype(jnp.float32)


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
    "ADAPTIVE_RULES", "AdaptiveLossScaling", "CurrentScaling", "DelayedScaling",
    "ScaleState", "WeightStats", "quantize_scaled", "weight_stats",
]  # fmt: skip
