"""One trial, start to finish, without Ray: config -> data -> model -> train -> evaluate -> metrics.

``run_trial`` is what the CLI, the Ray Tune trainable and the Optuna workers all call. It validates
the whole config before any work, evaluates with ``hyporay.metrics`` after every ``eval.every``
epochs (and after the last), checkpoints, and calls ``report(metrics, checkpoint_dir)``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from hyporay import metrics as M
from hyporay import passes, provenance
from hyporay.config import ConfigError, TrialConfig, load_config
from hyporay.data import Dataset, iterate_batches, load_dataset
from hyporay.data.core import place
from hyporay.models import build_model
from hyporay.trainers import OptimConfig, Trainer

CHECKPOINT_FILE = "checkpoint.pt"
EPOCH = "epoch"
DIVERGED = "diverged"                  # metric / tag of a trial stopped by a non-finite training loss
Report = Callable[[dict, str], None]


class Diverged(RuntimeError):
    """Training produced a non-finite loss: the trial stops, and its risks are never reported as results."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"diverged at epoch {epoch}: training loss {loss}; no risk is reported (lower train.lr, "
                         "or check the data)")
        self.epoch, self.loss = epoch, loss


# Fields a resumed run may change: how it is evaluated, named, placed and how long it trains. Any other field
# shaped the weights already trained, so a resume with another value would mix two trainings.
RESUMABLE_FIELDS = ("name", "device", "threads", "train.epochs", "eval", "data.root", "data.download",
                    "data.cache_dir")


def check_resumable(saved: TrialConfig, new: TrialConfig) -> None:
    """Raise ConfigError (one line, naming the first field) when ``new`` changes a trained field of ``saved``."""
    from hyporay.config import flatten

    old, cur = flatten(saved.model_dump()), flatten(new.model_dump())
    for key in sorted(set(old) | set(cur)):
        if any(key == f or key.startswith(f + ".") for f in RESUMABLE_FIELDS):
            continue
        if old.get(key) != cur.get(key):
            raise ConfigError(f"--resume: {key} is {cur.get(key)!r} but the checkpoint was trained with "
                              f"{old.get(key)!r}; resume with the same value or train anew in another --out")


def check_certifiable(cfg: TrialConfig, model: torch.nn.Module, ds: Dataset) -> None:
    """With ``eval.certify``, the model must be one the certifier handles: found out now, on one test point, in one
    line (ConfigError), not after training. ``model`` is on the CPU (before the trainer places it)."""
    if cfg.eval.certify == "none":
        return
    from hyporay.certify import NotCertifiable, certify
    from hyporay.data import to_float

    try:
        certify(model.eval(), to_float(ds.x_test[:1]).cpu(), ds.y_test[:1].cpu(), eps=cfg.eval.attack.eps,
                norm=cfg.eval.attack.norm, method=cfg.eval.certify)
    except NotCertifiable as exc:
        raise ConfigError(f"eval.certify: {exc}") from None
    finally:
        model.train()


def check_budget(cfg: TrialConfig, in_shape: tuple[int, ...]) -> None:
    """An l_2 radius beyond the diameter of [0,1]^d (sqrt(d)) covers every image: a typo, refused (ConfigError)."""
    d = 1
    for n in in_shape:
        d *= int(n)
    for where, a in (("train.attack", cfg.train.attack), ("eval.attack", cfg.eval.attack)):
        if a.norm == "l2" and a.eps > math.sqrt(d):
            raise ConfigError(f"{where}.eps: {a.eps:g} is beyond the input range: an l2 ball of radius > "
                              f"sqrt({d}) = {math.sqrt(d):.3g} covers every [0,1] image of shape {tuple(in_shape)}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but no CUDA device is available; use auto or cpu")
    return dev


def load_trial_data(cfg: TrialConfig) -> Dataset:
    """The trial's data set (train/test split from the seed), with the eval subset applied."""
    d = cfg.data
    return load_dataset(d.name, root=d.root, seed=cfg.data_seed(), download=d.download, subset_train=d.subset_train,
                        subset_test=d.subset_test, test_fraction=d.test_fraction)


