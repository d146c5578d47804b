"""Flax integration: run an unmodified Linen or NNX model under a precision policy.

* :class:`Policy` and the presets (:func:`get_policy`, also jmp-style strings such as
  ``"params=float32,compute=float16,output=float32"``): formats for the stored weights
  (``param``), the compute cast (``compute``), layer outputs, activation gradients and
  weight gradients; per-module overrides; FP8 delayed scaling (:class:`DelayedScaling`)
  and layer-wise adaptive loss scaling (:class:`AdaptiveLossScaling`), both rules from
  :mod:`fpsim.scaling`.
* :func:`apply` (forward) and :func:`value_and_grad` (with per-layer statistics of
  activations and activation gradients, as float32 had them and as the simulated pass
  holds them); :func:`instrument` prepares an NNX model; Linen needs nothing.
* :func:`make_train_step` and :func:`train`: a jitted training step with loss,
  accuracy and gradient statistics, for demos and lessons.
* Training recipes (:class:`Recipe`, :data:`RECIPES`: FP8 current and blockwise
  scaling, MXFP8, NVFP4, ...): each of a linear layer's three GEMMs quantizes its
  operands along its own contraction; usable as policies (``"mxfp8"``, or a
  policy's ``recipe``), with per-layer statistics of every GEMM operand
  (:class:`RecipeStats`), or directly (:func:`recipe_dot_general`,
  :func:`recipe_scope`, :func:`with_recipe`).
"""

from fpsim.nn._apply import Report as Report
from fpsim.nn._apply import apply as apply
from fpsim.nn._apply import discover as discover
from fpsim.nn._apply import init_state as init_state
from fpsim.nn._apply import underflow_fraction as underflow_fraction
from fpsim.nn._apply import value_and_grad as value_and_grad
from fpsim.nn._context import LAYER_NAMES as LAYER_NAMES
from fpsim.nn._data_parallel import data_parallel_grads as data_parallel_grads
from fpsim.nn._dot_general import quantized_dot_general as quantized_dot_general
from fpsim.nn._nnx import instrument as instrument
from fpsim.nn._policy import PRESET_NAMES as PRESET_NAMES
from fpsim.nn._policy import PRESETS as PRESETS
from fpsim.nn._policy import Policy as Policy
from fpsim.nn._policy import get_policy as get_policy
from fpsim.nn._recipes import RECIPE_NAMES as RECIPE_NAMES
from fpsim.nn._recipes import RECIPES as RECIPES
from fpsim.nn._recipes import Recipe as Recipe
from fpsim.nn._recipes import RecipeStats as RecipeStats
from fpsim.nn._recipes import get_recipe as get_recipe
from fpsim.nn._recipes import recipe_dot_general as recipe_dot_general
from fpsim.nn._recipes import recipe_scope as recipe_scope
from fpsim.nn._recipes import with_recipe as with_recipe
from fpsim.nn._stats import LayerStats as LayerStats
from fpsim.nn._stats import TensorStats as TensorStats
from fpsim.nn._train import TrainState as TrainState
from fpsim.nn._train import TrainStep as TrainStep
from fpsim.nn._train import cross_entropy as cross_entropy
from fpsim.nn._train import make_train_step as make_train_step
from fpsim.nn._train import train as train
from fpsim.scaling import AdaptiveLossScaling as AdaptiveLossScaling
from fpsim.scaling import DelayedScaling as DelayedScaling
from fpsim.scaling import ScaleState as ScaleState

__all__ = [
    "LAYER_NAMES", "PRESETS", "PRESET_NAMES", "RECIPES", "RECIPE_NAMES",
    "AdaptiveLossScaling", "DelayedScaling", "LayerStats", "Policy", "Recipe",
    "RecipeStats", "Report", "ScaleState", "TensorStats", "TrainState", "TrainStep",
    "apply", "cross_entropy", "data_parallel_grads", "discover", "get_policy",
    "get_recipe", "init_state", "instrument", "make_train_step", "quantized_dot_general",
    "recipe_dot_general", "recipe_scope", "train", "underflow_fraction", "value_and_grad",
    "with_recipe",
]  # fmt: skip
