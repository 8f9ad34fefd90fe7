"""Evaluation that stops once an example is decided (``eval.attack.early_stop``; ``hyporay.witnesses``): per example
and for every indicator it equals the max over every point today's attacks visit, so it is >= today's rule (final
iterates) and identical to it wherever those final iterates were the attacks' first witnesses; for PGD and APGD,
l_inf and l_2, every objective (adversarial, stability, hypocritical, targeted)."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from hyporay import metrics as M
from hyporay import passes
from hyporay.attacks import AttackSpec

EPS = {"linf": 0.1, "l2": 1.0}
SMALL = {"linf": 0.03, "l2": 0.3}  # bn_cnn conceals about half (l_inf) or 4/5 (l_2) of its mistakes there
LABELS = [0, 3]
KEYS = ("adv", "hyp", "sta", *LABELS)


@pytest.fixture(scope="module")
def batch(digits):
    return digits.x_test[:192], digits.y_test[:192]


@pytest.fixture(scope="module")
def mixed(bn_cnn, digits):
    """Every test point bn_cnn misclassifies, and 150 it gets right: both D+ and D- well populated."""
    x, y = digits.x_test, digits.y_test
    with torch.no_grad():
        right = bn_cnn.eval()(x).argmax(1) == y
    keep = torch.cat([(~right).nonzero().flatten()[:60], right.nonzero().flatten()[:150]]).sort().values
    return x[keep], y[keep]


def _indicators(pe: M.PerExample) -> dict:
    """Each indicator where it counts: adversarial, hypocritical and stability everywhere; targeted to t on Fig. 3's
    subset (D- with y != t and f(x) != t), False elsewhere."""
    counts = {t: ~pe.correct & (pe.y != t) & (pe.clean_pred != t) for t in pe.targeted}
    return {"adv": pe.adv_success, "hyp": pe.hyp_success, "sta": pe.sta_success,
            **{t: hit & counts[t] for t, hit in pe.targeted.items()}}


def _run(model, x, y, spec, seed=7):
    with passes.counting() as spent:
        pe = M.evaluate_batch(model, x, y, spec, targeted=LABELS, generator=torch.Generator().manual_seed(seed))
    return _indicators(pe), spent.total, M.aggregate(pe)


def _visited_union(model, x, y, spec, seed=7):
    """Today's attacks in today's order from the same generator, recording the prediction at every point they
    visit (none stops: ``decided`` never accepts): the max over all visited points, per example."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = model(x).argmax(1)
    wrong = (clean != y).nonzero().flatten()
    w = {"adv": clean != y, "hyp": clean == y, "sta": torch.zeros_like(clean, dtype=torch.bool),
         **{t: clean == t for t in LABELS}}

    def record(rows):
        def decided(idx, logits):
            full, pred = (idx if rows is None else rows[idx]), logits.argmax(1)
            w["adv"][full] |= pred != y[full]
            w["hyp"][full] |= pred == y[full]
            w["sta"][full] |= pred != clean[full]
            for t in LABELS:
                w[t][full] |= pred == t
            return torch.zeros_like(pred, dtype=torch.bool)
        return decided

    every = dataclasses.replace(spec, early_stop=0)
    plan = [("adversarial", None, None), ("stability", None, None)]
    plan += [("hypocritical", wrong, None)] + [("targeted", wrong, t) for t in LABELS]
    for objective, rows, t in plan:
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        target = None if t is None else torch.full_like(ys, t)
        every.run(model, xs, ys, objective, target=target, generator=gen, decided=record(rows))
    for t in LABELS:  # where it counts, as in _indicators
        w[t] = w[t] & (clean != y) & (y != t) & (clean != t)
    return w


