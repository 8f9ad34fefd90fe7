"""Where a sweep's or a study's results go and what the user is told, one path for both: the announcement when its
trials start (what runs where, the threat model, recorded on the parent run, and the MLflow links to watch it live),
artefacts and a description on the parent run (``to_parent``), the closing summary's tail and the resume command,
and ``hyporay frontier``'s rebuild of an earlier sweep's or study's artefacts."""
from __future__ import annotations

import sys
from pathlib import Path

from hyporay import metrics as M
from hyporay import tracking
from hyporay.analysis import frontier as F
from hyporay.analysis import runs
from hyporay.engine import mlflow_ui
from hyporay.engine.output import resume_command, say
from hyporay.tracking.runs import read as read_runs
from hyporay.tracking.tags import THREAT_TAG

__all__ = ["announce", "links", "note", "rebuild_for_parent", "resume_command", "summary", "tail", "title",
           "to_parent", "ui_command"]


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


def announce(d, plan, trial: dict, label_key: str, lead: list[str], extra_links: tuple[str, ...] = ()) -> None:
    """The lines a sweep or study prints when its trials start: ``lead`` (what runs where), the threat model (also
    recorded on the parent run, for ``hyporay frontier``), and the MLflow links to watch it live. ``plan``: its
    ``experiment``, ``exp_id`` and ``parent_id``."""
    from hyporay.analysis.tables import threat_caption

    threat = threat_caption(trial)
    c = tracking.client(d.tracking_uri)
    tracking.set_tags(c, plan.parent_id, {THREAT_TAG: threat})
    mlflow_ui.write_frontier_view(d.tracking_uri, plan.exp_id, [], plan.parent_id, label_key)
    for line in lead:
        say(line)
    say(f"threat model: {threat}")
    say(f"MLflow: {d.tracking_uri}  experiment {plan.experiment!r} (id {plan.exp_id})  parent run {plan.parent_id}")
    say("watch it live in MLflow (the chart fills in as trials finish):")
    for line in [*links(d.tracking_uri, plan.exp_id, plan.parent_id)[:-1], *extra_links]:
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
        cost = F.counted(pts)  # each point's training passes, where the runs counted them
        lines += [f"| trainer | {col} | seeds | natural risk | R_hyp(D-) |" + (" train passes |" if cost else "")
                  + " Pareto |", "|---|---|---|---|---|" + ("---|" if cost else "") + "---|"]
        lines += [f"| {p.trainer} | {F.fmt_label(p.label)} | {p.n_seeds} | {p.natural_risk:.4f} ± "
                  f"{p.natural_risk_std:.4f} | {p.hypocritical_risk:.4f} ± {p.hypocritical_risk_std:.4f} | "
                  + (f"{F.fmt_passes(p.train_passes)} | " if cost else "")
                  + f"{'*' if p.pareto else '+' if p.front else ''} |" for p in pts]
        lines += ["", "`*` Pareto-optimal among all points, `+` on its trainer's own front; frontier.png and "
                  "frontier.html in this run's artefacts."]
    code = runs.commits(df)
    if code:
        lines += ["", "code: " + "; ".join(f"{k} ({v} runs)" for k, v in code.items())]
    return "\n".join(lines)


def to_parent(c, tracking_uri: str, experiment_id: str, parent_id: str, df, artefacts, note: str | None = None,
              label_key: str = F.DEFAULT_LABEL, tags: dict[str, str] | None = None) -> str | None:
    """THE publisher to a parent run (grid or study): artefacts (a path, or (path, artefact folder)), the
    description and ``tags``, and the experiment's trade-off view rewritten with the metrics the runs logged
    (``seed`` is not one); returns the view's link (None when no run logged the risks)."""
    for a in artefacts:
        path, folder = a if isinstance(a, tuple) else (a, None)
        tracking.retry(c.log_artifact, parent_id, str(path), folder)
    tracking.set_tags(c, parent_id, {**({"mlflow.note.content": note} if note else {}), **(tags or {})})
    # one batch, one timestamp: a retry after a lost answer writes the same points, which the store keeps once
    tracking.log_metrics(c, parent_id, passes_spent(df), step=0)
    keys = sorted({k for k in df.columns if df[k].dtype.kind == "f"} - {"seed"}) if not df.empty else []
    if "natural_risk" not in keys:
        return None
    return mlflow_ui.write_frontier_view(tracking_uri, experiment_id, keys, parent_id, label_key)


def passes_spent(df) -> dict[str, float]:
    """What the sweep's runs spent, summed over them: ``sweep_train_passes`` and ``sweep_eval_passes`` (image-passes,
    forward + backward, attacks included; each run's total as it last reported it). Empty when no run counted."""
    out = {}
    for metric in (M.TRAIN_PASSES, M.EVAL_PASSES):
        if not df.empty and metric in df and df[metric].notna().any():
            out[f"sweep_{metric}"] = float(df[metric].fillna(0).sum())
    return out


def summary(d, plan, df, pts, caption: str, errors, unfinished: int, artefacts, view: str | None,
            resume: str | None) -> None:
    """A grid sweep's closing summary: its frontier, its trials by outcome, then the ``tail``."""
    counts = df["outcome"].value_counts().to_dict() if not df.empty else {}
    say()
    if pts:
        say(F.table(pts, caption=f"trade-off frontier ({caption})"))
        say()
    spent = passes_spent(df)
    if spent:
        say("passes spent: " + ", ".join(f"{k[len('sweep_'):].replace('_', ' ')} {v:.3g}" for k, v in spent.items())
            + " (image-passes, forward + backward; the parent run records them)")
    say(f"trials: {counts.get('result', 0) + counts.get('degenerate', 0)} finished, {counts.get('diverged', 0)} "
        f"diverged, {len(errors)} failed, {unfinished} not finished"
        + (f" ({', '.join(str(r.error).splitlines()[0][:80] for r in errors[:3])})" if errors else ""))
    if counts.get("diverged") or counts.get("degenerate"):
        say(f"left out of every frontier and table: {counts.get('diverged', 0)} diverged, "
            f"{counts.get('degenerate', 0)} degenerate (constant or non-finite model): their risks are not results")
    tail(d, plan, artefacts, view, [], ("resume with:", resume) if resume else None)


def tail(d, plan, artefacts, view: str | None, extra: list[str], resume: tuple[str, str] | None) -> None:
    """The closing block of every sweep and study: where its runs are, its artefacts, the MLflow links (the
    trade-off chart when it was written, frontier.png when it is an artefact), ``extra`` lines, and the command
    that continues it (``(label, command)``)."""
    say(f"tracking URI:    {d.tracking_uri}")
    say(f"experiment:      {plan.experiment} (id {plan.exp_id})")
    say(f"parent run:      {plan.parent_id}")
    for a in artefacts:
        say(f"artefact:        {a[0] if isinstance(a, tuple) else a}")
    png = any(Path(a[0] if isinstance(a, tuple) else a).name == "frontier.png" for a in artefacts)
    for line in links(d.tracking_uri, plan.exp_id, plan.parent_id):
        if (view is not None or not line.startswith("trade-off")) and (png or not line.startswith("frontier.png")):
            say(line)
    for line in extra:
        say(line)
    if resume:
        say(f"{resume[0]:<17}{resume[1]}")


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
    df = read_runs(tracking_uri, experiment_id, parent_id)
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
