"""The ``hyporay`` command: train / eval one trial locally, rebuild a sweep's frontier (sweeps: sweeps/*.py).

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

from hyporay.user_errors import OneLineParser, run_user_command


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
    for key, label, attack in ((M.HYPOCRITICAL_RISK_CERTIFIED_UPPER, "R_hyp(D-)", M.HYPOCRITICAL_RISK),
                               (M.ADVERSARIAL_RISK_CORRECT_CERTIFIED_UPPER, "R_adv(D+)", M.ADVERSARIAL_RISK_CORRECT)):
        if key in metrics:  # the bracket: the attack's lower bound, the certificate's upper bound
            lines.append(f"{label + ' in [attack, certified]':<40s} [{metrics[attack]:.4f}, {metrics[key]:.4f}]")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from hyporay import metrics as M
    from hyporay import provenance
    from hyporay.config import load_config
    from hyporay.experiment import CHECKPOINT_FILE, Diverged, run_trial, write_diverged

    cfg = load_config(args.config, args.set or [])
    out = Path(args.out or Path("runs") / cfg.name)
    has_ckpt = (out / CHECKPOINT_FILE).exists()
    if has_ckpt and not args.resume and not args.overwrite:
        raise ValueError(f"--out: {out} already holds a trained {CHECKPOINT_FILE}; --resume continues it, "
                         "--overwrite replaces it, or choose another --out")
    print(f"trial {cfg.name}: {cfg.train.trainer} (lam={cfg.train.lam}) on {cfg.data.name}/{cfg.variant.name}, "
          f"model {cfg.model.name}, {cfg.train.epochs} epochs -> {out}")
    print(f"train attack: {cfg.train.attack.describe()}")
    print(f"eval attack:  {cfg.eval.attack.describe()}")
    # config.yaml, metrics.json and checkpoint.pt are written together at each evaluation: a run refused by a
    # check (bad data set, model options, a --resume that changes a trained field) writes nothing
    try:
        metrics = run_trial(cfg, checkpoint_dir=out, log=print, resume_from=out if args.resume and has_ckpt else None)
    except Diverged as exc:
        write_diverged(out, cfg, exc)
        print(f"hyporay: trial {cfg.name} {exc}; wrote {out / 'metrics.json'}", file=sys.stderr)
        return 1
    print()
    print(_table(metrics, f"final metrics ({cfg.eval.attack.describe()})"))
    if metrics.get(M.DEGENERATE):
        print(f"\ndegenerate model ({_degenerate_reason(metrics)}): its attack-based numbers are NaN, not results")
    print(f"\nwrote {out / 'metrics.json'}, {out / 'config.yaml'} and {out / CHECKPOINT_FILE}")
    print(f"code: {provenance.describe(provenance.code())}; config sha256 "
          f"{provenance.config_hash(cfg.model_dump())[:12]}")
    return 0


def _degenerate_reason(metrics: dict) -> str:
    from hyporay import metrics as M

    n = int(metrics.get(M.NONFINITE_LOGITS) or 0)
    return f"non-finite logits on {n} test examples" if n else "its logits do not depend on the input"


def cmd_eval(args) -> int:
    import torch

    from hyporay.attacks import AttackSpec
    from hyporay.experiment import evaluate_model, load_checkpoint, load_trial_data, model_from_checkpoint, \
        resolve_device

    state = load_checkpoint(args.checkpoint)
    cfg_attack = state["config"]["eval"]["attack"]
    spec = AttackSpec(norm=args.norm or cfg_attack["norm"],
                      eps=args.eps if args.eps is not None else cfg_attack["eps"],
                      steps=cfg_attack["steps"] if args.steps is None else args.steps, step_size=args.step_size,
                      restarts=args.restarts, random_start=args.random_start, best_iterate=args.best_iterate,
                      method=args.method or cfg_attack.get("method", "pgd"),
                      score=args.score or cfg_attack.get("score", "ce"))
    certify = args.certify or state["config"]["eval"].get("certify", "none")
    device = resolve_device(args.device)
    model, cfg = model_from_checkpoint(state, device)
    if args.targeted:
        cfg.eval.targeted = True
    ds = load_trial_data(cfg)
    with torch.inference_mode(False):
        metrics = evaluate_model(cfg, model, ds, device, epoch=int(state["metrics"].get("epoch", 0)), spec=spec,
                                 certify=certify)
    print(_table(metrics, f"{cfg.name} on {ds.name} test split: {spec.describe()}"
                          + (f"; certified: {certify}" if certify != "none" else "")))
    if args.json:
        Path(args.json).write_text(json.dumps({"attack": spec.as_dict(), "certify": certify, "metrics": metrics},
                                              indent=2))
        print(f"wrote {args.json}")
    return 0


def cmd_frontier(args) -> int:
    """Rebuild a sweep's frontier artefacts from its MLflow runs (finished or interrupted sweep)."""
    from mlflow.exceptions import MlflowException

    from hyporay import tracking
    from hyporay.analysis import frontier as F
    from hyporay.analysis.runs import describe_left_out
    from hyporay.engine import publish

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(Path.cwd())
    tracking.check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise tracking.TrackingError(f"tracking-uri: no MLflow database at {uri[len('sqlite:///'):]}; pass the "
                                     "sweep's --tracking-uri")
    c = tracking.client(uri)
    try:
        exp = c.get_experiment_by_name(args.experiment)
        if exp is None or exp.lifecycle_stage == "deleted":
            known = sorted(e.name for e in c.search_experiments() if e.name != "Default")
            raise tracking.TrackingError(f"experiment: no experiment {args.experiment!r} in {uri}; known: "
                                         f"{', '.join(known[:20]) or 'none'}")
        parent_id = args.parent or _latest_parent(c, exp.experiment_id, args.experiment)
        parent = c.get_run(parent_id)
        if parent.info.experiment_id != exp.experiment_id:
            raise tracking.TrackingError(f"--parent: run {parent_id} is not in experiment {args.experiment!r}")
        out = Path(args.out or f"frontier-{parent_id[:8]}")
        pts, left, paths, view, caption = publish.rebuild_for_parent(uri, exp.experiment_id, parent_id, out,
                                                                     label_key=args.label_key)
    except MlflowException as exc:
        raise tracking.TrackingError(f"mlflow: {exc.message.splitlines()[0]}") from None
    n_rows = sum(p.n_seeds for p in pts)
    print(f"experiment {args.experiment!r} (id {exp.experiment_id}), parent run {parent_id} "
          f"({parent.info.run_name}, {parent.info.status})")
    print()
    print(F.table(pts, caption=caption) if pts else "no finished trial runs yet: the frontier is empty")
    print()
    left_text = describe_left_out(left)
    print(f"frontier from {n_rows} finished run(s) in {len(pts)} point(s)"
          + (f"; left out {left_text} run(s)" if left_text else ""))
    for a in paths:
        print(f"artefact:        {a} (logged to the parent run)")
    for line in publish.links(uri, exp.experiment_id, parent_id):
        if view is not None or not line.startswith("trade-off"):
            print(line)
    return 0


