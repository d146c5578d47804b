"""The ``fpsim`` command: look inside number formats from the shell.

    fpsim explain 0.1 --format fp16     # bits, exact stored value, error, rounding modes
    fpsim explain 0x3c00 --format fp16  # decode a bit pattern
    fpsim explain 1e-8 --all            # one line per format
    fpsim explain 0.1 3 -7 957 -f mxfp8 # one block: amax, scale, each element's code
    fpsim formats                       # the table of predefined formats
    fpsim figures --outdir figures      # regenerate the figures
    fpsim demo --fast                   # train a small model in several formats
    fpsim demo lm --fast                # a small language model, one run per recipe
    fpsim demo lm --runs 'bf16,nvfp4*'  # only some of its runs

``main(argv)`` returns the exit status: 0 on success, 2 for bad input or output that
cannot be written (one line on stderr, no traceback). ``explain`` and ``formats``
import neither NumPy nor JAX, so they answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from fpsim import __version__
from fpsim.cli._explain import CliError, explain, explain_all, parse_value
from fpsim.formats import FORMATS, get_format

_CONVENTION = {
    "ieee": "±inf, NaN (IEEE)",
    "fn": "NaN only, no inf",
    "fnuz": "1 NaN, no inf, no -0",
    "none": "no inf, no NaN",
}
_CONVENTION_SHORT = {
    "ieee": "±inf, NaN",
    "fn": "NaN, no inf",
    "fnuz": "1 NaN, no -0",
    "none": "none",
}
DEMO_HELP = {
    "which": "mlp: an MLP on scikit-learn's digits in five formats (the default); lm: a "
    "character-level transformer on Shakespeare, one run per training recipe",
    "steps": "training steps per run (default 600, or 150 with --fast; lm: 300, or 80 "
    "with --fast)",
    "seed": "random seed for the data split, the weights and the batches, an integer "
    "from 0 to 2^32 - 1 (default 0)",
    "outdir": "directory for the demo's PNG figures; created if missing, checked "
    "before any training (default fpsim-demo; lm: fpsim-demo-lm)",
    "fast": "a quick run: 150 steps unless --steps is given (lm: one block, 80 steps, "
    "five of the runs unless --runs is given) (default off)",
    "runs": "lm only: the runs to train, comma-separated names or patterns matched "
    "case-insensitively, e.g. 'float32,fp16*,nvfp4*' (default: the twelve of the "
    "table; 'nvfp4*' adds the three NVFP4 ablations; an unknown name lists the valid "
    "ones)",
}


def _num(x: float) -> str:
    k = math.log2(x)
    if k.is_integer() and not 0 <= k <= 16:
        return f"2^{int(k)}"
    return str(int(x)) if x.is_integer() and x < 1e7 else f"{x:.4g}"


def formats_table(formats=FORMATS, wide: bool = False) -> str:
    """The ``fpsim formats`` table: 80 columns, or every column with ``wide``."""
    if wide:
        cols = (
            f"{'name':<12}{'bits':>4}{'E':>3}{'M':>3}{'bias':>5}  {'max':<11}"
            f"{'min normal':<12}{'min subnorm':<12}{'eps':<11}{'digits':>6}{'range':>6}"
            f"  {'inf/NaN':<21}ml_dtypes"
        )
    else:
        cols = (
            f"{'name':<12}{'E':>2}{'M':>3}{'bias':>5}  {'max':<10}"
            f"{'min norm':<9}{'min sub':<8}{'eps':<6}{'digits':>6}  inf/NaN"
        )
    lines = [cols, "-" * len(cols)]
    for f in formats:
        bits = f"{f.bits:>4}{f.exponent_bits:>3}" if wide else f"{f.exponent_bits:>2}"
        head = f"{f.name:<12}{bits}{f.mantissa_bits:>3}{f.bias:>5}  "
        if wide:
            lines.append(
                f"{head}{_num(f.max):<11}{_num(f.min_normal):<12}"
                f"{_num(f.min_subnormal):<12}{_num(f.eps):<11}"
                f"{f.decimal_digits:>6.2f}{f.dynamic_range:>6.0f}  "
                f"{_CONVENTION[f.convention]:<21}{f.dtype_name or '-'}"
            )
        else:
            lines.append(
                f"{head}{_num(f.max):<10}{_num(f.min_normal):<9}"
                f"{_num(f.min_subnormal):<8}{_num(f.eps):<6}{f.decimal_digits:>6.2f}  "
                f"{_CONVENTION_SHORT[f.convention]}"
            )
    lines += [
        "",
        "E, M: exponent and mantissa bits (plus 1 sign bit). eps: spacing just above 1.",
        "max: largest finite value. min norm(al), min sub(normal): smallest of each kind.",
        "digits: decimal digits of precision, (M + 1) log10(2).",
    ]
    if wide:
        lines += [
            "range: binades (factors of 2) from min subnormal to max.",
            "ml_dtypes: the NumPy type with these semantics.",
        ]
    else:
        lines.append(
            "fpsim formats --wide adds the range in binades and the ml_dtypes type."
        )
    return "\n".join(lines + ["", *block_formats_table()])


def block_formats_table() -> list[str]:
    """The block-scaled formats, with their storage cost per element."""
    from fpsim.blocks._format import BLOCK_FORMATS, TILE_FORMATS  # no JAX there

    cols = (
        f"{'block format':<18}{'element':<9}{'block':<9}{'scale':<7}{'mode':<7}bits/element"
    )
    lines = [cols, "-" * len(cols)]
    for b in BLOCK_FORMATS + TILE_FORMATS:
        block = "x".join(map(str, b.block_shape)) if b.block_shape else str(b.block_size)
        block = "tensor" if b.per_tensor else block
        extra = " + an FP32 tensor scale" if b.tensor_scale else ""
        lines.append(
            f"{b.name:<18}{str(b.element):<9}{block:<9}{b.scale.name:<7}"
            f"{b.scale_mode if b.scale.name != 'e4m3' else '-':<7}"
            f"{b.bits_per_element:g}{extra}"
        )
    lines.append(
        "bits/element: element bits + scale bits / block size (fpsim.get_block_format)."
    )
    return lines


def _block_format(name: str):
    """The block format called ``name``, or None when it names none."""
    from fpsim.blocks._format import _ALIASES  # plain Python, no JAX

    return _ALIASES.get(name.strip().lower())


def _cmd_explain(args) -> int:
    values = [parse_value(v) for v in args.value]
    if args.all:
        if len(values) > 1 or args.scale_mode:
            raise CliError("--all explains one VALUE in every element format")
        print(explain_all(values[0], wide=args.wide))
        return 0
    name = "fp16" if args.format is None else args.format
    bfmt = _block_format(name)
    if bfmt is not None:
        from fpsim.cli._explain_blocks import explain_blocks

        print(explain_blocks(values, bfmt, args.scale_mode))
        return 0
    fmt = get_format(name)  # unknown: the message lists element and block formats
    if args.scale_mode:
        raise CliError(f"--scale-mode is for block formats (mxfp8, ...), not {fmt.name}")
    if len(values) > 1:
        raise CliError(
            f"{fmt.name} is an element format: give one VALUE (several values are for "
            "a block format: --format mxfp8, mxfp4, nvfp4, ...)"
        )
    if fmt.convention == "fnu":  # E8M0: no sign, no zero; its own rounding rules
        from fpsim.cli._explain_blocks import explain_e8m0

        print(explain_e8m0(values[0]))
        return 0
    print(explain(values[0], fmt))
    return 0


def _cmd_formats(args) -> int:
    print(formats_table(wide=args.wide))
    return 0


def _cmd_figures(args) -> int:
    from fpsim.showcase.figures import write_figures

    for path in write_figures(args.outdir, only=args.only, slow=args.slow):
        print(path, flush=True)
    return 0


def _cmd_demo(args) -> int:
    if args.which == "lm":
        from fpsim.showcase import lm_demo as demo
    else:
        from fpsim.showcase import mlp_demo as demo

    kwargs = {"runs": args.runs} if args.runs is not None else {}
    if args.runs is not None and args.which != "lm":
        print("fpsim demo: error: --runs is for 'fpsim demo lm' only", file=sys.stderr)
        return 2
    return int(demo.run(steps=args.steps, seed=args.seed, outdir=args.outdir,
                        fast=args.fast, **kwargs) or 0)  # fmt: skip


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to {2**32 - 1}, got {text.strip()!r}"
        )
    return seed


def _steps(text: str) -> int:
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, got {text.strip()!r}"
        )
    return steps


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fpsim`` command."""
    parser = argparse.ArgumentParser(
        prog="fpsim",
        description="Look inside floating-point formats: bits, rounding, ranges, figures.",
    )
    parser.add_argument("--version", action="version", version=f"fpsim {__version__}")
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
        nargs="+",
        help="a decimal (0.1, -1e-8, 1/3), inf, nan, or a bit pattern (0x3c00, 0b0101); "
        "for a block format, several decimals (one block, padded with zeros)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--format",
        "-f",
        help="format name (default fp16), or a block format: mxfp8, "
        "mxfp6_e3m2, mxfp6_e2m3, mxfp4, mxint8, nvfp4, ..., or e8m0",
    )
    group.add_argument("--all", action="store_true", help="one line per predefined format")
    p.add_argument(
        "--wide", action="store_true", help="with --all: add the bit fields (122 columns)"
    )
    p.add_argument(
        "--scale-mode",
        choices=("floor", "ceil", "even", "rceil"),
        help="MX formats: how the E8M0 scale follows the amax (default: the format's, "
        "floor)",
    )
    p.set_defaults(run=_cmd_explain)
    p = sub.add_parser("formats", help="table of the predefined formats")
    p.add_argument(
        "--wide", action="store_true", help="every column, ml_dtypes too (119 columns)"
    )
    p.set_defaults(run=_cmd_formats)
    p = sub.add_parser("figures", help="regenerate the figures (PNG)")
    p.add_argument("--outdir", default="figures", help="where to write (default figures)")
    p.add_argument("--only", nargs="*", metavar="NAME", help="only these file names")
    p.add_argument(
        "--slow",
        action="store_true",
        help="also the figures that train for minutes (lm_training_curves.png: the "
        "language-model demo, fpsim demo lm)",
    )
    p.set_defaults(run=_cmd_figures)
    p = sub.add_parser(
        "demo",
        help="train a small model in several formats",
        description="mlp (the default): train a 64-128-128-128-10 MLP on scikit-learn's "
        "digits five ways (float32, pure FP16, FP16 with loss scaling, BF16, FP8), print "
        "a table and write four figures. lm: train a small character-level transformer "
        "on Shakespeare once per training recipe (float32, BF16, FP16 without loss "
        "scaling, with it and with Zhao et al.'s adaptive scales, FP8 with and without "
        "scaling; today's GEMM recipes FP8 current and blockwise scaling, MXFP8, NVFP4, "
        "naive MXFP4; --runs 'nvfp4*' adds NVFP4 with each ingredient off), print a "
        "table and write figures.",
    )
    p.add_argument(
        "which", nargs="?", choices=("mlp", "lm"), default="mlp", help=DEMO_HELP["which"]
    )
    p.add_argument("--steps", type=_steps, default=None, help=DEMO_HELP["steps"])
    p.add_argument("--seed", type=_seed, default=0, help=DEMO_HELP["seed"])
    p.add_argument("--outdir", default=None, help=DEMO_HELP["outdir"])
    p.add_argument("--fast", action="store_true", help=DEMO_HELP["fast"])
    p.add_argument("--runs", default=None, metavar="NAMES", help=DEMO_HELP["runs"])
    p.set_defaults(run=_cmd_demo)
    parser.subcommands = sub.choices  # for usage errors of one command
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


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the exit flush cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the ``fpsim`` command; returns the exit status.

    0 on success (and when the reader of the output goes away: ``| head``), 2 for bad
    input or output that cannot be written (one line on stderr, no traceback).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(_protect_negative_values(argv))
        if extra:  # e.g. `fpsim explain 0.1 0.2`: the command's usage, not the top one
            parser.subcommands[args.command].error(
                f"unrecognized arguments: {' '.join(a.strip() for a in extra)}"
            )
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return int(e.code or 0)
    try:
        status = args.run(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:  # `fpsim explain ... | head`: the reader has all it wants
        _quiet_stdout()
        return 0
    except OSError as e:
        _quiet_stdout()
        print(f"fpsim {args.command}: error: cannot write: {e}", file=sys.stderr)
        return 2
    except (CliError, ValueError, TypeError) as e:
        print(f"fpsim {args.command}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["CliError", "build_parser", "formats_table", "main"]
