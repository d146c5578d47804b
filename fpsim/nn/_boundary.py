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

The backward rule sees only the cotangent and its residuals, not the layer's weights;
an adaptive rule that needs them (Zhao et al.'s) gets their statistics, computed in the
forward pass, as the ``weight`` input of ``cast_out`` (a residual, no gradient).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fpsim._keys import derive
from fpsim.formats import Format
from fpsim.nn._policy import Policy
from fpsim.scaling import WeightStats, quantize_scaled

#: Which policy fields round a tensor at a boundary, forward and backward: a layer's
#: input is read in ``compute`` and its gradient written in ``output``; a weight is read
#: in ``compute`` and its gradient written in ``param_grad``; a layer's output is
#: written in ``output`` and its gradient read in ``grad``.
ROLES: dict[str, tuple[str, str]] = {
    "input": ("compute", "output"),
    "param": ("compute", "param_grad"),
    "output": ("output", "grad"),
}


def formats(pol: Policy, role: str) -> tuple[Format | None, Format | None]:
    """The (forward, backward) formats of a boundary of kind ``role``."""
    fwd, bwd = ROLES[role]
    return getattr(pol, fwd), getattr(pol, bwd)


def _split(key):
    """(forward key, backward key) of one boundary, or (None, None)."""
    if key is None:
        return None, None
    return derive(key, 0), derive(key, 1)


# --------------------------------------------------------------------------------------
# cast_in: (x, scale, token, key) -> (round(x), token)
# --------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def cast_in(pol: Policy, role: str, x, scale, token, key):
    """Round ``x`` forward (times ``scale``, if given) and its gradient backward.

    ``role`` is ``"input"`` or ``"param"`` (see :data:`ROLES`). Backward, the gradient
    is rounded to the backward format as it comes (scaled by the layer's adaptive scale
    when ``token`` is given) and then divided by that scale.
    """
    return _cast_in_fwd(pol, role, x, scale, token, key)[0]


def _cast_in_fwd(pol, role, x, scale, token, key):
    kf, kb = _split(key)
    fwd, _ = formats(pol, role)
    y = quantize_scaled(x, fwd, scale, pol.rounding, kf, pol.saturate)
    out_token = None if token is None else jnp.zeros((), jnp.float32)
    return (y, out_token), kb


def _cast_in_bwd(pol, role, kb, cts):
    g, alpha = cts
    _, bwd = formats(pol, role)
    g = quantize_scaled(g, bwd, None, pol.grad_rounding, kb, pol.saturate)
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
    weight: WeightStats | None = None  # the layer's weight, for the adaptive rule


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def cast_out(pol: Policy, y, aux: OutAux, key):
    """Round ``y`` forward to ``pol.output``; round its cotangent backward to
    ``pol.grad`` (scaled by the delayed or adaptive scale, if the policy has one)."""
    return _cast_out_fwd(pol, y, aux, key)[0]


def _cast_out_fwd(pol, y, aux, key):
    kf, kb = _split(key)
    yq = quantize_scaled(y, pol.output, None, pol.rounding, kf, pol.saturate)
    return yq, (aux, kb)


def _cast_out_bwd(pol, res, g):
    aux, kb = res
    fmt = pol.grad
    new_state = None
    if pol.scaling is not None and aux.state is not None and fmt is not None:
        scale = pol.scaling.scale(aux.state, fmt)
        new_state = type(aux.state)(*pol.scaling.update(aux.state, g, scale))
    elif pol.adaptive is not None:
        scale = pol.adaptive.scale(g, fmt, aux.weight)
    else:
        scale = None
    rnd, sat = pol.grad_rounding, pol.saturate
    if scale is None:  # no scaling: round as is (no multiply by 1 in the graph)
        stored = lp = quantize_scaled(g, fmt, None, rnd, kb, sat)
        scale = jnp.ones((), jnp.float32)
    else:
        stored = quantize_scaled(g * scale, fmt, None, rnd, kb, sat)
        lp = (stored / scale).astype(g.dtype)  # what the pass holds, in float32 units
    ct_y = stored.astype(g.dtype) if pol.adaptive is not None else lp
    ct_aux = OutAux(
        probe=None if aux.probe is None else (g, lp, scale),
        state=new_state,
        alpha=None if aux.alpha is None else scale,
        tokens=None if aux.tokens is None else tuple(scale for _ in aux.tokens),
        weight=None,
    )
    return ct_y, ct_aux, None


cast_out.defvjp(_cast_out_fwd, _cast_out_bwd)
