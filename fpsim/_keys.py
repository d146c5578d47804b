"""Random keys, one way: how fpsim accepts a key and how it derives the keys it uses.

Stochastic rounding needs a fresh random stream at every call site and every step; the
same key used twice gives the same random bits twice, and then rounding errors that
should cancel on average add up instead. fpsim follows two rules everywhere:

1. **Accept** a key the way optax does (``optax.tree_utils`` / ``canonicalize_key``):
   a typed key (``jax.random.key(seed)``), a raw ``uint32[2]`` key
   (``jax.random.PRNGKey(seed)``) or an int seed. :func:`canonical_key` turns each into
   a typed key; anything else is a ``TypeError`` naming what was given.
2. **Derive** keys by folding in integers, never by ad-hoc splitting:
   ``derive(key, a, b, ...)`` is ``fold_in(fold_in(key, a), b) ...``. A call site
   passes its own fixed "tag" (a small integer naming the site or the stage of an
   algorithm) and the varying indices (step, device, level, element block). Two
   different paths of integers give independent streams; the same path gives the
   same stream, so results are reproducible.

Optimizer states keep the raw ``uint32[2]`` data of a key (:func:`key_data`), because
typed keys cannot be converted to numpy arrays and so do not checkpoint; they re-wrap
it with :func:`canonical_key` at every update.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_key(key) -> bool:
    """Whether ``key`` is a typed key or raw ``uint32[2]`` key data."""
    dt = getattr(key, "dtype", None)
    if dt is None:
        return False
    if jnp.issubdtype(dt, jax.dtypes.prng_key):
        return True
    return dt == jnp.uint32 and getattr(key, "shape", None) == (2,)


def canonical_key(key, *, what: str = "stochastic rounding") -> jax.Array:
    """A typed JAX key from a typed key, raw ``uint32[2]`` key data or an int seed.

    Raises:
      ValueError: ``key`` is None (``what`` names the caller that needs it).
      TypeError: anything else.
    """
    if key is None:
        raise ValueError(
            f"{what} needs a random key, e.g. key=jax.random.key(0); use a different key "
            "at every call site and step (fpsim derives per-site keys with fold_in)"
        )
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return jax.random.key(int(key))
    dt = getattr(key, "dtype", None)
    if dt is not None and jnp.issubdtype(dt, jax.dtypes.prng_key):
        return key
    if dt == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"{what}: key must be a JAX random key (jax.random.key(seed)), raw key data "
        f"(jax.random.PRNGKey(seed)) or an int seed, got {type(key).__name__}"
    )


def key_data(key, *, what: str = "stochastic rounding") -> jax.Array:
    """The raw ``uint32[2]`` data of a key (for optimizer states that checkpoint)."""
    data = jax.random.key_data(canonical_key(key, what=what))
    if data.shape != (2,):
        raise ValueError(f"{what}: key must be a threefry key (jax.random.key(seed))")
    return data.astype(jnp.uint32)


def derive(key: jax.Array, *path) -> jax.Array:
    """``fold_in`` each integer of ``path`` in turn: the one way fpsim derives keys."""
    for p in path:
        key = jax.random.fold_in(key, p)
    return key


def derive_many(key: jax.Array, n: int, *path) -> jax.Array:
    """``n`` keys ``derive(key, *path, i)`` for ``i`` in ``range(n)``, as one array."""
    base = derive(key, *path)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n, dtype=jnp.uint32))


def tree_keys(key: jax.Array, tree, *path) -> Any:
    """A tree of keys shaped like ``tree``: leaf ``i`` gets ``derive(key, *path, i)``."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = [derive(key, *path, i) for i in range(len(leaves))]
    return jax.tree_util.tree_unflatten(treedef, keys)
