"""One trial end to end without Ray: run_trial, reports, checkpoints, exact resume, config errors."""
from __future__ import annotations

import math

import pytest
import torch

from hyporay import metrics as M
from hyporay.config import ConfigError, load_config
from hyporay.experiment import load_checkpoint, load_trial_data, model_from_checkpoint, run_trial

FAST = {"data": {"name": "digits"}, "model": {"name": "mlp"},
        "train": {"trainer": "thrm", "lam": 2.0, "epochs": 4, "lr": 0.05, "attack": {"eps": 0.1, "steps": 3}},
        "eval": {"every": 2, "attack": {"eps": 0.1, "steps": 5}}}


def _cfg(tmp_path, **over):
    from hyporay.config import merge

    base = merge(FAST, {"data": {"root": str(tmp_path / "data")}})
    return load_config(merge(base, over))


def test_run_trial_reports_each_evaluation_with_a_loadable_checkpoint(tmp_path):
    reports = []

    def report(metrics, ckpt_dir):
        state = load_checkpoint(ckpt_dir)  # weights_only=True inside
        reports.append((metrics, state["trainer"]["epoch"]))

    cfg = _cfg(tmp_path)
    final = run_trial(cfg, report)
    assert [int(m["epoch"]) for m, _ in reports] == [2, 4]
    assert [e for _, e in reports] == [2, 4]
    for name in M.CORE_METRICS:
        assert name in final
    assert final == reports[-1][0]
    # passes, counted: THRM with a 3-step attack spends per training image and epoch 3 forward + 3 backward
    # in the attack and 2 + 2 in the step (one forward on cat(x, x')); no training image is dropped
    first = reports[0][0]
    n_train = len(load_trial_data(cfg).y_train)
    assert final[M.TRAIN_PASSES] == 4 * 10 * n_train and first[M.TRAIN_PASSES] == 2 * 10 * n_train
    assert final[M.TRAIN_PASSES_EPOCH] == first[M.TRAIN_PASSES_EPOCH] == 10 * n_train
    # the first evaluation (5 steps): the clean forward; the adversarial attack (10) and its prediction (1);
    # the stability attack (1 + 10) and its prediction; the hypocritical attack on D- (10) and its prediction
    n, wrong = first[M.N_EXAMPLES], first[M.N_MISCLASSIFIED]
    assert first[M.EVAL_PASSES_EPOCH] == first[M.EVAL_PASSES] == 24 * n + 11 * wrong
    assert final[M.EVAL_PASSES] == first[M.EVAL_PASSES] + final[M.EVAL_PASSES_EPOCH]


def test_stopped_and_resumed_trial_ends_identical(tmp_path):
    """Guards exact resume: a trial stopped after its first evaluation and resumed from the checkpoint (in a
    process whose global RNG has moved on) ends with the same weights, optimiser state and epoch, bit for bit,
    as an uninterrupted run, and so with the same metrics."""
    cfg = _cfg(tmp_path)
    full = run_trial(cfg, checkpoint_dir=tmp_path / "full")

    class Stop(Exception):
        pass

    def stop_after_first(metrics, ckpt_dir):
        raise Stop

    ck = tmp_path / "ck"
    with pytest.raises(Stop):
        run_trial(cfg, stop_after_first, checkpoint_dir=ck)
    assert load_checkpoint(ck)["trainer"]["epoch"] == 2
    torch.manual_seed(987)  # whatever the process did meanwhile
    resumed = run_trial(cfg, resume_from=ck, checkpoint_dir=tmp_path / "resumed")
    a, b = load_checkpoint(tmp_path / "full")["trainer"], load_checkpoint(tmp_path / "resumed")["trainer"]
    assert a["epoch"] == b["epoch"] == 4
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    momenta = [(s["momentum_buffer"], t["momentum_buffer"]) for s, t in
               zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())]
    assert momenta and all(torch.equal(s, t) for s, t in momenta)
    for k in M.CORE_METRICS + M.PASS_METRICS:
        x, y = full[k], resumed[k]
        assert (math.isnan(x) and math.isnan(y)) or x == y, k


def test_naive_model_is_not_trained_and_conceals_errors(tmp_path):
    cfg = _cfg(tmp_path, variant={"name": "naive"}, train={"trainer": "natural"},
               eval={"attack": {"eps": 0.2, "steps": 10}})
    seen = []
    final = run_trial(cfg, lambda m, d: seen.append(m))
    assert len(seen) == 1 and seen[0]["epoch"] == 0
    assert final[M.ACC_CLEAN] < 0.3 and final[M.ACC_HYP] > final[M.ACC_CLEAN] + 0.3


def test_model_from_checkpoint_reproduces_predictions(tmp_path):
    """Guards the checkpoint as a way to get the trained model back: the model rebuilt from it gives the same
    logits (so predictions), bit for bit, on the whole test split as the model trained in this process by the
    same steps as run_trial (seeded init, the trainer's seeded generators), and its clean accuracy is the
    one the trial reported."""
    from hyporay.data import to_float
    from hyporay.experiment import load_trial_data, make_model, make_trainer, training_set

    cfg = _cfg(tmp_path, train={"epochs": 1}, eval={"every": 1})
    ck = tmp_path / "ck"
    final = run_trial(cfg, checkpoint_dir=ck)
    model, cfg2 = model_from_checkpoint(load_checkpoint(ck))
    assert cfg2 == cfg
    assert not model.training

    torch.manual_seed(cfg.seed)  # what run_trial does before building the model
    ds = load_trial_data(cfg)
    x_train, y_train = training_set(cfg, ds, torch.device("cpu"))
    trainer = make_trainer(cfg, make_model(cfg, ds), torch.device("cpu"))
    trainer.train_epoch(x_train, y_train)
    twin = trainer.model.eval()
    x_test = to_float(ds.x_test)
    with torch.no_grad():
        got, want = model(x_test), twin(x_test)
    assert torch.equal(got, want)
    pred = got.argmax(1)
    assert (pred != pred[0]).any()  # a trained model, not a constant one
    assert float((pred == ds.y_test).double().mean()) == final[M.ACC_CLEAN]


@pytest.mark.parametrize("over,field", [
    ({"model": {"name": "resnet19"}}, "model.name"),
    ({"data": {"name": "imagenet"}}, "data.name"),
    ({"train": {"trainer": "madry"}}, "train.trainer"),
    ({"variant": {"name": "bad"}}, "variant.name"),
    ({"train": {"attack": {"eps": -0.1}}}, "train.attack.eps"),
    ({"eval": {"attack": {"steps": 0}}}, "eval.attack.steps"),
    ({"train": {"lam": -1}}, "train.lam"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"lamda": 1}}, "train.lamda"),
    ({"device": "tpu"}, "device"),
])
def test_invalid_fields_fail_before_any_work(tmp_path, over, field):
    from hyporay.config import merge

    with pytest.raises(ConfigError) as err:
        run_trial(merge(FAST, {"data": {"root": str(tmp_path / "data")}} | over))
    msg = str(err.value)
    assert msg.startswith(field + ":") and "\n" not in msg
    assert not (tmp_path / "data").exists()  # nothing was loaded or generated


def test_missing_dataset_is_one_line(tmp_path):
    from hyporay.data import DatasetUnavailable

    with pytest.raises(DatasetUnavailable) as err:
        run_trial(_cfg(tmp_path, data={"name": "cifar10"}))
    assert "\n" not in str(err.value) and "cifar10" in str(err.value)
