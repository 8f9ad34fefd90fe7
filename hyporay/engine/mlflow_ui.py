"""Links into the MLflow UI and the saved view a sweep writes on its experiment, so that the UI lands on the
trade-off. MLflow 3.17's view state is an internal format (pinned in pyproject; every choice below was checked in
headless Chromium by tests/e2e/test_mlflow_ui.py):

- the runs table shows trainer, the sweep's label (λ, ε or the model), seed, natural_risk, hypocritical_risk and
  adversarial accuracy in that order (``selectedColumns`` + ``columnOrder``), only the sweep's trials
  (``searchFilter`` on its parent run), grouped by trainer and sorted by the label's numeric metric;
- the chart view has the natural_risk vs hypocritical_risk scatter, one colour per trainer (the UI honours each
  run's ``mlflow.runColor`` tag, set when the trial's run is created) and every seed a point, and a
  parallel-coordinates chart (label, natural_risk, hypocritical_risk); every other metric gets a hidden card, or
  the UI would add its one-chart-per-metric set;
- a run's artefact opens in the 'Model training' navigation with ``?workflowType=machine_learning``.
"""
from __future__ import annotations

import base64
import json
import time
import uuid
import zlib

from hyporay.analysis.style import TRAINER_COLOURS, colour
from hyporay.tracking.store import TrackingError, client, retry

FRONTIER_VIEW_KEY = "hyporay-frontier"
UI_PORT = 5000
# label key -> (the metric a trial logs for it, so the table sorts numerically; the tag shown as its column)
LABELS = {"train.lam": ("lam", "lam"), "train.attack.eps": ("eps", "eps"), "model.name": (None, "architecture")}
COLUMN_METRICS = ("natural_risk", "hypocritical_risk", "acc_adv", "hypocritical_risk_certified_upper")


def ui_base(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{UI_PORT}"


def _experiment_runs(tracking_uri: str, experiment_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def runs_link(tracking_uri: str, experiment_id: str, key: str = FRONTIER_VIEW_KEY) -> str:
    """The sweep's trials as a table, in the 'Model training' view (MLflow 3.17 opens its GenAI view otherwise);
    no search parameter in the URL: the UI ignores a shared view when one is present."""
    return f"{_experiment_runs(tracking_uri, experiment_id)}&viewStateShareKey={key}"


def frontier_view_link(tracking_uri: str, experiment_id: str, key: str = FRONTIER_VIEW_KEY) -> str:
    """The same view with its charts (the chart/table mode comes only from the URL)."""
    return f"{runs_link(tracking_uri, experiment_id, key)}&compareRunsMode=CHART"


def artifact_link(tracking_uri: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artefact, opened in the 'Model training' navigation."""
    return (f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"
            "?workflowType=machine_learning")


def run_colour(trainer: str) -> dict[str, str]:
    """The tag that colours a trial's run in the UI's charts by its trainer."""
    return {"mlflow.runColor": colour(trainer, len(TRAINER_COLOURS))}


def _card(section: str, **kw) -> dict:
    return {"uuid": str(uuid.uuid4()), "runsCountToCompare": 100, "metricSectionId": section, "isGenerated": False,
            "deleted": False, **kw}


def view_state(metric_keys: list[str], parent_id: str, label_key: str = "train.lam",
               name: str = "hyporay trade-off") -> str:
    """The saved view (an envelope with a deflated state, as the UI's 'Views' menu lists it)."""
    label_metric, label_tag = LABELS.get(label_key, (None, label_key.split(".")[-1]))
    metrics = [m for m in COLUMN_METRICS if m in metric_keys or m in COLUMN_METRICS[:3]]
    columns = ["tags.`trainer`", f"tags.`{label_tag}`", "tags.`seed`", *(f"metrics.`{m}`" for m in metrics)]
    section = str(uuid.uuid4())
    shown = {"natural_risk", "hypocritical_risk"}
    cards = [_card(section, type="SCATTER", xaxis={"key": "natural_risk", "type": "METRIC"},
                   yaxis={"key": "hypocritical_risk", "type": "METRIC"}),
             _card(section, type="PARALLEL", selectedParams=[label_key],
                   selectedMetrics=["natural_risk", "hypocritical_risk"], showAllRuns=True)]
    cards += [dict(_card(section, type="BAR", metricKey=m), isGenerated=True, deleted=True)
              for m in sorted(set(metric_keys) - shown)]
    state = {"selectedColumns": columns, "columnOrder": columns,
             "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "trainer"}]},
             "useGroupedValuesInCharts": False, "runsHiddenMode": "SHOW_ALL", "hideEmptyCharts": False,
             "compareRunCharts": cards,
             "compareRunSections": [{"uuid": section, "name": "Trade-off: natural vs hypocritical risk",
                                     "display": True, "isReordered": False, "columns": 2, "cardHeight": 480}],
             "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_id}'",
             "orderByKey": f"metrics.`{label_metric}`" if label_metric else "tags.`mlflow.runName`",
             "orderByAsc": True}
    packed = "deflate;" + base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
    return json.dumps({"name": name, "createdAt": int(time.time() * 1000), "state": packed})


def write_frontier_view(tracking_uri: str, experiment_id: str, metric_keys: list[str], parent_id: str,
                        label_key: str = "train.lam") -> str:
    """Store the view on the experiment; returns the chart link. Written when a sweep starts (the printed links
    work at once) and again after its runs logged their metrics (each gets its hidden card)."""
    value = view_state(sorted(set(metric_keys) | set(KNOWN_METRICS)), parent_id, label_key)
    if len(value) > 20_000:
        raise TrackingError(f"frontier view: state is {len(value)} characters, MLflow allows 20000")
    retry(client(tracking_uri).set_experiment_tag, experiment_id, f"mlflow.sharedViewState.{FRONTIER_VIEW_KEY}",
          value)
    return frontier_view_link(tracking_uri, experiment_id)


def _known_metrics() -> tuple[str, ...]:
    from hyporay import metrics as M

    return (*M.CORE_METRICS, *M.HEALTH_METRICS, *M.PASS_METRICS, M.TARGETED_MEAN, "epoch", "train_loss", "train_acc",
            "epoch_seconds", "train_seconds", "lr", "elapsed_seconds", "objective", "diverged", "lam", "eps")


KNOWN_METRICS = _known_metrics()
