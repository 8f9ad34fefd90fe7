"""What the paper (000: Tao et al., "With False Friends Like These, Who Can Notice Mistakes?", AAAI 2022)
published: its claims and its CIFAR-10 numbers (l_inf 8/255, GPU), accuracies D / A / F in %."""
from __future__ import annotations

TRAINER_NAMES = {"natural": "NT", "pgd_at": "PGD-AT", "trades": "TRADES", "thrm": "THRM"}

PAPER_T1 = {  # variant -> model -> (D, A, F)
    "naive": {"mlp": (8.56, 0.00, 99.56), "vgg16": (9.76, 0.45, 57.25), "wrn28_10": (10.06, 0.34, 40.64)},
    "noise": {"mlp": (8.53, 0.71, 86.75), "vgg16": (9.81, 0.00, 97.98), "wrn28_10": (11.35, 0.02, 98.42)},
    "mislabeling": {"mlp": (9.92, 0.00, 100.00), "vgg16": (9.94, 0.00, 99.86), "wrn28_10": (10.21, 0.00, 100.00)},
    "poisoning": {"mlp": (57.60, 0.55, 99.50), "vgg16": (12.19, 0.00, 99.49), "wrn28_10": (10.42, 0.00, 100.00)},
    "quality": {"mlp": (58.09, 0.91, 99.31), "vgg16": (92.90, 0.00, 100.00), "wrn28_10": (95.41, 0.00, 100.00)},
}
PAPER_T3 = {  # (variant, trainer) -> (D, A, F), ResNet-18
    ("quality", "natural"): (94.38, 0.00, 100.00), ("quality", "pgd_at"): (84.08, 51.98, 96.92),
    ("quality", "trades"): (81.05, 53.32, 95.17), ("poisoning", "pgd_at"): (82.65, 51.34, 96.20),
    ("poisoning", "trades"): (80.01, 52.34, 94.64),
}
PAPER_LABEL = "paper (000): CIFAR-10, l_inf ε=8/255, 110 epochs, GPU"

CLAIMS = {
    1: "Substandard models reach far higher accuracy on hypocritical examples (F) than on clean data (D).",
    2: "Adversarial training (PGD-AT, TRADES) lowers R_hyp(D-) compared with natural training.",
    3: "As λ grows, natural risk rises and R_hyp(D-) falls, for both TRADES and THRM.",
    4: "THRM gives a better trade-off (lower R_hyp(D-) at equal natural risk) than TRADES.",
    5: "On misclassified points the hypocritical attack succeeds far more often than targeted attacks toward "
       "any fixed wrong label (Fig. 3).",
}
