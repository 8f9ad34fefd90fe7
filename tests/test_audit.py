"""`hyporay audit`: a healthy model passes every check; deliberately broken evaluations are flagged."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import fit, tiny_model
from hyporay import metrics as M
from hyporay.attacks import AttackSpec
from hyporay.audit import CHECKS, FLAG, PASS, SKIPPED, Tolerances, check_settings, run_audit

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_thrm.yaml"
SPEC = AttackSpec(norm="linf", eps=0.1, steps=20)
# fast settings: the defaults are steps 1/10/100/1000 and restarts 1/5/10
FAST = dict(eps_multiples=(0.0, 0.5, 1.0, 4.0, 16.0), steps_grid=(1, 50, 100), restarts_grid=(1, 3, 5), n_single=16)
# for the (slower) CNN: only as much attack as the batch-dependence checks need
TINY = dict(eps_multiples=(0.0, 16.0), steps_grid=(1, 5), restarts_grid=(1, 2), n_single=8)


@pytest.fixture(scope="module")
def surrogate(digits):
    """Independently trained: same data, another seed."""
    return fit(tiny_model("mlp", digits, seed=11), digits.x_train, digits.y_train, epochs=10, seed=11)


@pytest.fixture(scope="module")
def test_points(digits):
    return digits.x_test[:200], digits.y_test[:200]


class Rounded(nn.Module):
    """Masked gradients: the input is quantised (no straight-through estimator), so dLoss/dx = 0."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 16) / 16)


class IgnoresEval(nn.Module):
    """An attack run in train mode: ``eval()`` is ignored, BatchNorm stays in train mode during attacks."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True):
        return super().train(True)

    def forward(self, x):
        return self.net(x)


def batch_statistics(net: nn.Module) -> nn.Module:
    """A model whose eval-mode output depends on the batch: BatchNorm without running statistics."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return net


def verdicts(report) -> dict[str, str]:
    return {r.check: r.verdict for r in report.rows}


def test_healthy_model_passes_every_check(natural_mlp, surrogate, test_points, digits):
    x, y = test_points
    modes = [m.training for m in natural_mlp.modules()]
    fresh = digits.x_test[200:400], digits.y_test[200:400]  # honest: another part of the same test distribution
    report = run_audit(natural_mlp, x, y, spec=SPEC, surrogate=surrogate, tolerances=Tolerances(), fresh=fresh,
                       **FAST)
    assert [r.check for r in report.rows] == list(CHECKS)
    assert verdicts(report) == {c: PASS for c in CHECKS}, report.to_text()
    assert report.passed and report.summary_line() == "audit: pass"
    assert [m.training for m in natural_mlp.modules()] == modes
    assert all(p.requires_grad and p.grad is None for p in natural_mlp.parameters())

    # every figure is measured and serialised: curves, grids, the metrics behind the theorem rows
    d = json.loads(report.to_json())
    assert d["verdict"] == "pass" and d["n_examples"] == 200 and d["num_classes"] == 10
    checks = {c["check"]: c for c in d["checks"]}
    curve = checks["curve/adversarial"]["data"]
    assert curve["eps"] == pytest.approx([0.1 * m for m in FAST["eps_multiples"]])
    assert len(curve["acc_adv"]) == len(FAST["eps_multiples"]) and curve["acc_adv"][-1] <= 0.1
    assert curve["acc_adv"][0] == pytest.approx(d["metrics"][M.ACC_CLEAN])  # eps 0: the clean accuracy
    assert len(checks["curve/hypocritical"]["data"]["acc_hyp"]) == len(FAST["eps_multiples"])
    assert checks["convergence_steps/adversarial"]["data"]["steps"] == [1, 50, 100]
    assert checks["convergence_restarts/hypocritical"]["data"]["restarts"] == [1, 3, 5]
    # the white-box attack at the spec's setting is the same in every check that uses it
    wb = checks["pgd_vs_fgsm/adversarial"]["data"]["acc_adv_pgd"]
    assert checks["transfer/adversarial"]["data"]["acc_adv_whitebox"] == wb
    assert curve["acc_adv"][FAST["eps_multiples"].index(1.0)] <= wb  # the curve keeps the best iterate
    assert checks["transfer/adversarial"]["data"]["surrogate_acc_clean"] > 0.9
    assert checks["gradient_health"]["data"]["clean"]["zero"] == 0
    for name in M.CORE_METRICS:
        assert name in d["metrics"]
    assert "| check | figure | verdict | reason |" in report.to_markdown()


