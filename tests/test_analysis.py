"""The analysis layer on hand-made runs (no Ray): one typed runs table, outcomes left out and counted, frontiers
(means over seeds, curves, Pareto marks, each trainer's own front), tables (substandard layout, convergence),
CSV/PNG/HTML artefacts, and ``hyporay frontier`` on a small MLflow store."""
from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest

from hyporay import metrics as M
from hyporay.analysis import frontier as F
from hyporay.analysis import reports, runs
from hyporay.analysis import tables as R
from hyporay.analysis.stats import pareto_mask
from hyporay.tracking.runs import table

X, Y = M.NATURAL_RISK, M.HYPOCRITICAL_RISK


def _run(status="FINISHED", params=None, metrics=None, run_id="r", tags=None, name=None):
    """A stand-in for an MLflow Run: .info (status, run_id, run_name) and .data (params, metrics, tags)."""
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id=run_id, run_name=name),
                           data=SimpleNamespace(params=params or {}, metrics=metrics or {}, tags=tags or {}))


def _frontier_runs():
    p = lambda trainer, lam, seed: {"train.trainer": trainer, "train.lam": str(lam), "seed": str(seed)}  # noqa: E731
    return [
        _run(params=p("trades", 1.0, 0), metrics={X: 0.10, Y: 0.80}, run_id="a"),
        _run(params=p("trades", 1.0, 1), metrics={X: 0.30, Y: 0.60}, run_id="b"),
        _run(params=p("trades", 5.0, 0), metrics={X: 0.20, Y: 0.50}, run_id="c"),
        _run(params=p("thrm", 5.0, 0), metrics={X: 0.20, Y: 0.40}, run_id="d"),
        _run(params=p("thrm", 20.0, 0), metrics={X: 0.25}, run_id="e"),            # no R_hyp(D-): no point
    ]


def _table(runs_):
    return runs.results(table(runs_))[0]


# --- the runs table ---------------------------------------------------------------------------------------

def test_runs_table_types_params_and_classifies_outcomes():
    df = table([
        _run(params={"train.lam": "5.0", "seed": "2", "train.augment": "True", "train.milestones": "[14, 17]",
                     "model.name": "mlp", "optuna.trial_number": "3"}, metrics={X: 0.1}, run_id="ok",
             tags={"hyporay.parts": "t12,fig3", "hyporay.curves": "trades,thrm"}),
        _run("RUNNING", run_id="running"),
        _run("FAILED", run_id="crashed"),
        _run("FAILED", run_id="nan", tags={"diverged": "true"}),
        _run(metrics={"degenerate": 1.0}, run_id="const"),
    ])
    ok = df[df.run_id == "ok"].iloc[0]
    assert ok["train.lam"] == 5.0 and ok["seed"] == 2 and ok["train.augment"] is True
    assert ok["train.milestones"] == [14, 17] and ok["model.name"] == "mlp" and ok["optuna.trial_number"] == 3.0
    assert ok["parts"] == ("t12", "fig3") and ok["curves"] == ("trades", "thrm")
    assert dict(zip(df.run_id, df.outcome)) == {"ok": "result", "running": "unfinished", "crashed": "unfinished",
                                                "nan": "diverged", "const": "degenerate"}
    res, left = runs.results(df)
    assert list(res.run_id) == ["ok"] and left == {"unfinished": 2, "diverged": 1, "degenerate": 1}
    assert runs.describe_left_out(left) == "1 degenerate, 1 diverged, 2 unfinished"
    assert runs.records(res)[0].get(Y) is None   # a run without a metric simply lacks it
    empty = table([])
    assert empty.empty and runs.results(empty)[1] == {}


def test_mean_std_rule():
    assert runs.mean_std([0.1, 0.3]) == (pytest.approx(0.2), pytest.approx(math.sqrt(0.02)))  # sample std
    assert runs.mean_std([0.5, float("nan")]) == (0.5, 0.0)                                  # NaN ignored
    assert all(math.isnan(v) for v in runs.mean_std([]))


