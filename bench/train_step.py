"""Per-batch time of NT, PGD-AT-K, TRADES-K and THRM-K on the same model and batch, side by side.

Ratios are printed to NT and to the cost model "K attack passes + one training pass", where an attack
pass is one forward + input-gradient pass in eval mode and the training pass is one NT batch. TRADES
and THRM train on x and x' together (2B examples per training pass), so their floor is K attack passes
+ 2 training passes; a ratio near 1 against the right floor means the loop adds no overhead of its own.
"passes" is the image-passes (forward + backward) one batch spends, as ``hyporay.passes`` counts them.
Usage: python bench/train_step.py [--steps 10] [--batch 128] [--repeats 15] [--models mlp,cnn]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hyporay import passes
from hyporay.attacks import AttackSpec
from hyporay.data import load_dataset
from hyporay.models import build_model
from hyporay.trainers import LOSSES, LossContext, OptimConfig, Trainer


def attack_pass(model, x, y):
    xi = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--models", default="mlp,cnn")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("digits", seed=0)
    x, y = ds.x_train[: args.batch], ds.y_train[: args.batch]
    k = args.steps
    print(f"per-batch time, batch {len(x)}, K={k}, 1 thread, median of {args.repeats} (interleaved)")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, in_shape=ds.in_shape, num_classes=10, mean=ds.mean, std=ds.std)
        spec = AttackSpec(eps=0.1, steps=k)
        trainers = {loss: Trainer(model, loss=loss, attack=spec, lam=1.0, optim=OptimConfig(lr=1e-4))
                    for loss in ("natural", "pgd_at", "trades", "thrm")}

        def step(loss):
            t = trainers[loss]
            t.model.train()
            out, _ = LOSSES[loss](t.model, x, y, LossContext(attack=spec, lam=1.0))
            t.optimizer.zero_grad(set_to_none=True)
            out.backward()
            t.optimizer.step()

        def one_attack_pass():
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            attack_pass(model, x, y)
            for p in model.parameters():
                p.requires_grad_(True)

        cases = {"attack pass": one_attack_pass, **{loss: (lambda loss=loss: step(loss)) for loss in trainers}}
        times = {c: [] for c in cases}
        for fn in cases.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for c, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[c].append(time.perf_counter() - t0)
        med = {c: statistics.median(v) for c, v in times.items()}
        counted = {}
        for c, fn in cases.items():  # the image-passes of one call, beside its time
            with passes.counting() as spent:
                fn()
            counted[c] = spent.total
        nt, ap_ = med["natural"], med["attack pass"]
        print(f"\n{name}: attack pass {ap_ * 1e3:.2f} ms, NT batch {nt * 1e3:.2f} ms")
        print(f"  {'loss':<8} {'ms/batch':>9} {'passes':>7} {'x NT':>6} {'floor ms':>9} {'x floor':>8}   floor")
        for loss, train_passes in (("natural", 1), ("pgd_at", 1), ("trades", 2), ("thrm", 2)):
            kk = 0 if loss == "natural" else k
            floor = kk * ap_ + train_passes * nt
            print(f"  {loss:<8} {med[loss] * 1e3:9.2f} {counted[loss]:7d} {med[loss] / nt:6.2f} {floor * 1e3:9.2f} "
                  f"{med[loss] / floor:8.2f}   {kk} attack + {train_passes} training pass(es)")


if __name__ == "__main__":
    main()
