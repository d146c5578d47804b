"""Precision policies: which format each tensor of a network lives in.

A layer of a mixed-precision network touches five kinds of tensors, and real recipes
give each its own format:

============  =========================================================================
field         the tensor
============  =========================================================================
``param``     the weights *as the layer sees them* (a cast of the stored weights)
``compute``   the layer's inputs, as it reads them
``output``    what the layer writes: its output on the way forward and the gradient of
              its input on the way back
``grad``      the activation gradient (the cotangent of the layer's output) as the
              layer's backward pass reads it
``param_grad``  the weight gradient the layer's backward pass writes
``storage``   where the weights live between steps: ``None`` keeps float32 *master
              weights* ("mixed" precision); a format stores them in it ("pure")
============  =========================================================================

``None`` always means "leave it in float32". Per-module ``overrides`` (fnmatch patterns
on the module's path such as ``"Dense_2"`` or ``"decoder/*"``, or on its class name such
as ``"LayerNorm"``) replace the policy for the matching modules, for example to keep the
last layer in float32. The loss is always computed in float32 by :mod:`fpsim.nn`'s
training helpers.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from fpsim.formats import Format, get_format
from fpsim.rounding import FormatLike, check_rounding


@dataclasses.dataclass(frozen=True)
class DelayedScaling:
    """Per-tensor FP8 scaling from a history of amax values (Transformer Engine's recipe).

    An FP8 format has so few exponents (E4M3 spans ``2**-9 .. 448``) that a tensor only
    fits if it is first multiplied by a *scale* that moves its largest magnitude near the
    format's max. Computing that maximum ("amax") of the tensor being quantized would
    need a pass over it before the cast; Transformer Engine's ``DelayedScaling`` instead
    uses the amaxes of the *previous* ``history_len`` steps:

        scale = fmt.max / max(amax_history) / 2**margin      (kept if that amax is 0)
        x_fp8 = saturate(round(x * scale))     dequantized: x_fp8 / scale

    and then pushes this step's amax into the history. The state is carried functionally
    (see :class:`fpsim.nn.ScaleState`) and updated every step.

    Warm-up: the history starts empty (scale 1), so the first steps run unscaled. For
    activation gradients it fills from the top of the network down: a layer's cotangent
    is only nonzero once the layers above it pass nonzero gradients down, so a deep
    model needs a few steps (about one per layer at worst) before every gradient tensor
    is scaled. The newest amax is ``ScaleState.amax_history[0]``.

    Attributes:
      history_len: number of past amax values kept per tensor.
      margin: extra headroom in powers of two below the format's max.
    """

    history_len: int = 16
    margin: int = 0

    def __post_init__(self):
        if not (isinstance(self.history_len, int) and self.history_len >= 1):
            raise ValueError(
                f"history_len must be a positive int, got {self.history_len!r}"
            )
        if not (isinstance(self.margin, int) and self.margin >= 0):
            raise ValueError(f"margin must be a non-negative int, got {self.margin!r}")


@dataclasses.dataclass(frozen=True)
class AdaptiveLossScaling:
    """Layer-wise loss scales chosen during the backward pass (after Zhao et al. 2019).

    When the backward pass reaches a layer, the incoming activation gradient ``g`` is
    multiplied by the largest power of two ``alpha`` that keeps ``max|g| * alpha`` below
    ``fmt.max / 2**margin`` (``margin`` leaves room for the growth of the sums in the
    layer's backward matrix products), capped at ``2**max_log2``. The layer's backward
    pass then runs on scaled values: its weight gradient comes out multiplied by
    ``alpha`` (the optimizer undoes it: ``grad_scales``) and the gradient it passes down
    is unscaled again at the layer's input. Small gradients are therefore lifted above
    the underflow threshold layer by layer, each layer by what it can afford.

    Attributes:
      margin: powers of two of headroom below the grad format's max.
      max_log2: largest scale exponent allowed.
    """

    margin: int = 8
    max_log2: int = 64


_FIELDS = ("param", "compute", "output", "grad", "param_grad", "storage")


def _fmt(value) -> Format | None:
    return None if value is None else get_format(value)


@dataclasses.dataclass(frozen=True)
class Policy:
    """A precision policy for a Flax model (frozen, hashable: a valid jit static arg).

    Attributes:
      name: label used in reports.
      param: format of the weights as the layers see them.
      compute: format of each layer's inputs.
      output: format of each layer's outputs, and of the input gradients its backward
        pass produces.
      grad: format of the activation gradient a layer's backward pass reads.
      param_grad: format of the weight gradients.
      storage: format of the stored weights between steps (None: float32 master weights).
      rounding: rounding mode of the forward roundings.
      grad_rounding: rounding mode of the backward roundings.
      saturate: overflow clamps to +-max instead of becoming inf/NaN.
      scaling: per-tensor delayed scaling (FP8 recipes), or None.
      adaptive: layer-wise adaptive loss scaling in the backward pass, or None.
      param_names: names of the parameters ``param`` applies to (e.g. ``("kernel",)``),
        or None for all of them.
      overrides: ``((pattern, policy), ...)``; a module whose path (``"block/Dense_0"``)
        or class name (``"LayerNorm"``) matches ``pattern`` (fnmatch syntax) uses
        ``policy``; the last match wins. A policy may be given by preset name.
    """

    name: str = "custom"
    param: Format | None = None
    compute: Format | None = None
    output: Format | None = None
    grad: Format | None = None
    param_grad: Format | None = None
    storage: Format | None = None
    rounding: str = "nearest"
    grad_rounding: str = "nearest"
    saturate: bool = False
    scaling: DelayedScaling | None = None
    adaptive: AdaptiveLossScaling | None = None
    param_names: tuple[str, ...] | None = None
    overrides: tuple[tuple[str, Policy], ...] = ()

    def __post_init__(self):
        for f in _FIELDS:
            object.__setattr__(self, f, _fmt(getattr(self, f)))
        check_rounding(self.rounding)
        check_rounding(self.grad_rounding)
        if self.param_names is not None:
            object.__setattr__(self, "param_names", tuple(self.param_names))
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

    @property
    def is_float32(self) -> bool:
        """True when this policy (ignoring overrides) rounds nothing."""
        return all(getattr(self, f) is None for f in _FIELDS)

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
            name="fp16_mixed", param="fp16", compute="fp16", output="fp16", grad="fp16",
            param_grad="fp16", overrides=norms_fp32,
        ),
        "bf16_mixed": Policy(
            name="bf16_mixed", param="bf16", compute="bf16", output="bf16", grad="bf16",
            param_grad="bf16", overrides=norms_fp32,
        ),
        # no master weights: the weights themselves are stored in FP16
        "fp16_pure": Policy(
            name="fp16_pure", param="fp16", compute="fp16", output="fp16", grad="fp16",
            param_grad="fp16", storage="fp16",
        ),
        # Micikevicius et al. 2022 / Transformer Engine: E4M3 forward, E5M2 backward, matrix
        # products only, per-tensor delayed scaling; outputs and norms in high precision
        "fp8_hybrid": Policy(
            name="fp8_hybrid", param="e4m3", compute="e4m3", grad="e5m2", saturate=True,
            scaling=DelayedScaling(), param_names=("kernel",), overrides=norms_fp32,
        ),
        # the same casts with no scaling at all: what goes wrong without the recipe
        "fp8_naive": Policy(
            name="fp8_naive", param="e4m3", compute="e4m3", grad="e5m2",
            param_names=("kernel",), overrides=norms_fp32,
        ),
    }  # fmt: skip


PRESETS: dict[str, Policy] = _presets()
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def get_policy(name: str | Policy) -> Policy:
    """A preset policy by name (a Policy passes through).

    Presets: ``"float32"``; ``"fp16_mixed"`` (FP16 compute and gradients, float32 master
    weights: Micikevicius et al. 2017); ``"bf16_mixed"``; ``"fp16_pure"`` (weights stored
    in FP16 too: no master weights); ``"fp8_hybrid"`` (E4M3 forward, E5M2 backward, with
    Transformer Engine's delayed per-tensor scaling); ``"fp8_naive"`` (the same casts
    without scaling, the baseline that fails).

    Raises:
      ValueError: unknown name; the message lists the presets.
    """
    if isinstance(name, Policy):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"expected a preset name or fpsim.nn.Policy, got {type(name).__name__}"
        )
    try:
        return PRESETS[name.strip().lower().replace("-", "_")]
    except KeyError:
        raise ValueError(
            f"unknown precision policy {name!r}; presets: {', '.join(PRESET_NAMES)}"
        ) from None


def as_policy(policy: str | Policy) -> Policy:
    """Internal: accept a preset name or a Policy."""
    return get_policy(policy)


def check_format_like(value: FormatLike | None) -> Format | None:
    """Internal: a Format, or None."""
    return _fmt(value)
