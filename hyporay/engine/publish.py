"""Where a sweep's results go and what the user is told: the MLflow links printed when it starts (watch it live)
and again at the end, artefacts and a description (frontier table, threat model) on the parent run, the closing
summary, and ``hyporay frontier``'s rebuild of an earlier sweep's artefacts."""
from __future__ import annotations

import sys
from pathlib import Path

from hyporay.analysis import frontier as F
from hyporay.analysis import runs
from hyporay.engine import mlflow_ui, tracking

THREAT_TAG = "hyporay.threat_model"  # parent run: the train/eval attacks every number of the sweep was measured under


def say(msg: str = "") -> None:
    print(msg, flush=True)


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves the MLflow UI over a local SQLite store, runnable as printed: ``make ui`` from the
    project root, else this environment's ``hyporay ui`` by its full path."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///"):])
    makefile = Path.cwd() / "Makefile"
    if db == Path.cwd() / "mlflow.db" and makefile.is_file() and "\nui:" in makefile.read_text():
        return "make ui"
    return f"{Path(sys.executable).parent / 'hyporay'} ui --db {db}"


def links(tracking_uri: str, experiment_id: str, parent_id: str) -> list[str]:
    out = []
    cmd = ui_command(tracking_uri)
    if cmd:
        out.append(f"open the UI:     {cmd}")
    out += [f"runs table:      {mlflow_ui.runs_link(tracking_uri, experiment_id)}",
            f"trade-off chart: {mlflow_ui.frontier_view_link(tracking_uri, experiment_id)}",
            f"frontier.png:    {mlflow_ui.artifact_link(tracking_uri, experiment_id, parent_id, 'frontier.png')}"]
    return out


def announce(d, sweep: str, n: int, run_dir: str, experiment: str, exp_id: str, parent_id: str, trial: dict,
             label_key: str, resumed: bool = False) -> None:
    """The lines a sweep prints when its trials start: what runs where, under which threat model, and the MLflow
    links to watch it live."""
    from hyporay.analysis.tables import threat_caption

    info = d.info
    threat = threat_caption(trial)
    c = tracking.client(d.tracking_uri)
    tracking.set_tags(c, parent_id, {THREAT_TAG: threat})
    mlflow_ui.write_frontier_view(d.tracking_uri, exp_id, [], parent_id, label_key)
    say(f"{sweep}: {n} trials on {info.nodes} node(s) ({info.cpus:g} CPU, {info.gpus:g} GPU), {d.resources} per "
        f"trial; Tune storage {d.storage}/{run_dir}" + (" (resumed)" if resumed else ""))
    say(f"threat model: {threat}")
    say(f"MLflow: {d.tracking_uri}  experiment {experiment!r} (id {exp_id})  parent run {parent_id}")
    say("watch it live in MLflow (the chart fills in as trials finish):")
    for line in links(d.tracking_uri, exp_id, parent_id)[:-1]:
        say("  " + line)


def title(sweep: str, profile: str, df) -> str:
    """``<sweep> · <profile> · <data>/<model>`` from the runs (several values joined by ``,``)."""
    def values(key: str) -> str:
        if df.empty or key not in df:
            return "?"
        return ",".join(sorted({str(v) for v in df[key].dropna()})) or "?"

    return f"{sweep} · {profile} · {values('data.name')}/{values('model.name')}"


def note(title_text: str, caption: str, pts: list[F.FrontierPoint], df) -> str:
    """The parent run's description (MLflow note, Markdown): the frontier table, its threat model and where the
    runs' code came from."""
    lines = [f"### {title_text}", "", caption, ""]
    if pts:
        key = pts[0].label_key
        col = "λ" if key == F.DEFAULT_LABEL else F.label_column(key)
        lines += [f"| trainer | {col} | seeds | natural risk | R_hyp(D-) | Pareto |", "|---|---|---|---|---|---|"]
        lines += [f"| {p.trainer} | {F._fmt_label(p.label)} | {p.n_seeds} | {p.natural_risk:.4f} ± "
                  f"{p.natural_risk_std:.4f} | {p.hypocritical_risk:.4f} ± {p.hypocritical_risk_std:.4f} | "
                  f"{'*' if p.pareto else '+' if p.front else ''} |" for p in pts]
        lines += ["", "`*` Pareto-optimal among all points, `+` on its trainer's own front; frontier.png and "
                  "frontier.html in this run's artefacts."]
    code = runs.commits(df)
    if code:
        lines += ["", "code: " + "; ".join(f"{k} ({v} runs)" for k, v in code.items())]
    return "\n".join(lines)


