"""The Optuna searches' pure parts (no Ray, no MLflow): ranges, objective, pruners, storage URLs, plots."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from hyporay.config import ConfigError
from hyporay.engine import search as O


@pytest.mark.parametrize("raw, kw, message", [
    ("0.3,0.1", {"log": False}, "low 0.3 > high 0.1"),
    ("0,0.1", {"log": True}, "a log scale needs low > 0, got 0"),
    ("-1,2", {"log": False}, "must be >= 0, got -1"),
    ("0.1", {"log": False}, "expected LOW,HIGH"),
    ("a,1", {"log": False}, "cannot read 'a' as a number"),
    ("1.5,3", {"log": False, "integer": True}, "must be whole numbers"),
    ("0,3", {"log": False, "integer": True, "minimum": 1}, "must be >= 1, got 0"),
    ("nan,1", {"log": False}, "must be finite"),
])
def test_bad_ranges_are_one_line_errors(raw, kw, message):
    with pytest.raises(ConfigError, match=message) as e:
        O.parse_range(raw, "--x-range", **kw)
    assert str(e.value).startswith("--x-range: ") and "\n" not in str(e.value)


def test_good_ranges():
    assert O.parse_range("0.01, 0.3", "--eps-range", log=True) == (0.01, 0.3)
    assert O.parse_range("2,20", "--steps-range", log=False, integer=True, minimum=1) == (2, 20)
    assert O.parse_range("0.1,0.1", "--eps-range", log=True) == (0.1, 0.1)   # a single value is allowed


def test_objective_penalises_only_above_the_ceiling():
    obj = O.Objective(max_natural_risk=0.15, penalty=10)
    assert obj.value({"natural_risk": 0.10, "hypocritical_risk": 0.4}) == pytest.approx(0.4)
    assert obj.value({"natural_risk": 0.25, "hypocritical_risk": 0.4}) == pytest.approx(1.4)
    assert obj.value({"natural_risk": 0.0, "hypocritical_risk": math.nan}) == 0.0   # empty D-
    assert obj.feasible({"natural_risk": 0.15}) and not obj.feasible({"natural_risk": 0.151})


def test_every_pruner_builds():
    import optuna

    kinds = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
             "halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner,
             "none": optuna.pruners.NopPruner}
    assert set(kinds) == set(O.PRUNERS)
    for name, cls in kinds.items():
        spec = {"name": name, "startup": 2, "warmup": 1, "percentile": 25.0, "min_resource": 1,
                "max_resource": 5, "reduction_factor": 3}
        assert isinstance(O.make_pruner(spec), cls)


def test_storage_strings(tmp_path):
    assert O.resolve_storage(None, tmp_path) == str(tmp_path / "optuna.journal")
    assert O.resolve_storage("sub/x.log", tmp_path) == str(tmp_path / "sub" / "x.log")
    assert O.resolve_storage("sqlite:///o.db", tmp_path) == f"sqlite:///{tmp_path / 'o.db'}"   # workers elsewhere
    assert O.resolve_storage("sqlite:////abs/o.db", tmp_path) == "sqlite:////abs/o.db"
    assert O.storage_kind("redis://h:6379") == "redis" and O.storage_kind("postgresql://h/db") == "rdb"
    with pytest.raises(O.StorageError, match="unknown scheme 'http'"):
        O.resolve_storage("http://example.org", tmp_path)
    with pytest.raises(O.StorageError, match="does not exist"):
        O.open_storage(str(tmp_path / "nope" / "x.journal"))
    with pytest.raises(O.StorageError, match="does not exist"):
        O.open_storage(f"sqlite:///{tmp_path / 'nope' / 'o.db'}")
    assert O.open_storage(f"sqlite:///{tmp_path / 'o.db'}") is not None
    assert "***" in O._redact("postgresql://u:secret@h/db") and "secret" not in O._redact("postgresql://u:secret@h/db")


def test_plots_skip_importances_with_one_completed_trial(tmp_path: Path):
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study()
    t = study.ask({"eps": FloatDistribution(0.01, 0.3, log=True)})
    t.report(0.5, 1)
    study.tell(t, 0.4)
    paths, skipped = O.study_plots(study, tmp_path, multi_objective=False)
    assert {p.name for p in paths} == {"optimization_history.html", "intermediate_values.html"}
    assert "param_importances" in skipped and "2 completed" in skipped["param_importances"]
    t = study.ask({"eps": FloatDistribution(0.01, 0.3, log=True)})
    study.tell(t, 0.3)
    paths, skipped = O.study_plots(study, tmp_path, multi_objective=False)
    assert "param_importances.html" in {p.name for p in paths} and not skipped     # one parameter is enough
