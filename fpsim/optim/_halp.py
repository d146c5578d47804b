"""SVRG, low-precision SGD and HALP (bit centering), as optax-style transforms.

All three take the same extra arguments, so one training loop drives any of them
(see :func:`fpsim.optim.svrg_epoch`)::

    updates, state = opt.update(grads, state, params,
                                center_grads=grads_at_center, full_grad=full_grad)

``grads`` is a sample (minibatch) gradient at ``params``, ``center_grads`` the gradient
of the same sample at the centre :func:`svrg_center` ``(state)``, and ``full_grad`` the
full-data gradient at that centre, computed once per epoch of ``epoch_length`` steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fpsim.formats import get_format
from fpsim.optim import _common
from fpsim.rounding import FormatLike, quantize


class SvrgState(NamedTuple):
    """State of :func:`svrg`: step ``count`` and the ``center`` (snapshot) iterate."""

    count: jax.Array
    center: Any


class HalpState(NamedTuple):
    """State of :func:`halp`.

    Attributes:
      count: int32, inner steps taken.
      center: float32 pytree, the full-precision centre ``w~``.
      offset: the low-precision offset ``z``: int32 lattice codes in
        ``[-2**(b-1), 2**(b-1) - 1]`` (``z = code * scale``), or, with ``offset_fmt``,
        float32 values on that format's grid (``z = value * scale``).
      scale: float32 scalar per parameter tensor, recomputed at every re-centring.
      key: uint32[2], raw PRNG key data for the stochastic rounding (fixed).
    """

    count: jax.Array
    center: Any
    offset: Any
    scale: Any
    key: jax.Array


class LpSgdState(NamedTuple):
    """State of :func:`lp_sgd`: int32 lattice ``codes`` of the weights, and the key."""

    count: jax.Array
    codes: Any
    key: jax.Array


def _svrg_direction(grads, params, center_grads, full_grad):
    """The variance-reduced direction ``g_i(w) - g_i(w~) + g(w~)``, after the checks."""
    if params is None:
        raise ValueError(_common.NO_PARAMS_MSG)
    if center_grads is None or full_grad is None:
        raise ValueError(
            "SVRG and HALP need the extra arguments center_grads= (the sample gradient "
            "at svrg_center(state)) and full_grad= (the full gradient at the centre)"
        )
    return jax.tree.map(lambda g, gc, f: g - gc + f, grads, center_grads, full_grad)


def _epoch_end(count, epoch_length):
    return (count + 1) % epoch_length == 0


def svrg(learning_rate: float, epoch_length: int) -> optax.GradientTransformationExtraArgs:
    """Stochastic variance-reduced gradient (SVRG) in full precision.

    Each step moves along ``-lr * (g_i(w) - g_i(w~) + g(w~))``; after ``epoch_length``
    steps the centre ``w~`` becomes the current iterate.

    Args:
      learning_rate: step size.
      epoch_length: inner steps between re-centrings (``T``).

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with :class:`SvrgState`.

    References:
      Johnson & Zhang, "Accelerating Stochastic Gradient Descent using Predictive
      Variance Reduction", NeurIPS 2013.
    """
    _check_epoch(epoch_length)

    def init_fn(params):
        return SvrgState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.asarray, params))

    def update_fn(
        updates, state, params=None, *, center_grads=None, full_grad=None, **extra
    ):
        del extra
        v = _svrg_direction(updates, params, center_grads, full_grad)
        new_updates = jax.tree.map(lambda d: -learning_rate * d, v)
        new_params = optax.apply_updates(params, new_updates)
        end = _epoch_end(state.count, epoch_length)
        center = jax.tree.map(lambda n, c: jnp.where(end, n, c), new_params, state.center)
        return new_updates, SvrgState(state.count + 1, center)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _lattice_sr(x, scale, bits, key):
    """Stochastic rounding of x onto scale * {-2**(b-1), ..., 2**(b-1)-1} (int32 codes)."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    safe = jnp.where(scale > 0, scale, 1.0)
    u = jax.random.uniform(key, jnp.shape(x), jnp.float32)
    codes = jnp.clip(jnp.floor(x / safe + u), lo, hi)
    return jnp.where(scale > 0, codes, 0).astype(jnp.int32)


