"""Low-precision training recipes as GEMM-level quantization.

A recipe (Transformer Engine's word) says how each matrix product of a training step is
fed to the tensor cores. Quantization happens where the hardware does it: at each
``dot_general``, on its two operands, along the dimension *that* GEMM contracts. A
linear layer ``y = x W`` (``x``: ``M x K`` tokens by features, ``W``: ``K x N``) runs
three GEMMs per step, and each quantizes its operands for itself:

=============  ======================  ==================================================
GEMM           product                 operands quantized along
=============  ======================  ==================================================
forward        ``y  = x W``            ``x`` along K (rowwise), ``W`` along K
input grad     ``dx = g W^T``          ``g`` along N (rowwise), ``W`` along N
weight grad    ``dW = x^T g``          ``x`` along M (columnwise), ``g`` along M
=============  ======================  ==================================================

So ``x`` is quantized twice (rowwise for the forward GEMM, columnwise for the weight
gradient), and so are ``W`` and ``g``: a block of 32 along K is not a block of 32
along M. MXFP8 hardware requires exactly this, and it is why a block-scaled tensor
cannot simply be transposed: its scales run the wrong way. (Per-tensor scaling has one
scale, so both copies are equal; 2-D weight tiles, 128x128 or 16x16, are the same
tiles either way round, so the weight is quantized once.)

:func:`recipe_dot_general` is a drop-in for ``lax.dot_general`` (Linen
``nn.Dense(dot_general=...)``, NNX ``nnx.Linear(dot_general=...)``) with a
``jax.custom_vjp`` that does the above; :func:`recipe_scope` installs it in every
``Dense``/``DenseGeneral`` of an unmodified Linen model. The presets (:data:`RECIPES`,
:func:`get_recipe`) follow Transformer Engine's recipe documentation and the DeepSeek-V3
report; each docstring says what fpsim simplifies. What is *not* simulated here, unless
a recipe names a tensor-core ``accumulator`` model: the accumulation inside the GEMM
(float32, as XLA computes it); nor the output cast (the result stays float32, as TE's
GEMMs write BF16/FP32).

Policies: every recipe is also a :class:`fpsim.nn.Policy` preset of the same name
(``make_train_step(model, "mxfp8", ...)``, ``fpsim.nn.apply(fn, "nvfp4", ...)``), or a
policy's ``recipe`` field; the training step then reports, per layer and per step,
what each GEMM's quantization lost (:class:`RecipeStats`).

Lengths: block formats need each blocked axis to be a multiple of the block (32 for
MXFP8, 16 for NVFP4, 128 for DeepSeek-V3's tiles), as the hardware does. When a GEMM's
axis is not, :func:`recipe_dot_general` raises an error naming the layer, the axis and
the size (``fallback="error"``, the default) or, with ``fallback="float32"``, computes
that GEMM in float32 and says so nowhere else: Transformer Engine likewise refuses such
shapes, and its users keep those layers (often the embedding and the head) in higher
precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fpsim._keys import canonical_key, derive
from fpsim.blocks import (
    EXPONENTS,
    FP8_TENSOR,
    MXFP4,
    MXFP8_E4M3,
    NVFP4,
    BlockFormat,
    BlockSummary,
    FP8_BLOCK_1x128,
    FP8_BLOCK_128x128,
    NVFP4_16x16,
    get_block_format,
)
from fpsim.codec import decode
from fpsim.formats import E5M2, FP32, Format
from fpsim.numerics import AccumulatorModel, get_accumulator, tc_scaled_matmul
from fpsim.rounding import check_rounding

#: GEMM names, in the order a linear layer's training step runs them.
GEMMS: tuple[str, ...] = ("fprop", "dgrad", "wgrad")
FALLBACKS: tuple[str, ...] = ("error", "float32")


def _bf(value) -> BlockFormat:
    return get_block_format(value)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the three GEMMs of a linear layer quantize their operands (frozen, hashable).

    Attributes:
      name: label used in reports and error messages.
      activation: block format of the layer input ``x`` (the forward GEMM, rowwise, and
        the weight-gradient GEMM, columnwise).
      weight: block format of the weight ``W`` (forward and input-gradient GEMMs). A
        2-D format (``block_shape``, e.g. 128x128 or 16x16) quantizes ``W`` once in
        tiles that serve both GEMMs; a 1-D one quantizes it along K for the forward
        GEMM and along N for the input-gradient GEMM.
      grad: block format of the output gradient ``g`` (input- and weight-gradient
        GEMMs).
      rounding: how activations and weights round (``"nearest"``).
      grad_rounding: how ``g`` rounds; ``"stochastic"`` needs a key (NVFP4's recipe).
      scale_mode: overrides the E8M0 scale rule of MX formats (``"rceil"``: Transformer
        Engine's MXFP8), None keeps each format's own.
      rht: apply the random Hadamard transform (16-point, one fixed sign vector) to
        both operands of the weight-gradient GEMM along its contraction (token) axis
        before quantizing them: it changes no product in exact arithmetic and spreads
        outliers over their block (NVFP4's recipe).
      rht_seed: seed of the fixed random signs.
      source: where the recipe comes from.
      accumulator: None (the GEMMs accumulate in float32, as XLA computes), or a
        tensor-core accumulator model (:class:`fpsim.AccumulatorModel` or preset name):
        each GEMM then multiplies the unscaled elements on the modelled tensor core
        and applies the scales when the partial sums are promoted
        (:func:`fpsim.tc_scaled_matmul`); e.g. ``"hopper_fp8_promote128"`` with
        ``fp8_blockwise``, DeepSeek-V3's setting. Needs float32 scales (per tensor,
        or blocks along K as long as the model's ``promote_every``), one element
        format and round-to-nearest.
    """

    name: str
    activation: BlockFormat
    weight: BlockFormat
    grad: BlockFormat
    rounding: str = "nearest"
    grad_rounding: str = "nearest"
    scale_mode: str | None = None
    rht: bool = False
    rht_seed: int = 0
    source: str = ""
    accumulator: AccumulatorModel | None = None

    def __post_init__(self) -> None:
        for field in ("activation", "weight", "grad"):
            object.__setattr__(self, field, _bf(getattr(self, field)))
        if self.accumulator is not None:
            object.__setattr__(self, "accumulator", get_accumulator(self.accumulator))
            _check_accumulator(self)
        check_rounding(self.rounding)
        check_rounding(self.grad_rounding)
        if self.activation.block_shape is not None or self.grad.block_shape is not None:
            raise ValueError(
                f"recipe {self.name!r}: activations and gradients are quantized along one "
                "axis (the GEMM's contraction); 2-D tiles are for weights only"
            )

    @property
    def needs_key(self) -> bool:
        """Whether the backward pass rounds stochastically (so needs a random key)."""
        return "stochastic" in (self.rounding, self.grad_rounding)

    def replace(self, **changes) -> Recipe:
        """``dataclasses.replace`` for recipes."""
        return dataclasses.replace(self, **changes)

    # the switches of NVIDIA's NVFP4 recipe, one ingredient off at a time
    def without_rht(self) -> Recipe:
        """The recipe without the random Hadamard transform (TE's ``disable_rht``)."""
        return self.replace(name=f"{self.name}_no_rht", rht=False)

    def without_stochastic_rounding(self) -> Recipe:
        """Gradients rounded to nearest instead of stochastically."""
        return self.replace(name=f"{self.name}_no_sr", grad_rounding="nearest")

    def with_1d_weights(self) -> Recipe:
        """Weights quantized in 1-D blocks like the activations, not in 2-D tiles."""
        return self.replace(name=f"{self.name}_1d_weights", weight=self.activation)


