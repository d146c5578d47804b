"""Low-precision gradient communication: an all-reduce carried out in a narrow format.

Data-parallel training computes a gradient on every device from its shard of the batch,
then *all-reduces* them: every device ends with the same sum (or mean). Real systems
send the gradients in a narrow format (FP16, BF16, even FP8) to halve the traffic, and
the adds of the reduction happen in that format too. Three things then decide the
numbers, and this package simulates each of them bit for bit:

**The wire format.** Each device rounds its contribution to ``wire_format`` (round to
nearest) before sending it. Values below half the format's smallest subnormal become 0.

**The order of the additions.** Floating-point addition is not associative, so the
topology of the collective is part of the numerics. The orders are those of every
fpsim reduction (:data:`fpsim.numerics.ORDERS`, described in
``fpsim.numerics._accumulate``), over the device axis: ``"sequential"`` is a chain
through the devices in device order, ``"ring"`` is NCCL's ring all-reduce (each chunk
of the tensor summed sequentially, starting at a different device),
``"pairwise"`` is a tree all-reduce, ``"chunked"`` and ``"kahan"`` are what their
names say, and ``"native"`` is a float32 reduction buffer rounded once at the end
(what "accumulate in higher precision" buys). The first contribution enters the chain
as it was sent; every addition is the exact sum rounded once to ``fmt``
(:func:`fpsim.arith.add_round`), so directed and stochastic rounding are exact too, for
formats of at most 21 (directed: 22; stochastic: 23) mantissa bits. One caveat: XLA on
CPU flushes float32 subnormals, so BF16 sums below ``2**-126`` become 0.

**Stochastic rounding in the reduction.** With ``rounding="stochastic"`` every addition
rounds up with probability (exact remainder) / (grid spacing), so the reduction is
unbiased. The random bits must be the same on every device and deterministic, so they
are derived from one shared ``key`` by position, never by device, exactly as in a
single-device sum (``reduction_key`` in ``fpsim.numerics._accumulate``): the addition
of device ``s``'s value in a sequential chain uses ``derive(key, 0, s)``, step ``s`` of
chunk ``k`` of the ring ``derive(key, 40, s, k)``, level ``l`` of the tree
``derive(key, 20, l)``, the one rounding of "native" ``derive(key, 30)``.

**Dividing by the device count before or after.** A mean all-reduce divides by ``n``.
``divide="after"`` sends ``x_d``, sums, and rounds ``sum / n`` to ``fmt`` once.
``divide="before"`` (PyTorch DDP's pre-division, which keeps the sum from overflowing)
sends ``x_d / n``: every contribution shrinks by ``n`` *before* it is rounded to the
wire format, so small gradients fall below the format's smallest subnormal and are lost:
the underflow grows with the device count. :func:`wire_counts` counts it.

Modules, one job each: ``_checks`` (arguments; what a device sends and the final
division), ``_collective`` (:func:`lp_reduce`, the single-device twin that simulates any
number of devices, and :func:`lp_all_reduce`, the collective inside
:func:`jax.shard_map`; bitwise equal for the same inputs), ``_wire``
(:func:`wire_counts`). The data-parallel training helper is
:func:`fpsim.nn.data_parallel_grads`.
"""

from fpsim.comm._checks import DIVIDE_CHOICES as DIVIDE_CHOICES
from fpsim.comm._collective import lp_all_reduce as lp_all_reduce
from fpsim.comm._collective import lp_reduce as lp_reduce
from fpsim.comm._wire import wire_counts as wire_counts
from fpsim.numerics._accumulate import ORDERS as ORDERS

__all__ = ["DIVIDE_CHOICES", "ORDERS", "lp_all_reduce", "lp_reduce", "wire_counts"]
