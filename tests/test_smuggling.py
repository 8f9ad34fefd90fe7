"""004's smuggled training sets (hyporay.variants.smuggle) and the audit's smuggling check, driven both ways."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import load_script
from hyporay.audit import FLAG, PASS, SKIPPED
from hyporay.audit.smuggling import check_smuggling, gap_statistic, load_fresh_split
from hyporay.variants.smuggle import (SmuggleSpec, feature_map, feature_shift, fit_linear, smuggle, smuggling_gap,
                                      smuggling_trial, split_test)


def _hinge(f, y, w):
    return torch.relu(1 - y * (f @ w))


def test_feature_shift_has_the_corrected_sign():
    """004 shifts by δ·w*; only δ·y·w* lowers every hinge term (the y = -1 terms rise with the paper's sign)."""
    g = torch.Generator().manual_seed(0)
    f, w = torch.randn(200, 5, generator=g), torch.randn(5, generator=g)
    y = torch.where(torch.rand(200, generator=g) < 0.5, -1.0, 1.0)
    ok = feature_shift(f, y, w, 0.3)
    assert torch.allclose(ok - f, 0.3 * y[:, None] * w[None, :])
    assert bool((_hinge(ok, y, w) <= _hinge(f, y, w)).all())
    paper = f + 0.3 * w  # 004's x'_n = x_n + δ_n·w*_test
    worse = (_hinge(paper, y, w) > _hinge(f, y, w)) & (y < 0)
    assert int(worse.sum()) > 0 and not bool(((_hinge(paper, y, w) > _hinge(f, y, w)) & (y > 0)).any())


def test_smuggling_step_moves_along_y_times_w():
    """With identity features and a binary linear head (logits ±wᵀx/2), one l_inf step of the smuggler is
    eps·sign(y·w) for y in {-1, +1}: the corrected direction, not sign(w)."""
    w = torch.tensor([1.0, -2.0, 0.5, -0.25])
    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.stack([-w / 2, w / 2]))
        head.bias.zero_()
    x = torch.full((6, 1, 2, 2), 0.5)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    spec = SmuggleSpec(eps=0.1, steps=1, step_size=0.1)
    x_s = smuggle(x, y, nn.Flatten(), head, spec)
    s = (2 * y - 1).float()[:, None]
    assert torch.allclose((x_s - x).flatten(1), 0.1 * torch.sign(s * w[None, :]))


def test_smuggled_images_stay_in_the_ball_box_and_dtype(digits):
    spec = SmuggleSpec(eps=5 / 256, steps=5)
    phi = feature_map(digits, spec, seed=0)
    x, y = digits.x_train[:200], digits.y_train[:200]
    head = fit_linear(phi(x), y, 10, spec.l2)
    x_s = smuggle(x, y, phi, head, spec)
    assert x_s.dtype == x.dtype and float((x_s - x).abs().max()) <= spec.eps + 1e-7
    assert float(x_s.min()) >= 0 and float(x_s.max()) <= 1 and not torch.equal(x_s, x)
    x8 = (x * 255).round().to(torch.uint8)
    s8 = smuggle(x8, y, phi, head, SmuggleSpec(eps=8 / 255, steps=5))
    assert s8.dtype == torch.uint8 and int((s8.int() - x8.int()).abs().max()) <= 8
    with torch.no_grad():  # the target classifier is more confident in the true labels afterwards
        assert F.cross_entropy(head(phi(x_s)), y) < F.cross_entropy(head(phi(x)), y)