@pytest.mark.parametrize("method,norm", list(itertools.product(("pgd", "apgd"), ("linf", "l2"))))
def test_decided_rule_is_the_max_over_todays_visited_points(bn_cnn, mixed, method, norm):
    x, y = mixed
    spec = AttackSpec(norm=norm, eps=SMALL[norm], steps=8, restarts=2, method=method, random_start="uniform",
                      score="margin" if method == "apgd" else "ce")
    today, today_passes, today_m = _run(bn_cnn, x, y, spec)
    new, new_passes, new_m = _run(bn_cnn, x, y, dataclasses.replace(spec, early_stop=0))
    union = _visited_union(bn_cnn, x, y, spec)
    wrong = today_m[M.N_MISCLASSIFIED]
    assert 10 <= wrong <= len(y) - 10, "the model needs both D+ and D-"
    for name in (M.HYPOCRITICAL_RISK, M.ADVERSARIAL_RISK_CORRECT, M.STABILITY_RISK_MISCLASSIFIED):
        assert 0 < today_m[name] < 1, f"{name} = {today_m[name]}: trivial, it could not show a wrong witness"
    for k in KEYS:
        assert (new[k] | ~today[k]).all(), f"{k}: a witness of today's rule was lost"
        assert torch.equal(new[k], union[k].cpu()), f"{k}: not the max over today's visited points"
    for name in M.RISK_METRICS:
        assert new_m[name] >= today_m[name], name
    assert new_m[M.NATURAL_RISK] == today_m[M.NATURAL_RISK]
    assert new_passes < today_passes, (new_passes, today_passes)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_visited_points_are_todays_final_iterates_of_shorter_runs(natural_mlp, batch, norm):
    """Independent of the early-stop machinery: without a random start PGD's k-th iterate is the final iterate of
    the same attack with k steps, so the decided rule equals the max over K = 1..8 of today's rule."""
    x, y = batch
    spec = AttackSpec(norm=norm, eps=EPS[norm], steps=8, random_start="none")
    new, _, _ = _run(natural_mlp, x, y, dataclasses.replace(spec, early_stop=0))
    shorter = [_run(natural_mlp, x, y, dataclasses.replace(spec, steps=k))[0] for k in range(1, 9)]
    for key in KEYS:
        assert torch.equal(new[key], torch.stack([s[key] for s in shorter]).any(0)), key


def test_rule_is_named_in_the_threat_model_string_and_the_old_rule_stays_available():
    old, new = AttackSpec(eps=0.1), AttackSpec(eps=0.1, early_stop=0)
    assert "early-stop" not in old.describe() and new.describe().endswith("early-stop=0")
    assert old.as_dict()["early_stop"] is None and new.as_dict()["early_stop"] == 0


def test_config_chooses_the_rule_and_names_a_bad_value():
    from hyporay.config import ConfigError, load_config

    assert load_config({}).eval.attack.early_stop is None  # today's rule unless asked
    cfg = load_config({"eval": {"attack": {"early_stop": 0}}, "train": {"attack": {"early_stop": 2}}})
    assert cfg.eval.attack.early_stop == 0 and cfg.train.attack.early_stop == 2
    assert cfg.eval.attack.describe().endswith("early-stop=0")
    with pytest.raises((ConfigError, ValueError), match="early_stop"):
        load_config({"eval": {"attack": {"early_stop": -1}}})


def _line_model():
    """Logits of x in [0,1] (one feature): 0, 10x - 3, 20x - 9; class 0 below 0.3, 1 on (0.3, 0.6), 2 above 0.6.
    With y = 2 every attack moves x monotonically: the adversarial one down, the hypocritical one up."""
    lin = torch.nn.Linear(1, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0], [10.0], [20.0]]))
        lin.bias.copy_(torch.tensor([0.0, -3.0, -9.0]))
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


LINE = AttackSpec(norm="linf", eps=0.5, step_size=0.1, steps=5, random_start="none", early_stop=0)


