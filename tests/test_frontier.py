"""Frontier and report functions on hand-made points and rows (no Ray): Pareto mask, aggregation over seeds,
label keys, table/CSV/PNG/HTML output, the substandard table layout, the attack-convergence report, the
metric names of the convergence grids, and ``hyporay frontier`` on a small MLflow store."""
from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest

from hyporay import metrics as M
from hyporay.analysis import frontier as F
from hyporay.analysis import tables as R

X, Y = M.NATURAL_RISK, M.HYPOCRITICAL_RISK


def _run(status="FINISHED", params=None, metrics=None, run_id="r", tags=None):
    """A stand-in for an MLflow Run: only .info.status/.info.run_id and .data.params/.metrics/.tags."""
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id=run_id),
                           data=SimpleNamespace(params=params or {}, metrics=metrics or {}, tags=tags or {}))


# --- Pareto mask ---------------------------------------------------------------------------------------

def test_pareto_mask_known_answers():
    pts = [(0.1, 0.9), (0.2, 0.5), (0.3, 0.6), (0.5, 0.1), (0.2, 0.5), (0.5, 0.2)]
    # (0.3, 0.6) is dominated by (0.2, 0.5); (0.5, 0.2) by (0.5, 0.1) (equal x, lower y); equal points do not
    # dominate each other
    assert F.pareto_mask(pts) == [True, True, False, True, True, False]


def test_pareto_mask_edge_cases():
    assert F.pareto_mask([]) == []
    assert F.pareto_mask([(0.4, 0.4)]) == [True]
    assert F.pareto_mask([(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)]) == [True, False, False]  # one point beats all
    assert F.pareto_mask([(0.1, 0.3), (0.2, 0.2), (0.3, 0.1)]) == [True, True, True]    # a convex front


# --- aggregation over seeds ----------------------------------------------------------------------------

def _rows():
    return [
        {"trainer": "trades", "lam": 1.0, X: 0.10, Y: 0.80},
        {"trainer": "trades", "lam": 1.0, X: 0.30, Y: 0.60},
        {"trainer": "trades", "lam": 5.0, X: 0.20, Y: 0.50},
        {"trainer": "thrm", "lam": 5.0, X: 0.20, Y: 0.40},
        {"trainer": "thrm", "lam": 10.0, X: math.nan, Y: 0.30},   # NaN risk: skipped
        {"trainer": "thrm", "lam": 20.0, X: 0.25, Y: None},       # missing risk: skipped
    ]


def test_aggregate_mean_and_sample_std_over_seeds():
    pts = F.aggregate(_rows())
    assert [(p.trainer, p.label) for p in pts] == [("thrm", 5.0), ("trades", 1.0), ("trades", 5.0)]
    t1 = pts[1]
    assert t1.n_seeds == 2
    assert t1.natural_risk == pytest.approx(0.2) and t1.hypocritical_risk == pytest.approx(0.7)
    assert t1.natural_risk_std == pytest.approx(math.sqrt(0.02))   # sample std (n - 1)
    assert t1.hypocritical_risk_std == pytest.approx(math.sqrt(0.02))
    assert pts[0].natural_risk_std == 0.0                          # one seed: std 0
    # thrm (0.2, 0.4) dominates trades λ=5 (0.2, 0.5); trades λ=1 (0.2, 0.7) is dominated too
    assert [p.pareto for p in pts] == [True, False, False]
    assert pts[0].lam == 5.0 and pts[0].label_key == "train.lam"   # λ under its old name


def test_aggregate_with_label_key_and_string_labels():
    rows = [{"trainer": "natural", "label": m, X: x, Y: y}
            for m, x, y in (("mlp", 0.03, 0.9), ("cnn", 0.02, 0.95), ("mlp", 0.05, 0.7))]
    pts = F.aggregate(rows, label_key="model.name")
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
    assert F.parse_label("0.05") == 0.05 and F.parse_label("mlp") == "mlp" and F.parse_label(None) == "n/a"


