"""Precision policies: which format each tensor of a network lives in.

The vocabulary is jmp's and Flax's: ``param`` is how the weights are *stored*,
``compute`` is what a layer computes in (the cast of its weights and inputs), ``output``
is what it writes. A layer of a mixed-precision network touches these tensors, and real
recipes give each its own format:

==============  =======================================================================
field           the tensor
==============  =======================================================================
``param``       the stored weights, between steps (jmp's ``param_dtype``, Flax's
                ``param_dtype``): ``None`` keeps float32 *master weights* ("mixed"
                precision); a format stores them in it ("pure", no master copy)
``compute``     what a layer computes in (jmp's ``compute_dtype``, Flax's ``dtype``):
                its inputs and its weights are cast to it as the layer reads them
``output``      what the layer writes: its output on the way forward and the gradient
                of its input on the way back
``grad``        the activation gradient (the cotangent of the layer's output) as the
                layer's backward pass reads it
``param_grad``  the weight gradient the layer's backward pass writes
==============  =======================================================================

``recipe``      how the matrix products of linear layers are fed to the tensor cores:
                a :class:`~fpsim.nn.Recipe` (MXFP8, NVFP4, DeepSeek-V3's FP8
                blocks, ...) quantizes each operand of each of a layer's three GEMMs
                along that GEMM's contraction (see :mod:`fpsim.nn._recipes`)
==============  =======================================================================

``None`` always means "leave it in float32". Per-module ``overrides`` (fnmatch patterns
on the module's path such as ``"Dense_2"`` or ``"decoder/*"``, or on its class name such
as ``"LayerNorm"``) replace the policy for the matching modules, for example to keep the
last layer in float32. The loss is always computed in float32 by :mod:`fpsim.nn`'s
training helpers.

**Recipes.** Every name of :data:`fpsim.nn.RECIPES` is also a preset here
(``get_policy("mxfp8")``, ``make_train_step(model, "nvfp4", ...)``): a policy whose
``recipe`` quantizes the products of the linear layers (Linen ``Dense`` and
``DenseGeneral``, NNX ``Linear`` and ``LinearGeneral``) and that rounds nothing else,
so that what changes is the recipe alone. Everything that is not such a product
computes in **float32**: layer norms, embeddings, attention's two batched products
(``q k^T`` and the weighted sum of values, einsums inside the attention module),
activations, residual adds, the loss, and each GEMM's output (float32 accumulation).
Transformer Engine keeps these in BF16 or FP32; for BF16 combine a recipe with element
casts, e.g. ``get_policy("bf16_mixed").replace(name="mxfp8_bf16", recipe="mxfp8")``
(BF16 layer boundaries, norms and embeddings in float32, MXFP8 GEMMs). Layers that
stay out of the recipe are overrides, by path: the head of a classifier or language
model, ``get_policy("nvfp4").with_overrides(("head", "float32"))`` (NVIDIA's NVFP4
recipe keeps the last few layers in BF16: ``("block_11/*", "bf16_mixed")``). Stochastic
rounding (NVFP4's gradients) draws from the policy's per-step key:
:func:`fpsim.nn.make_train_step` gives every step fresh random bits.

Policies can also be written as jmp-style strings:
``get_policy("params=float32,compute=float16,output=float32")`` (see :func:`get_policy`).
"""

from __future__ import annotations

import dataclasses
import fnmatch

from fpsim.formats import FP32, Format, get_format
from fpsim.nn._recipes import RECIPES, Recipe, get_recipe
from fpsim.rounding import FormatLike, check_rounding
from fpsim.scaling import AdaptiveLossScaling, DelayedScaling

_FIELDS = ("param", "compute", "output", "grad", "param_grad")


def _fmt(value) -> Format | None:
    """A Format, or None for "float32" (rounding float32 to FP32 changes nothing)."""
    if value is None:
        return None
    fmt = get_format(value)
    return None if fmt == FP32 else fmt


def _name(fmt: Format | None) -> str:
    return "float32" if fmt is None else fmt.name


