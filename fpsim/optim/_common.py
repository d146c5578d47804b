"""Small helpers shared by the fpsim.optim transforms (keys, leaves, state lookup)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fpsim.rounding import check_rounding


def raw_key(key, *, needed: bool, what: str) -> jax.Array:
    """Canonicalise a PRNG key to raw ``uint32[2]`` data, which checkpoints as numpy.

    Typed keys (``jax.random.key``) cannot be turned into numpy arrays, so states keep
    the raw key data and re-wrap it at every update.
    """
    if key is None:
        if needed:
            raise ValueError(
                f"{what} with rounding='stochastic' needs a random key, e.g. "
                "key=jax.random.key(0); it is stored in the state and split every update"
            )
        return jnp.zeros((2,), jnp.uint32)
    dt = getattr(key, "dtype", None)
    if dt is not None and jnp.issubdtype(dt, jax.dtypes.prng_key):
        data = jax.random.key_data(key)
        if data.shape != (2,):
            raise ValueError("key must be a threefry key (jax.random.key(seed))")
        return data.astype(jnp.uint32)
    if dt == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return jnp.asarray(key)
    raise TypeError(
        f"key must be a JAX random key (jax.random.key(seed)), got {type(key).__name__}"
    )


def split_for_leaves(key_data: jax.Array, tree) -> tuple[jax.Array, Any]:
    """Advance a raw key: (new raw key for the state, a tree of typed keys)."""
    key = jax.random.wrap_key_data(key_data)
    key, sub = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    subs = list(jax.random.split(sub, max(len(leaves), 1)))[: len(leaves)]
    return jax.random.key_data(key), jax.tree_util.tree_unflatten(treedef, subs)


def check_mode(rounding: str, allowed: tuple[str, ...] | None = None) -> None:
    """Validate a rounding mode, optionally against a narrower list."""
    check_rounding(rounding)
    if allowed is not None and rounding not in allowed:
        raise ValueError(f"rounding {rounding!r} is not supported here; valid: {allowed}")


def is_float(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def abs_bits(x: jax.Array) -> jax.Array:
    """The magnitude of float32 ``x`` as uint32 bits (exact, unlike float compares)."""
    x = jnp.asarray(x, jnp.float32)
    return jax.lax.bitcast_convert_type(x, jnp.uint32) & jnp.uint32(0x7FFFFFFF)


def f32_bits(value: float) -> int:
    return int(np.asarray(value, np.float32).view(np.uint32))


def add_round_to_odd(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a + b`` in float32, rounded to odd, so that rounding it on is a single rounding.

    ``fl(a + b)`` followed by ``quantize`` rounds twice, which can land on the wrong side
    of a tie of the narrow format. TwoSum recovers the exact error ``e`` of the float32
    sum; if it is nonzero and the sum's last bit is even, the sum is moved one float32
    step toward the exact value. Rounding that "odd" result to any format at least two
    bits narrower than float32 equals rounding the exact ``a + b`` (Boldo & Melquiond).
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    bits = jax.lax.bitcast_convert_type(s, jnp.uint32)
    even = (bits & jnp.uint32(1)) == 0
    nudge = jnp.isfinite(s) & (e != 0) & even
    toward = jnp.where(e > 0, jnp.inf, -jnp.inf).astype(jnp.float32)
    return jnp.where(nudge, jnp.nextafter(s, toward), s)


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
