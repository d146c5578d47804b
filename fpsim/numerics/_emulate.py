"""``emulate(fn, policy)``: run any JAX function with every float result rounded.

How it works: JAX can turn a function into a *jaxpr*, the list of primitive operations
(``add``, ``exp``, ``dot_general``, ``scan``, ...) it performs. ``emulate`` traces
``fn`` with ``jax.make_jaxpr`` and then evaluates that list itself, an interpreter in
the style of JAX's "Writing custom interpreters" tutorial: it binds each primitive as
JAX would, then rounds every floating-point result to the policy's format. Control
flow (``scan``, ``while``, ``cond``) is rebuilt with ``lax`` around the interpreted
body, and calls (``jit``, ``custom_jvp``, ``custom_vjp``, ``checkpoint``) are inlined,
so rounding reaches every operation, however deeply nested.

Because the interpreter runs at trace time, the result composes with JAX's
transformations: ``jax.jit(emulate(jax.grad(loss)))`` rounds every operation of the
backward pass too, and ``jax.grad(emulate(loss))`` differentiates the rounded forward
pass with straight-through rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.extend as jex
import jax.numpy as jnp
from jax import lax

from fpsim._bits import is_float
from fpsim.arith import is_float32_format, round_to
from fpsim.formats import Format, get_format
from fpsim.numerics._accumulate import lp_sum
from fpsim.numerics._dot import lp_dot_general
from fpsim.numerics._policy import EmulationPolicy, EmulationReport
from fpsim.rounding import FormatLike

#: Primitives that only move, select or negate values: their results are already on
#: the grid of their operands, so there is nothing to round.
EXACT_OPS = frozenset(
    [
        "reshape",
        "broadcast_in_dim",
        "transpose",
        "squeeze",
        "expand_dims",
        "slice",
        "dynamic_slice",
        "dynamic_update_slice",
        "concatenate",
        "pad",
        "gather",
        "scatter",
        "select_n",
        "rev",
        "copy",
        "copy_p",
        "neg",
        "abs",
        "max",
        "min",
        "reduce_max",
        "reduce_min",
        "sort",
        "sign",
        "clamp",
        "cummax",
        "cummin",
        "split",
        "optimization_barrier",
        "device_put",
        "sharding_constraint",
        "stop_gradient",
    ]
)
#: Primitives with a known floating-point result, rounded to the policy's format.
ARITH_OPS = frozenset(
    [
        "add",
        "sub",
        "mul",
        "div",
        "rem",
        "pow",
        "integer_pow",
        "sqrt",
        "rsqrt",
        "cbrt",
        "exp",
        "exp2",
        "log",
        "log1p",
        "expm1",
        "tanh",
        "logistic",
        "sin",
        "cos",
        "tan",
        "asin",
        "acos",
        "atan",
        "atan2",
        "sinh",
        "cosh",
        "asinh",
        "acosh",
        "atanh",
        "erf",
        "erfc",
        "erf_inv",
        "lgamma",
        "digamma",
        "igamma",
        "igammac",
        "polygamma",
        "bessel_i0e",
        "bessel_i1e",
        "square",
        "reduce_sum",
        "reduce_prod",
        "cumsum",
        "cumprod",
        "cumlogsumexp",
        "add_any",
        "convert_element_type",
        "floor",
        "ceil",
        "round",
        "nextafter",
        "scatter_add",
        "scatter-add",
        "scatter_mul",
        "reduce_precision",
        "dot_general",
        "conv_general_dilated",
    ]
)
_CALLS = ("jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint",
          "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")  # fmt: skip


class _Interpreter:
    def __init__(self, policy: EmulationPolicy, report: EmulationReport):
        self.policy = policy
        self.report = report

    # --- rounding ------------------------------------------------------------------
    def round(self, x, fmt: Format | None):
        if fmt is None or not is_float(x):
            return x
        if x.dtype == jnp.float32 or x.dtype == jnp.float64:
            return round_to(x, fmt, self.policy.rounding)
        return round_to(x.astype(jnp.float32), fmt, self.policy.rounding).astype(x.dtype)

    # --- evaluation ----------------------------------------------------------------
    def eval(self, jaxpr, consts, args):
        env = {}

        def read(v):
            return v.val if isinstance(v, jex.core.Literal) else env[v]

        env.update(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        for eqn in jaxpr.eqns:
            outs = self.apply(eqn, [read(v) for v in eqn.invars])
            for v, x in zip(eqn.outvars, outs, strict=True):
                if not isinstance(v, jex.core.DropVar):
                    env[v] = x
        return [read(v) for v in jaxpr.outvars]

    def eval_closed(self, closed, args):
        if isinstance(closed, jex.core.ClosedJaxpr):
            return self.eval(closed.jaxpr, closed.consts, list(args))
        return self.eval(closed, [], list(args))

    def bind(self, eqn, invals):
        out = eqn.primitive.bind(*invals, **eqn.params)
        return list(out) if eqn.primitive.multiple_results else [out]

    def apply(self, eqn, invals):
        name = eqn.primitive.name
        p = eqn.params
        if name in _CALLS:
            self.report.record(name, "inlined")
            body = p.get("call_jaxpr", p.get("jaxpr"))
            return self.eval_closed(body, invals)
        if name == "scan":
            self.report.record(name, "interpreted")
            return self.scan(p, invals)
        if name == "while":
            self.report.record(name, "interpreted")
            return self.while_loop(p, invals)
        if name == "cond":
            self.report.record(name, "interpreted")
            idx, *ops = invals
            branches = [functools.partial(self.eval_closed, br) for br in p["branches"]]
            return lax.switch(idx, [lambda *o, b=b: b(o) for b in branches], *ops)
        if not any(is_float(v.aval) for v in eqn.outvars):
            self.report.record(name, "not float")
            return self.bind(eqn, invals)
        if name in EXACT_OPS:
            self.report.record(name, "exact")
            return self.bind(eqn, invals)
        fmt = self.policy.format_for(name)
        label = "float32" if fmt is None else fmt.name
        if name == "dot_general":
            outs = [self.dot_general(eqn, invals)]
        elif name == "reduce_sum" and not is_float32_format(self.policy.accumulation.accum):
            outs = [self.reduce_sum(eqn, invals[0])]
            label += f" (accum {self.policy.accumulation.accum.name})"
        elif name == "conv_general_dilated":
            acc = self.policy.accumulation
            if (not is_float32_format(acc.accum) or acc.products is not None
                    or acc.model is not None):  # fmt: skip
                raise NotImplementedError(
                    "emulate: convolutions accumulate in float32 only; use "
                    "Accumulation(accum=FP32, products=None, model=None) (the default)"
                )
            outs = self.bind(eqn, invals)
        else:
            outs = self.bind(eqn, invals)
        if name not in ARITH_OPS:
            label = f"UNKNOWN -> {label}"
        self.report.record(name, label)
        return [self.round(x, fmt) for x in outs]

    # --- rules ---------------------------------------------------------------------
    def dot_general(self, eqn, invals):
        lhs, rhs = invals
        out_dtype = eqn.outvars[0].aval.dtype
        if not (is_float(lhs) and is_float(rhs)):
            return self.bind(eqn, invals)[0]
        acc = self.policy.accumulation
        if acc.model is not None:
            fmt = self.policy.format_for("dot_general")
            if fmt is None:
                raise ValueError(
                    f"Accumulation(model={acc.model.name!r}) reads dot_general's operands "
                    "in the policy's format for it, but the policy keeps dot_general in "
                    "float32 (an override); give it a format of at most 12 significant "
                    "bits (fp16, bf16, e4m3, ...)"
                )
            out = lp_dot_general(lhs.astype(jnp.float32), rhs.astype(jnp.float32),
                                 eqn.params["dimension_numbers"], inputs=fmt,
                                 accumulator=acc.model)  # fmt: skip
            return out.astype(out_dtype)
        out = lp_dot_general(
            lhs.astype(jnp.float32),
            rhs.astype(jnp.float32),
            eqn.params["dimension_numbers"],
            products=acc.products, accum=acc.accum, order=acc.order, chunk=acc.chunk,
            rounding=self.policy.rounding,
        )  # fmt: skip
        return out.astype(out_dtype)

    def reduce_sum(self, eqn, x):
        axes = tuple(eqn.params["axes"])
        keep = [d for d in range(x.ndim) if d not in axes]
        x = jnp.transpose(x.astype(jnp.float32), (*keep, *axes))
        x = x.reshape(*(x.shape[: len(keep)]), -1)
        acc = self.policy.accumulation
        out = lp_sum(x, -1, accum=acc.accum, order=acc.order, chunk=acc.chunk,
                     rounding=self.policy.rounding)  # fmt: skip
        return out.astype(eqn.outvars[0].aval.dtype)

    def scan(self, p, invals):
        nc, ncarry = p["num_consts"], p["num_carry"]
        consts, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]

        def body(carry, x):
            outs = self.eval_closed(p["jaxpr"], [*consts, *carry, *x])
            return outs[:ncarry], outs[ncarry:]

        carry, ys = lax.scan(body, init, xs, length=p["length"], reverse=p["reverse"],
                             unroll=p["unroll"])  # fmt: skip
        return [*carry, *ys]

    def while_loop(self, p, invals):
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
        out = lax.while_loop(
            lambda c: self.eval_closed(p["cond_jaxpr"], [*cconsts, *c])[0],
            lambda c: self.eval_closed(p["body_jaxpr"], [*bconsts, *c]),
            init,
        )
        return list(out)


def _is_array(x) -> bool:
    return (
        isinstance(x, jax.Array | float | int | complex)
        or hasattr(x, "__jax_array__")
        or (hasattr(x, "dtype") and hasattr(x, "shape"))
    )


class Emulated:
    """The function returned by :func:`emulate`; ``.report`` describes the last trace."""

    def __init__(self, fn, policy: EmulationPolicy):
        self.fn = fn
        self.policy = policy
        self.report = EmulationReport()
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        where = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
        self.report = EmulationReport()
        interp = _Interpreter(self.policy, self.report)
        dyn = [jnp.asarray(leaves[i]) for i in where]
        if self.policy.round_inputs:
            dyn = [interp.round(x, self.policy.compute) for x in dyn]

        def flat_fn(*values):
            full = list(leaves)
            for i, v in zip(where, values, strict=True):
                full[i] = v
            a, k = jax.tree_util.tree_unflatten(treedef, full)
            return self.fn(*a, **k)

        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*dyn)
        outs = interp.eval_closed(closed, dyn)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)


def emulate(fn, policy: EmulationPolicy | FormatLike | None = None, **policy_kwargs):
    """Run ``fn`` with the result of every floating-point primitive rounded.

    Args:
      fn: any JAX-traceable function (a loss, ``jax.grad(loss)``, a Flax ``apply``).
      policy: an :class:`EmulationPolicy`, or just a compute format (``"fp16"``);
        or give the policy's fields as keywords:
        ``emulate(fn, compute="bf16", overrides={"exp": None})``.

    Returns:
      A callable with ``fn``'s signature. After a call (or a ``jax.jit`` trace) its
      ``.report`` lists every primitive met and how it was treated; primitives fpsim
      has no rule for are computed in float32, rounded, and listed as unknown.

    Precision notes: ``+ - * / sqrt`` of operands of at most 11 significant bits,
    computed in float32 and rounded, are correctly rounded (Figueroa 1995; see
    :mod:`fpsim.arith`); BF16 results below ``2**-126`` are flushed to zero on CPU.
    Transcendentals are XLA's float32 approximations, rounded once.

    Example:
      >>> import fpsim, jax, jax.numpy as jnp
      >>> f = fpsim.emulate(lambda x: x + 1e-4, compute="fp16")
      >>> float(f(jnp.float32(1.0)))  # 1 + 1e-4 rounds back to 1 in fp16
      1.0
    """
    if policy is None:
        if "compute" in policy_kwargs:
            policy_kwargs["compute"] = get_format(policy_kwargs["compute"])
        policy = EmulationPolicy(**policy_kwargs)
    elif policy_kwargs:
        raise TypeError("give either a policy or its fields as keywords, not both")
    elif isinstance(policy, str | Format):
        policy = EmulationPolicy(compute=get_format(policy))
    if not isinstance(policy, EmulationPolicy):
        raise TypeError(
            f"policy must be an fpsim.EmulationPolicy, got {type(policy).__name__}"
        )
    return Emulated(fn, policy)