def test_commits_and_one_clean_commit():
    sha, other = "a" * 40, "b" * 40
    clean = {"hyporay.git_commit": sha, "hyporay.git_dirty": "false", "hyporay.git_diff_sha256": ""}
    df = table([_run(tags=clean, run_id="1"), _run(tags=clean, run_id="2")])
    assert runs.one_clean_commit(df) == sha and runs.commits(df) == {f"commit {sha[:12]}": 2}
    dirty = {**clean, "hyporay.git_dirty": "true", "hyporay.git_diff_sha256": "f" * 64}
    mixed = table([_run(tags=clean), _run(tags=dirty), _run(tags={**clean, "hyporay.git_commit": other})])
    assert runs.one_clean_commit(mixed) is None and len(runs.commits(mixed)) == 3
    assert runs.one_clean_commit(table([_run()])) is None  # no provenance recorded: never claimed clean


# --- frontier -----------------------------------------------------------------------------------------------

def test_points_mean_and_sample_std_over_seeds():
    pts = F.points(_table(_frontier_runs()))
    assert [(p.trainer, p.label) for p in pts] == [("thrm", 5.0), ("trades", 1.0), ("trades", 5.0)]
    t1 = pts[1]
    assert t1.n_seeds == 2
    assert t1.natural_risk == pytest.approx(0.2) and t1.hypocritical_risk == pytest.approx(0.7)
    assert t1.natural_risk_std == pytest.approx(math.sqrt(0.02))   # sample std (n - 1)
    assert pts[0].natural_risk_std == 0.0                          # one seed: std 0
    # thrm (0.2, 0.4) dominates trades λ=5 (0.2, 0.5) and trades λ=1 (0.2, 0.7)
    assert [p.pareto for p in pts] == [True, False, False]
    # each trainer's own front: trades λ=5 beats trades λ=1 in both risks
    assert [p.front for p in pts] == [True, False, True] and F.front(pts[1:]) == [pts[2]]


def test_a_natural_run_feeds_every_curve_it_was_planned_for():
    shared = _run(params={"train.trainer": "natural", "train.lam": "0.0", "seed": "0"}, metrics={X: 0.03, Y: 0.97},
                  tags={"hyporay.curves": "trades,thrm"})
    pts = F.points(_table([*_frontier_runs(), shared]))
    assert {(p.trainer, p.label) for p in pts if p.label == 0.0} == {("trades", 0.0), ("thrm", 0.0)}
    assert "natural" not in {p.trainer for p in pts}


def test_points_with_label_key_and_string_labels():
    rs = [_run(params={"train.trainer": "natural", "model.name": m}, metrics={X: x, Y: y})
          for m, x, y in (("mlp", 0.03, 0.9), ("cnn", 0.02, 0.95), ("mlp", 0.05, 0.7))]
    pts = F.points(_table(rs), label_key="model.name")
    assert [(p.label, p.n_seeds) for p in pts] == [("cnn", 1), ("mlp", 2)]
    assert all(p.label_key == "model.name" for p in pts)
    assert pts[1].natural_risk == pytest.approx(0.04) and pts[1].hypocritical_risk == pytest.approx(0.8)
    assert [p.label_text for p in pts] == ["cnn", "mlp"]


def test_label_helpers():
    assert F.label_column("train.lam") == "lam"
    assert F.label_column("train.attack.eps") == "eps"
    assert F.label_column("model.name") == "model"
    assert F.label_text("train.lam", 5.0) == "λ=5"
    assert F.label_text("train.attack.eps", 0.03137254901960784) == "ε=0.03137"
    assert F.label_text("model.name", "resnet18") == "resnet18"


def test_pareto_mask_edge_cases():
    assert pareto_mask([]).tolist() == []
    assert pareto_mask([(0.4, 0.4)]).tolist() == [True]
    assert pareto_mask([(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)]).tolist() == [True, False, False]
    assert pareto_mask([(0.1, 0.3), (0.2, 0.2), (0.3, 0.1)]).tolist() == [True, True, True]


