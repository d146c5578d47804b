"""The language-model demo: a small transformer where the number format decides.

``fpsim demo lm`` trains the same character-level transformer on a slice of Shakespeare
once per recipe in :data:`RUNS`, and prints how each one did against float32.

The model (:class:`CharTransformer`) is plain Flax Linen: token and learned position
embeddings, ``depth`` pre-LayerNorm blocks (``nn.MultiHeadDotProductAttention`` with a
causal mask, then a GELU MLP of width ``4 * width``), a final LayerNorm and an untied
``Dense`` head. fpsim rounds at every layer's boundary (``Embed``, ``DenseGeneral``,
``Dense``, ``LayerNorm``); the two batched products inside attention (``q k^T`` and
``softmax v``) are not layers and stay in float32. Each run goes through
:func:`fpsim.nn.make_train_step` with its policy and Adam.

The text: ``data/tinyshakespeare.txt`` is the first 299,868 characters (62 distinct) of
the "tiny Shakespeare" file of Andrej Karpathy's char-rnn repository
(``data/tinyshakespeare/input.txt``, commit 6f9487a), cut at a blank line: extracts of
Shakespeare's plays, which are in the public domain. The first 90% trains, the last
10% is held out. Nothing is downloaded.

Why the formats differ here (the lesson of each run)
----------------------------------------------------
The loss is the mean over the ``N = batch * context`` predicted characters, so the
gradient of each logit is ``(p - onehot) / N``: with ``N = 1024`` a character the model
gives probability ``p = 1e-3`` gets ``1e-6``, below FP16's smallest normal (``2**-14``,
6.1e-5) and not far above its smallest subnormal (``2**-24``, 6.0e-8). As the model
learns, it rules characters out (``p < 2**-14``) and their gradients flush to zero.
Below the head, the gradients of the attention projections (query, key, value) come
through the softmax's Jacobian and are smaller still; the residual stream's (the
gradients of ``attn/out`` and ``mlp_out``) are not. FP8's E5M2 (smallest subnormal
``2**-16`` = 1.5e-5) loses far more without a scale.

Today's recipes (the last five runs) quantize inside the three GEMMs of every
``Dense``/``DenseGeneral`` but the head (forward, input gradient, weight gradient; each
operand along the axis that GEMM contracts). Each is a policy (:func:`run_policy`):
``get_policy("bf16_mixed").replace(name="nvfp4", recipe="nvfp4").with_overrides(("head",
"bf16_mixed"))``. Around the GEMMs the network is the bf16 run's (BF16 layer inputs,
outputs and activation gradients, float32 master weights, norms and embeddings in
float32), as Transformer Engine runs its recipes inside BF16 autocast, so each recipe
row reads against bf16. The head stays out (62 outputs, a multiple of no block; the
recipes keep the last layers in higher precision too). The sizes fit every recipe's
blocks: width 128 (DeepSeek-V3's 128x128 weight tiles), MLP 512, ``batch * context =
1024`` tokens per step and 4096 held out (1x128 and 1x16 blocks along the tokens of the
weight-gradient GEMM). A recipe run's step records what its GEMMs' quantization lost
(``make_train_step(..., watch=False, recipe_stats=True)``: per layer, the six operands'
flushed and clipped shares and block-scale exponents); a format run's step records its
element casts (``watch=True``). The three NVFP4 ablations (:data:`ABLATIONS`: no
Hadamard transform, no stochastic rounding, 1x16 weight blocks) are not in the default
list: ``--runs 'nvfp4*'`` trains them.

Measured (``fpsim demo lm``, seed 0: two blocks, 200 steps of 16 x 64 characters;
"loss" the mean training loss over the last 20 steps, the same batches for every run;
"held out" the loss on held-out text, "ppl" its exp; "lost" a share of the *nonzero*
gradient values flushed to zero, all layers pooled, mean over the last quarter of the
steps: for a format run the activation gradients at the backward casts, for a recipe
run the output gradient ``g`` as the input- and weight-gradient GEMMs quantize it
(``dgrad_g``, ``wgrad_g``: flushed by its block's scale); "sat" the share that
saturated: layer inputs and activation gradients at the casts, or the six GEMM
operands clipped at their block's max; the character frequencies alone give 3.313
nats, ppl 27.5):

=======================  =====  ========  =====  =======  =======  =======================
run                      loss   held out  ppl    lost     sat      what happened
=======================  =====  ========  =====  =======  =======  =======================
float32                  2.446  2.476     11.89  0        0        the reference
bf16                     2.446  2.490     12.07  0        0        float32's range
fp16 (no loss scaling)   2.448  2.484     11.99  4.16%    0        lost grows as
                                                                   predictions sharpen
fp16 + loss scaling      2.448  2.482     11.96  0.01%    0        2**16 lifts them
fp16 adaptive (zhao)     2.449  2.484     11.99  1.77%    0        per-layer scales save
                                                                   part
fp8 delayed scaling      2.454  2.501     12.20  4.3e-05  2.6e-07  amax-history scales
fp8 naive                3.181  3.271     26.33  70.65%   0        E5M2 flushes; stalls
fp8_current              2.449  2.494     12.11  0.02%    2.0e-07  as bf16
fp8_blockwise            2.444  2.480     11.94  0.19%    0.02%    as bf16
mxfp8                    2.455  2.498     12.16  0.11%    0        as bf16
nvfp4                    2.460  2.514     12.35  11.26%   3.24%    +0.014 over bf16
mxfp4_naive              2.464  2.524     12.48  27.87%   2.43%    +0.018 over bf16
=======================  =====  ========  =====  =======  =======  =======================

So: the classic lesson holds at 200 steps (pure FP16 loses 4% of its gradients without
loss scaling, 0.01% with it; FP8 without scales stalls at step ~20 near the loss of a
context-free model). Zhao et al.'s rule chooses the smallest scale that keeps the
*product* ``g W^T`` from underflowing, not ``g`` itself: it cuts pure FP16's loss to
1.77% without matching one global loss scale. The three 8-bit recipes train like
bf16 (training losses within 0.009 of it) and flush 0.02-0.19% of their gradient
elements. The FP4 recipes pay (+0.014 and +0.018 nats on the training loss, up to
0.09 over the first 50 steps: the loss figure's last panel) and their GEMMs flush a
real share of the gradient: 11% for NVFP4 (16-element blocks, E4M3 scales, stochastic
rounding), 28% for naive MXFP4 (32-element blocks, power-of-two scales), most in
``mlp_in`` (a 512-wide output gradient) and, for MXFP4, in the attention projections
(the per-layer heat map); they clip 2-3% of the elements (their block maxima saturate
E2M1's 6). The NVFP4 ablations (``--runs 'nvfp4*'``, measured before this table
through :func:`fpsim.nn.with_recipe`) each ended within 0.002 of nvfp4's training
loss: each ingredient buys something a 200-step run of a 2-block model does not need
(stochastic rounding makes the gradient unbiased at the price of more error per step;
the Hadamard transform spreads outliers this model does not develop; 16x16 weight
tiles keep fprop and dgrad on the same quantized weight). With ``--fast`` (one block,
80 steps, five runs: float32, fp16 without loss scaling, fp8 naive, nvfp4,
mxfp4_naive) fp16 loses 0.95%, fp8 naive 49% (2.674 against float32's 2.545), nvfp4
and mxfp4_naive end within 0.009 of float32 and lose 10.6% and 23.4% of their
gradients in the GEMMs.

Time, on the project's 2-core machine: the default run 5 min 3 s of wall time, 420 s of
CPU, with the machine otherwise idle; ``--fast`` 101 s of CPU (312 s wall while the
machine was shared, load 8-10). Per run, tracing and compiling its
programs costs 14-61 s of that wall time (NVFP4's bit-exact two-level scaling makes the
largest); the 200 steps then take 28-69 s of wall time. Recording the recipe GEMMs'
statistics adds about one more quantization of every operand per step.

Adding a run is one entry of :data:`RUNS` (a :class:`RunSpec`): a name, a policy
preset of :mod:`fpsim.nn` (or a :class:`fpsim.nn.Policy`), whether to use dynamic loss
scaling, and the one line that says what it shows.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

CORPUS = "tinyshakespeare.txt"


# --------------------------------------------------------------------------------------
# configuration: the runs and the sizes, as data
# --------------------------------------------------------------------------------------
class RunSpec(NamedTuple):
    """One training run of the demo.

    Attributes:
      name: the row label of the table and the figures.
      policy: a :mod:`fpsim.nn` preset name, a :class:`fpsim.nn.Policy`, or a function
        of no arguments that builds one when training starts (so that :data:`RUNS`
        stays importable without Flax).
      loss_scaling: wrap Adam in :func:`fpsim.optim.dynamic_loss_scaling` (PyTorch
        GradScaler's rules, growth every ``LOSS_SCALE_GROWTH`` good steps).
      lesson: what the run shows, in one line.
      recipe: a GEMM-level training recipe (a :data:`fpsim.nn.RECIPES` name), or None.
        The run's policy is then ``policy`` with ``recipe`` set and the layers of
        :data:`RECIPE_SKIP` overridden back to ``policy`` (:func:`run_policy`): every
        ``Dense``/``DenseGeneral`` but the head quantizes the operands of its three
        GEMMs as the recipe says, and the step records what that quantization lost.
    """

    name: str
    policy: Any
    loss_scaling: bool = False
    lesson: str = ""
    recipe: Any = None


def zhao_policy():
    """``fp16_pure`` with Zhao et al.'s layer-wise adaptive loss scaling (built when
    training starts: :data:`RUNS` holds no Flax objects)."""
    import fpsim.nn

    return fpsim.nn.get_policy("fp16_pure").replace(
        name="fp16_adaptive_zhao", adaptive=fpsim.nn.AdaptiveLossScaling(rule="zhao")
    )


def _recipe_run(name: str, lesson: str) -> RunSpec:
    # around the GEMMs the network runs in BF16 (bf16_mixed), as Transformer Engine's
    return RunSpec(name, "bf16_mixed", recipe=name, lesson=lesson)


#: The runs, in table order. Add a recipe by adding an entry.
RUNS: tuple[RunSpec, ...] = (
    RunSpec("float32", "float32", lesson="the reference"),
    RunSpec("bf16", "bf16_mixed", lesson="float32's range, 8 bits: trains like float32"),
    RunSpec(
        "fp16 (no loss scaling)",
        "fp16_pure",
        lesson="gradients below 2^-24 flush to zero, most in the lowest layers",
    ),
    RunSpec(
        "fp16 + loss scaling",
        "fp16_pure",
        loss_scaling=True,
        lesson="the same casts; the loss times 2^k lifts the gradients into range",
    ),
    RunSpec(
        "fp16 adaptive (zhao)",
        zhao_policy,
        lesson="per-layer scales from gradient and weight statistics (Zhao et al. 2019)",
    ),
    RunSpec(
        "fp8 delayed scaling",
        "fp8_hybrid",
        lesson="E4M3/E5M2 with per-tensor scales from an amax history (TE, 2022)",
    ),
    RunSpec(
        "fp8 naive",
        "fp8_naive",
        lesson="the same casts without scales: E5M2 flushes the gradients",
    ),
    # today's recipes: each GEMM quantizes its two operands (fpsim.nn.RECIPES)
    _recipe_run("fp8_current", "E4M3/E5M2, one scale per tensor from its amax now"),
    _recipe_run(
        "fp8_blockwise", "E4M3 in 1x128 tiles, weights in 128x128 blocks (DeepSeek-V3)"
    ),
    _recipe_run("mxfp8", "E4M3 in blocks of 32 with power-of-two scales (OCP MX)"),
    _recipe_run("nvfp4", "E2M1 in 1x16 blocks, 16x16 weight tiles, SR gradients, Hadamard"),
    _recipe_run(
        "mxfp4_naive", "E2M1 in blocks of 32, power-of-two scales, none of NVFP4's care"
    ),
)

#: NVFP4 with one ingredient off: not in the default list (each costs a run as long
#: as nvfp4's, and at this size none differs measurably from it); ``--runs 'nvfp4*'``.
ABLATIONS: tuple[RunSpec, ...] = (
    _recipe_run(
        "nvfp4_no_rht", "NVFP4 without the random Hadamard transform of the wgrad GEMM"
    ),
    _recipe_run(
        "nvfp4_no_sr", "NVFP4 with gradients rounded to nearest: a biased gradient"
    ),
    _recipe_run(
        "nvfp4_1d_weights",
        "NVFP4 with 1x16 weight blocks: fprop and dgrad see different weights",
    ),
)

#: Every run ``--runs`` can name.
ALL_RUNS: tuple[RunSpec, ...] = RUNS + ABLATIONS

LOSS_SCALE_GROWTH = 100
#: Layers a recipe leaves alone: the head (62 outputs, not a multiple of any block; the
#: recipes keep the last layer in higher precision too).
RECIPE_SKIP = ("head",)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Sizes of the model and of the training (frozen: a cache key).

    Attributes:
      depth: transformer blocks.
      width: model width (the MLP is ``4 * width`` wide).
      heads: attention heads.
      context: characters per training window.
      batch: windows per step (``batch * context`` predictions per step).
      steps: training steps per run.
      learning_rate: Adam's step size.
      eval_windows: held-out windows the final loss is measured on.
    """

    depth: int = 2
    width: int = 128
    heads: int = 4
    context: int = 64
    batch: int = 16
    steps: int = 200
    learning_rate: float = 3e-3
    eval_windows: int = 64

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not v > 0:
                raise ValueError(f"LMConfig.{f.name} must be positive, got {v!r}")
        if self.width % self.heads:
            raise ValueError(
                f"width ({self.width}) must be a multiple of heads ({self.heads})"
            )