def variant_spec(cfg: TrialConfig):
    from hyporay.variants import VariantSpec

    v, a = cfg.variant, cfg.train.attack
    return VariantSpec(name=v.name, method=v.method, eps=a.eps if v.eps is None else v.eps,
                       norm=v.norm or a.norm, steps=v.steps, source_model=v.source_model or cfg.model.name,
                       source_model_kwargs=dict(cfg.model.kwargs) if v.source_model is None else {},
                       source_epochs=v.source_epochs, source_lr=v.source_lr,
                       source_batch_size=cfg.train.batch_size)


def training_set(cfg: TrialConfig, ds: Dataset, device: torch.device):
    from hyporay.variants import build_training_set

    cache = cfg.data.cache_dir or str(Path(cfg.data.root) / "hyporay-cache")
    return build_training_set(ds, variant_spec(cfg), seed=cfg.seed, cache_dir=cache, device=str(device))


def make_model(cfg: TrialConfig, ds: Dataset) -> torch.nn.Module:
    return build_model(cfg.model.name, in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean,
                       std=ds.std, **cfg.model.kwargs)


def make_trainer(cfg: TrialConfig, model: torch.nn.Module, device: torch.device) -> Trainer:
    t = cfg.train
    return Trainer(model, loss=t.trainer, attack=t.attack, lam=t.lam,
                   optim=OptimConfig(lr=t.effective_lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                     milestones=t.milestones, gamma=t.gamma, optimizer=t.optimizer),
                   batch_size=t.batch_size, augment=t.augment, amp=t.amp, amp_dtype=t.amp_dtype,
                   channels_last=t.channels_last, compile=t.compile, concat_forward=t.concat_forward,
                   device=device, seed=cfg.seed, epochs=t.epochs)


def evaluate_model(cfg: TrialConfig, model: torch.nn.Module, ds: Dataset, device: torch.device,
                   *, epoch: int, spec=None, targeted: bool | None = None, certify: str | None = None
                   ) -> dict[str, float]:
    """All risks of ``model`` on the test split under the eval attack (or ``spec``), seeded by epoch.

    ``targeted`` (default ``cfg.eval.targeted``): also the per-label targeted attacks (Fig. 3).
    ``certify`` (default ``cfg.eval.certify``; "none" skips): also ``M.CERTIFIED_METRICS``, certified upper
    bounds at the attack's eps and norm.
    """
    from hyporay.certify import NotCertifiable

    spec = spec or cfg.eval.attack
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 100_003 + epoch)
    batches = iterate_batches(ds.x_test, ds.y_test, cfg.eval.batch_size, shuffle=False, device=device)
    metrics = M.evaluate(model, batches, spec, targeted=cfg.eval.targeted if targeted is None else targeted,
                         num_classes=ds.num_classes, device=device, generator=gen)
    method = cfg.eval.certify if certify is None else certify
    if method != "none":
        batches = iterate_batches(ds.x_test, ds.y_test, cfg.eval.batch_size, shuffle=False, device=device)
        try:
            metrics.update(M.certified_risks(model, batches, eps=spec.eps, norm=spec.norm, method=method,
                                             device=device))
        except NotCertifiable as exc:
            raise ConfigError(f"eval.certify: {exc}") from None
    return metrics


def convergence_metrics(cfg: TrialConfig, model: torch.nn.Module, ds: Dataset, device: torch.device,
                        *, epoch: int) -> dict[str, float]:
    """The eval attack re-run with K steps (1 restart) for K in ``eval.steps_grid`` and with R restarts for R in
    ``eval.restarts_grid``: ``steps_K/<metric>`` and ``restarts_R/<metric>`` for ``M.SETTING_METRICS``.

    Same seed as the final evaluation, so restart 1 repeats its draws (more restarts never help the model).
    """
    base = cfg.eval.attack
    settings = [("steps", k, {"steps": k, "restarts": 1}) for k in cfg.eval.steps_grid]
    settings += [("restarts", r, {"restarts": r}) for r in cfg.eval.restarts_grid]
    out: dict[str, float] = {}
    for kind, value, update in settings:
        m = evaluate_model(cfg, model, ds, device, epoch=epoch, spec=dataclasses.replace(base, **update),
                           targeted=False, certify="none")
        out.update({M.at_setting(kind, value, name): m[name] for name in M.SETTING_METRICS})
    return out