def test_table_marks_pareto_and_front_and_names_the_threat_model():
    text = F.table(F.points(_table(_frontier_runs())), caption="trade-off frontier (linf eps=0.1 steps=20)")
    lines = text.splitlines()
    assert lines[0] == "trade-off frontier (linf eps=0.1 steps=20)"
    assert lines[1].split()[:3] == ["trainer", "lambda", "seeds"]
    assert lines[3].startswith("thrm") and lines[3].rstrip().endswith("*")
    assert lines[4].rstrip().endswith("0.1414") and lines[5].rstrip().endswith("+")   # trades λ=1: neither
    assert "0.2000 ± 0.1414" in lines[4] and lines[-1].startswith("* Pareto-optimal")


def test_table_with_string_labels_is_aligned():
    rs = [_run(params={"train.trainer": "thrm", "model.name": m}, metrics={X: x, Y: y})
          for m, x, y in (("wrn28_10", 0.1, 0.2), ("mlp", 0.2, 0.3))]
    lines = F.table(F.points(_table(rs), "model.name")).splitlines()
    assert lines[0].split()[:2] == ["trainer", "model"]
    assert len({ln.index("1  ") for ln in lines[2:4]}) == 1  # the seeds column lines up
    assert "wrn28_10" in lines[3]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_frontier_artefacts_csv_png_html(tmp_path):
    trial = {"data": {"name": "digits"}, "eval": {"attack": {"eps": 0.1, "steps": 20}}}
    pts, (csv_path, png, html), caption = reports.frontier(table(_frontier_runs()), tmp_path / "out", "test",
                                                           trial, "local")
    rows = _read_csv(csv_path)
    assert list(rows[0]) == ["trainer", "lam", "n_seeds", "natural_risk", "natural_risk_std", "hypocritical_risk",
                             "hypocritical_risk_std", "pareto", "front"]
    assert [(r["trainer"], float(r["lam"]), r["pareto"]) for r in rows] == [
        ("thrm", 5.0, "True"), ("trades", 1.0, "False"), ("trades", 5.0, "False")]
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    text = html.read_text()
    assert ("λ=5" in text or "\\u03bb=5" in text) and "trades" in text  # plotly's JSON escapes λ
    # a curve whose own front has two points or more gets its line (a staircase by natural risk)
    more = [*_frontier_runs(), _run(params={"train.trainer": "trades", "train.lam": "9", "seed": "0"},
                                    metrics={X: 0.5, Y: 0.1})]
    _, (_, _, html2), _ = reports.frontier(table(more), tmp_path / "more", "test", trial, "local")
    assert "trades front" in html2.read_text() and "thrm front" not in html2.read_text()
    assert "eval attack linf eps=0.1" in caption and "steps=20" in caption


def test_frontier_caption_counts_what_was_left_out(tmp_path):
    trial = {"data": {"name": "digits"}}
    rs = [*_frontier_runs(), _run("FAILED", tags={"diverged": "true"}), _run(metrics={"degenerate": 1.0})]
    _, _, caption = reports.frontier(table(rs), tmp_path, "t", trial, "local")
    assert caption.endswith("left out: 1 degenerate, 1 diverged run(s)")


def test_title_lists_data_and_models():
    from hyporay.engine.publish import title

    df = table([_run(params={"data.name": "digits", "model.name": m}) for m in ("mlp", "cnn", "mlp")])
    assert title("architectures", "local", df) == "architectures · local · digits/cnn,mlp"
    assert title("x", "paper", table([])) == "x · paper · ?/?"


# --- tables -----------------------------------------------------------------------------------------------------

def test_mean_by_and_markdown():
    rows = [{"model.name": "mlp", "acc_clean": 0.9}, {"model.name": "mlp", "acc_clean": 0.8}]
    [g] = R.mean_by(rows, ["model.name"], ["acc_clean", "acc_adv"])
    assert g["n_seeds"] == 2 and g["acc_clean"] == pytest.approx(0.85)
    assert g["acc_clean_std"] == pytest.approx(math.sqrt(0.005))
    assert math.isnan(g["acc_adv"]) and math.isnan(g["acc_adv_std"])
    md = R.markdown_table(["a", "b"], [["1", "2"], ["3|x", "4"]], caption="Table: x")
    assert md.splitlines() == ["Table: x", "", "| a | b |", "|---|---|", "| 1 | 2 |", "| 3\\|x | 4 |"]


