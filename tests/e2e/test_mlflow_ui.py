"""End to end: a real sweep, a real ``mlflow server``, and the links the sweep prints opened in headless Chromium.

Checks what a person following the links sees in MLflow 3.17's UI (whose view-state format is internal):
(a) the runs-table link lists the sweep's trials (and only them) with the columns trainer, λ, seed, natural_risk,
    hypocritical_risk, acc_adv in that order, grouped by trainer;
(b) the trade-off link opens the natural_risk vs hypocritical_risk scatter, a point per trial at the logged
    values, one colour per trainer, beside a parallel-coordinates chart, and none of the UI's automatic
    one-chart-per-metric cards;
(c) the frontier.png link opens the parent run's picture in the 'Model training' navigation.

Needs Debian's chromium (``.ci/install-browser``): skipped without it on a developer machine, failed in CI.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import MLFLOW_UI_STORAGE, Chromium, MlflowServer, chromium_path  # noqa: E402
from helpers import patience  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

X, Y = "natural_risk", "hypocritical_risk"


@pytest.fixture(scope="module")
def chromium_exe():
    exe = chromium_path()
    if exe is None:
        msg = "chromium is not installed (run .ci/install-browser)"
        if os.environ.get("CI"):
            pytest.fail(msg + ": the browser test must run in CI")
        pytest.skip(msg)
    return exe


@pytest.fixture(scope="module")
def sweep(chromium_exe, small_sweep):
    """The shared small real sweep (tests/e2e/conftest.py): its directory, printed links and the trial runs."""
    work, proc = small_sweep["dir"], small_sweep["proc"]
    out = proc.stdout
    assert proc.returncode == 0, f"sweep failed ({proc.returncode}):\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    links = dict(re.findall(r"^(runs table|trade-off chart|frontier.png):\s+(\S+)$", out, re.M))
    assert set(links) == {"runs table", "trade-off chart", "frontier.png"}, f"links missing:\n{out[-2000:]}"

    from hyporay import tracking
    from hyporay.tracking.runs import child_runs

    uri = tracking.default_tracking_uri(work)
    exp_id = re.search(r"^experiment:\s+.*\(id (\S+)\)$", out, re.M).group(1)
    runs = child_runs(tracking.client(uri), exp_id)
    assert len(runs) == 3, [r.info.run_name for r in runs]  # natural λ=0 (shared by both curves), TRADES, THRM
    return {"dir": work, "links": links, "runs": runs}


@pytest.fixture(scope="module")
def server(sweep):
    with MlflowServer(sweep["dir"] / "mlflow.db", log=sweep["dir"] / "mlflow-server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(chromium_exe):
    with Chromium(executable=chromium_exe) as b:
        yield b


def _at(link: str, server: MlflowServer) -> str:
    """The printed link (port 5000 of the docs) on the test's server."""
    assert link.startswith("http://127.0.0.1:"), link
    return re.sub(r"^http://127\.0\.0\.1:\d+", server.url, link)


def test_runs_link_shows_the_trials_with_the_trade_off_columns(sweep, server, browser):
    browser.open(_at(sweep["links"]["runs table"], server), MLFLOW_UI_STORAGE)
    names = sorted(r.info.run_name for r in sweep["runs"])
    shown = browser.wait_for(
        f"""(() => {{
              const want = {names!r};
              const links = Array.from(document.querySelectorAll('a')).map(a => a.textContent.trim());
              return want.every(n => links.includes(n)) && links;
            }})()""", timeout=patience(90), what=f"run names {names} in the runs table")
    assert set(names) <= set(shown)
    parent = next(iter({r.data.tags["mlflow.parentRunId"] for r in sweep["runs"]}))
    text = browser.text()
    assert "Model training" in text and "Group by: trainer" in text
    assert "Group: natural" in text and "Group: thrm" in text and "Group: trades" in text
    assert browser.evaluate("document.querySelectorAll('[data-testid=\"experiment-view-compare-runs-card\"]')"
                            ".length") == 0  # a table, not the chart view
    assert not any(parent in link for link in shown)  # only the sweep's trials, not its parent run
    # in the order a person sees them (left to right): the grid's DOM order is not its visual order
    headers = browser.evaluate("""Array.from(document.querySelectorAll('[role="columnheader"]'))
        .map(h => [h.getBoundingClientRect().left, h.textContent.trim()]).filter(p => p[1])
        .sort((a, b) => a[0] - b[0]).map(p => p[1])""")
    wanted = ["trainer", "lam", "seed", X, Y, "acc_adv"]
    at = [next(i for i, h in enumerate(headers) if h.startswith(w[:14])) for w in wanted]
    assert at == sorted(at), f"columns out of order: {headers}"


def test_trade_off_link_shows_the_scatter_one_colour_per_trainer(sweep, server, browser):
    browser.open(_at(sweep["links"]["trade-off chart"], server), MLFLOW_UI_STORAGE)
    n = len(sweep["runs"])
    browser.wait_for(f"document.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length >= {n}",
                     timeout=patience(90), what=f"{n} scatter points")
    cards = browser.evaluate("""Array.from(document.querySelectorAll(
        '[data-testid="experiment-view-compare-runs-card"]')).map(c => (c.querySelector('h4') || {}).textContent)""")
    assert cards == [f"{X} vs. {Y}", "Parallel Coordinates"], f"expected the trade-off charts, got cards {cards}"
    scatter = "document.querySelector('.js-plotly-plot')"
    axes = browser.evaluate(f"""(() => {{ const g = {scatter};
        return [g.querySelector('.xtitle').textContent, g.querySelector('.ytitle').textContent]; }})()""")
    assert axes == [X, Y]
    # the points sit at the logged values, and their colours are the trainers' (plotly keeps its traces)
    plotted = browser.evaluate(f"""(() => {{ const g = {scatter};
        return g.data.flatMap(t => (t.x || []).map((x, i) => [x, t.y[i],
            Array.isArray(t.marker.color) ? t.marker.color[i] : t.marker.color])); }})()""")
    by_value = {(round(x, 9), round(y, 9)): colour for x, y, colour in plotted if x is not None}
    from hyporay.analysis.style import TRAINER_COLOURS

    for r in sweep["runs"]:
        key = (round(r.data.metrics[X], 9), round(r.data.metrics[Y], 9))
        assert key in by_value, (key, by_value)
        assert by_value[key].lower() == TRAINER_COLOURS[r.data.params["train.trainer"]], r.info.run_name
    assert len({c.lower() for c in by_value.values()}) == len({r.data.params["train.trainer"] for r in sweep["runs"]})
    # no automatic per-metric chart (the UI adds one per logged metric that no card names)
    titles = browser.evaluate("Array.from(document.querySelectorAll('h4')).map(h => h.textContent.trim())")
    for metric in ("train_loss", "train_acc", X, Y, "lam"):
        assert metric not in titles, f"automatic chart {metric!r} shown: {titles}"


def test_frontier_png_link_opens_the_picture(sweep, server, browser):
    browser.open(_at(sweep["links"]["frontier.png"], server), MLFLOW_UI_STORAGE)
    # the artefact viewer renders the PNG (the only large picture on the page: MLflow's logo is small)
    img = browser.wait_for("""(() => { const i = Array.from(document.images)
        .find(i => i.complete && i.naturalWidth > 400); return i && [i.naturalWidth, i.src]; })()""",
                           timeout=patience(90), what="frontier.png rendered")
    assert img[0] > 400 and ("frontier.png" in img[1] or img[1].startswith("blob:")), img
    text = browser.text()
    assert "Model training" in text and "frontier.png" in text and "GenAI" in text
