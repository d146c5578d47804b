"""Run a model's function under a policy: forward (:func:`apply`) and with gradients.

The user's function takes the parameters first and calls the model itself: for Linen
``lambda params, x: model.apply({"params": params}, x)``, for NNX
``lambda params, x: nnx.merge(graphdef, params, rest)(x)`` on an
:func:`~fpsim.nn.instrument`-ed model. fpsim casts the parameters to the policy's
``compute`` format before the call ("the weights as the model sees them") and rounds every
intercepted layer's inputs, outputs and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fpsim.nn._boundary import OutAux
from fpsim.nn._context import LAYER_NAMES, Run, activate
from fpsim.nn._policy import Policy, as_policy
from fpsim.nn._recipes import recipe_stats as _recipe_stats
from fpsim.nn._recipes import zero_token
from fpsim.nn._stats import LayerStats, tensor_stats
from fpsim.stats import ValueCounts, value_counts


class Report(NamedTuple):
    """What one step of :func:`value_and_grad` saw.

    Attributes:
      layers: ``{layer key: LayerStats}`` (empty unless watching); the key is the
        module path (``"Dense_1"``, ``"block/attn/query"``), with ``#k`` appended for
        the k-th repeated call of the same module.
      weight_grads: ``{param path: ValueCounts}`` of the weight gradients against the
        policy's ``param_grad`` format (float32 when None); empty unless watching. They
        are classified *after* the backward pass rounded them, so a gradient lost to
        underflow counts as ``zero`` here, never as ``underflow``: the losses are seen
        in ``layers[...].grads``, where the float32 cotangent meets the format.
      grad_scales: with adaptive loss scaling, a pytree like the gradients holding the
        scale each gradient leaf is multiplied by (pass it to the optimizer as
        ``grad_scales=``); else None.
      aux: the loss function's auxiliary output (``has_aux=True``), else None.
      recipe: ``{layer key: RecipeStats}`` for the layers whose products ran under the
        policy's recipe (empty without recipe statistics): what each operand of the
        layer's three GEMMs lost to its block scales in this step.
    """

    layers: dict
    weight_grads: dict
    grad_scales: Any
    aux: Any
    recipe: dict | None = None


def _path_str(path) -> list[str]:
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            continue  # nnx.Variable's ".value"
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        out.append(str(name))
    if out and out[0] == "params":
        out = out[1:]
    return out


def param_paths(params):
    """``[(path, owner, name, leaf)]`` for every leaf of a parameter tree."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    result = []
    for path, leaf in flat:
        parts = _path_str(path)
        result.append(
            ("/".join(parts), "/".join(parts[:-1]), parts[-1] if parts else "", leaf)
        )
    return result


def _cast_params(run: Run, params, classes: dict[str, str]):
    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    leaves = []
    for (path, owner, name, leaf), _ in zip(param_paths(params), flat, strict=True):
        leaves.append(run.cast_param(path, name, classes.get(owner, ""), owner, leaf))
    return jax.tree_util.tree_unflatten(tree, leaves)


def discover(fn, policy, params, *args, layers=LAYER_NAMES, **kwargs):
    """The layer calls of ``fn(params, *args)``: ``{key: Site}`` (an abstract trace)."""
    run = Run(as_policy(policy), discover=True, layers=layers)

    def traced(params, *args):
        with activate(run):
            return fn(params, *args, **kwargs)

    jax.eval_shape(traced, params, *args)
    return run.sites


def _classes(sites) -> dict[str, str]:
    return {s.path: s.cls for s in sites.values()}


