"""What :func:`fpsim.emulate` rounds to: the policy, and the report of what it did."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping

from fpsim.formats import FP16, FP32, Format, get_format
from fpsim.numerics._accumulate import SUM_ORDERS
from fpsim.numerics._tensor_core import AccumulatorModel, get_accumulator
from fpsim.rounding import FormatLike, check_rounding

#: Primitives PyTorch's autocast keeps in float32 (its "fp32 list", translated to JAX
#: primitives): transcendental functions whose results span a wide range, and
#: reductions, whose long sums swamp in a narrow accumulator.
FLOAT32_OPS: tuple[str, ...] = (
    "exp", "exp2", "log", "log1p", "expm1", "pow", "logistic", "erf", "erfc", "erf_inv",
    "lgamma", "digamma", "reduce_sum", "reduce_prod", "cumsum", "cumprod",
    "cumlogsumexp", "reduce_precision",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Accumulation:
    """How ``dot_general`` and convolutions accumulate (see :func:`fpsim.lp_dot_general`).

    Attributes:
      products: format of each product (None: exact in float32).
      accum: the accumulator's format. FP32 (the default, as on tensor cores) uses
        XLA's own dot; a narrower one is simulated step by step, in ``order``.
      order: ``"sequential"``, ``"pairwise"``, ``"chunked"``, ``"kahan"``, or None
        (``"native"`` for FP32, else ``"sequential"``).
      chunk: chunk length for ``"chunked"``.
      model: a tensor-core accumulator model (:class:`fpsim.AccumulatorModel` or a
        preset name, e.g. ``"hopper_fp8"``) for ``dot_general``, instead of a product
        format, an accumulator format and an order: the products are exact and added
        as the model says (``lp_dot_general(..., accumulator=model)``), their operands
        read in the policy's format for ``dot_general``. Sums (``reduce_sum``) still
        use ``accum`` and ``order``; convolutions are not simulated with a model.
    """

    products: Format | None = None
    accum: Format = FP32
    order: str | None = None
    chunk: int = 64
    model: AccumulatorModel | None = None

    def __post_init__(self) -> None:
        if self.model is not None:
            object.__setattr__(self, "model", get_accumulator(self.model))
            if self.products is not None or self.order is not None:
                raise ValueError(
                    f"Accumulation(model={self.model.name!r}) fixes how dot products "
                    "accumulate (exact products, the model's format and order): drop "
                    "products= and order=, which are for the step-by-step simulation"
                )
        if self.products is not None:
            object.__setattr__(self, "products", get_format(self.products))
        object.__setattr__(self, "accum", get_format(self.accum))
        if self.order is not None and self.order not in SUM_ORDERS:
            valid = ", ".join(SUM_ORDERS)
            raise ValueError(f"unknown order {self.order!r}; valid: {valid}")


@dataclasses.dataclass(frozen=True)
class EmulationPolicy:
    """Which format each floating-point primitive's result is rounded to.

    Attributes:
      compute: the default format of every floating-point result.
      rounding: ``"nearest"``, the only mode simulated exactly here: a result is
        computed in float32 (rounded to nearest) and then rounded to ``compute``, and
        that double rounding is innocuous for round-to-nearest only (Figueroa 1995). A
        directed mode would be off by an ulp whenever float32's rounding lands on the
        narrow grid (``2048 + 2**-24`` rounded "up" to FP16 must give 2050). For
        directed or stochastic rounding use :func:`fpsim.quantize`,
        :func:`fpsim.quantizer` or :func:`fpsim.lp_sum` / :func:`fpsim.lp_dot`.
      overrides: per-primitive formats, ``{"exp": None}`` keeps ``exp`` in float32;
        ``{"tanh": "bf16"}`` rounds it to BF16. A dict is accepted and stored as a
        sorted tuple of pairs so the policy stays hashable.
      accumulation: how ``dot_general``, ``conv_general_dilated`` and (with a narrow
        accumulator) ``reduce_sum`` accumulate.
      round_inputs: round the function's floating-point arguments to ``compute`` on
        entry (as autocast casts them), so every operation sees operands on the grid.
    """

    compute: Format = FP16
    rounding: str = "nearest"
    overrides: tuple = ()
    accumulation: Accumulation = Accumulation()
    round_inputs: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "compute", get_format(self.compute))
        check_rounding(self.rounding)
        if self.rounding != "nearest":
            raise ValueError(
                f"emulate simulates rounding='nearest' only, got {self.rounding!r}: "
                "computing in float32 and rounding again is exact for round-to-nearest "
                "but not for directed or stochastic modes; use fpsim.quantize, "
                "fpsim.quantizer or fpsim.lp_sum/lp_dot for those"
            )
        items = (
            self.overrides.items()
            if isinstance(self.overrides, Mapping)
            else self.overrides
        )
        pairs = tuple(
            sorted((str(k), None if v is None else get_format(v)) for k, v in items)
        )
        object.__setattr__(self, "overrides", pairs)

    def format_for(self, primitive: str) -> Format | None:
        """The format ``primitive``'s floating-point results are rounded to (None: f32)."""
        for name, fmt in self.overrides:
            if name == primitive:
                return fmt
        return self.compute

    @classmethod
    def autocast(cls, compute: FormatLike = FP16, **kwargs) -> EmulationPolicy:
        """A policy like PyTorch's autocast: :data:`FLOAT32_OPS` stay in float32."""
        over = dict.fromkeys(FLOAT32_OPS, None)
        over.update(dict(kwargs.pop("overrides", {})))
        return cls(compute=get_format(compute), overrides=over, **kwargs)


class EmulationReport:
    """What :func:`fpsim.emulate` did to each primitive while tracing; print it.

    ``counts[(primitive, treatment)]`` counts equations, where the treatment is the
    format name results were rounded to, ``"float32"`` (kept by an override),
    ``"exact"`` (moves or selects values: nothing to round), ``"not float"``, or
    ``"UNKNOWN -> <fmt>"`` for primitives fpsim has no rule for (computed in float32,
    then rounded). ``unknown`` lists the latter.
    """

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()

    def record(self, primitive: str, treatment: str) -> None:
        self.counts[(primitive, treatment)] += 1

    @property
    def unknown(self) -> list[str]:
        return sorted({p for p, t in self.counts if t.startswith("UNKNOWN")})

    def __str__(self) -> str:
        lines = [f"{'primitive':<26}{'treatment':<28}count"]
        for (p, t), n in sorted(self.counts.items()):
            lines.append(f"{p:<26}{t:<28}{n}")
        if self.unknown:
            lines.append(
                "unknown primitives (float32, then rounded): " + ", ".join(self.unknown)
            )
        return "\n".join(lines)

    __repr__ = __str__
