"""PGD-K vs K bare forward + input-gradient passes on the same model and batch, side by side.

Goal (issue 2): ratio <= 1.10, i.e. the engine's projection, clamping, random start and bookkeeping
cost at most 10% on top of the K gradient computations any PGD must do. Prints one line per case.
Usage: python bench/attack_throughput.py [--steps 10] [--batch 256] [--repeats 21] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hyporay import passes
from hyporay.attacks import pgd
from hyporay.data import load_dataset
from hyporay.models import build_model


def bare_passes(model, x, y, k):
    """The floor: K forward + input-gradient passes, nothing else."""
    for _ in range(k):
        xi = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y, reduction="sum")
        torch.autograd.grad(loss, xi)


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("digits", seed=0)
    x, y = ds.x_test[: args.batch], ds.y_test[: args.batch]
    print(f"PGD-{args.steps} vs {args.steps} bare forward+input-grad passes, batch {len(x)}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} (min..max)")
    for name in ("mlp", "cnn"):
        model = build_model(name, in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean,
                            std=ds.std).eval()
        # bare passes on a frozen model, as the engine runs it (no weight-gradient graph)
        for p in model.parameters():
            p.requires_grad_(False)
        for norm, eps in (("linf", 0.1), ("l2", 1.0)):
            attack = lambda: pgd(model, x, y, eps=eps, step_size=eps / 4, steps=args.steps,  # noqa: E731
                                 norm=norm)
            floor = lambda: bare_passes(model, x, y, args.steps)  # noqa: E731
            attack(), floor()  # warm-up
            ta, tb = [], []
            for _ in range(args.repeats):  # interleave so drift hits both alike
                ta += timed(attack, 1)
                tb += timed(floor, 1)
            ratio = statistics.median(ta) / statistics.median(tb)
            with passes.counting() as spent:
                attack()
            print(f"{name:4s} {norm:4s}  pgd {statistics.median(ta) * 1e3:7.2f} ms "
                  f"({min(ta) * 1e3:.2f}..{max(ta) * 1e3:.2f})  bare {statistics.median(tb) * 1e3:7.2f} ms "
                  f"({min(tb) * 1e3:.2f}..{max(tb) * 1e3:.2f})  ratio {ratio:.3f}  passes {spent.total}  "
                  f"{'ok' if ratio <= 1.10 else 'ABOVE GOAL 1.10'}")


if __name__ == "__main__":
    main()
