"""The Ray Tune function trainable around ``run_trial``: MLflow child run, checkpoints, resume.

``config["plan"]``: the trial (``trial``: full config, validated on the driver; ``key``: its identity, which finds
its MLflow run again after a retry or ``--resume``; ``name``: the run's name; ``tags``: what the plan knows of it);
``config["meta"]``: tracking URI, experiment and parent run ids, tags for every run, the search's objective.
MLflow is written in few round trips: the run found or created with all its tags, params in one batch, one batch
of metrics per evaluation, and nothing at all for a run that is already a result.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hyporay import provenance
from hyporay.dotted import flatten
from hyporay import tracking
from hyporay.engine import mlflow_ui
from hyporay.engine.trials import data_key


def trial_tags(trial: dict) -> dict[str, str]:
    return {"trainer": str(trial.get("train", {}).get("trainer")), "dataset": str(trial.get("data", {}).get("name")),
            "architecture": str(trial.get("model", {}).get("name")),
            "variant": str(trial.get("variant", {}).get("name", "quality")),
            "lam": f"{float(trial.get('train', {}).get('lam', 0) or 0):g}", "seed": str(trial.get("seed", 0))}


def tune_trainable(config: dict, datasets: dict | None = None) -> None:
    """Run one planned trial inside Ray Tune (see the module doc). Metrics go to MLflow (per evaluated epoch,
    step = epoch) and to Tune with a ``tune.Checkpoint``; a retry or ``Tuner.restore`` resumes from the last."""
    import ray
    from ray import tune

    from hyporay.experiment import Diverged, run_trial

    plan, meta = config["plan"], config["meta"]
    trial, key = plan["trial"], plan["key"]
    tracking.set_patience(meta.get("tracking_patience"))  # the driver's limit, whatever this worker's environment
    c = tracking.client(meta["tracking_uri"])
    node = ray.get_runtime_context().get_node_id()
    prov = tracking.provenance_tags(provenance.of_trial(trial))
    tags = {**meta.get("tags", {}), **trial_tags(trial), **plan.get("tags", {}), **prov, "ray_node_id": node,
            **mlflow_ui.run_colour(trial["train"]["trainer"])}
    run, created = tracking.find_or_create_child(c, meta["experiment_id"], meta["parent_run_id"], key, plan["name"],
                                                 tags)
    run_id = run.info.run_id
    if tracking.is_final(run):
        # a --resume can restart a trial that had finished (or diverged) just before the interrupt: its run is a
        # result already; leave it as it is (no second end time, no re-logged epoch) and hand Tune its metrics
        tune.report({**run.data.metrics, "mlflow_run_id": run_id})
        return
    if created:
        tracking.log_params(c, run_id, {**flatten(trial), **meta.get("params", {})})
        # λ and ε as metrics too: the UI sorts the runs table by them numerically (params sort as text)
        tracking.log_metrics(c, run_id, {"lam": trial["train"]["lam"], "eps": trial["train"]["attack"]["eps"]},
                             step=0)
        last_logged = -1
    else:
        tracking.set_tags(c, run_id, {"ray_node_id": node})  # the last node it ran on
        tracking.note_code_change(c, run, prov)  # a retry or --resume on other code: the run is marked mixed
        # a trial restarted without a checkpoint recomputes epochs it already logged (bit-identically): log once
        last_logged = max((int(m.step) for m in tracking.retry(c.get_metric_history, run_id, "epoch")), default=-1)
    resume_dir = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="hyporay-resume-"))
        with ckpt.as_directory() as d:
            shutil.copytree(d, resume_dir, dirs_exist_ok=True)
        if run.info.status != "RUNNING":
            tracking.retry(c.update_run, run_id, "RUNNING")
    chaos = meta.get("chaos_exit_after_epoch")
    objective = meta.get("objective")
    audit = meta.get("audit")  # None, or run_audit options: audit the final checkpoint (kept here)
    audit_dir = Path(tempfile.mkdtemp(prefix="hyporay-audit-")) if audit is not None else None

    def report(metrics: dict, checkpoint_dir: str) -> None:
        epoch = int(metrics.get("epoch", 0))
        if objective is not None:
            from hyporay.engine.optuna.definition import Objective, objective_values

            values = objective_values(metrics, Objective(**objective))
            if values is not None:
                metrics = {**metrics, "objective": values[0]}
        if audit_dir is not None:
            shutil.copy2(Path(checkpoint_dir) / "checkpoint.pt", audit_dir / "checkpoint.pt")
        if epoch > last_logged:
            tracking.log_metrics(c, run_id, metrics, step=epoch)
        tune.report({**metrics, "mlflow_run_id": run_id}, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        if chaos is not None and epoch >= int(chaos["epoch"]):
            _die_once(Path(chaos["marker_dir"]) / f"{chaos.get('marker') or key}.died", epoch)

    try:
        data = (datasets or {}).get(data_key(trial))
        try:
            final = run_trial(trial, report, data=data, resume_from=resume_dir)
        except Diverged as exc:  # a result, not a crash: FAILED, tagged, and not retried (it would diverge again)
            tracking.mark_diverged(c, run_id, exc.epoch, exc.loss)
            tune.report({"diverged": 1.0, "epoch": float(exc.epoch), "mlflow_run_id": run_id})
            return
        tracking.mark_degenerate(c, run_id, final)
        if audit_dir is not None:
            log_audit(c, run_id, trial, audit, audit_dir, resume_dir, data)
    except tracking.TrackingUnavailable:
        raise  # the server is gone: the run stays RUNNING, and --resume continues it from its last checkpoint
    except BaseException:
        tracking.retry(c.set_terminated, run_id, "FAILED")
        raise
    finally:
        for d in (resume_dir, audit_dir):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
    tracking.retry(c.set_terminated, run_id, "FINISHED")


def _die_once(marker: Path, epoch: int) -> None:
    """Fault injection for tests: the first trial to get here dies once, hard, like a lost worker."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(epoch).encode())
    os.close(fd)
    os._exit(1)