def save_checkpoint(path: Path, cfg: TrialConfig, trainer: Trainer, ds: Dataset, metrics: dict) -> None:
    """Atomically write ``checkpoint.pt`` (loadable with ``torch.load(..., weights_only=True)``)."""
    state = {
        "format": 1,
        "config": cfg.model_dump(),
        "trainer": trainer.state_dict(),
        "dataset": {"name": ds.name, "in_shape": list(ds.in_shape), "num_classes": ds.num_classes,
                    "mean": list(ds.mean), "std": list(ds.std)},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "provenance": provenance.of_trial(cfg.model_dump()),
    }
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_FILE)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, foreign or not matching its own config (one line)."""


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by ``save_checkpoint`` (a directory or the file itself).

    ``weights_only=True``: a foreign pickle runs no code. A truncated, empty or foreign file, or one without
    the fields hyporay writes, raises ``CheckpointError`` naming the file and what is wrong.
    """
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_FILE
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint: no {CHECKPOINT_FILE} at {path}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint: {p} is empty (an interrupted write?)")
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle's protocol before refusing it
            warnings.simplefilter("ignore")
            state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/UnpicklingError/EOFError/... for bad files
        text = " ".join(str(exc).split())
        raise CheckpointError(f"checkpoint: {p} is damaged or not a hyporay checkpoint ({type(exc).__name__}: "
                              f"{text[:90] + '...' if len(text) > 90 else text})") from None
    missing = [k for k in ("format", "config", "trainer", "dataset", "metrics") if not isinstance(state, dict)
               or k not in state]
    if missing or not isinstance(state.get("trainer"), dict) or "model" not in state["trainer"]:
        raise CheckpointError(f"checkpoint: {p} is not a hyporay checkpoint (missing "
                              f"{', '.join(missing) or 'trainer.model'})")
    state["_path"] = str(p)
    return state