@dataclasses.dataclass(frozen=True)
class Policy:
    """A precision policy for a Flax model (frozen, hashable: a valid jit static arg).

    Attributes:
      name: label used in reports.
      param: format the weights are stored in between steps (None: float32 master
        weights).
      compute: format each layer computes in: its inputs and its weights (those named
        in ``param_names``) are cast to it.
      output: format of each layer's outputs, and of the input gradients its backward
        pass produces.
      grad: format of the activation gradient a layer's backward pass reads.
      param_grad: format of the weight gradients.
      rounding: rounding mode of the forward roundings.
      grad_rounding: rounding mode of the backward roundings.
      saturate: overflow clamps to +-max instead of becoming inf/NaN.
      scaling: per-tensor delayed scaling (FP8 recipes), or None.
      adaptive: layer-wise adaptive loss scaling in the backward pass, or None.
      param_names: names of the parameters cast to ``compute`` (e.g. ``("kernel",)``
        or ``"kernel"``), or None for all of them.
      overrides: ``((pattern, policy), ...)``; a module whose path (``"block/Dense_0"``)
        or class name (``"LayerNorm"``) matches ``pattern`` (fnmatch syntax) uses
        ``policy``; the last match wins. A policy may be given by preset name.
      recipe: a :class:`~fpsim.nn.Recipe` or its name, or None: the linear layers'
        matrix products (three GEMMs per layer and step) quantize their operands as
        the recipe says, after the element casts above (a layer's input cast to
        ``compute`` is then quantized by the recipe).
    """

    name: str = "custom"
    param: Format | None = None
    compute: Format | None = None
    output: Format | None = None
    grad: Format | None = None
    param_grad: Format | None = None
    rounding: str = "nearest"
    grad_rounding: str = "nearest"
    saturate: bool = False
    scaling: DelayedScaling | None = None
    adaptive: AdaptiveLossScaling | None = None
    param_names: tuple[str, ...] | None = None
    overrides: tuple[tuple[str, Policy], ...] = ()
    recipe: Recipe | None = None

    def __post_init__(self):
        if self.recipe is not None:
            object.__setattr__(self, "recipe", get_recipe(self.recipe))
        for f in _FIELDS:
            object.__setattr__(self, f, _fmt(getattr(self, f)))
        check_rounding(self.rounding)
        check_rounding(self.grad_rounding)
        if self.param_names is not None:
            names = self.param_names
            names = (names,) if isinstance(names, str) else names
            if not all(isinstance(n, str) and n for n in names):
                raise TypeError(
                    f"param_names must be a parameter name or a tuple of names (e.g. "
                    f"'kernel' or ('kernel', 'embedding')), got {self.param_names!r}"
                )
            object.__setattr__(self, "param_names", tuple(names))
        resolved = []
        for item in self.overrides:
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise ValueError(
                    f"overrides must be (pattern, policy) pairs, got {item!r}; e.g. "
                    "overrides=(('Dense_2', 'float32'),)"
                )
            pattern, pol = item
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    f"an override pattern must be a non-empty str, got {pattern!r}"
                )
            pol = get_policy(pol) if isinstance(pol, str) else pol
            if not isinstance(pol, Policy):
                raise TypeError(f"override for {pattern!r} must be a Policy or preset name")
            resolved.append((pattern, dataclasses.replace(pol, overrides=())))
        object.__setattr__(self, "overrides", tuple(resolved))

    def __repr__(self) -> str:
        """Formats by name, ``'float32'`` where nothing is rounded; defaults omitted."""
        parts = [f"name={self.name!r}"]
        parts += [f"{f}={_name(getattr(self, f))!r}" for f in _FIELDS]
        for f in dataclasses.fields(self):
            if f.name in (*_FIELDS, "name", "overrides"):
                continue
            value = getattr(self, f.name)
            if f.name == "recipe" and value is not None:
                parts.append(f"recipe={value.name!r}")
            elif value != f.default:
                parts.append(f"{f.name}={value!r}")
        if self.overrides:
            pairs = ", ".join(f"({pat!r}, {pol.name!r})" for pat, pol in self.overrides)
            parts.append(f"overrides=({pairs}{',' * (len(self.overrides) == 1)})")
        return f"Policy({', '.join(parts)})"

    @property
    def is_float32(self) -> bool:
        """True when this policy (ignoring overrides) rounds nothing."""
        return self.recipe is None and all(getattr(self, f) is None for f in _FIELDS)

    @property
    def has_recipe(self) -> bool:
        """Whether this policy or one of its overrides has a recipe."""
        return any(p.recipe is not None for p in (self, *(p for _, p in self.overrides)))

    def for_module(self, path: str, class_name: str = "") -> Policy:
        """The policy that applies to the module at ``path`` of class ``class_name``."""
        chosen = self
        for pattern, pol in self.overrides:
            if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(
                class_name, pattern
            ):
                chosen = pol
        return chosen

    def with_overrides(self, *pairs: tuple[str, Policy | str]) -> Policy:
        """A copy with more overrides appended (they win over earlier ones).

        Example:
          >>> import fpsim
          >>> p = fpsim.nn.get_policy("fp16_mixed").with_overrides(("Dense_2", "float32"))
          >>> p.for_module("Dense_2", "Dense").name
          'float32'
        """
        return dataclasses.replace(self, overrides=self.overrides + tuple(pairs))

    def replace(self, **changes) -> Policy:
        """``dataclasses.replace`` for policies."""
        return dataclasses.replace(self, **changes)


