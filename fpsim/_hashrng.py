"""A counter-based random generator: a hash of (key, element index), for fast SR.

``jax.random.bits`` (threefry-2x32, 20 rounds) is a cryptographic-strength generator,
and for stochastic rounding it costs several times the rounding itself. Counter-based
generators (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) make
the i-th random word a pure function ``hash(key, i)``: no state, so every element
computes its own word inside the rounding's fused loop, and no random array is ever
written to memory.

The hash here is two rounds of Chris Wellons' ``lowbias32`` integer finalizer (the
murmur3 ``fmix32`` shape with better constants: xorshift, multiply, xorshift, multiply,
xorshift; measured avalanche bias about 0.17 %), each round keyed by one of the key's
two uint32 words::

    word(i) = mix(mix(i ^ k0) + k1)

Each step is a bijection of uint32, so for a fixed key the words of distinct indices
are distinct (a random permutation-like stream rather than independent draws; for the
up to 2**32 elements of one array this is indistinguishable for rounding). The keys
come from fpsim's threefry derivation (``fpsim._keys.derive``), so two call sites or
steps get unrelated ``(k0, k1)`` and so unrelated streams. It is a *statistical*
generator, not a cryptographic one; the tests (``tests/test_rng_hash.py``) check
frequencies, bias and independence across neighbouring elements and across keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: The generators ``quantize(..., rng=...)`` accepts.
RNGS: tuple[str, ...] = ("threefry", "hash")


def check_rng(rng: str) -> str:
    """``rng`` if it names a generator; a ValueError naming the valid ones otherwise."""
    if rng not in RNGS:
        raise ValueError(f"unknown random generator rng={rng!r}; valid: {', '.join(RNGS)}")
    return rng


def _mix(h: jax.Array) -> jax.Array:
    """``lowbias32``: a bijective uint32 finalizer with strong avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def hash32(counter: jax.Array, k0: jax.Array, k1: jax.Array) -> jax.Array:
    """The uint32 word of ``counter`` (uint32) under key words ``k0``, ``k1``."""
    return _mix(_mix(counter ^ k0) + k1)


def hash_words(kd: jax.Array, shape, width: int, random_bits: int | None) -> jax.Array:
    """Random integers of ``random_bits`` bits (default ``width``), one per element.

    ``kd`` is raw ``uint32[2]`` key data; ``width`` is the carrier's width (32 for
    float32, 64 for float64). The result is uint32 for widths up to 32 and uint64
    otherwise, with the random bits in the low ``random_bits`` positions (as
    ``fpsim.rounding``'s threefry path delivers them). Element ``i`` (row-major) uses
    counter ``i``; a 64-bit word joins the words of counters ``2i`` and ``2i + 1``.
    """
    k = width if random_bits is None else random_bits
    size = int(np.prod(shape, dtype=np.int64))
    per = 1 if k <= 32 else 2
    if size * per > 1 << 32:
        raise ValueError(
            f"rng='hash' numbers at most 2**32 random words per call, got {size * per}; "
            "use rng='threefry' or split the array"
        )
    kd = kd.astype(jnp.uint32)
    k0, k1 = kd[0], kd[1]
    i = lax.iota(jnp.uint32, size).reshape(shape)
    if per == 1:
        h = hash32(i, k0, k1)
        return h >> jnp.uint32(32 - k) if k < 32 else h
    hi = hash32(i * jnp.uint32(2), k0, k1).astype(jnp.uint64)
    lo = hash32(i * jnp.uint32(2) + jnp.uint32(1), k0, k1).astype(jnp.uint64)
    h = (hi << jnp.uint64(32)) | lo
    return h >> jnp.uint64(64 - k) if k < 64 else h
