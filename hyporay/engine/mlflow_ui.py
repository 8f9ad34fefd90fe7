"""Links into the MLflow UI and the saved view a sweep writes on its experiment (MLflow 3.17's internal view-state
format: pinned in pyproject and checked in a real browser by tests/e2e/test_mlflow_ui.py)."""
from __future__ import annotations

import base64
import json
import time
import urllib.parse
import uuid
import zlib

from hyporay.engine.tracking import TrackingError, client, retry

FRONTIER_VIEW_KEY = "hyporay-frontier"
UI_PORT = 5000


def ui_base(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{UI_PORT}"


# MLflow 3.17's runs table nests child runs under their parent, collapsed, whenever the runs are sorted by
# creation time with no filter (its default): a sweep then shows as one row, and the chart view plots only
# the visible rows (none of the trials). Any other sort order lists every run flat (reference §8).
RUNS_ORDER_BY = "tags.`mlflow.runName`"


def _experiment_runs(tracking_uri: str, experiment_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def runs_link(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs, every trial a row, in the 'Model training' view (MLflow 3.17 opens its GenAI
    view otherwise), sorted by run name (the default sort would fold each sweep's trials under its parent)."""
    order = urllib.parse.quote(RUNS_ORDER_BY, safe="")
    return f"{_experiment_runs(tracking_uri, experiment_id)}&orderByKey={order}&orderByAsc=true"


def frontier_view_link(tracking_uri: str, experiment_id: str, key: str = FRONTIER_VIEW_KEY) -> str:
    # no search parameter (orderByKey, searchFilter, ...) here: the UI ignores a shared state when one is present
    return f"{_experiment_runs(tracking_uri, experiment_id)}&viewStateShareKey={key}&compareRunsMode=CHART"


def frontier_view_state(metric_keys: list[str], x: str, y: str, name: str = "hyporay trade-off frontier") -> str:
    """MLflow 3.17's shared view state: one scatter chart of ``x`` vs ``y``, one point per run.

    Internal UI format (reference §8): every other logged metric gets a hidden, deleted card so the UI
    does not add its automatic one-chart-per-metric set; all runs are shown (default: first 10 only).
    The state also carries the sort order of ``runs_link`` (a search facet): with the UI's default order the
    trials are folded under their parent run, the chart has no visible run to plot, and the UI hides it
    as empty. ``hideEmptyCharts`` is off so that a chart without points still shows as a card.
    """
    section = str(uuid.uuid4())
    cards = [{"uuid": str(uuid.uuid4()), "type": "SCATTER", "xaxis": {"key": x, "type": "METRIC"},
              "yaxis": {"key": y, "type": "METRIC"}, "runsCountToCompare": 100, "metricSectionId": section,
              "isGenerated": False, "deleted": False}]
    for m in sorted(set(metric_keys)):
        cards.append({"uuid": str(uuid.uuid4()), "type": "BAR", "metricKey": m, "metricSectionId": section,
                      "isGenerated": True, "deleted": True})
    state = {"compareRunCharts": cards,
             "compareRunSections": [{"uuid": section, "name": "Trade-off: natural vs hypocritical risk",
                                     "display": True, "isReordered": False, "columns": 1, "cardHeight": 520}],
             "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": False,
             "orderByKey": RUNS_ORDER_BY, "orderByAsc": True}
    packed = "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    return json.dumps({"name": name, "createdAt": int(time.time() * 1000), "state": packed})


def write_frontier_view(tracking_uri: str, experiment_id: str, metric_keys: list[str],
                        x: str = "natural_risk", y: str = "hypocritical_risk") -> str:
    """Store the shared view on the experiment; returns the link. Written when a sweep starts (so the printed link
    works at once) and again after its runs logged their metrics (each gets its hidden card)."""
    keys = sorted(set(metric_keys) | set(KNOWN_METRICS))
    value = frontier_view_state(keys, x, y)
    if len(value) > 20_000:
        raise TrackingError(f"frontier view: state is {len(value)} characters, MLflow allows 20000")
    retry(client(tracking_uri).set_experiment_tag, experiment_id, f"mlflow.sharedViewState.{FRONTIER_VIEW_KEY}",
          value)
    return frontier_view_link(tracking_uri, experiment_id)


def artifact_link(tracking_uri: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artefact in the UI, in the 'Model training' navigation."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"


def _known_metrics() -> tuple[str, ...]:
    from hyporay import metrics as M

    return (*M.CORE_METRICS, *M.HEALTH_METRICS, M.TARGETED_MEAN, "epoch", "train_loss", "train_acc",
            "epoch_seconds", "lr", "elapsed_seconds", "objective", "diverged")


KNOWN_METRICS = _known_metrics()
