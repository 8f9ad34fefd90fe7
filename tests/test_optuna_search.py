"""The Optuna searches' pure parts (no Ray, no MLflow): ranges, objective, pruners, storage URLs, plots, and the
Tune searcher/scheduler pair on a real in-memory study (ask/tell, reports, pruning, FAIL for non-results)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from hyporay.config import ConfigError
from hyporay.engine.optuna import definition as O
from hyporay.engine.optuna import report as SR
from hyporay.engine.optuna import space
from hyporay.engine.optuna import storage as ST


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
        space.parse_range(raw, "--x-range", **kw)
    assert str(e.value).startswith("--x-range: ") and "\n" not in str(e.value)


def test_good_ranges():
    assert space.parse_range("0.01, 0.3", "--eps-range", log=True) == (0.01, 0.3)
    assert space.parse_range("2,20", "--steps-range", log=False, integer=True, minimum=1) == (2, 20)
    assert space.parse_range("0.1,0.1", "--eps-range", log=True) == (0.1, 0.1)   # a single value is allowed


def test_objective_penalises_only_above_the_ceiling():
    obj = O.Objective(max_natural_risk=0.15, penalty=10)
    assert obj.value({"natural_risk": 0.10, "hypocritical_risk": 0.4}) == pytest.approx(0.4)
    assert obj.value({"natural_risk": 0.25, "hypocritical_risk": 0.4}) == pytest.approx(1.4)
    assert obj.value({"natural_risk": 0.0, "hypocritical_risk": math.nan, "n_misclassified": 0.0}) == 0.0  # empty D-
    assert math.isnan(obj.value({"natural_risk": 0.3, "hypocritical_risk": math.nan, "n_misclassified": 9.0}))
    # a degenerate model's numbers are not results: no value for the study (its trial ends FAIL)
    assert O.objective_values({"natural_risk": 0.9, "hypocritical_risk": math.nan, "degenerate": 1.0}, obj) is None
    assert O.objective_values({"natural_risk": 0.1, "hypocritical_risk": 0.4}, None) == [0.1, 0.4]
    assert O.objective_values({"natural_risk": 0.25, "hypocritical_risk": 0.4}, obj) == [pytest.approx(1.4)]
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
    assert ST.resolve_storage(None, tmp_path) == str(tmp_path / "optuna.journal")
    assert ST.resolve_storage("sub/x.log", tmp_path) == str(tmp_path / "sub" / "x.log")
    assert ST.resolve_storage("sqlite:///o.db", tmp_path) == f"sqlite:///{tmp_path / 'o.db'}"   # workers elsewhere
    assert ST.resolve_storage("sqlite:////abs/o.db", tmp_path) == "sqlite:////abs/o.db"
    assert ST.storage_kind("redis://h:6379") == "redis" and ST.storage_kind("postgresql://h/db") == "rdb"
    with pytest.raises(ST.StorageError, match="unknown scheme 'http'"):
        ST.resolve_storage("http://example.org", tmp_path)
    with pytest.raises(ST.StorageError, match="does not exist"):
        ST.open_storage(str(tmp_path / "nope" / "x.journal"))
    with pytest.raises(ST.StorageError, match="does not exist"):
        ST.open_storage(f"sqlite:///{tmp_path / 'nope' / 'o.db'}")
    assert ST.open_storage(f"sqlite:///{tmp_path / 'o.db'}") is not None
    assert "***" in ST.redact("postgresql://u:secret@h/db") and "secret" not in ST.redact("postgresql://u:secret@h/db")


def test_plots_skip_importances_with_one_completed_trial(tmp_path: Path):
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study()
    t = study.ask({"eps": FloatDistribution(0.01, 0.3, log=True)})
    t.report(0.5, 1)
    study.tell(t, 0.4)
    paths, skipped = SR.study_plots(study, tmp_path, multi_objective=False)
    assert {p.name for p in paths} == {"optimization_history.html", "intermediate_values.html"}
    assert "param_importances" in skipped and "2 completed" in skipped["param_importances"]
    t = study.ask({"eps": FloatDistribution(0.01, 0.3, log=True)})
    study.tell(t, 0.3)
    paths, skipped = SR.study_plots(study, tmp_path, multi_objective=False)
    assert "param_importances.html" in {p.name for p in paths} and not skipped     # one parameter is enough


def _searcher(n_trials=3, objective=None, last_epoch=3, pruner=None):
    import optuna
    from optuna.distributions import FloatDistribution

    from hyporay.engine.optuna.tune import OptunaPruningScheduler, OptunaSearcher

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)
    make_plan = lambda t: {"trial": {"eps": t.params["eps"]}, "key": f"k{t.number}", "name": f"t{t.number}"}  # noqa
    s = OptunaSearcher(study, {"eps": FloatDistribution(0.01, 0.3, log=True)}, make_plan, n_trials, objective)
    return study, s, OptunaPruningScheduler(s, last_epoch)


def test_searcher_asks_tells_and_stops_asking():
    from ray.tune.search import Searcher

    obj = O.Objective(max_natural_risk=0.2)
    study, s, _ = _searcher(n_trials=2, objective=obj)
    first = s.suggest("a")
    assert first["plan"]["name"] == "t0" and 0.01 <= first["plan"]["trial"]["eps"] <= 0.3
    s.suggest("b")
    assert s.suggest("c") == Searcher.FINISHED                 # exactly --n-trials
    s.on_trial_complete("a", {"epoch": 3, "natural_risk": 0.1, "hypocritical_risk": 0.5})
    s.on_trial_complete("b", {"epoch": 3, "natural_risk": 0.5, "hypocritical_risk": 0.5, "degenerate": 1.0})
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL"] and study.trials[0].value == pytest.approx(0.5)
    assert study.trials[1].user_attrs["fail_reason"] == "degenerate model: no result"
    assert study.trials[0].user_attrs["epochs_trained"] == 3 and study.trials[0].user_attrs["feasible"]


def test_scheduler_reports_every_evaluation_and_prunes_a_bad_trial():
    import optuna
    from ray.tune.schedulers import TrialScheduler

    study, s, sched = _searcher(n_trials=4, objective=O.Objective(max_natural_risk=1.0),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    trial = lambda tid: SimpleNamespace(trial_id=tid)  # noqa: E731
    for tid, hyp in (("a", 0.2), ("b", 0.3)):            # two good trials complete: the pruner's baseline
        s.suggest(tid)
        for epoch in (1, 2, 3):
            r = {"epoch": epoch, "natural_risk": 0.1, "hypocritical_risk": hyp}
            assert sched.on_trial_result(None, trial(tid), r) == TrialScheduler.CONTINUE
        s.on_trial_complete(tid, r)
    s.suggest("c")
    bad = {"epoch": 1, "natural_risk": 0.1, "hypocritical_risk": 0.9}
    assert sched.on_trial_result(None, trial("c"), bad) == TrialScheduler.STOP
    s.on_trial_complete("c", bad)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert study.trials[2].intermediate_values == {1: 0.9} and study.trials[0].intermediate_values[3] == 0.2
    # at the last epoch a trial completes: pruning it then would save nothing
    s.suggest("d")
    last = {"epoch": 3, "natural_risk": 0.1, "hypocritical_risk": 0.95}
    assert sched.on_trial_result(None, trial("d"), last) == TrialScheduler.CONTINUE


def test_interrupted_trials_end_fail():
    study, s, _ = _searcher(n_trials=2)
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", {"epoch": 3, "natural_risk": 0.1, "hypocritical_risk": 0.5}, error=True)
    left = s.fail_unfinished("interrupted")
    assert [a.plan["name"] for a in left] == ["t1"]
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert study.trials[0].user_attrs["fail_reason"] == "its worker failed (retries exhausted)"
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted"


def test_a_seeded_sampler_gives_the_same_trials():
    """The README: a seeded Optuna sampler gives the same trials (the search is reproducible)."""
    def params(seed):
        import optuna
        from optuna.distributions import FloatDistribution

        from hyporay.engine.optuna.tune import OptunaSearcher

        study = optuna.create_study(sampler=O.make_sampler(O.BUDGET, "tpe", seed, 5, 0))
        s = OptunaSearcher(study, {"eps": FloatDistribution(0.01, 0.3, log=True)},
                           lambda t: {"trial": dict(t.params), "key": "", "name": ""}, 6, O.Objective(0.2))
        out = []
        for i in range(6):
            out.append(s.suggest(str(i))["plan"]["trial"]["eps"])
            s.on_trial_complete(str(i), {"epoch": 1, "natural_risk": 0.1, "hypocritical_risk": out[-1]})
        return out

    assert params(3) == params(3) and params(3) != params(4)
