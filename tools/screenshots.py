"""Regenerate the README's screenshots of the MLflow UI from a directory holding a sweep's mlflow.db.

    # a sweep with a few trials (2-3 minutes on 2 cores), then the two PNGs:
    cd "$(mktemp -d)" && python /path/to/hyporay/sweeps/thrm_lambda.py --profile local \\
        --lambdas 0,1,5,20,60 --seeds 1 --set train.epochs=8 --set eval.every=4
    python /path/to/hyporay/tools/screenshots.py .            # writes docs/img/mlflow-{runs,frontier}.png

Options: --out DIR (default: docs/img of this checkout), --experiment NAME (default: the experiment holding
the hyporay frontier view, the newest if several), --size WxH (default 1400x900), --refresh-view (rewrite the
frontier view tag with this checkout's format first; changes the database).

Starts ``mlflow server`` on 127.0.0.1 and a free port, opens the links a sweep prints (``runs:`` and
``frontier chart:``) in headless Chromium (``.ci/install-browser``), waits until the runs table lists every
trial and the scatter has a point per trial, hides MLflow's "shared view" banner and assistant panel, and
takes the screenshots. Exit code 1 with a message when something does not show up.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from browser import MLFLOW_UI_STORAGE, BrowserError, Chromium, MlflowServer  # noqa: E402

from hyporay import metrics as M  # noqa: E402
from hyporay.engine import tracking  # noqa: E402

VIEW_TAG = f"mlflow.sharedViewState.{tracking.FRONTIER_VIEW_KEY}"


def pick_experiment(uri: str, name: str | None):
    c = tracking.client(uri)
    if name:
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise SystemExit(f"screenshots: no experiment {name!r} in {uri}")
        return exp
    found = [e for e in c.search_experiments() if VIEW_TAG in e.tags]
    if not found:
        raise SystemExit(f"screenshots: no experiment with a hyporay frontier view in {uri}; run a sweep first")
    return max(found, key=lambda e: e.last_update_time or 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="directory holding mlflow.db (and mlartifacts/)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--experiment")
    p.add_argument("--size", default="1400x900")
    p.add_argument("--refresh-view", action="store_true")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    db = args.dir.resolve() / "mlflow.db"
    if not db.is_file():
        raise SystemExit(f"screenshots: no {db}")
    uri = f"sqlite:///{db}"
    exp = pick_experiment(uri, args.experiment)
    runs = [r for r in tracking.child_runs(tracking.client(uri), exp.experiment_id)
            if M.NATURAL_RISK in r.data.metrics and M.HYPOCRITICAL_RISK in r.data.metrics]
    if not runs:
        raise SystemExit(f"screenshots: experiment {exp.name!r} has no trial run with both risks")
    if args.refresh_view:
        keys = sorted({k for r in runs for k in r.data.metrics})
        tracking.write_frontier_view(uri, exp.experiment_id, keys, M.NATURAL_RISK, M.HYPOCRITICAL_RISK)
    names = sorted(r.info.run_name for r in runs)
    print(f"experiment {exp.name!r} (id {exp.experiment_id}): {len(runs)} trial runs")

    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with MlflowServer(db) as srv, Chromium(width=width, height=height) as b:
            # the runs table
            b.open(tracking.runs_link(srv.url, exp.experiment_id), MLFLOW_UI_STORAGE)
            b.wait_for(f"""(() => {{ const want = {names!r};
                const links = Array.from(document.querySelectorAll('a')).map(a => a.textContent.trim());
                return want.every(n => links.includes(n)); }})()""", timeout=120, what="every trial in the table")
            time.sleep(1.0)
            print(f"wrote {b.screenshot(args.out / 'mlflow-runs.png')}")
            # the frontier chart
            b.open(tracking.frontier_view_link(srv.url, exp.experiment_id), MLFLOW_UI_STORAGE)
            b.wait_for(f"document.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length >= {len(runs)}",
                       timeout=120, what=f"{len(runs)} points in the scatter")
            b.evaluate("""(() => { const x = document.querySelector(
                '[data-component-id="mlflow.experiment_page.shared_view.dismiss"]'); if (x) x.click(); })()""")
            time.sleep(1.5)  # layout after the banner is gone, plotly's relayout
            print(f"wrote {b.screenshot(args.out / 'mlflow-frontier.png')}")
    except BrowserError as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
