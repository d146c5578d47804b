"""A fake-quantization op with its own format on the way forward and on the way back.

In a low-precision network every layer boundary stores two tensors: the activation on
the forward pass and the *activation gradient* (the cotangent) on the backward pass.
They have different needs. Activations have a modest dynamic range and want precision
(E4M3, three mantissa bits); gradients span many binades and want range (E5M2, five
exponent bits). Micikevicius et al. (2022), "FP8 Formats for Deep Learning", train
exactly this way.

``quantizer(fwd, bwd)`` builds that boundary as a ``jax.custom_vjp``: the forward pass
rounds ``x`` to ``fwd``; the backward pass rounds the incoming cotangent to ``bwd``.
Apart from the rounding, the derivative is the identity (the straight-through
estimator): rounding is flat almost everywhere, and its true derivative, zero, would
stop all learning.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

from fpsim._keys import canonical_key, derive
from fpsim.formats import Format, get_format
from fpsim.rounding import FormatLike, Rounding, check_rounding, quantize


def _round(x, fmt: Format | None, rounding: str, key, saturate: bool, subnormals: bool):
    if fmt is None:
        return x
    x = jax.numpy.asarray(x)
    y = quantize(x, fmt, rounding, key=key, saturate=saturate, subnormals=subnormals)
    return y.astype(x.dtype) if y.dtype != x.dtype else y


@functools.lru_cache(maxsize=256)
def _build(fwd, bwd, rounding, grad_rounding, saturate, subnormals) -> Callable:
    @jax.custom_vjp
    def op(x, key):
        return _fwd(x, key)[0]

    def _fwd(x, key):
        k_fwd, k_bwd = (None, None) if key is None else (derive(key, 0), derive(key, 1))
        y = _round(x, fwd, rounding, k_fwd, saturate, subnormals)
        return y, k_bwd

    def _bwd(k_bwd, g):
        return _round(g, bwd, grad_rounding, k_bwd, saturate, subnormals), None

    op.defvjp(_fwd, _bwd)
    return op


def quantizer(
    fwd: FormatLike | None,
    bwd: FormatLike | None = None,
    *,
    rounding: Rounding = "nearest",
    grad_rounding: Rounding = "nearest",
    saturate: bool = False,
    subnormals: bool = True,
) -> Callable[..., jax.Array]:
    """A differentiable rounding op: ``fwd`` format forward, ``bwd`` format backward.

    Args:
      fwd: format of the forward value, or None to pass it unchanged.
      bwd: format of the cotangent on the backward pass, or None (the default) to pass
        it unchanged: a plain straight-through quantizer.
      rounding: rounding mode forward (``"stochastic"`` needs a key).
      grad_rounding: rounding mode backward.
      saturate: overflow clamps to +-max in both directions instead of becoming inf or
        NaN (what FP8 training recipes do for activations).
      subnormals: False flushes subnormal results to zero in both directions.

    Returns:
      ``q(x, key=None)``. With stochastic rounding in either direction a key is
      required; ``q`` derives one key for the forward (``derive(key, 0)``) and one for
      the backward rounding (``derive(key, 1)``, see ``fpsim._keys``), so pass a key
      that differs per call site (``jax.random.fold_in(key, layer)``) and per step.

    Raises:
      ValueError: unknown format or mode, or stochastic rounding called without a key.

    Example:
      >>> import fpsim, jax
      >>> q = fpsim.quantizer("e4m3", "e5m2")
      >>> y, vjp = jax.vjp(q, 1.1)
      >>> float(y), float(vjp(0.3)[0])  # 1.1 -> 1.125 (e4m3); 0.3 -> 0.3125 (e5m2)
      (1.125, 0.3125)
    """
    fwd = None if fwd is None else get_format(fwd)
    bwd = None if bwd is None else get_format(bwd)
    check_rounding(rounding)
    check_rounding(grad_rounding)
    op = _build(fwd, bwd, rounding, grad_rounding, saturate, subnormals)
    needs_key = (fwd is not None and rounding == "stochastic") or (
        bwd is not None and grad_rounding == "stochastic"
    )

    def q(x: jax.typing.ArrayLike, key: jax.Array | None = None) -> jax.Array:
        if needs_key and key is None:
            raise ValueError(
                "this quantizer rounds stochastically and needs key=...; use a different "
                "key per call site and per step (jax.random.fold_in(key, i))"
            )
        if not hasattr(x, "dtype"):
            x = jax.numpy.asarray(x, jax.numpy.float32)
        if key is not None:
            key = canonical_key(key, what="quantizer")
        return op(x, key)

    return q


def fake_quant(
    x: jax.typing.ArrayLike,
    fwd: FormatLike | None,
    bwd: FormatLike | None = None,
    *,
    key: jax.Array | None = None,
    rounding: Rounding = "nearest",
    grad_rounding: Rounding = "nearest",
    saturate: bool = False,
    subnormals: bool = True,
) -> jax.Array:
    """``quantizer(fwd, bwd, ...)(x, key)`` in one call; see :func:`quantizer`.

    Example:
      >>> import fpsim, jax
      >>> g = jax.grad(lambda x: 3.0 * fpsim.fake_quant(x, "fp16", "e5m2"))(1.0)
      >>> float(g)  # the cotangent 3.0 is representable in e5m2 (1.5 * 2)
      3.0
    """
    q = quantizer(
        fwd, bwd, rounding=rounding, grad_rounding=grad_rounding,
        saturate=saturate, subnormals=subnormals,
    )  # fmt: skip
    return q(x, key)
