"""The operands of a ``dot_general`` in one layout: ``(B, M, K)`` and ``(B, K, N)``.

Every simulated dot product (the reduction orders of :mod:`fpsim.numerics._dot`, the
tensor cores of :mod:`fpsim.numerics._tensor_core`) works on this layout: batch
dimensions first, then the free dimensions of each side flattened, and the contracting
dimensions flattened into K, in their order.
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def canonical_operands(lhs, rhs, dimension_numbers):
    """Transpose and reshape to ``(B, M, K)`` and ``(B, K, N)``; return the out shape."""
    (lc, rc), (lb, rb) = dimension_numbers
    lf = [d for d in range(lhs.ndim) if d not in lc and d not in lb]
    rf = [d for d in range(rhs.ndim) if d not in rc and d not in rb]
    batch = [lhs.shape[d] for d in lb]
    m = [lhs.shape[d] for d in lf]
    n = [rhs.shape[d] for d in rf]
    k = math.prod(lhs.shape[d] for d in lc)
    a = jnp.transpose(lhs, (*lb, *lf, *lc)).reshape(math.prod(batch), math.prod(m), k)
    b = jnp.transpose(rhs, (*rb, *rc, *rf)).reshape(math.prod(batch), k, math.prod(n))
    return a, b, (*batch, *m, *n)
