"""The trace-time context that applies a policy at every intercepted layer call.

Linen (through ``nn.intercept_methods``) and NNX (through :func:`fpsim.nn.instrument`)
both end up in :meth:`Run.layer` with the layer's path, class and call. A ``Run`` lives
only while a function is being traced; everything it returns (statistics, updated scale
states) leaves the traced function as ordinary outputs, so nothing is stateful.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fpsim._bits import is_float
from fpsim._keys import derive
from fpsim.formats import FP32
from fpsim.nn import _active
from fpsim.nn._boundary import OutAux, cast_in, cast_out, formats
from fpsim.nn._linen import interceptor
from fpsim.nn._policy import Policy
from fpsim.nn._recipes import call_with_dot_general, layer_dot_general, takes_recipe
from fpsim.nn._stats import tensor_stats
from fpsim.scaling import WeightStats, weight_stats

#: Class names of the leaf layers intercepted by default (Linen and NNX).
LAYER_NAMES: tuple[str, ...] = (
    "Dense", "DenseGeneral", "Conv", "ConvTranspose", "ConvLocal", "Embed", "LayerNorm",
    "RMSNorm", "GroupNorm", "BatchNorm", "Einsum", "Linear", "LinearGeneral",
)  # fmt: skip


class Site(NamedTuple):
    """A layer call found while tracing: its key, path, class and resolved policy."""

    key: str
    path: str
    cls: str
    policy: Policy
    n_inputs: int  # floating-point positional inputs
    out_shapes: tuple  # ShapeDtypeStructs of the floating-point outputs
    recipe: bool = False  # the policy's recipe applies to this layer's product


def is_active(pol: Policy, watch: bool) -> bool:
    return watch or not pol.is_float32 or pol.adaptive is not None


def _uses_stochastic(policy: Policy) -> bool:
    pols = (policy, *(pol for _, pol in policy.overrides))
    return any(
        "stochastic" in (p.rounding, p.grad_rounding)
        or (p.recipe is not None and p.recipe.needs_key)
        for p in pols
    )


def _recipe_hint(path: str) -> str:
    return (
        "pad it, or keep the layer out of the recipe with an override, e.g. "
        f"policy.with_overrides(({path!r}, 'float32'))"
    )


class Run:
    """One traced application of a policy.

    Args:
      policy: the policy.
      discover: only record the layer calls (``jax.eval_shape`` pass).
      diff: per layer key, the :class:`OutAux` inputs that are differentiated.
      states: the delayed-scaling state (``{"inputs": {key: (ScaleState, ...)},
        "params": {path: ScaleState}, "grads": {...}}``) or None.
      watch: record forward statistics.
      key: PRNG key for stochastic rounding, or None.
      layers: class names of the layers to intercept.
      recipe_tokens: per layer key, the zero token (``_recipes.zero_token``) whose
        cotangent carries the recipe GEMMs' backward statistics; a layer with a token
        also records its forward GEMM's statistics in ``recipe_records``.
    """

    def __init__(self, policy, *, discover=False, diff=None, states=None, watch=False,
                 key=None, layers=LAYER_NAMES, recipe_tokens=None):  # fmt: skip
        self.policy = policy
        self.discover = discover
        self.diff = diff or {}
        self.states = states or {}
        self.watch = watch
        # keys are derived per boundary only when some rounding is stochastic: the
        # fold_in/split per layer would otherwise be work without a purpose
        self.key = key if _uses_stochastic(policy) else None
        self.layers = tuple(layers)
        self.sites: dict[str, Site] = {}
        self.calls: dict[str, int] = {}
        self.records: dict[str, dict] = {}
        self.recipe_tokens = recipe_tokens or {}
        self.recipe_records: dict[str, tuple] = {}
        self.new_states: dict[str, Any] = {"inputs": {}, "params": {}}
        self.kernels: dict[str, jax.Array] = {}  # {layer path: kernel as it reads it}
        self._n = 0

    # ----------------------------------------------------------------------------------
    def selects(self, module) -> bool:
        return any(c.__name__ in self.layers for c in type(module).__mro__)

    def _site_key(self):
        if self.key is None:
            return None
        self._n += 1
        return derive(self.key, self._n)

    def layer(self, path: str, cls: str, call, args, kwargs, module=None):
        """Apply the policy around one layer call ``call(*args, **kwargs)`` of
        ``module`` (needed for recipes: its product is replaced for the call)."""
        n = self.calls.get(path, 0)
        self.calls[path] = n + 1
        key = (path or cls) if n == 0 else f"{path or cls}#{n}"
        pol = self.policy.for_module(path, cls)
        recipe = pol.recipe is not None and module is not None and takes_recipe(module)
        if self.discover:
            out = call(*args, **kwargs)
            outs = tuple(o for o in jax.tree.leaves(out) if is_float(o))
            shapes = tuple(jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outs)
            n_in = sum(is_float(a) for a in jax.tree.leaves(args))
            self.sites[key] = Site(key, path, cls, pol, n_in, shapes, recipe)
            return out
        if not is_active(pol, self.watch):
            return call(*args, **kwargs)
        if recipe:
            call = self._with_recipe(key, path or cls, pol, module, call)
        rec = {}
        args, tokens = self._inputs(key, pol, args, rec)
        out = call(*args, **kwargs)
        leaves, tree = jax.tree.flatten(out)
        first = True
        for i, y in enumerate(leaves):
            if not is_float(y):
                continue
            aux = self.diff.get(key, OutAux(None, None, None, None)) if first else None
            if aux is None:
                aux = OutAux(None, None, None, None)
            if pol.adaptive is not None and not first:
                raise ValueError(
                    f"adaptive loss scaling needs layers with one floating-point output; "
                    f"{key!r} ({cls}) has several"
                )
            aux = aux._replace(tokens=tokens if first else None)
            if first and pol.adaptive is not None and pol.adaptive.needs_weights:
                aux = aux._replace(weight=self._weight_stats(path, cls, args, y))
            yq = cast_out(pol, y, aux, self._site_key())
            if first and self.watch:
                rec["outputs"] = tensor_stats(y, yq, pol.output)
            leaves[i] = yq
            first = False
        if self.watch:
            self.records[key] = rec
        return jax.tree.unflatten(tree, leaves)

    def _with_recipe(self, key: str, name: str, pol: Policy, module, call):
        """``call`` with the layer's product under ``pol.recipe``; its forward
        statistics land in ``recipe_records[key]`` when the layer has a token."""
        rkey = self._site_key() if pol.recipe.needs_key else None
        token = self.recipe_tokens.get(key)
        sink = {} if token is not None else None
        dg = layer_dot_general(pol.recipe, key=rkey, name=name, hint=_recipe_hint(name),
                               token=token, sink=sink)  # fmt: skip

        def wrapped(*args, **kwargs):
            out = call_with_dot_general(module, lambda: call(*args, **kwargs), dg)
            if sink is not None and "fprop" in sink:
                self.recipe_records[key] = sink["fprop"]
            return out

        return wrapped

    def _inputs(self, key, pol, args, rec):
        leaves, tree = jax.tree.flatten(args)
        fwd, _ = formats(pol, "input")
        tokens = []
        states = self.states.get("inputs", {}).get(key)
        new_states = []
        j = 0
        for i, x in enumerate(leaves):
            if not is_float(x):
                continue
            scale = None
            if pol.scaling is not None and fwd is not None and states is not None:
                scale = pol.scaling.scale(states[j], fwd)
                new_states.append(pol.scaling.update(states[j], x, scale))
            token = jnp.zeros((), jnp.float32) if pol.adaptive is not None else None
            xq, t = cast_in(pol, "input", x, scale, token, self._site_key())
            if t is not None:
                tokens.append(t)
            if j == 0 and self.watch:
                rec["inputs"] = tensor_stats(x, xq, fwd, scale)
            leaves[i] = xq
            j += 1
        if new_states:
            self.new_states["inputs"][key] = tuple(new_states)
        return jax.tree.unflatten(tree, leaves), (tuple(tokens) if tokens else None)

    def _weight_stats(self, path: str, cls: str, args, y) -> WeightStats | None:
        """The statistics of the layer's kernel for Zhao et al.'s rule (None: no kernel,
        or no floating-point input to pass a gradient to, as in ``Embed``).

        ``terms`` (products per entry of ``dx = dy . W^T``): a convolution's kernel is
        ``(*window, in, out)``, so ``window * out``; for the matrix layers (``Dense``,
        ``DenseGeneral``, ``Linear``, ``Einsum``) every output row contracts one input
        row with the kernel, so ``|y| / |x| = out / in`` and ``|W| = in * out`` give
        ``out = sqrt(|W| * |y| / |x|)``, whatever the axes (``DenseGeneral``'s
        ``(d, heads, head_dim)`` query kernel: ``heads * head_dim``).
        """
        w = self.kernels.get(path)
        xs = [a for a in jax.tree.leaves(args) if is_float(a)]
        if w is None or not xs or w.ndim < 2:
            return None
        if "Conv" in cls:
            terms = w.size // w.shape[-2]
        else:
            terms = max(round(math.sqrt(w.size * y.size / xs[0].size)), 1)
        return weight_stats(w, terms)

    # ----------------------------------------------------------------------------------
    def cast_param(self, path: str, name: str, owner_cls: str, owner: str, p):
        """The weight ``p`` as the layer sees it (a cast of the stored weight)."""
        pol = self.policy.for_module(owner, owner_cls)
        adaptive = pol.adaptive is not None and pol.adaptive.needs_weights
        if adaptive and name == "kernel" and is_float(p):
            self.kernels[owner] = p  # replaced by its cast below, if it is cast
        if not is_float(p) or (pol.param_names is not None and name not in pol.param_names):
            return p
        fwd, bwd = formats(pol, "param")
        if fwd is None and bwd is None:
            return p
        scale = None
        state = self.states.get("params", {}).get(path)
        if pol.scaling is not None and fwd is not None and state is not None:
            scale = pol.scaling.scale(state, fwd)
            self.new_states["params"][path] = pol.scaling.update(state, p, scale)
        q = cast_in(pol, "param", p, scale, None, self._site_key())[0]
        if adaptive and name == "kernel":
            self.kernels[owner] = q  # the weight the layer's backward product uses
        return q


def current() -> Run | None:
    """The innermost active Run, or None."""
    return _active.current()


@contextlib.contextmanager
def activate(run: Run):
    """Make ``run`` receive the intercepted layer calls (Linen and NNX)."""
    import flax.linen as nn

    _active.push(run)
    try:
        with nn.intercept_methods(interceptor):
            yield run
    finally:
        _active.pop()


def stats_format(fmt):
    """The format a statistic is taken against (float32 when the tensor is not rounded)."""
    return FP32 if fmt is None else fmt
