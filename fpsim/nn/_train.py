"""A ready-made jitted training step for classifiers, for demos and lessons.

:func:`make_train_step` wires a Linen or NNX model, a :class:`~fpsim.nn.Policy` and an
optax optimizer into ``step(state, batch) -> (state, metrics)``; :func:`train` runs it
over a data set and returns the history. Loss scaling is the optimizer's business
(``fpsim.optim.dynamic_loss_scaling`` & co.): pass ``loss_scale=`` a function that reads
the current scale from the optimizer state (``fpsim.optim.current_loss_scale``), and the
step multiplies the loss by it before differentiating.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fpsim._keys import derive
from fpsim.nn._apply import (
    _classes,
    discover,
    init_state,
    param_paths,
    underflow_fraction,
    value_and_grad,
)
from fpsim.nn._context import LAYER_NAMES
from fpsim.nn._policy import Policy, as_policy
from fpsim.rounding import quantize


class TrainState(NamedTuple):
    """Everything a step carries: parameters, optimizer and policy state, a counter."""

    params: Any
    opt_state: Any
    policy_state: Any
    step: jax.Array
    key: jax.Array


class TrainStep(NamedTuple):
    """``init(key, x) -> TrainState``; ``step(state, (x, y)) -> (state, metrics)`` (jitted);
    ``apply_fn(params, x) -> logits``, the plain model call (use it with
    :func:`fpsim.nn.apply` to evaluate under the policy)."""

    init: Callable
    step: Callable
    apply_fn: Callable


def cross_entropy(logits, labels):
    """Mean softmax cross entropy with integer labels, in float32."""
    logits = jnp.asarray(logits, jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _model_fns(model, layers):
    """(init_params(key, x), apply(params, x)) for a Linen or an NNX model."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        nnx = None
    if nnx is not None and isinstance(model, nnx.Module):
        from fpsim.nn._nnx import instrument

        graphdef, params, rest = nnx.split(instrument(model, layers=layers), nnx.Param, ...)

        def apply_fn(p, x):
            return nnx.merge(graphdef, p, rest)(x)

        return (lambda key, x: params), apply_fn
    if not hasattr(model, "init") or not hasattr(model, "apply"):
        raise TypeError(f"expected a flax.linen.Module or nnx.Module, got {type(model)}")

    def apply_fn(p, x):
        return model.apply({"params": p}, x)

    return (lambda key, x: model.init(key, x)["params"]), apply_fn


