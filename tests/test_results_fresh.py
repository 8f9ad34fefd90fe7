"""The committed reproduction reports still describe the trials the code would run now.

``docs/results/<name>/trials.json`` records the plan a report was built from (every trial's name and config hash,
and the fields in which each trial differs from the first). Any change to its profile, a default of the trial
config or the reproduction grid changes that plan: this test then fails and names what changed, so the report is
regenerated (its first lines give the command) instead of going stale. ``local`` is planned with ``--profile
local``; ``fashion`` with the profile and flags of the command it records (``--profile fashion_mlp --seeds 10``).
"""
from __future__ import annotations

import json
import runpy
import shlex
from pathlib import Path

import pytest

from hyporay.engine.launch import plan
from hyporay.paper.report import PLAN_FILE, compare, plan_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _recorded_argv(recorded: dict) -> list[str]:
    words = shlex.split(recorded["command"])
    return words[next(i for i, w in enumerate(words) if w.endswith("sweeps/reproduce.py")) + 1:]


@pytest.mark.parametrize("name, argv", [("local", ["--profile", "local"]), ("fashion", None)])
def test_committed_report_matches_the_plan_the_code_makes_now(name, argv):
    recorded_path = RESULTS / name / PLAN_FILE
    assert recorded_path.is_file(), f"{recorded_path} is missing: the committed report records no plan"
    recorded = json.loads(recorded_path.read_text())
    argv = argv or _recorded_argv(recorded)
    assert argv[argv.index("--profile") + 1] == recorded["profile"]
    sweep = runpy.run_path(str(ROOT / "sweeps" / "reproduce.py"))["SWEEP"]
    now = plan_record(plan(sweep, argv, ROOT / "sweeps" / "configs").planned, recorded["profile"],
                      recorded["command"])
    changes = compare(recorded, now)
    assert not changes, (f"docs/results/{name} is stale: the code now plans other trials than the report was built "
                         f"from; rebuild it with `{recorded['command']}`:\n  " + "\n  ".join(changes[:20]))
    assert recorded["plan_sha256"] == now["plan_sha256"]


def test_compare_names_the_field_and_the_trial_that_changed():
    """The comparison itself: a changed field, a dropped and an added trial are each named."""
    sweep = runpy.run_path(str(ROOT / "sweeps" / "thrm_lambda.py"))["SWEEP"]
    argv = ["--profile", "local", "--lambdas", "0,10", "--trainers", "thrm", "--seeds", "1"]
    base = plan_record(plan(sweep, argv, ROOT / "sweeps" / "configs").planned, "local", "cmd")
    lr = plan_record(plan(sweep, [*argv, "--set", "train.lr=0.01"], ROOT / "sweeps" / "configs").planned, "local",
                     "cmd")
    assert compare(base, base) == []
    changed = compare(base, lr)
    assert changed and all("train.lr was 0.05, now 0.01" in line for line in changed), changed
    more = plan_record(plan(sweep, [*argv[:3], "0,10,20", *argv[4:]], ROOT / "sweeps" / "configs").planned,
                       "local", "cmd")
    assert compare(base, more) == ["trial thrm-lam20-mlp-seed0: planned now, not in the report"], compare(base, more)
    assert compare(more, base) == ["trial thrm-lam20-mlp-seed0: in the report, no longer planned"]
