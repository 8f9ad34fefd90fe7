"""Evaluation that stops once an example is decided (``eval.attack.early_stop`` set; ``hyporay.metrics.evaluate``).

Each risk is the mean of a per-example indicator, lower-bounded by its witnesses (``hyporay.metrics``). Under this
rule **every point any attack visits** (its start, every iterate, its last iterate) is a witness for **every**
indicator, and an example is *decided* once every indicator that counts for it is 1:

| indicator | counts for | decided at the start by |
|---|---|---|
| adversarial  f(x') != y | every example | the clean point on D- |
| hypocritical f(x') == y | every example | the clean point on D+ |
| stability    f(x') != f(x) | every example | (never: x' = x is no witness) |
| targeted to label t | D- with y != t and f(x) != t (Fig. 3's subset) | (never) |

so on D+ a point with f(x') != y decides it (adversarial and stability at once, as f(x) = y), and on D- a point
with f(x') == y decides it (hypocritical and stability at once, as f(x) != y).

The attacks are today's: the adversarial and stability attacks on every example, the hypocritical (and targeted)
attacks on D-, each with the eval attack's steps and restarts. Each runs only on the examples still undecided
when it starts, an example leaves it (the batch shrinks) ``early_stop`` steps after the point that decided it,
and restarts run only on the undecided ones. Order: hypocritical on D- first (it decides most of D- at its
first steps), then adversarial, stability, targeted. Each attack draws its random starts from the generator
state it would have had in today's order and for today's batch, so up to its stop an example's trajectory in
every attack is today's. Hence, per example and for every indicator:

    today's value (final iterates only)  <=  this rule's value  ==  max over every point today's attacks visit,

with equality to today's wherever no intermediate point of today's attacks was a witness its final iterates
missed (in particular where each attack's final iterate was its first success). Stability keeps every witness it
had: an example leaves the stability attack (or any other) only once its stability indicator is 1.

"Today's trajectory" assumes an example's logits do not depend on the batch it is in (eval mode, no batch
statistics). That holds bit for bit on the CPU, where the per-example tests run; on a GPU the shrinking batch can
pick other kernels (TF32, batch-size-dependent cuBLAS algorithms), so a near-tie may resolve differently there and
an example's indicator may differ from today's by float noise, in either direction.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from hyporay import passes
from hyporay.attacks import AttackSpec
from hyporay.attacks.common import skip_starts


def _fork(generator: torch.Generator) -> torch.Generator:
    g = torch.Generator(device=generator.device)
    g.set_state(generator.get_state())
    return g


def until_decided(model: nn.Module, x: Tensor, y: Tensor, spec: AttackSpec, labels: list[int],
                  generator: torch.Generator | None) -> dict[str, Tensor]:
    """Attack one batch under this module's rule (``spec.early_stop`` is τ); the model is in eval mode, frozen.

    Returns, per example (device tensors, shape N): ``clean_logits`` (N x K, float32), ``clean_pred``,
    ``adv``, ``hyp``, ``sta`` (bool: some witness) and ``targeted`` {label: bool}. With ``generator=None`` the
    attacks draw from a generator seeded once from the global RNG.
    """
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
    with torch.no_grad():
        clean_logits = model(x).float()
    passes.add(forward=len(x))
    clean_pred = clean_logits.argmax(1)
    correct = clean_pred == y
    wrong_idx = (~correct).nonzero().flatten()
    adv, hyp, sta = ~correct, correct.clone(), torch.zeros_like(correct)
    tgt = {t: clean_pred == t for t in labels}
    counts = {t: ~correct & (y != t) & (clean_pred != t) for t in labels}

    def undecided(rows: Tensor) -> Tensor:
        u = ~(adv[rows] & hyp[rows] & sta[rows])
        for t in labels:
            u |= counts[t][rows] & ~tgt[t][rows]
        return u

    def witness(rows: Tensor | None):
        """``decided`` for an attack on the batch rows ``rows`` of x (None: all of x): records every visited
        point's prediction as a witness and says which examples are now decided."""
        def decided(idx: Tensor, logits: Tensor) -> Tensor:
            full = idx if rows is None else rows[idx]
            pred = logits.argmax(1)
            adv[full] |= pred != y[full]
            hyp[full] |= pred == y[full]
            sta[full] |= pred != clean_pred[full]
            for t in labels:
                tgt[t][full] |= pred == t
            return ~undecided(full)
        return decided

    # today's order and batches, for the generator states: adversarial (x), stability (x), hypocritical (D-),
    # targeted per label (D-); each attack gets the state it would have had there
    plan = [("adversarial", None, None), ("stability", None, None)]
    if wrong_idx.numel():
        plan += [("hypocritical", wrong_idx, None)] + [("targeted", wrong_idx, t) for t in labels]
    states = []
    for objective, rows, _ in plan:
        states.append(_fork(generator))
        skip_starts(x if rows is None else x[rows], eps=spec.eps, norm=spec.norm, objective=objective,
                    random_start=spec.random_start, restarts=spec.restarts, generator=generator)
    order = sorted(range(len(plan)), key=lambda i: plan[i][0] != "hypocritical")  # hypocritical first
    for i in order:
        objective, rows, label = plan[i]
        xs, ys = (x, y) if rows is None else (x[rows], y[rows])
        active = undecided(torch.arange(len(x), device=x.device) if rows is None else rows)
        if not bool(active.any()):
            continue
        target = None if label is None else torch.full_like(ys, label)
        spec.run(model, xs, ys, objective, target=target, generator=states[i], active=active,
                 decided=witness(rows))
    return {"clean_logits": clean_logits, "clean_pred": clean_pred, "adv": adv, "hyp": hyp, "sta": sta,
            "targeted": tgt}
