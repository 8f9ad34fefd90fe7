"""sweeps/reproduce.py: a reduced real reproduction (1 seed, 2 lambdas, 1 epoch) and the paper profile's dry run."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import sweep_env

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
        cwd=tmp_path, env=sweep_env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "trials: 11 finished, 0 diverged, 0 failed, 0 not finished" in r.stdout
    text = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in text, s
    for f in ("fig3.png", "frontier.png", "frontier.csv", "table1_2.csv", "table3.csv", "fig3.csv", "claims.json"):
        assert (out / f).is_file(), f
    verdicts = re.findall(r"^- verdict: \*\*(.+?)\*\*$", text, flags=re.MULTILINE)
    assert len(verdicts) == 5 and set(verdicts) <= VERDICTS
    claims = json.loads((out / "claims.json").read_text())
    assert sorted(claims) == ["1", "2", "3", "4", "5"]
    assert claims["3"]["verdict"] == "inconclusive"  # 2 lambdas: too few for a rank correlation
    assert claims["4"]["verdict"] == "not shown" and "1 seed" in claims["4"]["statistic"]
    for k in range(1, 6):
        assert re.search(rf"^claim {k}: ({'|'.join(VERDICTS)}) — ", r.stdout, flags=re.MULTILINE), k
    assert "| Naive |" in text and "| Quality | PGD-AT |" in text and "58.09 / 0.91 / 99.31" in text
    assert "- commit: `" in text and "- command: `python sweeps/reproduce.py --profile local --seeds 1" in text

    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.get_experiment_by_name("reproduce-local")
    runs = c.search_runs([exp.experiment_id])
    parent = next(x for x in runs if x.data.tags.get("hyporay.role") == "sweep")
    arts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"report.md", "claims.json", "fig3.png", "frontier.png"} <= arts
    assert len([x for x in runs if x.data.tags.get("hyporay.role") == "trial"]) == 11


def test_paper_profile_dry_run(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--profile", "paper", "--dry-run"], cwd=tmp_path,
                       env=sweep_env(), capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("profile: paper")
    # 5 variants x 5 models NT + Table 3 (6, 2 shared with Tables 1-2) + 2 trainers x 9 lambdas, 1 seed
    assert "reproduce: 47 trials" in lines[1]
    trials = [ln for ln in lines if ln.startswith("  ")]
    assert len(trials) == 47
    assert all("data=cifar10" in ln and "epochs=110" in ln for ln in trials)
    assert any(ln.strip().startswith("pgd_at-lam0-resnet18-quality-seed0") for ln in trials)
    assert any(ln.strip().startswith("trades-lam6-resnet18-poisoning-seed0") for ln in trials)
    assert sum(ln.strip().startswith("thrm-lam") for ln in trials) == 9
    assert "eps=0.03137 (8/255) steps=20" in lines[-1]


def test_reproduction_grid_parts_and_paper_exceptions():
    sys.path.insert(0, str(ROOT))
    from hyporay.paper.reproduction import grid, parts_of

    base = {"data": {"name": "digits"}, "model": {"name": "mlp"}, "train": {"epochs": 3}}
    vals = {"train.lam": [0, 10], "model.name": ["mlp", "cnn"], "variant.name": ["noise", "quality"]}
    trials = grid(base, vals, [0, 1], "paper")
    assert len(trials) == 2 * (4 + 6 + 4)  # before de-duplication (the engine runs identical trials once)
    assert all(t["eval"]["every"] == 3 for t in trials)
    noise_mlp = next(t for t in trials if t["variant"]["name"] == "noise" and t["model"]["name"] == "mlp")
    assert noise_mlp["train"]["lr"] == 0.01 and noise_mlp["train"]["weight_decay"] == 0.0
    assert parts_of(noise_mlp, "mlp") == {"t12", "fig3"}
    from hyporay.config import load_config

    full = [load_config(t).model_dump() for t in trials]
    q_nt = next(t for t in full if t["variant"]["name"] == "quality" and t["model"]["name"] == "mlp"
            and t["train"]["trainer"] == "natural")
    assert parts_of(q_nt, "mlp") == {"t12", "t3", "fig3"}
    f4 = next(t for t in full if t["train"]["trainer"] == "thrm")
    assert parts_of(f4, "mlp") == {"fig4"}
    assert sum("t3" in parts_of(t, "mlp") for t in full) == 2 * 7  # Quality NT listed by Tables 1-2 and 3
    import json

    assert sum("t3" in parts_of(t, "mlp") for t in {json.dumps(t, sort_keys=True): t for t in full}.values()) == 12
