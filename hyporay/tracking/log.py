"""Writing to MLflow in few round trips: params and metrics in batches, tags in one call, a trial's child run found
again by its deterministic key (a retried or resumed trial never makes a second one), a run's provenance, and the
marks of a run whose numbers are not results (diverged, degenerate)."""
from __future__ import annotations

import json
import math
import time
from typing import Any

from hyporay.tracking.store import create_once, retry
from hyporay.tracking.tags import (
    DEGENERATE_TAG,
    DIVERGED_EPOCH_TAG,
    DIVERGED_TAG,
    MIXED_TAG,
    PARENT_TAG,
    ROLE_TAG,
    TRIAL_KEY_TAG,
)


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
    ``tags`` (one query, and one more to create it). A create whose answer was lost never makes a second run
    (``create_once``); two attempts of one trial alive at once (a worker wrongly declared dead while it still
    runs) could each make one, since search-then-create is not atomic: Tune runs one attempt at a time."""
    found = find_child(c, experiment_id, parent_id, trial_key)
    if found is not None:
        return found, False
    run = create_once(lambda: c.create_run(experiment_id, run_name=run_name, tags={
        PARENT_TAG: parent_id, TRIAL_KEY_TAG: trial_key, ROLE_TAG: "trial", **tags}),
        lambda: find_child(c, experiment_id, parent_id, trial_key))
    return run, True


def set_tags(c, run_id: str, tags: dict[str, str]) -> None:
    """Several tags in one round trip."""
    from mlflow.entities import RunTag

    if tags:
        retry(c.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


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
