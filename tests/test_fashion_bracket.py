"""tools/fashion_bracket.py: the bracket table says the threat model it was measured under (read from the
reproduction's recorded plan, not written in), lists natural training once and keeps a PGD-AT curve."""
from __future__ import annotations

import csv
import json

import pytest

from helpers import load_script

tool = load_script("tools/fashion_bracket.py")
HEAD = ["trainer", "lam", "n_seeds", "natural_risk", "hypocritical_risk", "hypocritical_risk_certified_upper"]


def _results(tmp_path, rows, base=None):
    with (tmp_path / "frontier.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEAD)
        w.writerows(rows)
    if base is not None:
        (tmp_path / "trials.json").write_text(json.dumps({"base": base}))
    return tmp_path


def test_threat_model_from_the_plan_natural_once_pgd_at_kept(tmp_path):
    base = {"eval.attack.norm": "l2", "eval.attack.eps": 0.5, "eval.attack.steps": 7, "eval.attack.early_stop": 0,
            "eval.certify": "crown"}
    res = _results(tmp_path, [["thrm", 0, 3, 0.2, 0.9, 1.0], ["thrm", 5, 3, 0.25, 0.5, 0.7],
                              ["trades", 0, 3, 0.2, 0.9, 1.0], ["pgd_at", 0, 3, 0.3, 0.4, 0.6]], base)
    assert tool.main(["--results", str(res)]) == 0
    md = (res / "bracket.md").read_text()
    assert "l2 eps=0.5 (128/255) steps=7" in md and "early-stop=0" in md and "ℓ∞" not in md and "PGD-20" not in md
    rows = list(csv.DictReader((res / "bracket.csv").open()))
    assert [r["trainer"] for r in rows] == ["NT", "PGD-AT", "THRM"]
    assert {r["certifier"] for r in rows} == {"CROWN"}
    assert rows[2]["verdict"] == "informative: gap 0.200" and rows[0]["verdict"].startswith("vacuous")


def test_an_empty_frontier_is_one_line(tmp_path, capsys):
    res = _results(tmp_path, [])
    with pytest.raises(SystemExit) as e:
        tool.main(["--results", str(res)])
    assert e.value.code == 2 and "lists no frontier point" in capsys.readouterr().err
    assert not (res / "bracket.md").exists()
