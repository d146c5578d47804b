"""The two custom_vjp ops that sit at every intercepted layer's boundary.

``cast_in`` rounds what a layer reads (its inputs, its weights): forward to the read
format, backward the gradient the layer writes for them to the write format.
``cast_out`` rounds what a layer writes (its output) forward and, backward, the
activation gradient the layer reads.

Reading the backward pass: ``jax.grad`` calls each op's backward rule with the
cotangent ``g`` of the op's output, and whatever the rule returns as the cotangent of an
*input* comes out of ``jax.grad`` as that input's gradient. fpsim uses that to get
information out of the backward pass without side effects, the trick Flax's
``fp8_ops.py`` uses for its amax histories:

* a zero ``probe`` input whose "gradient" is ``(g, round(g), scale)``: the activation
  gradient as float32 had it and as the low-precision pass holds it;
* a delayed-scaling ``state`` input whose "gradient" is the updated state;
* an ``alpha`` input whose "gradient" is the layer's adaptive loss scale; a ``token``
  (an output of ``cast_in``, an input of ``cast_out``) carries the same scale from the
  output back to the layer's inputs, where the gradient is unscaled again.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fpsim.formats import Format
from fpsim.nn._policy import AdaptiveLossScaling, DelayedScaling
from fpsim.nn._scaling import adaptive_scale, delayed_scale, push_amax, round_scaled


class CastCfg(NamedTuple):
    """Static configuration of a boundary (hashable)."""

    fwd: Format | None
    bwd: Format | None
    rounding: str = "nearest"
    grad_rounding: str = "nearest"
    saturate: bool = False
    scaling: DelayedScaling | None = None
    adaptive: AdaptiveLossScaling | None = None


def _split(key):
    if key is None:
        return None, None
    k1, k2 = jax.random.split(key)
    return k1, k2


# --------------------------------------------------------------------------------------
# cast_in: (x, scale, token, key) -> (round(x), token)
# --------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def cast_in(cfg: CastCfg, x, scale, token, key):
    """Round ``x`` forward (times ``scale``, if given) and its gradient backward.

    Backward, the gradient is rounded to ``cfg.bwd`` as it comes (scaled by the layer's
    adaptive scale when ``token`` is given) and then divided by that scale.
    """
    return _cast_in_fwd(cfg, x, scale, token, key)[0]


def _cast_in_fwd(cfg, x, scale, token, key):
    kf, kb = _split(key)
    y = round_scaled(x, cfg.fwd, scale, cfg.rounding, kf, cfg.saturate)
    out_token = None if token is None else jnp.zeros((), jnp.float32)
    return (y, out_token), kb


def _cast_in_bwd(cfg, kb, cts):
    g, alpha = cts
    g = round_scaled(g, cfg.bwd, None, cfg.grad_rounding, kb, cfg.saturate)
    if alpha is not None:  # the layer ran backward on gradients scaled by alpha
        alpha = jnp.where(alpha == 0, 1.0, alpha)
        g = (g / alpha).astype(g.dtype)
    return g, None, None, None


cast_in.defvjp(_cast_in_fwd, _cast_in_bwd)


# --------------------------------------------------------------------------------------
# cast_out: (y, aux, key) -> round(y)
# --------------------------------------------------------------------------------------
class OutAux(NamedTuple):
    """Inputs of ``cast_out`` whose cotangents carry information out of the backward pass.

    Every field may be None.
    """

    probe: tuple | None  # (raw zeros like y, lp zeros like y, scalar zero)
    state: tuple | None  # ScaleState of the activation gradient (delayed scaling)
    alpha: jax.Array | None  # scalar zero; its gradient is the adaptive scale
    tokens: tuple | None  # from cast_in of this layer's inputs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def cast_out(cfg: CastCfg, y, aux: OutAux, key):
    """Round ``y`` forward to ``cfg.fwd``; round its cotangent backward to ``cfg.bwd``."""
    return _cast_out_fwd(cfg, y, aux, key)[0]


def _cast_out_fwd(cfg, y, aux, key):
    kf, kb = _split(key)
    yq = round_scaled(y, cfg.fwd, None, cfg.rounding, kf, cfg.saturate)
    return yq, (aux, kb)


def _cast_out_bwd(cfg, res, g):
    aux, kb = res
    fmt = cfg.bwd
    new_state = None
    if cfg.scaling is not None and aux.state is not None and fmt is not None:
        scale = delayed_scale(aux.state, fmt, cfg.scaling)
        new_state = type(aux.state)(*push_amax(aux.state, g, scale))
    elif cfg.adaptive is not None:
        scale = adaptive_scale(g, fmt, cfg.adaptive)
    else:
        scale = None
    if scale is None:  # no scaling: round as is (no multiply by 1 in the graph)
        stored = lp = round_scaled(g, fmt, None, cfg.grad_rounding, kb, cfg.saturate)
        scale = jnp.ones((), jnp.float32)
    else:
        stored = round_scaled(g * scale, fmt, None, cfg.grad_rounding, kb, cfg.saturate)
        lp = (stored / scale).astype(g.dtype)  # what the pass holds, in float32 units
    ct_y = stored.astype(g.dtype) if cfg.adaptive is not None else lp
    ct_aux = OutAux(
        probe=None if aux.probe is None else (g, lp, scale),
        state=new_state,
        alpha=None if aux.alpha is None else scale,
        tokens=None if aux.tokens is None else tuple(scale for _ in aux.tokens),
    )
    return ct_y, ct_aux, None


cast_out.defvjp(_cast_out_fwd, _cast_out_bwd)