def _sub_row(variant, model, d, a, f, seed=0):
    return {"variant.name": variant, "model.name": model, "seed": seed, M.ACC_CLEAN: d, M.ACC_ADV: a, M.ACC_HYP: f}


def test_substandard_table_layout():
    rows = [  # out of order, two seeds for Quality/MLP, VGG-16 missing for Noise
        _sub_row("quality", "mlp", 0.58, 0.01, 0.99, seed=0), _sub_row("quality", "mlp", 0.5818, 0.0082, 0.9962, 1),
        _sub_row("naive", "vgg16", 0.0976, 0.0045, 0.5725), _sub_row("naive", "mlp", 0.0856, 0.0, 0.9956),
        _sub_row("noise", "mlp", 0.0853, 0.0071, 0.8675), _sub_row("mislabeling", "mlp", 0.0992, 0.0, 1.0),
        _sub_row("poisoning", "mlp", 0.576, 0.0055, 0.995), _sub_row("quality", "vgg16", 0.929, 0.0, 1.0),
        _sub_row("poisoning", "vgg16", 0.1219, 0.0, 0.9949), _sub_row("mislabeling", "vgg16", 0.0994, 0.0, 0.9986),
    ]
    header, body, cells = R.substandard_table(rows, ["mlp", "vgg16"])
    assert header == ["training set", "MLP", "VGG-16"]
    assert [b[0] for b in body] == ["Naive", "Noise", "Mislabeling", "Poisoning", "Quality"]
    assert body[0] == ["Naive", "8.56 / 0.00 / 99.56", "9.76 / 0.45 / 57.25"]
    assert body[1] == ["Noise", "8.53 / 0.71 / 86.75", "n/a"]
    assert body[4][1] == "58.09 / 0.91 / 99.31"   # mean over the two seeds
    assert len(cells) == 9 and cells[-2]["n_seeds"] == 2
    assert R.substandard_table(rows)[0] == ["training set", "MLP", "VGG-16"]  # default column order: first seen


def test_substandard_report_markdown_and_csv(tmp_path):
    rs = [_run(params={"variant.name": v, "model.name": "mlp"}, metrics={M.ACC_CLEAN: d, M.ACC_ADV: a, M.ACC_HYP: f})
          for v, d, a, f in (("naive", 0.1, 0.0, 0.9), ("quality", 0.95, 0.4, 1.0))]
    trials = [{"model": {"name": "mlp"}, "data": {"name": "digits"}, "eval": {"attack": {"eps": 0.1}}}]
    said = []
    md, csv_path = reports.substandard(table(rs), trials, "local", tmp_path, said.append)
    lines = md.read_text().splitlines()
    assert lines[0].startswith("Accuracy (%) D / A / F") and "data digits" in lines[0]
    assert "profile local" in lines[0] and "mean over 1 seed(s)" in lines[0] and "train attack" in lines[0]
    assert lines[2] == "| training set | MLP |" and lines[4] == "| Naive | 10.00 / 0.00 / 90.00 |"
    got = _read_csv(csv_path)
    assert [(r["variant.name"], r["model.name"], r["n_seeds"]) for r in got] == [("naive", "mlp", "1"),
                                                                              ("quality", "mlp", "1")]
    assert said and "| Naive |" in said[0]


def test_threat_caption_names_both_attacks():
    cap = R.threat_caption({"data": {"name": "digits"}, "eval": {"attack": {"eps": 0.1, "steps": 20}}}, "local")
    assert cap.startswith("data digits; eval attack linf eps=0.1 ") and "steps=20" in cap
    assert "step=0.025" in cap and "restarts=1" in cap and cap.endswith("profile local")
    assert "train attack linf eps=0.03137 (8/255) steps=10" in cap


# --- attack-convergence grids ---------------------------------------------------------------------------

def test_metric_name_helper_round_trip():
    assert M.at_setting("steps", 100, M.ACC_ADV) == "steps_100/acc_adv"
    assert M.at_setting("restarts", 5, M.HYPOCRITICAL_RISK) == "restarts_5/hypocritical_risk"
    assert M.parse_setting("steps_100/acc_adv") == ("steps", 100, "acc_adv")
    assert M.parse_setting("restarts_5/hypocritical_risk") == ("restarts", 5, "hypocritical_risk")
    for name in ("acc_adv", "steps_x/acc_adv", "epochs_3/acc_adv", "steps_3/", "eval.steps_grid"):
        assert M.parse_setting(name) is None
    with pytest.raises(ValueError, match="kind"):
        M.at_setting("epochs", 3, M.ACC_ADV)


