"""Attack objectives. Each is a per-example score to ASCEND plus a per-example success test.

The PGD engine is direction-free: it always ascends ``score``. Descending a loss (hypocritical,
targeted) is expressed by negating it here, so adding an objective is one small class.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


class Objective:
    """Per-example score to maximise and the success criterion of an attack."""

    name: str = ""
    needs_target: bool = False

    def prepare(self, clean_logits: Tensor) -> None:
        """Receive the clean logits (eval mode, no grad) before the attack starts."""

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


class Hypocritical(Objective):
    """Descend CE(f(x'), y) toward the TRUE label: succeed when f(x') == y (a concealed mistake)."""

    name = "hypocritical"

    def score(self, logits, y, target):
        return -F.cross_entropy(logits, y, reduction="none")

    def success(self, logits, y, target):
        return logits.argmax(1) == y


class Targeted(Objective):
    """Descend CE(f(x'), target): succeed when f(x') == target."""

    name = "targeted"
    needs_target = True

    def score(self, logits, y, target):
        return -F.cross_entropy(logits, target, reduction="none")

    def success(self, logits, y, target):
        return logits.argmax(1) == target


class Stability(Objective):
    """TRADES' inner problem: ascend KL(p(x) || p(x')); succeed when f(x') != f(x).

    p(x) is taken once from the clean input in eval mode and held fixed during the attack.
    """

    name = "stability"

    def __init__(self) -> None:
        self._log_p_clean: Tensor | None = None

    def prepare(self, clean_logits):
        self._log_p_clean = F.log_softmax(clean_logits.float(), dim=1)

    def score(self, logits, y, target):
        log_q = F.log_softmax(logits.float(), dim=1)
        log_p = self._log_p_clean
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)

    def success(self, logits, y, target):
        return logits.argmax(1) != self._log_p_clean.argmax(1)


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (Adversarial, Hypocritical, Stability, Targeted)
}
