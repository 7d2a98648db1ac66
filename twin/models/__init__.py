"""Model kinds and their registry.

Built-in kinds register themselves here; more kinds plug in through the Python entry-point group
`tandem.models` (`name = "package.module:ModelClass"`, a `TwinModel` subclass).
"""

from __future__ import annotations

from importlib.metadata import entry_points

from twin.models.base import DTYPE, TwinModel, flat_parameters, load_flat, unflatten

_REGISTRY: dict[str, type[TwinModel]] = {}
_ENTRY_POINTS_LOADED = False


def register(cls: type[TwinModel]) -> type[TwinModel]:
    """Class decorator: make `cls` available under `cls.kind`."""
    assert issubclass(cls, TwinModel) and getattr(cls, "kind", None), "needs a TwinModel.kind"
    _REGISTRY[cls.kind] = cls
    return cls


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group="tandem.models"):
        cls = ep.load()
        if ep.name != getattr(cls, "kind", None):
            raise TypeError(f"entry point {ep.name!r} loads a model whose kind is {cls.kind!r}")
        register(cls)


def model_kinds() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def model_class(kind: str) -> type[TwinModel]:
    _load_entry_points()
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise KeyError(f"unknown model kind {kind!r}") from None


from twin.models import arx, mlp, physical  # noqa: E402,F401  (registers the built-in kinds)

__all__ = [
    "DTYPE",
    "TwinModel",
    "flat_parameters",
    "load_flat",
    "model_class",
    "model_kinds",
    "register",
    "unflatten",
]
