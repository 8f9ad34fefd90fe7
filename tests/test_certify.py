"""Certified bounds (IBP, CROWN) checked against exact vertices, dense sampling and every attack."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch import nn

from hyporay import metrics as M
from hyporay.attacks import AttackSpec, apgd, pgd
from hyporay.certify import METHODS, NotCertifiable, certify, margin_lower_bounds, spec_lower_bounds
from hyporay.models import build_model
from hyporay.models.resnet import ResNet
from hyporay.models.wideresnet import WideResNet


def _randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g))
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def _logit_diffs(model, pts, y):
    """z_j - z_y for points pts (n x S x ...) -> n x S x K (float64)."""
    n, s = pts.shape[:2]
    with torch.no_grad():
        z = model(pts.reshape(n * s, *pts.shape[2:])).double().view(n, s, -1)
    return z - z.gather(2, y.view(n, 1, 1).expand(n, s, 1))


def _assert_sound(model, x, y, pts, eps, norm, methods=METHODS):
    """Lower bounds below every sampled difference; no certified point contradicted by a sample."""
    diffs = _logit_diffs(model, pts, y)
    pred_is_y = diffs.amax(2) <= 0  # y is (one of) the argmax at the sample
    for method in methods:
        lb = margin_lower_bounds(model, x, y, eps=eps, norm=norm, method=method)
        slack = 1e-5 * (1 + diffs.abs().amax())
        assert (lb.unsqueeze(1) <= diffs + slack).all(), method
        cert = certify(model, x, y, eps=eps, norm=norm, method=method)
        assert not (cert.unconcealable.unsqueeze(1) & pred_is_y).any(), method
        assert not (cert.robust.unsqueeze(1) & ~pred_is_y).any(), method


# --- 2-D inputs: exact vertices and a dense grid ------------------------------------------------------------

def _tiny2d(hidden, seed):
    """A registry mlp on 2-D inputs with N(0,1) weights: many decision boundaries inside [0,1]^2."""
    torch.manual_seed(seed)
    model = build_model("mlp", in_shape=(1, 1, 2), num_classes=3, mean=(0.5,), std=(0.25,), hidden=hidden)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 1)
            m.bias.data.normal_(0, 0.5)
    return model.eval()


def _points2d(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 1, 2, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_linear_model_bounds_are_exact_at_the_box_vertices():
    model = _tiny2d((), 0)
    x, y = _points2d(32, 1)
    eps = 0.1
    xd = x.double()
    lo, hi = (xd - eps).clamp(min=0), (xd + eps).clamp(max=1)
    corners = torch.stack([torch.cat([(hi if a else lo)[..., :1], (hi if b else lo)[..., 1:]], -1)
                           for a, b in itertools.product((0, 1), (0, 1))], 1)       # n x 4 x 1 x 1 x 2
    exact = _logit_diffs(model.double(), corners, y).amin(1)
    model.float()
    for method in METHODS:  # an affine function: every method is exact (the spec folded into the layer)
        lb = margin_lower_bounds(model, x, y, eps=eps, method=method)
        assert torch.allclose(lb, exact, atol=1e-9), method


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("linf", 0.15), ("l2", 0.1)])
def test_relu_net_2d_dense_grid_never_contradicts_a_certificate(norm, eps):
    model = _tiny2d((16, 16), 3)
    x, y = _points2d(48, 4)
    t = torch.linspace(-1, 1, 61)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).view(-1, 2) * eps    # includes the 4 corners
    if norm == "l2":
        grid = grid[grid.norm(dim=1) <= eps]
        ang = torch.linspace(0, 2 * math.pi, 241)
        grid = torch.cat([grid, eps * torch.stack([ang.cos(), ang.sin()], 1)])       # the circle itself
    pts = (x.view(-1, 1, 2) + grid).clamp(0, 1).view(len(x), -1, 1, 1, 2)
    _assert_sound(model, x, y, pts, eps, norm)
    cert = certify(model, x, y, eps=eps, norm=norm, method="crown")
    assert cert.certified.any() and not cert.certified.all(), "the test must exercise both outcomes"


# --- image-shaped models: sampling, vertices and attacks -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_cnn():
    """The registry's cnn (conv, BatchNorm, ReLU, max pool, adaptive avg pool) on 4x4 inputs."""
    torch.manual_seed(5)
    model = build_model("cnn", in_shape=(1, 4, 4), num_classes=4, mean=(0.4,), std=(0.3,), channels=(3, 4),
                        pool_size=1)
    return _randomise_batchnorm(model, 5)