AUDIT_TAG = "audit"                  # pass | flag (| error: the audit itself crashed, see audit_error.txt)
AUDIT_FLAGGED_TAG = "audit.flagged"  # the flagged checks, comma-separated


def log_audit(c, run_id: str, trial: dict, options: dict, audit_dir: Path, resume_dir: Path | None, data) -> None:
    """Audit a finished trial's final checkpoint (``hyporay.audit.audit_checkpoint``) and log the table as
    MLflow artefacts ``audit.md`` + ``audit.json`` and the tag ``audit=pass|flag``. A crash of the audit does
    not fail the trained trial: it is logged as ``audit_error.txt`` and ``audit=error``."""
    import traceback

    from hyporay.audit.checkpoint import audit_checkpoint
    from hyporay.experiment import CHECKPOINT_FILE

    ckpt = audit_dir / CHECKPOINT_FILE
    if not ckpt.is_file() and resume_dir is not None:  # a finished trial restored: nothing was reported again
        ckpt = resume_dir / CHECKPOINT_FILE
    out = audit_dir / "report"
    out.mkdir(exist_ok=True)
    try:
        report = audit_checkpoint(ckpt, device=trial.get("device", "auto"), data=data, **(options or {}))
    except Exception:
        (out / "audit_error.txt").write_text(traceback.format_exc())
        tracking.retry(c.log_artifact, run_id, str(out / "audit_error.txt"))
        tracking.retry(c.set_tag, run_id, AUDIT_TAG, "error")
        print(f"audit of run {run_id} failed:\n{traceback.format_exc()}", flush=True)
        return
    (out / "audit.md").write_text(report.to_markdown())
    (out / "audit.json").write_text(report.to_json())
    for name in ("audit.md", "audit.json"):
        tracking.retry(c.log_artifact, run_id, str(out / name))
    tracking.set_tags(c, run_id, {AUDIT_TAG: report.verdict, **({AUDIT_FLAGGED_TAG: ",".join(
        r.check for r in report.flagged)} if report.flagged else {})})
