"""One epoch of an SVRG-family optimizer (HALP, SVRG, LP-SGD) or of any optax optimizer."""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from fpsim.optim._halp import svrg_center


def svrg_epoch(
    optimizer: optax.GradientTransformation,
    params,
    opt_state,
    grad_fn: Callable,
    full_grad_fn: Callable,
    batches,
):
    """Run one epoch (one step per entry of ``batches``) of any of the fpsim.optim
    SVRG-family optimizers, or of a plain optax optimizer.

    The full gradient is taken once at the centre :func:`svrg_center` (or at ``params``
    when the optimizer has none); every step then calls
    ``optimizer.update(grad_fn(params, b), state, params, center_grads=grad_fn(center,
    b), full_grad=full)``. Make ``len(batches)`` equal the optimizer's
    ``epoch_length`` so that re-centring happens at the end of the epoch.

    Args:
      optimizer: :func:`halp`, :func:`svrg`, :func:`lp_sgd` or any optax optimizer.
      params: the parameters.
      opt_state: the optimizer's state.
      grad_fn: ``grad_fn(params, batch) -> grads`` for one batch.
      full_grad_fn: ``full_grad_fn(params) -> grads`` over the whole data set.
      batches: a pytree of arrays whose leading axis indexes the steps.

    Returns:
      ``(params, opt_state)`` after the epoch. Jit-compatible (uses ``lax.scan``).
    """
    optimizer = optax.with_extra_args_support(optimizer)
    center = svrg_center(opt_state)
    center = params if center is None else center
    full = full_grad_fn(center)

    def step(carry, batch):
        p, state = carry
        g, gc = grad_fn(p, batch), grad_fn(center, batch)
        updates, state = optimizer.update(g, state, p, center_grads=gc, full_grad=full)
        return (optax.apply_updates(p, updates), state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), batches)
    return params, opt_state


__all__ = ["svrg_epoch"]
