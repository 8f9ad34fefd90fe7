"""The one training loop: SGD + MultiStepLR, optional crop/flip, AMP and channels_last, exact resume."""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hyporay.attacks import AttackSpec
from hyporay.data import iterate_batches, random_crop_flip
from hyporay.trainers.losses import LOSSES, LossContext


@dataclass
class OptimConfig:
    """The paper's optimiser (reference §4): SGD with momentum and weight decay, MultiStepLR."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adam" (betas (momentum, 0.999); the l_inf-dist net's)


def _channels_last(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


class Trainer:
    """Trains ``model`` with one of ``LOSSES`` epoch by epoch; its full state round-trips exactly.

    Randomness (shuffling, augmentation, attack starts) comes from generators owned by the trainer,
    seeded from ``seed``; ``state_dict`` holds them with model, optimiser, scheduler, AMP scaler and
    epoch, so a run stopped after epoch k and resumed ends bit-identical to an uninterrupted one.
    """

    def __init__(self, model: nn.Module, *, loss: str, attack: AttackSpec, lam: float = 0.0,
                 optim: OptimConfig | None = None, batch_size: int = 128, augment: bool = False,
                 amp: bool = False, channels_last: bool = False, concat_forward: bool = True,
                 device: str | torch.device = "cpu", seed: int = 0, epochs: int | None = None) -> None:
        if loss not in LOSSES:
            raise ValueError(f"trainer: unknown {loss!r}; known: {', '.join(sorted(LOSSES))}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_name, self.loss_fn = loss, LOSSES[loss]
        self.batch_size, self.augment = batch_size, augment
        o = optim or OptimConfig()
        if o.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer: unknown {o.optimizer!r}; known: adam, sgd")
        if o.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=(o.momentum, 0.999),
                                              weight_decay=o.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                                             weight_decay=o.weight_decay)
        self.epochs = epochs  # the planned number of epochs, for models with a schedule (set_progress)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(o.milestones),
                                                              gamma=o.gamma)
        # AMP: float16 + GradScaler on CUDA, bfloat16 (no scaler needed) on CPU.
        self.amp = amp
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp and self.device.type == "cuda")
        self.data_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.attack_gen = torch.Generator(device=self.device).manual_seed(seed + 2)
        self.ctx = LossContext(attack=attack, lam=lam, concat_forward=concat_forward,
                               generator=self.attack_gen)
        self.epoch = 0

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_epoch(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One pass over (x, y) (uint8 or float in [0,1]); returns loss, accuracy and timing.

        ``train_acc`` is the accuracy on the inputs the loss was computed on: clean inputs for NT,
        TRADES and THRM, adversarial inputs for PGD-AT.
        """
        self.model.train()
        for m in self.model.modules():  # e.g. the l_inf-dist net's p-norm annealing
            if self.epochs and hasattr(m, "set_progress"):
                m.set_progress(self.epoch, self.epochs)
        augment = functools.partial(random_crop_flip, generator=self.aug_gen) if self.augment else None
        t0, n, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        for xb, yb in iterate_batches(x, y, self.batch_size, shuffle=True, generator=self.data_gen,
                                      device=self.device, augment=augment):
            if self.channels_last:
                xb = _channels_last(xb)
            with self._autocast():
                loss, logits = self.loss_fn(self.model, xb, yb, self.ctx)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n += len(yb)
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((logits.detach().argmax(1) == yb).sum())
        self.scheduler.step()
        self.epoch += 1
        return {"train_loss": loss_sum / max(n, 1), "train_acc": correct / max(n, 1),
                "epoch_seconds": time.perf_counter() - t0, "lr": self.optimizer.param_groups[0]["lr"]}

    def state_dict(self) -> dict:
        rng = {"data": self.data_gen.get_state(), "aug": self.aug_gen.get_state(),
               "attack": self.attack_gen.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        rng = state["rng"]
        self.data_gen.set_state(rng["data"])
        self.aug_gen.set_state(rng["aug"])
        self.attack_gen.set_state(rng["attack"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