def test_each_example_leaves_the_attacks_once_decided_hand_computed():
    """Two examples, both y = 2, targeted label 0, steps of 0.1 from x itself, τ = 0:

    - A at 0.75 (D+): the adversarial attack visits 0.75, 0.65, 0.55; 0.55 is class 1, a witness for adversarial
      and stability (hypocritical: x itself), so A is decided there (targeted does not count on D+) and leaves:
      3 forwards, 2 backwards. The stability attack then finds nothing undecided and does not run.
    - B at 0.25 (D-, predicted 0, which is B's targeted witness at the start): the hypocritical attack runs first
      and visits 0.25, 0.35, 0.45, 0.55 (class 1: adversarial and stability, not hypocritical) and 0.65 (class 2:
      hypocritical), where B is decided: 5 forwards, 4 backwards. No later attack touches B.

    Plus the clean forward of both: 10 forwards and 6 backwards in all."""
    from hyporay.witnesses import until_decided

    x, y = torch.tensor([[0.75], [0.25]]), torch.tensor([2, 2])
    with passes.counting() as spent:
        w = until_decided(_line_model(), x, y, LINE, [0], torch.Generator().manual_seed(0))
    assert w["clean_pred"].tolist() == [2, 0]
    assert w["adv"].tolist() == [True, True] and w["hyp"].tolist() == [True, True]
    assert w["sta"].tolist() == [True, True] and w["targeted"][0].tolist() == [False, True]
    assert (spent.forward, spent.backward) == (10, 6)


def _uniform_line_batch():
    x = torch.linspace(0.05, 0.95, 19).view(-1, 1)
    return x, torch.tensor([0, 1, 2]).repeat(7)[:19]


def test_no_generator_means_one_seed_drawn_from_the_global_rng():
    """``generator=None``: the attacks draw from a generator seeded with one draw of the global RNG, so the
    result under ``torch.manual_seed(s)`` is the one with that generator passed, and another s changes it."""
    from hyporay.witnesses import until_decided

    model, (x, y) = _line_model(), _uniform_line_batch()
    spec = dataclasses.replace(LINE, random_start="uniform", restarts=2)

    def run(generator):
        with passes.counting() as spent:
            w = until_decided(model, x, y, spec, [0, 1], generator)
        return spent.total, {k: v for k, v in w.items() if k not in ("clean_logits", "targeted")}, w["targeted"]

    def same(a, b):
        return a[0] == b[0] and all(torch.equal(a[1][k], b[1][k]) for k in a[1]) and \
            all(torch.equal(a[2][t], b[2][t]) for t in a[2])

    torch.manual_seed(11)
    explicit = run(torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,)))))
    torch.manual_seed(11)
    assert same(run(None), explicit)
    torch.manual_seed(12)
    assert not same(run(None), explicit), "the test cannot tell one seed from another"


@dataclasses.dataclass(frozen=True)
class _Spy(AttackSpec):
    """An AttackSpec that records, at each attack it runs, the objective, target label and generator state."""

    calls: list = dataclasses.field(default_factory=list, compare=False)

    def run(self, model, x, y, objective, *, target=None, generator=None, **kw):
        label = None if target is None else int(target[0])
        self.calls.append((objective, label, len(x), generator.get_state().clone()))
        return super().run(model, x, y, objective, target=target, generator=generator, **kw)


@pytest.mark.parametrize("method,norm,start", [("pgd", "linf", "uniform"), ("pgd", "l2", "auto"),
                                               ("apgd", "l2", "uniform"), ("apgd", "linf", "auto")])