def _box_samples(x, eps, n_samples, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    u = torch.rand((len(x), n_samples, *x.shape[1:]), generator=g)
    u[:, : n_samples // 2] = u[:, : n_samples // 2].round()  # random vertices of the box
    return lo.unsqueeze(1) + u * (hi - lo).unsqueeze(1)


def _attack_points(model, x, y, eps, norm, k):
    outs = []
    for objective, target in (("adversarial", None), ("hypocritical", None), ("targeted", (y + 1) % k)):
        for score in ("ce", "margin"):
            outs.append(apgd(model, x, y, eps=eps, steps=20, norm=norm, objective=objective, score=score,
                             target=target, generator=torch.Generator().manual_seed(0)))
        outs.append(pgd(model, x, y, eps=eps, step_size=eps / 4, steps=20, norm=norm, objective=objective,
                        target=target, generator=torch.Generator().manual_seed(0)))
    return torch.stack(outs, 1)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.15)])
def test_cnn_bounds_contain_sampled_and_attacked_logits(tiny_cnn, norm, eps):
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(12, 1, 4, 4, generator=g), torch.randint(0, 4, (12,), generator=g)
    pts = _box_samples(x, eps, 400, 7)
    if norm == "l2":  # keep the samples in the l2 ball
        d = pts - x.unsqueeze(1)
        pts = x.unsqueeze(1) + d * (eps / d.flatten(2).norm(dim=2).clamp_min(eps)).view(12, -1, 1, 1, 1)
    pts = torch.cat([pts, _attack_points(tiny_cnn, x, y, eps, norm, 4)], 1)
    _assert_sound(tiny_cnn, x, y, pts, eps, norm)


def test_residual_networks_are_certified_soundly():
    g = torch.Generator().manual_seed(8)
    x, y = torch.rand(4, 1, 4, 4, generator=g), torch.randint(0, 4, (4,), generator=g)
    eps = 0.02
    samples = _box_samples(x, eps, 64, 9)
    torch.manual_seed(8)
    wrn = _randomise_batchnorm(nn.Sequential(WideResNet(1, 4, depth=10, widen_factor=1)), 8)
    pts = torch.cat([samples, _attack_points(wrn, x, y, eps, "linf", 4)], 1)
    _assert_sound(wrn, x, y, pts, eps, "linf")
    torch.manual_seed(9)
    resnet = _randomise_batchnorm(nn.Sequential(ResNet(1, 4, blocks=(1, 1))), 9)
    pts = torch.cat([samples[:2], _attack_points(resnet, x[:2], y[:2], eps, "linf", 4)], 1)
    _assert_sound(resnet, x[:2], y[:2], pts, eps, "linf", methods=("ibp", "crown-ibp"))


# --- properties on the trained digits MLP --------------------------------------------------------------------

def test_certified_fraction_is_monotone_in_eps_and_crown_is_tighter(natural_mlp, digits):
    x, y = digits.x_test[:40], digits.y_test[:40]
    counts = {m: [] for m in METHODS}
    for eps in (0.0, 0.005, 0.01, 0.02, 0.05):
        for method in METHODS:
            counts[method].append(int(certify(natural_mlp, x, y, eps=eps, method=method).certified.sum()))
    with torch.no_grad():
        top2 = natural_mlp(x).topk(2, dim=1).values
    assert counts["ibp"][0] == int((top2[:, 0] > top2[:, 1]).sum())  # eps 0: every untied point
    for method, c in counts.items():
        assert all(a >= b for a, b in zip(c, c[1:])), (method, c)
    assert counts["ibp"][-1] < counts["ibp"][0]
    # CROWN's bounds are never looser than IBP's, and on this network much tighter
    lbs = {m: margin_lower_bounds(natural_mlp, x, y, eps=0.01, method=m) for m in METHODS}
    assert (lbs["crown-ibp"] >= lbs["ibp"]).all() and (lbs["crown"] >= lbs["ibp"]).all()
    assert lbs["crown"].mean() > lbs["crown-ibp"].mean() > lbs["ibp"].mean() + 1.0
    for i in range(1, 5):
        assert counts["crown"][i] >= counts["crown-ibp"][i] >= counts["ibp"][i]
    assert counts["crown"][2] > counts["ibp"][2]


