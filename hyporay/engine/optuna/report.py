"""A study's publication on its MLflow parent run and console: Optuna's own plots, every trial as a row, the best
trial of the budget search, and the Pareto set of the Pareto search (the one Pareto routine, over the runs table:
the trials whose numbers are results)."""
from __future__ import annotations

import json
import math
import time

from hyporay import metrics as M
from hyporay import tracking
from hyporay.analysis import frontier as F
from hyporay.analysis import plots, runs
from hyporay.analysis import tables as T
from hyporay.analysis.stats import pareto_mask
from hyporay.engine import publish as P
from hyporay.engine.optuna.definition import (
    EPOCHS_TRAINED,
    LABEL_KEY,
    OBJECTIVE,
    STATE_TAG,
    STATES,
    TRIAL_NUMBER_TAG,
)
from hyporay.engine.optuna.storage import first_line
from hyporay.engine.output import say


def _quiet_optuna() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_plots(study, out_dir, multi_objective: bool):
    """Optuna's standard plots as self-contained HTML; {plot: why skipped} for those that cannot be drawn."""
    import optuna.visualization as vis
    from optuna.trial import TrialState

    _quiet_optuna()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots_ = {} if multi_objective else {"optimization_history": vis.plot_optimization_history,
                                         "intermediate_values": vis.plot_intermediate_values,
                                         "param_importances": vis.plot_param_importances}
    paths, skipped = [], {}
    for name, fn in plots_.items():
        if not complete:
            skipped[name] = "no completed trial"
            continue
        if name == "param_importances":
            distinct = {json.dumps(t.params, sort_keys=True, default=str) for t in complete}
            if len(complete) < 2 or len(distinct) < 2:
                skipped[name] = f"needs >= 2 completed trials with different parameters, has {len(distinct)}"
                continue
        try:
            fig = fn(study)
        except Exception as exc:  # noqa: BLE001 - a plot that cannot be drawn is skipped, with the reason
            skipped[name] = first_line(exc)
            continue
        path = out_dir / f"{name}.html"
        fig.write_html(str(path), include_plotlyjs=True)
        paths.append(path)
    return paths, skipped


def trial_rows(study) -> list[dict]:
    return [{"number": t.number, "state": t.state.name,
             "value": "" if t.values is None else (t.values[0] if len(t.values) == 1 else json.dumps(t.values)),
             EPOCHS_TRAINED: t.user_attrs.get(EPOCHS_TRAINED, ""), M.NATURAL_RISK: t.user_attrs.get(M.NATURAL_RISK, ""),
             M.HYPOCRITICAL_RISK: t.user_attrs.get(M.HYPOCRITICAL_RISK, ""),
             **{f"param.{k}": v for k, v in t.params.items()}, "fail_reason": t.user_attrs.get("fail_reason", ""),
             "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")} for t in study.get_trials(deepcopy=False)]


def pareto_set(df, space) -> list[dict]:
    """The Pareto set of the study's completed trials (both risks minimised), sorted by natural risk."""
    res, _ = runs.results(df)
    if res.empty or TRIAL_NUMBER_TAG not in res or M.HYPOCRITICAL_RISK not in res:
        return []
    res = res[res.get(STATE_TAG, "COMPLETE") == "COMPLETE"] if STATE_TAG in res else res
    rows = [r for r in runs.records(res) if M.HYPOCRITICAL_RISK in r and M.NATURAL_RISK in r]
    keep = pareto_mask([(r[M.NATURAL_RISK], r[M.HYPOCRITICAL_RISK]) for r in rows])
    out = [{"trial": int(float(r[TRIAL_NUMBER_TAG])), **{p.name: r.get(p.key) for p in space},
            M.NATURAL_RISK: r[M.NATURAL_RISK], M.HYPOCRITICAL_RISK: r[M.HYPOCRITICAL_RISK], "mlflow_run_id": r["run_id"]}
           for r, k in zip(rows, keep) if k]
    return sorted(out, key=lambda r: (r[M.NATURAL_RISK], r[M.HYPOCRITICAL_RISK]))