def test_each_attack_starts_from_the_generator_state_of_todays_order(method, norm, start):
    """Whatever the decided rule skips or reorders, each attack it runs gets the generator state that the same
    attack has under today's rule (early_stop=None, ``evaluate_batch``) with the same seed, on today's batch."""
    model, (x, y) = _line_model(), _uniform_line_batch()
    kw = dict(norm=norm, eps=0.3, steps=3, restarts=2, method=method, random_start=start)
    today, new = _Spy(**kw), _Spy(**kw, early_stop=0)
    for spec in (today, new):
        M.evaluate_batch(model, x, y, spec, targeted=[0, 1], generator=torch.Generator().manual_seed(3))
    before = {(obj, t): (n, state) for obj, t, n, state in today.calls}
    assert len(before) == 5 and 0 < before[("hypocritical", None)][0] < len(x)
    ran = [(obj, t) for obj, t, _, _ in new.calls]
    assert ("targeted", 0) in ran and ("targeted", 1) in ran, "no targeted attack ran: nothing checked there"
    for obj, t, n, state in new.calls:
        assert n == before[(obj, t)][0], (obj, t)
        assert torch.equal(state, before[(obj, t)][1]), f"{obj} {t}: not today's generator state"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_skip_starts_advances_the_generator_as_the_attack_does(norm):
    """``skip_starts`` leaves the generator exactly where ``pgd`` and ``apgd`` with the same settings leave it, for
    every start (auto per objective, True, uniform, gaussian with and without sigma, none, False) and restarts."""
    from hyporay.attacks import apgd, pgd
    from hyporay.attacks.common import skip_starts

    model, (x, y) = _line_model(), _uniform_line_batch()
    starts = [("auto", None), (True, None), ("uniform", None), ("gaussian", None), ("gaussian", 0.2),
              ("none", None), (False, None)]
    checked = 0
    for objective in ("adversarial", "stability", "hypocritical", "targeted"):
        target = torch.full_like(y, 1) if objective == "targeted" else None
        for (start, sigma), restarts, attack in itertools.product(starts, (1, 2), (pgd, apgd)):
            kw = dict(eps=0.3, norm=norm, objective=objective, random_start=start, restarts=restarts, sigma=sigma)
            g_attack, g_skip = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
            step = dict(step_size=0.1) if attack is pgd else {}
            attack(model, x, y, steps=2, target=target, generator=g_attack, **step, **kw)
            skip_starts(x, generator=g_skip, **kw)
            assert torch.equal(g_skip.get_state(), g_attack.get_state()), (objective, start, sigma, restarts, attack)
            checked += start not in ("none", False)
    assert checked == 4 * 5 * 2 * 2


def test_skip_starts_checks_its_arguments_as_the_attacks_do():
    from hyporay.attacks.common import skip_starts

    x = torch.full((3, 1), 0.5)
    for bad, field in ((dict(sigma=-0.1), "sigma"), (dict(sigma=True), "sigma"), (dict(eps=-1.0), "eps"),
                       (dict(restarts=0), "restarts"), (dict(norm="l1"), "norm"), (dict(random_start="x"), "random")):
        kw = {**dict(eps=0.1, norm="linf", objective="hypocritical", random_start="gaussian", restarts=1), **bad}
        with pytest.raises(ValueError, match=field):
            skip_starts(x, generator=torch.Generator().manual_seed(0), **kw)


def test_decided_rule_records_clean_logits_and_all_labels_like_todays(natural_mlp, batch):
    """Both rules hand the degeneracy check the same clean logits (the model's, on CPU), and ``targeted=True``
    means every label of the data set under both."""
    x, y = batch[0][:64], batch[1][:64]
    today = AttackSpec(eps=0.1, steps=3)
    decided = dataclasses.replace(today, early_stop=0)
    runs = [M.evaluate_batch(natural_mlp, x, y, s, targeted=True, num_classes=10,
                             generator=torch.Generator().manual_seed(1)) for s in (today, decided)]
    with torch.no_grad():
        logits = natural_mlp.eval()(x).float()
    for pe in runs:
        assert pe.clean_logits is not None and pe.clean_logits.device.type == "cpu"
        assert torch.allclose(pe.clean_logits, logits) and sorted(pe.targeted) == list(range(10))
    assert M.aggregate(runs[0])[M.DEGENERATE] == M.aggregate(runs[1])[M.DEGENERATE] == 0
