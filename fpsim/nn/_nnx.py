"""NNX: the policy reaches every layer through its ``__call__``.

NNX has no method interceptors. Its own hook, ``dot_general`` (set with
``nnx.with_attributes``), sees only the matrix product: not the bias add, not a
LayerNorm. :func:`instrument` therefore wraps the *call* of each selected layer instead:
it copies the model (``nnx.clone``) and gives each selected layer a subclass of its own
class whose ``__call__`` passes through the active policy. Parameters, paths and the
graph structure are unchanged; outside :func:`fpsim.nn.apply` and the training helpers
the layers behave exactly as before.

:func:`quantized_dot_general` is the lighter alternative when only the matrix products
should be rounded; it accepts and forwards the extra keyword arguments that NNX passes
(``out_sharding``, ``preferred_element_type``).
"""

from __future__ import annotations

import functools

from fpsim.nn._active import current
from fpsim.nn._context import LAYER_NAMES


@functools.cache
def _hooked(cls):
    def __call__(self, *args, **kwargs):
        run = current()
        if run is None:
            return cls.__call__(self, *args, **kwargs)
        path = getattr(self, "_fpsim_path", "")
        return run.layer(path, cls.__name__, lambda *a, **k: cls.__call__(self, *a, **k),
                         args, kwargs, module=self)  # fmt: skip

    return type(
        cls.__name__,
        (cls,),
        {
            "__call__": __call__,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_fpsim_base": cls,
        },
    )


def instrument(model, *, layers: tuple[str, ...] = LAYER_NAMES):
    """A copy of an NNX ``model`` whose leaf layers obey :mod:`fpsim.nn` policies.

    Args:
      model: an ``nnx.Module``; it is not modified.
      layers: class names of the layers to wrap (default: Linear, Conv, LayerNorm, ...).

    Returns:
      The copy. Use it like the original; inside :func:`fpsim.nn.apply`,
      :func:`fpsim.nn.value_and_grad` or :func:`fpsim.nn.make_train_step` its layers
      round their inputs, outputs and gradients as the policy says.
    """
    from flax import nnx

    copy = nnx.clone(model)
    for path, mod in nnx.iter_modules(copy):
        cls = type(mod)
        base = getattr(cls, "_fpsim_base", cls)
        if any(c.__name__ in layers for c in base.__mro__):
            if base is cls:
                mod.__class__ = _hooked(cls)
            object.__setattr__(mod, "_fpsim_path", "/".join(str(p) for p in path))
    return copy


def is_instrumented(model) -> bool:
    """Whether ``model`` (an NNX module) went through :func:`instrument`."""
    from flax import nnx

    return any(hasattr(type(m), "_fpsim_base") for _, m in nnx.iter_modules(model))
