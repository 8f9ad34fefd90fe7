"""sweeps/reproduce.py: a reduced real reproduction (1 seed, 2 lambdas, 1 epoch) and the paper profile's dry run."""
from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import patience, sweep_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "sweeps" / "reproduce.py"
SECTIONS = ["## Tables 1-2", "## Table 3", "## Fig. 3", "## Fig. 4", "## The five claims", "## Method notes"]
VERDICTS = {"shown", "partly shown", "not shown", "inconclusive"}


@pytest.mark.slow
def test_reduced_reproduction_writes_every_section_and_a_verdict_per_claim(tmp_path):
    out = tmp_path / "report"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--profile", "local", "--seeds", "1", "--lambdas", "0,10", "--models", "mlp",
         "--variants", "naive,poisoning,quality", "--set", "train.epochs=1", "--set", "eval.attack.steps=5",
         "--set", "variant.steps=10", "--set", "variant.source_epochs=2", "--bootstrap", "200", "--out", str(out)],
        cwd=tmp_path, env=sweep_env(), capture_output=True, text=True, timeout=patience(600), check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # 3 Tables 1-2 trials + 5 more of Table 3 (Quality NT shared) + Fig. 4: λ=10 twice and λ=0 once (natural, shared)
    assert "trials: 10 finished, 0 diverged, 0 failed, 0 not finished" in r.stdout
    text = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in text, s
    for f in ("fig3.png", "frontier.png", "frontier.csv", "table1_2.csv", "table3.csv", "fig3.csv", "claims.json",
              "trials.json"):
        assert (out / f).is_file(), f
    verdicts = re.findall(r"^- verdict: \*\*(.+?)\*\*$", text, flags=re.MULTILINE)
    assert len(verdicts) == 5 and set(verdicts) <= VERDICTS
    claims = json.loads((out / "claims.json").read_text())
    assert sorted(claims) == ["1", "2", "3", "4", "5"]
    # A 1-seed, 2-λ, 1-epoch run cannot decide claims 2-4 either way, and no verdict of it is expected as such:
    # each verdict must be the one its rule (RULES in the report) gives on the numbers the report itself shows.
    # The rules are unit-tested on every verdict in tests/test_claim_verdicts.py, the science in test_claims.py.
    with (out / "fig3.csv").open() as f:
        fig3 = list(csv.DictReader(f))
    for k in range(1, 6):
        assert claims[str(k)]["verdict"] == _rule_verdict(k, claims[str(k)], n_lambdas=2, fig3=fig3), k
    for k in range(1, 6):
        assert re.search(rf"^claim {k}: ({'|'.join(VERDICTS)}) — ", r.stdout, flags=re.MULTILINE), k
    assert "| Naive |" in text and "| Quality | PGD-AT |" in text and "58.09 / 0.91 / 99.31" in text
    assert text.splitlines()[2].startswith(("- code: every run ran commit", "- **code: NOT one clean commit**"))
    assert "- rebuild with: `python " in text and "reproduce.py --profile local --seeds 1" in text
    assert "λ = 0 is natural training, run once per seed and shared by both curves" in text

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("reproduce-local")
    runs = c.search_runs([exp.experiment_id])
    parent = next(x for x in runs if x.data.tags.get("hyporay.role") == "sweep")
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"report.md", "claims.json", "fig3.png", "frontier.png"} <= arts
    assert len([x for x in runs if x.data.tags.get("hyporay.role") == "trial"]) == 10