def _saved_config(state: dict) -> TrialConfig:
    try:
        return load_config(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint: {state.get('_path', '?')}: its config is not valid here ({exc})") from None


def model_from_checkpoint(state: dict, device="cpu") -> tuple[torch.nn.Module, TrialConfig]:
    cfg = _saved_config(state)
    d = state["dataset"]
    model = build_model(cfg.model.name, in_shape=tuple(d["in_shape"]), num_classes=d["num_classes"],
                        mean=d["mean"], std=d["std"], **cfg.model.kwargs)
    try:
        model.load_state_dict(state["trainer"]["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint: {state.get('_path', '?')}: its weights do not fit model "
                              f"{cfg.model.name} ({str(exc).strip().splitlines()[0][:160]})") from None
    return model.to(device).eval(), cfg


def _is_eval_epoch(epoch: int, cfg: TrialConfig, last: int) -> bool:
    return epoch == last or epoch % cfg.eval.every == 0


def run_trial(config: TrialConfig | dict | str | Path, report: Report | None = None, *,
              data: Dataset | None = None, resume_from: str | Path | None = None,
              checkpoint_dir: str | Path | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train and evaluate one configuration; returns the final metrics (names from hyporay.metrics).

    Args:
        config: a ``TrialConfig``, a dict or a YAML path; fully validated before any work.
        report: called as ``report(metrics, checkpoint_dir)`` after each evaluation; the directory holds
            ``checkpoint.pt`` and is only valid during the call (Ray Tune copies it) unless
            ``checkpoint_dir`` is given.
        data: the data set, if the caller already has it (Ray puts it in the object store once).
        resume_from: a checkpoint (directory or file) to continue from; training resumes after its epoch
            with identical RNG state, so the final metrics equal those of an uninterrupted run.
        checkpoint_dir: keep the latest checkpoint here (overwritten at each evaluation).
        log: called with one human-readable line per epoch.
    """
    cfg = load_config(config)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ds = data if data is not None else load_trial_data(cfg)
    check_budget(cfg, ds.in_shape)
    resumed = None
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, map_location=device)
        check_resumable(_saved_config(resumed), cfg)
    x_train, y_train = training_set(cfg, ds, device)
    if device.type == "cuda":  # GPU-first: the data sets live on the GPU (uint8 stays uint8), batched there
        x_train, y_train, ds = place(x_train, device), place(y_train, device), ds.to(device, train=False)
    model = make_model(cfg, ds)
    check_certifiable(cfg, model, ds)
    trainer = make_trainer(cfg, model, device)
    if resumed is not None:
        try:
            trainer.load_state_dict(resumed["trainer"])
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint: {resumed['_path']}: cannot resume from it "
                                  f"({str(exc).strip().splitlines()[0][:160]})") from None
    epochs = 0 if cfg.variant.name == "naive" else cfg.train.epochs  # Naive: never trained
    metrics: dict = {}
    if trainer.epoch >= epochs and resumed is not None:
        return resumed["metrics"]
    start = time.perf_counter()
    eval_total = int((resumed or {}).get("metrics", {}).get(M.EVAL_PASSES) or 0)  # counts on after a resume
    for epoch in range(trainer.epoch + 1 if epochs else 0, epochs + 1):
        stats = trainer.train_epoch(x_train, y_train) if epochs else {}
        if stats and not math.isfinite(stats["train_loss"]):
            raise Diverged(epoch, stats["train_loss"])
        if not _is_eval_epoch(epoch, cfg, epochs):
            if log:
                log(_epoch_line(epoch, epochs, stats, None))
            continue
        # the certified bound only for the final model (the one every result is about): bounds cost more than attacks
        with passes.counting() as spent:
            metrics = {EPOCH: float(epoch), M.TRAIN_PASSES: float(trainer.passes), **stats,
                       **evaluate_model(cfg, trainer.model, ds, device, epoch=epoch,
                                        certify=None if epoch == epochs else "none"),
                       "elapsed_seconds": time.perf_counter() - start}
            if epoch == epochs:  # the final evaluation: also the attack-convergence grids, in the last report
                metrics.update(convergence_metrics(cfg, trainer.model, ds, device, epoch=epoch))
        eval_total += spent.total
        metrics.update({M.EVAL_PASSES_EPOCH: float(spent.total), M.EVAL_PASSES: float(eval_total)})
        if log:
            log(_epoch_line(epoch, epochs, stats, metrics))
        _checkpoint_and_report(cfg, trainer, ds, metrics, report, checkpoint_dir)
    return metrics


def _write_json(path: Path, obj: dict) -> None:
    """Strict JSON (NaN/inf as null: a degenerate model's risks are not numbers), written atomically."""
    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: clean(v) for k, v in obj.items()}, indent=2, allow_nan=False))
    os.replace(tmp, path)


def write_diverged(out: str | Path, cfg: TrialConfig, exc: Diverged) -> None:
    """metrics.json of a diverged trial: the fact and the epoch, no risk (they would not mean anything)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "metrics.json", {DIVERGED: 1.0, EPOCH: float(exc.epoch), "train_loss": exc.loss,
                                       "provenance": provenance.of_trial(cfg.model_dump())})
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))


def _checkpoint_and_report(cfg, trainer, ds, metrics, report, checkpoint_dir) -> None:
    if checkpoint_dir is not None:
        save_checkpoint(Path(checkpoint_dir), cfg, trainer, ds, metrics)
        _write_json(Path(checkpoint_dir) / "metrics.json",
                    {**metrics, "provenance": provenance.of_trial(cfg.model_dump())})
        (Path(checkpoint_dir) / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    if report is None:
        return
    if checkpoint_dir is not None:
        report(metrics, str(checkpoint_dir))
        return
    tmp = Path(tempfile.mkdtemp(prefix="hyporay-ckpt-"))
    try:
        save_checkpoint(tmp, cfg, trainer, ds, metrics)
        report(metrics, str(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fmt(v) -> str:
    return "  nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _epoch_line(epoch: int, epochs: int, stats: dict, metrics: dict | None) -> str:
    head = f"epoch {epoch:3d}/{epochs}"
    if stats:
        head += f"  loss {stats['train_loss']:.4f}  train_acc {stats['train_acc']:.3f}  " \
                f"{stats['epoch_seconds']:.1f}s"
    if metrics is None:
        return head
    return (f"{head}  | D {_fmt(metrics[M.ACC_CLEAN])}  A {_fmt(metrics[M.ACC_ADV])}  "
            f"F {_fmt(metrics[M.ACC_HYP])}  R_hyp(D-) {_fmt(metrics[M.HYPOCRITICAL_RISK])}")
