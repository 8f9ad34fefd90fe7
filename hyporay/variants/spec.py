"""Which training set a trial trains on (000 §3.2, 001's P1-P5): ``VariantSpec`` and its validation."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from hyporay.attacks import THREAT_MODELS
from hyporay.models import MODELS

VARIANTS = ("quality", "naive", "noise", "mislabeling", "poisoning")
POISON_METHODS = ("p1", "p2", "p3", "p4", "p5")

#: Bump when the content of a cached set for the same key would change (algorithm or file layout).
FORMAT_VERSION = 1

GENERATED = ("noise", "mislabeling", "poisoning")
# Fields of VariantSpec that do NOT influence a given generated set (left out of its cache key, so a
# change in, say, eps does not recompute the Noise set). Every other field is part of the key, so a
# field added later is keyed by default.
_SOURCE_FIELDS = ("source_model", "source_model_kwargs", "source_epochs", "source_lr", "source_batch_size")
IRRELEVANT = {
    "noise": ("method", "eps", "norm", "steps", "step_size", *_SOURCE_FIELDS),
    "mislabeling": ("method", "eps", "norm", "steps", "step_size", *_SOURCE_FIELDS),
    "p5": ("steps", "step_size", *_SOURCE_FIELDS),
}


def _is_number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int)


@dataclass(frozen=True)
class VariantSpec:
    """Which training set to train on, and how a poisoned one is made.

    Attributes:
        name: one of :data:`VARIANTS`.
        method: delusive attack for ``name="poisoning"``, one of :data:`POISON_METHODS` (P1 is the
            paper's Poisoning set). Ignored by the other variants.
        eps: poisoning budget in pixel units of [0, 1] images (>= 0); 8/255 for l_inf in the paper.
        norm: threat model of the budget, a key of ``THREAT_MODELS`` ("linf" or "l2").
        steps: PGD iterations of P1-P4 (>= 1; 100 in the authors' code).
        step_size: PGD step in pixel units; None means eps / 5 (the authors' value).
        source_model: registered architecture of the naturally trained source model f_D (P1-P4).
        source_model_kwargs: options of that architecture (JSON-serialisable; part of the cache key).
        source_epochs: epochs of natural training of the source model (>= 0).
        source_lr: SGD learning rate of the source model (momentum 0.9, weight decay 5e-4, constant).
        source_batch_size: batch size of source training, and of the poisoning attacks' batches.
    """

    name: str = "quality"
    method: str = "p1"
    eps: float = 8 / 255
    norm: str = "linf"
    steps: int = 100
    step_size: float | None = None
    source_model: str = "mlp"
    source_model_kwargs: dict = field(default_factory=dict)
    source_epochs: int = 10
    source_lr: float = 0.05
    source_batch_size: int = 128

    def __post_init__(self) -> None:
        def bad(fld: str, what: str) -> ValueError:
            return ValueError(" ".join(f"variant.{fld}: {what}".split()))

        if self.name not in VARIANTS:
            raise bad("name", f"unknown {self.name!r}; known: {', '.join(VARIANTS)}")
        if self.method not in POISON_METHODS:
            raise bad("method", f"unknown {self.method!r}; known: {', '.join(POISON_METHODS)}")
        if self.norm not in THREAT_MODELS:
            raise bad("norm", f"unknown {self.norm!r}; known: {', '.join(sorted(THREAT_MODELS))}")
        if not _is_number(self.eps) or self.eps < 0:
            raise bad("eps", f"must be a finite number >= 0 (pixel units of [0,1] images), got {self.eps!r}")
        if not _is_int(self.steps) or self.steps < 1:
            raise bad("steps", f"must be an integer >= 1, got {self.steps!r}")
        if self.step_size is not None and (not _is_number(self.step_size) or self.step_size <= 0):
            raise bad("step_size", f"must be a finite number > 0 or None (= eps/5), got {self.step_size!r}")
        if self.source_model not in MODELS:
            raise bad("source_model", f"unknown {self.source_model!r}; known: {', '.join(sorted(MODELS))}")
        if not isinstance(self.source_model_kwargs, dict) or not all(isinstance(k, str) for k in self.source_model_kwargs):
            raise bad("source_model_kwargs", f"must be a dict with string keys, got {self.source_model_kwargs!r}")
        try:
            json.dumps(self.source_model_kwargs, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise bad("source_model_kwargs", f"must be JSON-serialisable (it is part of the cache key): {err}") from None
        if not _is_int(self.source_epochs) or self.source_epochs < 0:
            raise bad("source_epochs", f"must be an integer >= 0, got {self.source_epochs!r}")
        if not _is_number(self.source_lr) or self.source_lr <= 0:
            raise bad("source_lr", f"must be a finite number > 0, got {self.source_lr!r}")
        if not _is_int(self.source_batch_size) or self.source_batch_size < 1:
            raise bad("source_batch_size", f"must be an integer >= 1, got {self.source_batch_size!r}")

    @property
    def alpha(self) -> float:
        """The PGD step actually used (pixel units): ``step_size`` or eps / 5."""
        return self.eps / 5 if self.step_size is None else float(self.step_size)

    def describe(self) -> str:
        """One line naming the set, e.g. ``poisoning p1 linf eps=0.03137 (8/255) steps=100 step=0.006275``."""
        if self.name != "poisoning":
            return self.name
        head = f"poisoning {self.method} {self.norm} eps={self.eps:.4g} ({self.eps * 255:.3g}/255)"
        if self.method == "p5":
            return head
        return f"{head} steps={self.steps} step={self.alpha:.4g} source={self.source_model}x{self.source_epochs}ep"


