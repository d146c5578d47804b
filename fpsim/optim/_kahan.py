"""Kahan-compensated low-precision parameters (Zamirai et al., "Revisiting BFloat16")."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fpsim.arith import add_round
from fpsim.formats import get_format
from fpsim.optim._common import NO_PARAMS_MSG
from fpsim.rounding import FormatLike


class KahanParamsState(NamedTuple):
    """State of :func:`kahan_params`.

    Attributes:
      count: int32, updates seen.
      compensation: per parameter, the low-precision buffer ``c`` (on ``fmt``'s grid)
        holding the part of past updates that the weights could not absorb, negated.
    """

    count: jax.Array
    compensation: Any


def kahan_params(fmt: FormatLike) -> optax.GradientTransformation:
    """Kahan-summed weight updates for parameters stored in ``fmt`` (BF16, FP16, ...).

    Use it last in a chain; the parameters must start on ``fmt``'s grid. Each update
    ``u`` is added with Kahan's compensated summation, every operation rounded to
    ``fmt`` (nearest), as a BF16 unit with a second BF16 buffer would do it::

        y = u - c          # the update plus what earlier steps failed to add
        s = p + y          # the new weights: p moves only if |y| >= ulp(p) / 2
        c = (s - p) - y    # minus the part of y that did not make it into s
        p = s

    Updates far below half an ulp are not lost: they pile up in ``c`` (which has the
    format's full relative precision at its own small magnitude) until they move ``p``.
    Each operation is a single rounding of the exact result (see
    :func:`fpsim.optim.apply_updates`).

    Args:
      fmt: the storage format of the weights and of the compensation buffer.

    Returns:
      A :class:`optax.GradientTransformation` with :class:`KahanParamsState`; its updates
      are ``s - p``, so ``optax.apply_updates`` yields ``s`` when that difference is
      exact in float32 (weights within ~16 binades of their previous value for BF16).

    References:
      Kahan, "Further remarks on reducing truncation errors", CACM 1965.
      Zamirai et al., "Revisiting BFloat16 Training", arXiv:2010.06192, 2020.
    """
    fmt = get_format(fmt)

    def init_fn(params):
        comp = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        return KahanParamsState(jnp.zeros((), jnp.int32), comp)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)

        def one(u, c, p):
            p = jnp.asarray(p, jnp.float32)
            u = jnp.asarray(u, jnp.float32)
            y = add_round(u, -c, fmt)
            s = add_round(p, y, fmt)
            c_new = add_round(s - p, -y, fmt)  # s - p: exact in float32 for nearby s, p
            return s - p, c_new

        pairs = jax.tree.map(one, updates, state.compensation, params)
        treedef = jax.tree.structure(updates)
        flat = treedef.flatten_up_to(pairs)
        new_updates = treedef.unflatten([a for a, _ in flat])
        comp = treedef.unflatten([b for _, b in flat])
        return new_updates, KahanParamsState(state.count + 1, comp)

    return optax.GradientTransformation(init_fn, update_fn)


__all__ = ["KahanParamsState", "kahan_params"]