def _presets() -> dict[str, Policy]:
    fp32 = Policy(name="float32")
    norms_fp32 = (("*Norm", fp32), ("Embed", fp32))
    return {
        "float32": fp32,
        # Micikevicius et al. 2017: FP16 compute, float32 master weights (+ loss scaling
        # in the optimizer); normalization layers stay in float32, as in the paper and as
        # PyTorch's autocast runs layer_norm/batch_norm
        "fp16_mixed": Policy(
            name="fp16_mixed", compute="fp16", output="fp16", grad="fp16",
            param_grad="fp16", overrides=norms_fp32,
        ),
        "bf16_mixed": Policy(
            name="bf16_mixed", compute="bf16", output="bf16", grad="bf16",
            param_grad="bf16", overrides=norms_fp32,
        ),
        # no master weights: the weights themselves are stored in FP16
        "fp16_pure": Policy(
            name="fp16_pure", param="fp16", compute="fp16", output="fp16", grad="fp16",
            param_grad="fp16",
        ),
        # Micikevicius et al. 2022 / Transformer Engine: E4M3 forward, E5M2 backward, matrix
        # products only, per-tensor delayed scaling; outputs and norms in high precision
        "fp8_hybrid": Policy(
            name="fp8_hybrid", compute="e4m3", grad="e5m2", saturate=True,
            scaling=DelayedScaling(), param_names=("kernel",), overrides=norms_fp32,
        ),
        # the same casts with no scaling at all: what goes wrong without the recipe
        "fp8_naive": Policy(
            name="fp8_naive", compute="e4m3", grad="e5m2",
            param_names=("kernel",), overrides=norms_fp32,
        ),
        # the training recipes: the linear layers' GEMMs quantized, all else float32
        **{name: Policy(name=name, recipe=r) for name, r in RECIPES.items()},
    }  # fmt: skip


PRESETS: dict[str, Policy] = _presets()
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


_JMP_KEYS = {
    "p": "param", "param": "param", "params": "param",
    "c": "compute", "compute": "compute",
    "o": "output", "output": "output",
    "g": "grad", "grad": "grad", "grads": "grad",
    "pg": "param_grad", "param_grad": "param_grad", "param_grads": "param_grad",
}  # fmt: skip
_JMP_DTYPES = {"f16": "float16", "f32": "float32", "full": "float32"}