def to_parent(c, tracking_uri: str, experiment_id: str, parent_id: str, df, artefacts, note: str | None = None,
              label_key: str = F.DEFAULT_LABEL) -> str | None:
    """Artefacts and the description on the parent run, and the experiment's trade-off view rewritten with the
    metrics the runs logged; returns the view's link (None when no run logged the risks)."""
    for a in artefacts:
        tracking.retry(c.log_artifact, parent_id, str(a))
    if note:
        tracking.set_tags(c, parent_id, {"mlflow.note.content": note})
    keys = sorted({k for k in df.columns if df[k].dtype.kind == "f"} - {"seed"}) if not df.empty else []
    if "natural_risk" not in keys:
        return None
    return mlflow_ui.write_frontier_view(tracking_uri, experiment_id, keys, parent_id, label_key)


def summary(d, df, pts, caption: str, errors, unfinished: int, artefacts, experiment: str, exp_id: str,
            parent_id: str, view: str | None, run_dir: str) -> None:
    counts = df["outcome"].value_counts().to_dict() if not df.empty else {}
    say()
    if pts:
        say(F.table(pts, caption=f"trade-off frontier ({caption})"))
        say()
    say(f"trials: {counts.get('result', 0) + counts.get('degenerate', 0)} finished, {counts.get('diverged', 0)} "
        f"diverged, {len(errors)} failed, {unfinished} not finished"
        + (f" ({', '.join(str(r.error).splitlines()[0][:80] for r in errors[:3])})" if errors else ""))
    if counts.get("diverged") or counts.get("degenerate"):
        say(f"left out of every frontier and table: {counts.get('diverged', 0)} diverged, "
            f"{counts.get('degenerate', 0)} degenerate (constant or non-finite model): their risks are not results")
    say(f"tracking URI:    {d.tracking_uri}")
    say(f"experiment:      {experiment} (id {exp_id})")
    say(f"parent run:      {parent_id}")
    for a in artefacts:
        say(f"artefact:        {a}")
    for line in links(d.tracking_uri, exp_id, parent_id):
        if view is not None or not line.startswith("trade-off"):
            say(line)
    if errors or unfinished:
        say(f"resume with:     {resume_command(run_dir, d.args)}")


def resume_command(name: str, args) -> str:
    """``python <the script that ran> --resume NAME`` (+ the storage and tracking flags it was given): runs as
    printed from the directory the sweep was started in, whichever script started it."""
    import shlex

    extra = []
    for flag, value in (("--storage-path", args.storage_path), ("--tracking-uri", args.tracking_uri)):
        if value:
            extra += [flag, value]
    return "python " + shlex.join([sys.argv[0], "--resume", name, *extra])


def rebuild_for_parent(tracking_uri: str, experiment_id: str, parent_id: str, out_dir: str | Path,
                       label_key: str | None = None):
    """``hyporay frontier``: the frontier of a finished or interrupted sweep from its runs, logged to its parent
    run with its description, the trade-off view rewritten; returns (points, left out, artefacts, view link)."""
    from hyporay.analysis import plots
    from hyporay.analysis import tables as T

    c = tracking.client(tracking_uri)
    parent = tracking.retry(c.get_run, parent_id)
    tags = parent.data.tags
    label_key = label_key or tags.get(tracking.FRONTIER_LABEL_TAG) or F.DEFAULT_LABEL
    df = runs.read(tracking_uri, experiment_id, parent_id)
    res, left = runs.results(df)
    pts = F.points(res, label_key)
    left_text = runs.describe_left_out(left)
    caption = (tags.get(THREAT_TAG) or "threat model not recorded") + (f"; left out: {left_text} run(s)"
                                                                        if left_text else "")
    name = title(tags.get(tracking.SWEEP_TAG, parent.info.run_name or "sweep"), tags.get("profile", "?"), df)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [T.write_csv(F.csv_rows(pts), out / "frontier.csv"), plots.frontier_png(pts, out / "frontier.png", name,
                                                                                     caption),
             plots.frontier_html(pts, out / "frontier.html", name, caption)]
    view = to_parent(c, tracking_uri, experiment_id, parent_id, df, paths, note=note(name, caption, pts, df),
                     label_key=label_key)
    return pts, left, paths, view, caption
