"""The MLflow store hyporay writes to and reads from: which one (default ``sqlite:///<abs cwd>/mlflow.db``, artefacts
in ``<abs cwd>/mlartifacts``; MLflow's file store is refused since 3.13; a server is ``http://host:port``), whether it
answers, one client per store and process, retries, and ``open_store``: the one place a store and its experiment
are created or found.

Nothing is lost when the store is busy or down (docs/reliability.md):
- a fresh SQLite store appears only when whole (``hyporay.tracking.sqlite``): no reader ever opens a half-made one;
- ``retry`` waits out a locked SQLite file, and a tracking server that does not answer (down, restarting, 5xx) for
  up to ``patience()`` seconds (``--tracking-patience``, HYPORAY_TRACKING_PATIENCE, default 600), then raises
  ``TrackingUnavailable`` (one line); MLflow's own HTTP retries are turned off so that this is the one limit;
- ``create_once``: a run is created at most once even when the answer to a create is lost in an outage.
"""
from __future__ import annotations

import functools
import math
import os
import random
import time
import urllib.error
import urllib.request
from pathlib import Path

PATIENCE_ENV = "HYPORAY_TRACKING_PATIENCE"
DEFAULT_PATIENCE = 600.0
STORE_WAIT = 120.0  # seconds a sweep waits for a store another program is creating in place


class TrackingError(ValueError):
    """The tracking store cannot be used (one line: which URI and why)."""


class TrackingUnavailable(TrackingError):
    """The tracking server did not answer for longer than the stated limit (one line: which server, how long, what
    to do); a ``TrackingError``, so a command reports it in that one line, without a traceback."""


_patience: float | None = None


def patience() -> float:
    """Seconds a read or write waits for a tracking server that does not answer: ``set_patience``'s value, else
    HYPORAY_TRACKING_PATIENCE, else 600."""
    if _patience is not None:
        return _patience
    raw = os.environ.get(PATIENCE_ENV)
    if not raw:
        return DEFAULT_PATIENCE
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):  # nan would never end a wait, inf never stop one
        raise TrackingError(f"{PATIENCE_ENV}: must be a number of seconds > 0, got {raw!r}")
    return seconds


def set_patience(seconds: float | None) -> None:
    """This process's limit (a Ray worker gets the driver's, whatever its environment)."""
    global _patience
    _patience = None if seconds is None else float(seconds)


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
    """One ``MlflowClient`` per store and process (a Ray worker reused for many trials opens its store once). For a
    server, MLflow's own HTTP retries are off unless the environment sets them: ``retry`` is the one limit, and a
    create whose answer was lost is never sent twice behind hyporay's back (``create_once``)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return MlflowClient(tracking_uri=tracking_uri)


# what a server that is down, restarting or overloaded answers, as MLflow's REST client words it
_UNREACHABLE = ("connection refused", "connection aborted", "connection reset",
                "remotedisconnected", "max retries exceeded", "read timed out", "timed out", "temporarily unavailable",
                "bad gateway", "service unavailable", "gateway timeout", "too many requests")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the tracking server did not answer (and a later try may work), not that it refused."""
    try:
        import requests

        if isinstance(exc, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout)):
            return True
    except ImportError:  # pragma: no cover - requests comes with mlflow
        pass
    text = str(exc).lower()
    if "api request to" in text:  # MLflow: "API request to <url> failed with exception ..." or "... error code 503"
        return "failed with exception" in text or any(f"error code {c}" in text for c in (429, 500, 502, 503, 504))
    return any(s in text for s in _UNREACHABLE)