def halp(
    learning_rate: float,
    epoch_length: int,
    *,
    bits: int = 8,
    mu: float = 4.0,
    key: jax.Array,
    offset_fmt: FormatLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """HALP: SVRG with bit centering (De Sa et al. 2018).

    The model is ``w = w~ + z``: a full-precision centre ``w~`` plus a low-precision
    offset ``z``. At the start of every epoch, with the full gradient ``g~`` at ``w~``,
    each parameter tensor gets the scale ``s = ||g~|| / (mu * (2**(b-1) - 1))``: for a
    ``mu``-strongly convex loss the optimum lies within ``||g~|| / mu`` of ``w~``, which
    is exactly the range of the lattice. Inside the epoch the offset takes SVRG steps,
    stochastically rounded onto ``s * {-2**(b-1), ..., 2**(b-1)-1}``::

        z <- Q_s(z - lr * (g_i(w~ + z) - g_i(w~) + g~))

    and after ``epoch_length`` steps ``w~ <- w~ + z``, ``z <- 0``. As ``g~`` shrinks,
    so does ``s``: the grid follows the iterate in, and the error keeps falling
    linearly, where low-precision SGD with a fixed grid stalls.

    With ``offset_fmt`` (e.g. ``fpsim.E4M3``) the offset is a floating-point number of
    that format instead: ``z = s * v`` with ``v`` on the format's grid (stochastic
    rounding, saturating) and ``s = ||g~|| / (mu * fmt.max)``.

    The returned update is ``(w~ + z) - params``; feed it to ``optax.apply_updates``.

    Args:
      learning_rate: step size ``alpha``.
      epoch_length: inner steps ``T`` between re-centrings.
      bits: width ``b`` of the fixed-point offset (at least 2).
      mu: strong-convexity parameter of the scale rule.
      key: PRNG key for the stochastic rounding (step ``t`` derives its keys with ``t``).
      offset_fmt: a floating-point offset format instead of the fixed-point lattice.

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with :class:`HalpState`.

    References:
      De Sa, Leszczynski, Zhang, Marzoev, Aberger, Olukotun, Ré, "High-Accuracy
      Low-Precision Training", arXiv:1803.03383, 2018 (reference code:
      HazyResearch/torchhalp).
    """
    _check_epoch(epoch_length)
    if not (isinstance(bits, int) and bits >= 2):
        raise ValueError(f"HALP needs bits >= 2 (an int), got {bits!r}")
    fmt = None if offset_fmt is None else get_format(offset_fmt)
    levels = (2.0 ** (bits - 1) - 1) if fmt is None else fmt.max
    key0 = _common.state_key(key, needed=True, what="halp")

    def zero_offset(p):
        return jnp.zeros(jnp.shape(p), jnp.int32 if fmt is None else jnp.float32)

    def init_fn(params):
        return HalpState(
            count=jnp.zeros((), jnp.int32),
            center=jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params),
            offset=jax.tree.map(zero_offset, params),
            scale=jax.tree.map(lambda p: jnp.zeros((), jnp.float32), params),
            key=key0,
        )

    def update_fn(
        updates, state, params=None, *, center_grads=None, full_grad=None, **extra
    ):
        del extra
        v = _svrg_direction(updates, params, center_grads, full_grad)
        start = state.count % epoch_length == 0  # re-scale from the new full gradient
        scale = jax.tree.map(
            lambda f, s: jnp.where(start, jnp.linalg.norm(f) / (mu * levels), s),
            full_grad,
            state.scale,
        )
        keys = _common.step_keys(state.key, state.count + 1, v)

        def step(off, s, d, k):
            z = off.astype(jnp.float32) * s
            target = z - learning_rate * jnp.asarray(d, jnp.float32)
            if fmt is None:
                return _lattice_sr(target, s, bits, k)
            safe = jnp.where(s > 0, s, 1.0)
            val = quantize(target / safe, fmt, "stochastic", key=k, saturate=True)
            return jnp.where(s > 0, val, 0.0)

        offset = jax.tree.map(step, state.offset, scale, v, keys)
        end = _epoch_end(state.count, epoch_length)
        z = jax.tree.map(lambda o, s: o.astype(jnp.float32) * s, offset, scale)
        model = jax.tree.map(jnp.add, state.center, z)
        center = jax.tree.map(lambda m, c: jnp.where(end, m, c), model, state.center)
        offset = jax.tree.map(lambda o: jnp.where(end, jnp.zeros_like(o), o), offset)
        new_updates = jax.tree.map(lambda m, p: m - p, model, params)
        return new_updates, HalpState(state.count + 1, center, offset, scale, state.key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lp_sgd(
    learning_rate: float, *, scale: float, bits: int = 8, key: jax.Array
) -> optax.GradientTransformationExtraArgs:
    """Low-precision SGD: weights on a fixed b-bit lattice, stochastic rounding.

    ``w <- Q_s(w - lr * g)`` with ``Q_s`` rounding stochastically onto
    ``s * {-2**(b-1), ..., 2**(b-1)-1}``. The grid never refines, so the iterate stalls
    at a noise floor of the order of ``s``. Extra arguments (``center_grads``,
    ``full_grad``) are accepted and ignored, so it drops into :func:`svrg_epoch`.

    Args:
      learning_rate: step size.
      scale: the lattice spacing ``s`` (fixed).
      bits: lattice width ``b``.
      key: PRNG key (step ``t`` derives its keys with ``t``, see ``fpsim._keys``).

    Returns:
      A :class:`optax.GradientTransformationExtraArgs` with :class:`LpSgdState`.
    """
    if not (isinstance(bits, int) and bits >= 2):
        raise ValueError(f"lp_sgd needs bits >= 2 (an int), got {bits!r}")
    if isinstance(scale, int | float) and not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    key0 = _common.state_key(key, needed=True, what="lp_sgd")
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def init_fn(params):  # nearest lattice point of the initial weights
        codes = jax.tree.map(
            lambda p: jnp.clip(
                jnp.round(jnp.asarray(p, jnp.float32) / scale), lo, hi
            ).astype(jnp.int32),
            params,
        )
        return LpSgdState(jnp.zeros((), jnp.int32), codes, key0)

    def update_fn(updates, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError(_common.NO_PARAMS_MSG)
        keys = _common.step_keys(state.key, state.count + 1, updates)
        s = jnp.asarray(scale, jnp.float32)
        codes = jax.tree.map(
            lambda c, g, k: _lattice_sr(c * s - learning_rate * g, s, bits, k),
            state.codes,
            updates,
            keys,
        )
        new_updates = jax.tree.map(lambda c, p: c * s - p, codes, params)
        return new_updates, LpSgdState(state.count + 1, codes, state.key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_epoch(epoch_length) -> None:
    if not (isinstance(epoch_length, int) and epoch_length >= 1):
        raise ValueError(f"epoch_length must be a positive int, got {epoch_length!r}")


def svrg_center(opt_state):
    """The centre ``w~`` of the :func:`svrg` or :func:`halp` state inside ``opt_state``,
    or ``None`` when the optimizer has no centre (SGD, :func:`lp_sgd`)."""
    found = _common.find_states(opt_state, (SvrgState, HalpState))
    if len(found) > 1:
        raise ValueError("several SVRG/HALP states in this optimizer state")
    return found[0].center if found else None


def halp_params(opt_state):
    """The exact HALP model ``w~ + z`` held by a :class:`HalpState`."""
    st = _common.find_state(opt_state, HalpState, "halp")
    return jax.tree.map(
        lambda c, o, s: c + o.astype(jnp.float32) * s, st.center, st.offset, st.scale
    )


__all__ = [
    "HalpState", "LpSgdState", "SvrgState", "halp", "halp_params", "lp_sgd", "svrg",
    "svrg_center",
]  # fmt: skip