def _parse_jmp(spec: str) -> Policy:
    """``"params=float32,compute=float16,output=float32"`` (jmp's syntax) as a Policy.

    Keys as in jmp (``p``/``params``, ``c``/``compute``, ``o``/``output``) plus fpsim's
    ``g``/``grad`` and ``pg``/``param_grad``; values are format names (jmp's
    ``f32``/``f16``/``bf16`` too). Unnamed ``params`` and ``output`` are float32, as in
    jmp; unnamed ``grad`` and ``param_grad`` follow ``compute`` (in jmp the backward
    pass runs in the compute dtype).
    """
    fields: dict[str, Format | None] = {}
    for part in spec.split(","):
        key, eq, value = (t.strip().lower() for t in part.partition("="))
        if not eq or key not in _JMP_KEYS:
            raise ValueError(
                f"cannot read {part.strip()!r} in policy {spec!r}: write key=format with "
                "key one of params, compute, output, grad, param_grad (or p, c, o, g, "
                "pg), e.g. 'params=float32,compute=float16,output=float32'"
            )
        field = _JMP_KEYS[key]
        if field in fields:
            raise ValueError(f"{field!r} is given twice in policy {spec!r}")
        fields[field] = _fmt(_JMP_DTYPES.get(value, value))
    fields.setdefault("grad", fields.get("compute"))
    fields.setdefault("param_grad", fields.get("compute"))
    return Policy(name=spec, **fields)


def get_policy(name: str | Policy) -> Policy:
    """A policy by preset name or jmp-style string (a Policy passes through).

    Presets: ``"float32"``; ``"fp16_mixed"`` (FP16 compute and gradients, float32 master
    weights: Micikevicius et al. 2017); ``"bf16_mixed"``; ``"fp16_pure"`` (weights stored
    in FP16 too: no master weights); ``"fp8_hybrid"`` (E4M3 forward, E5M2 backward, with
    Transformer Engine's delayed per-tensor scaling); ``"fp8_naive"`` (the same casts
    without scaling, the baseline that fails); and one per training recipe of
    :data:`fpsim.nn.RECIPES` (``"mxfp8"``, ``"nvfp4"``, ``"fp8_blockwise"``, ...:
    the linear layers' GEMMs under the recipe, everything else in float32).

    jmp-style strings name the formats: ``"params=float32,compute=float16,output=float32"``
    (or ``"p=f32,c=bf16,o=f32"``); a single format name (``"bfloat16"``) puts everything
    in it, weights stored included, as jmp does. Unnamed ``grad`` and ``param_grad``
    follow ``compute``.

    Example:
      >>> import fpsim
      >>> p = fpsim.nn.get_policy("params=float32,compute=float16,output=float32")
      >>> p.param is None, p.compute.name, p.output is None, p.grad.name
      (True, 'fp16', True, 'fp16')
      >>> nvfp4 = fpsim.nn.get_policy("nvfp4").with_overrides(("head", "float32"))
      >>> nvfp4.recipe.name, nvfp4.for_module("head").recipe
      ('nvfp4', None)

    Raises:
      ValueError: unknown name; the message lists the presets.
    """
    if isinstance(name, Policy):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"expected a preset name or fpsim.nn.Policy, got {type(name).__name__}"
        )
    key = name.strip().lower().replace("-", "_")
    if key in PRESETS:
        return PRESETS[key]
    if "=" in name:
        return _parse_jmp(name)
    try:
        fmt = _fmt(_JMP_DTYPES.get(key, key))
    except (ValueError, TypeError):
        raise ValueError(
            f"unknown precision policy {name!r}; presets: {', '.join(PRESET_NAMES)}; or "
            "a jmp-style string such as 'params=float32,compute=float16,output=float32'"
        ) from None
    return Policy(name=name, param=fmt, compute=fmt, output=fmt, grad=fmt, param_grad=fmt)


def as_policy(policy: str | Policy) -> Policy:
    """Internal: accept a preset name or a Policy."""
    return get_policy(policy)


def check_format_like(value: FormatLike | None) -> Format | None:
    """Internal: a Format, or None."""
    return _fmt(value)
