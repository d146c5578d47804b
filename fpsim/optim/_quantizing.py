"""Low-precision training state: gradients, optimizer state and parameters on a grid.

These are the four roles of QPyTorch's ``OptimLP`` as optax transforms:
:func:`quantize_updates` (gradients), :func:`quantize_optimizer_state` (momentum, Adam
moments), :func:`quantize_params` (weights, with or without a float32 master copy) and
the explicit :func:`apply_updates`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fpsim import stats
from fpsim._bits import F32, is_float
from fpsim.arith import add_round
from fpsim.formats import get_format
from fpsim.optim import _common
from fpsim.rounding import FormatLike, Rounding, quantize


def _round_tree(tree, fmt, rounding, keys, saturate, subnormals):
    """Quantize every float leaf; ``keys`` is a tree of keys like ``tree`` (or None)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    key_leaves = [None] * len(leaves) if keys is None else jax.tree_util.tree_leaves(keys)
    out = [
        quantize(x, fmt, rounding, key=k, saturate=saturate, subnormals=subnormals)
        if is_float(x)
        else x
        for x, k in zip(leaves, key_leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


def _keys_for(rounding, key_data, step, tree):
    """Per-leaf keys of update ``step`` for stochastic rounding, else None."""
    return _common.step_keys(key_data, step, tree) if rounding == "stochastic" else None


class QuantizeUpdatesState(NamedTuple):
    """State of :func:`quantize_updates`.

    Attributes:
      count: int32, updates seen.
      key: uint32[2], raw PRNG key data (fixed; update ``t`` derives its keys with
        ``t``, see ``fpsim._keys``; zeros unless stochastic).
      underflow: int32, entries at the last update that were nonzero and became zero.
      overflow: int32, finite entries at the last update too large for the format.
      total_underflow: int32, running sum of ``underflow``.
      total_overflow: int32, running sum of ``overflow``.
    """

    count: jax.Array
    key: jax.Array
    underflow: jax.Array
    overflow: jax.Array
    total_underflow: jax.Array
    total_overflow: jax.Array


def _under_over(x, q, fmt, rounding, subnormals=True):
    """(underflow, overflow) counts for one leaf rounded from x to q."""
    ax = F32.to_bits(x) & jnp.uint32(F32.abs_mask)
    aq = F32.to_bits(q) & jnp.uint32(F32.abs_mask)
    finite = ax < jnp.uint32(F32.inf_bits)
    # counted on the result: value_counts knows nothing of flushed subnormals
    under = jnp.sum(finite & (ax != 0) & (aq == 0)).astype(jnp.int32)
    if rounding != "stochastic":  # exact classification from fpsim.stats
        c = stats.value_counts(x, fmt, rounding)
        return (c.underflow if subnormals else under), c.overflow
    max_bits = jnp.uint32(F32.bits_of(fmt.max))
    over = finite & ((aq > max_bits) | ((aq == max_bits) & (ax > max_bits)))
    return under, jnp.sum(over).astype(jnp.int32)


def quantize_updates(
    fmt: FormatLike,
    rounding: Rounding = "nearest",
    *,
    key: jax.Array | None = None,
    saturate: bool = False,
    subnormals: bool = True,
) -> optax.GradientTransformation:
    """Round the updates (usually gradients) onto ``fmt``'s grid, counting losses.

    Put it first in a chain to simulate gradients communicated or stored in ``fmt``.
    Counts are per update: ``underflow`` (nonzero entries that became 0) and
    ``overflow`` (finite entries beyond ``fmt.max``: they became inf/NaN, or ``+-max``
    with ``saturate=True``). With deterministic modes the counts are those of
    :func:`fpsim.value_counts`; with stochastic rounding, and for ``underflow`` with
    ``subnormals=False`` (flushed subnormals are lost too), they are counted on the
    result.

    Args:
      fmt: the format (a :class:`fpsim.Format` or a name).
      rounding: any mode of :func:`fpsim.quantize`.
      key: PRNG key, required for ``"stochastic"``; update ``t`` rounds leaf ``i`` with
        ``fpsim._keys.derive(key, t, i)``.
      saturate: overflow to ``+-max`` instead of inf/NaN.
      subnormals: if False, flush subnormal results to zero.

    Returns:
      A :class:`optax.GradientTransformation` with :class:`QuantizeUpdatesState`.
    """
    fmt = get_format(fmt)
    _common.check_mode(rounding)
    key0 = _common.state_key(key, needed=rounding == "stochastic", what="quantize_updates")

    def init_fn(params):
        del params
        z = jnp.zeros((), jnp.int32)
        return QuantizeUpdatesState(z, key0, z, z, z, z)

    def update_fn(updates, state, params=None):
        del params
        keys = _keys_for(rounding, state.key, state.count + 1, updates)
        q = _round_tree(updates, fmt, rounding, keys, saturate, subnormals)
        under = over = jnp.zeros((), jnp.int32)
        for x, y in zip(jax.tree.leaves(updates), jax.tree.leaves(q), strict=True):
            if is_float(x):
                x32 = jnp.asarray(x, jnp.float32)
                u, o = _under_over(x32, y, fmt, rounding, subnormals)
                under, over = under + u, over + o
        new_state = QuantizeUpdatesState(
            state.count + 1,
            state.key,
            under,
            over,
            state.total_underflow + under,
            state.total_overflow + over,
        )
        return q, new_state

    return optax.GradientTransformation(init_fn, update_fn)


class QuantizedOptimizerState(NamedTuple):
    """State of :func:`quantize_optimizer_state`: the inner state, on ``fmt``'s grid."""

    count: jax.Array
    key: jax.Array
    inner_state: Any


def quantize_optimizer_state(
    inner: optax.GradientTransformation,
    fmt: FormatLike,
    rounding: Rounding = "nearest",
    *,
    key: jax.Array | None = None,
    saturate: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Keep every floating-point leaf of ``inner``'s state (momentum, Adam's moments)
    on ``fmt``'s grid, as if stored in ``fmt``; integer leaves (step counts) are kept.

    The inner update runs in float32 on the stored (quantized) state, and its new state
    is rounded again before it is stored. Beware of formats with a small range for
    Adam's second moment (squares of gradients underflow early).

    Args:
      inner: the optimizer whose state is stored in low precision.
      fmt: the storage format.
      rounding: any mode of :func:`fpsim.quantize`.
      key: PRNG key, required for ``"stochastic"``.
      saturate: overflow to ``+-max`` instead of inf/NaN.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with
      :class:`QuantizedOptimizerState`.
    """
    inner = optax.with_extra_args_support(inner)
    fmt = get_format(fmt)
    _common.check_mode(rounding)
    key0 = _common.state_key(
        key, needed=rounding == "stochastic", what="quantize_optimizer_state"
    )

    def init_fn(params):
        inner_state = inner.init(params)
        keys = _keys_for(rounding, key0, 0, inner_state)
        inner_state = _round_tree(inner_state, fmt, rounding, keys, saturate, True)
        return QuantizedOptimizerState(jnp.zeros((), jnp.int32), key0, inner_state)

    def update_fn(updates, state, params=None, **extra_args):
        updates, inner_state = inner.update(
            updates, state.inner_state, params, **extra_args
        )
        keys = _keys_for(rounding, state.key, state.count + 1, inner_state)
        inner_state = _round_tree(inner_state, fmt, rounding, keys, saturate, True)
        return updates, QuantizedOptimizerState(state.count + 1, state.key, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class QuantizeParamsState(NamedTuple):
    """State of :func:`quantize_params`.

    Attributes:
      count: int32, updates seen.
      key: uint32[2], raw PRNG key data (fixed, as in :class:`QuantizeUpdatesState`).
      master: the float32 master copy of the parameters, or ``()`` without one.
      inexact: int32, entries at the last update where ``p + update`` would not land
        exactly on the rounded value (see :func:`quantize_params`); 0 in practice.
    """

    count: jax.Array
    key: jax.Array
    master: Any
    inexact: jax.Array


def quantize_params(
    fmt: FormatLike,
    rounding: Rounding = "nearest",
    *,
    key: jax.Array | None = None,
    master_weights: bool = False,
    saturate: bool = False,
) -> optax.GradientTransformation:
    """Rewrite the updates so that ``optax.apply_updates`` leaves params on ``fmt``'s grid.

    Use it last in a chain. Without a master copy, the new parameters are
    ``quantize(p + u)`` (the sum rounded once, exactly, see :func:`apply_updates`):
    with BF16 and nearest rounding, any update smaller than half an ulp of ``p``
    vanishes, and training stagnates. Stochastic rounding keeps the expected update.
    With ``master_weights=True`` a float32 copy ``m`` in the state accumulates the
    updates exactly as in float32 training and the parameters are ``quantize(m)``
    (mixed-precision training: the model computes with the low-precision weights).

    The returned update is ``q - p``. ``p + (q - p) == q`` holds when that subtraction is
    exact in float32, which is the case when ``p`` and ``q`` are within about
    ``24 - mantissa_bits`` binades of each other; the state counts any entry where it
    does not hold in ``inexact``. :func:`apply_updates` has no such limit.

    Args:
      fmt: the parameter format.
      rounding: ``"nearest"``, ``"stochastic"`` or a directed mode.
      key: PRNG key, required for ``"stochastic"``; update ``t`` rounds leaf ``i`` with
        ``fpsim._keys.derive(key, t, i)``.
      master_weights: keep a float32 master copy in the state.
      saturate: overflow to ``+-max`` instead of inf/NaN.

    Returns:
      A :class:`optax.GradientTransformation` with :class:`QuantizeParamsState`.

    References:
      Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015.
      Micikevicius et al., "Mixed Precision Training", ICLR 2018.
    """
    fmt = get_format(fmt)
    _common.check_mode(rounding)
    key0 = _common.state_key(key, needed=rounding == "stochastic", what="quantize_params")

    def init_fn(params):
        master = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        return QuantizeParamsState(
            jnp.zeros((), jnp.int32),
            key0,
            master if master_weights else (),
            jnp.zeros((), jnp.int32),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(_common.NO_PARAMS_MSG)
        p32 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
        keys = _keys_for(rounding, state.key, state.count + 1, p32)
        if master_weights:
            master = jax.tree.map(
                lambda m, u: m + jnp.asarray(u, jnp.float32), state.master, updates
            )
            q = _round_tree(master, fmt, rounding, keys, saturate, True)
        else:
            master = ()
            q = _sum_round_tree(p32, updates, fmt, rounding, keys, saturate)
        new_updates = jax.tree.map(lambda a, b: a - b, q, p32)

        def misses(p, u, a):  # bit compares: XLA CPU float compares flush subnormals
            got, want = F32.to_bits(p + u), F32.to_bits(a)
            same = got == want
            got, want = got & jnp.uint32(F32.abs_mask), want & jnp.uint32(F32.abs_mask)
            ok = same | ((got == 0) & (want == 0)) | jnp.isnan(a)
            return jnp.sum(~ok).astype(jnp.int32)

        inexact = sum(
            misses(p, u, a)
            for p, u, a in zip(
                jax.tree.leaves(p32),
                jax.tree.leaves(new_updates),
                jax.tree.leaves(q),
                strict=True,
            )
        )
        return new_updates, QuantizeParamsState(
            state.count + 1, state.key, master, jnp.asarray(inexact, jnp.int32)
        )

    return optax.GradientTransformation(init_fn, update_fn)


def apply_updates(
    params,
    updates,
    fmt: FormatLike,
    rounding: Rounding = "nearest",
    *,
    key: jax.Array | None = None,
    saturate: bool = False,
):
    """``quantize(params + updates, fmt)``, with the sum rounded only once.

    ``fl32(p + u)`` followed by ``quantize`` would round twice; here the exact sum is
    rounded once (:func:`fpsim.arith.add_round`: TwoSum, then round-to-odd, or for
    stochastic rounding a draw against the exact remainder). For FP32 itself and round
    to nearest this is float32's own addition: ``apply_updates(1.0, 2**-25, "fp32")``
    is 1.0.
    Unlike ``optax.apply_updates`` followed by a quantizing transform, the result is on
    the grid whatever the sizes of ``p`` and ``u``.

    Args:
      params: the parameters (any pytree of float arrays).
      updates: a pytree of the same structure.
      fmt: the parameter format.
      rounding: any mode of :func:`fpsim.quantize`.
      key: PRNG key for ``"stochastic"`` (leaf ``i`` uses ``derive(key, 0, i)``).
      saturate: overflow to ``+-max`` instead of inf/NaN.

    Returns:
      The new parameters, float32, on ``fmt``'s grid.
    """
    fmt = get_format(fmt)
    _common.check_mode(rounding)
    key0 = _common.state_key(key, needed=rounding == "stochastic", what="apply_updates")
    keys = _keys_for(rounding, key0, 0, params)
    return _sum_round_tree(params, updates, fmt, rounding, keys, saturate)


def _sum_round_tree(params, updates, fmt, rounding, keys, saturate):
    """``fmt(p + u)`` per leaf: the exact sum rounded once (``fpsim.arith.add_round``)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    ups = treedef.flatten_up_to(updates)
    key_leaves = [None] * len(leaves) if keys is None else jax.tree_util.tree_leaves(keys)
    out = [
        add_round(
            jnp.asarray(p, jnp.float32),
            jnp.asarray(u, jnp.float32),
            fmt,
            rounding,
            k,
            saturate=saturate,
        )  # fmt: skip
        for p, u, k in zip(leaves, ups, key_leaves, strict=True)
    ]
    return treedef.unflatten(out)


__all__ = [
    "QuantizeParamsState", "QuantizeUpdatesState", "QuantizedOptimizerState",
    "apply_updates", "quantize_optimizer_state", "quantize_params", "quantize_updates",
]  # fmt: skip
