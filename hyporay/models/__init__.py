"""Model zoo (pure PyTorch). Every model maps N x C x H x W inputs in [0, 1] to N x K logits and
normalises inside (``model.normalize``), so perturbation budgets are in pixel units.

>>> from hyporay.models import build_model
>>> model = build_model("cnn", in_shape=(1, 8, 8), num_classes=10, mean=(0.3,), std=(0.4,))
"""

from . import linf_dist, resnet, small, vgg, wideresnet  # noqa: F401  (register the architectures)
from .registry import MODELS, Normalize, build_model, list_models, model_options, register_model

__all__ = ["MODELS", "Normalize", "build_model", "list_models", "model_options", "register_model"]