def _check_accumulator(recipe: Recipe) -> None:
    """Raise unless ``recipe``'s GEMMs can run on its tensor-core model."""
    model, fmts = recipe.accumulator, (recipe.activation, recipe.weight, recipe.grad)
    why = ""
    if any(f.scale != FP32 for f in fmts):
        why = "its formats need float32 scales (FP8 per tensor or in blocks)"
    elif len({f.element for f in fmts}) != 1:
        why = "its operands need one element format (a tensor core reads one input type)"
    elif recipe.rounding != "nearest" or recipe.grad_rounding != "nearest":
        why = "its roundings must be 'nearest'"
    else:
        for f in fmts:
            blocks = set(f.block_shape or (f.block_size,))
            if not f.per_tensor and blocks != {model.promote_every}:
                why = (f"{f.name}'s blocks of {f.block_shape or f.block_size} along K need "
                       f"a model that promotes every block, but {model.name} has "
                       f"promote_every={model.promote_every}")  # fmt: skip
    if why:
        raise ValueError(
            f"recipe {recipe.name!r} with accumulator={model.name!r}: {why}; e.g. "
            "fp8_blockwise with 'hopper_fp8_promote128'"
        )


class _Scaled(NamedTuple):
    """An operand as a scaled GEMM reads it: elements and scales (a recipe with an
    accumulator model quantizes to this instead of to values)."""

    elements: jax.Array
    scales: jax.Array  # per tensor (), or per block: the blocked axes divided
    element: Format
    model: AccumulatorModel