def pareto_points(df, space) -> list[F.FrontierPoint]:
    """Every completed trial as a point (its trainer's curve, labelled by its other parameters), Pareto marked."""
    res, _ = runs.results(df)
    pts = []
    for r in runs.records(res):
        if M.HYPOCRITICAL_RISK not in r or r.get(STATE_TAG, "COMPLETE") != "COMPLETE":
            continue
        label = ", ".join(f"{'λ' if p.name == 'lam' else 'ε' if p.name == 'eps' else p.name}={r.get(p.key):.3g}"
                          for p in space if p.name != "trainer" and isinstance(r.get(p.key), (int, float)))
        pts.append(F.FrontierPoint(str(r.get("train.trainer")), label, 1, r[M.NATURAL_RISK], 0.0,
                                   r[M.HYPOCRITICAL_RISK], 0.0))
    for p, flag in zip(pts, pareto_mask([(p.natural_risk, p.hypocritical_risk) for p in pts])):
        p.pareto = p.front = bool(flag)
    return pts


def publish(plan, df, c) -> tuple[list, str | None]:
    """Artefacts, figures, metrics and tags on the study's parent run (through ``publish.to_parent``); returns
    (the artefact paths, the trade-off view's link or None)."""
    study, out = plan.study, plan.d.art_dir(plan.study_name)  # beside a grid's: <storage>/<name>/artefacts
    out.mkdir(parents=True, exist_ok=True)
    paths, skipped = study_plots(study, out, plan.defn.multi_objective)
    rows = trial_rows(study)
    paths.append(T.write_csv(rows, out / "trials.csv"))
    caption = T.threat_caption(plan.base, plan.d.profile)
    if plan.defn.multi_objective:
        prow = pareto_set(df, plan.space)
        paths.append(T.write_csv(prow, out / "pareto_set.csv") if prow else _empty(out / "pareto_set.csv"))
        keys = [k for k in (prow[0] if prow else {}) if k != "mlflow_run_id"]
        md = out / "pareto_set.md"
        md.write_text(T.markdown_table(keys, [[f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
                                              for r in prow],
                                       f"Pareto set of study {plan.study_name} ({plan.d.profile}): natural_risk and "
                                       f"hypocritical_risk minimised; {caption}") if prow else "(no completed trial)\n")
        paths.append(md)
        pts = pareto_points(df, plan.space)
        if pts:
            title = f"{plan.study_name}: Pareto front ({len(prow)} of {len(pts)} completed trials)"
            paths += [plots.frontier_png(pts, out / "pareto_front.png", title, caption),
                      plots.frontier_html(pts, out / "pareto_front.html", title, caption)]
    session = out / "sessions" / f"session-{time.strftime('%Y%m%d-%H%M%S')}.json"
    session.parent.mkdir(exist_ok=True)
    session.write_text(json.dumps({**plan.settings, "n_trials": plan.n_trials, "parallel": plan.parallel,
                                   "seconds": round(plan.d.seconds, 1), "plots_skipped": skipped,
                                   "trials": [r for r in rows if r["number"] >= plan.n_prior]}, indent=1,
                                  default=str))
    tags = {f"plot_skipped.{name}": why[:250] for name, why in skipped.items()}
    for name, why in skipped.items():
        say(f"plot {name} skipped: {why}")
    counts = {st: sum(r["state"] == st for r in rows) for st in STATES}
    summary = {f"n_{st.lower()}": v for st, v in counts.items()}
    summary["trial_epochs"] = sum(int(r[EPOCHS_TRAINED] or 0) for r in rows)
    tracking.log_metrics(c, plan.parent_id, summary, step=len(rows))
    if not plan.defn.multi_objective and counts["COMPLETE"]:
        best = study.best_trial
        bm = {f"best.{k}": v for k, v in _best_metrics(c, best).items()}
        bm.update({f"best_param.{k}": v for k, v in best.params.items() if isinstance(v, (int, float))})
        tracking.log_metrics(c, plan.parent_id, bm, step=len(rows))
        tags |= {"best_trial_number": str(best.number), "best_trial_run_id": best.user_attrs.get("mlflow_run_id", ""),
                 **{f"best_param.{k}": str(v) for k, v in best.params.items()}}
    if plan.defn.multi_objective:
        tags["pareto_trials"] = ",".join(str(r["trial"]) for r in sorted(pareto_set(df, plan.space),
                                                                          key=lambda r: r["trial"]))
    note = (f"### Optuna study {plan.study_name}\n\n{plan.objective_text()}; {caption}\n\n"
            + ", ".join(f"{v} {k}" for k, v in counts.items()))
    view = P.to_parent(c, plan.d.tracking_uri, plan.exp_id, plan.parent_id, df, [*paths, (session, "sessions")],
                       note=note, label_key=LABEL_KEY, tags=tags)
    return paths, view


def _empty(path):
    path.write_text("")
    return path


def _best_metrics(c, best) -> dict[str, float]:
    """The best trial's final metrics from its MLflow run, else its Optuna user attributes."""
    run_id = best.user_attrs.get("mlflow_run_id")
    out: dict[str, float] = {}
    if run_id:
        try:
            out = dict(tracking.retry(c.get_run, run_id).data.metrics)
        except Exception:  # noqa: BLE001 - a run in another tracking store
            out = {}
    out.setdefault(OBJECTIVE, float(best.value))
    for k in (M.NATURAL_RISK, M.HYPOCRITICAL_RISK, EPOCHS_TRAINED):
        if k in best.user_attrs:
            out.setdefault(k, float(best.user_attrs[k]))
    return out


def _fmt_params(params: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def summary(plan, df, paths, view: str | None, interrupted: bool = False) -> None:
    """A study's closing summary: its trials by state, the best trial or the Pareto set, then ``publish.tail``."""
    study = plan.study
    every = study.get_trials(deepcopy=False)
    counts = {st: sum(t.state.name == st for t in every) for st in STATES}
    asked = list(plan.searcher.asked.values())
    epochs = int(plan.base["train"]["epochs"])
    spent = sum(a.epochs for a in asked)
    say()
    say(f"study {study.study_name}: {len(every)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
        f"this run: {len(asked)} trials, {spent} trial-epochs of {len(asked) * epochs} without pruning, "
        f"{plan.d.seconds:.0f} s")
    left = [a for a in asked if a.state == "FAIL" and a.reason in ("diverged", "degenerate model: no result")]
    if left:
        say(f"left out of the study's objective: {len(left)} trial(s) whose numbers are not results "
            f"({', '.join(sorted({a.reason for a in left}))})")
    if plan.defn.multi_objective:
        rows = pareto_set(df, plan.space)
        say(f"Pareto set: {len(rows)} trial(s)  ({T.threat_caption(plan.base)})")
        for r in rows:
            say(f"  trial {r['trial']:3d}  natural {r[M.NATURAL_RISK]:.3f}  hypocritical {r[M.HYPOCRITICAL_RISK]:.3f}"
                f"  {_fmt_params({k: v for k, v in r.items() if k in {p.name for p in plan.space}})}")
    elif counts["COMPLETE"]:
        b = study.best_trial
        nat, hyp = b.user_attrs.get(M.NATURAL_RISK, math.nan), b.user_attrs.get(M.HYPOCRITICAL_RISK, math.nan)
        ok = b.user_attrs.get("feasible")
        say(f"best trial {b.number}: objective {b.value:.4f}  ({M.HYPOCRITICAL_RISK} {hyp:.3f}, {M.NATURAL_RISK} "
            f"{nat:.3f} {'<=' if ok else '>'} {plan.objective.max_natural_risk:g})  {_fmt_params(b.params)}")
        if not ok:
            say("  no trial met the natural-risk ceiling: widen the search or raise --max-natural-risk")
    for a in [a for a in asked if a.state == "FAIL"][:3]:
        say(f"failed: trial {a.trial.number}: {a.reason}")
    P.tail(plan.d, plan, paths, view, [f"watch live:      optuna-dashboard {plan.storage}"],
           ("interrupted; continue with:" if interrupted else "continue with:", plan.resume_command()))
