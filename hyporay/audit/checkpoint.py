"""The audit of a saved trial (``hyporay audit``, a sweep's ``--audit``): its model, test split and an independently
trained surrogate for the transfer check."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from hyporay.audit.run import check_settings, run_audit
from hyporay.audit.tolerances import DEFAULT_SUBSET
from hyporay.config import TrialConfig, load_config
from hyporay.data import Dataset, to_float
from hyporay.experiment import load_checkpoint, load_trial_data, model_from_checkpoint, resolve_device, run_trial


def train_surrogate(cfg: TrialConfig, ds: Dataset, *, seed: int | None = None, epochs: int = 10,
                    model_name: str | None = None, device: str | None = None,
                    log: Callable[[str], None] | None = None) -> torch.nn.Module:
    """An independently trained surrogate for the audit's transfer check, trained by ``run_trial``.

    Same data set and split as ``cfg`` (its clean training split: the strongest surrogate an attacker with
    the data could build, also for substandard variants and for Naive, which has no training at all),
    natural training, seed ``cfg.seed + 1`` unless given, ``epochs`` epochs, the trial's architecture
    unless ``model_name`` names another. Returned in eval mode.
    """
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError(f"surrogate epochs: must be >= 1, got {epochs}")
    over: dict = {"name": f"{cfg.name}-surrogate", "seed": cfg.seed + 1 if seed is None else int(seed),
                  "variant": {"name": "quality"},
                  "train": {"trainer": "natural", "lam": 0.0, "epochs": epochs},
                  # its own evaluation is not used: one cheap pass at the end
                  "eval": {"every": epochs, "targeted": False, "steps_grid": [], "restarts_grid": [],
                           "attack": {"steps": 1}}}
    if device is not None:
        over["device"] = device
    if model_name is not None and model_name != cfg.model.name:
        over["model"] = {"name": model_name, "kwargs": {}}
    scfg = load_config(cfg.model_dump(), over)
    with tempfile.TemporaryDirectory(prefix="hyporay-surrogate-") as d:
        run_trial(scfg, data=ds, checkpoint_dir=d, log=log)
        model, _ = model_from_checkpoint(load_checkpoint(d), resolve_device(scfg.device))
    return model


def audit_checkpoint(checkpoint: str | Path | dict, *, spec=None, tolerances=None, device: str = "auto",
                     subset: int | None = None, surrogate: str | Path | torch.nn.Module | None = None,
                     transfer: bool = True, surrogate_epochs: int = 10, surrogate_seed: int | None = None,
                     surrogate_model: str | None = None, data: Dataset | None = None, seed: int = 0,
                     log: Callable[[str], None] | None = None, fresh=None, **audit_kwargs):
    """Run ``hyporay.audit.run_audit`` on a saved trial and its test split; returns the ``AuditReport``.

    Args:
        checkpoint: a checkpoint directory / ``checkpoint.pt`` (or its loaded state).
        spec: the audited attack (default: the trial's eval attack).
        subset: audit this many test examples (a fixed random subset drawn with ``seed``, sorted);
            None: ``hyporay.audit.DEFAULT_SUBSET``; 0: the whole test split.
        surrogate: a checkpoint (or model) to craft transfer examples on; None: train one with
            ``train_surrogate`` (``surrogate_epochs``, ``surrogate_seed``, ``surrogate_model``).
        transfer: False skips the transfer check (verdict "skipped") and trains no surrogate.
        data: the trial's data set, if the caller has it already (a sweep); else ``load_trial_data``.
        fresh: a fresh split for the smuggling check: a file (``hyporay.audit.smuggling.load_fresh_split``) or an
            (x, y) pair; it is compared with the WHOLE test split (the declared one), not the audited subset.
        audit_kwargs: passed to ``run_audit`` (eps_multiples, steps_grid, restarts_grid, n_single, ...).
    """
    check_settings(**audit_kwargs)  # before any work (the surrogate's training)
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    dev = resolve_device(device)
    model, cfg = model_from_checkpoint(state, dev)
    spec = spec or cfg.eval.attack
    ds = data if data is not None else load_trial_data(cfg)
    n_test = len(ds.y_test)
    subset = DEFAULT_SUBSET if subset is None else int(subset)
    if subset < 0:
        raise ValueError(f"subset: must be >= 0 (0 = the whole test split), got {subset}")
    idx = torch.arange(n_test)
    if 0 < subset < n_test:
        idx = torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))[:subset].sort().values
    x, y = to_float(ds.x_test[idx]).to(dev), ds.y_test[idx].to(dev)
    fresh_xy = None
    if fresh is not None:
        from hyporay.audit.smuggling import load_fresh_split

        fx, fy = fresh if isinstance(fresh, tuple) else load_fresh_split(str(fresh), ds.in_shape, ds.num_classes)
        fresh_xy = (fx.to(dev), fy.to(dev))

    sur_info: dict = {"used": False}
    sur_model = None
    if transfer:
        if isinstance(surrogate, torch.nn.Module):
            sur_model, sur_info = surrogate.to(dev).eval(), {"used": True, "source": "given model"}
        elif surrogate is not None:
            s_state = load_checkpoint(surrogate)
            want = {k: state["dataset"][k] for k in ("name", "in_shape", "num_classes")}
            got = {k: s_state["dataset"][k] for k in ("name", "in_shape", "num_classes")}
            if want != got:
                raise ValueError(f"surrogate: {surrogate} was trained on {got}, the audited model on {want}")
            sur_model, s_cfg = model_from_checkpoint(s_state, dev)
            sur_info = {"used": True, "source": str(surrogate), "model": s_cfg.model.name, "seed": s_cfg.seed,
                        "trainer": s_cfg.train.trainer}
        else:
            s_seed = cfg.seed + 1 if surrogate_seed is None else surrogate_seed
            s_name = surrogate_model or cfg.model.name
            if log:
                log(f"training the surrogate: {s_name}, natural, seed {s_seed}, {surrogate_epochs} epochs")
            sur_model = train_surrogate(cfg, ds, seed=s_seed, epochs=surrogate_epochs, model_name=s_name,
                                        device=str(dev))
            sur_info = {"used": True, "source": "trained", "model": s_name, "seed": s_seed, "trainer": "natural",
                        "epochs": int(surrogate_epochs), "training_set": "clean (quality)"}
    if log:
        log(f"auditing {len(idx)} of {n_test} test examples: {spec.describe()}")
    report = run_audit(model, x, y, spec=spec, surrogate=sur_model, tolerances=tolerances,
                       batch_size=cfg.eval.batch_size, seed=seed, log=log,
                       transfer_skip_reason="transfer check switched off (--no-transfer)", fresh=fresh_xy,
                       declared=(ds.x_test.to(dev), ds.y_test.to(dev)), **audit_kwargs)
    report.settings.update({"trial": cfg.name, "model": cfg.model.name,
                            "trainer": cfg.train.trainer, "lam": cfg.train.lam, "dataset": ds.name,
                            "test_examples": n_test, "subset": subset, "surrogate": sur_info,
                            "fresh": None if fresh is None else (str(fresh) if not isinstance(fresh, tuple)
                                                                 else f"given ({len(fresh[1])} examples)")})
    return report