def test_rows_from_runs_uses_label_key_and_skips_unfinished():
    runs = [
        _run(params={"train.trainer": "pgd_at", "train.attack.eps": "0.05", "seed": "0"},
             metrics={X: 0.1, Y: 0.5}, run_id="a"),
        _run(params={"train.trainer": "pgd_at", "train.attack.eps": "0.0", "seed": "0"},
             metrics={X: 0.05, Y: 0.9}, run_id="b"),
        _run("RUNNING", params={"train.trainer": "pgd_at", "train.attack.eps": "0.1"}, metrics={X: 0.2, Y: 0.4}),
        _run("FAILED", params={"train.trainer": "pgd_at", "train.attack.eps": "0.2"}),
        _run(params={"train.trainer": "pgd_at", "train.attack.eps": "0.2"}, metrics={X: 0.3}),  # no R_hyp(D-)
    ]
    rows, left_out = F.rows_from_runs(runs, "train.attack.eps")
    assert left_out == {"unfinished": 2, "without risks": 1}
    assert [(r["label"], r["run_id"]) for r in rows] == [(0.05, "a"), (0.0, "b")]
    # diverged and degenerate models are never points, and are counted as such
    bad = [_run("FAILED", params={"train.trainer": "thrm"}, tags={"diverged": "true"}),
           _run(params={"train.trainer": "thrm"}, metrics={X: 0.9, "degenerate": 1.0}, tags={"degenerate": "true"}),
           _run(params={"train.trainer": "thrm"}, metrics={X: 0.0, "n_misclassified": 0.0})]
    rows, left_out = F.rows_from_runs(runs[:1] + bad)
    assert len(rows) == 1 and left_out == {"diverged": 1, "degenerate": 1, "no mistakes": 1}
    assert R.describe_left_out(left_out) == "1 degenerate, 1 diverged, 1 no mistakes"
    # default label: train.lam, 0 when a run has no such param (natural training)
    rows, _ = F.rows_from_runs(runs[:1])
    assert rows[0]["label"] == 0.0


# --- table and artefacts -------------------------------------------------------------------------------

def test_table_default_header_marks_pareto_points():
    text = F.table(F.aggregate(_rows()))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["trainer", "lambda", "seeds"]
    assert len(lines) == 2 + 3
    assert lines[2].startswith("thrm") and lines[2].rstrip().endswith("*")
    assert not lines[3].rstrip().endswith("*")
    assert "0.2000 ± 0.1414" in lines[3]


def test_table_with_string_labels_is_aligned():
    rows = [{"trainer": "thrm", "label": "wrn28_10", X: 0.1, Y: 0.2}, {"trainer": "thrm", "label": "mlp", X: 0.2,
                                                                         Y: 0.3}]
    lines = F.table(F.aggregate(rows, "model.name")).splitlines()
    assert lines[0].split()[:2] == ["trainer", "model"]
    assert len({ln.index("1  ") for ln in lines[2:]}) == 1  # the seeds column lines up
    assert "wrn28_10" in lines[3]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_default_columns_are_the_lambda_ones(tmp_path):
    path = F.write_csv(F.aggregate(_rows()), tmp_path / "frontier.csv")
    rows = _read_csv(path)
    assert list(rows[0]) == ["trainer", "lam", "n_seeds", "natural_risk", "natural_risk_std", "hypocritical_risk",
                             "hypocritical_risk_std", "pareto"]
    assert [(r["trainer"], float(r["lam"]), r["pareto"]) for r in rows] == [
        ("thrm", 5.0, "True"), ("trades", 1.0, "False"), ("trades", 5.0, "False")]


def test_artifacts_with_label_key_are_consistent(tmp_path):
    rows = [{"trainer": t, "label": e, X: x, Y: y} for t, e, x, y in
            (("pgd_at", 0.0, 0.03, 0.95), ("pgd_at", 0.1, 0.08, 0.6), ("thrm", 0.1, 0.06, 0.5))]
    pts = F.aggregate(rows, "train.attack.eps")
    csv_path, png, html = F.write_artifacts(pts, tmp_path / "out", "test")
    got = _read_csv(csv_path)
    assert list(got[0])[:2] == ["trainer", "eps"] and [float(r["eps"]) for r in got] == [0.0, 0.1, 0.1]
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    text = html.read_text()
    assert ("ε=0.1" in text or "\\u03b5=0.1" in text) and "pgd_at" in text  # plotly's JSON escapes ε
    assert F.write_csv([], tmp_path / "empty.csv").read_text().strip() == "trainer"


def test_title_for_lists_data_and_models():
    runs = [_run(params={"data.name": "digits", "model.name": m}) for m in ("mlp", "cnn", "mlp")]
    assert F.title_for("architectures", "local", runs) == "architectures · local · digits/cnn,mlp"
    assert F.title_for("x", "paper", []) == "x · paper · ?/?"


# --- reports: rows, means, markdown ---------------------------------------------------------------------

def test_final_rows_and_mean_by():
    runs = [_run(params={"model.name": "mlp", "seed": "0"}, metrics={"acc_clean": 0.9}, run_id="a"),
            _run(params={"model.name": "mlp", "seed": "1"}, metrics={"acc_clean": 0.8}, run_id="b"),
            _run("KILLED", params={"model.name": "mlp"}, metrics={"acc_clean": 0.1})]
    rows, left_out = R.final_rows(runs)
    assert left_out == {"unfinished": 1} and [r["run_id"] for r in rows] == ["a", "b"]
    assert rows[0]["model.name"] == "mlp"
    [g] = R.mean_by(rows, ["model.name"], ["acc_clean", "acc_adv"])
    assert g["n_seeds"] == 2 and g["acc_clean"] == pytest.approx(0.85)
    assert g["acc_clean_std"] == pytest.approx(math.sqrt(0.005))
    assert math.isnan(g["acc_adv"]) and math.isnan(g["acc_adv_std"])


