"""The one training loop: SGD + MultiStepLR, crop/flip, AMP, channels_last, torch.compile, exact resume.

GPU-first and free of host synchronisation inside an epoch: batches come from ``train_batches`` (on the
device when the data lives there), loss and accuracy are summed on the device and read once per epoch, and
nothing in the training step or the PGD loop reads a tensor value back to Python (``.item()``, ``float()``,
``if t:``). bf16 autocast needs no GradScaler; fp16 (only where bf16 is unsupported, or when asked) uses one,
and its ``step`` does read back whether a gradient overflowed, as GradScaler always does.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hyporay import passes
from hyporay.attacks import AttackSpec, inputs_in_range
from hyporay.data.core import train_batches
from hyporay.trainers.losses import LOSSES, LossContext

log = logging.getLogger(__name__)

AMP_DTYPES = ("auto", "bfloat16", "float16")


@dataclass
class OptimConfig:
    """The paper's optimiser (reference §4): SGD with momentum and weight decay, MultiStepLR."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adam" (betas (momentum, 0.999); the l_inf-dist net's)


def _bf16_native(device: torch.device) -> bool:
    """bf16 runs natively: always on CPU autocast; on CUDA from compute capability 8 (Ampere) on."""
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def resolve_amp_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The autocast dtype for ``name`` ("auto", "bfloat16", "float16") on ``device``.

    "auto": bfloat16 where it runs natively (CPU; CUDA compute capability >= 8), float16 elsewhere.
    Raises ``ValueError`` (one line) for an unknown name or bfloat16 on a GPU without it.
    """
    if isinstance(name, torch.dtype):
        name = {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(name, str(name))
    if name not in AMP_DTYPES:
        raise ValueError(f"amp_dtype: unknown {name!r}; known: {', '.join(AMP_DTYPES)}")
    if name == "auto":
        return torch.bfloat16 if _bf16_native(device) else torch.float16
    if name == "bfloat16" and not _bf16_native(device):
        raise ValueError(f"amp_dtype: bfloat16 is not native on {device} (compute capability < 8); "
                         "use float16 or auto")
    return torch.bfloat16 if name == "bfloat16" else torch.float16


def _grad_scaler(device_type: str, enabled: bool):
    """``torch.amp.GradScaler`` (torch >= 2.3), else the CUDA one of older torch (the bench runs on >= 2.1)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type, enabled=enabled)
    if enabled and device_type != "cuda":
        raise ValueError("amp_dtype: float16 on CPU needs torch >= 2.3 (torch.amp.GradScaler); use bfloat16")
    return torch.cuda.amp.GradScaler(enabled=enabled)


def compile_unavailable(backend, device: torch.device) -> str | None:
    """Why ``torch.compile(model, backend=backend)`` cannot work here, or None if it should.

    Checks what fails before the first call: no ``torch.compile`` (torch < 2.0), TorchDynamo unsupported on
    this Python/platform, and for the default "inductor" backend its code generator (triton on CUDA, a C++
    compiler on CPU). Anything else that fails at the first compiled step is caught there (``Trainer``).
    """
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (needs >= 2.0)"
    try:
        import torch._dynamo as dynamo

        supported = getattr(dynamo, "is_dynamo_supported", None)  # absent in some older releases: no pre-check
        if supported is not None and not supported():
            return "TorchDynamo does not support this Python version or platform"
    except Exception as exc:  # noqa: BLE001  (a broken install: report it in one line, train eagerly)
        return f"TorchDynamo unavailable ({type(exc).__name__}: {exc})".splitlines()[0]
    if backend == "inductor":
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            return "the inductor backend needs triton on CUDA, which is not installed"
        if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "c++",
                                                                      "clang++")):
            return "the inductor backend needs a C++ compiler on CPU (none of $CXX, g++, c++, clang++ found)"
    return None


