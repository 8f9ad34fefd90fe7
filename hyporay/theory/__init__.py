"""Closed-form models from the seed papers (pure numpy): 001's Gaussian mixture (:mod:`hyporay.theory.gmm`)."""
from hyporay.theory.gmm import (MODELS, accuracy, bayes_weights, figure2_curves, margin, mean_vector, model_accuracies,
                                robust_accuracy, robust_weights)

__all__ = ["MODELS", "accuracy", "bayes_weights", "figure2_curves", "margin", "mean_vector", "model_accuracies",
           "robust_accuracy", "robust_weights"]
