"""Attack objectives. Each is a per-example score to ASCEND plus a per-example success test.

The PGD engine is direction-free: it always ascends ``score``. Descending a loss (hypocritical,
targeted) is expressed by negating it here, so adding an objective is one small class.

Scores (``SCORES``): "ce" is each objective's own loss (cross-entropy; KL(p(x) || p(x')) for stability);
"margin" is the scale-invariant DLR margin of Croce & Hein (2020), defined for the adversarial,
hypocritical and targeted objectives (``make_objective`` builds an objective with either score).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

SCORES = ("ce", "margin")
_DLR_EPS = 1e-12


def _margin(logits: Tensor, label: Tensor) -> Tensor:
    """z_label - max_{i != label} z_i per example (float32), shape N."""
    z = logits.float()
    other = z.scatter(1, label[:, None], float("-inf")).amax(1)
    return z.gather(1, label[:, None])[:, 0] - other


def _dlr_scale(logits: Tensor, targeted: bool) -> Tensor:
    """DLR denominator: z_pi1 - z_pi3 (untargeted) or z_pi1 - (z_pi3 + z_pi4)/2 (targeted), + 1e-12."""
    k = 4 if targeted else 3
    if logits.shape[1] < k:
        raise ValueError(f"score: 'margin' needs at least {k} classes for this objective, got {logits.shape[1]}")
    top = logits.float().topk(k, dim=1).values
    low = (top[:, 2] + top[:, 3]) / 2 if targeted else top[:, 2]
    return top[:, 0] - low + _DLR_EPS


class Objective:
    """Per-example score to maximise and the success criterion of an attack."""

    name: str = ""
    needs_target: bool = False

    def prepare(self, clean_logits: Tensor) -> None:
        """Receive the clean logits (eval mode, no grad) before the attack starts."""

    def subset(self, idx: Tensor) -> Objective:
        """The objective for the examples ``idx`` of the batch (what ``prepare`` saw); self when stateless."""
        return self

    def score(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        raise NotImplementedError

    def success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        raise NotImplementedError


class Adversarial(Objective):
    """Ascend CE(f(x'), y): succeed when f(x') != y."""

    name = "adversarial"

    def score(self, logits, y, target):
        return F.cross_entropy(logits, y, reduction="none")

    def success(self, logits, y, target):
        return logits.argmax(1) != y

    def margin(self, logits, y, target):
        """DLR: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)."""
        return -_margin(logits, y) / _dlr_scale(logits, False)


class Hypocritical(Objective):
    """Descend CE(f(x'), y) toward the TRUE label: succeed when f(x') == y (a concealed mistake)."""

    name = "hypocritical"

    def score(self, logits, y, target):
        return -F.cross_entropy(logits, y, reduction="none")

    def success(self, logits, y, target):
        return logits.argmax(1) == y

    def margin(self, logits, y, target):
        """The targeted DLR toward the TRUE label: (z_y - max_{i != y} z_i) / (z_pi1 - (z_pi3 + z_pi4)/2).

        The untargeted denominator z_pi1 - z_pi3 would make the score the constant -1 (zero gradient)
        whenever y ranks third, a common case on misclassified points; the hypocritical attack is a
        targeted attack (its target is y), so it takes the targeted DLR's denominator.
        """
        return _margin(logits, y) / _dlr_scale(logits, True)


class Targeted(Objective):
    """Descend CE(f(x'), target): succeed when f(x') == target."""

    name = "targeted"
    needs_target = True

    def score(self, logits, y, target):
        return -F.cross_entropy(logits, target, reduction="none")

    def success(self, logits, y, target):
        return logits.argmax(1) == target

    def margin(self, logits, y, target):
        """Targeted DLR toward ``target``: (z_t - max_{i != t} z_i) / (z_pi1 - (z_pi3 + z_pi4)/2)."""
        return _margin(logits, target) / _dlr_scale(logits, True)


class Stability(Objective):
    """TRADES' inner problem: ascend KL(p(x) || p(x')); succeed when f(x') != f(x).

    p(x) is taken once from the clean input in eval mode and held fixed during the attack.
    """

    name = "stability"

    def __init__(self) -> None:
        self._log_p_clean: Tensor | None = None

    def prepare(self, clean_logits):
        self._log_p_clean = F.log_softmax(clean_logits.float(), dim=1)

    def subset(self, idx):
        part = Stability()
        part._log_p_clean = self._log_p_clean[idx]
        return part

    def score(self, logits, y, target):
        log_q = F.log_softmax(logits.float(), dim=1)
        log_p = self._log_p_clean
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)

    def success(self, logits, y, target):
        return logits.argmax(1) != self._log_p_clean.argmax(1)


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (Adversarial, Hypocritical, Stability, Targeted)
}


def make_objective(name: str, score: str = "ce") -> Objective:
    """A fresh objective ``name`` (a key of ``OBJECTIVES``) ascending ``score`` ("ce" or "margin").

    Raises ``ValueError`` (one line naming the field) for an unknown name or score, or "margin" for an
    objective without one (stability ascends KL).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"objective: unknown {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    if score not in SCORES:
        raise ValueError(f"score: unknown {score!r}; allowed: {', '.join(SCORES)}")
    obj = OBJECTIVES[name]()
    if score == "margin":
        margin = getattr(obj, "margin", None)
        if margin is None:
            raise ValueError(f"score: 'margin' is not defined for objective {name!r} (it ascends "
                             "KL(p(x) || p(x'))); allowed there: ce")
        obj.score = margin  # type: ignore[method-assign]
    return obj