def test_eval_grids_are_validated_in_one_line():
    from hyporay.config import ConfigError, load_config

    cfg = load_config({}, ["eval.steps_grid=[1,10]", "eval.restarts_grid=[2]"])
    assert cfg.eval.steps_grid == [1, 10] and cfg.eval.restarts_grid == [2]
    assert load_config({}).eval.steps_grid == [] and load_config({}).eval.restarts_grid == []
    with pytest.raises(ConfigError) as err:
        load_config({}, ["eval.steps_grid=[1,0]"])
    assert str(err.value) == "eval.steps_grid: every value must be >= 1, got 0"
    with pytest.raises(ConfigError, match=r"^eval\.restarts_grid"):
        load_config({}, ["eval.restarts_grid=[-2]"])


def test_convergence_metrics_on_a_model(digits, naive_mlp):
    import torch

    from hyporay.config import load_config
    from hyporay.experiment import convergence_metrics, evaluate_model

    cfg = load_config({"eval": {"attack": {"eps": 0.1, "steps": 5}, "steps_grid": [1, 5], "restarts_grid": [1, 3]}})
    out = convergence_metrics(cfg, naive_mlp, digits, torch.device("cpu"), epoch=3)
    assert set(out) == {M.at_setting(k, v, m) for k, vs in (("steps", (1, 5)), ("restarts", (1, 3)))
                        for v in vs for m in M.SETTING_METRICS}
    final = evaluate_model(cfg, naive_mlp, digits, torch.device("cpu"), epoch=3)
    for m in M.SETTING_METRICS:  # the eval attack itself = steps_5 = restarts_1 (same seed)
        assert out[M.at_setting("steps", 5, m)] == final[m] == out[M.at_setting("restarts", 1, m)]
    assert out["restarts_3/acc_adv"] <= out["restarts_1/acc_adv"]   # more restarts never help the model
    assert out["restarts_3/acc_hyp"] >= out["restarts_1/acc_hyp"]
    assert out["steps_1/acc_adv"] >= out["steps_5/acc_adv"]


def _conv_runs():
    def metrics(trainer_offset, seed_offset):
        out = {}
        for k, a in ((1, 0.8), (10, 0.5), (100, 0.495)):
            out[M.at_setting("steps", k, M.ACC_ADV)] = a - trainer_offset + seed_offset
            out[M.at_setting("steps", k, M.ACC_HYP)] = 0.9
        for r, a in ((1, 0.5), (5, 0.45)):
            out[M.at_setting("restarts", r, M.ACC_ADV)] = a - trainer_offset
        return out | {M.ACC_ADV: 0.5}

    return [_run(params={"train.trainer": "natural"}, metrics=metrics(0.4, 0.0)),
            _run(params={"train.trainer": "pgd_at"}, metrics=metrics(0.0, 0.0)),
            _run(params={"train.trainer": "pgd_at"}, metrics=metrics(0.0, 0.02))]


def test_convergence_rows_verdict_and_plot(tmp_path):
    from hyporay.analysis import plots

    rows = _table(_conv_runs())
    conv = R.convergence_rows(rows)
    pgd = {(o["setting"], o["value"], o["metric"]): o for o in conv if o["trainer"] == "pgd_at"}
    assert pgd[("steps", 10, M.ACC_ADV)]["n_seeds"] == 2
    assert pgd[("steps", 10, M.ACC_ADV)]["mean"] == pytest.approx(0.51)
    assert len(conv) == 2 * (3 + 3 + 2)
    verdict = R.convergence_verdict(conv)
    steps_adv = [v for v in verdict if v.startswith("pgd_at") and "adversarial" in v and "steps" in v]
    assert len(steps_adv) == 1 and "10 -> 100" in steps_adv[0] and steps_adv[0].endswith(": converged")
    restarts = [v for v in verdict if v.startswith("pgd_at") and "restarts" in v]
    assert restarts[0].endswith("NOT converged")                       # 0.50 -> 0.45
    png = plots.convergence_png(conv, tmp_path / "c.png", "t")
    assert len(_read_csv(R.write_csv(conv, tmp_path / "c.csv"))) == len(conv) and png.read_bytes()[:4] == b"\x89PNG"
    said = []
    paths = reports.convergence(table(_conv_runs()), [{"data": {"name": "digits"}, "model": {"name": "mlp"}}],
                                "local", tmp_path / "r", said.append)
    assert [p.name for p in paths] == ["convergence.csv", "convergence.png"] and "NOT converged" in "".join(said)