def _latest_parent(c, experiment_id: str, name: str) -> str:
    from hyporay import tracking

    found = [r for role in ("sweep", "study") for r in tracking.retry(
        c.search_runs, [experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = '{role}'",
        order_by=["attributes.start_time DESC"], max_results=1)]
    if not found:
        raise tracking.TrackingError(f"experiment: {name!r} has no sweep or study parent run; give one with --parent")
    return max(found, key=lambda r: r.info.start_time).info.run_id


def cmd_audit(args) -> int:
    """Audit a saved model's evaluation; exit status 0 = every check passed, 1 = some check flagged."""
    from dataclasses import fields

    from hyporay.attacks import AttackSpec
    from hyporay.audit import Tolerances
    from hyporay.audit.checkpoint import audit_checkpoint
    from hyporay.experiment import load_checkpoint

    state = load_checkpoint(args.checkpoint)
    a = state["config"]["eval"]["attack"]
    step_size = args.step_size if args.step_size is not None else (a["step_size"] if args.eps is None else None)
    spec = AttackSpec(norm=args.norm or a["norm"], eps=a["eps"] if args.eps is None else args.eps,
                      steps=a["steps"] if args.steps is None else args.steps, step_size=step_size,
                      restarts=a["restarts"] if args.restarts is None else args.restarts,
                      random_start=args.random_start or a["random_start"],
                      best_iterate=args.best_iterate or a["best_iterate"],
                      method=args.method or a.get("method", "pgd"), score=args.score or a.get("score", "ce"))
    tol = Tolerances(**{f.name: getattr(args, f"tol_{f.name}") for f in fields(Tolerances)})
    grids = {k: getattr(args, k) for k in ("eps_multiples", "steps_grid", "restarts_grid", "certify")}
    report = audit_checkpoint(state, spec=spec, tolerances=tol, device=args.device, subset=args.subset,
                              surrogate=args.surrogate, transfer=not args.no_transfer,
                              surrogate_epochs=args.surrogate_epochs, surrogate_seed=args.surrogate_seed,
                              surrogate_model=args.surrogate_model, seed=args.seed, fresh=args.fresh,
                              log=lambda msg: print(msg, file=sys.stderr, flush=True), **grids)
    report.settings["checkpoint"] = str(args.checkpoint)
    st = report.settings
    sur = st["surrogate"]
    print(f"{st['trial']} ({st['trainer']}, lam={st['lam']:g}, {st['model']}) on {st['dataset']}: "
          f"{report.n_examples} of {st['test_examples']} test examples")
    print("surrogate: " + (", ".join(f"{k} {v}" for k, v in sur.items() if k != "used") if sur["used"]
                           else "none (--no-transfer)"))
    for path, text in ((args.json, report.to_json()), (args.markdown, report.to_markdown())):
        if path:
            Path(path).write_text(text)
            print(f"wrote {path}")
    print()
    print(report.to_text())
    return 0 if report.passed else 1


def _list_of(typ):
    def parse(raw: str) -> list:
        try:
            out = [typ(t) for t in raw.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {raw!r} as comma-separated {typ.__name__}s") from None
        if not out:
            raise argparse.ArgumentTypeError("give at least one value")
        return out
    return parse


def _add_audit_parser(sub, fmt) -> None:
    from dataclasses import fields

    from hyporay.audit import tolerances as T

    a = sub.add_parser("audit", formatter_class=fmt,
                       help="check whether a saved model's robustness numbers can be trusted (exit 0 pass, 1 flag)",
                       description="Run the evaluation checkpoints on a saved model and its test split and print "
                                   "check, figure, verdict (pass / flag with the reason). Exit status: 0 when every "
                                   "check passes, 1 when any check flags, 2 on a user error.")
    a.add_argument("checkpoint", help="a checkpoint directory or checkpoint.pt")
    a.add_argument("--norm", choices=["linf", "l2"], help="default: the trial's eval attack")
    a.add_argument("--eps", type=float, help="radius in pixel units (default: the trial's)")
    a.add_argument("--steps", type=int, help="PGD steps of the audited attack (default: the trial's)")
    a.add_argument("--step-size", type=float, help="default: the trial's, or eps/4 when --eps is given")
    a.add_argument("--restarts", type=int, help="default: the trial's")
    a.add_argument("--random-start", choices=["auto", "none", "uniform", "gaussian"], help="default: the trial's")
    a.add_argument("--best-iterate", action="store_true")
    a.add_argument("--method", choices=["pgd", "apgd"], help="the audited attack (default: the trial's, else pgd); "
                                                            "apgd_vs_pgd compares it with the other one")
    a.add_argument("--score", choices=["ce", "margin"], help="score of the audited attack (default: the trial's)")
    a.add_argument("--certify", default="crown-ibp", choices=["none", "ibp", "crown-ibp", "crown"],
                   help="certifier of the certified_bound check (crown: tighter, slow on conv nets; none skips it)")
    a.add_argument("--eps-multiples", type=_list_of(float), default=",".join(f"{v:g}" for v in T.DEFAULT_EPS_MULTIPLES),
                   help="accuracy-vs-eps curve at these multiples of eps (ascending; the largest should be huge)")
    a.add_argument("--steps-grid", type=_list_of(int), default=",".join(map(str, T.DEFAULT_STEPS_GRID)),
                   help="convergence in steps (1 restart), ascending")
    a.add_argument("--restarts-grid", type=_list_of(int), default=",".join(map(str, T.DEFAULT_RESTARTS_GRID)),
                   help="convergence in restarts (the audited attack's steps), ascending")
    a.add_argument("--subset", type=int, default=T.DEFAULT_SUBSET,
                   help="audit this many test examples (fixed random subset); 0 = the whole test split")
    a.add_argument("--surrogate", metavar="CHECKPOINT",
                   help="surrogate for the transfer check (default: train one naturally, another seed)")
    a.add_argument("--surrogate-epochs", type=int, default=10, help="epochs of the trained surrogate")
    a.add_argument("--surrogate-seed", type=int, help="seed of the trained surrogate (default: the trial's + 1)")
    a.add_argument("--surrogate-model", help="architecture of the trained surrogate (default: the trial's)")
    a.add_argument("--no-transfer", action="store_true", help="skip the transfer check (verdict 'skipped')")
    a.add_argument("--fresh", metavar="FILE", help="a fresh test split (.pt with tensors x, y, or .npz) never seen by "
                   "the model's author: the smuggling_gap check compares it with the declared test split "
                   "(docs/seeds.md); without it that check is skipped")
    for f in fields(T.Tolerances):
        a.add_argument(f"--tol-{f.name.replace('_', '-')}", dest=f"tol_{f.name}", type=float, default=f.default,
                       metavar="X", help=f.metadata["help"])
    a.add_argument("--seed", type=int, default=0, help="seed of the subset and of every attack's random start")
    a.add_argument("--device", default="auto")
    a.add_argument("--json", metavar="OUT", help="write the report (every figure, curves and grids) as JSON")
    a.add_argument("--markdown", metavar="OUT", help="write the table as Markdown")
    a.set_defaults(func=cmd_audit)


def cmd_ui(args) -> int:
    """Serve the MLflow UI over a local SQLite store on 127.0.0.1 (what `make ui` runs); checks first, in one line,
    that the store exists (or is being created) and the port is free; then waits for a store being created."""
    import socket

    from hyporay.tracking import sqlite
    from hyporay.tracking.store import STORE_WAIT

    db = Path(args.db).resolve()
    if not db.is_file() and not sqlite.being_created(db):
        raise FileNotFoundError(f"--db: no MLflow database at {db}; run a sweep first (make run)")
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", args.port))
        except OSError:
            raise ValueError(f"--port: {args.port} on 127.0.0.1 is in use (an MLflow UI already running?); pick "
                             f"another, e.g. make ui UI_PORT={args.port + 1}") from None
    # a sweep creating the store right now: wait until it is whole (the UI must never open a half-made store: it
    # would migrate it a second time, and the sweep would die)
    sqlite.wait_for_store(db, STORE_WAIT, say=lambda m: print(m, flush=True))
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
           "--default-artifact-root", (db.parent / "mlartifacts").as_uri(), "--host", "127.0.0.1", "--port",
           str(args.port), "--workers", "1"]
    print(f"MLflow UI on http://127.0.0.1:{args.port} over {db} (Ctrl-C stops it)", flush=True)
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no GenAI job runner: starts in seconds
    os.execv(cmd[0], cmd)
    return 0  # not reached


def cmd_validate_cluster(args) -> int:
    from hyporay.cluster.validate import run

    return run(args.files)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = OneLineParser(prog="hyporay", description="Map the natural-vs-hypocritical risk trade-off.",
                                formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train and evaluate one trial locally", formatter_class=fmt)
    t.add_argument("config", help="trial YAML (fields: name, seed, device, threads, data, model, variant, "
                                  "train, eval; see sweeps/configs/*.yaml)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. train.lam=5")
    t.add_argument("--out", help="output directory (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out (only train.epochs, "
                   "eval.*, name, device and threads may differ from the checkpoint's config)")
    t.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a saved model under any attack spec", formatter_class=fmt)
    e.add_argument("checkpoint", help="a checkpoint directory or checkpoint.pt")
    e.add_argument("--norm", choices=["linf", "l2"], help="default: the trial's eval attack")
    e.add_argument("--eps", type=float, help="radius in pixel units (default: the trial's)")
    e.add_argument("--steps", type=int, help="PGD steps (default: the trial's)")
    e.add_argument("--step-size", type=float, help="default eps/4")
    e.add_argument("--restarts", type=int, default=1, help="independent starts; per example the best is kept")
    e.add_argument("--random-start", default="auto", choices=["auto", "none", "uniform", "gaussian"],
                   help="auto: uniform in the ball (adversarial), x + 0.01 N(0,1) (hypocritical/targeted), "
                        "x + 0.001 N(0,1) (stability)")
    e.add_argument("--best-iterate", action="store_true", help="PGD: keep each example's best iterate")
    e.add_argument("--method", choices=["pgd", "apgd"],
                   help="attack: pgd, or apgd (Croce & Hein 2020: step 2 eps halved at checkpoints, momentum 0.75, "
                        "best iterate; --step-size does not apply) (default: the trial's, else pgd)")
    e.add_argument("--score", choices=["ce", "margin"],
                   help="what the adversarial/hypocritical attacks ascend: ce, or margin (DLR); the stability "
                        "attack always ascends KL (default: the trial's, else ce)")
    e.add_argument("--certify", nargs="?", const="crown", choices=["none", "ibp", "crown-ibp", "crown"],
                   help="also certified upper bounds of R_hyp(D-) and R_adv(D+) at the same eps/norm: ibp (cheap, "
                        "loose), crown-ibp, crown (tightest; the default of a bare --certify) (default: the "
                        "trial's eval.certify, else none)")
    e.add_argument("--targeted", action="store_true", help="per-label targeted success on D- (Fig. 3)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--json", help="also write the attack spec and metrics here")
    e.set_defaults(func=cmd_eval)

    f = sub.add_parser("frontier", help="rebuild a sweep's frontier (csv/png/html) from its MLflow runs",
                       description="Rebuild frontier.csv/png/html of a finished or interrupted sweep from its MLflow "
                                   "child runs (unfinished ones are skipped), log them to the sweep's parent run "
                                   "and rewrite the experiment's frontier chart.")
    f.add_argument("--experiment", required=True, help="MLflow experiment of the sweep, e.g. thrm_lambda-local")
    f.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    f.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run (default: the experiment's latest)")
    f.add_argument("--out", help="directory for the artefacts (default frontier-<parent run id prefix>)")
    f.add_argument("--label-key", help="trial field labelling the points (default: the one the sweep recorded, "
                                       "else train.lam)")
    f.set_defaults(func=cmd_frontier)

    _add_audit_parser(sub, fmt)

    u = sub.add_parser("ui", help="serve the MLflow UI over ./mlflow.db on 127.0.0.1 (make ui)", formatter_class=fmt,
                       description="The MLflow UI over a sweep's local SQLite store, bound to 127.0.0.1 only.")
    u.add_argument("--db", default="mlflow.db", help="the SQLite store a sweep wrote (default: ./mlflow.db)")
    u.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (the port the sweeps' links use)")
    u.set_defaults(func=cmd_ui)

    v = sub.add_parser("validate-cluster", help="check Ray cluster files offline (exit 0 valid, 1 invalid, "
                                                "2 unreadable)",
                       description="Check cluster files for `ray up` offline: Ray's prepare_config + validate_config "
                                   "(ray-schema.json) and hyporay's rules (GPU worker types, integer resources, "
                                   "image = installed Ray, shared storage, MLflow on the head). One line per problem.")
    v.add_argument("files", nargs="*", default=["cluster.yaml"], metavar="FILE",
                   help="cluster files (default: cluster.yaml)")
    v.set_defaults(func=cmd_validate_cluster)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_user_command(lambda: args.func(args), "hyporay")


if __name__ == "__main__":
    sys.exit(main())