def test_masked_gradients_are_flagged(natural_mlp, surrogate, test_points):
    x, y = test_points
    report = run_audit(Rounded(natural_mlp), x, y, spec=SPEC, surrogate=surrogate, tolerances=Tolerances(), **FAST)
    v = verdicts(report)
    assert v["gradient_health"] == FLAG
    assert report.row("gradient_health").data["clean"]["zero"] == 200
    # the attack is blind: examples crafted on the surrogate beat it, a huge eps cannot break the model
    assert v["transfer/adversarial"] == FLAG
    assert v["transfer/hypocritical"] == FLAG  # the surrogate's examples conceal mistakes the blind attack cannot
    assert v["curve/adversarial"] == FLAG and v["curve/hypocritical"] == FLAG
    # the model itself is fine: no batch dependence, no state change, the identities hold
    for ok in ("batch_independence", "state_unchanged", "eps0_clean", "theorem_4_4", "theorem_4_5"):
        assert v[ok] == PASS
    assert not report.passed and report.summary_line() == f"audit: flag ({len(report.flagged)} checks)"


def test_attack_in_train_mode_is_flagged(bn_cnn, test_points):
    x, y = test_points[0][:64], test_points[1][:64]
    model = IgnoresEval(copy.deepcopy(bn_cnn))
    report = run_audit(model, x, y, spec=AttackSpec(eps=0.1, steps=5), surrogate=None, **TINY)
    v = verdicts(report)
    assert v["batch_independence"] == FLAG
    assert report.row("batch_independence").data["max_abs_diff_single"] > 0.01
    assert v["state_unchanged"] == FLAG  # the attacks' forward passes moved BatchNorm's running statistics
    assert any("running_mean" in t for t in report.row("state_unchanged").data["changed_tensors"])
    assert v["transfer/adversarial"] == v["transfer/hypocritical"] == SKIPPED


def test_batch_dependent_model_is_flagged(bn_cnn, test_points):
    x, y = test_points[0][:64], test_points[1][:64]
    healthy = run_audit(bn_cnn, x, y, spec=AttackSpec(eps=0.1, steps=5), surrogate=None, **TINY)
    assert verdicts(healthy)["batch_independence"] == PASS  # BatchNorm in eval mode: running statistics
    report = run_audit(batch_statistics(bn_cnn), x, y, spec=AttackSpec(eps=0.1, steps=5), surrogate=None, **TINY)
    v = verdicts(report)
    assert v["batch_independence"] == FLAG
    assert "depend on the rest of the batch" in report.row("batch_independence").reason
    assert v["state_unchanged"] == PASS  # nothing is updated: the output itself depends on the batch


# tiny grids: the constructed cases below flag at any size
SMALL = dict(eps_multiples=(0.0, 1.0), steps_grid=(1, 2), restarts_grid=(1, 2), n_single=4)


def test_attack_with_too_small_a_step_is_flagged_unconverged_and_weaker_than_fgsm(natural_mlp, test_points):
    """Guards convergence_steps/* and pgd_vs_fgsm/* (either turned into a constant pass fails here): PGD with a
    step of eps/200 hardly moves in 2 steps, so 200 steps still change both accuracies by far more than the
    tolerance, and a single FGSM step of size eps beats it in both directions."""
    x, y = test_points
    spec = AttackSpec(eps=0.1, steps=2, step_size=0.1 / 200, random_start="none")
    report = run_audit(natural_mlp, x, y, spec=spec, surrogate=None, **{**SMALL, "steps_grid": (1, 2, 200)})
    v = verdicts(report)
    for check in ("convergence_steps/adversarial", "convergence_steps/hypocritical", "pgd_vs_fgsm/adversarial",
                  "pgd_vs_fgsm/hypocritical"):
        assert v[check] == FLAG, (check, report.row(check).figure)
    assert "not converged" in report.row("convergence_steps/adversarial").reason
    d = report.row("pgd_vs_fgsm/adversarial").data
    assert d["acc_adv_pgd"] > d["acc_adv_fgsm"] + 0.1
    for ok in ("batch_independence", "eps0_clean", "theorem_4_4", "theorem_4_5", "state_unchanged"):
        assert v[ok] == PASS, ok


def test_random_search_attack_is_flagged_unconverged_in_restarts(naive_mlp, test_points):
    """Guards convergence_restarts/*: an attack that is only its random start (step size 0) finds more
    witnesses with every restart, so 1 vs 2 vs 10 restarts differ by more than the tolerance in both
    directions on the near-chance Naive model."""
    x, y = test_points
    spec = AttackSpec(eps=0.3, steps=1, step_size=0.0, random_start="uniform")
    report = run_audit(naive_mlp, x, y, spec=spec, surrogate=None, **{**SMALL, "restarts_grid": (1, 2, 10)})
    v = verdicts(report)
    assert v["convergence_restarts/adversarial"] == FLAG, report.row("convergence_restarts/adversarial").figure
    assert v["convergence_restarts/hypocritical"] == FLAG, report.row("convergence_restarts/hypocritical").figure
    acc = report.row("convergence_restarts/hypocritical").data["acc"]
    assert acc[-1] > acc[0] + 0.03  # more random starts conceal more mistakes