def test_convergence_verdict_flags_a_stronger_attack_that_helps():
    conv = [{"trainer": "thrm", "setting": "steps", "value": k, "metric": M.ACC_ADV, "mean": a, "std": 0.0,
             "n_seeds": 1} for k, a in ((1, 0.5), (10, 0.6), (100, 0.6))]
    [line] = R.convergence_verdict(conv)
    assert "converged; a stronger attack helped the model by 0.100" in line


# --- ``hyporay frontier`` on a small MLflow store -------------------------------------------------------

def _child(c, exp_id, parent_id, trainer, lam, risks, status="FINISHED"):
    from hyporay import tracking

    run = c.create_run(exp_id, run_name=f"{trainer}-{lam}", tags={tracking.PARENT_TAG: parent_id,
                                                                   tracking.ROLE_TAG: "trial"})
    rid = run.info.run_id
    tracking.log_params(c, rid, {"train.trainer": trainer, "train.lam": lam, "data.name": "digits",
                                 "model.name": "mlp"})
    if risks is not None:
        tracking.log_metrics(c, rid, {X: risks[0], Y: risks[1]}, step=1)
    c.set_terminated(rid, status) if status != "RUNNING" else None
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from hyporay import tracking

    d = tmp_path_factory.mktemp("mlflow")
    uri = tracking.default_tracking_uri(d)
    exp_id = tracking.open_store(uri, "thrm_lambda-local")
    c = tracking.client(uri)
    old = c.create_run(exp_id, run_name="old", tags={tracking.ROLE_TAG: "sweep", tracking.SWEEP_TAG: "thrm_lambda"})
    _child(c, exp_id, old.info.run_id, "trades", 1, (0.9, 0.9))
    parent = c.create_run(exp_id, run_name="new", tags={tracking.ROLE_TAG: "sweep", tracking.SWEEP_TAG: "thrm_lambda",
                                                         "profile": "local"})
    pid = parent.info.run_id
    for trainer, lam, risks in (("trades", 1, (0.1, 0.8)), ("trades", 5, (0.2, 0.5)), ("thrm", 5, (0.15, 0.4))):
        _child(c, exp_id, pid, trainer, lam, risks)
    _child(c, exp_id, pid, "thrm", 10, (0.3, 0.3), status="RUNNING")   # interrupted
    _child(c, exp_id, pid, "thrm", 20, None, status="FAILED")
    return SimpleNamespace(uri=uri, dir=d, exp_id=exp_id, parent=pid, old=old.info.run_id, client=c)


