"""The smuggling check: does a model score better on its declared test split than on a fresh split from the same
distribution, by more than the noise of drawing the splits? (004's smuggled training sets lift exactly that gap.)

Statistic. Each example of the two splits gets its correctness c_i (0/1, or the mean over several models, e.g. the
training seeds of one recipe). Under the null hypothesis (an honest model: declared and fresh examples are i.i.d.
draws of one distribution and the model depends on neither), the c_i of both splits are i.i.d., so

    z = (mean_declared(c) - mean_fresh(c)) / (s · sqrt(1/n_d + 1/n_f)),   s² = variance of all c_i pooled,

is approximately standard normal (the pooled two-proportion z test when c is 0/1). The check flags when the
one-sided p-value 1 - Φ(z) is below ``alpha``. It also reports the *detectable gap*: the smallest true gap found
with probability ``power`` at this ``alpha``, (z_{1-α} + z_power) · s · sqrt(1/n_d + 1/n_f).

Limits: it needs a fresh split that the model's author never saw (else there is nothing to compare with); it sees
only gaps above the detectable gap (about 4-5 accuracy points with 270 + 270 digits test examples near 97%
accuracy, about 2.7 points with 5,000 + 5,000 CIFAR-10 test examples near 77%); a model that is better on the
declared split for an innocent reason (the fresh split comes from a shifted distribution) is flagged too.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor, nn

from hyporay.attacks import frozen_eval
from hyporay.audit.report import CHECK_SMUGGLING, FLAG, PASS, SKIPPED, CheckResult
from hyporay.data import to_float

_N = NormalDist()


def gap_statistic(correct_declared: Tensor, correct_fresh: Tensor, *, alpha: float = 0.01,
                  power: float = 0.8) -> dict:
    """The check's numbers from per-example correctness (shape n, or S x n for S models: averaged over models).

    Returns declared/fresh accuracy, gap, standard error under the null, z, one-sided p, detectable gap and
    the split sizes. A zero pooled variance (every example right, or every one wrong) gives z = 0, p = 1.
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha, power: must lie strictly between 0 and 1, got {alpha!r}, {power!r}")
    cd, cf = (c.double().reshape(-1, c.shape[-1]).mean(0) for c in (correct_declared, correct_fresh))
    nd, nf = len(cd), len(cf)
    if nd < 2 or nf < 2:
        raise ValueError(f"declared, fresh: need at least 2 examples each, got {nd} and {nf}")
    pooled = torch.cat([cd, cf])
    s = float(pooled.std(unbiased=True))
    se = s * math.sqrt(1 / nd + 1 / nf)
    acc_d, acc_f = float(cd.mean()), float(cf.mean())
    gap = acc_d - acc_f
    z = gap / se if se > 0 else 0.0
    p = 1 - _N.cdf(z) if se > 0 else 1.0  # identical constant correctness: no evidence either way
    return {"declared_acc": acc_d, "fresh_acc": acc_f, "gap": gap, "se": se, "z": z, "p": p,
            "alpha": alpha, "power": power, "detectable_gap": (_N.inv_cdf(1 - alpha) + _N.inv_cdf(power)) * se,
            "n_declared": nd, "n_fresh": nf, "n_models": int(correct_declared.reshape(-1, nd).shape[0])}


@torch.no_grad()
def correctness(models: nn.Module | list[nn.Module], x: Tensor, y: Tensor, batch_size: int = 512) -> Tensor:
    """S x n correctness (0/1) of each model on (x, y); x uint8 or float in [0, 1], on the models' device."""
    models = models if isinstance(models, (list, tuple)) else [models]
    rows = []
    for m in models:
        with frozen_eval(m):  # each module's own mode back afterwards, also after an error
            pred = torch.cat([m(to_float(x[i:i + batch_size])).argmax(1) for i in range(0, len(x), batch_size)])
        rows.append((pred == y).to(torch.float64))
    return torch.stack(rows)


def check_smuggling(models: nn.Module | list[nn.Module], declared: tuple[Tensor, Tensor] | None,
                    fresh: tuple[Tensor, Tensor] | None, *, alpha: float = 0.01,
                    skip_reason: str = "no fresh split given (--fresh FILE)", batch_size: int = 512) -> CheckResult:
    """The audit row: flag when the declared-minus-fresh accuracy gap is significant at ``alpha`` (one-sided)."""
    if fresh is None or declared is None:
        return CheckResult(CHECK_SMUGGLING, "-", SKIPPED, skip_reason)
    st = gap_statistic(correctness(models, *declared, batch_size=batch_size),
                       correctness(models, *fresh, batch_size=batch_size), alpha=alpha)
    figure = (f"declared {st['declared_acc']:.4f} (n={st['n_declared']}) - fresh {st['fresh_acc']:.4f} "
              f"(n={st['n_fresh']}) = {st['gap']:+.4f}, z={st['z']:.2f}, p={st['p']:.2g}; "
              f"detectable gap {st['detectable_gap']:.4f}")
    if st["p"] < alpha:
        return CheckResult(CHECK_SMUGGLING, figure, FLAG,
                           f"the declared split scores {st['gap']:.4f} above the fresh one, beyond the noise of "
                           f"drawing the splits (p={st['p']:.2g} < {alpha:g}): trained toward the declared test "
                           "split (smuggled training data, tuning on the test set) or a shifted fresh split", st)
    return CheckResult(CHECK_SMUGGLING, figure, PASS, "", st)


def load_fresh_split(path: str, in_shape: tuple[int, int, int], num_classes: int) -> tuple[Tensor, Tensor]:
    """A fresh split from a ``.pt`` file holding {"x": N x C x H x W (uint8, or float in [0,1]), "y": N int labels}
    or a ``.npz`` with arrays x, y; ``ValueError`` (one line naming --fresh) when it does not fit the model."""
    import numpy as np

    try:
        if str(path).endswith(".npz"):
            with np.load(path) as z:
                blob = {"x": torch.from_numpy(z["x"]), "y": torch.from_numpy(z["y"])}
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"--fresh: cannot read {path} ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("x"), Tensor) or not isinstance(blob.get("y"), Tensor):
        raise ValueError(f"--fresh: {path} must hold tensors 'x' (N x C x H x W) and 'y' (N labels)")
    x, y = blob["x"], blob["y"].long()
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(in_shape) or y.shape != (len(x),):
        raise ValueError(f"--fresh: x must be N x {' x '.join(map(str, in_shape))} with N labels y, got x "
                         f"{tuple(x.shape)}, y {tuple(y.shape)}")
    if x.dtype != torch.uint8:
        x = x.float()
        if len(x) and (float(x.min()) < 0 or float(x.max()) > 1):
            raise ValueError("--fresh: float images must lie in [0,1]")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"--fresh: labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    return x, y