def test_attack_that_moves_at_eps_zero_is_flagged(natural_mlp, test_points, monkeypatch):
    """Guards eps0_clean: a broken attack that perturbs inputs even with a zero budget (here: every eps=0
    attack run as if eps were 0.2) changes predictions and evaluate()'s accuracies at eps = 0."""
    import importlib

    engine = importlib.import_module("hyporay.attacks.pgd")  # the module (the package re-exports the function)
    real = engine.pgd

    def leaky(model, x, y, *, eps, **kw):
        return real(model, x, y, eps=0.2 if eps == 0 else eps, **kw)

    monkeypatch.setattr(engine, "pgd", leaky)  # what AttackSpec.run (so the audit and evaluate) call
    x, y = test_points
    report = run_audit(natural_mlp, x, y, spec=AttackSpec(eps=0.1, steps=5), surrogate=None, **SMALL)
    row = report.row("eps0_clean")
    assert row.verdict == FLAG, row.figure
    assert row.data["max_abs_perturbation"] > 0.1 and row.data["changed_predictions_adversarial"] > 0
    assert row.data["gaps"]["acc_adv"] < 0


def _consistent_metrics(n_right_broken=3, n_wrong_concealed=4, n_wrong_unstable=5):
    """Metrics of 10 correct and 10 misclassified examples, aggregated by hyporay.metrics from hand-made
    per-example outcomes that obey the witness rule (so both theorems hold exactly)."""
    y = torch.zeros(20, dtype=torch.long)
    pred = torch.cat([torch.zeros(10, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    right = torch.arange(20) < 10
    adv = ~right | (torch.arange(20) < n_right_broken)
    hyp = right | ((torch.arange(20) >= 10) & (torch.arange(20) < 10 + n_wrong_concealed))
    sta = (right & adv) | ((torch.arange(20) >= 10) & (torch.arange(20) < 10 + n_wrong_unstable))
    return M.aggregate(M.PerExample(y=y, clean_pred=pred, adv_success=adv, hyp_success=hyp, sta_success=sta))


def test_theorem_checks_flag_inconsistent_metrics():
    """Guards theorem_4_4 and theorem_4_5 (either turned into a constant pass fails here): metrics that obey
    the identities pass; R_hyp(D) off by one example, R_sta(D) off by one example, or R_sta(D-) < R_hyp(D-)
    (a hypocritical witness that the stability risk did not count) each flag."""
    from hyporay.audit.model_checks import check_theorems as _check_theorems

    def rows(m):
        return {r.check: r.verdict for r in _check_theorems(m, Tolerances().identity)}

    ok = _consistent_metrics()
    assert rows(ok) == {"theorem_4_4": PASS, "theorem_4_5": PASS}
    assert rows({**ok, M.HYPOCRITICAL_RISK_ALL: ok[M.HYPOCRITICAL_RISK_ALL] - 1 / 20})["theorem_4_4"] == FLAG
    assert rows({**ok, M.HYPOCRITICAL_RISK: ok[M.HYPOCRITICAL_RISK] + 1 / 10})["theorem_4_4"] == FLAG
    assert rows({**ok, M.STABILITY_RISK: ok[M.STABILITY_RISK] + 1 / 20})["theorem_4_5"] == FLAG
    assert rows({**ok, M.ADVERSARIAL_RISK_CORRECT: ok[M.ADVERSARIAL_RISK_CORRECT] - 1 / 10})["theorem_4_5"] == FLAG
    # R_sta(D-) = 0.2 < R_hyp(D-) = 0.4 with the decomposition intact: only the inequality is violated
    unstable = _consistent_metrics(n_wrong_concealed=4, n_wrong_unstable=2)
    r = {x.check: x for x in _check_theorems(unstable, Tolerances().identity)}
    assert r["theorem_4_5"].verdict == FLAG and "<" in r["theorem_4_5"].reason
    assert r["theorem_4_5"].data["decomposition_abs_diff"] <= 1e-12


def test_settings_and_tolerances_are_validated(natural_mlp, test_points):
    with pytest.raises(ValueError, match="tolerances.curve"):
        Tolerances(curve=-0.1)
    with pytest.raises(ValueError, match="steps_grid"):
        check_settings(steps_grid=[10, 1])
    with pytest.raises(ValueError, match="restarts_grid"):
        check_settings(restarts_grid=[0, 1])
    with pytest.raises(ValueError, match="eps_multiples"):
        run_audit(natural_mlp, *test_points, spec=SPEC, surrogate=None, eps_multiples=[])


# --- the command --------------------------------------------------------------------------------------------

def hyporay(*args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hyporay.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("audit")
    r = hyporay("train", CONFIG, "--out", d / "run", "--set", "train.trainer=natural", "--set", "train.epochs=2",
                "--set", "eval.every=2", "--set", "eval.attack.steps=5", "--set", "threads=1", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


CLI_FAST = ["--subset", "200", "--steps-grid", "1,10,50", "--restarts-grid", "1,2", "--eps-multiples", "0,1,16",
            "--surrogate-epochs", "2"]


def test_cli_audit_prints_table_writes_json_and_exit_status_follows_verdicts(checkpoint, capsys):
    d = checkpoint
    r = hyporay("audit", d / "run", *CLI_FAST, "--json", d / "a.json", "--markdown", d / "a.md", cwd=d)
    assert r.returncode in (0, 1), r.stderr
    out = json.loads((d / "a.json").read_text())
    flagged = [c["check"] for c in out["checks"] if c["verdict"] == "flag"]
    assert r.returncode == (1 if flagged else 0)
    assert out["verdict"] == ("flag" if flagged else "pass") and out["n_flagged"] == len(flagged)
    last = r.stdout.strip().splitlines()[-1]
    assert last == ("audit: pass" if not flagged else f"audit: flag ({len(flagged)} check{'s' * (len(flagged) > 1)})")
    for check in CHECKS:
        assert check in r.stdout
    assert [c["check"] for c in out["checks"]] == list(CHECKS)
    # the transfer check ran; the smuggling check needs --fresh
    assert all(c["verdict"] in ("pass", "flag") for c in out["checks"] if c["check"] != "smuggling_gap")
    assert [c for c in out["checks"] if c["check"] == "smuggling_gap"][0]["reason"].endswith("(--fresh FILE)")
    assert out["settings"]["surrogate"]["source"] == "trained" and out["settings"]["subset"] == 200
    assert out["n_examples"] == 200 and out["spec"]["eps"] == 0.1 and out["spec"]["steps"] == 5
    assert out["checks"][2]["data"]["acc_adv"] and "| eps0_clean |" in (d / "a.md").read_text()

    # a deliberately weak audit: eps x1 is the largest eps, where the model is not broken -> flag, exit 1
    # (in-process: the same entry point, without paying for another interpreter)
    from hyporay.cli import main

    capsys.readouterr()
    from hyporay.data import load_dataset

    ds = load_dataset("digits", seed=0, test_fraction=0.5)  # the trial's data; 50 test images act as a fresh split
    torch.save({"x": ds.x_test[:50], "y": ds.y_test[:50]}, d / "fresh.pt")
    rc = main(["audit", str(d / "run" / "checkpoint.pt"), *CLI_FAST, "--eps-multiples", "0,1", "--no-transfer",
               "--json", str(d / "b.json"), "--fresh", str(d / "fresh.pt")])
    stdout = capsys.readouterr().out
    assert rc == 1, stdout
    out = json.loads((d / "b.json").read_text())
    checks = {c["check"]: c for c in out["checks"]}
    assert checks["curve/adversarial"]["verdict"] == "flag"
    smug = checks["smuggling_gap"]
    assert smug["verdict"] in ("pass", "flag") and smug["data"]["n_fresh"] == 50
    assert smug["data"]["n_declared"] == len(ds.y_test) and out["settings"]["fresh"].endswith("fresh.pt")
    assert checks["transfer/adversarial"]["verdict"] == "skipped" and "--no-transfer" in checks[
        "transfer/adversarial"]["reason"]
    assert stdout.strip().splitlines()[-1] == f"audit: flag ({out['n_flagged']} check{'s' * (out['n_flagged'] > 1)})"


@pytest.mark.parametrize("args,needle", [
    (["audit", "no/such/dir"], "checkpoint: no checkpoint.pt"),
    (["audit", "no/such/dir", "--steps-grid", "1,x"], "--steps-grid"),
    (["audit", "{ckpt}", "--tol-curve", "-1"], "--tol-curve"),
    (["audit", "{ckpt}", "--steps-grid", "10,1"], "steps_grid"),
    (["audit", "{ckpt}", "--fresh", "no/such/fresh.pt", "--no-transfer"], "--fresh: cannot read"),
    (["audit", "{ckpt}", "--tol-smuggling", "0"], "--tol-smuggling"),
])
def test_cli_audit_user_errors_are_one_line(checkpoint, capsys, args, needle):
    from hyporay.cli import main

    args = [a.format(ckpt=checkpoint / "run") for a in args]
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1