def store(params, policy: Policy, classes=None):
    """Round each weight to its stored format ``param`` (pure low precision; identity
    for None, the float32 master weights).

    ``classes`` maps module paths to class names (``{"LayerNorm_0": "LayerNorm"}``) so
    that class-name overrides such as ``("*Norm", "float32")`` apply; without it only
    path patterns match.
    """
    flat, tree = jax.tree_util.tree_flatten(params)
    out = []
    for (_, owner, _, leaf), _ in zip(param_paths(params), flat, strict=True):
        fmt = policy.for_module(owner, (classes or {}).get(owner, "")).param
        out.append(leaf if fmt is None else quantize(leaf, fmt).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(tree, out)


def make_train_step(
    model,
    policy: Policy | str,
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: Callable = cross_entropy,
    loss_scale: Callable | float | None = None,
    watch: bool = True,
    layers: tuple[str, ...] = LAYER_NAMES,
    recipe_stats: bool | None = None,
) -> TrainStep:
    """A jitted training step for a classifier under ``policy``.

    Args:
      model: a ``flax.linen.Module`` or an ``nnx.Module`` (copied, not modified).
      policy: a :class:`Policy` or preset name. With ``param`` set (``"fp16_pure"``)
        the weights are kept in that format: rounded at init and after every update
        (no float32 master copy). A recipe name (``"mxfp8"``, ``"nvfp4"``, ...: see
        :data:`fpsim.nn.RECIPES`) runs the linear layers' GEMMs under that recipe;
        its stochastic rounding draws fresh bits every step.
      optimizer: an optax transformation. With adaptive loss scaling the step divides
        each weight gradient by its layer's scale (``Report.grad_scales``) before the
        optimizer sees it, so any optimizer works.
      loss_fn: ``loss_fn(logits, labels) -> scalar``, evaluated in float32.
      loss_scale: multiplies the loss before differentiating: a number, or a function of
        the optimizer state (``fpsim.optim.current_loss_scale``); the optimizer must
        undo it.
      watch: collect per-layer statistics into ``metrics["layers"]``.
      layers: class names of the layers the policy applies to.
      recipe_stats: with a recipe in the policy, collect per-layer GEMM statistics
        into ``metrics["recipe"]``; None follows ``watch``. Pass ``watch=False,
        recipe_stats=True`` for the recipe's statistics alone (the cheaper choice).

    Returns:
      A :class:`TrainStep`. ``metrics`` holds ``loss`` (unscaled), ``accuracy``,
      ``finite`` (all gradients finite), ``loss_scale``, ``grad_underflow`` (fraction of
      nonzero activation-gradient values lost to underflow, all layers; NaN unless
      ``watch``), ``applied`` (the optimizer applied the step: the ``last_finite``
      field of its state, True without one), ``stuck`` (the optimizer's loss scale is
      0, inf or NaN and every later step will be skipped), and with
      ``watch`` ``layers`` (``{layer: LayerStats}``) and ``weight_grads``. With
      recipe statistics and a policy that has a recipe, ``recipe``: ``{layer:
      RecipeStats}``, one :class:`fpsim.blocks.BlockSummary` per operand of each of
      the layer's three GEMMs (``metrics["recipe"]["Dense_0"].wgrad_g.underflow``: the
      fraction of the output gradient's nonzero elements that the weight-gradient
      GEMM's quantization, in blocks along the tokens, flushed to zero this step).

    Example:
      >>> import fpsim, jax, jax.numpy as jnp, optax, flax.linen as nn
      >>> ts = fpsim.nn.make_train_step(nn.Dense(3), "bf16_mixed", optax.sgd(0.1))
      >>> x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
      >>> state = ts.init(jax.random.key(0), x)
      >>> state, metrics = ts.step(state, (x, y))
      >>> sorted(metrics)[:4]
      ['accuracy', 'applied', 'finite', 'grad_underflow']
    """
    policy = as_policy(policy)
    init_params, apply_fn = _model_fns(model, layers)

    def objective(params, x, y, scale):
        logits = apply_fn(params, x)
        loss = loss_fn(logits, y)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return loss * scale, (loss, acc)

    vg = value_and_grad(
        objective, policy, watch=watch, has_aux=True, layers=layers,
        recipe_stats=recipe_stats,
    )  # fmt: skip
    rstats = (watch if recipe_stats is None else bool(recipe_stats)) and policy.has_recipe

    def module_classes(params, x, y, scale) -> dict[str, str]:
        # {module path: class name}, so that class-name overrides ("*Norm") decide the
        # storage format as they decide everything else (an abstract trace, no compute)
        return _classes(discover(objective, policy, params, x, y, scale, layers=layers))

    def init(key, x) -> TrainState:
        key, sub = jax.random.split(key)
        raw = init_params(sub, x)
        y0, one = jnp.zeros(x.shape[:1], jnp.int32), jnp.ones((), jnp.float32)
        params = store(raw, policy, module_classes(raw, x, y0, one))
        pstate = init_state(objective, policy, params, x, y0, one, layers=layers)
        return TrainState(
            params, optimizer.init(params), pstate, jnp.zeros((), jnp.int32), key
        )

    def step(state: TrainState, batch):
        x, y = batch
        if loss_scale is None:
            scale = jnp.ones((), jnp.float32)
        elif callable(loss_scale):
            scale = jnp.asarray(loss_scale(state.opt_state), jnp.float32)
        else:
            scale = jnp.asarray(loss_scale, jnp.float32)
        key = derive(state.key, state.step)
        _, grads, pstate, report = vg(
            state.params, state.policy_state, x, y, scale, key=key
        )
        loss, acc = report.aux
        if report.grad_scales is not None:
            # adaptive loss scaling: each weight gradient came out times its layer's
            # scale (a power of two, so the division is exact); undone here, so that
            # every optax optimizer works (optax's own chains silently drop an unknown
            # ``grad_scales=`` argument and would train on the scaled gradients)
            grads = jax.tree.map(lambda g, s: g / s, grads, report.grad_scales)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        classes = module_classes(state.params, x, y, scale)
        params = store(optax.apply_updates(state.params, updates), policy, classes)
        finite = jnp.all(
            jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        # a step the optimizer skipped leaves every piece of state as it was, the
        # delayed-scaling amax histories included
        applied = _opt_field(opt_state, "last_finite", jnp.array(True))
        pstate = jax.tree.map(
            lambda new, old: jnp.where(applied, new, old), pstate, state.policy_state
        )
        stuck = _opt_field(opt_state, "stuck", jnp.array(False))
        metrics = {
            "loss": loss,
            "accuracy": acc,
            "finite": finite,
            "loss_scale": scale,
            "applied": applied,
            "stuck": stuck,
            # without watching there are no statistics: NaN, not a misleading 0
            "grad_underflow": underflow_fraction(report) if watch else jnp.float32(jnp.nan),
        }
        if watch:
            metrics["layers"] = report.layers
            metrics["weight_grads"] = report.weight_grads
        if rstats:
            metrics["recipe"] = report.recipe
        new = TrainState(params, opt_state, pstate, state.step + 1, state.key)
        return new, metrics

    return TrainStep(init, jax.jit(step), apply_fn)


def _opt_field(opt_state, name: str, default: jax.Array) -> jax.Array:
    """A boolean field of the optimizer state found by name (optax's ``tree_get``), e.g.
    ``last_finite`` of fpsim's loss-scaling wrappers or of ``optax.apply_if_finite``."""
    try:
        value = optax.tree_utils.tree_get(opt_state, name, default=None)
    except KeyError:  # several wrappers: the step is applied only if all applied it
        values = [v for _, v in optax.tree_utils.tree_get_all_with_path(opt_state, name)]
        value = functools.reduce(jnp.logical_and, values)
    return default if value is None else jnp.asarray(value, jnp.bool_)


def train(
    model,
    policy: Policy | str,
    data,
    optimizer: optax.GradientTransformation,
    steps: int,
    *,
    batch_size: int = 64,
    key: jax.Array | None = None,
    eval_data=None,
    loss_scale: Callable | float | None = None,
    watch: bool = True,
) -> dict:
    """Train ``model`` on ``data = (x, y)`` for ``steps`` minibatch steps.

    Minibatches walk through a fixed random permutation of the data (reshuffled every
    epoch); everything is seeded by ``key`` (default ``jax.random.key(0)``).

    Args:
      model: a Linen or NNX classifier.
      policy: a :class:`Policy` or preset name.
      data: ``(x, y)`` with integer labels.
      optimizer: an optax transformation (wrap it in ``fpsim.optim.dynamic_loss_scaling``
        and pass ``loss_scale=fpsim.optim.current_loss_scale`` for loss scaling).
      steps: number of training steps.
      batch_size: minibatch size.
      key: PRNG key for initialization, shuffling and stochastic rounding.
      eval_data: ``(x, y)`` to measure the final accuracy on.
      loss_scale: see :func:`make_train_step`.
      watch: collect gradient statistics (``grad_underflow`` is NaN without them).

    Returns:
      ``{"loss", "accuracy", "finite", "loss_scale", "grad_underflow"}`` as numpy arrays
      over steps, plus ``"eval_accuracy"`` (on ``eval_data``, or the training data; the
      forward pass runs under the policy), ``"steps_skipped"`` (non-finite steps),
      ``"seconds"`` (wall time of the loop, after compilation) and ``"state"``;
      ``"stuck"`` per step (see :func:`make_train_step`).

    Warns:
      RuntimeWarning: the loss scale got stuck at 0 or inf (every later step skipped).
    """
    from fpsim.nn._apply import apply

    policy = as_policy(policy)
    key = jax.random.key(0) if key is None else key
    x_all, y_all = (jnp.asarray(a) for a in data)
    n = x_all.shape[0]
    ts = make_train_step(model, policy, optimizer, loss_scale=loss_scale, watch=watch)
    key, k_init, k_perm = jax.random.split(key, 3)
    state = ts.init(k_init, x_all[:batch_size])
    per_epoch = max(n // batch_size, 1)
    epochs = -(-steps // per_epoch)
    perms = [
        np.asarray(jax.random.permutation(k, n)) for k in jax.random.split(k_perm, epochs)
    ]
    batches = [
        perms[i // per_epoch][(i % per_epoch) * batch_size :][:batch_size]
        for i in range(steps)
    ]
    ts.step(state, (x_all[batches[0]], y_all[batches[0]]))  # compile
    history = {
        k: []
        for k in ("loss", "accuracy", "finite", "loss_scale", "grad_underflow", "stuck")
    }
    t0 = time.perf_counter()
    for idx in batches:
        state, m = ts.step(state, (x_all[idx], y_all[idx]))
        for k in history:
            history[k].append(m[k])
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - t0
    out = {k: np.asarray(jnp.stack(v)) for k, v in history.items()}
    ex, ey = (x_all, y_all) if eval_data is None else (jnp.asarray(a) for a in eval_data)
    logits = jax.jit(lambda p, s, x: apply(ts.apply_fn, policy, p, x, state=s))(
        state.params, state.policy_state, ex
    )
    out["eval_accuracy"] = float(jnp.mean(jnp.argmax(logits, -1) == ey))
    out["steps_skipped"] = int((~out["finite"]).sum())
    _warn_if_stuck(out)
    out["seconds"] = seconds
    out["state"] = state
    return out


def _warn_if_stuck(history: dict) -> None:
    """Warn on the host when the optimizer's loss scale reached 0 or inf."""
    stuck = np.flatnonzero(history["stuck"])
    if stuck.size:
        first = int(stuck[0])
        warnings.warn(
            f"the loss scale reached 0 or inf at step {first}: no loss-scaling rule "
            f"recovers from it, so every later step is skipped "
            f"({len(history['stuck']) - first - 1} of {len(history['stuck'])} here); "
            "give the rule a min_scale "
            "(e.g. variant='flax' or 'jmp') or look for the source of the non-finite "
            "gradients",
            RuntimeWarning,
            stacklevel=3,
        )
