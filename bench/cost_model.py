"""The paper profile's cost model from counted passes: a count-only run on CIFAR-shaped tensors on the CPU.

Image-passes (``hyporay.passes``: forward + backward, attacks included) do not depend on the network under the
paper's rules (every example runs every attack step), so a stand-in linear model on random 3 x 32 x 32 tensors
spends, per image, exactly what ResNet-18 on CIFAR-10 does. This runs the paper profile's own trainer settings
(sweeps/configs/paper.yaml: batch 128, 10-step training attack, one forward on cat(x, x'), 110 epochs) for one
epoch of natural, TRADES and THRM training, and its evaluation (PGD-20, every 10 epochs and after the last, the
convergence grids of the last) on a test set whose share of clean mistakes is ``--natural-risk`` (the hypocritical
attack runs on those only), then scales to the Fig. 4 sweep: 9 λ x 2 trainers, λ = 0 trained once (17 trials),
50,000 training and 10,000 test images. ``--train-attack`` swaps in other ``train.attack`` settings (e.g. fewer
steps); rules whose passes depend on the model (early stop) cannot be counted this way: bench/frontier_cost.py and
bench/eval_passes.py measure them on trained digits models.

    python bench/cost_model.py
    python bench/cost_model.py --train-attack steps=3,step_size=0.0157 --natural-risk 0.2
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
TRAIN_IMAGES, TEST_IMAGES, N = 50_000, 10_000, 512


def _override(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = yaml.safe_load(v)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--natural-risk", type=float, default=0.15, help="share of test images misclassified")
    ap.add_argument("--train-attack", default="", help="train.attack overrides, e.g. steps=3,step_size=0.0157")
    ap.add_argument("--gpu-passes-per-second", type=float, default=4000.0,
                    help="forward + backward passes per second, for the GPU-hours column (docs/cost.md's "
                         "unmeasured A10G figure)")
    args = ap.parse_args()
    import dataclasses

    import torch
    from torch import nn

    from hyporay import passes
    from hyporay.config import load_config, merge
    from hyporay.data.core import Dataset
    from hyporay.experiment import convergence_metrics, evaluate_model, make_trainer

    torch.set_num_threads(1)
    trial = yaml.safe_load((ROOT / "sweeps" / "configs" / "paper.yaml").read_text())["trial"]
    trial = merge(trial, {"device": "cpu", "train": {"amp": False, "channels_last": False,
                                                     "attack": _override(args.train_attack)}})
    g = torch.Generator().manual_seed(0)

    def stand_in():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    x = torch.rand(N, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    per_epoch = {}
    for trainer, lam in (("natural", 0.0), ("trades", 6.0), ("thrm", 6.0)):
        cfg = load_config(merge(trial, {"train": {"trainer": trainer, "lam": lam, "augment": False}}))
        t = make_trainer(cfg, stand_in(), torch.device("cpu"))
        stats = t.train_epoch(x, y)
        per_epoch[trainer] = stats["train_passes_epoch"] / N
    cfg = load_config(merge(trial, {"train": {"trainer": "thrm", "lam": 6.0}}))
    model = stand_in().eval()
    xt = torch.rand(N, 3, 32, 32, generator=g)
    with torch.no_grad():
        pred = model(xt).argmax(1)
    wrong = int(round(args.natural_risk * N))
    yt = torch.cat([(pred[:wrong] + 1) % 10, pred[wrong:]])  # exactly ``wrong`` clean mistakes
    ds = Dataset("cifar-shaped", x, y, xt, yt, 10, (0.5,) * 3, (0.25,) * 3)
    with passes.counting() as one_eval:
        evaluate_model(cfg, model, ds, torch.device("cpu"), epoch=1, certify="none")
    with passes.counting() as grids:
        convergence_metrics(cfg, model, ds, torch.device("cpu"), epoch=cfg.train.epochs)
    epochs, every = cfg.train.epochs, cfg.eval.every
    n_evals = len({e for e in range(1, epochs + 1) if e % every == 0} | {epochs})
    eval_per_trial = (n_evals * one_eval.total + grids.total) / N * TEST_IMAGES
    trials = {"natural": 1, "trades": 8, "thrm": 8}
    spec = dataclasses.replace(cfg.train.attack)
    print(f"paper profile, counted (stand-in model, CIFAR-shaped tensors, CPU); train attack: {spec.describe()}")
    print(f"eval attack: {cfg.eval.attack.describe()}; clean mistakes {args.natural_risk:.0%} of the test set")
    print(f"\n{'':34} {'per image':>10} {'x images x epochs x trials':>28} {'image-passes':>14} {'GPU-hours':>10}")
    total = 0.0
    for trainer, k in trials.items():
        p = per_epoch[trainer] * TRAIN_IMAGES * epochs * k
        total += p
        print(f"{'training ' + trainer + (' (λ = 0)' if trainer == 'natural' else ' (λ > 0)'):34} "
              f"{per_epoch[trainer]:10.2f} {f'{TRAIN_IMAGES} x {epochs} x {k}':>28} {p:14.4g} "
              f"{p / 2 / args.gpu_passes_per_second / 3600:10.1f}")
    ev = eval_per_trial * 17
    print(f"{'evaluation (per test image, one)':34} {one_eval.total / N:10.2f} "
          f"{f'{TEST_IMAGES} x {n_evals} evals (+grids) x 17':>28} {ev:14.4g} "
          f"{ev / 2 / args.gpu_passes_per_second / 3600:10.1f}")
    total += ev
    print(f"{'total (Fig. 4 sweep, 17 trials)':34} {'':10} {'':28} {total:14.4g} "
          f"{total / 2 / args.gpu_passes_per_second / 3600:10.1f}")
    print(f"\n(image-passes count forward and backward separately; GPU-hours take image-passes / 2 at "
          f"{args.gpu_passes_per_second:g} forward + backward passes/s, a forward-only pass costing as much as a "
          "whole one: an upper side)")
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    sys.exit(main())
