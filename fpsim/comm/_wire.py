"""What went over the wire: the classification of every device's contribution."""

from __future__ import annotations

import jax

from fpsim.comm._checks import check_divide
from fpsim.formats import get_format
from fpsim.rounding import FormatLike, as_float_array
from fpsim.stats import ValueCounts, value_counts


def wire_counts(
    xs: jax.typing.ArrayLike,
    wire_format: FormatLike,
    *,
    axis: int = 0,
    divide: str = "after",
) -> ValueCounts:
    """How the contributions of a mean all-reduce fare on the wire.

    With ``divide="before"`` each device sends ``x / n``, so the classification is of
    the divided values: the ``underflow`` count is how many nonzero gradient values
    were lost before any addition happened. With ``divide="after"`` the values are sent
    as they are. Compare the two at growing ``n`` to see pre-division's cost.

    Args:
      xs: the per-device values stacked along ``axis`` (``n = xs.shape[axis]``).
      wire_format: the format they are sent in.
      axis: the device axis.
      divide: ``"after"`` or ``"before"``.

    Returns:
      :class:`fpsim.ValueCounts` over all ``n`` contributions.
    """
    wire = get_format(wire_format)
    check_divide(divide)
    x = as_float_array(xs, wire)
    n = x.shape[axis]
    return value_counts(x / n if divide == "before" else x, wire)