#: ``fpsim demo lm``; ``--fast`` (one block instead of two, fewer steps).
DEFAULT = LMConfig()
FAST = dataclasses.replace(DEFAULT, depth=1, steps=80)


#: What ``--fast`` runs unless ``--runs`` says otherwise: the classic formats' lesson
#: in three runs and the 4-bit recipes' in two.
FAST_RUNS_NAMES = ("float32", "fp16 (no loss scaling)", "fp8 naive", "nvfp4",
                   "mxfp4_naive")  # fmt: skip


def select_runs(patterns: str | tuple[str, ...], runs: tuple[RunSpec, ...] = ALL_RUNS):
    """The runs whose names match ``patterns``, in table order.

    ``patterns`` is a comma-separated string (``"float32,fp16*,nvfp4*"``) or a tuple
    of fnmatch patterns, matched case-insensitively against :attr:`RunSpec.name`.
    A pattern that matches no run raises ``ValueError`` naming the valid names.
    """
    if isinstance(patterns, str):
        patterns = tuple(p.strip() for p in patterns.split(","))
    patterns = tuple(p for p in patterns if p)
    names = ", ".join(repr(r.name) for r in runs)
    if not patterns:
        raise ValueError(f"no run named; valid runs: {names}")

    def match(r: RunSpec, p: str) -> bool:
        return fnmatch.fnmatchcase(r.name.lower(), p.lower())

    for p in patterns:
        if not any(match(r, p) for r in runs):
            raise ValueError(f"no run matches {p!r}; valid runs: {names}")
    return tuple(r for r in runs if any(match(r, p) for p in patterns))


