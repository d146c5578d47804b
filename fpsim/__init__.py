"""fpsim: an educational, bit-exact simulator of floating-point formats for JAX.

The core (this namespace) needs only JAX: formats, rounding, bit patterns. Flax, optax
and matplotlib integrations live in ``fpsim.nn``, ``fpsim.optim`` and ``fpsim.plot``
and are imported on first use.
"""

from fpsim import numerics as _numerics  # noqa: E402
from fpsim import stats as _stats
from fpsim.codec import all_values as all_values
from fpsim.codec import code_dtype as code_dtype
from fpsim.codec import decode as decode
from fpsim.codec import encode as encode
from fpsim.comm import data_parallel_grads as data_parallel_grads
from fpsim.comm import lp_all_reduce as lp_all_reduce
from fpsim.comm import lp_reduce as lp_reduce
from fpsim.comm import wire_counts as wire_counts
from fpsim.formats import BF16 as BF16
from fpsim.formats import E2M1 as E2M1
from fpsim.formats import E2M3 as E2M3
from fpsim.formats import E3M2 as E3M2
from fpsim.formats import E3M4 as E3M4
from fpsim.formats import E4M3 as E4M3
from fpsim.formats import E4M3_IEEE as E4M3_IEEE
from fpsim.formats import E4M3_SAT as E4M3_SAT
from fpsim.formats import E4M3B11FNUZ as E4M3B11FNUZ
from fpsim.formats import E4M3FNUZ as E4M3FNUZ
from fpsim.formats import E5M2 as E5M2
from fpsim.formats import E5M2FNUZ as E5M2FNUZ
from fpsim.formats import FORMATS as FORMATS
from fpsim.formats import FP4_E2M1 as FP4_E2M1
from fpsim.formats import FP6_E2M3 as FP6_E2M3
from fpsim.formats import FP6_E3M2 as FP6_E3M2
from fpsim.formats import FP16 as FP16
from fpsim.formats import FP32 as FP32
from fpsim.formats import TF32 as TF32
from fpsim.formats import Format as Format
from fpsim.formats import format_names as format_names
from fpsim.formats import get_format as get_format
from fpsim.numerics import *  # noqa: E402, F403  (names listed in fpsim.numerics.__all__)
from fpsim.rounding import ROUNDING_MODES as ROUNDING_MODES
from fpsim.rounding import FormatLike as FormatLike
from fpsim.rounding import Rounding as Rounding
from fpsim.rounding import next_down as next_down
from fpsim.rounding import next_up as next_up
from fpsim.rounding import quantize as quantize
from fpsim.rounding import ulp as ulp
from fpsim.stats import *  # noqa: E402, F403  (names listed in fpsim.stats.__all__)

__version__ = "0.1.0"

# Integrations that need flax, optax or matplotlib load on first use, so that
# `import fpsim` stays light: fpsim.nn, fpsim.optim, fpsim.plot.
_LAZY = ("nn", "optim", "plot", "cli", "demo")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"fpsim.{name}")
    raise AttributeError(f"module 'fpsim' has no attribute {name!r}")


__all__ = [
    "BF16", "E2M1", "E2M3", "E3M2", "E3M4", "E4M3", "E4M3B11FNUZ", "E4M3FNUZ", "E4M3_IEEE",
    "E4M3_SAT", "E5M2", "E5M2FNUZ", "FORMATS", "FP16", "FP32", "FP4_E2M1", "FP6_E2M3",
    "FP6_E3M2", "Format", "FormatLike", "ROUNDING_MODES", "Rounding", "TF32", "all_values",
    "code_dtype", "decode", "encode", "format_names", "get_format", "next_down", "next_up",
    "quantize", "ulp", "lp_all_reduce", "lp_reduce", "wire_counts", "data_parallel_grads",
]  # fmt: skip
__all__ += list(_numerics.__all__) + list(_stats.__all__)
