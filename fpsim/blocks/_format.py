"""Block-scaled formats: what a ``BlockFormat`` is, and the ones hardware consumes.

A block-scaled format stores a tensor as small *elements* (FP8, FP6, FP4 or INT8) and,
for every block of ``block_size`` consecutive elements, one shared *scale*. A value is
``element * scale``. The scale follows the block's largest magnitude (its *amax*), so a
block of tiny numbers and a block of huge ones both use the elements' full range:

* **OCP Microscaling (MX v1.0)**: 32 elements share an E8M0 scale, a bare power of two
  ``2**-127 .. 2**127``. MXFP8 (E4M3 or E5M2 elements), MXFP6 (E3M2, E2M3), MXFP4
  (E2M1) and MXINT8 (8-bit two's complement with 6 fraction bits).
* **NVFP4** (NVIDIA Blackwell): 16 E2M1 elements share an E4M3 scale (3 mantissa bits,
  so not only powers of two), and the whole tensor shares one float32 scale that puts
  the block scales into E4M3's range.

Bits per element: the element's bits plus the scale's bits shared by the block:
MXFP8 8.25, MXFP6 6.25, MXFP4 4.25, MXINT8 8.25, NVFP4 4.5.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from fpsim.formats import E2M1, E2M3, E3M2, E4M3, E5M2, E8M0, FP32, Format

ScaleMode = Literal["floor", "ceil", "even", "rceil", "amax", "pow2"]
SCALE_MODES: tuple[str, ...] = ("floor", "ceil", "even", "rceil")
#: How a float32 scale is chosen: ``"amax"``: ``amax / element_max`` (DeepSeek-V3's
#: blocks, Transformer Engine's current scaling); ``"pow2"``: that, rounded up to a
#: power of two, so no element exceeds the max and scaling is exact.
FP32_SCALE_MODES: tuple[str, ...] = ("amax", "pow2")
INT8 = "int8"


@dataclasses.dataclass(frozen=True)
class BlockFormat:
    """A block-scaled format: elements, a block size, a scale type and how it is chosen.

    Frozen and hashable (a static argument of ``jax.jit``).

    Attributes:
      name: short name, e.g. ``"mxfp8_e4m3"``.
      element: the element :class:`~fpsim.Format`, or ``"int8"`` (MXINT8's elements:
        two's complement bytes read as ``code / 64``, so -2 .. 127/64).
      block_size: how many consecutive elements (along the chosen axis) share a scale.
      scale: the scale's format: ``E8M0`` (MX, powers of two) or ``E4M3`` (NVFP4).
      scale_mode: how an E8M0 scale is chosen from the block's amax: ``"floor"`` (the
        OCP spec), ``"ceil"``, ``"even"`` or ``"rceil"`` (see :mod:`fpsim.blocks`).
      tensor_scale: whether the tensor also has one float32 scale (NVFP4).
      block_shape: for 2-D tiles, e.g. ``(128, 128)``: a block is a tile over two axes
        (``axis=(-2, -1)`` by default) and ``block_size`` is set to the tile's size.
        ``None``: a block runs along one axis.
      per_tensor: one scale for the whole tensor (per-tensor "current scaling"); the
        block size is ignored.

    With ``scale=FP32`` the scale is a float32 chosen by ``scale_mode`` ``"amax"``
    (``amax / element_max``, as DeepSeek-V3 and Transformer Engine's current scaling)
    or ``"pow2"`` (rounded up to a power of two, clamped to ``2**-127 .. 2**127``);
    elements are ``x / scale`` rounded and saturated, values ``element * scale``.
    """

    name: str
    element: Format | str
    block_size: int = 32
    scale: Format = E8M0
    scale_mode: str = "floor"
    tensor_scale: bool = False
    block_shape: tuple[int, ...] | None = None
    per_tensor: bool = False

    def __post_init__(self) -> None:
        if self.block_shape is not None:
            shape = tuple(self.block_shape)
            if len(shape) != 2 or not all(isinstance(b, int) and b >= 1 for b in shape):
                raise ValueError(
                    f"block_shape must be two positive ints, e.g. (128, 128); got {shape!r}"
                )
            object.__setattr__(self, "block_shape", shape)
            object.__setattr__(self, "block_size", shape[0] * shape[1])
        if not (isinstance(self.element, Format) or self.element == INT8):
            raise ValueError(
                f"element must be a fpsim.Format or 'int8', got {self.element!r}"
            )
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        if self.scale not in (E8M0, E4M3, FP32):
            raise ValueError(f"scale must be E8M0, E4M3 or FP32, got {self.scale!r}")
        check_scale_mode(self.scale_mode, self.scale)
        if (
            self.scale == FP32
            and self.element in (INT8, E2M1)
            or (self.per_tensor and self.scale != FP32)
        ):
            raise ValueError("an FP32 scale (and per_tensor) is for FP8/FP6 elements")
        if self.scale == E4M3 and (self.element != E2M1 or not self.tensor_scale):
            raise ValueError("an E4M3 block scale is NVFP4's: E2M1 elements, tensor_scale")

    @property
    def element_bits(self) -> int:
        return 8 if self.element == INT8 else self.element.bits

    @property
    def element_max(self) -> float:
        """Largest element magnitude (MXINT8: 127/64)."""
        return 127 / 64 if self.element == INT8 else self.element.max

    @property
    def element_emax(self) -> int:
        """``floor(log2(element_max))``: the scale puts the amax's binade here."""
        return 0 if self.element == INT8 else self.element.emax

    @property
    def element_mantissa_bits(self) -> int:
        """Fraction bits of the elements (MXINT8: 6), used by the "even" scale mode."""
        return 6 if self.element == INT8 else self.element.mantissa_bits

    @property
    def bits_per_element(self) -> float:
        """Storage per element: element bits + scale bits / block_size (per tensor: the
        element bits; the one scale is not counted)."""
        if self.per_tensor:
            return float(self.element_bits)
        return self.element_bits + self.scale.bits / self.block_size

    def __str__(self) -> str:
        return self.name


def check_scale_mode(mode: str, scale: Format = E8M0) -> None:
    valid = FP32_SCALE_MODES if scale == FP32 else SCALE_MODES
    if mode not in valid:
        raise ValueError(f"unknown scale_mode {mode!r}; valid: {', '.join(valid)}")


MXFP8_E4M3 = BlockFormat("mxfp8_e4m3", E4M3)
MXFP8_E5M2 = BlockFormat("mxfp8_e5m2", E5M2)
MXFP6_E3M2 = BlockFormat("mxfp6_e3m2", E3M2)
MXFP6_E2M3 = BlockFormat("mxfp6_e2m3", E2M3)
MXFP4 = BlockFormat("mxfp4", E2M1)
MXINT8 = BlockFormat("mxint8", INT8)
NVFP4 = BlockFormat("nvfp4", E2M1, block_size=16, scale=E4M3, tensor_scale=True)

BLOCK_FORMATS: tuple[BlockFormat, ...] = (
    MXFP8_E4M3, MXFP8_E5M2, MXFP6_E3M2, MXFP6_E2M3, MXFP4, MXINT8, NVFP4,
)  # fmt: skip

# Tiles and float32 scales: DeepSeek-V3's FP8 (activations 1x128, weights 128x128, scale
# amax / 448), per-tensor current scaling, and NVFP4's 16x16 weight tiles.
FP8_BLOCK_1x128 = BlockFormat("fp8_block_1x128", E4M3, 128, FP32, "amax")
FP8_BLOCK_128x128 = BlockFormat(
    "fp8_block_128x128", E4M3, scale=FP32, scale_mode="amax", block_shape=(128, 128)
)
FP8_TENSOR = BlockFormat("fp8_tensor", E4M3, 1, FP32, "amax", per_tensor=True)
FP8_TENSOR_POW2 = BlockFormat("fp8_tensor_pow2", E4M3, 1, FP32, "pow2", per_tensor=True)
NVFP4_16x16 = BlockFormat(
    "nvfp4_16x16", E2M1, scale=E4M3, tensor_scale=True, block_shape=(16, 16)
)
TILE_FORMATS: tuple[BlockFormat, ...] = (
    FP8_BLOCK_1x128, FP8_BLOCK_128x128, FP8_TENSOR, FP8_TENSOR_POW2, NVFP4_16x16,
)  # fmt: skip

_ALIASES: dict[str, BlockFormat] = {f.name: f for f in BLOCK_FORMATS + TILE_FORMATS}
_ALIASES["mxfp8"] = MXFP8_E4M3


def block_format_names() -> list[str]:
    """All names :func:`get_block_format` accepts, sorted."""
    return sorted(_ALIASES)


def get_block_format(name: str | BlockFormat) -> BlockFormat:
    """Look a block format up by name, case-insensitively; a BlockFormat passes through.

    Example:
      >>> from fpsim.blocks import get_block_format
      >>> get_block_format("mxfp8").bits_per_element, get_block_format("nvfp4").block_size
      (8.25, 16)
    """
    if isinstance(name, BlockFormat):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"expected a block format name or BlockFormat, got {type(name).__name__}"
        )
    try:
        return _ALIASES[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown block format {name!r}; valid: {', '.join(block_format_names())}"
        ) from None