FAST_RUNS: tuple[RunSpec, ...] = select_runs(FAST_RUNS_NAMES)


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
@functools.cache
def load_text() -> str:
    """The committed corpus (a slice of tiny Shakespeare, public domain)."""
    return (resources.files("fpsim.showcase") / "data" / CORPUS).read_text("utf-8")


class Corpus(NamedTuple):
    """The text as integer codes: a vocabulary, a training part and a held-out part."""

    chars: str  # the vocabulary, sorted; code i is chars[i]
    train: np.ndarray  # int32 codes
    held_out: np.ndarray

    @property
    def vocab(self) -> int:
        return len(self.chars)


@functools.cache
def corpus(held_out: float = 0.1) -> Corpus:
    """The text encoded, split into the first ``1 - held_out`` and the rest."""
    text = load_text()
    chars = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(chars)}
    codes = np.fromiter((lookup[c] for c in text), np.int32, len(text))
    cut = int(len(codes) * (1 - held_out))
    return Corpus(chars, codes[:cut], codes[cut:])


def unigram_entropy(codes: np.ndarray) -> float:
    """Entropy of the character frequencies in nats: the loss of the best model that
    ignores context (a model must go below it to have learned anything from context)."""
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def windows(codes: np.ndarray, starts: np.ndarray, context: int):
    """Inputs and next-character targets of the windows at ``starts``, flattened.

    Returns ``(x, y)``, int32 ``[len(starts) * context]`` each: ``y[i]`` is the
    character after ``x[i]``. Flat, so that ``make_train_step`` sees one label per row
    of its input (the model reshapes to ``[windows, context]`` itself).
    """
    idx = starts[:, None] + np.arange(context + 1)
    w = codes[idx]
    return w[:, :-1].reshape(-1), w[:, 1:].reshape(-1)


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------
def make_model(vocab: int, config: LMConfig):
    """A :class:`CharTransformer` for ``vocab`` characters (Flax Linen, unmodified)."""
    import flax.linen as nn
    import jax.numpy as jnp

    class Block(nn.Module):
        """Pre-LayerNorm block: ``h + attn(ln(h))``, then ``h + mlp(ln(h))``."""

        heads: int

        @nn.compact
        def __call__(self, h, mask):
            a = nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(
                nn.LayerNorm(name="ln1")(h), mask=mask
            )
            h = h + a
            m = nn.Dense(4 * h.shape[-1], name="mlp_in")(nn.LayerNorm(name="ln2")(h))
            return h + nn.Dense(h.shape[-1], name="mlp_out")(nn.gelu(m))

    class CharTransformer(nn.Module):
        """Flat tokens ``[windows * context]`` -> logits ``[windows * context, vocab]``."""

        vocab: int
        context: int
        width: int
        depth: int
        heads: int

        @nn.compact
        def __call__(self, tokens):
            x = tokens.reshape(-1, self.context)
            positions = jnp.arange(self.context)
            h = nn.Embed(self.vocab, self.width, name="embed")(x)
            h = h + nn.Embed(self.context, self.width, name="pos")(positions)
            mask = nn.make_causal_mask(x)
            for i in range(self.depth):
                h = Block(self.heads, name=f"block{i}")(h, mask)
            logits = nn.Dense(self.vocab, name="head")(nn.LayerNorm(name="ln_f")(h))
            return logits.reshape(-1, self.vocab)

    return CharTransformer(vocab, config.context, config.width, config.depth, config.heads)


