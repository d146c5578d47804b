"""Loss scaling as optax wrappers: unscale gradients, skip non-finite steps, adjust.

The rules themselves (when the scale grows, by how much, how gradients are unscaled)
are values in :mod:`fpsim.scaling` (``fpsim.scaling.PYTORCH``, ``KERAS``, ``FLAX``,
``JMP``, or any ``fpsim.scaling.DynamicLossScaling``); see the table in
:mod:`fpsim.scaling._loss`. This module wraps a rule around an optax optimizer:
:func:`dynamic_loss_scaling` (``variant="pytorch"`` names a rule, ``rule=`` takes any)
and :func:`static_loss_scaling`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fpsim import scaling
from fpsim._bits import F32
from fpsim.formats import get_format
from fpsim.optim import _common
from fpsim.rounding import FormatLike, quantize
from fpsim.scaling import _exact

VARIANTS: tuple[str, ...] = tuple(scaling.RULES)


class LossScalingState(NamedTuple):
    """State of :func:`dynamic_loss_scaling` and :func:`static_loss_scaling`.

    Attributes:
      scale: float32 scalar, the loss scale to multiply the *next* loss by.
      growth_tracker: int32, consecutive finite steps counted toward the next growth.
      count: int32, number of updates seen.
      skipped: int32, number of updates skipped because of non-finite gradients.
      nonfinite_fraction: float32, fraction of gradient entries found non-finite (or
        saturated, see ``detect_saturation``) at the last update.
      underflow_fraction: float32, fraction of nonzero scaled gradient entries that
        rounded to zero in ``fmt`` at the last update (0 without ``fmt``).
      last_finite: bool, whether the last update was applied.
      stuck: bool, the scale is 0, inf or NaN (:func:`fpsim.scaling.is_stuck`): no rule
        can recover from it and every later step will be skipped.
      inner_state: the wrapped optimizer's state.
    """

    scale: jax.Array
    growth_tracker: jax.Array
    count: jax.Array
    skipped: jax.Array
    nonfinite_fraction: jax.Array
    underflow_fraction: jax.Array
    last_finite: jax.Array
    stuck: jax.Array
    inner_state: Any


def _loss_scaling(inner, rule, fmt, saturate, detect_saturation):
    inner = optax.with_extra_args_support(inner)
    fmt = None if fmt is None else get_format(fmt)
    max_bits = None if fmt is None else F32.bits_of(fmt.max)

    def init_fn(params):
        zero = jnp.zeros((), jnp.int32)
        return LossScalingState(
            scale=rule.init().scale,
            growth_tracker=zero,
            count=zero,
            skipped=zero,
            nonfinite_fraction=jnp.zeros((), jnp.float32),
            underflow_fraction=jnp.zeros((), jnp.float32),
            last_finite=jnp.array(True),
            stuck=scaling.is_stuck(rule.init().scale),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, *, grad_scales=None, **extra_args):
        scaled = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), updates)
        under = jnp.zeros((), jnp.int32)
        # the denominator of underflow_fraction: nonzero finite scaled entries (zeros
        # cannot be lost, as in fpsim.nn.underflow_fraction)
        nonzero = sum(
            jnp.sum((F32.abs_bits(g) != 0) & jnp.isfinite(g))
            for g in jax.tree.leaves(scaled)
        )
        if fmt is not None:  # simulate storing the scaled gradients in fmt
            stored = jax.tree.map(lambda g: quantize(g, fmt, saturate=saturate), scaled)
            under = sum(
                jnp.sum((F32.abs_bits(g) != 0) & (F32.abs_bits(q) == 0))
                for g, q in zip(
                    jax.tree.leaves(scaled), jax.tree.leaves(stored), strict=True
                )
            )
            scaled = stored
        if grad_scales is None:
            leaf_scales = jax.tree.map(lambda g: state.scale, scaled)
        else:
            try:
                leaf_scales = jax.tree.map(
                    lambda g, s: _exact.mul_f32(state.scale, s),
                    scaled,
                    grad_scales,
                )
            except ValueError as err:
                raise ValueError(
                    "grad_scales must be a pytree with the structure of the gradients "
                    "(one scale per leaf, e.g. per layer), or None"
                ) from err

        unscaled = rule.unscale(scaled, leaf_scales)

        def bad(g, u):
            mask = ~jnp.isfinite(g) | ~jnp.isfinite(u)
            if fmt is not None and saturate and detect_saturation:
                mask = mask | (F32.abs_bits(g) == max_bits)  # saturated at +-max
            return jnp.sum(mask)

        leaves = jax.tree.leaves(scaled)
        total = max(sum(g.size for g in leaves), 1)
        nbad = sum(
            bad(g, u) for g, u in zip(leaves, jax.tree.leaves(unscaled), strict=True)
        )
        finite = nbad == 0 if leaves else jnp.array(True)

        def apply(_):
            new_updates, new_inner = inner.update(
                unscaled, state.inner_state, params, **extra_args
            )
            return new_updates, new_inner

        def skip(_):  # -0.0: p + (-0.0) == p bitwise for every p, including -0.0
            new_updates = jax.tree.map(lambda g: jnp.full_like(g, -0.0), unscaled)
            return new_updates, state.inner_state

        new_updates, new_inner = lax.cond(finite, apply, skip, None)
        new_scale, new_tracker = rule.adjust(
            scaling.LossScale(state.scale, state.growth_tracker), finite
        )
        return new_updates, LossScalingState(
            scale=new_scale,
            growth_tracker=new_tracker,
            count=state.count + 1,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            nonfinite_fraction=(nbad / total).astype(jnp.float32),
            underflow_fraction=(under / jnp.maximum(nonzero, 1)).astype(jnp.float32),
            last_finite=finite,
            stuck=scaling.is_stuck(new_scale),
            inner_state=new_inner,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dynamic_loss_scaling(
    inner: optax.GradientTransformation,
    *,
    variant: str | None = None,
    rule: scaling.DynamicLossScaling | None = None,
    init_scale: float | None = None,
    growth_factor: float | None = None,
    backoff_factor: float | None = None,
    growth_interval: int | None = None,
    min_scale: float | None | str = "variant",
    fmt: FormatLike | None = None,
    saturate: bool = False,
    detect_saturation: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` with dynamic loss scaling (PyTorch ``GradScaler`` by default).

    The gradients it receives are those of ``loss * scale``. It unscales them, checks
    them, and either runs ``inner`` or skips the step (updates of ``-0.0``, so that
    ``optax.apply_updates`` leaves every parameter bitwise unchanged, and ``inner``'s
    state untouched). Then it adjusts the scale by ``rule`` (a
    :class:`fpsim.scaling.DynamicLossScaling`; ``variant`` names one of the frameworks'
    rules, see the table in :mod:`fpsim.scaling._loss`). All scale arithmetic is
    rounded once and keeps subnormals, as PyTorch on CPU does.

    Read the scale to use with :func:`current_loss_scale` (or :func:`scale_loss`)::

        def train_step(params, opt_state, batch):
            scale = fpsim.optim.current_loss_scale(opt_state)
            grads = jax.grad(lambda p: loss_fn(p, batch) * scale)(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

    Per-leaf (layer-wise adaptive, Zhao et al. 2019) scales: pass
    ``opt.update(grads, state, params, grad_scales=tree)`` with one scalar per gradient
    leaf; each leaf is then unscaled by ``state.scale * grad_scales[leaf]``. Use
    :func:`static_loss_scaling` with scale 1 for purely layer-wise scales.

    Non-finite detection: an entry counts when the scaled gradient or its unscaled value
    is inf or NaN (PyTorch and Keras test the scaled values, Flax and jmp the unscaled
    ones; they differ only when ``scale < 1`` and unscaling overflows, a case that
    PyTorch and Keras would pass on to the optimizer and fpsim skips).

    Stuck scales: a scale that reaches 0 or inf is kept (the frameworks' rules), and
    ``state.stuck`` becomes True: from then on every step is skipped.
    :func:`fpsim.nn.train` warns when that happens.

    Saturating formats: a format with ``saturate=True`` turns overflow into ``+-max``,
    which no isfinite test can see. With ``fmt`` and ``saturate=True`` this wrapper counts
    entries at ``+-fmt.max`` as overflow (a gradient that is genuinely exactly ``max`` is
    a false alarm). With ``detect_saturation=False``, or without ``fmt``, saturation is
    NOT detected and training silently continues with clipped gradients.

    Args:
      inner: the optimizer that receives the unscaled gradients.
      variant: ``"pytorch"`` (default), ``"keras"``, ``"flax"`` or ``"jmp"``: the rule
        ``fpsim.scaling.RULES[variant]``.
      rule: a :class:`fpsim.scaling.DynamicLossScaling` (instead of ``variant``).
      init_scale: initial scale; default the rule's (2**16 or 2**15).
      growth_factor: scale multiplier after ``growth_interval`` finite steps (> 1);
        default the rule's (2).
      backoff_factor: scale multiplier on a non-finite step (0 < backoff_factor < 1);
        default the rule's (0.5).
      growth_interval: consecutive finite steps before the scale grows (an int >= 1);
        default the rule's (2000).
      min_scale: lower bound after a backoff; ``"variant"`` uses the rule's (none for
        pytorch and keras, ``2**-126`` for flax, 1 for jmp), ``None`` means no bound.
      fmt: if given, the scaled gradients are rounded to this format (nearest) before
        anything else, simulating gradients stored in it. Idempotent for gradients that
        are already on its grid.
      saturate: with ``fmt``, overflow goes to ``+-fmt.max`` instead of inf/NaN.
      detect_saturation: with ``fmt`` and ``saturate``, treat ``+-fmt.max`` as overflow.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with :class:`LossScalingState`.

    Raises:
      ValueError: unknown variant, both ``variant`` and ``rule``, a scale that is not a
        positive finite float32 number, or a factor or interval out of its range (as in
        PyTorch's ``GradScaler``).
      TypeError: a scale or factor that is not a number.

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018.
      Zhao et al., "Adaptive Loss Scaling for Mixed Precision Training", 2019.
    """
    if rule is not None and variant is not None:
        raise ValueError("give either variant= (a rule's name) or rule=, not both")
    if rule is None:
        variant = "pytorch" if variant is None else variant
        if variant not in VARIANTS:
            raise ValueError(f"unknown loss-scaling variant {variant!r}; valid: {VARIANTS}")
        rule = scaling.RULES[variant]
    elif not isinstance(rule, scaling.DynamicLossScaling):
        raise TypeError(
            f"rule must be a fpsim.scaling.DynamicLossScaling, got {type(rule).__name__}"
        )
    if isinstance(min_scale, str):
        if min_scale != "variant":
            raise ValueError(
                f"min_scale must be a positive number, None or 'variant', got {min_scale!r}"
            )
        min_scale = rule.min_scale
    changes = {
        "init_scale": init_scale,
        "growth_factor": growth_factor,
        "backoff_factor": backoff_factor,
        "growth_interval": growth_interval,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    rule = rule.replace(min_scale=min_scale, **changes)  # validates
    return _loss_scaling(inner, rule, fmt, saturate, detect_saturation)


def static_loss_scaling(
    inner: optax.GradientTransformation,
    scale: float,
    *,
    fmt: FormatLike | None = None,
    saturate: bool = False,
    detect_saturation: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` with a fixed loss scale: unscale, skip non-finite steps.

    Same state, skipping, ``grad_scales`` and saturation handling as
    :func:`dynamic_loss_scaling`; the scale never changes (``growth_tracker`` counts
    consecutive finite steps). The rule is :class:`fpsim.scaling.StaticLossScaling`.

    Args:
      inner: the optimizer that receives the unscaled gradients.
      scale: the loss scale (a power of two keeps unscaling exact); a positive number
        that float32 holds as a finite value.
      fmt: see :func:`dynamic_loss_scaling`.
      saturate: see :func:`dynamic_loss_scaling`.
      detect_saturation: see :func:`dynamic_loss_scaling`.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with :class:`LossScalingState`.

    Raises:
      ValueError, TypeError: ``scale`` is not a positive number finite in float32.
    """
    rule = scaling.StaticLossScaling(scale)
    return _loss_scaling(inner, rule, fmt, saturate, detect_saturation)


def loss_scaling_state(opt_state) -> LossScalingState:
    """The :class:`LossScalingState` inside a (possibly nested) optimizer state."""
    return _common.find_state(opt_state, LossScalingState, "a loss-scaling wrapper")


def current_loss_scale(opt_state) -> jax.Array:
    """The scale to multiply the next loss by (works through chain, MultiSteps, ...)."""
    return loss_scaling_state(opt_state).scale


def scale_loss(loss: jax.typing.ArrayLike, opt_state) -> jax.Array:
    """``loss * current_loss_scale(opt_state)``, for use inside the loss function."""
    return loss * current_loss_scale(opt_state)


__all__ = [
    "VARIANTS", "LossScalingState", "current_loss_scale", "dynamic_loss_scaling",
    "loss_scaling_state", "scale_loss", "static_loss_scaling",
]  # fmt: skip