def init_state(fn, policy, params, *args, layers=LAYER_NAMES, **kwargs) -> dict:
    """The initial delayed-scaling state for ``fn(params, *args)`` under ``policy``.

    Returns ``{"inputs": {layer: (ScaleState, ...)}, "params": {path: ScaleState},
    "grads": {layer: ScaleState}}`` for the tensors the policy scales (all empty when it
    scales none). Carry it from step to step: :func:`value_and_grad` returns the next.
    """
    policy = as_policy(policy)
    sites = discover(fn, policy, params, *args, layers=layers, **kwargs)
    state = {"inputs": {}, "params": {}, "grads": {}}
    for s in sites.values():
        rec = s.policy.scaling
        if rec is None:
            continue
        if s.policy.compute is not None and s.n_inputs:
            state["inputs"][s.key] = tuple(rec.init() for _ in range(s.n_inputs))
        if s.policy.grad is not None and s.out_shapes:
            state["grads"][s.key] = rec.init()
    classes = _classes(sites)
    for path, owner, name, _leaf in param_paths(params):
        pol = policy.for_module(owner, classes.get(owner, ""))
        named = pol.param_names is None or name in pol.param_names
        if pol.scaling is not None and pol.compute is not None and named:
            state["params"][path] = pol.scaling.init()
    return state


def apply(fn: Callable, policy: Policy | str, params, *args, state=None, key=None,
          layers=LAYER_NAMES, **kwargs):  # fmt: skip
    """``fn(params, *args, **kwargs)`` with ``policy`` applied (a forward pass).

    Args:
      fn: calls the model, parameters first (``lambda p, x: model.apply({"params": p},
        x)`` for Linen; for NNX, on an :func:`instrument`-ed model).
      policy: a :class:`Policy` or preset name.
      params: the (stored) parameters.
      *args: further arguments of ``fn``.
      state: delayed-scaling state (:func:`init_state`) for scaled policies; without it
        scaled tensors are cast with scale 1 (naively).
      key: PRNG key, needed for stochastic rounding (a recipe's stochastic rounding
        is in the backward pass: differentiating ``apply`` then needs it).
      layers: class names of the layers to intercept.
      **kwargs: passed to ``fn``.

    Returns:
      ``fn``'s output.

    Example:
      >>> import fpsim, jax, jax.numpy as jnp, flax.linen as nn
      >>> model = nn.Dense(3)
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 2)))["params"]
      >>> fn = lambda p, x: model.apply({"params": p}, x)
      >>> y = fpsim.nn.apply(fn, "fp16_mixed", params, jnp.full((1, 2), 0.1))
      >>> bool((fpsim.quantize(y, "fp16") == y).all())  # the output is on the FP16 grid
      True
    """
    policy = as_policy(policy)
    sites = discover(fn, policy, params, *args, layers=layers, **kwargs)
    run = Run(policy, states=state, key=key, layers=layers)
    with activate(run):
        return fn(_cast_params(run, params, _classes(sites)), *args, **kwargs)


def _diff_inputs(sites, state, watch: bool) -> dict:
    diff = {}
    for s in sites.values():
        pol = s.policy
        if not s.out_shapes:
            continue
        y = s.out_shapes[0]
        probe = None
        if watch:
            z = jnp.zeros(y.shape, y.dtype)
            probe = (z, z, jnp.zeros((), jnp.float32))
        scaled = pol.scaling is not None and pol.grad is not None
        gstate = state.get("grads", {}).get(s.key) if scaled else None
        alpha = jnp.zeros((), jnp.float32) if pol.adaptive is not None else None
        if probe is not None or gstate is not None or alpha is not None:
            diff[s.key] = OutAux(probe, gstate, alpha, None)
    return diff