@contextlib.contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    """cudnn.benchmark for the block (training batches have static shapes); the previous value after it."""
    if not on:
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _device_rng_state(device: torch.device) -> Tensor | None:
    """The global RNG state of ``device``'s accelerator (dropout etc. draw from it), None on CPU."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return None


def _set_device_rng_state(state, device: torch.device) -> None:
    """Restore ``_device_rng_state``; accepts the per-GPU list older checkpoints held (takes this GPU's)."""
    if device.type != "cuda" or state is None:
        return
    if isinstance(state, (list, tuple)):  # torch.cuda.get_rng_state_all() of older checkpoints
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(state):
            return
        state = state[index]
    torch.cuda.set_rng_state(state.cpu(), device)


class Trainer:
    """Trains ``model`` with one of ``LOSSES`` epoch by epoch; its full state round-trips exactly.

    Randomness (shuffling, augmentation, attack starts) comes from generators owned by the trainer,
    seeded from ``seed``; ``state_dict`` holds them with model, optimiser, scheduler, AMP scaler, epoch and
    the global RNGs (CPU, and the trial's GPU), so a run stopped after epoch k and resumed ends bit-identical
    to an uninterrupted one (on CPU; CUDA kernels themselves are not bit-deterministic).

    Args:
        model: maps N x C x H x W inputs in [0,1] to N x K logits.
        loss: a key of ``LOSSES`` (natural, pgd_at, trades, thrm, randnoise, fat, gairat).
        attack: the training attack (threat model, K steps, step size, start).
        lam: λ of TRADES / THRM.
        loss_options: further ``LossContext`` fields of a loss (GAIRAT's ``gair_lambda``, ``gair_begin``).
        batch_size, augment: examples per step; RandomCrop(H, 4) + horizontal flip per example.
        amp: autocast; ``amp_dtype`` "auto" (bfloat16 where native, else float16 + GradScaler),
            "bfloat16" or "float16".
        channels_last: model and batches in channels_last memory format (4-D inputs).
        compile: torch.compile the model for the training step (True: inductor; a backend name or callable
            is passed on). Where compilation is unavailable, or fails at the first step, the trainer logs
            one line and trains eagerly (the failed step is redone from its saved RNG and buffer state, so
            the run equals an uncompiled one with the same settings). Evaluation uses ``model`` eagerly.
        drop_last: drop the last partial batch of every epoch (static shapes, so neither the attack loop nor
            the step recompiles per batch); None: when ``compile`` is asked for, whether or not it works
            here (results depend on the settings, not on the machine).
        device: where training runs; data on the host is fed batch by batch, data already on ``device``
            (``hyporay.data.place``) never leaves it.
    """

    def __init__(self, model: nn.Module, *, loss: str, attack: AttackSpec, lam: float = 0.0,
                 optim: OptimConfig | None = None, batch_size: int = 128, augment: bool = False,
                 amp: bool = False, amp_dtype: str | torch.dtype = "auto", channels_last: bool = False,
                 compile: bool | str | Callable = False, drop_last: bool | None = None,
                 concat_forward: bool = True, device: str | torch.device = "cpu", seed: int = 0,
                 epochs: int | None = None, loss_options: dict | None = None) -> None:
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
        self.amp = amp
        self.amp_dtype = resolve_amp_dtype(amp_dtype, self.device)
        # a GradScaler only for float16 (bfloat16 has float32's range); disabled, it passes everything through
        self.scaler = _grad_scaler(self.device.type, enabled=amp and self.amp_dtype == torch.float16)
        self.data_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.attack_gen = torch.Generator(device=self.device).manual_seed(seed + 2)
        self.ctx = LossContext(attack=attack, lam=lam, concat_forward=concat_forward,
                               generator=self.attack_gen, epochs=epochs, **(loss_options or {}))
        self.epoch = 0
        self.passes = 0  # image-passes (forward + backward, attacks included) of every epoch so far
        self.seconds = 0.0  # wall-clock seconds of every epoch so far
        self.drop_last = bool(compile) if drop_last is None else bool(drop_last)
        self.step_model, self.compiled, self.compile_note = self.model, False, None
        if compile:
            self._compile("inductor" if compile is True else compile)

    # --- torch.compile ------------------------------------------------------------------------------------

    def _compile(self, backend) -> None:
        reason = compile_unavailable(backend, self.device)
        if reason is not None:
            self._eager(reason)
            return
        self.step_model, self.compiled = torch.compile(self.model, backend=backend), True
        self._first_compiled_step = True

    def _eager(self, reason: str) -> None:
        self.step_model, self.compiled, self.compile_note = self.model, False, reason
        log.warning("train.compile: %s; training without torch.compile", reason)

    def _guarded_step(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """The first compiled step: where compilation fails, restore what the step consumed (attack RNG,
        global RNGs, BatchNorm buffers, gradients, counted passes) and redo it eagerly."""
        self._first_compiled_step = False
        saved = (self.attack_gen.get_state(), torch.get_rng_state(), _device_rng_state(self.device),
                 [b.detach().clone() for b in self.model.buffers()])
        try:
            with passes.undone_on(Exception):  # the failed attempt's passes are redone eagerly, counted once
                return self._step(xb, yb)
        except Exception as exc:  # noqa: BLE001  (compiler errors come in many types; eager re-raises real bugs)
            if not _is_compile_error(exc):
                raise
            self.attack_gen.set_state(saved[0])
            torch.set_rng_state(saved[1])
            _set_device_rng_state(saved[2], self.device)
            with torch.no_grad():
                for b, old in zip(self.model.buffers(), saved[3]):
                    b.copy_(old)
            self.optimizer.zero_grad(set_to_none=True)
            self._eager(f"compilation failed at the first step ({_root_cause(exc)})")
            return self._step(xb, yb)

    # --- training -----------------------------------------------------------------------------------------

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _step(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """One optimiser step on a batch; returns (loss, logits), both still on the device."""
        with self._autocast():
            loss, logits = self.loss_fn(self.step_model, xb, yb, self.ctx)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss, logits

    def train_epoch(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One shuffled pass over (x, y); returns train_loss, train_acc, epoch_seconds and lr.

        Args:
            x: N x C x H x W images, uint8 (0..255) or float in [0,1], on the host or on the trainer's device
                (then batches never leave it); y: N int64 labels on the same device as x.

        ``train_acc`` is the accuracy on the inputs the loss was computed on: clean inputs for NT,
        TRADES and THRM, adversarial inputs for PGD-AT. Loss and accuracy are summed on the device and read
        once, at the end of the epoch; ``epoch_seconds`` (wall clock) includes that final synchronisation.
        ``train_passes_epoch``: image-passes (forward + backward, the inner attacks' included) of this epoch;
        ``train_passes``: of every epoch so far; ``train_seconds``: wall clock of every epoch so far (both kept in
        ``state_dict``, so a resumed run counts on).
        """
        if self.drop_last and len(x) < self.batch_size:
            raise ValueError(f"train: drop_last (static shapes for train.compile) needs at least "
                             f"batch_size={self.batch_size} training examples, got {len(x)}")
        self.model.train()
        self.ctx.epoch = self.epoch  # FAT's τ schedule, GAIRAT's burn-in
        for m in self.model.modules():  # e.g. the l_inf-dist net's p-norm annealing
            if self.epochs and hasattr(m, "set_progress"):
                m.set_progress(self.epoch, self.epochs)
        t0, n = time.perf_counter(), 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        batches = train_batches(x, y, self.batch_size, generator=self.data_gen, device=self.device,
                                augment=self.augment, aug_generator=self.aug_gen, drop_last=self.drop_last,
                                channels_last=self.channels_last)
        with _cudnn_benchmark(self.device.type == "cuda"), inputs_in_range(), passes.counting() as spent:
            for xb, yb in batches:
                if self.compiled and self._first_compiled_step:
                    loss, logits = self._guarded_step(xb, yb)
                else:
                    loss, logits = self._step(xb, yb)
                n += len(yb)
                loss_sum += loss.detach().double() * len(yb)
                correct += (logits.detach().argmax(1) == yb).sum()
        self.scheduler.step()
        self.epoch += 1
        self.passes += spent.total
        train_loss, n_correct = float(loss_sum), int(correct)  # the epoch's one synchronisation
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        return {"train_loss": train_loss / max(n, 1), "train_acc": n_correct / max(n, 1),
                "epoch_seconds": seconds, "lr": self.optimizer.param_groups[0]["lr"],
                "train_passes_epoch": float(spent.total), "train_passes": float(self.passes),
                "train_seconds": self.seconds}

    # --- exact resume -------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        rng = {"data": self.data_gen.get_state(), "aug": self.aug_gen.get_state(),
               "attack": self.attack_gen.get_state(), "torch": torch.get_rng_state()}
        device_rng = _device_rng_state(self.device)
        if device_rng is not None:
            rng["cuda"] = device_rng
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "passes": self.passes, "seconds": self.seconds, "rng": rng}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``; RNG states may come back on any device (``torch.load(map_location=...)``)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.passes = int(state.get("passes", 0))  # 0: a checkpoint from before passes were counted
        self.seconds = float(state.get("seconds", 0.0))
        rng = state["rng"]
        self.data_gen.set_state(rng["data"].cpu())
        self.aug_gen.set_state(rng["aug"].cpu())
        self.attack_gen.set_state(rng["attack"].cpu())
        torch.set_rng_state(rng["torch"].cpu())
        _set_device_rng_state(rng.get("cuda"), self.device)


def _root_cause(exc: BaseException, limit: int = 240) -> str:
    """``Type: first line`` of the innermost cause (Dynamo wraps the backend's error), at most ``limit`` chars."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        exc = inner
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


_COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "triton")


def _is_compile_error(exc: BaseException) -> bool:
    """True for errors raised by TorchDynamo or a compiler backend (its class is defined there), e.g.
    ``BackendCompilerFailed``, inductor's C++/triton compile errors (a lazily compiled backward raises those
    outside Dynamo). A bug in the model's own code then re-raises from the eager retry."""
    return any(type(exc).__module__.startswith(m) for m in _COMPILER_MODULES)
