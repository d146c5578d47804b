"""Figures of number formats and of what they do to training (matplotlib).

Every helper takes ``ax=None`` (draws into a new figure when None) and returns what it
drew into, so it works in notebooks and scripts alike. Each figure has a pure data
function beside it (``number_line_data``, ``spacing_data``, ``band_fractions``) that
computes exactly what is drawn, so it can be checked without rendering.

Import this module explicitly (``import fpsim.plot``) or use ``fpsim.plot``: it is
loaded on first use, so that ``import fpsim`` does not import matplotlib.
"""

from fpsim.plot._blocks import BlockGrid as BlockGrid
from fpsim.plot._blocks import block_plot as block_plot
from fpsim.plot._blocks import block_plot_data as block_plot_data
from fpsim.plot._histogram import BandFractions as BandFractions
from fpsim.plot._histogram import band_fractions as band_fractions
from fpsim.plot._histogram import range_histogram as range_histogram
from fpsim.plot._numberline import NumberLine as NumberLine
from fpsim.plot._numberline import number_line as number_line
from fpsim.plot._numberline import number_line_data as number_line_data
from fpsim.plot._spacing import Spacing as Spacing
from fpsim.plot._spacing import relative_error_plot as relative_error_plot
from fpsim.plot._spacing import spacing_data as spacing_data
from fpsim.plot._spacing import spacing_figure as spacing_figure
from fpsim.plot._spacing import ulp_plot as ulp_plot
from fpsim.plot._style import LINESTYLES as LINESTYLES
from fpsim.plot._style import MARKERS as MARKERS
from fpsim.plot._style import OKABE_ITO as OKABE_ITO
from fpsim.plot._style import PALETTE as PALETTE
from fpsim.plot._style import new_axes as new_axes
from fpsim.plot._style import new_figure as new_figure
from fpsim.plot._style import pow2_formatter as pow2_formatter
from fpsim.plot._style import pow2_label as pow2_label
from fpsim.plot._style import save as save
from fpsim.plot._style import style as style
from fpsim.plot._training import loss_scale_plot as loss_scale_plot
from fpsim.plot._training import training_curves as training_curves
from fpsim.plot._training import underflow_heatmap as underflow_heatmap

__all__ = [
    "LINESTYLES",
    "MARKERS",
    "OKABE_ITO",
    "PALETTE",
    "new_axes",
    "new_figure",
    "pow2_formatter",
    "pow2_label",
    "save",
    "style",
    "BandFractions",
    "BlockGrid",
    "NumberLine",
    "Spacing",
    "band_fractions",
    "block_plot",
    "block_plot_data",
    "loss_scale_plot",
    "number_line",
    "number_line_data",
    "range_histogram",
    "relative_error_plot",
    "spacing_data",
    "spacing_figure",
    "training_curves",
    "ulp_plot",
    "underflow_heatmap",
]
