"""Pure-PyTorch attacks: one PGD engine over threat models (l_inf, l_2) and objectives, plus APGD.

>>> from hyporay.attacks import pgd
>>> x_hyp = pgd(model, x, y, eps=8/255, step_size=2/255, steps=20, objective="hypocritical")
>>> x_hyp = apgd(model, x, y, eps=8/255, steps=20, objective="hypocritical", score="margin")
"""
from hyporay.attacks.common import RANDOM_STARTS, AttackResult, check_attack_args, inputs_in_range
from hyporay.attacks.context import frozen_eval
from hyporay.attacks.objectives import OBJECTIVES, SCORES, Objective, make_objective
from hyporay.attacks.spec import METHODS, AttackSpec
from hyporay.attacks.threat import THREAT_MODELS, ThreatModel
from hyporay.attacks.pgd import fgsm, pgd  # noqa: I001  (after spec: the names shadow the modules)
from hyporay.attacks.apgd import apgd

__all__ = ["pgd", "apgd", "fgsm", "AttackSpec", "AttackResult", "frozen_eval", "THREAT_MODELS", "ThreatModel",
           "OBJECTIVES", "Objective", "RANDOM_STARTS", "METHODS", "SCORES", "make_objective", "check_attack_args",
           "inputs_in_range"]
