"""Start-up time of the ``fpsim`` command and of ``import fpsim``, against bare Python.

Run: python benchmarks/cli.py [--repeats 15]

Each command runs as a fresh subprocess (as a user types it); every figure is the median
of --repeats runs, all measured in this one run, so the ratios compare like with like.
Goals (issue 13): ``fpsim explain``, ``fpsim formats`` and ``fpsim --help`` answer in
under 100 ms; ``import fpsim`` within 1.15x of ``import jax`` (it is far below: the top
level loads on first use and imports no JAX).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

CLI = "import sys; from fpsim.cli import main; sys.exit(main(sys.argv[1:]))"
CASES = {
    "python -c pass": ["-c", "pass"],
    "import fpsim": ["-c", "import fpsim"],
    "import jax": ["-c", "import jax"],
    "fpsim explain 0.1 --format fp16": ["-c", CLI, "explain", "0.1", "--format", "fp16"],
    "fpsim formats": ["-c", CLI, "formats"],
    "fpsim --help": ["-c", CLI, "--help"],
    "fpsim explain 1e-8 --all": ["-c", CLI, "explain", "1e-8", "--all"],
}


def time_once(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"python {platform.python_version()} on {cpu}")
    times = {name: [] for name in CASES}
    for _ in range(args.repeats):  # interleaved, so that load drifts hit every case
        for name, argv in CASES.items():
            times[name].append(time_once(argv))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    base, jax_ms = med["python -c pass"], med["import jax"]
    print(f"{'command':34} {'median':>9} {'- python':>9} {'/ python':>9} {'/ jax':>7}")
    for name, t in med.items():
        print(
            f"{name:34} {1e3 * t:7.1f}ms {1e3 * (t - base):7.1f}ms "
            f"{t / base:8.2f}x {t / jax_ms:6.2f}x"
        )
    print(f"(median of {args.repeats} fresh processes each; '- python': beyond start-up)")


if __name__ == "__main__":
    main()
