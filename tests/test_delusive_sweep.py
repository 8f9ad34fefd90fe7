"""sweeps/delusive.py (001's Table 2): its grid, its table in 001's layout and the verdict on 001's claim."""
from __future__ import annotations

import pytest

from hyporay import delusive_table as D


def _rows(acc: dict[tuple[str, str], list[float]]) -> list[dict]:
    rows = []
    for (trainer, s), values in acc.items():
        for v in values:
            variant = {"variant.name": "quality"} if s == "clean" else {"variant.name": "poisoning",
                                                                        "variant.method": s}
            rows.append({"train.trainer": trainer, "acc_clean": v} | variant)
    return rows


def test_grid_is_sets_x_defences_x_seeds_with_one_evaluation():
    base = {"train": {"epochs": 7}}
    out = D.grid(base, {"variant.method": ["clean", "p3"], "train.trainer": ["natural", "trades", "fat"]}, [0, 1],
                 "local")
    assert len(out) == 2 * 2 * 3
    trials = [t for t, _ in out]
    assert {D.training_set(t) for t in trials} == {"clean", "p3"}
    assert all(t["eval"]["every"] == 7 for t in trials)
    p3 = [t for t in trials if D.training_set(t) == "p3"]
    assert all(t["variant"] == {"name": "poisoning", "method": "p3"} for t in p3)
    assert {t["train"]["trainer"]: t["train"]["lam"] for t in trials} == {"natural": 0.0, "trades": 6.0, "fat": 0.0}


def test_table_is_001s_layout_with_its_numbers_beside_ours():
    rows = _rows({("natural", "clean"): [0.90, 0.92], ("natural", "p1"): [0.30, 0.34], ("fat", "p1"): [0.80],
                  ("thrm", "clean"): [0.85]})
    header, body, cells = D.table(rows, ["clean", "p1"], ["natural", "fat", "thrm"])
    assert header == ["defence", "Clean", "P1", "L2C (001 only)"]
    assert body[0] == ["ST", "91.0 ± 1.4 [94.62]", "32.0 ± 2.8 [15.70]", "[15.76]"]
    assert body[1] == ["FAT", "n/a [87.43]", "80.0 ± 0.0 [86.05]", "[85.51]"]
    assert body[2] == ["THRM", "85.0 ± 0.0", "n/a", ""]  # 001 has no THRM row
    c = {(x["trainer"], x["set"]): x for x in cells}
    assert c[("natural", "clean")]["n_seeds"] == 2 and c[("natural", "clean")]["paper"] == 94.62


def test_verdict_on_001s_own_numbers_holds():
    """001's Table 2 itself: AT recovers most on every P, RandNoise does not."""
    rows = _rows({(t, s): [v / 100] for t, vals in D.PAPER.items() for s, v in zip(D.PAPER_COLUMNS, vals)
                  if s != "l2c"})
    _, _, cells = D.table(rows, list(D.SETS), list(D.DEFENCES))
    holds, lines = D.verdict(cells)
    assert holds is True, lines
    # P5: ST 10.12 -> RandNoise 27.56 of a loss of 84.5 points: 21% recovered
    assert any(ln.startswith("P5: ST loses 84.5 points (one seed: no noise estimate, judged on the 1-point "
                             "threshold alone)") and "RandNoise 21%" in ln for ln in lines)


def test_constant_predictors_keep_their_accuracy_other_failures_stay_out():
    """A poison that collapses ST to one class is Table 2's strongest effect: that run's accuracy counts; a model
    with non-finite logits, a diverged or an unfinished run does not."""
    import pandas as pd

    from hyporay import metrics as M

    df = pd.DataFrame({"outcome": ["result", "degenerate", "degenerate", "diverged", "unfinished"],
                       M.NONFINITE_LOGITS: [0.0, 0.0, 12.0, float("nan"), float("nan")],
                       "acc_clean": [0.9, 0.1, 0.1, float("nan"), 0.5]})
    kept, left, constant = D.accuracy_runs(df)
    assert list(kept.index) == [0, 1] and constant == 1
    assert left == {"degenerate": 1, "diverged": 1, "unfinished": 1}
    assert D.accuracy_runs(df.drop(columns=[M.NONFINITE_LOGITS]))[2] == 2  # never counted: no NaN logits seen


@pytest.mark.parametrize("noise, at, expected", [(0.35, 0.85, False), (0.80, 0.85, False), (0.35, 0.55, False),
                                                 (0.35, 0.80, True)])
def test_verdict_both_ways(noise, at, expected):
    """ST 0.95 clean, 0.30 on P1 (65 points lost): AT must recover > 50% (> 0.625), RandNoise must not."""
    acc = {("natural", "clean"): [0.95], ("natural", "p1"): [0.30], ("randnoise", "p1"): [noise],
           ("pgd_at", "p1"): [at], ("fat", "p1"): [0.90]}
    if (noise, at) == (0.35, 0.85):  # GAIRAT fails to recover: the claim covers every AT variant run
        acc[("gairat", "p1")] = [0.40]
    _, _, cells = D.table(_rows(acc), ["clean", "p1"], list(D.DEFENCES))
    assert D.verdict(cells)[0] is expected


def test_no_verdict_where_the_poison_loss_is_seed_noise():
    """ST loses 2 points on P2 with seeds scattered by ±2 points (standard error of the loss 2.8): within noise, no verdict;
    the same 2 points with tight seeds is a loss, and the claim is judged."""
    acc = {("natural", "clean"): [0.93, 0.97], ("natural", "p2"): [0.91, 0.95], ("randnoise", "p2"): [0.93],
           ("pgd_at", "p2"): [0.9]}
    _, _, cells = D.table(_rows(acc), ["clean", "p2"], list(D.DEFENCES))
    holds, lines = D.verdict(cells)
    assert holds is None and "P2: ST loses 2.0 ± 2.8 points: within seed noise" in lines[0]
    tight = acc | {("natural", "clean"): [0.95, 0.95], ("natural", "p2"): [0.93, 0.93]}
    _, _, cells = D.table(_rows(tight), ["clean", "p2"], list(D.DEFENCES))
    assert D.verdict(cells)[0] is False  # RandNoise recovers all, PGD-AT nothing
    assert D.verdict([])[0] is None


def test_dry_run_plans_the_grid(capsys, tmp_path, monkeypatch):
    from pathlib import Path

    from hyporay.engine import main
    from hyporay.sweeps import DELUSIVE

    monkeypatch.chdir(tmp_path)
    configs = Path(__file__).resolve().parent.parent / "sweeps" / "configs"
    assert main(DELUSIVE, ["--profile", "local", "--dry-run"], configs_dir=configs) == 0
    assert "delusive: 126 trials" in capsys.readouterr().out  # 6 sets x 7 defences x 3 seeds
    args = ["--profile", "local", "--dry-run", "--sets", "clean,p4", "--trainers", "natural,gairat", "--seeds", "2"]
    assert main(DELUSIVE, args, configs_dir=configs) == 0
    out = capsys.readouterr().out
    assert "delusive: 8 trials" in out and "gairat-lam0-mlp-p4-seed1" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