def value_and_grad(fn: Callable, policy: Policy | str, *, watch: bool = True,
                   has_aux: bool = False, layers=LAYER_NAMES,
                   recipe_stats: bool | None = None) -> Callable:  # fmt: skip
    """Gradients of a scalar loss under ``policy``, with what the backward pass saw.

    Args:
      fn: ``fn(params, *args) -> loss`` (or ``(loss, aux)`` with ``has_aux``), calling the
        model as for :func:`apply`. Compute the loss in float32 there.
      policy: a :class:`Policy` or preset name.
      watch: collect per-layer statistics (:class:`Report`); costs time.
      has_aux: whether ``fn`` returns ``(loss, aux)``.
      layers: class names of the layers to intercept.
      recipe_stats: collect the recipe GEMMs' statistics (``Report.recipe``); None
        follows ``watch``. They are counted from the quantization's own elements and
        scales, and independently of ``watch``'s element statistics; on CPU they cost
        about one more quantization of every operand (XLA recomputes the cheap
        integer steps inside the reduction that counts them).

    Returns:
      ``g(params, state, *args, key=None) -> (loss, grads, new_state, report)``, where
      ``state`` comes from :func:`init_state` (or the previous call) and ``grads`` are
      the gradients of the float32 parameters (the master weights), as the simulated
      backward pass computed them. jit it (``jax.jit(g)``).
    """
    policy = as_policy(policy)
    rstats = watch if recipe_stats is None else bool(recipe_stats)

    def g(params, state, *args, key=None):
        state = state or {"inputs": {}, "params": {}, "grads": {}}
        sites = discover(fn, policy, params, *args, layers=layers)
        classes = _classes(sites)

        def inner(params, diff, tokens, *args):
            run = Run(policy, diff=diff, states=state, watch=watch, key=key, layers=layers,
                      recipe_tokens=tokens)  # fmt: skip
            with activate(run):
                out = fn(_cast_params(run, params, classes), *args)
            loss, aux = out if has_aux else (out, None)
            records = (run.records, run.recipe_records)
            return jnp.asarray(loss, jnp.float32), (aux, records, run.new_states)

        diff = _diff_inputs(sites, state, watch)
        tokens = {k: zero_token() for k, s in sites.items() if s.recipe} if rstats else {}
        (loss, (aux, (records, rrecords), new_fwd)), (grads, ct, rct) = jax.value_and_grad(
            inner, argnums=(0, 1, 2), has_aux=True
        )(params, diff, tokens, *args)
        recipe = {k: _recipe_stats(f, rct[k]) for k, f in rrecords.items()}
        new_state = {
            "inputs": {**state.get("inputs", {}), **new_fwd["inputs"]},
            "params": {**state.get("params", {}), **new_fwd["params"]},
            "grads": {k: c.state for k, c in ct.items() if c.state is not None},
        }
        new_state["grads"] = {**state.get("grads", {}), **new_state["grads"]}
        layer_stats, wstats = {}, {}
        if watch:
            for k, s in sites.items():
                rec = records.get(k, {})
                gs = None
                if k in ct and ct[k].probe is not None:
                    raw, lp, scale = ct[k].probe
                    gs = tensor_stats(raw, lp, s.policy.grad, scale)
                layer_stats[k] = LayerStats(rec.get("inputs"), rec.get("outputs"), gs)
            for path, owner, _, leaf in param_paths(grads):
                pol = policy.for_module(owner, classes.get(owner, ""))
                wstats[path] = value_counts(leaf, pol.param_grad or "fp32")
        scales = _grad_scales(policy, sites, ct, grads, classes)
        return loss, grads, new_state, Report(layer_stats, wstats, scales, aux, recipe)

    return g


def _grad_scales(policy, sites, ct, grads, classes):
    if not any(s.policy.adaptive is not None for s in sites.values()):
        return None
    alphas, seen = {}, set()
    for k, s in sites.items():
        if s.path in seen:
            raise ValueError(
                f"adaptive loss scaling needs each layer called once; {s.path!r} is "
                "called several times (shared weights would mix scales)"
            )
        seen.add(s.path)
        if k in ct and ct[k].alpha is not None:
            alphas[s.path] = ct[k].alpha
    flat, tree = jax.tree_util.tree_flatten(grads)
    one = jnp.ones((), jnp.float32)
    scales = [alphas.get(owner, one) for _, owner, _, _ in param_paths(grads)]
    assert len(scales) == len(flat)
    return jax.tree_util.tree_unflatten(tree, scales)


def underflow_fraction(report: Report) -> jax.Array:
    """Fraction of nonzero activation-gradient values lost to underflow, over all layers."""
    under = jnp.zeros((), jnp.int32)
    nonzero = jnp.zeros((), jnp.int32)
    for st in report.layers.values():
        if st.grads is None:
            continue
        c: ValueCounts = st.grads.counts
        under = under + c.underflow
        nonzero = nonzero + c.underflow + c.subnormal + c.normal + c.overflow
    return under.astype(jnp.float32) / jnp.maximum(nonzero, 1).astype(jnp.float32)