def test_cli_frontier_rebuilds_from_the_latest_parent(store, tmp_path, capsys):
    from hyporay.cli import main
    from hyporay.engine import mlflow_ui

    out = tmp_path / "fr"
    assert main(["frontier", "--experiment", "thrm_lambda-local", "--tracking-uri", store.uri, "--out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert f"parent run {store.parent}" in text
    assert "from 3 finished run(s) in 3 point(s); left out 2 unfinished run(s)" in text
    assert "trainer   lambda seeds" in text and "threat model not recorded" in text
    rows = _read_csv(out / "frontier.csv")
    assert [(r["trainer"], float(r["lam"])) for r in rows] == [("thrm", 5.0), ("trades", 1.0), ("trades", 5.0)]
    assert (out / "frontier.png").is_file() and (out / "frontier.html").is_file()
    logged = {a.path for a in store.client.list_artifacts(store.parent)}
    assert logged == {"frontier.csv", "frontier.png", "frontier.html"}
    tags = store.client.get_experiment(store.exp_id).tags
    assert f"mlflow.sharedViewState.{mlflow_ui.FRONTIER_VIEW_KEY}" in tags
    note = store.client.get_run(store.parent).data.tags["mlflow.note.content"]
    assert "| thrm | 5 | 1 | 0.1500 ± 0.0000 | 0.4000 ± 0.0000 | * |" in note


def test_cli_frontier_with_parent_and_label_key(store, tmp_path, capsys):
    from hyporay.cli import main

    assert main(["frontier", "--experiment", "thrm_lambda-local", "--tracking-uri", store.uri, "--parent", store.old,
                 "--out", str(tmp_path / "o"), "--label-key", "model.name"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[3].split()[:3] == ["trainer", "model", "seeds"]
    assert "mlp" in text and "left out" not in text


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope"], "hyporay: error: experiment: no experiment 'nope' in "),
    (["--experiment", "thrm_lambda-local", "--parent", "0123"], "hyporay: error: mlflow: "),
    (["--experiment", "x", "--tracking-uri", "http://127.0.0.1:9"], "hyporay: error: tracking-uri: cannot reach"),
])
def test_cli_frontier_errors_are_one_line(store, capsys, args, message):
    from hyporay.cli import main

    if "--tracking-uri" not in args:
        args = args + ["--tracking-uri", store.uri]
    assert main(["frontier", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_cli_frontier_missing_sqlite_file(tmp_path, capsys, monkeypatch):
    from hyporay.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["frontier", "--experiment", "x"]) == 2
    assert "no MLflow database at" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()


def test_the_certified_side_of_the_bracket_reaches_table_and_csv(tmp_path):
    rs = [_run(params={"train.trainer": "thrm", "train.lam": "5", "seed": str(s)},
               metrics={X: 0.1, Y: y, F.UPPER: u}) for s, y, u in ((0, 0.4, 0.9), (1, 0.5, 1.0))]
    pts = F.points(_table(rs))
    assert pts[0].hypocritical_risk_certified_upper == pytest.approx(0.95) and F.certified(pts)
    assert "certified <=" in F.table(pts) and "0.9500" in F.table(pts) and "vacuous" not in F.table(pts)
    # a bound of 1 proves nothing: the table says so, and how many
    loose = F.points(_table([_run(params={"train.trainer": t, "train.lam": "5", "seed": "0"},
                                  metrics={X: 0.1, Y: 0.5, F.UPPER: u}) for t, u in (("thrm", 1.0), ("trades", 0.8))]))
    assert "1 of 2 at 1.0000 is vacuous" in F.table(loose)
    assert "every bound at 1.0000 is vacuous" in F.table(loose[:1])
    assert F.UPPER in F.csv_rows(pts)[0]
    plain = F.points(_table(_frontier_runs()))
    assert not F.certified(plain) and F.UPPER not in F.csv_rows(plain)[0] and "certified" not in F.table(plain)


def test_frontier_points_carry_their_training_passes():
    """Each point's cost: the mean over seeds of its runs' train_passes, shown in the table and the CSV only when
    the runs counted them; the sweep's sum for its parent run."""
    from hyporay.engine.publish import passes_spent

    rows = _frontier_runs()
    counted = _table(rows)
    counted[M.TRAIN_PASSES] = [1000.0 * (i + 1) for i in range(len(counted))]
    counted[M.EVAL_PASSES] = 10.0
    pts = F.points(counted)
    first = counted[(counted["train.trainer"] == pts[0].trainer) & (counted["train.lam"] == pts[0].label)]
    assert pts[0].train_passes == pytest.approx(first[M.TRAIN_PASSES].mean())
    assert F.counted(pts) and "train passes" in F.table(pts) and F.COST in F.csv_rows(pts)[0]
    plain = F.points(_table(rows))
    assert not F.counted(plain) and "train passes" not in F.table(plain) and F.COST not in F.csv_rows(plain)[0]
    spent = passes_spent(counted)
    assert spent == {"sweep_train_passes": sum(counted[M.TRAIN_PASSES]), "sweep_eval_passes": 10.0 * len(counted)}
    assert passes_spent(_table(rows)) == {}
