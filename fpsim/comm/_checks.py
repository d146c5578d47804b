"""Argument checks of the all-reduce, and the two steps around its additions."""

from __future__ import annotations

from fpsim import _bits
from fpsim.formats import Format, get_format
from fpsim.numerics._accumulate import ORDERS, check_reduction, resolve_order
from fpsim.rounding import FormatLike, quantize

#: The valid ``divide`` values: when a mean divides by the device count.
DIVIDE_CHOICES: tuple[str, ...] = ("after", "before")


def check_divide(divide: str) -> None:
    if divide not in DIVIDE_CHOICES:
        raise ValueError(
            f"unknown divide {divide!r}; valid: 'after' (sum, then divide by the device "
            "count) or 'before' (each device divides, then sends)"
        )


def check_args(fmt: FormatLike, wire_format: FormatLike | None, order: str, chunk: int,
               rounding: str, key, divide: str,
               c: _bits.Carrier = _bits.F32) -> tuple[Format, Format, str]:  # fmt: skip
    """``(fmt, wire, order)`` resolved, or a clear error naming the valid choices."""
    fmt = get_format(fmt)
    wire = fmt if wire_format is None else get_format(wire_format)
    order = resolve_order(order, fmt, c, valid=ORDERS, rounding=rounding)
    check_reduction(fmt, order, chunk, rounding, key, c)
    check_divide(divide)
    return fmt, wire, order


def contribution(x, n: int, wire: Format, mean: bool, divide: str):
    """What one device sends: its value (divided by n first, if so) on the wire grid."""
    if mean and divide == "before":
        x = x / n
    return quantize(x, wire)


def finish(total, n: int, fmt: Format, mean: bool, divide: str):
    """The mean's one division (after the sum), rounded to ``fmt``."""
    if mean and divide == "after":
        return quantize(total / n, fmt)
    return total
