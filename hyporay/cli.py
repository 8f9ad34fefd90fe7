"""The ``hyporay`` command: train / eval one trial locally (sweeps live in sweeps/*.py).

User errors (bad config, unknown names, missing data or checkpoint) exit with status 2 and one line
on stderr, no traceback; set HYPORAY_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def _table(metrics: dict, title: str) -> str:
    from hyporay import metrics as M

    rows = [(M.ACC_CLEAN, "D   clean accuracy"), (M.ACC_ADV, "A   accuracy under adversarial attack"),
            (M.ACC_HYP, "F   accuracy under hypocritical attack"), (M.NATURAL_RISK, "R_nat"),
            (M.ADVERSARIAL_RISK, "R_adv(D)"), (M.ADVERSARIAL_RISK_CORRECT, "R_adv(D+)"),
            (M.HYPOCRITICAL_RISK_ALL, "R_hyp(D)"), (M.HYPOCRITICAL_RISK, "R_hyp(D-)  concealable mistakes"),
            (M.STABILITY_RISK, "R_sta(D)"), (M.STABILITY_RISK_MISCLASSIFIED, "R_sta(D-)")]
    lines = [title, "-" * len(title)]
    for key, label in rows:
        v = metrics.get(key, math.nan)
        lines.append(f"{label:<40s} {v:8.4f}")
    lines.append(f"{'test examples / misclassified':<40s} {int(metrics[M.N_EXAMPLES]):>8d} / "
                 f"{int(metrics[M.N_MISCLASSIFIED])}")
    if M.TARGETED_MEAN in metrics:
        lines.append(f"{'targeted success on D- (mean over labels)':<40s} {metrics[M.TARGETED_MEAN]:8.4f}")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from hyporay.config import load_config
    from hyporay.experiment import run_trial

    cfg = load_config(args.config, args.set or [])
    out = Path(args.out or Path("runs") / cfg.name)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(_yaml(cfg.model_dump()))
    print(f"trial {cfg.name}: {cfg.train.trainer} (lam={cfg.train.lam}) on {cfg.data.name}/{cfg.variant.name}, "
          f"model {cfg.model.name}, {cfg.train.epochs} epochs -> {out}")
    print(f"train attack: {cfg.train.attack.spec().describe()}")
    print(f"eval attack:  {cfg.eval.attack.spec().describe()}")
    metrics = run_trial(cfg, checkpoint_dir=out, log=print,
                        resume_from=out if args.resume and (out / "checkpoint.pt").exists() else None)
    print()
    print(_table(metrics, f"final metrics ({cfg.eval.attack.spec().describe()})"))
    print(f"\nwrote {out / 'metrics.json'} and {out / 'checkpoint.pt'}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from hyporay.attacks import AttackSpec
    from hyporay.experiment import evaluate_model, load_checkpoint, load_trial_data, model_from_checkpoint, \
        resolve_device

    state = load_checkpoint(args.checkpoint)
    cfg_attack = state["config"]["eval"]["attack"]
    spec = AttackSpec(norm=args.norm or cfg_attack["norm"],
                      eps=args.eps if args.eps is not None else cfg_attack["eps"],
                      steps=args.steps or cfg_attack["steps"], step_size=args.step_size,
                      restarts=args.restarts, random_start=args.random_start, best_iterate=args.best_iterate)
    device = resolve_device(args.device)
    model, cfg = model_from_checkpoint(state, device)
    if args.targeted:
        cfg.eval.targeted = True
    ds = load_trial_data(cfg)
    with torch.inference_mode(False):
        metrics = evaluate_model(cfg, model, ds, device, epoch=int(state["metrics"].get("epoch", 0)), spec=spec)
    print(_table(metrics, f"{cfg.name} on {ds.name} test split: {spec.describe()}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"attack": spec.as_dict(), "metrics": metrics}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(prog="hyporay", description="Map the natural-vs-hypocritical risk trade-off.",
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and evaluate one trial locally", formatter_class=fmt)
    t.add_argument("config", help="trial YAML (fields: name, seed, device, threads, data, model, variant, "
                                  "train, eval; see sweeps/configs/*.yaml)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. train.lam=5")
    t.add_argument("--out", help="output directory (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a saved model under any attack spec", formatter_class=fmt)
    e.add_argument("checkpoint", help="a checkpoint directory or checkpoint.pt")
    e.add_argument("--norm", choices=["linf", "l2"], help="default: the trial's eval attack")
    e.add_argument("--eps", type=float, help="radius in pixel units (default: the trial's)")
    e.add_argument("--steps", type=int, help="PGD steps (default: the trial's)")
    e.add_argument("--step-size", type=float, help="default eps/4")
    e.add_argument("--restarts", type=int, default=1)
    e.add_argument("--random-start", default="auto", choices=["auto", "none", "uniform", "gaussian"])
    e.add_argument("--best-iterate", action="store_true")
    e.add_argument("--targeted", action="store_true", help="per-label targeted success on D- (Fig. 3)")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", help="also write the attack spec and metrics here")
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        if os.environ.get("HYPORAY_DEBUG"):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"hyporay: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyporay: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