def layer_order(names) -> list[str]:
    """Layer keys in forward order: embeddings, blocks (attention, MLP), head."""
    within = ("ln1", "attn/query", "attn/key", "attn/value", "attn/out", "ln2",
              "mlp_in", "mlp_out")  # fmt: skip

    def rank(name: str):
        if name in ("embed", "pos"):
            return (0, ("embed", "pos").index(name), 0)
        if name.startswith("block"):
            block, _, rest = name.partition("/")
            i = within.index(rest) if rest in within else len(within)
            return (1, int(block[5:]) if block[5:].isdigit() else 0, i)
        return (2, ("ln_f", "head").index(name) if name in ("ln_f", "head") else 2, 0)

    return sorted(names, key=rank)


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------
class RunResult(NamedTuple):
    """One training run, recorded step by step (numpy arrays over steps).

    ``flushed`` and ``saturated`` are per layer (``{layer: float[steps]}``): for a
    format run from the element casts' statistics, for a recipe run from its GEMMs'
    quantization (see :func:`step_summary`). ``scale_log2`` holds the log2 of each
    delayed or adaptive per-tensor scale (``{"<layer> grad" | "<layer> input":
    float[steps]}``, empty for unscaled runs); ``block_scales`` a recipe's histogram of
    scale exponents, all layers and steps (``{"activations" | "weights" | "gradients":
    int64[255]}`` over :data:`fpsim.blocks.EXPONENTS`, empty for a format run).
    """

    name: str
    loss: np.ndarray
    loss_scale: np.ndarray
    finite: np.ndarray
    grads_lost: np.ndarray  # fraction of nonzero gradient values flushed (see table)
    saturated_all: np.ndarray  # fraction of nonzero values that overflowed / clipped
    flushed: dict[str, np.ndarray]
    saturated: dict[str, np.ndarray]
    scale_log2: dict[str, np.ndarray]
    held_out_loss: float
    seconds: float
    compile_seconds: float
    recipe: str | None = None  # the GEMM recipe's name, None for a policy-only run
    block_scales: dict[str, np.ndarray] = {}


def _overflow_and_nonzero(st):
    c = st.counts
    return c.overflow, c.underflow + c.subnormal + c.normal + c.overflow


#: A recipe's six GEMM operands by what they hold (the scale histogram's groups); the
#: gradients are the output gradient ``g`` as the input- and weight-gradient GEMMs
#: quantize it (along the outputs and along the tokens).
OPERANDS = {
    "activations": ("fprop_x", "wgrad_x"),
    "weights": ("fprop_w", "dgrad_w"),
    "gradients": ("dgrad_g", "wgrad_g"),
}


def _pooled(summaries, field: str):
    """Of the summaries' nonzero elements together, the fraction ``field`` counts."""
    import jax.numpy as jnp

    n = sum(s.nonzero.astype(jnp.float32) for s in summaries)
    hit = sum(getattr(s, field) * s.nonzero.astype(jnp.float32) for s in summaries)
    return hit, n