def _rule_verdict(k: int, c: dict, *, n_lambdas: int, fig3: list[dict]) -> str:
    """The verdict claim k's rule gives on the figures in claims.json (fig3.csv for claim 5), re-derived here."""
    if k == 1:
        gaps = [x["gap"] for x in c["cells"] if not math.isnan(x["gap"])]
        ok = sum(g >= 0.20 for g in gaps)
        return ("inconclusive" if not gaps else "shown" if ok == len(gaps) else
                "partly shown" if 2 * ok >= len(gaps) else "not shown")
    if k == 2:
        comps = c["comparisons"]
        if not comps or min(x["n"] for x in comps) < 2 or len(comps) < 4:
            return "inconclusive"
        below = sum(x["high"] < 0 for x in comps)
        return "shown" if below == len(comps) else "partly shown" if below else "not shown"
    if k == 3:
        if n_lambdas < 3:
            return "inconclusive"
        good = sum(t["rho_natural"] > 0 and t["rho_hyp"] < 0 and t["p_natural"] < 0.05 and t["p_hyp"] < 0.05
                   for t in c["per_trainer"])
        return "shown" if good == len(c["per_trainer"]) else "partly shown" if good else "not shown"
    if k == 4:
        return "shown" if c.get("seeds", 0) >= 2 and c["low"] > 0 else "not shown"
    groups = [g for g in fig3 if float(g["n_misclassified"]) >= 5 and not math.isnan(float(g["targeted_max"]))
              and not math.isnan(float(g["hypocritical_risk"]))]
    if not groups:
        return "inconclusive"
    gaps = sorted(float(g["hypocritical_risk"]) - float(g["targeted_max"]) for g in groups)
    med = (gaps[(len(gaps) - 1) // 2] + gaps[len(gaps) // 2]) / 2
    return "shown" if all(x > 0 for x in gaps) and med >= 0.20 else "partly shown" if med > 0 else "not shown"


def test_paper_profile_dry_run(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--profile", "paper", "--dry-run"], cwd=tmp_path,
                       env=sweep_env(), capture_output=True, text=True, timeout=patience(300), check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("profile: paper")
    # 5 variants x 5 models NT + Table 3 (6, 2 shared with Tables 1-2) + 2 trainers x 8 lambdas > 0 + λ=0 once
    assert "reproduce: 46 trials" in lines[1]
    trials = [ln for ln in lines if ln.startswith("  ")]
    assert len(trials) == 46
    assert all("data=cifar10" in ln and "epochs=110" in ln for ln in trials)
    assert any(ln.strip().startswith("pgd_at-lam0-resnet18-quality-seed0") for ln in trials)
    assert any(ln.strip().startswith("trades-lam6-resnet18-poisoning-seed0") for ln in trials)
    assert sum(ln.strip().startswith("thrm-lam") for ln in trials) == 8
    assert any(ln.strip().startswith("natural-lam0-resnet18-quality-seed0-targetedFalse") for ln in trials)
    assert "eps=0.03137 (8/255) steps=20" in lines[-1]


def test_reproduction_grid_parts_and_paper_exceptions():
    """The grid tags each trial with the parts it serves when it plans it; the engine merges the tags of
    identical trials and plans λ = 0 once, as natural training feeding both curves."""
    from hyporay.config import load_config
    from hyporay.engine.definition import Planned, canonical, dedupe
    from hyporay.tracking.tags import CURVES_TAG, PARTS_TAG
    from hyporay.paper.grid import grid

    base = {"data": {"name": "digits"}, "model": {"name": "mlp"}, "train": {"epochs": 3}}
    vals = {"train.lam": [0, 10], "model.name": ["mlp", "cnn"], "variant.name": ["noise", "quality"]}
    pairs = grid(base, vals, [0, 1], "paper")
    assert len(pairs) == 2 * (4 + 6 + 4)  # before de-duplication (the engine runs identical trials once)
    assert all(t["eval"]["every"] == 3 for t, _ in pairs)
    noise_mlp, tags = next((t, g) for t, g in pairs if t["variant"]["name"] == "noise" and t["model"]["name"] == "mlp")
    assert noise_mlp["train"]["lr"] == 0.01 and noise_mlp["train"]["weight_decay"] == 0.0
    assert tags[PARTS_TAG] == "t12,fig3"
    planned = dedupe([Planned(c, {**g, **extra}) for t, g in pairs
                      for c, extra in [canonical(load_config(t).model_dump())]])
    parts = lambda p: set(p.tags[PARTS_TAG].split(","))  # noqa: E731
    q_nt = [p for p in planned if p.config["variant"]["name"] == "quality" and p.config["model"]["name"] == "mlp"
            and p.config["train"]["trainer"] == "natural" and p.config["eval"]["targeted"]]
    assert len(q_nt) == 2 and all(parts(p) == {"t12", "t3", "fig3"} for p in q_nt)   # Tables 1-2 and 3 share it
    shared = [p for p in planned if "fig4" in parts(p) and p.config["train"]["trainer"] == "natural"]
    assert len(shared) == 2 and all(p.tags[CURVES_TAG] == "trades,thrm" for p in shared)  # λ = 0, one per seed
    assert sum("t3" in parts(p) for p in planned) == 12
