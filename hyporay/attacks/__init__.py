"""Pure-PyTorch attacks: one PGD engine over threat models (l_inf, l_2) and objectives.

>>> from hyporay.attacks import pgd
>>> x_hyp = pgd(model, x, y, eps=8/255, step_size=2/255, steps=20, objective="hypocritical")
"""
from hyporay.attacks.context import frozen_eval
from hyporay.attacks.objectives import OBJECTIVES, Objective
from hyporay.attacks.pgd import RANDOM_STARTS, AttackSpec, check_attack_args, fgsm, pgd
from hyporay.attacks.threat import THREAT_MODELS, ThreatModel

__all__ = ["pgd", "fgsm", "AttackSpec", "frozen_eval", "THREAT_MODELS", "ThreatModel", "OBJECTIVES",
           "Objective", "RANDOM_STARTS", "check_attack_args"]
