"""The ``fpsim`` command: look inside number formats from the shell.

    fpsim explain 0.1 --format fp16     # bits, exact stored value, error, rounding modes
    fpsim explain 0x3c00 --format fp16  # decode a bit pattern
    fpsim explain 1e-8 --all            # one line per format
    fpsim formats                       # the table of predefined formats
    fpsim figures --outdir figures      # regenerate the figures
    fpsim demo --fast                   # train a small model in several formats

``main(argv)`` returns the exit status: 0 on success, 2 for bad input (one line on
stderr, no traceback), 1 when a command cannot run (a missing optional part).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys

from fpsim.cli._explain import CliError, explain, explain_all, parse_value
from fpsim.formats import FORMATS, get_format

_CONVENTION = {
    "ieee": "±inf, NaN (IEEE)",
    "fn": "NaN only, no inf",
    "fnuz": "1 NaN, no inf, no -0",
    "none": "no inf, no NaN",
}


def _num(x: float) -> str:
    k = math.log2(x)
    if k.is_integer() and not 0 <= k <= 16:
        return f"2^{int(k)}"
    return str(int(x)) if x.is_integer() and x < 1e7 else f"{x:.4g}"


def formats_table(formats=FORMATS) -> str:
    """The ``fpsim formats`` table."""
    cols = (
        f"{'name':<12}{'bits':>4}{'E':>3}{'M':>3}{'bias':>5}  {'max':<11}{'min normal':<12}"
        f"{'min subnorm':<12}{'eps':<11}{'digits':>6}{'range':>6}  {'inf/NaN':<21}ml_dtypes"
    )
    lines = [cols, "-" * len(cols)]
    for f in formats:
        lines.append(
            f"{f.name:<12}{f.bits:>4}{f.exponent_bits:>3}{f.mantissa_bits:>3}{f.bias:>5}  "
            f"{_num(f.max):<11}{_num(f.min_normal):<12}{_num(f.min_subnormal):<12}"
            f"{_num(f.eps):<11}"
            f"{f.decimal_digits:>6.2f}{f.dynamic_range:>6.0f}  "
            f"{_CONVENTION[f.convention]:<21}{f.dtype_name or '-'}"
        )
    lines += [
        "",
        "E, M: exponent and mantissa bits (plus 1 sign bit). eps: spacing just above 1.",
        "digits: decimal digits of precision, (M + 1) log10(2). range: binades (factors",
        "of 2) from min subnormal to max. ml_dtypes: the NumPy type with these semantics.",
    ]
    return "\n".join(lines)


def _cmd_explain(args) -> int:
    value = parse_value(args.value)
    if args.all:
        print(explain_all(value))
        return 0
    fmt = get_format(args.format or "fp16")
    print(explain(value, fmt))
    return 0


def _cmd_formats(args) -> int:
    print(formats_table())
    return 0


def _cmd_figures(args) -> int:
    from fpsim.figures import write_figures

    for path in write_figures(args.outdir, only=args.only):
        print(path)
    return 0


def _cmd_demo(args) -> int:
    if importlib.util.find_spec("fpsim.demo") is None:
        print(
            "fpsim: the demo is not available yet (fpsim/demo.py is missing)",
            file=sys.stderr,
        )
        return 1
    demo = importlib.import_module("fpsim.demo")
    if hasattr(demo, "run"):
        status = demo.run(
            steps=args.steps, seed=args.seed, outdir=args.outdir, fast=args.fast
        )
    else:
        status = demo.main(args)
    return int(status or 0)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fpsim`` command."""
    parser = argparse.ArgumentParser(
        prog="fpsim",
        description="Look inside floating-point formats: bits, rounding, ranges, figures.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "explain",
        help="show how a value is stored in a format",
        description="Show a value's bits, the exact value stored, the rounding error, "
        "its neighbours and what each rounding mode gives.",
    )
    p.add_argument(
        "value",
        metavar="VALUE",
        help="a decimal (0.1, -1e-8, 1/3), inf, nan, or a bit pattern (0x3c00, 0b0101)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument("--format", "-f", help="format name (default fp16)")
    group.add_argument("--all", action="store_true", help="one line per predefined format")
    p.set_defaults(run=_cmd_explain)
    p = sub.add_parser("formats", help="table of the predefined formats")
    p.set_defaults(run=_cmd_formats)
    p = sub.add_parser("figures", help="regenerate the figures (PNG)")
    p.add_argument("--outdir", default="figures", help="where to write (default figures)")
    p.add_argument("--only", nargs="*", metavar="NAME", help="only these file names")
    p.set_defaults(run=_cmd_figures)
    p = sub.add_parser("demo", help="train a small model in several formats")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--outdir", default=None, help="where to write the demo's figures")
    p.add_argument("--fast", action="store_true", help="a quick, small run")
    p.set_defaults(run=_cmd_demo)
    return parser


def _protect_negative_values(argv: list[str]) -> list[str]:
    """Let VALUE be ``-1e-8`` or ``-inf``: argparse would take them for options."""
    out = []
    for a in argv:
        if a.startswith("-") and len(a) > 1 and not a.startswith("--"):
            try:
                parse_value(a)
                a = " " + a  # argparse treats an argument with a space as positional
            except CliError:
                pass
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the ``fpsim`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(_protect_negative_values(argv))
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    try:
        return args.run(args)
    except (CliError, ValueError, TypeError) as e:
        print(f"fpsim {args.command}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["CliError", "build_parser", "formats_table", "main"]
