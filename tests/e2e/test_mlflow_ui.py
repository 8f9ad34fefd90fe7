"""End to end: a real sweep, a real ``mlflow server``, and the links the sweep prints opened in headless Chromium.

Checks what a person following the links sees in MLflow 3.17's UI (whose view-state format is internal):
(a) the runs link lists every trial run as a row of the "Model training" runs table;
(b) the frontier link opens one scatter chart of natural_risk vs hypocritical_risk with a point per trial at
    the logged values, and none of the UI's automatic one-chart-per-metric cards.

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
    links = dict(re.findall(r"^(runs|frontier chart):\s+(\S+)$", out, re.M))
    assert set(links) == {"runs", "frontier chart"}, f"links missing from the sweep's output:\n{out[-2000:]}"

    from hyporay.engine import tracking

    uri = tracking.default_tracking_uri(work)
    exp_id = re.search(r"^experiment:\s+.*\(id (\S+)\)$", out, re.M).group(1)
    runs = tracking.child_runs(tracking.client(uri), exp_id)
    assert len(runs) == 4, [r.info.run_name for r in runs]
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


def test_runs_link_lists_every_trial(sweep, server, browser):
    browser.open(_at(sweep["links"]["runs"], server), MLFLOW_UI_STORAGE)
    names = sorted(r.info.run_name for r in sweep["runs"])
    shown = browser.wait_for(
        f"""(() => {{
              const want = {names!r};
              const links = Array.from(document.querySelectorAll('a')).map(a => a.textContent.trim());
              return want.every(n => links.includes(n)) && links;
            }})()""", timeout=90, what=f"run names {names} in the runs table")
    assert set(names) <= set(shown)
    text = browser.text()
    assert "Model training" in text and "matching runs" in text
    # a table, not the chart view; the trials are rows of their own, not folded under the parent run
    assert browser.evaluate("document.querySelectorAll('[data-testid=\"experiment-view-compare-runs-card\"]')"
                            ".length") == 0
    assert "Sort: Run Name" in text


def test_frontier_link_shows_one_scatter_of_the_trials(sweep, server, browser):
    browser.open(_at(sweep["links"]["frontier chart"], server), MLFLOW_UI_STORAGE)
    n = len(sweep["runs"])
    browser.wait_for(f"document.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length >= {n}",
                     timeout=90, what=f"{n} scatter points")
    cards = browser.evaluate("""Array.from(document.querySelectorAll(
        '[data-testid="experiment-view-compare-runs-card"]')).map(c => (c.querySelector('h4') || {}).textContent)""")
    assert cards == [f"{X} vs. {Y}"], f"expected the one frontier chart, got cards {cards}"
    assert browser.evaluate("document.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length") == n
    axes = browser.evaluate("""(() => { const g = document.querySelector('.js-plotly-plot');
        return [g.querySelector('.xtitle').textContent, g.querySelector('.ytitle').textContent]; })()""")
    assert axes == [X, Y]
    # the points sit at the logged values (plotly keeps its traces on the graph div)
    plotted = browser.evaluate("""(() => { const g = document.querySelector('.js-plotly-plot');
        return g.data.flatMap(t => (t.x || []).map((x, i) => [x, t.y[i]])); })()""")
    want = sorted((r.data.metrics[X], r.data.metrics[Y]) for r in sweep["runs"])
    got = sorted(tuple(p) for p in plotted if None not in p)
    assert len(got) == n and all(g == pytest.approx(w) for g, w in zip(got, want)), (got, want)
    # no automatic per-metric chart (the UI adds one per logged metric that no card names)
    titles = browser.evaluate("Array.from(document.querySelectorAll('h4')).map(h => h.textContent.trim())")
    for metric in ("train_loss", "train_acc", X, Y):
        assert metric not in titles, f"automatic chart {metric!r} shown: {titles}"
