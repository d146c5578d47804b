"""The random Hadamard transform (RHT) that NVFP4 training applies before quantizing.

One outlier in a block sets the block's scale and pushes its other elements toward
zero (see :func:`fpsim.blocks.block_stats`). NVIDIA's NVFP4 training recipe
multiplies each run of 16 values by a *random Hadamard matrix* ``H D / 4``: ``D`` a
diagonal of random signs (one fixed sign vector, drawn once), ``H`` the 16x16
Sylvester Hadamard matrix of +-1 entries. The matrix is orthonormal, so it changes no
dot product (``(Ha) . (Hb) = a . b``: apply it to both operands of a matmul along the
reduction axis and the product is unchanged), but it spreads an outlier evenly over the
block: ``[64, 0, ..., 0]`` becomes sixteen values of magnitude 16. The signs keep a
structured input (a constant block) from landing on a single Hadamard row.

:func:`random_hadamard` and :func:`inverse_random_hadamard` are exact inverses in real
arithmetic; in float32 they agree with the input to a few ulps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fpsim._keys import canonical_key


def hadamard_matrix(n: int) -> np.ndarray:
    """The n x n Sylvester Hadamard matrix (entries +-1, ``H @ H.T == n * I``)."""
    if not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"block must be a power of two (2, 4, 8, 16, ...), got {n!r}")
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _signs(key, n: int) -> jax.Array:
    key = canonical_key(key, what="random_hadamard")
    return jax.random.rademacher(key, (n,), jnp.float32)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _apply(x, signs, axis: int, block: int, inverse: bool):
    h = jnp.asarray(hadamard_matrix(block) / np.sqrt(block), jnp.float32)
    xm = jnp.moveaxis(x, axis, -1)
    xb = xm.reshape(*xm.shape[:-1], -1, block)
    hi = jax.lax.Precision.HIGHEST
    if inverse:  # x = D H^T y / sqrt(n)
        out = jnp.einsum("...j,ij->...i", xb, h.T, precision=hi) * signs
    else:  # y = H D x / sqrt(n)
        out = jnp.einsum("...j,ij->...i", xb * signs, h, precision=hi)
    return jnp.moveaxis(out.reshape(xm.shape), -1, axis)


def _check(x, axis: int, block: int):
    hadamard_matrix(block)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"random_hadamard takes floating-point input, got dtype {x.dtype}")
    x = x.astype(jnp.float32)
    if x.ndim == 0:
        raise ValueError("random_hadamard needs at least one axis; got a scalar")
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax < x.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of {x.ndim} dims")
    if x.shape[ax] % block:
        raise ValueError(
            f"axis {axis} has length {x.shape[ax]}, not a multiple of the block {block}"
        )
    return x, ax


def random_hadamard(
    x: jax.typing.ArrayLike, key_or_seed, axis: int = -1, block: int = 16
) -> jax.Array:
    """Apply ``H D / sqrt(block)`` to every run of ``block`` values along ``axis``.

    Args:
      x: floating-point array; the axis length must be a multiple of ``block``.
      key_or_seed: a JAX key or an int seed: it draws the one sign vector ``D`` that
        every block shares (use the same key for the inverse and for both operands of
        a matmul).
      axis: the axis the blocks run along (for a matmul: the reduction axis).
      block: the Hadamard size, a power of two (NVFP4: 16).

    Returns:
      float32, ``x``'s shape.

    Example:
      >>> import numpy as np
      >>> from fpsim.blocks import random_hadamard
      >>> x = np.zeros(16, np.float32); x[3] = 64.0
      >>> sorted(set(np.abs(np.asarray(random_hadamard(x, 0))).tolist()))
      [16.0]
    """
    x, ax = _check(x, axis, block)
    return _apply(x, _signs(key_or_seed, block), ax, block, False)


def inverse_random_hadamard(
    y: jax.typing.ArrayLike, key_or_seed, axis: int = -1, block: int = 16
) -> jax.Array:
    """The inverse of :func:`random_hadamard` with the same key, axis and block:
    ``D H^T / sqrt(block)`` (the transpose, since the matrix is orthonormal)."""
    y, ax = _check(y, axis, block)
    return _apply(y, _signs(key_or_seed, block), ax, block, True)
