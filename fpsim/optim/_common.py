"""Small helpers shared by the fpsim.optim transforms (keys, leaves, state lookup)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fpsim import _keys
from fpsim.rounding import check_rounding


def state_key(key, *, needed: bool, what: str) -> jax.Array:
    """The raw ``uint32[2]`` key data an optimizer state keeps (see ``fpsim._keys``);
    zeros when no key is given and none is ``needed``."""
    if key is None and not needed:
        return jnp.zeros((2,), jnp.uint32)
    return _keys.key_data(key, what=f"{what} with rounding='stochastic'")


def step_keys(key_data: jax.Array, step, tree) -> Any:
    """A typed key per leaf of ``tree`` for update ``step``: ``derive(key, step, i)``.

    The state's key stays fixed; the step count makes each update's keys new.
    """
    return _keys.tree_keys(_keys.canonical_key(key_data), tree, step)


def check_mode(rounding: str, allowed: tuple[str, ...] | None = None) -> None:
    """Validate a rounding mode, optionally against a narrower list."""
    check_rounding(rounding)
    if allowed is not None and rounding not in allowed:
        raise ValueError(f"rounding {rounding!r} is not supported here; valid: {allowed}")


def find_states(opt_state, cls) -> list:
    """All sub-states of type ``cls`` in a (possibly nested) optimizer state."""
    found = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
    return [s for s in found if isinstance(s, cls)]


def find_state(opt_state, cls, what: str):
    """The unique sub-state of type ``cls``; clear errors when none or several exist."""
    found = find_states(opt_state, cls)
    if not found:
        raise ValueError(
            f"no {cls.__name__} in this optimizer state: is {what} part of the optimizer?"
        )
    if len(found) > 1:
        raise ValueError(
            f"{len(found)} {cls.__name__}s in this optimizer state; pass the sub-state "
            "you mean"
        )
    return found[0]


NO_PARAMS_MSG = (
    "this transform needs the current params: call opt.update(updates, state, params)"
)
