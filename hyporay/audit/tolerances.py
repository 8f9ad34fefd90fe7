"""Tolerances and default grids of ``hyporay.audit``, torch-free so the command line can show them in --help."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

DEFAULT_EPS_MULTIPLES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
DEFAULT_STEPS_GRID = (1, 10, 100, 1000)
DEFAULT_RESTARTS_GRID = (1, 5, 10)
DEFAULT_SUBSET = 1000  # audited test examples (a fixed seeded subset); None/0 = the whole test split


def _tol(default: float, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Tolerances:
    """How far a figure may stray before its check flags.

    Accuracy tolerances are absolute shares of the audited examples (0.01 = one example in a hundred);
    ``batch_logit`` is in logit units; ``identity`` is absolute on risks. Defaults suit a few hundred to a few
    thousand examples; with fewer examples one example weighs more than 0.01, so loosen them or audit more.
    """

    batch_logit: float = _tol(1e-3, "max abs logit difference allowed between batch compositions (float "
                                    "round-off of batched matmuls/convolutions is ~1e-6)")
    curve: float = _tol(0.01, "largest rise of adversarial accuracy (fall of hypocritical accuracy) between "
                              "neighbouring eps of the curve")
    chance: float = _tol(0.0, "adversarial accuracy at the largest eps may exceed chance 1/K by this much")
    hyp_top: float = _tol(0.01, "hypocritical accuracy at the largest eps may fall short of 1 by this much")
    convergence: float = _tol(0.01, "largest change between the last two steps (restarts) settings, and largest "
                                    "gain of the model from more steps (restarts)")
    fgsm: float = _tol(0.01, "PGD accuracy may be worse than FGSM's by at most this much (either direction)")
    transfer: float = _tol(0.01, "a transfer attack from the surrogate may beat the white-box attack by at most "
                                 "this much (either direction)")
    gradient: float = _tol(0.01, "share of inputs with a zero, NaN or Inf CE input gradient allowed")
    identity: float = _tol(1e-9, "absolute slack of the Theorem 4.4/4.5 identities (exact up to float64 "
                                 "round-off)")
    apgd: float = _tol(0.01, "the other method (APGD vs the audited PGD, or PGD vs the audited APGD) may find "
                             "more adversarial examples / conceal more mistakes by at most this much")
    certified: float = _tol(0.0, "share of audited points allowed to contradict their certificate (certified "
                                 "unconcealable yet concealed, certified robust yet broken): 0, a soundness check")
    smuggling: float = _tol(0.01, "one-sided significance level of the smuggling check (needs --fresh): flag a "
                                  "declared-minus-fresh accuracy gap with p-value below this; in (0, 1)")

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                flag = f"--tol-{f.name.replace('_', '-')}"
                raise ValueError(f"tolerances.{f.name} ({flag}): must be a finite number >= 0, got {v!r}")
        if not 0 < self.smuggling < 1:
            raise ValueError(f"tolerances.smuggling (--tol-smuggling): must lie strictly between 0 and 1, "
                             f"got {self.smuggling!r}")
