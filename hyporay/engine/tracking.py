"""MLflow conventions of hyporay sweeps: store, experiment, parent/child runs, links into the UI.

- Default store: ``sqlite:///<abs cwd>/mlflow.db`` with artefacts in ``<abs cwd>/mlartifacts`` (MLflow's
  file store is refused since 3.13). A server is given as ``--tracking-uri http://host:port``.
- The experiment and the parent run are created once, on the driver; trials create their child run
  (tag ``mlflow.parentRunId``) through ``MlflowClient`` and find it again by a deterministic trial key,
  so a retried or resumed trial never makes a second child run.
"""
from __future__ import annotations

import functools
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "hyporay.trial_key"
SWEEP_TAG = "hyporay.sweep"
ROLE_TAG = "hyporay.role"
STATE_TAG = "hyporay.state"
FRONTIER_LABEL_TAG = "hyporay.frontier_label"  # parent run: the trial field frontier points are labelled by
DIVERGED_TAG = "diverged"            # "true" on a trial stopped by a non-finite training loss (run FAILED)
DIVERGED_EPOCH_TAG = "diverged_epoch"
DEGENERATE_TAG = "degenerate"        # "true" on a finished trial whose model is constant or non-finite


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


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create (or find) the experiment; returns its id. Marks it as a model-training experiment.

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


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, _param_str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        retry(c.log_batch, run_id, params=items[i:i + 100])


def _param_str(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return s[:6000]


def log_metrics(c, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not math.isnan(float(v))]
    if items:
        retry(c.log_batch, run_id, metrics=items)


def find_child(c, experiment_id: str, parent_id: str, trial_key: str):
    """The child run of ``parent_id`` for ``trial_key``, or None."""
    found = retry(c.search_runs, [experiment_id],
                  filter_string=f"tags.`{TRIAL_KEY_TAG}` = '{trial_key}' and tags.`{PARENT_TAG}` = '{parent_id}'",
                  max_results=1)
    return found[0] if found else None


def find_or_create_child(c, experiment_id: str, parent_id: str, trial_key: str, run_name: str,
                         tags: dict[str, str]) -> tuple[object, bool]:
    """(the child run of ``parent_id`` for ``trial_key``, created?): the existing one, else a new one with
    ``tags`` (one query, and one more to create it)."""
    found = find_child(c, experiment_id, parent_id, trial_key)
    if found is not None:
        return found, False
    run = retry(c.create_run, experiment_id, run_name=run_name,
                tags={PARENT_TAG: parent_id, TRIAL_KEY_TAG: trial_key, ROLE_TAG: "trial", **tags})
    return run, True


def set_tags(c, run_id: str, tags: dict[str, str]) -> None:
    """Several tags in one round trip."""
    from mlflow.entities import RunTag

    if tags:
        retry(c.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


MIXED_TAG = "hyporay.provenance_mixed"   # a run continued on other code than it started with: what, in order


def provenance_tags(prov: dict) -> dict[str, str]:
    """hyporay's provenance as MLflow tags, plus MLflow's own ``mlflow.source.git.commit`` (shown in the UI)."""
    from hyporay import provenance

    tags = {k: str(v) for k, v in prov.items()}
    if not str(prov.get(provenance.COMMIT, "unknown")).startswith("unknown"):
        tags["mlflow.source.git.commit"] = str(prov[provenance.COMMIT])
    return tags


def note_code_change(c, run, prov_tags: dict) -> None:
    """When a run restarts (retry, --resume) on code other than the one it started on, tag it mixed."""
    from hyporay import provenance

    old = run.data.tags
    keys = (provenance.COMMIT, provenance.DIFF)
    if all(k in old for k in keys) and any(old[k] != prov_tags.get(k) for k in keys):
        before = old.get(MIXED_TAG) or provenance.describe(old)
        retry(c.set_tag, run.info.run_id, MIXED_TAG, f"{before} then {provenance.describe(prov_tags)}"[:5000])


def is_final(run) -> bool:
    """A trial run that is a result already: FINISHED, or FAILED because it diverged."""
    return run.info.status == "FINISHED" or (run.info.status == "FAILED"
                                             and run.data.tags.get(DIVERGED_TAG) == "true")


def mark_diverged(c, run_id: str, epoch: int, loss: float) -> None:
    """End a trial run that diverged: FAILED, tags ``diverged=true`` and ``diverged_epoch``, metric diverged=1."""
    set_tags(c, run_id, {DIVERGED_TAG: "true", DIVERGED_EPOCH_TAG: str(int(epoch))})
    log_metrics(c, run_id, {"diverged": 1.0}, step=int(epoch))
    retry(c.set_terminated, run_id, "FAILED")


def mark_degenerate(c, run_id: str, metrics: dict) -> bool:
    """Tag ``degenerate=true`` (with the reason) when the final metrics say the model is degenerate."""
    from hyporay import metrics as M

    if not metrics.get(M.DEGENERATE):
        return False
    n = int(metrics.get(M.NONFINITE_LOGITS) or 0)
    set_tags(c, run_id, {DEGENERATE_TAG: "true", "degenerate_reason": f"non-finite logits on {n} test examples"
                         if n else "logits do not depend on the input"})
    return True


def child_runs(c, experiment_id: str, parent_id: str | None = None) -> list:
    flt = f"tags.`{ROLE_TAG}` = 'trial'"
    if parent_id:
        flt += f" and tags.`{PARENT_TAG}` = '{parent_id}'"
    return retry(c.search_runs, [experiment_id], filter_string=flt, max_results=50_000)