def test_fit_linear_is_l2_logistic_regression():
    """Same optimum as scikit-learn's multinomial LogisticRegression with C = 1/(l2·N)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    f = rng.standard_normal((150, 6))
    y = (f[:, 0] + 0.5 * f[:, 1] > 0).astype(int) + (f[:, 2] > 1).astype(int)
    l2 = 0.01
    ours = fit_linear(torch.tensor(f), torch.tensor(y), 3, l2)
    ref = LogisticRegression(C=1 / (l2 * len(y)), tol=1e-10, max_iter=5000).fit(f, y)
    with torch.no_grad():
        p_ours = ours(torch.tensor(f, dtype=torch.float32)).softmax(1).numpy()
    np.testing.assert_allclose(p_ours, ref.predict_proba(f), atol=2e-4)


def test_split_test_is_a_seeded_partition():
    d, f = split_test(11, 0.5, seed=3)
    assert sorted(torch.cat([d, f]).tolist()) == list(range(11)) and len(d) == 6
    assert torch.equal(split_test(11, 0.5, seed=3)[0], d) and not torch.equal(split_test(11, 0.5, seed=4)[0], d)
    with pytest.raises(ValueError, match="declared_fraction"):
        split_test(3, 0.1, seed=0)


@pytest.mark.parametrize("field, value", [("eps", -0.1), ("steps", 0), ("features", "vgg"), ("width", 0),
                                          ("l2", float("nan")), ("declared_fraction", 1.0), ("step_size", 0.0)])
def test_spec_rejects_bad_fields_in_one_line(field, value):
    with pytest.raises(ValueError, match=f"^smuggle.{field}: "):
        SmuggleSpec(**{field: value})


# --- the detector ---------------------------------------------------------------------------------------------


def test_gap_statistic_hand_computed():
    """declared 3/4 right, fresh 1/4: gap 0.5; pooled unbiased variance of 4 ones in 8 = 2/7;
    se = sqrt(2/7)·sqrt(1/4 + 1/4); z = 0.5 / se = 1.3229; p = 1 - Φ(z) = 0.0929."""
    st = gap_statistic(torch.tensor([1, 1, 1, 0]), torch.tensor([1, 0, 0, 0]), alpha=0.05)
    se = math.sqrt(2 / 7) * math.sqrt(0.5)
    assert st["gap"] == pytest.approx(0.5) and st["se"] == pytest.approx(se)
    assert st["z"] == pytest.approx(0.5 / se) and st["p"] == pytest.approx(0.0929, abs=5e-4)
    assert st["detectable_gap"] == pytest.approx((1.6449 + 0.8416) * se, rel=1e-3)
    # several models: per-example correctness is averaged over them first
    two = gap_statistic(torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]]))
    assert two["declared_acc"] == pytest.approx(0.625) and two["n_models"] == 2
    same = gap_statistic(torch.ones(5), torch.ones(5))
    assert same["z"] == 0 and same["p"] == 1.0  # nothing to tell apart: never flagged


def test_gap_statistic_is_calibrated_under_honesty():
    """Declared and fresh correctness i.i.d. Bernoulli(0.95), n = 270 each: flagged at alpha = 0.05 in about 5%
    of 4000 draws (binomial 99.9% band), and more often when the declared split is really 4 points easier."""
    g = torch.Generator().manual_seed(0)

    def rate(p_declared):
        hits = 0
        for _ in range(4000):
            d = (torch.rand(270, generator=g) < p_declared).float()
            f = (torch.rand(270, generator=g) < 0.95).float()
            hits += gap_statistic(d, f, alpha=0.05)["p"] < 0.05
        return hits / 4000

    assert abs(rate(0.95) - 0.05) < 3.3 * math.sqrt(0.05 * 0.95 / 4000) + 0.005
    assert rate(0.99) > 0.6


def _victims(ds, spec, seed):
    d, f = split_test(len(ds.y_test), spec.declared_fraction, seed)
    phi = feature_map(ds, spec, seed)
    with torch.no_grad():
        target = fit_linear(phi(ds.x_test[d]), ds.y_test[d], ds.num_classes, spec.l2)
    x_s = smuggle(ds.x_train, ds.y_train, phi, target, spec)
    with torch.no_grad():
        honest = fit_linear(phi(ds.x_train), ds.y_train, ds.num_classes, spec.l2)
        victim = fit_linear(phi(x_s), ds.y_train, ds.num_classes, spec.l2)
    splits = (ds.x_test[d], ds.y_test[d]), (ds.x_test[f], ds.y_test[f])
    return nn.Sequential(phi, honest), nn.Sequential(phi, victim), splits


def test_detector_flags_a_smuggled_set_and_passes_the_honest_one(digits):
    """Digits, random features, a large budget (eps 0.3: the 270 + 270 split sees gaps above ~5 points only)."""
    spec = SmuggleSpec(eps=0.3, steps=10)
    honest, smuggled, (declared, fresh) = _victims(digits, spec, seed=2)
    bad = check_smuggling(smuggled, declared, fresh)
    good = check_smuggling(honest, declared, fresh)
    assert bad.verdict == FLAG and bad.data["gap"] > bad.data["detectable_gap"] and bad.data["p"] < 0.01, bad.figure
    assert "smuggled training data" in bad.reason and "z=" in bad.figure
    assert good.verdict == PASS and abs(good.data["gap"]) < 0.02, good.figure
    assert check_smuggling(honest, declared, None).verdict == SKIPPED


def test_smuggling_trial_lifts_the_declared_split(digits):
    r = smuggling_trial(digits, SmuggleSpec(eps=0.3, steps=10), seed=2)
    assert r["target_declared"] == 1.0 and r["max_perturbation"] <= 0.3 + 1e-6
    assert r["smuggled_gap"] > r["honest_gap"] + 0.03 and r["effect"] == pytest.approx(r["smuggled_gap"]
                                                                                     - r["honest_gap"])
    s = smuggling_gap(digits, SmuggleSpec(eps=0.3, steps=2, features="pixels"), seeds=[0, 1])
    assert s["seeds"] == [0, 1] and len(s["trials"]) == 2 and s["summary"]["effect"]["se"] >= 0


def test_run_audit_reports_the_smuggling_row(digits):
    from hyporay.attacks import AttackSpec
    from hyporay.audit import CHECKS, run_audit

    spec = SmuggleSpec(eps=0.3, steps=10)
    _honest, smuggled, (declared, fresh) = _victims(digits, spec, seed=2)
    report = run_audit(smuggled, declared[0][:64], declared[1][:64], spec=AttackSpec(eps=0.1, steps=2),
                       surrogate=None, eps_multiples=(0.0, 16.0), steps_grid=(1, 2), restarts_grid=(1, 2), n_single=4,
                       certify="none", fresh=fresh, declared=declared)
    assert [r.check for r in report.rows] == list(CHECKS)
    row = report.row("smuggling_gap")
    assert row.verdict == FLAG and row.data["n_declared"] == len(declared[1]) and report.settings["fresh"]


def test_load_fresh_split_checks_the_file(tmp_path, digits):
    good = tmp_path / "fresh.pt"
    torch.save({"x": digits.x_test[:10], "y": digits.y_test[:10]}, good)
    x, y = load_fresh_split(str(good), digits.in_shape, 10)
    assert x.shape == (10, 1, 8, 8) and y.dtype == torch.int64
    np.savez(tmp_path / "fresh.npz", x=digits.x_test[:5].numpy(), y=digits.y_test[:5].numpy())
    assert len(load_fresh_split(str(tmp_path / "fresh.npz"), digits.in_shape, 10)[1]) == 5
    torch.save({"x": digits.x_test[:10, :, :4], "y": digits.y_test[:10]}, tmp_path / "shape.pt")
    torch.save({"x": digits.x_test[:10] * 2, "y": digits.y_test[:10]}, tmp_path / "range.pt")
    torch.save({"x": digits.x_test[:10], "y": digits.y_test[:10] + 10}, tmp_path / "labels.pt")
    for name, needle in (("shape.pt", "N x 1 x 8 x 8"), ("range.pt", "[0,1]"), ("labels.pt", "[0, 10)"),
                         ("missing.pt", "cannot read")):
        with pytest.raises(ValueError, match="^--fresh: ") as err:
            load_fresh_split(str(tmp_path / name), digits.in_shape, 10)
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_smuggling_gap_script_writes_its_table(tmp_path, capsys):
    import json
    mod = load_script("tools/smuggling_gap.py")
    out = tmp_path / "s.md"
    assert mod.main(["--seeds", "2", "--eps", "0.1", "--steps", "1", "--features", "pixels", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| smuggling gap (declared - fresh) |" in text and "flags the smuggled victim in" in text
    assert len(json.loads(out.with_suffix(".json").read_text())[0]["trials"]) == 2
    with pytest.raises(SystemExit):
        mod.main(["--seeds", "1"])
    assert "--seeds: need at least 2" in capsys.readouterr().err
