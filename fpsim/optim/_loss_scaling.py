"""Loss scaling: unscale gradients, skip non-finite steps, adjust the scale.

Four named variants of dynamic loss scaling reproduce the rules of the frameworks a
learner meets. Read from their source (PyTorch ``aten/src/ATen/native/cpu/
AmpGradScalerKernels.cpp`` ``_amp_update_scale_cpu_kernel`` and its CUDA twin; Keras 3
``keras/src/optimizers/loss_scale_optimizer.py``; Flax ``flax/training/
dynamic_scale.py``; jmp ``jmp/_src/loss_scale.py``). With ``N = growth_interval``:

=======  ==========  ======================================  ===============  =========
variant  init scale  grows (x growth_factor) on the step     backoff floor    unscale
=======  ==========  ======================================  ===============  =========
pytorch  2**16       completing N consecutive finite steps;  none             g * (1/s)
                     not if the grown scale would be inf
keras    2**15       completing N consecutive finite steps   none             g / s
                     (factor 2 fixed, no inf guard)
flax     2**16       *after* N finite steps: the (N+1)-th;   2**-126          g / s
                     grown scale capped at float32 max
jmp      2**15 [#]_  completing N consecutive finite steps;  1.0              g * (1/s)
                     not if the grown scale would be inf
=======  ==========  ======================================  ===============  =========

.. [#] jmp has no default; 2**15 is the value in its docstring example.

All variants reset the consecutive-finite counter on a non-finite step and multiply the
scale by ``backoff_factor`` (0.5). For power-of-two scales ``g * (1/s) == g / s``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from fpsim.formats import get_format
from fpsim.optim import _common
from fpsim.rounding import FormatLike, quantize

VARIANTS: tuple[str, ...] = ("pytorch", "keras", "flax", "jmp")
_F32_MAX = float(jnp.finfo(jnp.float32).max)
_F32_TINY = float(jnp.finfo(jnp.float32).tiny)  # 2**-126, Flax's default minimum_scale
_DEFAULTS = {
    "pytorch": {"init_scale": 2.0**16, "min_scale": None},
    "keras": {"init_scale": 2.0**15, "min_scale": None},
    "flax": {"init_scale": 2.0**16, "min_scale": _F32_TINY},
    "jmp": {"init_scale": 2.0**15, "min_scale": 1.0},
}


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
      inner_state: the wrapped optimizer's state.
    """

    scale: jax.Array
    growth_tracker: jax.Array
    count: jax.Array
    skipped: jax.Array
    nonfinite_fraction: jax.Array
    underflow_fraction: jax.Array
    last_finite: jax.Array
    inner_state: Any


def _grow_shrink(
    variant, scale, tracker, finite, growth_factor, backoff_factor, interval, min_scale
):
    """One step of the dynamic rule: (new scale, new consecutive-finite counter)."""
    if variant == "flax":  # grows when the counter *already* equals N (one step later)
        grow = tracker == interval
        grown = jnp.minimum(scale * growth_factor, _F32_MAX)
        new_tracker = jnp.where(grow | ~finite, 0, tracker + 1)
    else:  # pytorch, keras, jmp: the N-th consecutive finite step grows
        successful = tracker + 1
        grow = successful == interval
        grown = scale * growth_factor
        if variant != "keras":  # "Do not grow the scale past fp32 bounds to inf."
            grown = jnp.where(jnp.isfinite(grown), grown, scale)
        new_tracker = jnp.where(finite & ~grow, successful, 0)
    finite_scale = jnp.where(grow, grown, scale)
    backed_off = scale * backoff_factor
    if min_scale is not None:
        backed_off = jnp.maximum(backed_off, min_scale)
    new_scale = jnp.where(finite, finite_scale, backed_off).astype(jnp.float32)
    return new_scale, new_tracker.astype(jnp.int32)


