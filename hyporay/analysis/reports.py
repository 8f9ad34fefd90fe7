"""The artefacts a sweep leaves: the frontier (CSV, PNG, HTML), the substandard-models table and the attack-
convergence report. Each is a function of the runs table; the runs whose numbers are not results (unfinished,
diverged, degenerate) are left out and counted in the caption."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from hyporay.analysis import frontier as F
from hyporay.analysis import plots
from hyporay.analysis import tables as T
from hyporay.analysis.runs import describe_left_out, results


def _caption(trial: dict, profile: str, left_out) -> str:
    left = describe_left_out(left_out)
    return T.threat_caption(trial, profile) + (f"; left out: {left} run(s)" if left else "")


def frontier(df: pd.DataFrame, out_dir: str | Path, title: str, trial: dict, profile: str,
             label_key: str = F.DEFAULT_LABEL) -> tuple[list[F.FrontierPoint], list[Path], str]:
    """``frontier.csv``, ``frontier.png``, ``frontier.html`` under ``out_dir``; returns (points, paths, caption)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res, left = results(df)
    pts = F.points(res, label_key)
    caption = _caption(trial, profile, left)
    return pts, [T.write_csv(F.csv_rows(pts), out / "frontier.csv"),
                 plots.frontier_png(pts, out / "frontier.png", title, caption),
                 plots.frontier_html(pts, out / "frontier.html", title, caption)], caption


def substandard(df: pd.DataFrame, trials: list[dict], profile: str, out_dir: str | Path,
                say: Callable[[str], None] = print) -> list[Path]:
    """sweeps/substandard.py: ``substandard_table.md`` (the paper's Tables 1-2 layout) and ``.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res, left = results(df)
    models = T.unique(t["model"]["name"] for t in trials)
    header, body, cells = T.substandard_table(res, models)
    seeds = sorted({c[T.N] for c in cells})
    caption = (f"Accuracy (%) D / A / F = clean / adversarial / hypocritical examples, natural training on "
               f"substandard training sets; {_caption(trials[0], profile, left)}; "
               f"{'mean over ' + '/'.join(map(str, seeds)) + ' seed(s)' if seeds else 'no finished runs'}.")
    md = out / "substandard_table.md"
    md.write_text(T.markdown_table(header, body, caption))
    say("\n" + md.read_text())
    return [md, T.write_csv(cells, out / "substandard_table.csv")]


def convergence(df: pd.DataFrame, trials: list[dict], profile: str, out_dir: str | Path,
                say: Callable[[str], None] = print) -> list[Path]:
    """sweeps/attack_steps.py: ``convergence.csv`` / ``.png`` and a converged-or-not line per curve."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res, left = results(df)
    conv = T.convergence_rows(res)
    t = trials[0]
    title = (f"attack convergence · {profile} · {t['data']['name']}/{t['model']['name']}\n"
             f"{_caption(t, profile, left)}")
    paths = [T.write_csv(conv, out / "convergence.csv"), plots.convergence_png(conv, out / "convergence.png", title)]
    say("\nattack convergence (mean over seeds; tolerance 0.01):")
    for line in T.convergence_verdict(conv) or ["no steps/restarts grid metrics in the finished runs"]:
        say("  " + line)
    return paths


# --- the sweeps' ``after`` hooks (context: table, trials, profile, out_dir, say, ...) ------------------------

def substandard_hook(ctx: dict) -> list[Path]:
    return substandard(ctx["table"], ctx["trials"], ctx["profile"], ctx["out_dir"], ctx.get("say", print))


def convergence_hook(ctx: dict) -> list[Path]:
    return convergence(ctx["table"], ctx["trials"], ctx["profile"], ctx["out_dir"], ctx.get("say", print))
