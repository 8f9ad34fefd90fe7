"""Dotted keys over nested config dicts (``train.attack.eps``): the one flatten / get / set of hyporay.
Dependency-free, so light modules (provenance, the engine's definitions) can use it."""
from __future__ import annotations

from typing import Any


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lam": 1}}`` -> ``{"train.lam": 1}``; an empty dict stays a value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def get(d: dict, dotted: str) -> Any:
    """The value at ``dotted`` in nested dicts, or None."""
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def put(d: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` in nested dicts, creating the dicts on the way."""
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