def _recipe_summary(recipe_stats) -> dict:
    """Per layer and pooled: gradient elements flushed (``dgrad_g``, ``wgrad_g``),
    elements of all six operands clipped at their block's max, scale histograms."""
    import jax.numpy as jnp

    flushed, saturated = {}, {}
    lost = jnp.zeros(2, jnp.float32)  # (flushed, nonzero), all layers
    clipped = jnp.zeros(2, jnp.float32)
    hist = {k: jnp.zeros(255, jnp.int32) for k in OPERANDS}
    for layer, rs in recipe_stats.items():
        grads = [getattr(rs, f) for f in OPERANDS["gradients"]]
        every = [getattr(rs, f) for fs in OPERANDS.values() for f in fs]
        hit, n = _pooled(grads, "underflow")
        flushed[layer] = hit / jnp.maximum(n, 1)
        lost = lost + jnp.stack([hit, n])
        hit, n = _pooled(every, "saturated")
        saturated[layer] = hit / jnp.maximum(n, 1)
        clipped = clipped + jnp.stack([hit, n])
        for kind, fields in OPERANDS.items():
            for f in fields:
                hist[kind] = hist[kind] + getattr(rs, f).exponent_counts
    return {
        "grad_underflow": lost[0] / jnp.maximum(lost[1], 1),
        "flushed": flushed,
        "saturated": saturated,
        "saturated_all": clipped[0] / jnp.maximum(clipped[1], 1),
        "scale_log2": {},
        "block_scales": hist,
    }


def step_summary(metrics) -> dict:
    """The few numbers per step the demo keeps (computed inside jit, so the per-layer
    histograms never leave the device). With ``metrics["recipe"]`` (a recipe run) the
    statistics are the recipe GEMMs' (:func:`_recipe_summary`), else the element
    casts' (``metrics["layers"]``)."""
    import jax.numpy as jnp

    from fpsim.nn._stats import nonzero_fraction_lost

    out = {k: metrics[k] for k in ("loss", "loss_scale", "finite", "grad_underflow")}
    if "recipe" in metrics:
        return {**out, **_recipe_summary(metrics["recipe"])}
    flushed, saturated, scales = {}, {}, {}
    over_all = jnp.zeros((), jnp.int32)
    nonzero_all = jnp.zeros((), jnp.int32)
    for layer, st in metrics["layers"].items():
        over = jnp.zeros((), jnp.int32)
        nonzero = jnp.zeros((), jnp.int32)
        for what, ts in (("input", st.inputs), ("grad", st.grads)):
            if ts is None:
                continue
            o, n = _overflow_and_nonzero(ts)
            over, nonzero = over + o, nonzero + n
            scales[f"{layer} {what}"] = jnp.log2(ts.scale)
        if st.grads is not None:
            flushed[layer] = nonzero_fraction_lost(st.grads.counts)
        saturated[layer] = over / jnp.maximum(nonzero, 1)
        over_all, nonzero_all = over_all + over, nonzero_all + nonzero
    out["flushed"] = flushed
    out["saturated"] = saturated
    out["saturated_all"] = over_all / jnp.maximum(nonzero_all, 1)
    out["scale_log2"] = scales
    out["block_scales"] = {}
    return out


def run_policy(spec: RunSpec):
    """The :class:`fpsim.nn.Policy` a run trains under: ``spec.policy`` (built, if a
    function), with ``spec.recipe`` set and :data:`RECIPE_SKIP` overridden back to the
    policy without it (e.g. ``get_policy("bf16_mixed").replace(name="nvfp4",
    recipe="nvfp4").with_overrides(("head", "bf16_mixed"))``)."""
    import fpsim.nn

    base = spec.policy() if callable(spec.policy) else spec.policy
    base = fpsim.nn.get_policy(base)
    if spec.recipe is None:
        return base
    recipe = base.replace(name=spec.name, recipe=spec.recipe)
    return recipe.with_overrides(*((layer, base) for layer in RECIPE_SKIP))


def _optimizer(spec: RunSpec, config: LMConfig):
    import optax

    import fpsim.optim

    adam = optax.adam(config.learning_rate)
    if not spec.loss_scaling:
        return adam, None
    wrapped = fpsim.optim.dynamic_loss_scaling(adam, growth_interval=LOSS_SCALE_GROWTH)
    return wrapped, fpsim.optim.current_loss_scale


