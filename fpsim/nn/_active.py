"""The stack of active :class:`~fpsim.nn._context.Run` objects (one per thread).

Kept apart so that the Linen interceptor and the NNX hooks can find the active run
without importing the context that installs them (no import circle).
"""

from __future__ import annotations

import threading
from typing import Any

_STACK = threading.local()


def current() -> Any:
    """The innermost active Run, or None."""
    stack = getattr(_STACK, "runs", None)
    return stack[-1] if stack else None


def push(run: Any) -> None:
    stack = getattr(_STACK, "runs", None)
    if stack is None:
        stack = _STACK.runs = []
    stack.append(run)


def pop() -> None:
    _STACK.runs.pop()
