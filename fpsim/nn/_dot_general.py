"""A quantizing drop-in for ``lax.dot_general`` (Linen ``Dense(dot_general=...)``, NNX
``Linear(dot_general=...)``).

:func:`quantized_dot_general` rounds element by element (one format, no scales). For
the block-scaled training recipes (MXFP8, NVFP4, DeepSeek-V3's FP8 blocks, per-tensor
current scaling), where each of a layer's three GEMMs quantizes its operands along the
axis it contracts, see :func:`fpsim.nn.recipe_dot_general`."""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import lax

from fpsim.numerics import quantizer
from fpsim.rounding import FormatLike


def quantized_dot_general(
    fwd: FormatLike | None = "e4m3",
    bwd: FormatLike | None = "e5m2",
    *,
    rounding: str = "nearest",
    saturate: bool = False,
) -> Callable[..., jax.Array]:
    """``lax.dot_general`` rounding its operands to ``fwd``, its output gradient to ``bwd``.

    Only the matrix product is touched (not a bias add). The returned function accepts
    and forwards every extra keyword argument (NNX passes ``out_sharding`` and, when set,
    ``preferred_element_type``).

    Example:
      >>> import fpsim, jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> layer = nnx.Linear(2, 2, rngs=nnx.Rngs(0),
      ...                    dot_general=fpsim.nn.quantized_dot_general("fp16", "fp16"))
      >>> layer(jnp.ones((1, 2))).shape
      (1, 2)
    """
    q_in = quantizer(fwd, None, rounding=rounding, saturate=saturate)
    q_out = quantizer(None, bwd, grad_rounding=rounding, saturate=saturate)

    def dot_general(lhs, rhs, dimension_numbers, precision=None,
                    preferred_element_type=None, **kwargs):  # fmt: skip
        y = lax.dot_general(
            q_in(lhs), q_in(rhs), dimension_numbers, precision=precision,
            preferred_element_type=preferred_element_type, **kwargs,
        )  # fmt: skip
        return q_out(y)

    return dot_general