def train_one(spec: RunSpec, config: LMConfig, seed: int, progress=None) -> RunResult:
    """Train one run of the demo and record it.

    A recipe run's step collects the recipe's GEMM statistics only (``watch=False,
    recipe_stats=True``: the element casts around the GEMMs are BF16's, which flush
    and clip nothing here); a format run's the element casts' statistics."""
    import jax
    import jax.numpy as jnp

    import fpsim.nn

    data = corpus()
    model = make_model(data.vocab, config)
    policy = run_policy(spec)
    optimizer, loss_scale = _optimizer(spec, config)
    recipe = spec.recipe is not None
    ts = fpsim.nn.make_train_step(
        model, policy, optimizer, loss_scale=loss_scale, watch=not recipe,
        recipe_stats=recipe,
    )  # fmt: skip
    step = jax.jit(lambda s, b: (lambda s2, m: (s2, step_summary(m)))(*ts.step(s, b)))
    rng = np.random.default_rng(seed)
    hi = len(data.train) - config.context - 1
    batches = rng.integers(0, hi, (config.steps, config.batch))
    t0 = time.perf_counter()
    x0, _ = windows(data.train, batches[0], config.context)
    # one compiled init rather than Flax's init op by op (seconds less per run)
    state = jax.jit(ts.init)(jax.random.key(seed), jnp.asarray(x0))
    rows: list[dict] = []
    seconds = compile_seconds = 0.0
    for i in range(config.steps):
        x, y = windows(data.train, batches[i], config.context)
        t1 = time.perf_counter()
        state, summary = step(state, (jnp.asarray(x), jnp.asarray(y)))
        summary = jax.device_get(summary)
        if i == 0:  # init and compilation
            compile_seconds = time.perf_counter() - t0
        else:
            seconds += time.perf_counter() - t1
        rows.append(summary)
        if progress is not None:
            progress.update(1)
    held_out = _held_out_loss(ts, policy, state, data, config)

    def series(key):
        return np.asarray([r[key] for r in rows], np.float64)

    def per_layer(key):
        names = layer_order(rows[0][key])
        return {k: np.asarray([r[key][k] for r in rows], np.float64) for k in names}

    scales = {k: v for k, v in per_layer("scale_log2").items() if np.any(v != 0)}
    block_scales = {
        k: np.sum([r["block_scales"][k] for r in rows], axis=0, dtype=np.int64)
        for k in rows[0]["block_scales"]
    }
    return RunResult(
        spec.name,
        series("loss"),
        series("loss_scale"),
        np.asarray([bool(r["finite"]) for r in rows]),
        series("grad_underflow"),
        series("saturated_all"),
        per_layer("flushed"),
        per_layer("saturated"),
        scales,
        held_out,
        seconds,
        compile_seconds,
        None if spec.recipe is None else fpsim.nn.get_recipe(spec.recipe).name,
        block_scales,
    )


def _held_out_loss(ts, policy, state, data: Corpus, config: LMConfig) -> float:
    """Mean loss on evenly spaced held-out windows, forward pass under the policy."""
    import jax
    import jax.numpy as jnp

    import fpsim.nn

    hi = len(data.held_out) - config.context - 1
    starts = np.linspace(0, hi, config.eval_windows).astype(np.int64)
    x, y = windows(data.held_out, starts, config.context)

    @jax.jit
    def loss(params, pstate, x, y):
        logits = fpsim.nn.apply(ts.apply_fn, policy, params, x, state=pstate)
        return fpsim.nn.cross_entropy(logits, y)

    return float(loss(state.params, state.policy_state, jnp.asarray(x), jnp.asarray(y)))


@functools.cache
def run_experiment(
    config: LMConfig = DEFAULT,
    seed: int = 0,
    runs: tuple[RunSpec, ...] = RUNS,
    quiet: bool = False,
) -> tuple[RunResult, ...]:
    """Train every run of ``runs``; a tuple of :class:`RunResult` (cached per process)."""
    from tqdm.auto import tqdm

    results = []
    with tqdm(
        total=config.steps * len(runs),
        disable=True if quiet else None,
        file=sys.stderr,
        unit="step",
    ) as bar:
        for i, spec in enumerate(runs, 1):
            bar.set_description(f"{spec.name:24}")
            t0 = time.perf_counter()
            r = train_one(spec, config, seed, bar)
            results.append(r)
            if bar.disable and not quiet:  # no terminal: one line per run
                print(
                    f"  run {i}/{len(runs)}: {spec.name:24} {config.steps} steps in "
                    f"{time.perf_counter() - t0:5.1f} s, held-out loss "
                    f"{r.held_out_loss:.3f}",
                    flush=True,
                )
    return tuple(results)


