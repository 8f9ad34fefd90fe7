"""``hyporay.engine.run`` from Python (a notebook): a tiny real grid on a local Ray and a SQLite MLflow store in a
temporary directory; what comes back is the runs table the analysis takes, the same as read back from MLflow."""
from __future__ import annotations

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_run_returns_the_runs_table_of_a_tiny_grid(tmp_path, monkeypatch):
    from hyporay.analysis import frontier as F
    from hyporay.analysis import runs
    from hyporay.engine import run
    from hyporay.tracking.runs import read

    monkeypatch.chdir(tmp_path)
    df = run("thrm_lambda", profile="local", trainers="thrm", lambdas=[0, 5], seeds=1,
             set={"train.epochs": 1, "eval.every": 1}, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
             storage_path=str(tmp_path / "runs"))
    assert df.attrs["status"] == 0
    assert sorted(df["run_name"]) == ["natural-lam0-mlp-seed0", "thrm-lam5-mlp-seed0"]   # λ = 0: natural, once
    assert set(df["outcome"]) == {"result"} and df["natural_risk"].between(0, 1).all()
    again = read(df.attrs["tracking_uri"], df.attrs["experiment_id"], df.attrs["parent_run_id"])
    cols = ["run_id", "run_name", "outcome", "train.lam", "natural_risk", "hypocritical_risk"]
    pd.testing.assert_frame_equal(df[cols].sort_values("run_id").reset_index(drop=True),
                                  again[cols].sort_values("run_id").reset_index(drop=True))
    res, left = runs.results(df)
    pts = F.points(res, "train.lam")
    assert not left and [(p.trainer, p.label) for p in sorted(pts, key=lambda p: p.label)] == [("thrm", 0.0),
                                                                                            ("thrm", 5.0)]
