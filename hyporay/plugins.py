"""Your own data sets and models in every process: modules that call ``register_dataset`` / ``register_model``.

A trial config lists them in ``imports`` (a module name, ``package.module``, or a ``.py`` file path); validating
the config imports them first, in the driver and in every Ray worker, so the names they register are known
wherever the trial runs. A sweep fills ``imports`` by itself for every registered name its trials use that was
defined outside hyporay (``defining_module``): a data set registered in the sweep's own script reaches the
workers without any flag.

A file path must exist at the same path on every node (inside the project, which ``ray up`` copies to each
node, or on shared storage); a module name must be importable there (installed).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

_LOADED: dict[str, object] = {}


def is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _already_loaded(path: Path):
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve() == path:
            return mod
    return None


def import_plugin(spec: str):
    """Import one entry of ``imports`` (once per process); ValueError (one line, naming it) when it fails."""
    spec = str(spec).strip()
    if spec in _LOADED:
        return _LOADED[spec]
    try:
        if is_path(spec):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise ValueError(f"imports: no file {spec}")
            mod = _already_loaded(path)  # e.g. the sweep's own script, running as __main__
            if mod is None:
                name = f"hyporay_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
                loader_spec = importlib.util.spec_from_file_location(name, path)
                mod = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = mod
                try:
                    loader_spec.loader.exec_module(mod)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
        else:
            mod = importlib.import_module(spec)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any error of the user's module becomes one line naming it
        text = " ".join(str(exc).split())[:160]
        raise ValueError(f"imports: cannot import {spec} ({type(exc).__name__}: {text})") from None
    _LOADED[spec] = mod
    return mod


def import_plugins(specs: Iterable[str]) -> None:
    for s in specs or ():
        import_plugin(s)


def defining_module(fn: Callable) -> str | None:
    """What a worker must import to have ``fn`` registered: None for hyporay's own, the module name for a module
    of a package, else the absolute path of its file (a script or a single-file module, possibly ``__main__``)."""
    name = getattr(fn, "__module__", None) or ""
    if name == "hyporay" or name.startswith("hyporay."):
        return None
    mod = sys.modules.get(name)
    file = getattr(mod, "__file__", None)
    if mod is not None and getattr(mod, "__package__", None) and name != "__main__":
        return name
    if file:
        return str(Path(file).resolve())
    return name or None


def needed_for(trial: dict) -> list[str]:
    """``defining_module`` of the data set and models a trial config names (none for hyporay's own)."""
    from hyporay.data import DATASETS
    from hyporay.models import MODELS

    names = [(DATASETS, (trial.get("data") or {}).get("name")), (MODELS, (trial.get("model") or {}).get("name")),
             (MODELS, (trial.get("variant") or {}).get("source_model"))]
    out: list[str] = []
    for registry, name in names:
        if name in registry:
            m = defining_module(registry[name])
            if m is not None and m not in out:
                out.append(m)
    return out
