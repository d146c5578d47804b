"""Loss-scaling rules as values: static scaling and the four frameworks' dynamic rules.

A rule is a frozen dataclass (hashable, so a valid jit static argument) with three
pure functions, as in jmp:

* ``init() -> LossScale``: the first scale and counter;
* ``unscale(grads, scale) -> grads``: divide the gradients of ``loss * scale`` by it;
* ``adjust(state, finite) -> LossScale``: the next scale after a step whose gradients
  were (or were not) all finite.

The frameworks differ in a handful of choices, and each choice is a field, so a new
framework's rule is a new value (``DynamicLossScaling(...)`` or
``PYTORCH.replace(...)``), not a new branch. The four rules, read from their source
(PyTorch ``aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp``
``_amp_update_scale_cpu_kernel`` and ``torch/amp/grad_scaler.py``; Keras 3
``keras/src/optimizers/loss_scale_optimizer.py``; Flax ``flax/training/
dynamic_scale.py``; jmp ``jmp/_src/loss_scale.py``), with ``N = growth_interval``:

=======  ==========  ========================================  =========  ===========
rule     init scale  grows (x growth_factor) on the step       min scale  factor,
                                                                          unscale
=======  ==========  ========================================  =========  ===========
pytorch  2**16       completing N consecutive finite steps;    none       double,
                     not if the grown scale would be inf                  g * (1/s)
keras    2**15       completing N consecutive finite steps     none       float32,
                     (no inf guard)                                       g / s
flax     2**16       *after* N finite steps: the (N+1)-th;     2**-126    float32,
                     grown scale capped at float32 max                    g / s
jmp      2**15 [#]_  completing N consecutive finite steps;    1.0        float32,
                     not if the grown scale would be inf                  g * (1/s)
=======  ==========  ========================================  =========  ===========

.. [#] jmp has no default; 2**15 is the value in its docstring example.

All reset the consecutive-finite counter on a non-finite step and multiply the scale by
``backoff_factor`` (0.5). "double" means the float32 scale is multiplied by the factor
as a C++ ``double`` and the product converted to float32 (PyTorch); "float32" means the
factor is first rounded to float32 (the JAX and Keras frameworks compute in float32).
All arithmetic is rounded once and keeps subnormal results (see
:mod:`fpsim.scaling._exact`): a scale of ``2**127`` unscales by ``2**-127``, and 143
backoffs from ``2**16`` reach the subnormal ``2**-127``, not 0.

**Stuck scales.** A scale that reaches 0 (about 300 non-finite steps in a row without a
minimum) or inf (Keras, which grows without a guard) can never recover: every later
step is non-finite and skipped. The rules keep the frameworks' behaviour;
:func:`is_stuck` names the condition so that wrappers can report it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fpsim.scaling import _exact

_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)  # 2**-126, Flax's default minimum_scale

GROW_TIMINGS = ("completed", "after")
OVERFLOW_RULES = ("keep", "cap", "allow")
FACTOR_PRECISIONS = ("double", "float32")
UNSCALE_METHODS = ("reciprocal", "divide")


class LossScale(NamedTuple):
    """The state a loss-scaling rule carries from step to step.

    Attributes:
      scale: float32 scalar, the loss scale to multiply the *next* loss by.
      growth_tracker: int32, consecutive finite steps counted toward the next growth.
    """

    scale: jax.Array
    growth_tracker: jax.Array


def is_stuck(scale: jax.ArrayLike) -> jax.Array:
    """Whether a loss scale can no longer recover: it is 0, inf or NaN.

    Every gradient of ``loss * 0`` is zero and every gradient of ``loss * inf`` is
    non-finite, so no rule moves such a scale again (``0 * factor = 0``).
    """
    scale = jnp.asarray(scale, jnp.float32)
    return (scale == 0) | ~jnp.isfinite(scale)


def unscale(grads, scale: jax.ArrayLike, method: str = "divide"):
    """``grads / scale`` leaf by leaf, in float32, rounded once, subnormals kept.

    ``scale`` is a scalar or a tree of scalars shaped like ``grads`` (per-layer scales).
    ``method="reciprocal"`` multiplies by ``float32(1/scale)`` as PyTorch and jmp do
    (the same result whenever ``1/scale`` is exact, e.g. for powers of two).
    """
    if method not in UNSCALE_METHODS:
        raise ValueError(f"unknown unscale method {method!r}; valid: {UNSCALE_METHODS}")

    def one(g, s):
        if method == "reciprocal":
            return _exact.mul_f32(g, _exact.reciprocal(s))
        return _exact.div(g, s)

    if jax.tree_util.treedef_is_leaf(jax.tree.structure(scale)):
        return jax.tree.map(lambda g: one(g, scale), grads)
    return jax.tree.map(one, grads, scale)


def _check_scale(name: str, value, *, allow_none: bool = False) -> None:
    """A positive number that float32 holds as a finite nonzero value (arrays pass)."""
    if value is None and allow_none:
        return
    if isinstance(value, jax.Array | np.ndarray) and not isinstance(value, np.generic):
        return  # traced or injected hyperparameters are not checked
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise TypeError(
            f"{name} must be a positive number{' or None' if allow_none else ''}, "
            f"got {value!r} ({type(value).__name__})"
        )
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    f32 = float(np.float32(v)) if v <= _F32_MAX * (1 + 2.0**-24) else math.inf
    if not math.isfinite(f32):
        raise ValueError(
            f"{name}={value!r} overflows float32 (max {_F32_MAX:.6g}): the scale would "
            "be inf and every step skipped; use a power of two up to 2**127"
        )
    if f32 == 0:
        raise ValueError(f"{name}={value!r} underflows float32 to 0")


def _check_factor(name, value, ok, what) -> None:
    if isinstance(value, jax.Array) and not isinstance(value, np.generic):
        return
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(float(value)) and ok(float(value))):
        raise ValueError(f"{name} must satisfy {what}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class StaticLossScaling:
    """A fixed loss scale: unscale, never adjust (``growth_tracker`` counts finite steps).

    Attributes:
      init_scale: the scale (a power of two keeps unscaling exact).
      unscale_method: ``"divide"`` or ``"reciprocal"`` (see :func:`unscale`).
    """

    init_scale: float = 1.0
    unscale_method: str = "divide"
    name: str = "static"

    def __post_init__(self):
        _check_scale("scale", self.init_scale)
        if self.unscale_method not in UNSCALE_METHODS:
            raise ValueError(
                f"unscale_method must be one of {UNSCALE_METHODS}, "
                f"got {self.unscale_method!r}"
            )

    def init(self) -> LossScale:
        return LossScale(
            jnp.asarray(self.init_scale, jnp.float32), jnp.zeros((), jnp.int32)
        )

    def unscale(self, grads, scale):
        return unscale(grads, scale, self.unscale_method)

    def adjust(self, state: LossScale, finite: jax.ArrayLike) -> LossScale:
        tracker = jnp.where(finite, state.growth_tracker + 1, 0).astype(jnp.int32)
        return LossScale(state.scale, tracker)

    def replace(self, **changes) -> StaticLossScaling:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class DynamicLossScaling:
    """A dynamic loss-scaling rule (see the table in :mod:`fpsim.scaling._loss`).

    Attributes:
      name: a label (``"pytorch"``, ...).
      init_scale: the first scale.
      growth_factor: scale multiplier after ``growth_interval`` finite steps (> 1).
      backoff_factor: scale multiplier on a non-finite step (0 < backoff_factor < 1).
      growth_interval: consecutive finite steps before the scale grows (an int >= 1).
      min_scale: lower bound after a backoff, or None.
      grow: ``"completed"``: the ``N``-th consecutive finite step grows the scale
        (PyTorch, Keras, jmp); ``"after"``: the step after ``N`` finite steps (Flax).
      overflow: what growth does when the grown scale is inf in float32: ``"keep"`` the
        old scale (PyTorch, jmp), ``"cap"`` at float32 max (Flax), ``"allow"`` inf
        (Keras).
      factor_precision: ``"double"`` (PyTorch: float32 scale times a C++ double) or
        ``"float32"`` (the factor is rounded to float32 first).
      unscale_method: ``"reciprocal"`` (``g * float32(1/s)``: PyTorch, jmp) or
        ``"divide"`` (``g / s``: Keras, Flax).
    """

    name: str = "custom"
    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    min_scale: float | None = None
    grow: str = "completed"
    overflow: str = "keep"
    factor_precision: str = "double"
    unscale_method: str = "reciprocal"

    def __post_init__(self):
        _check_scale("init_scale", self.init_scale)
        _check_scale("min_scale", self.min_scale, allow_none=True)
        _check_factor("growth_factor", self.growth_factor, lambda v: v > 1, "> 1 (to grow)")
        _check_factor(
            "backoff_factor", self.backoff_factor, lambda v: 0 < v < 1,
            "0 < backoff_factor < 1 (to shrink)",
        )  # fmt: skip
        gi = self.growth_interval
        # a float or bool interval never equals the integer counter: the scale never grows
        if not isinstance(gi, jax.Array) and (
            isinstance(gi, bool | np.bool_ | float | np.floating)
            or not isinstance(gi, int | np.integer)
            or gi < 1
        ):
            raise ValueError(f"growth_interval must be an int >= 1, got {gi!r}")
        for field, valid in (
            ("grow", GROW_TIMINGS),
            ("overflow", OVERFLOW_RULES),
            ("factor_precision", FACTOR_PRECISIONS),
            ("unscale_method", UNSCALE_METHODS),
        ):
            if getattr(self, field) not in valid:
                raise ValueError(
                    f"{field} must be one of {valid}, got {getattr(self, field)!r}"
                )

    def init(self) -> LossScale:
        return LossScale(
            jnp.asarray(self.init_scale, jnp.float32), jnp.zeros((), jnp.int32)
        )

    def unscale(self, grads, scale):
        return unscale(grads, scale, self.unscale_method)

    def _times(self, scale, factor):
        if self.factor_precision == "float32" and not isinstance(factor, jax.Array):
            factor = float(np.float32(factor))
        elif self.factor_precision == "float32":
            factor = jnp.asarray(factor, jnp.float32)
        return _exact.mul(scale, factor)

    def adjust(self, state: LossScale, finite: jax.ArrayLike) -> LossScale:
        """The next :class:`LossScale` after a step whose gradients were ``finite``."""
        scale, tracker = state.scale, state.growth_tracker
        finite = jnp.asarray(finite, jnp.bool_)
        if self.grow == "after":  # grows when the counter *already* equals N
            grow = tracker == self.growth_interval
            new_tracker = jnp.where(grow | ~finite, 0, tracker + 1)
        else:  # the N-th consecutive finite step grows
            successful = tracker + 1
            grow = successful == self.growth_interval
            new_tracker = jnp.where(finite & ~grow, successful, 0)
        grown = self._times(scale, self.growth_factor)
        if self.overflow == "keep":  # "Do not grow the scale past fp32 bounds to inf."
            grown = jnp.where(jnp.isfinite(grown), grown, scale)
        elif self.overflow == "cap":
            grown = jnp.minimum(grown, _F32_MAX)
        backed_off = self._times(scale, self.backoff_factor)
        if self.min_scale is not None:
            backed_off = jnp.maximum(backed_off, jnp.float32(self.min_scale))
        new_scale = jnp.where(finite, jnp.where(grow, grown, scale), backed_off)
        return LossScale(new_scale.astype(jnp.float32), new_tracker.astype(jnp.int32))

    def replace(self, **changes) -> DynamicLossScaling:
        return dataclasses.replace(self, **changes)


PYTORCH = DynamicLossScaling(name="pytorch", init_scale=2.0**16)
KERAS = DynamicLossScaling(
    name="keras", init_scale=2.0**15, overflow="allow", factor_precision="float32",
    unscale_method="divide",
)  # fmt: skip
FLAX = DynamicLossScaling(
    name="flax", init_scale=2.0**16, min_scale=_F32_TINY, grow="after", overflow="cap",
    factor_precision="float32", unscale_method="divide",
)  # fmt: skip
JMP = DynamicLossScaling(
    name="jmp", init_scale=2.0**15, min_scale=1.0, factor_precision="float32"
)

#: The frameworks' rules by name.
RULES: dict[str, DynamicLossScaling] = {r.name: r for r in (PYTORCH, KERAS, FLAX, JMP)}


def get_rule(rule: str | DynamicLossScaling | StaticLossScaling):
    """A rule by name (``"pytorch"``, ``"keras"``, ``"flax"``, ``"jmp"``); a rule passes."""
    if isinstance(rule, DynamicLossScaling | StaticLossScaling):
        return rule
    if isinstance(rule, str) and rule in RULES:
        return RULES[rule]
    raise ValueError(
        f"unknown loss-scaling rule {rule!r}; valid: {tuple(RULES)} or a "
        "fpsim.scaling.DynamicLossScaling value"
    )


Rule = DynamicLossScaling | StaticLossScaling

__all__ = [
    "FLAX", "JMP", "KERAS", "PYTORCH", "RULES", "DynamicLossScaling", "LossScale", "Rule",
    "StaticLossScaling", "get_rule", "is_stuck", "unscale",
]  # fmt: skip