def test_no_attack_conceals_a_certified_mistake_or_breaks_a_certified_point(natural_mlp, digits):
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        wrong_all = natural_mlp(x).argmax(1) != y
    keep = wrong_all | (torch.arange(len(y)) < 100)   # every mistake and 100 other points
    x, y = x[keep], y[keep]
    eps = 0.02
    cert = certify(natural_mlp, x, y, eps=eps, method="crown")
    wrong = ~cert.correct
    assert cert.unconcealable.any() and cert.robust.any()
    concealed = torch.zeros_like(wrong)
    broken = torch.zeros_like(wrong)
    for spec in (AttackSpec(eps=eps, steps=50, restarts=3), AttackSpec(eps=eps, steps=50, method="apgd",
                                                                        score="margin")):
        x_hyp = spec.run(natural_mlp, x[wrong], y[wrong], "hypocritical", generator=torch.Generator().manual_seed(0))
        x_adv = spec.run(natural_mlp, x, y, "adversarial", generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            concealed[wrong] |= natural_mlp(x_hyp).argmax(1) == y[wrong]
            broken |= natural_mlp(x_adv).argmax(1) != y
    assert concealed.any() and broken.any()
    assert not (cert.unconcealable & concealed).any()
    assert not (cert.robust & broken).any()
    # the bracket: attack lower bound <= certified upper bound
    assert M.share(concealed, wrong) <= 1 - M.share(cert.unconcealable, wrong)


def test_certify_leaves_the_model_untouched_and_rejects_what_it_cannot_bound(bn_cnn, digits):
    x, y = digits.x_test[:8], digits.y_test[:8]
    bn_cnn.train()
    before = {k: v.clone() for k, v in bn_cnn.state_dict().items()}
    try:
        certify(bn_cnn, x, y, eps=0.01, method="crown-ibp")
        assert all(m.training for m in bn_cnn.modules())
    finally:
        bn_cnn.eval()
    assert all(torch.equal(v, bn_cnn.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad and p.grad is None for p in bn_cnn.parameters())

    tanh = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Tanh())
    with pytest.raises(NotCertifiable, match="^model Sequential is not certifiable: Tanh$"):
        certify(tanh, x, y, eps=0.01)

    class Doubled(nn.Sequential):  # a Sequential whose forward is not the chain of its layers
        def forward(self, inp):
            return 2 * super().forward(inp)

    with pytest.raises(NotCertifiable, match="custom forward"):
        certify(Doubled(nn.Flatten(), nn.Linear(64, 10)), x, y, eps=0.01)
    for kw, needle in ((dict(method="alpha-crown"), "method: unknown 'alpha-crown'"),
                       (dict(eps=-1.0), "eps: must be a finite number >= 0"),
                       (dict(norm="l1"), "norm: unknown 'l1'")):
        with pytest.raises(ValueError, match=needle):
            certify(bn_cnn, x, y, **{"eps": 0.01, **kw})
    with pytest.raises(ValueError, match=r"C: must be N x M x K"):
        spec_lower_bounds(bn_cnn, x, torch.zeros(3, 2, 10), eps=0.01)


# --- metrics, experiment and the command ---------------------------------------------------------------------

def test_eval_metrics_and_cli_report_the_bracket(tmp_path, capsys):
    from hyporay.cli import main
    from hyporay.config import ConfigError, load_config
    from hyporay.experiment import evaluate_model, load_trial_data, make_model, run_trial

    cfg = {"name": "cert", "threads": 1, "data": {"name": "digits", "root": str(tmp_path / "data")},
           "model": {"name": "mlp", "kwargs": {"hidden": [64]}},
           "train": {"trainer": "natural", "epochs": 2, "lr": 0.05},
           "eval": {"every": 2, "certify": "crown-ibp", "attack": {"eps": 0.02, "steps": 5, "method": "apgd"}}}
    metrics = run_trial(cfg, checkpoint_dir=tmp_path / "run")
    for name in M.CERTIFIED_METRICS:
        assert 0 <= metrics[name] <= 1
    assert metrics[M.HYPOCRITICAL_RISK] <= metrics[M.HYPOCRITICAL_RISK_CERTIFIED_UPPER]
    assert metrics[M.ADVERSARIAL_RISK_CORRECT] <= metrics[M.ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())[M.HYPOCRITICAL_RISK_CERTIFIED_UPPER] == \
        metrics[M.HYPOCRITICAL_RISK_CERTIFIED_UPPER]
    flat = load_config(cfg).flat()  # what a sweep logs as MLflow params
    assert flat["eval.attack.method"] == "apgd" and flat["eval.certify"] == "crown-ibp"

    rc = main(["eval", str(tmp_path / "run"), "--method", "pgd", "--score", "margin", "--certify", "ibp",
               "--json", str(tmp_path / "e.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "R_hyp(D-) in [attack, certified]" in out and "linf eps=0.02" in out and "method=pgd score=margin" in out
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["attack"]["method"] == "pgd" and saved["attack"]["score"] == "margin"
    assert saved["certify"] == "ibp"
    # IBP is looser than the trial's crown-ibp: a larger (or equal) upper bound
    assert saved["metrics"][M.HYPOCRITICAL_RISK_CERTIFIED_UPPER] >= metrics[M.HYPOCRITICAL_RISK_CERTIFIED_UPPER]

    bad = load_config(cfg)
    ds = load_trial_data(bad)
    model = nn.Sequential(make_model(bad, ds), nn.Tanh())
    with pytest.raises(ConfigError, match="^eval.certify: model Sequential is not certifiable: Tanh$"):
        evaluate_model(bad, model, ds, torch.device("cpu"), epoch=0)


# --- hyporay audit: "attack lower bound <= certified upper bound" --------------------------------------------

CHEAP_AUDIT = dict(eps_multiples=(0.0, 1.0), steps_grid=(1, 5), restarts_grid=(1, 2), n_single=4)


def test_audit_certified_bound_passes_a_sound_certificate_and_flags_an_unsound_one(natural_mlp, digits):
    from hyporay.audit import FLAG, PASS, SKIPPED, run_audit

    x, y = digits.x_test[:150], digits.y_test[:150]
    spec = AttackSpec(eps=0.02, steps=20)
    sound = run_audit(natural_mlp, x, y, spec=spec, surrogate=None, certify="crown", **CHEAP_AUDIT)
    for direction in ("hypocritical", "adversarial"):
        row = sound.row(f"certified_bound/{direction}")
        assert row.verdict == PASS, row
        assert row.data["certified"] > 0 and row.data["contradictions"] == 0
        assert row.data["attack_lower"] <= row.data["certified_upper"]

    def overclaiming(model, xb, yb, eps, norm):  # certifies a ball 10x smaller than the one attacked
        return certify(model, xb, yb, eps=eps / 10, norm=norm, method="crown-ibp")

    unsound = run_audit(natural_mlp, x, y, spec=AttackSpec(eps=0.1, steps=20), surrogate=None,
                        certify=overclaiming, **CHEAP_AUDIT)
    for direction in ("hypocritical", "adversarial"):
        row = unsound.row(f"certified_bound/{direction}")
        assert row.verdict == FLAG and row.data["contradictions"] > 0, row
        assert "unsound" in row.reason and row.data["attack_lower"] > row.data["certified_upper"]

    off = run_audit(nn.Sequential(natural_mlp, nn.Tanh()), x[:20], y[:20], spec=spec, surrogate=None,
                    **CHEAP_AUDIT)
    row = off.row("certified_bound/hypocritical")
    assert row.verdict == SKIPPED and "is not certifiable: Tanh" in row.reason
