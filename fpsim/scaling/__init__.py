"""Scaling rules as values, framework-free (``fpsim.scaling``: JAX only, no Flax/optax).

A narrow format holds a tensor only if its values sit inside the format's range; a
*scale* moves them there before rounding and is divided out afterwards. Every scaling
recipe is a frozen dataclass here, so a new recipe is a new value:

* loss scaling (:class:`StaticLossScaling`, :class:`DynamicLossScaling` and the
  frameworks' rules :data:`PYTORCH`, :data:`KERAS`, :data:`FLAX`, :data:`JMP`):
  ``init() -> LossScale``, ``unscale(grads, scale)``, ``adjust(state, finite)``;
* per-tensor scaling: FP8 :class:`DelayedScaling` (amax history, margin),
  :class:`CurrentScaling`, layer-wise :class:`AdaptiveLossScaling` (rules ``"simple"``
  and ``"zhao"``; the latter reads the layer's :class:`WeightStats`);
* exact scale arithmetic (:mod:`fpsim.scaling._exact`): rounded once, subnormals kept.

``fpsim.optim`` wraps the loss-scaling rules as optax transformations and ``fpsim.nn``
applies the per-tensor rules inside Flax models.
"""

from fpsim.scaling._loss import FLAX as FLAX
from fpsim.scaling._loss import JMP as JMP
from fpsim.scaling._loss import KERAS as KERAS
from fpsim.scaling._loss import PYTORCH as PYTORCH
from fpsim.scaling._loss import RULES as RULES
from fpsim.scaling._loss import DynamicLossScaling as DynamicLossScaling
from fpsim.scaling._loss import LossScale as LossScale
from fpsim.scaling._loss import StaticLossScaling as StaticLossScaling
from fpsim.scaling._loss import get_rule as get_rule
from fpsim.scaling._loss import is_stuck as is_stuck
from fpsim.scaling._loss import unscale as unscale
from fpsim.scaling._tensor import AdaptiveLossScaling as AdaptiveLossScaling
from fpsim.scaling._tensor import CurrentScaling as CurrentScaling
from fpsim.scaling._tensor import DelayedScaling as DelayedScaling
from fpsim.scaling._tensor import ScaleState as ScaleState
from fpsim.scaling._tensor import WeightStats as WeightStats
from fpsim.scaling._tensor import quantize_scaled as quantize_scaled
from fpsim.scaling._tensor import weight_stats as weight_stats

__all__ = [
    "FLAX", "JMP", "KERAS", "PYTORCH", "RULES", "AdaptiveLossScaling", "CurrentScaling",
    "DelayedScaling", "DynamicLossScaling", "LossScale", "ScaleState",
    "StaticLossScaling", "WeightStats", "get_rule", "is_stuck", "quantize_scaled",
    "unscale", "weight_stats",
]  # fmt: skip
