"""Pure-PyTorch attacks: one PGD engine over threat models (l_inf, l_2) and objectives, plus APGD.

>>> from hyporay.attacks import pgd
>>> x_hyp = pgd(model, x, y, eps=8/255, step_size=2/255, steps=20, objective="hypocritical")
>>> x_hyp = apgd(model, x, y, eps=8/255, steps=20, objective="hypocritical", score="margin")
"""
from hyporay.attacks.context import frozen_eval
from hyporay.attacks.objectives import OBJECTIVES, SCORES, Objective, make_objective
from hyporay.attacks.pgd import METHODS, RANDOM_STARTS, AttackSpec, check_attack_args, fgsm, pgd
from hyporay.attacks.apgd import apgd  # noqa: E402  (after pgd: it reuses the engine's helpers)
from hyporay.attacks.threat import THREAT_MODELS, ThreatModel

__all__ = ["pgd", "apgd", "fgsm", "AttackSpec", "frozen_eval", "THREAT_MODELS", "ThreatModel", "OBJECTIVES",
           "Objective", "RANDOM_STARTS", "METHODS", "SCORES", "make_objective", "check_attack_args"]
