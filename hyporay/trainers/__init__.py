"""One training loop; NT, PGD-AT, TRADES and THRM differ only in the per-batch loss (pure PyTorch)."""
from hyporay.trainers.losses import LOSSES, LossContext, kl_batchmean
from hyporay.trainers.loop import OptimConfig, Trainer

__all__ = ["LOSSES", "LossContext", "OptimConfig", "Trainer", "kl_batchmean"]