def _loss_scaling(
    inner, init_scale, adjust, unscale_by_reciprocal, fmt, saturate, detect_saturation
):
    inner = optax.with_extra_args_support(inner)
    fmt = None if fmt is None else get_format(fmt)
    max_bits = None if fmt is None else _common.f32_bits(fmt.max)

    def init_fn(params):
        zero = jnp.zeros((), jnp.int32)
        return LossScalingState(
            scale=jnp.asarray(init_scale, jnp.float32),
            growth_tracker=zero,
            count=zero,
            skipped=zero,
            nonfinite_fraction=jnp.zeros((), jnp.float32),
            underflow_fraction=jnp.zeros((), jnp.float32),
            last_finite=jnp.array(True),
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, *, grad_scales=None, **extra_args):
        scaled = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), updates)
        under = jnp.zeros((), jnp.int32)
        # the denominator of underflow_fraction: nonzero finite scaled entries (zeros
        # cannot be lost, as in fpsim.nn.underflow_fraction)
        nonzero = sum(
            jnp.sum((_common.abs_bits(g) != 0) & jnp.isfinite(g))
            for g in jax.tree.leaves(scaled)
        )
        if fmt is not None:  # simulate storing the scaled gradients in fmt
            stored = jax.tree.map(lambda g: quantize(g, fmt, saturate=saturate), scaled)
            under = sum(
                jnp.sum((_common.abs_bits(g) != 0) & (_common.abs_bits(q) == 0))
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
                    lambda g, s: state.scale * jnp.asarray(s, jnp.float32),
                    scaled,
                    grad_scales,
                )
            except ValueError as err:
                raise ValueError(
                    "grad_scales must be a pytree with the structure of the gradients "
                    "(one scale per leaf, e.g. per layer), or None"
                ) from err

        def unscale(g, s):
            return g * (1.0 / s) if unscale_by_reciprocal else g / s

        unscaled = jax.tree.map(unscale, scaled, leaf_scales)

        def bad(g, u):
            mask = ~jnp.isfinite(g) | ~jnp.isfinite(u)
            if fmt is not None and saturate and detect_saturation:
                mask = mask | (_common.abs_bits(g) == max_bits)  # saturated at +-max
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
        new_scale, new_tracker = adjust(state.scale, state.growth_tracker, finite)
        return new_updates, LossScalingState(
            scale=new_scale,
            growth_tracker=new_tracker,
            count=state.count + 1,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            nonfinite_fraction=(nbad / total).astype(jnp.float32),
            underflow_fraction=(under / jnp.maximum(nonzero, 1)).astype(jnp.float32),
            last_finite=finite,
            inner_state=new_inner,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dynamic_loss_scaling(
    inner: optax.GradientTransformation,
    *,
    variant: str = "pytorch",
    init_scale: float | None = None,
    growth_factor: float = 2.0,
    backoff_factor: float = 0.5,
    growth_interval: int = 2000,
    min_scale: float | None | str = "variant",
    fmt: FormatLike | None = None,
    saturate: bool = False,
    detect_saturation: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` with dynamic loss scaling (PyTorch ``GradScaler`` by default).

    The gradients it receives are those of ``loss * scale``. It unscales them, checks
    them, and either runs ``inner`` or skips the step (updates of ``-0.0``, so that
    ``optax.apply_updates`` leaves every parameter bitwise unchanged, and ``inner``'s
    state untouched). Then it adjusts the scale by the rules of ``variant`` (see the
    table in :mod:`fpsim.optim._loss_scaling`).

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

    Saturating formats: a format with ``saturate=True`` turns overflow into ``+-max``,
    which no isfinite test can see. With ``fmt`` and ``saturate=True`` this wrapper counts
    entries at ``+-fmt.max`` as overflow (a gradient that is genuinely exactly ``max`` is
    a false alarm). With ``detect_saturation=False``, or without ``fmt``, saturation is
    NOT detected and training silently continues with clipped gradients.

    Args:
      inner: the optimizer that receives the unscaled gradients.
      variant: ``"pytorch"`` (default), ``"keras"``, ``"flax"`` or ``"jmp"``.
      init_scale: initial scale; default the variant's (2**16 or 2**15).
      growth_factor: scale multiplier after ``growth_interval`` finite steps (> 1).
      backoff_factor: scale multiplier on a non-finite step (0 < backoff_factor < 1).
      growth_interval: consecutive finite steps before the scale grows (an int >= 1).
      min_scale: lower bound after a backoff; ``"variant"`` uses the variant's (none for
        pytorch and keras, ``2**-126`` for flax, 1 for jmp), ``None`` means no bound.
      fmt: if given, the scaled gradients are rounded to this format (nearest) before
        anything else, simulating gradients stored in it. Idempotent for gradients that
        are already on its grid.
      saturate: with ``fmt``, overflow goes to ``+-fmt.max`` instead of inf/NaN.
      detect_saturation: with ``fmt`` and ``saturate``, treat ``+-fmt.max`` as overflow.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with :class:`LossScalingState`.

    Raises:
      ValueError: unknown variant, or a factor or interval out of its range (as in
        PyTorch's ``GradScaler``).

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018.
      Zhao et al., "Adaptive Loss Scaling for Mixed Precision Training", 2019.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown loss-scaling variant {variant!r}; valid: {VARIANTS}")
    defaults = _DEFAULTS[variant]
    init_scale = defaults["init_scale"] if init_scale is None else init_scale
    min_scale = defaults["min_scale"] if isinstance(min_scale, str) else min_scale
    if isinstance(min_scale, str):
        raise ValueError("min_scale must be a number, None or 'variant'")
    _check_positive(init_scale=init_scale)
    _check_dynamic(growth_factor, backoff_factor, growth_interval)

    def adjust(scale, tracker, finite):
        return _grow_shrink(
            variant,
            scale,
            tracker,
            finite,
            growth_factor,
            backoff_factor,
            growth_interval,
            min_scale,
        )

    return _loss_scaling(
        inner,
        init_scale,
        adjust,
        variant in ("pytorch", "jmp"),
        fmt,
        saturate,
        detect_saturation,
    )


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
    consecutive finite steps).

    Args:
      inner: the optimizer that receives the unscaled gradients.
      scale: the loss scale (a power of two keeps unscaling exact).
      fmt: see :func:`dynamic_loss_scaling`.
      saturate: see :func:`dynamic_loss_scaling`.
      detect_saturation: see :func:`dynamic_loss_scaling`.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with :class:`LossScalingState`.
    """
    _check_positive(scale=scale)

    def adjust(s, tracker, finite):
        return s, jnp.where(finite, tracker + 1, 0).astype(jnp.int32)

    return _loss_scaling(inner, scale, adjust, False, fmt, saturate, detect_saturation)


def _check_positive(**values) -> None:
    for name, v in values.items():  # arrays (e.g. from inject_hyperparams) pass through
        if isinstance(v, int | float) and not v > 0:
            raise ValueError(f"{name} must be positive, got {v!r}")


def _check_dynamic(growth_factor, backoff_factor, growth_interval) -> None:
    """PyTorch GradScaler's ranges; arrays (e.g. from inject_hyperparams) pass through."""
    bools = (bool, np.bool_)

    def real(v):
        return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
            v, bools
        )

    if isinstance(growth_factor, bools) or (real(growth_factor) and not growth_factor > 1):
        raise ValueError(f"growth_factor must be > 1 (to grow), got {growth_factor!r}")
    if isinstance(backoff_factor, bools) or (
        real(backoff_factor) and not 0 < backoff_factor < 1
    ):
        raise ValueError(
            "backoff_factor must satisfy 0 < backoff_factor < 1 (to shrink), got "
            f"{backoff_factor!r}"
        )
    # a float or bool interval never equals the integer counter: the scale never grows
    if isinstance(growth_interval, (*bools, float, np.floating)) or (
        real(growth_interval) and not growth_interval >= 1
    ):
        raise ValueError(f"growth_interval must be an int >= 1, got {growth_interval!r}")


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