def retry(fn, *args, attempts: int = 8, **kwargs):
    """Call ``fn``, a read or write of the store. A locked SQLite file (several trials write one) is retried
    ``attempts`` times; a tracking server that does not answer is retried (0.5 s, doubling up to 15 s) until it has
    not answered for ``patience()`` seconds, then ``TrackingUnavailable`` (one line). Other errors are raised."""
    locked = down = 0
    since = None
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - only lock and outage errors are retried, others re-raised
            if unreachable(exc):
                now, limit = time.monotonic(), patience()
                since = now if since is None else since
                if now - since >= limit:
                    raise TrackingUnavailable(_outage_line(exc, limit)) from None
                time.sleep(min(15.0 * random.uniform(0.8, 1.0), 0.5 * 2 ** down, since + limit - now))
                down += 1
                continue
            if "locked" not in str(exc).lower() or locked == attempts - 1:
                raise
            time.sleep(0.2 * (2 ** locked))
            locked += 1


def _outage_line(exc: BaseException, limit: float) -> str:
    import re

    url = re.search(r"https?://[^\s/]+", str(exc))
    where = url.group(0) if url else "the tracking server"
    return (f"tracking-uri: {where} did not answer for {limit:.0f} s (limit: --tracking-patience / {PATIENCE_ENV}); "
            "stopped here, nothing logged is lost: --resume continues once the server answers")


def create_once(create, find):
    """``create()`` (a run) under ``retry``, but never twice: after a try whose answer was lost (the server went
    down mid-request, so the run may exist), ``find()`` runs first and its run, if any, is the answer."""
    tried = False

    def attempt():
        nonlocal tried
        if tried:
            found = find()
            if found is not None:
                return found
        tried = True
        return create()

    return retry(attempt)


def _store_lock(tracking_uri: str):
    """A file lock beside a SQLite store (a no-op context for a server, which serialises itself)."""
    import contextlib

    from filelock import FileLock

    if tracking_uri.startswith("sqlite:///"):
        return FileLock(tracking_uri[len("sqlite:///"):] + ".lock", timeout=300)
    return contextlib.nullcontext()


def sqlite_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


# what MLflow raises when it opens a store that another process is creating or migrating
_MIGRATING = ("already exists", "no such table", "_alembic_tmp", "alembic_version", "online migration")


def _first_read(c, name: str, deadline: float):
    """The experiment ``name`` (or None): the first read of a store opened in this process. A store that another
    program is still migrating raises schema errors: retried until ``deadline``, never fatal before."""
    while True:
        try:
            return retry(c.get_experiment_by_name, name)
        except Exception as exc:  # noqa: BLE001 - only schema errors of a store being made are retried
            if not any(m in str(exc).lower() for m in _MIGRATING) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def open_store(tracking_uri: str, name: str, wait: float = STORE_WAIT) -> str:
    """THE store opener: the store (a fresh SQLite file is created whole, ``hyporay.tracking.sqlite``) and the
    experiment ``name`` in it, created or found; returns the experiment id. Marks it as a model-training experiment.

    Under a file lock beside a SQLite store: two sweeps started at once on a fresh store create it once and the
    experiment once. A store another program (MLflow itself) is creating in place is waited for, up to ``wait``
    seconds, and a schema error met while it finishes is retried, not fatal.
    """
    from hyporay.tracking import sqlite

    db = sqlite_path(tracking_uri)
    with _store_lock(tracking_uri):
        if db is not None:
            if not db.exists():
                sqlite.create(db, default_artifact_location(tracking_uri))
            sqlite.wait_whole(db, wait)
        c = client(tracking_uri)
        exp = _first_read(c, name, time.monotonic() + wait)
        if exp is None:
            try:
                return retry(c.create_experiment, name, artifact_location=default_artifact_location(tracking_uri),
                             tags={"mlflow.experimentKind": "custom_model_development"})
            except TrackingUnavailable:  # the server is down: already waited the whole patience once
                raise
            except Exception as exc:  # noqa: BLE001 - a server: another driver created it first
                exp = retry(c.get_experiment_by_name, name)
                if exp is None:
                    raise TrackingError(f"experiment: cannot create {name!r} in {tracking_uri} "
                                        f"({str(exc).splitlines()[0][:160]})") from None
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment: {name!r} is deleted in {tracking_uri}; restore it or pick another "
                            "name")
    return exp.experiment_id
