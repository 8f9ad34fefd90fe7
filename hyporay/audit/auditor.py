"""The audit's measurements: the audited examples, their clean predictions, and the per-example outcome of every
attack setting (crafted on the audited model or a surrogate, one seeded generator per setting, cached).

Unlike ``hyporay.metrics.evaluate_batch`` an outcome may be crafted on another model (the transfer check) or in a
single step (FGSM), and skips the stability attack; it follows the same witness rule (the clean point counts)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from hyporay import metrics as M
from hyporay.attacks import AttackSpec, fgsm, frozen_eval
from hyporay.audit.report import ADV, HYP

# --- measurements --------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """Per-example outcomes of one white-box setting (bool tensors on CPU)."""

    adv_success: Tensor   # a witness with f(x') != y (the clean point included)
    hyp_success: Tensor   # a witness with f(x') == y (the clean point included)

    @property
    def acc_adv(self) -> float:
        return 1.0 - M.share(self.adv_success)

    @property
    def acc_hyp(self) -> float:
        return M.share(self.hyp_success)

    def rates(self, correct: Tensor) -> dict:
        """R_adv(D+) and R_hyp(D-) (exact subsets; NaN when empty) beside the accuracies."""
        correct = correct.cpu()
        return {"acc_adv": self.acc_adv, "acc_hyp": self.acc_hyp, "adversarial_risk_correct":
                M.share(self.adv_success, correct), "hypocritical_risk": M.share(self.hyp_success, ~correct)}


class Auditor:
    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int, seed: int):
        self.model, self.x, self.y, self.bs, self.seed = model, x, y, batch_size, seed
        self.cache: dict[tuple, Outcome] = {}
        self.clean_logits = self.logits(model, x)
        self.clean_pred = self.clean_logits.argmax(1)
        self.correct = self.clean_pred == y.to(self.clean_pred.device)

    def chunks(self, n: int | None = None):
        n = len(self.x) if n is None else n
        for i in range(0, n, self.bs):
            yield slice(i, min(i + self.bs, n))

    @torch.no_grad()
    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        with frozen_eval(model):
            return torch.cat([model(x[s]) for s in self.chunks(len(x))]).float()

    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        return self.logits(model, x).argmax(1)

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.x.device).manual_seed(self.seed)

    def craft(self, model: nn.Module, spec: AttackSpec, objective: str, idx: Tensor | None = None,
              single_step: bool = False) -> Tensor:
        """Attack ``model`` (all examples or those in ``idx``), batch by batch, one seeded generator."""
        x, y = (self.x, self.y) if idx is None else (self.x[idx], self.y[idx])
        gen = self.generator()
        out = []
        for s in self.chunks(len(x)):
            if single_step:
                out.append(fgsm(model, x[s], y[s], eps=spec.eps, norm=spec.norm, objective=objective))
            else:
                out.append(spec.run(model, x[s], y[s], objective, generator=gen))
        return torch.cat(out) if out else x.clone()

    def outcome(self, spec: AttackSpec, *, single_step: bool = False, source: nn.Module | None = None
                ) -> Outcome:
        """Adversarial attack on every example, hypocritical attack on the misclassified ones, crafted on
        ``source`` (default: the audited model, white-box) and judged by the audited model."""
        key = (spec, single_step, id(source))
        if key in self.cache:
            return self.cache[key]
        src = self.model if source is None else source
        x_adv = self.craft(src, spec, ADV, single_step=single_step)
        adv_success = (self.predict(self.model, x_adv) != self.y) | ~self.correct
        hyp_success = self.correct.clone()
        wrong = (~self.correct).nonzero().flatten()
        if wrong.numel():
            x_hyp = self.craft(src, spec, HYP, wrong, single_step=single_step)
            hyp_success[wrong] = self.predict(self.model, x_hyp) == self.y[wrong]
        out = Outcome(adv_success.cpu(), hyp_success.cpu())
        self.cache[key] = out
        return out


def model_state(model: nn.Module) -> tuple[dict, list[bool], list[bool]]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def fmt(v: float, digits: int = 3) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def scaled(spec: AttackSpec, mult: float) -> AttackSpec:
    return replace(spec, eps=spec.eps * mult, step_size=spec.alpha * mult)


# --- the checks ----------------------------------------------------------------------------------------
