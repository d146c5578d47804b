"""Linen: the policy reaches every layer through ``nn.intercept_methods``.

An interceptor is called around every method call of every Linen module (AQT quantizes
models the same way). fpsim's interceptor lets all calls through untouched except the
``__call__`` of the selected leaf layers (``Dense``, ``Conv``, ``LayerNorm``, ...), which
it hands to the active :class:`~fpsim.nn._context.Run`. The model is not edited.
"""

from __future__ import annotations

from fpsim.nn._active import current


def module_path(module) -> str:
    """``"block/Dense_0"``: the Linen module's path in its model."""
    path = getattr(module, "path", None)
    if path is None:  # unbound or very old Flax
        scope = getattr(module, "scope", None)
        path = getattr(scope, "path", ()) if scope is not None else ()
    return "/".join(str(p) for p in path)


def interceptor(next_fun, args, kwargs, context):
    """The ``nn.intercept_methods`` hook; inactive outside :func:`fpsim.nn.apply` & co."""
    run = current()
    if run is None or context.method_name != "__call__" or not run.selects(context.module):
        return next_fun(*args, **kwargs)
    module = context.module
    return run.layer(
        module_path(module), type(module).__name__, next_fun, args, kwargs, module=module
    )