# --------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------
def _tail(values: np.ndarray, part: int) -> np.ndarray:
    return values[-max(len(values) // part, 1) :]


def final_loss(r: RunResult) -> float:
    """Mean training loss over the last 10% of the steps (NaN if any was not finite)."""
    return float(np.mean(_tail(r.loss, 10)))


def _share(x: float, digits: int = 2) -> str:
    """A share for the table: a percentage, scientific notation when tiny, ``-`` when
    not measured (NaN)."""
    if math.isnan(x):
        return "-"
    return "0" if x == 0 else f"{x:.{digits}%}" if x >= 1e-4 else f"{x:.1e}"


def summary_table(results, entropy: float | None = None) -> str:
    """The table ``fpsim demo lm`` prints."""
    entropy = unigram_entropy(corpus().train) if entropy is None else entropy
    ref = next((r for r in results if r.name == "float32"), results[0])
    head = (
        f"{'run':24} {'loss':>6} {'held out':>8} {'ppl':>6} {'vs fp32':>7} "
        f"{'grads lost':>10} {'saturated':>9} {'skipped':>7} {'time':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ppl = math.exp(r.held_out_loss) if math.isfinite(r.held_out_loss) else math.inf
        ref_ppl = math.exp(ref.held_out_loss)
        ratio = ppl / ref_ppl if math.isfinite(ppl) else math.inf
        lines.append(
            f"{r.name:24} {final_loss(r):6.3f} {r.held_out_loss:8.3f} {ppl:6.2f} "
            f"{ratio:6.2f}x {_share(np.mean(_tail(r.grads_lost, 4)), 2):>10} "
            f"{_share(np.mean(_tail(r.saturated_all, 4))):>9} {int((~r.finite).sum()):7d} "
            f"{r.seconds:5.1f}s"
        )
    lines += [
        "",
        "loss: mean training loss (nats per character) over the last 10% of steps.",
        "held out: loss on held-out text, forward pass in the run's formats; ppl = its",
        "  exp (perplexity); vs fp32: perplexity divided by float32's.",
        f"  For scale: the character frequencies alone give {entropy:.3f} "
        f"(perplexity {math.exp(entropy):.1f}).",
        "grads lost: gradient values flushed to zero, as a share of the nonzero ones,",
        "  all layers pooled, mean over the last quarter of steps. Format runs: the",
        "  activation gradients at the casts of the backward pass. Recipe runs: the",
        "  output gradient as the input- and weight-gradient GEMMs quantize it (flushed",
        "  by its block's scale; the casts around the GEMMs are BF16's).",
        "saturated: format runs: layer inputs and activation gradients that overflowed",
        "  the format (clamped to +-max, or inf/NaN); recipe runs: elements of the six",
        "  GEMM operands clipped at their block's max; share of the nonzero, same steps.",
        "skipped: steps the loss scaler rejected because a gradient overflowed.",
        "time: training loop after compilation (fpsim simulates formats in software).",
    ]
    if not any(r.name in {a.name for a in ABLATIONS} for r in results):
        lines.append(
            "NVFP4 ablations (" + ", ".join(a.name for a in ABLATIONS) + "): "
            "--runs 'nvfp4*'."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
def scale_exponents(r: RunResult) -> dict[str, np.ndarray]:
    """The scale exponents a run used, by kind of tensor (the histogram figure's data):
    ``{kind: int64[255]}``, counts over :data:`fpsim.blocks.EXPONENTS` (-127..127).

    A format run with per-tensor scales (delayed, adaptive): the exponent
    (``floor(log2)``) of every layer's input and activation-gradient scale, one count
    per tensor and step (``"input"``, ``"grad"``). A recipe run: the exponent of every
    block's scale, all layers and steps (``"activations"``, ``"weights"``,
    ``"gradients"``: :data:`OPERANDS`). Empty for a run without scales.
    """
    out: dict[str, np.ndarray] = {}
    for key, values in r.scale_log2.items():
        kind = key.rsplit(" ", 1)[-1]
        e = np.clip(np.floor(values), -127, 127).astype(np.int64) + 127
        out[kind] = out.get(kind, 0) + np.bincount(e, minlength=255)
    out.update({k: v for k, v in r.block_scales.items() if v.sum()})
    return out


def _heatmaps(results, field: str, label: str, title: str, empty: str):
    import fpsim.plot
    from fpsim.plot import new_figure

    shown = [r for r in results if any(np.any(v > 0) for v in getattr(r, field).values())]
    if not shown:
        fig, (ax,) = new_figure((9, 2.5))
        ax.axis("off")
        ax.text(0.5, 0.5, empty, ha="center", va="center", fontsize=12)
        ax.set_title(title)
        return fig
    rows = max(len(getattr(r, field)) for r in shown)
    cols = 1 if len(shown) < 3 else 2  # two columns keep a long list readable
    panels = -(-len(shown) // cols)
    fig, _ = new_figure((9 * cols, (0.18 * rows + 1.5) * panels))
    fig.clear()
    axes = fig.subplots(panels, cols, squeeze=False).ravel()
    for ax in axes[len(shown) :]:
        ax.remove()
    for ax, r in zip(axes, shown, strict=False):
        top = max(float(np.max(v)) for v in getattr(r, field).values())
        where = "recipe GEMMs" if r.recipe is not None else "casts"
        fpsim.plot.underflow_heatmap(
            getattr(r, field),
            ax=ax,
            label=label,
            title=f"{r.name} ({where}): colours up to {_share(top)}",
        )
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title)
    return fig


def recipe_family(r: RunResult) -> str:
    """The loss figure's panel of a run: ``"formats"`` (a policy only), or the element
    width of its recipe's operands (``"8-bit recipes"``, ``"4-bit recipes"``)."""
    if r.recipe is None:
        return "formats"
    import fpsim.nn

    element = fpsim.nn.get_recipe(r.recipe).activation.element
    bits = getattr(element, "bits", 8)  # MXINT8's elements are "int8"
    return f"{bits}-bit recipes"


def _reference(results, names=("bf16", "float32")):
    """The recipe panels' baseline: the BF16 run (the recipes run in BF16 around their
    GEMMs), else float32, else None."""
    by_name = {r.name: r for r in results}
    return next((by_name[n] for n in names if n in by_name), None)


def loss_figure(results):
    """Training loss of every run: one panel of whole-network formats (loss curves),
    one per family of GEMM recipes (loss minus the reference run's, same batches)."""
    import fpsim.plot
    from fpsim.plot import new_figure
    from fpsim.showcase.mlp_demo import running_mean

    window = max(len(results[0].loss) // 20, 1)
    panels: dict[str, list] = {}
    for r in results:
        panels.setdefault(recipe_family(r), []).append(r)
    ref = _reference(results)
    fig, axes = new_figure((8, 4.2 * len(panels)), rows=len(panels))
    entropy = unigram_entropy(corpus().train)
    for ax, (family, runs) in zip(axes, panels.items(), strict=True):
        if family == "formats" or ref is None:
            fpsim.plot.training_curves(
                {r.name: running_mean(r.loss, window) for r in runs},
                ax=ax,
                ylabel=f"training loss, nats/char\n(mean of {window} steps)",
                title="A character-level transformer on Shakespeare, one run per format"
                if family == "formats"
                else f"{family}: training loss",
            )
            ax.axhline(entropy, color="0.4", linewidth=1, linestyle=":")
            ax.annotate(
                f"character frequencies alone: {entropy:.2f}", (0, entropy),
                xytext=(4, 4), textcoords="offset points", fontsize=8, color="0.3",
            )  # fmt: skip
            continue
        fpsim.plot.training_curves(
            {r.name: running_mean(r.loss - ref.loss, window) for r in runs},
            ax=ax,
            ylabel=f"loss minus {ref.name}'s, nats/char\n(mean of {window} steps)",
            title=f"{family} (every Dense but the head), against {ref.name}: "
            "same batches, same start",
        )
        ax.axhline(0, color="0.4", linewidth=1, linestyle=":")
    for ax in axes:
        ax.legend(fontsize=8, ncols=2)
    return fig


def figures(results) -> dict[str, Any]:
    """The demo's figures, by file name."""
    import fpsim.plot
    from fpsim.plot import new_figure

    out = {"lm_training_curves.png": loss_figure(results)}
    out["lm_flushed_per_layer.png"] = _heatmaps(
        results,
        "flushed",
        "share of nonzero\ngradient values\nflushed to zero",
        "Gradients flushed to zero per layer: activation gradients at the casts "
        "(format runs),\nthe output gradient in the input- and weight-gradient GEMMs "
        "(recipe runs)",
        "no run flushed any gradient to zero",
    )
    out["lm_saturated_per_layer.png"] = _heatmaps(
        results,
        "saturated",
        "share of nonzero\nvalues that\noverflowed",
        "Values saturated per layer: inputs and activation gradients at the casts "
        "(format runs),\nthe six GEMM operands clipped at their block's max (recipe "
        "runs)",
        "no run saturated (overflowed) any value",
    )
    scaled = [(r, scale_exponents(r)) for r in results]
    scaled = [(r, e) for r, e in scaled if e]
    if scaled:
        fig, axes = new_figure((8, 2.6 * len(scaled)), rows=len(scaled))
        from fpsim.blocks import EXPONENTS

        exps = np.asarray(EXPONENTS)
        for ax, (r, hists) in zip(axes, scaled, strict=True):
            used = np.flatnonzero(sum(hists.values()))
            bins = np.arange(exps[used[0]], exps[used[-1]] + 2)
            for i, (kind, counts) in enumerate(hists.items()):
                s = fpsim.plot.style(i)
                ax.hist(
                    exps, bins=bins, weights=counts, histtype="step", linewidth=1.6,
                    color=s["color"], linestyle=s["linestyle"],
                    label=f"{kind} ({int(counts.sum()):,})",
                )  # fmt: skip
            ax.xaxis.set_major_formatter(fpsim.plot.pow2_formatter(base_is_log2=True))
            ax.set_xlabel("scale (binned by its exponent)")
            if r.recipe is not None and exps[used[0]] == -127:
                ax.set_xlabel("scale (binned by its exponent; 2^-127: all-zero blocks)")
            if r.recipe is None:
                ax.set_ylabel("tensors x steps")
                ax.set_title(f"{r.name}: the per-tensor scales it chose")
            else:
                import fpsim.nn

                bfmt = fpsim.nn.get_recipe(r.recipe).activation
                ax.set_ylabel("tensors x steps" if bfmt.per_tensor else "blocks x steps")
                ax.set_title(
                    f"{r.name}: the {bfmt.scale.name.upper()} "
                    f"{'per-tensor' if bfmt.per_tensor else 'block'} scales of its GEMM "
                    "operands" + (" (tensor scale left out)" if bfmt.tensor_scale else "")
                )
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        out["lm_scale_exponents.png"] = fig
    return out


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------
def run(
    steps: int | None = None,
    seed: int = 0,
    outdir: str | None = None,
    fast: bool = False,
    config: LMConfig | None = None,
    runs: tuple[RunSpec, ...] | str | None = None,
) -> int:
    """Entry point of ``fpsim demo lm``: train, print the table, write the figures.

    ``runs``: :class:`RunSpec` values, or names and fnmatch patterns for
    :func:`select_runs` (``"float32,nvfp4*"``); None: :data:`RUNS`, or
    :data:`FAST_RUNS` with ``fast``. Runs and output directory are checked before
    any training.
    """
    from fpsim.plot import save
    from fpsim.showcase.mlp_demo import check_outdir

    config = config or (FAST if fast else DEFAULT)
    if steps is not None:
        if steps < 1:
            print("fpsim demo: error: --steps must be at least 1", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, steps=steps)
    if runs is None:
        runs = FAST_RUNS if fast else RUNS
    elif isinstance(runs, str):
        try:
            runs = select_runs(runs)
        except ValueError as e:
            print(f"fpsim demo: error: --runs: {e}", file=sys.stderr)
            return 2
    out = Path(outdir or "fpsim-demo-lm")
    problem = check_outdir(out)
    if problem:
        print(f"fpsim demo: error: --outdir {out}: {problem}", file=sys.stderr)
        return 2
    data = corpus()
    print(
        f"Training a {config.depth}-block, width-{config.width} character transformer "
        f"({data.vocab} characters, context {config.context}) on "
        f"{len(data.train):,} characters of Shakespeare, {config.steps} steps of "
        f"{config.batch} windows, {len(runs)} ways (seed {seed}).",
        flush=True,
    )
    results = run_experiment(config, seed, tuple(runs))
    print()
    print(summary_table(results))
    written = []
    for name, fig in figures(results).items():
        written.append(save(fig, out / name))
        fig.clear()
    print(f"\nfigures: {', '.join(str(p) for p in written)}")
    return 0