def _scaled_mm(a: _Scaled, b: _Scaled, dims) -> jax.Array:
    """``lax.dot_general(a, b, dims)`` for 2-D operands with one contracting axis each,
    on the tensor-core model, the scales applied on promotion."""
    (lc,), (rc,) = dims[0]
    x, sx = (a.elements.T, a.scales.T) if lc == 0 else (a.elements, a.scales)
    y, sy = (b.elements.T, b.scales.T) if rc == 1 else (b.elements, b.scales)
    if sx.ndim == 2:  # 2-D tiles: the scale of a tile repeats over its rows
        sx = jnp.repeat(sx, x.shape[0] // sx.shape[0], axis=0)
    if sy.ndim == 2:
        sy = jnp.repeat(sy, y.shape[1] // sy.shape[1], axis=1)
    return tc_scaled_matmul(x, y, sx, sy, a.model, inputs=a.element)


def _fmt_with(bfmt: BlockFormat, **changes) -> BlockFormat:
    return dataclasses.replace(bfmt, **changes)


FP8_TENSOR_E5M2 = BlockFormat(
    "fp8_tensor_e5m2", E5M2, 1, FP8_TENSOR.scale, "amax", per_tensor=True
)

#: Transformer Engine ``Float8CurrentScaling``: one float32 scale per tensor, computed
#: from the tensor's amax *now* (``scale = 448 / amax`` for E4M3, ``57344 / amax`` for
#: E5M2), E4M3 forward (activations, weights) and E5M2 gradients (TE's HYBRID format).
#: Simplified: the scale is ``amax / max`` in float32 with no margin, and the GEMM
#: accumulates in float32.
FP8_CURRENT = Recipe(
    "fp8_current", FP8_TENSOR, FP8_TENSOR, FP8_TENSOR_E5M2,
    source="Transformer Engine Float8CurrentScaling (fp8_format=HYBRID)",
)  # fmt: skip
#: The same with E4M3 gradients too (TE's ``fp8_format=E4M3``): one more mantissa bit,
#: 2**7 less range, which a per-tensor scale computed now makes up for.
FP8_CURRENT_E4M3 = FP8_CURRENT.replace(
    name="fp8_current_e4m3", grad=FP8_TENSOR,
    source="Transformer Engine Float8CurrentScaling (fp8_format=E4M3)",
)  # fmt: skip

#: DeepSeek-V3 (technical report, section 3.3) / Transformer Engine
#: ``Float8BlockScaling``: E4M3 everywhere (gradients too); activations and gradients
#: in 1x128 tiles along each GEMM's contraction, weights in 128x128 blocks; float32
#: scales ``amax / 448``. Simplified: the GEMM accumulates in float32, unless given
#: DeepSeek-V3's tensor core: ``FP8_BLOCKWISE.replace(accumulator=
#: "hopper_fp8_promote128")`` adds 128 products at a time on the ~14-bit FP8 adder and
#: promotes each partial sum, scaled, to FP32 (:func:`fpsim.tc_scaled_matmul`).
#: :data:`FP8_BLOCKWISE_POW2` rounds the scales up to powers of two, TE's default.
FP8_BLOCKWISE = Recipe(
    "fp8_blockwise", FP8_BLOCK_1x128, FP8_BLOCK_128x128, FP8_BLOCK_1x128,
    source="DeepSeek-V3 technical report (2024), sec. 3.3; TE Float8BlockScaling",
)  # fmt: skip
FP8_BLOCKWISE_POW2 = FP8_BLOCKWISE.replace(
    name="fp8_blockwise_pow2",
    activation=_fmt_with(FP8_BLOCK_1x128, name="fp8_block_1x128_pow2", scale_mode="pow2"),
    weight=_fmt_with(FP8_BLOCK_128x128, name="fp8_block_128x128_pow2", scale_mode="pow2"),
    grad=_fmt_with(FP8_BLOCK_1x128, name="fp8_block_1x128_pow2", scale_mode="pow2"),
)

_MXFP8_RCEIL = _fmt_with(MXFP8_E4M3, name="mxfp8_e4m3_rceil", scale_mode="rceil")
#: Transformer Engine ``MXFP8BlockScaling``: E4M3 elements (its default format, for
#: gradients too) in blocks of 32 along each GEMM's contraction with E8M0 scales chosen
#: by rounding ``amax / 448`` up to a power of two (RCEIL, as Blackwell's conversion
#: instructions do); every operand quantized separately rowwise and columnwise.
#: Simplified: float32 accumulation.
MXFP8 = Recipe(
    "mxfp8", _MXFP8_RCEIL, _MXFP8_RCEIL, _MXFP8_RCEIL,
    source="Transformer Engine MXFP8BlockScaling; OCP MX v1.0",
)  # fmt: skip

#: Transformer Engine ``NVFP4BlockScaling`` (NVIDIA, "Pretraining LLMs with NVFP4",
#: 2025): E2M1 elements, E4M3 block scales and a float32 tensor scale; weights in 16x16
#: tiles, activations and gradients in 1x16 blocks; gradients rounded stochastically;
#: the 16-point random Hadamard transform on both inputs of the weight-gradient GEMM.
#: Switches: :meth:`Recipe.without_rht`, :meth:`Recipe.without_stochastic_rounding`,
#: :meth:`Recipe.with_1d_weights`. Simplified: the stochastic rounding draws 32 random
#: bits per element, the RHT signs are one fixed vector from ``rht_seed``, and which
#: layers stay in BF16 (the paper keeps the last few) is the caller's choice
#: (:func:`recipe_scope`'s ``skip``).
NVFP4_RECIPE = Recipe(
    "nvfp4", NVFP4, NVFP4_16x16, NVFP4, grad_rounding="stochastic", rht=True,
    source="TE NVFP4BlockScaling; NVIDIA, 'Pretraining LLMs with NVFP4' (2025)",
)  # fmt: skip

#: MXFP4 (E2M1, blocks of 32, E8M0 scales by the OCP spec's floor rule) for every
#: operand of every GEMM, rounded to nearest: the format with none of a recipe's care
#: (no Hadamard transform, no stochastic rounding, no 2-D weights), to fail visibly.
MXFP4_NAIVE = Recipe("mxfp4_naive", MXFP4, MXFP4, MXFP4, source="OCP MX v1.0 (no recipe)")


def _recipes() -> dict[str, Recipe]:
    out = {
        r.name: r
        for r in (
            FP8_CURRENT,
            FP8_CURRENT_E4M3,
            FP8_BLOCKWISE,
            FP8_BLOCKWISE_POW2,
            MXFP8,
            NVFP4_RECIPE,
        )  # fmt: skip
    }
    for r in (
        NVFP4_RECIPE.without_rht(),
        NVFP4_RECIPE.without_stochastic_rounding(),
        NVFP4_RECIPE.with_1d_weights(),
        MXFP4_NAIVE,
    ):
        out[r.name] = r
    return out


RECIPES: dict[str, Recipe] = _recipes()
RECIPE_NAMES: tuple[str, ...] = tuple(RECIPES)


def get_recipe(name: str | Recipe) -> Recipe:
    """A recipe by name (a :class:`Recipe` passes through).

    Example:
      >>> import fpsim
      >>> r = fpsim.nn.get_recipe("nvfp4")
      >>> r.weight.block_shape, r.grad_rounding, r.rht
      ((16, 16), 'stochastic', True)
    """
    if isinstance(name, Recipe):
        return name
    if not isinstance(name, str):
        raise TypeError(f"expected a recipe name or Recipe, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid: {', '.join(RECIPE_NAMES)}")
    return RECIPES[key]


# --------------------------------------------------------------------------------------
# the three GEMMs


class RecipeStats(NamedTuple):
    """What the recipe's quantization did to one layer call's six GEMM operands in one
    training step, each a :class:`fpsim.blocks.BlockSummary` (fraction of nonzero
    elements flushed to zero by their block's scale, fraction saturated at the
    block's max, how many were nonzero, histogram of the block-scale exponents).

    Field names are ``<GEMM>_<operand>``, for a layer ``y = x W`` (``x``: M tokens x
    K features, ``W``: K x N, ``g = dL/dy``: M x N):

    ===========  ======================================  ===========================
    field        operand                                 blocks run along
    ===========  ======================================  ===========================
    ``fprop_x``  ``x`` in the forward GEMM ``x W``       K (each token's features)
    ``fprop_w``  ``W`` in the forward GEMM               K (2-D formats: tiles)
    ``dgrad_g``  ``g`` in the input-gradient GEMM        N (each token's outputs)
    ``dgrad_w``  ``W`` in ``dx = g W^T``                 N (2-D: the same tiles)
    ``wgrad_x``  ``x`` in the weight-gradient GEMM       M (each feature's tokens)
    ``wgrad_g``  ``g`` in ``dW = x^T g``                 M
    ===========  ======================================  ===========================

    With the random Hadamard transform (NVFP4) the ``wgrad`` operands are counted
    after the transform, as they are quantized; with stochastic rounding (NVFP4's
    ``g``) the flushed fraction is what this step's random draw flushed. Per-tensor
    formats have one "block" (one scale): their histogram counts 1. The backward
    GEMMs' counts leave the backward pass as float32 (a cotangent), exact up to
    ``2**24`` elements or blocks per operand.

    Example (the fraction of each layer's output gradient that the weight-gradient
    GEMM flushed, in a training step's metrics)::

        {layer: float(s.wgrad_g.underflow) for layer, s in metrics["recipe"].items()}
    """

    fprop_x: BlockSummary
    fprop_w: BlockSummary
    dgrad_g: BlockSummary
    dgrad_w: BlockSummary
    wgrad_x: BlockSummary
    wgrad_g: BlockSummary


def _f32_summary(s: BlockSummary) -> BlockSummary:
    """Every field float32: what a cotangent can carry (exact below 2**24 counts)."""
    return BlockSummary(*(jnp.asarray(v, jnp.float32) for v in s))


def _typed_summary(s: BlockSummary) -> BlockSummary:
    """Counts back to int32 (see :func:`_f32_summary`)."""
    return BlockSummary(
        s.underflow, s.saturated, jnp.round(s.nonzero).astype(jnp.int32),
        jnp.round(s.exponent_counts).astype(jnp.int32),
    )  # fmt: skip


def zero_token() -> tuple[BlockSummary, ...]:
    """The zero-valued input of a recipe GEMM whose cotangent carries the backward
    pass's statistics out (``dgrad_g``, ``dgrad_w``, ``wgrad_x``, ``wgrad_g``)."""
    z = jnp.zeros((), jnp.float32)
    return tuple(
        BlockSummary(z, z, z, jnp.zeros(len(EXPONENTS), jnp.float32)) for _ in range(4)
    )


def recipe_stats(fwd, token_ct) -> RecipeStats:
    """:class:`RecipeStats` from the forward GEMM's two summaries and the token's
    cotangent (the backward GEMMs' four), counts as int32."""
    return RecipeStats(*(_typed_summary(s) for s in (*fwd, *token_ct)))


def _quantize(x, bfmt: BlockFormat, axis, recipe: Recipe, rounding: str, key,
              stats: bool = False):  # fmt: skip
    """``(x quantized, its BlockSummary as float32 or None)``. With a tensor-core
    ``accumulator`` the operand is a :class:`_Scaled` (elements and scales apart, as the
    tensor core reads them); otherwise the values it represents."""
    from fpsim.blocks import encode_blocks, quantize_blocks, quantize_with_summary

    mode = recipe.scale_mode if bfmt.scale.name == "e8m0" else None
    stochastic = rounding == "stochastic"
    if stochastic and key is None:
        raise ValueError(
            f"recipe {recipe.name!r} rounds gradients stochastically, so its backward "
            "pass needs a random key: pass key= (fpsim.nn.apply / value_and_grad; "
            "make_train_step draws one per step)"
        )
    kw = dict(axis=axis, scale_mode=mode, rounding=rounding,
              key=key if stochastic else None)  # fmt: skip
    summary = None
    if stats:
        q, summary = quantize_with_summary(x, bfmt, **kw)
        summary = _f32_summary(summary)
    if recipe.accumulator is not None:  # elements and scales, for the tensor core
        codes = encode_blocks(x, bfmt, axis=axis, scale_mode=mode)
        elements = decode(codes.elements, bfmt.element)
        return _Scaled(elements, codes.scales, bfmt.element, recipe.accumulator), summary
    if not stats:
        q = quantize_blocks(x, bfmt, **kw)
    return q, summary


def _weight_axis(bfmt: BlockFormat, axis: int):
    """A 2-D weight tile covers both axes (K, N); a 1-D block runs along ``axis``."""
    return (0, 1) if bfmt.block_shape is not None else axis


def _rht(x, recipe: Recipe):
    from fpsim.blocks import random_hadamard

    return random_hadamard(x, recipe.rht_seed, axis=0, block=16)


def fprop_operands(recipe: Recipe, x2, w2, stats: bool = False):
    """The forward GEMM's operands: ``x`` (M x K) and ``W`` (K x N) along K.

    Returns ``((xq, wq), (x summary, W summary))``, the summaries None unless
    ``stats``."""
    xq, sx = _quantize(x2, recipe.activation, 1, recipe, recipe.rounding, None, stats)
    wq, sw = _quantize(w2, recipe.weight, _weight_axis(recipe.weight, 0), recipe,
                       recipe.rounding, None, stats)  # fmt: skip
    return (xq, wq), (sx, sw)


def dgrad_operands(recipe: Recipe, g2, w2, key, stats: bool = False):
    """The input-gradient GEMM's operands: ``g`` (M x N) and ``W`` (K x N) along N."""
    gq, sg = _quantize(g2, recipe.grad, 1, recipe, recipe.grad_rounding, key, stats)
    wq, sw = _quantize(w2, recipe.weight, _weight_axis(recipe.weight, 1), recipe,
                       recipe.rounding, None, stats)  # fmt: skip
    return (gq, wq), (sg, sw)


def wgrad_operands(recipe: Recipe, x2, g2, key, stats: bool = False):
    """The weight-gradient GEMM's operands: ``x`` (M x K) and ``g`` (M x N) along M
    (the token axis), after the random Hadamard transform when the recipe has it."""
    if recipe.rht:
        x2, g2 = _rht(x2, recipe), _rht(g2, recipe)
    xq, sx = _quantize(x2, recipe.activation, 0, recipe, recipe.rounding, None, stats)
    gq, sg = _quantize(g2, recipe.grad, 0, recipe, recipe.grad_rounding, key, stats)
    return (xq, gq), (sx, sg)


_HI = lax.Precision.HIGHEST


def _mm(a, b, dims):
    if isinstance(a, _Scaled):  # the recipe's accumulator model
        return _scaled_mm(a, b, dims)
    return lax.dot_general(a, b, dims, precision=_HI, preferred_element_type=jnp.float32)


# (recipe, stats) are static. With stats, the forward GEMM's two summaries are a second
# output, and the backward GEMMs' four leave as the cotangent of ``token`` (zeros of
# the same structure): the trick of fpsim.nn's boundaries (see _boundary.py)
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _gemm(recipe: Recipe, stats: bool, x2, w2, key_data, token):
    return _gemm_fwd(recipe, stats, x2, w2, key_data, token)[0]


def _gemm_fwd(recipe, stats, x2, w2, key_data, token):
    (xq, wq), fwd = fprop_operands(recipe, x2, w2, stats)
    y = _mm(xq, wq, (((1,), (0,)), ((), ())))
    return (y, fwd if stats else None), (x2, w2, key_data)


def _keys(key_data):
    if key_data is None:
        return None, None
    key = jax.random.wrap_key_data(key_data)
    return derive(key, 1), derive(key, 2)


def _gemm_bwd(recipe, stats, res, cts):
    x2, w2, key_data = res
    g2 = cts[0].astype(jnp.float32)
    k_dgrad, k_wgrad = _keys(key_data)
    (gq, wq), sd = dgrad_operands(recipe, g2, w2, k_dgrad, stats)
    dx = _mm(gq, wq, (((1,), (1,)), ((), ())))
    (xq, gq), sw = wgrad_operands(recipe, x2, g2, k_wgrad, stats)
    dw = _mm(xq, gq, (((0,), (0,)), ((), ())))
    token_ct = (*sd, *sw) if stats else None
    return dx.astype(x2.dtype), dw.astype(w2.dtype), None, token_ct


_gemm.defvjp(_gemm_fwd, _gemm_bwd)


def _lengths(recipe: Recipe, m: int, k: int, n: int) -> list[tuple[str, str, int, int]]:
    """(GEMM, which axis, length, block) for every blocked axis that does not fit."""
    need = []

    def want(gemm, what, length, bfmt, dim=0):
        if bfmt.per_tensor:
            return
        block = bfmt.block_shape[dim] if bfmt.block_shape else bfmt.block_size
        if length % block:
            need.append((gemm, what, length, block))

    want("fprop", "K (input features) of the input", k, recipe.activation)
    want("fprop", "K of the weight", k, recipe.weight)
    if recipe.weight.block_shape:
        want("fprop", "N (output features) of the weight tiles", n, recipe.weight, 1)
    want("dgrad", "N (output features) of the gradient", n, recipe.grad)
    if not recipe.weight.block_shape:
        want("dgrad", "N of the weight", n, recipe.weight)
    want("wgrad", "M (tokens) of the input", m, recipe.activation)
    want("wgrad", "M (tokens) of the gradient", m, recipe.grad)
    if recipe.rht and m % 16:
        need.append(("wgrad", "M (tokens), for the 16-point Hadamard transform", m, 16))
    return need


def recipe_dot_general(
    recipe: Recipe | str,
    *,
    key: jax.Array | None = None,
    name: str = "dot_general",
    fallback: str = "error",
) -> Callable[..., jax.Array]:
    """``lax.dot_general`` whose forward, input-gradient and weight-gradient GEMMs each
    quantize their operands along the dimension they contract, as ``recipe`` says.

    The product must be a linear layer's: contracting dimensions and no batch
    dimensions (``x`` of any rank contracting its last axis with a weight's first, as
    ``nn.Dense`` calls it, or several axes, as ``nn.DenseGeneral(axis=(-2, -1))``).
    The other axes of ``x`` are the tokens ``M``, the contracted ones ``K``, the
    weight's other axes the outputs ``N``, each flattened (as a linear layer is). The
    GEMMs run in float32 on the quantized values (``precision=HIGHEST``); the output
    and the gradients are float32 (in the caller's dtypes).

    Args:
      recipe: a :class:`Recipe` or a name from :data:`RECIPES`.
      key: random key (typed, raw or an int seed) for stochastic rounding of the
        gradients; required when the recipe rounds stochastically. The input-gradient
        GEMM draws from ``fpsim._keys.derive(key, 1)``, the weight-gradient GEMM from
        ``derive(key, 2)``.
      name: the layer's name, for error messages.
      fallback: ``"error"`` (default): a blocked axis whose length is not a multiple of
        its block raises ``ValueError`` naming the layer, GEMM, axis and size;
        ``"float32"``: such a layer is computed by plain ``lax.dot_general``.

    Example:
      >>> import fpsim, jax.numpy as jnp, flax.linen as nn
      >>> dense = nn.Dense(32, dot_general=fpsim.nn.recipe_dot_general("mxfp8"))
      >>> x = jnp.ones((32, 64))
      >>> dense.apply(dense.init(jax.random.key(0), x), x).shape
      (32, 32)
    """
    recipe = get_recipe(recipe)
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; valid: {', '.join(FALLBACKS)}")
    if key is not None:
        key = canonical_key(key, what=f"recipe {recipe.name!r}")
    elif recipe.needs_key:
        raise ValueError(
            f"recipe {recipe.name!r} rounds gradients stochastically and needs a key: "
            f"recipe_dot_general({recipe.name!r}, key=...), or use "
            f"{recipe.name!r} without_stochastic_rounding()"
        )
    return layer_dot_general(recipe, key=key, name=name, fallback=fallback)


_HINT = "pad it, keep this layer out of the recipe, or pass fallback='float32'"


def layer_dot_general(recipe: Recipe, *, key=None, name="dot_general",
                      fallback="error", hint=_HINT, token=None, sink=None):  # fmt: skip
    """:func:`recipe_dot_general` without its checks (a typed key or None), for one
    layer call. With ``token`` (:func:`zero_token`, differentiated) the GEMMs also
    count what they lost: the forward GEMM's two :class:`BlockSummary` go into
    ``sink["fprop"]`` (a dict the caller reads after the call), the backward GEMMs'
    four come out as the token's cotangent. A key of None makes a stochastic recipe's
    backward pass raise."""
    calls = [0]

    def dot_general(lhs, rhs, dimension_numbers, precision=None,
                    preferred_element_type=None, **kwargs):  # fmt: skip
        (lc, rc), (lb, rb) = dimension_numbers
        lc, rc = tuple(lc), tuple(rc)
        if lb or rb or len(lc) != len(rc) or not lc:
            raise ValueError(
                f"recipe {recipe.name!r} at {name!r}: only a linear layer's product is "
                "supported (contracting dimensions, no batch dimensions); got "
                f"dimension_numbers {dimension_numbers}"
            )
        lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
        out_dtype = preferred_element_type or jnp.result_type(lhs, rhs)
        lca = tuple(a % lhs.ndim for a in lc)
        rca = tuple(a % rhs.ndim for a in rc)
        # x: (tokens..., contracted...), w: (contracted..., outputs...), the contracted
        # axes flattened in the same order on both sides (K), as a linear layer is
        x = jnp.moveaxis(lhs, lca, tuple(range(-len(lca), 0)))
        w = jnp.moveaxis(rhs, rca, tuple(range(len(rca))))
        m_shape, n_shape = x.shape[: -len(lca)], w.shape[len(rca) :]
        m, n = math.prod(m_shape), math.prod(n_shape)
        k = math.prod(x.shape[len(m_shape) :])
        bad = _lengths(recipe, m, k, n)
        if bad:
            if fallback == "float32":
                return lax.dot_general(
                    lhs, rhs, dimension_numbers, precision=precision,
                    preferred_element_type=preferred_element_type, **kwargs,
                )  # fmt: skip
            gemm, what, length, block = bad[0]
            raise ValueError(
                f"recipe {recipe.name!r}: layer {name!r} ({m} tokens x {k} -> {n}): the "
                f"{gemm} GEMM blocks {what}, length {length}, which is not a multiple of "
                f"{block}; {hint}"
            )
        calls[0] += 1
        if token is not None and calls[0] > 1:
            raise ValueError(
                f"recipe statistics of layer {name!r}: its product ran twice in one call"
            )
        kd = None if key is None else jax.random.key_data(key)
        x2 = x.reshape(m, k).astype(jnp.float32)
        w2 = w.reshape(k, n).astype(jnp.float32)
        y, fwd = _gemm(recipe, token is not None, x2, w2, kd, token)
        if sink is not None and fwd is not None:
            sink["fprop"] = fwd
        return y.reshape(*m_shape, *n_shape).astype(out_dtype)

    return dot_general


# --------------------------------------------------------------------------------------
# an unmodified Linen model


#: Class names of the layers a recipe applies to: Linen's ``Dense`` and
#: ``DenseGeneral``, NNX's ``Linear`` and ``LinearGeneral``.
RECIPE_LAYERS: tuple[str, ...] = ("Dense", "DenseGeneral", "Linear", "LinearGeneral")


def takes_recipe(module) -> bool:
    """Whether ``module`` is a layer a recipe applies to: a Linen ``Dense`` or
    ``DenseGeneral``, or an NNX ``Linear`` or ``LinearGeneral``, that did not set its
    own ``dot_general`` (NNX's ``Linear`` defaults to ``lax.dot_general``)."""
    return (
        type(module).__name__ in RECIPE_LAYERS
        and getattr(module, "dot_general", None) in (None, lax.dot_general)
        and getattr(module, "dot_general_cls", None) is None
    )


def call_with_dot_general(module, call, dot_general):
    """``call()`` (the layer's ``__call__``) with ``module``'s product replaced by
    ``dot_general``: the ``dot_general`` field ``__call__`` reads (a Linen module is a
    frozen dataclass, an NNX one a plain object) is set for this one call and
    restored after it."""
    old = module.dot_general
    object.__setattr__(module, "dot_general", dot_general)
    try:
        return call()
    finally:
        object.__setattr__(module, "dot_general", old)


def call_with_recipe(module, call, recipe, *, key=None, name="", fallback="error"):
    """``call()`` with ``module``'s products under ``recipe`` (:func:`recipe_scope`)."""
    dg = recipe_dot_general(recipe, key=key, name=name, fallback=fallback)
    return call_with_dot_general(module, call, dg)


@contextlib.contextmanager
def recipe_scope(
    recipe: Recipe | str,
    *,
    key: jax.Array | None = None,
    skip: tuple[str, ...] = (),
    fallback: str = "error",
) -> Iterator[Recipe]:
    """Run every Linen ``Dense``/``DenseGeneral`` called inside under ``recipe``.

    Each layer gets :func:`recipe_dot_general` with its own key (``derive(key, i)``
    for the ``i``-th layer call, from 1) unless its path (``"block0/mlp_in"``) matches
    a pattern of ``skip`` (fnmatch syntax, e.g. ``("head",)``: the layers the recipe
    keeps in higher precision) or the layer set its own ``dot_general``.

    Example:
      >>> import fpsim, jax, jax.numpy as jnp, flax.linen as nn
      >>> model = nn.Dense(16)
      >>> x = jnp.ones((16, 32))
      >>> params = model.init(jax.random.key(0), x)
      >>> with fpsim.nn.recipe_scope("nvfp4", key=0):
      ...     y = model.apply(params, x)
      >>> y.shape
      (16, 16)
    """
    import flax.linen as nn

    recipe = get_recipe(recipe)
    base = None if key is None else canonical_key(key, what=f"recipe {recipe.name!r}")
    if base is None and recipe.needs_key:
        raise ValueError(f"recipe {recipe.name!r} rounds stochastically: pass key=...")
    count = [0]

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not takes_recipe(module):
            return next_fun(*args, **kwargs)
        path = "/".join(module.path) if module.path else type(module).__name__
        if any(fnmatch.fnmatchcase(path, p) for p in skip):
            return next_fun(*args, **kwargs)
        count[0] += 1
        k = None if base is None else derive(base, count[0])
        return call_with_recipe(
            module, lambda: next_fun(*args, **kwargs), recipe, key=k, name=path,
            fallback=fallback,
        )  # fmt: skip

    with nn.intercept_methods(interceptor):
        yield recipe


def batch_key(seed, x) -> jax.Array:
    """A key that changes with the batch: ``derive(key(seed), checksum of x's bits)``."""
    h = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32).reshape(-1)
    h = h + jnp.arange(h.size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)  # position
    for shift, mult in ((16, 0x7FEB352D), (15, 0x846CA68B)):  # a 32-bit integer hash
        h = (h ^ (h >> shift)) * jnp.uint32(mult)
    h = h ^ (h >> 16)
    return derive(canonical_key(seed, what="with_recipe"), jnp.sum(h))


@dataclasses.dataclass(frozen=True)
class WithRecipe:
    """A Linen model whose ``init`` and ``apply`` run under a recipe (see
    :func:`with_recipe`); anything that takes a Linen model (``make_train_step``,
    :func:`fpsim.nn.apply`) takes it."""

    model: object
    recipe: Recipe
    skip: tuple[str, ...] = ()
    seed: int = 0
    fallback: str = "error"

    def _scope(self, x):
        key = batch_key(self.seed, x) if self.recipe.needs_key else None
        return recipe_scope(self.recipe, key=key, skip=self.skip, fallback=self.fallback)

    def init(self, rngs, x, *args, **kwargs):
        with self._scope(x):
            return self.model.init(rngs, x, *args, **kwargs)

    def apply(self, variables, x, *args, **kwargs):
        with self._scope(x):
            return self.model.apply(variables, x, *args, **kwargs)


def with_recipe(
    model, recipe: Recipe | str, *, skip: tuple[str, ...] = (), seed: int = 0,
    fallback: str = "error",
) -> WithRecipe:  # fmt: skip
    """An unmodified Linen ``model`` whose ``Dense``/``DenseGeneral`` layers run under
    ``recipe`` whenever it is initialised or applied (:func:`recipe_scope`).

    A training step passes a Linen model no random key, so the stochastic rounding of
    gradients draws from a key derived from ``seed`` and a checksum of the input batch
    (fresh random bits for every new batch; the same batch gives the same bits).

    Example:
      >>> import fpsim, jax, jax.numpy as jnp, optax, flax.linen as nn
      >>> model = fpsim.nn.with_recipe(nn.Dense(32), "mxfp8")
      >>> ts = fpsim.nn.make_train_step(model, "float32", optax.sgd(0.1))
      >>> x, y = jnp.ones((32, 32)), jnp.zeros(32, jnp.int32)
      >>> state, metrics = ts.step(ts.init(jax.random.key(0), x), (x, y))
      >>> bool(metrics["finite"])
      True
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; valid: {', '.join(FALLBACKS)}")
    return WithRecipe(model, get_recipe(recipe), tuple(skip), seed, fallback)
