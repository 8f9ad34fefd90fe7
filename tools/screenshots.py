"""Regenerate the pictures of a sweep (README.md, docs/watching.md) from a directory holding its mlflow.db (and
mlartifacts/).

    # the default run (make run), its console kept; then, from the project root:
    make run 2>&1 | tee run.log
    .venv/bin/python tools/screenshots.py . --console run.log
    # docs/img/console.png (the console's last screen), mlflow-runs.png, mlflow-tradeoff.png, frontier.png

Options: --out DIR (default: docs/img of this checkout), --parent RUN_ID (default: the newest sweep parent run in
the store), --size WxH (default 1400x900), --console LOG (a sweep's console output: its last screen, drawn as a
terminal shows it), --lines N (lines of that screen, default 46).

Starts ``mlflow server`` on 127.0.0.1 and a free port, opens the links the sweep printed (``runs table:`` and
``trade-off chart:``, rebuilt here for that server) in headless Chromium (``.ci/install-browser``), waits until the
table lists every trial and the scatter has a point per trial, hides MLflow's "shared view" banner, and takes the
screenshots; copies the parent run's frontier.png artefact beside them. Exit code 1 with a message when something
does not show up.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from browser import MLFLOW_UI_STORAGE, BrowserError, Chromium, MlflowServer  # noqa: E402

from hyporay import metrics as M  # noqa: E402
from hyporay import tracking  # noqa: E402
from hyporay.engine import mlflow_ui  # noqa: E402
from hyporay.tracking.runs import child_runs  # noqa: E402


def newest_parent(c, parent_id: str | None):
    if parent_id:
        return tracking.retry(c.get_run, parent_id)
    exps = [e.experiment_id for e in c.search_experiments()]
    found = tracking.retry(c.search_runs, exps, filter_string=f"tags.`{tracking.ROLE_TAG}` = 'sweep'",
                           order_by=["attributes.start_time DESC"], max_results=1) if exps else []
    if not found:
        raise SystemExit("screenshots: no sweep parent run in this store; run a sweep first (make run)")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path, help="directory holding mlflow.db (and mlartifacts/)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--parent")
    p.add_argument("--size", default="1400x900")
    p.add_argument("--console", type=Path)
    p.add_argument("--lines", type=int, default=46)
    args = p.parse_args(argv)
    if args.console is not None and not args.console.is_file():
        raise SystemExit(f"screenshots: --console: no file {args.console}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    db = args.dir.resolve() / "mlflow.db"
    if not db.is_file():
        raise SystemExit(f"screenshots: no {db}")
    uri = f"sqlite:///{db}"
    c = tracking.client(uri)
    parent = newest_parent(c, args.parent)
    exp_id, parent_id = parent.info.experiment_id, parent.info.run_id
    runs = [r for r in child_runs(c, exp_id, parent_id)
            if M.NATURAL_RISK in r.data.metrics and M.HYPOCRITICAL_RISK in r.data.metrics]
    if not runs:
        raise SystemExit(f"screenshots: sweep {parent.info.run_name!r} has no trial run with both risks")
    names = sorted(r.info.run_name for r in runs)
    print(f"sweep {parent.info.run_name!r} (experiment {exp_id}): {len(runs)} trial runs")

    args.out.mkdir(parents=True, exist_ok=True)
    picture = Path(c.download_artifacts(parent_id, "frontier.png", str(args.out)))
    if picture != args.out / "frontier.png":
        shutil.move(picture, args.out / "frontier.png")
    print(f"wrote {args.out / 'frontier.png'}")
    try:
        with MlflowServer(db) as srv, Chromium(width=width, height=height) as b:
            if args.console is not None:
                page = _terminal_page(args.console, args.lines, args.out)
                b.open(page.as_uri())
                b.wait_for("document.readyState === 'complete'", timeout=30, what="the console page")
                print(f"wrote {b.screenshot(args.out / 'console.png')}")
                page.unlink()
            b.open(mlflow_ui.runs_link(srv.url, exp_id), MLFLOW_UI_STORAGE)
            b.wait_for(f"""(() => {{ const want = {names!r};
                const links = Array.from(document.querySelectorAll('a')).map(a => a.textContent.trim());
                return want.every(n => links.includes(n)); }})()""", timeout=120, what="every trial in the table")
            _dismiss_banner(b)
            print(f"wrote {b.screenshot(args.out / 'mlflow-runs.png')}")
            b.open(mlflow_ui.frontier_view_link(srv.url, exp_id), MLFLOW_UI_STORAGE)
            b.wait_for(f"document.querySelectorAll('.js-plotly-plot .scatterlayer path.point').length >= {len(runs)}",
                       timeout=120, what=f"{len(runs)} points in the scatter")
            _dismiss_banner(b)
            print(f"wrote {b.screenshot(args.out / 'mlflow-tradeoff.png')}")
    except BrowserError as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    return 0


def _terminal_page(log: Path, lines: int, out: Path) -> Path:
    """The last ``lines`` lines of a console log as a page drawn like a terminal (monospace, dark, 160 columns)."""
    import html

    # as a terminal 160 columns wide shows them: long lines wrap
    wrapped = [line[i:i + 160] for line in log.read_text(errors="replace").splitlines()
               for i in range(0, max(len(line), 1), 160)]
    tail = wrapped[-lines:]
    page = out / ".console.html"
    page.write_text("<!doctype html><meta charset='utf-8'><body style='margin:0;background:#1e1e1e'>"
                    "<pre style='margin:0;padding:12px;color:#ddd;font:13px/1.35 DejaVu Sans Mono,monospace;"
                    "white-space:pre'>" + html.escape("\n".join(tail)) + "</pre></body>")
    return page


def _dismiss_banner(b) -> None:
    b.evaluate("""(() => { const x = document.querySelector(
        '[data-component-id="mlflow.experiment_page.shared_view.dismiss"]'); if (x) x.click(); })()""")
    time.sleep(1.5)  # layout after the banner is gone, plotly's relayout


if __name__ == "__main__":
    sys.exit(main())
