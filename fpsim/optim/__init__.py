"""optax gradient transformations for low-precision training (``fpsim.optim``).

Loss scaling (static, dynamic in four frameworks' flavours, per-layer scales),
quantized gradients / optimizer state / parameters (nearest or stochastic rounding,
with or without float32 master weights), Kahan-compensated low-precision weights, and
HALP bit centering with SVRG and low-precision SGD for comparison. Every transform is
an optax ``GradientTransformation`` whose state is a NamedTuple of arrays.
"""

from fpsim.optim._epoch import svrg_epoch as svrg_epoch
from fpsim.optim._halp import HalpState as HalpState
from fpsim.optim._halp import LpSgdState as LpSgdState
from fpsim.optim._halp import SvrgState as SvrgState
from fpsim.optim._halp import halp as halp
from fpsim.optim._halp import halp_params as halp_params
from fpsim.optim._halp import lp_sgd as lp_sgd
from fpsim.optim._halp import svrg as svrg
from fpsim.optim._halp import svrg_center as svrg_center
from fpsim.optim._kahan import KahanParamsState as KahanParamsState
from fpsim.optim._kahan import kahan_params as kahan_params
from fpsim.optim._loss_scaling import VARIANTS as LOSS_SCALING_VARIANTS
from fpsim.optim._loss_scaling import LossScalingState as LossScalingState
from fpsim.optim._loss_scaling import current_loss_scale as current_loss_scale
from fpsim.optim._loss_scaling import dynamic_loss_scaling as dynamic_loss_scaling
from fpsim.optim._loss_scaling import loss_scaling_state as loss_scaling_state
from fpsim.optim._loss_scaling import scale_loss as scale_loss
from fpsim.optim._loss_scaling import static_loss_scaling as static_loss_scaling
from fpsim.optim._quantizing import QuantizedOptimizerState as QuantizedOptimizerState
from fpsim.optim._quantizing import QuantizeParamsState as QuantizeParamsState
from fpsim.optim._quantizing import QuantizeUpdatesState as QuantizeUpdatesState
from fpsim.optim._quantizing import apply_updates as apply_updates
from fpsim.optim._quantizing import quantize_optimizer_state as quantize_optimizer_state
from fpsim.optim._quantizing import quantize_params as quantize_params
from fpsim.optim._quantizing import quantize_updates as quantize_updates

__all__ = [
    "LOSS_SCALING_VARIANTS",
    "HalpState",
    "KahanParamsState",
    "LossScalingState",
    "LpSgdState",
    "QuantizeParamsState",
    "QuantizeUpdatesState",
    "QuantizedOptimizerState",
    "SvrgState",
    "apply_updates",
    "current_loss_scale",
    "dynamic_loss_scaling",
    "halp",
    "halp_params",
    "kahan_params",
    "loss_scaling_state",
    "lp_sgd",
    "quantize_optimizer_state",
    "quantize_params",
    "quantize_updates",
    "scale_loss",
    "static_loss_scaling",
    "svrg",
    "svrg_center",
    "svrg_epoch",
]