def test_markdown_table():
    md = R.markdown_table(["a", "b"], [["1", "2"], ["3", "4"]], caption="Table: x")
    assert md.splitlines() == ["Table: x", "", "| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]


def _sub_row(variant, model, d, a, f, seed=0):
    return {"variant.name": variant, "model.name": model, "seed": str(seed), M.ACC_CLEAN: d, M.ACC_ADV: a,
            M.ACC_HYP: f}


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
    # default column order: first seen
    assert R.substandard_table(rows)[0] == ["training set", "MLP", "VGG-16"]


def test_write_substandard_markdown_and_csv(tmp_path):
    rows = [_sub_row("naive", "mlp", 0.1, 0.0, 0.9), _sub_row("quality", "mlp", 0.95, 0.4, 1.0)]
    md, csv_path = R.write_substandard(rows, tmp_path, "data digits; eval attack linf eps=0.1; profile local")
    lines = md.read_text().splitlines()
    assert lines[0].startswith("Accuracy (%) D / A / F") and "data digits" in lines[0]
    assert "profile local" in lines[0] and "mean over 1 seed(s)" in lines[0]
    assert lines[2] == "| training set | MLP |" and lines[4] == "| Naive | 10.00 / 0.00 / 90.00 |"
    got = _read_csv(csv_path)
    assert [(r["variant.name"], r["model.name"], r["n_seeds"]) for r in got] == [("naive", "mlp", "1"),
                                                                              ("quality", "mlp", "1")]


def test_eval_caption_names_the_threat_model():
    cap = R.eval_caption({"data": {"name": "digits"}, "eval": {"attack": {"eps": 0.1, "steps": 20}}}, "local")
    assert cap.startswith("data digits; eval attack linf eps=0.1 ") and "steps=20" in cap
    assert "step=0.025" in cap and "restarts=1" in cap and cap.endswith("profile local")


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
    rows, _ = R.final_rows(_conv_runs())
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
    csv_path, png = R.write_convergence(conv, tmp_path, "t")
    assert len(_read_csv(csv_path)) == len(conv) and png.read_bytes()[:4] == b"\x89PNG"


def test_convergence_verdict_flags_a_stronger_attack_that_helps():
    conv = [{"trainer": "thrm", "setting": "steps", "value": k, "metric": M.ACC_ADV, "mean": a, "std": 0.0,
             "n_seeds": 1} for k, a in ((1, 0.5), (10, 0.6), (100, 0.6))]
    [line] = R.convergence_verdict(conv)
    assert "converged; a stronger attack helped the model by 0.100" in line


# --- ``hyporay frontier`` on a small MLflow store -------------------------------------------------------

def _child(c, exp_id, parent_id, trainer, lam, risks, status="FINISHED"):
    from hyporay.engine import tracking

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
    from hyporay.engine import tracking

    d = tmp_path_factory.mktemp("mlflow")
    uri = tracking.default_tracking_uri(d)
    exp_id = tracking.ensure_experiment(uri, "thrm_lambda-local")
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
    from hyporay.engine import tracking

    out = tmp_path / "fr"
    assert main(["frontier", "--experiment", "thrm_lambda-local", "--tracking-uri", store.uri, "--out",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert f"parent run {store.parent}" in text
    assert "from 3 finished run(s) in 3 point(s); left out 2 unfinished run(s)" in text
    assert "trainer   lambda seeds" in text
    rows = _read_csv(out / "frontier.csv")
    assert [(r["trainer"], float(r["lam"])) for r in rows] == [("thrm", 5.0), ("trades", 1.0), ("trades", 5.0)]
    assert (out / "frontier.png").is_file() and (out / "frontier.html").is_file()
    logged = {a.path for a in store.client.list_artifacts(store.parent)}
    assert logged == {"frontier.csv", "frontier.png", "frontier.html"}
    tags = store.client.get_experiment(store.exp_id).tags
    assert f"mlflow.sharedViewState.{tracking.FRONTIER_VIEW_KEY}" in tags


def test_cli_frontier_with_parent_and_label_key(store, tmp_path, capsys):
    from hyporay.cli import main

    assert main(["frontier", "--experiment", "thrm_lambda-local", "--tracking-uri", store.uri, "--parent", store.old,
                 "--out", str(tmp_path / "o"), "--label-key", "model.name"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[2].split()[:3] == ["trainer", "model", "seeds"]
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
