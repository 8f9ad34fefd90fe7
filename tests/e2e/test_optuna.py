"""Optuna searches on a real local Ray, a real JournalStorage file and a real MLflow SQLite store (digits, tiny).

The budget study prunes for real (median pruner, 2 trials in parallel): its Optuna states and the MLflow child
runs' ``optuna_state`` tags agree one to one; running it again continues it, and a worker that dies leaves its
trial FAIL while the study goes on (with --max-failures 0: by default Tune retries it from its checkpoint, as in
the sweeps). Bad search spaces and storage URLs fail in one line, before Ray starts.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import patience

ROOT = Path(__file__).resolve().parents[2]
BUDGET = ROOT / "sweeps" / "defender_budget.py"
PARETO = ROOT / "sweeps" / "pareto.py"
STUDY = "budget-e2e"
# eps over three decades: at epoch 1 the objective already differs by trial; sampler startup > trials keeps the
# parameters seeded-random (the same whatever order the parallel trials finish in)
SMALL = ["--profile", "local", "--parallel", "2", "--set", "train.epochs=5", "--set", "eval.every=1",
         "--pruner", "median", "--pruner-startup", "2", "--pruner-warmup", "1", "--eps-range", "0.001,1.0",
         "--sampler-startup", "20", "--study-name", STUDY]

pytestmark = pytest.mark.slow


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("HYPORAY_DEBUG", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    return dict(env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # loopback binding is the search's own job


def _run(script: Path, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=patience(timeout))  # seconds on an idle machine


def _study(cwd: Path, name: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(cwd / "optuna.journal"))))


def _mlflow(cwd: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("hyporay.role") == "study"]
    children = [r for r in runs if r.data.tags.get("hyporay.role") == "trial"]
    return c, parents, children


def _states(study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.trials}


def _tags(children) -> dict[int, str]:
    return {int(r.data.tags["optuna.trial_number"]): r.data.tags["optuna_state"] for r in children}


def test_pruned_study_matches_mlflow_continues_and_survives_a_dying_worker(tmp_path):
    r = _run(BUDGET, *SMALL, "--n-trials", "7", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = _study(tmp_path, STUDY)
    states = _states(study)
    assert len(states) == 7 and set(states.values()) <= {"COMPLETE", "PRUNED"}, states
    assert "PRUNED" in states.values() and "COMPLETE" in states.values(), states
    c, parents, children = _mlflow(tmp_path, "defender_budget-local")
    assert len(parents) == 1 and len(children) == 7
    parent = parents[0]
    assert parent.data.tags["optuna.study_name"] == STUDY and parent.info.status == "FINISHED"
    assert {ch.data.tags["mlflow.parentRunId"] for ch in children} == {parent.info.run_id}
    assert _tags(children) == states                                   # one to one, same state
    for ch in children:
        t = study.trials[int(ch.data.tags["optuna.trial_number"])]
        steps = sorted(m.step for m in c.get_metric_history(ch.info.run_id, "natural_risk"))
        assert steps == sorted(t.intermediate_values)                 # each evaluated epoch: Optuna and MLflow
        assert float(ch.data.params["train.attack.eps"]) == pytest.approx(t.params["eps"])
        assert t.user_attrs["mlflow_run_id"] == ch.info.run_id
        if t.state.name == "PRUNED":
            assert max(steps) < 5 and t.user_attrs["epochs_trained"] == max(steps)   # training really stopped
        else:
            assert steps == [1, 2, 3, 4, 5] and ch.data.metrics["objective"] == pytest.approx(t.value)
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"optimization_history.html", "intermediate_values.html", "trials.csv"} <= arts
    assert "param_importances.html" in arts or "plot_skipped.param_importances" in parent.data.tags
    assert parent.data.tags["best_trial_number"] == str(study.best_trial.number)
    assert parent.data.metrics["best.objective"] == pytest.approx(study.best_value)
    assert parent.data.metrics["best_param.eps"] == pytest.approx(study.best_params["eps"])
    assert f"optuna-dashboard {tmp_path / 'optuna.journal'}" in r.stdout

    # the same study name continues the study; the first worker to finish epoch 1 dies (once), no retry
    before = {t.number: (t.state.name, t.value, t.params) for t in study.trials}
    chaos = tmp_path / "chaos"
    chaos.mkdir()
    r = _run(BUDGET, *SMALL, "--n-trials", "2", "--chaos-exit-after-epoch", "1", "--chaos-dir", str(chaos),
             "--max-failures", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "continued, 7 trials so far" in r.stdout
    study = _study(tmp_path, STUDY)
    assert len(study.trials) == 9
    assert {t.number: (t.state.name, t.value, t.params) for t in study.trials[:7]} == before   # old trials kept
    new = [t.state.name for t in study.trials[7:]]
    assert new.count("FAIL") == 1 and set(new) - {"FAIL"} <= {"COMPLETE", "PRUNED"}, new
    assert len(list(chaos.glob("*.died"))) == 1
    c, parents, children = _mlflow(tmp_path, "defender_budget-local")
    assert len(parents) == 1 and parents[0].info.run_id == parent.info.run_id   # the study's parent run, again
    assert len(children) == 9 and _tags(children) == _states(study)
    failed = [ch for ch in children if ch.data.tags["optuna_state"] == "FAIL"]
    assert failed[0].info.status == "FAILED" and "worker failed" in failed[0].data.tags["fail_reason"]


def test_pareto_search_logs_the_pareto_set(tmp_path, capsys):
    r = _run(PARETO, "--profile", "local", "--n-trials", "4", "--population-size", "4", "--parallel", "2",
             "--set", "train.epochs=2", "--set", "eval.every=2", "--study-name", "pareto-e2e", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    study = _study(tmp_path, "pareto-e2e")
    assert len(study.directions) == 2 and len(study.trials) == 4
    assert all("NSGAIISampler:generation" in t.system_attrs for t in study.trials)   # NSGA-II, not TPE
    assert {t.params["trainer"] for t in study.trials} <= {"trades", "thrm"}
    c, parents, children = _mlflow(tmp_path, "pareto-local")
    assert len(parents) == 1 and _tags(children) == _states(study) == {i: "COMPLETE" for i in range(4)}
    pid = parents[0].info.run_id
    arts = {a.path for a in c.list_artifacts(pid)}
    assert {"pareto_set.csv", "pareto_set.md", "pareto_front.png", "pareto_front.html"} <= arts
    rows = Path(c.download_artifacts(pid, "pareto_set.csv", str(tmp_path))).read_text().splitlines()
    assert rows[0].startswith("trial,") and len(rows) - 1 == len(study.best_trials) >= 1
    assert "natural_risk" in rows[0] and "hypocritical_risk" in rows[0]
    # `hyporay frontier` on the study's parent run (the latest parent of the experiment): the one announcement
    # recorded its threat model, and every completed trial is a point
    from hyporay.cli import main as hyporay_main
    from hyporay.tracking.tags import THREAT_TAG

    threat = c.get_run(pid).data.tags[THREAT_TAG]
    assert threat.startswith("data digits; eval attack ")
    capsys.readouterr()
    assert hyporay_main(["frontier", "--experiment", "pareto-local", "--tracking-uri",
                         f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "fr")]) == 0
    text = capsys.readouterr().out
    assert f"parent run {pid}" in text and threat in text and "threat model not recorded" not in text
    assert "from 4 finished run(s)" in text and (tmp_path / "fr" / "frontier.png").is_file()


BAD = [  # (extra args, what the one-line error says)
    (["--eps-range", "0.3,0.1"], "--eps-range: low 0.3 > high 0.1"),
    (["--eps-range", "0,0.1"], "--eps-range: a log scale needs low > 0, got 0"),
    (["--storage", "foo://bar"], "--study-storage: unknown scheme 'foo'"),   # --storage: the old name, kept
    (["--study-storage", "postgresql://user@127.0.0.1:1/optuna"], "--study-storage: "),  # no driver/server: one line
]  # the other range and storage errors: tests/test_optuna_search.py, in-process


@pytest.mark.parametrize("args, message", BAD)
def test_bad_search_space_or_storage_is_one_line(bad_runs, args, message):
    r, cwd = bad_runs[tuple(args)]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("defender_budget: error: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (cwd / "optuna.journal").exists() and not (cwd / "mlflow.db").exists()


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad command at once (each a fresh interpreter importing torch); none starts Ray."""
    def one(args):
        cwd = tmp_path_factory.mktemp("bad")
        return tuple(args), (_run(BUDGET, "--profile", "local", *args, cwd=cwd, timeout=120), cwd)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, [a for a, _ in BAD]))
