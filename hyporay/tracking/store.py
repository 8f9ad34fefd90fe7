"""The MLflow store hyporay writes to and reads from: which one (default ``sqlite:///<abs cwd>/mlflow.db``, artefacts
in ``<abs cwd>/mlartifacts``; MLflow's file store is refused since 3.13; a server is ``http://host:port``), whether it
answers, one client per store and process, retries on a locked SQLite file, and ``open_store``: the one place a
store and its experiment are created or found."""
from __future__ import annotations

import functools
import time
import urllib.error
import urllib.request
from pathlib import Path


class TrackingError(ValueError):
    """The tracking store cannot be used (one line: which URI and why)."""


def default_tracking_uri(workdir: str | Path = ".") -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artefacts beside a local SQLite store; None (the server's own choice) for a server."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail early, in one line, when a tracking server does not answer or a SQLite path is unusable."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (user-given URI)
                if resp.status != 200:
                    raise TrackingError(f"tracking-uri: {tracking_uri} answered HTTP {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking-uri: cannot reach {tracking_uri} ({reason}); start it with "
                                "`mlflow server --host 127.0.0.1 --port 5000` (make ui) or pass another "
                                "--tracking-uri") from None
    elif tracking_uri.startswith("sqlite:///"):
        parent = Path(tracking_uri[len("sqlite:///"):]).parent
        if not parent.is_dir():
            raise TrackingError(f"tracking-uri: directory {parent} does not exist")
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        raise TrackingError(f"tracking-uri: {tracking_uri!r} is a file store, refused by MLflow >= 3.13; use "
                            "sqlite:///ABS/PATH/mlflow.db or an http:// server")


@functools.lru_cache(maxsize=8)
def client(tracking_uri: str):
    """One ``MlflowClient`` per store and process (a Ray worker reused for many trials opens its store once)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def retry(fn, *args, attempts: int = 8, **kwargs):
    """Call ``fn``; retry on SQLite 'database is locked' (several trials write one SQLite file)."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only lock errors are retried, others re-raised
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * (2 ** i))
    raise AssertionError("unreachable")


def _store_lock(tracking_uri: str):
    """A file lock beside a SQLite store (a no-op context for a server, which serialises itself)."""
    import contextlib

    from filelock import FileLock

    if tracking_uri.startswith("sqlite:///"):
        return FileLock(tracking_uri[len("sqlite:///"):] + ".lock", timeout=300)
    return contextlib.nullcontext()


def open_store(tracking_uri: str, name: str) -> str:
    """THE store opener: the store (a fresh SQLite file gets its schema) and the experiment ``name`` in it, created
    or found; returns the experiment id. Marks it as a model-training experiment.

    Under a file lock beside a SQLite store: two sweeps started at once on a fresh store would otherwise both
    create its schema (``table latest_metrics already exists``) or the same experiment.
    """
    with _store_lock(tracking_uri):
        c = client(tracking_uri)
        exp = retry(c.get_experiment_by_name, name)
        if exp is None:
            try:
                return c.create_experiment(name, artifact_location=default_artifact_location(tracking_uri),
                                           tags={"mlflow.experimentKind": "custom_model_development"})
            except Exception as exc:  # noqa: BLE001 - a server: another driver created it first
                exp = retry(c.get_experiment_by_name, name)
                if exp is None:
                    raise TrackingError(f"experiment: cannot create {name!r} in {tracking_uri} "
                                        f"({str(exc).splitlines()[0][:160]})") from None
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment: {name!r} is deleted in {tracking_uri}; restore it or pick another "
                            "name")
    return exp.experiment_id
