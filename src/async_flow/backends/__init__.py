"""Backends: where a layer's function runs. One small module each, chosen by name.

``"async"`` and ``"thread"`` are always available; ``"process"`` and ``"ray"`` load their module
(and, for Ray, the optional dependency) only when a layer asks for them.
"""

from __future__ import annotations

import importlib

from ._base import Backend

__all__ = ("Backend", "get_backend")

_MODULES: dict[str, tuple[str, str, str | None]] = {
    # name: (module, class, extra that provides its dependencies)
    "async": ("._async", "AsyncBackend", None),
    "thread": ("._thread", "ThreadBackend", None),
    "process": ("._process", "ProcessBackend", None),
    "ray": ("._ray", "RayBackend", "ray"),
}


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``, imported on first use."""
    try:
        module_name, class_name, extra = _MODULES[name]
    except KeyError:
        valid = ", ".join(repr(n) for n in _MODULES)
        raise ValueError(f"unknown backend {name!r}; valid: {valid}") from None
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        if extra is not None and exc.name is not None and not exc.name.startswith("async_flow"):
            raise ModuleNotFoundError(
                f"backend {name!r} needs the {extra!r} extra: pip install 'async_flow[{extra}]'"
            ) from exc
        raise
    cls: type[Backend] = getattr(module, class_name)
    return cls
