"""Divergence is a result, not a number: diverged trials stop, degenerate models never show risks."""
from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import tiny_model

from hyporay import metrics as M
from hyporay.attacks import AttackSpec
from hyporay.audit import CHECK_DEGENERATE, FLAG, PASS, run_audit
from hyporay.experiment import Diverged, run_trial

FAST_AUDIT = dict(eps_multiples=(0, 1), steps_grid=(1, 2), restarts_grid=(1, 2), n_single=4)


def _constant(model):
    """The model a diverged run often leaves: every ReLU dead, so the output is the last bias for every input."""
    with torch.no_grad():
        model.net[-1].weight.zero_()
    return model


def test_constant_and_nonfinite_models_report_no_attack_number(digits):
    x, y = digits.x_test[:120], digits.y_test[:120]
    spec = AttackSpec(eps=0.1, steps=3)
    ok = M.evaluate(tiny_model("mlp", digits, seed=0).eval(), [(x, y)], spec)
    assert ok[M.DEGENERATE] == 0 and not math.isnan(ok[M.HYPOCRITICAL_RISK]) and ok[M.NONFINITE_LOGITS] == 0

    const = M.evaluate(_constant(tiny_model("mlp", digits, seed=0)).eval(), [(x[:60], y[:60]), (x[60:], y[60:])],
                       spec)
    assert const[M.DEGENERATE] == 1 and const[M.PREDICTED_CLASSES] == 1
    for name in (M.HYPOCRITICAL_RISK, M.ADVERSARIAL_RISK, M.STABILITY_RISK, M.ACC_ADV, M.ACC_HYP):
        assert math.isnan(const[name]), name
    assert 0 < const[M.NATURAL_RISK] < 1  # a constant function still has a clean error
    assert not M.meaningful(const) and M.meaningful(ok)

    broken = tiny_model("mlp", digits, seed=0)
    with torch.no_grad():
        broken.net[1].weight[0, 0] = float("nan")
    nan = M.evaluate(broken.eval(), [(x, y)], spec)
    assert nan[M.DEGENERATE] == 1 and nan[M.NONFINITE_LOGITS] == len(y)
    assert math.isnan(nan[M.NATURAL_RISK]) and math.isnan(nan[M.ACC_CLEAN])


def test_a_model_predicting_one_class_with_varying_logits_is_not_degenerate(digits):
    """Substandard models (Noise, Naive) may predict one class everywhere yet respond to the input: a false
    friend can move them (Table 1's F), so their risks are results."""
    m = tiny_model("mlp", digits, seed=0)
    with torch.no_grad():
        m.net[-1].bias.zero_()
        m.net[-1].bias[3] = 100.0  # class 3 wins everywhere, the other logits still vary
    out = M.evaluate(m.eval(), [(digits.x_test[:80], digits.y_test[:80])], AttackSpec(eps=0.1, steps=2))
    assert out[M.PREDICTED_CLASSES] == 1 and out[M.DEGENERATE] == 0 and not math.isnan(out[M.HYPOCRITICAL_RISK])


def test_nonfinite_training_loss_stops_the_trial_with_its_epoch(digits):
    cfg = {"train": {"trainer": "natural", "lr": 100.0, "epochs": 3}, "eval": {"every": 1, "attack": {"steps": 1}},
           "threads": 1}
    reports = []
    with pytest.raises(Diverged) as err:
        run_trial(cfg, lambda m, d: reports.append(m), data=digits)
    assert err.value.epoch == 1 and not math.isfinite(err.value.loss)
    assert reports == []  # no evaluation of the diverged model was reported


def test_cli_train_of_a_diverging_config_exits_1_with_the_fact_not_risks(tmp_path, monkeypatch, capsys):
    from hyporay.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", str(_config(tmp_path)), "--set", "train.lr=100", "--set", "train.epochs=1", "--out", "d"])
    err = capsys.readouterr().err
    assert code == 1 and "diverged at epoch 1" in err and "Traceback" not in err
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    prov = metrics.pop("provenance")
    assert metrics == {"diverged": 1.0, "epoch": 1.0, "train_loss": None}
    assert prov["hyporay.git_commit"] and len(prov["hyporay.config_sha256"]) == 64


def _config(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {trainer: thrm, lam: 5}\neval: {every: 1, attack: {steps: 2}}\nthreads: 1\n")
    return p


def test_audit_flags_a_degenerate_model_and_passes_a_healthy_one(digits, natural_mlp):
    x, y = digits.x_test[:40], digits.y_test[:40]
    spec = AttackSpec(eps=0.1, steps=2)
    healthy = run_audit(natural_mlp, x, y, spec=spec, surrogate=None, **FAST_AUDIT).row(CHECK_DEGENERATE)
    assert healthy.verdict == PASS
    const = run_audit(_constant(tiny_model("mlp", digits, seed=4)).eval(), x, y, spec=spec, surrogate=None,
                      **FAST_AUDIT)
    row = const.row(CHECK_DEGENERATE)
    assert row.verdict == FLAG and "do not depend on the input" in row.reason and not const.passed
