"""What a sweep prints while it runs: one line per finished trial (its name as in MLflow, its risks), and every
``--progress-every`` seconds a progress line (done / running / pending, elapsed, ETA) with a status table of the
running trials. A Ray Tune ``ProgressReporter`` (public API), used with Tune's legacy console output; ``--verbose``
gives Tune's own output back instead."""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from ray.tune import Callback, ProgressReporter

from hyporay import metrics as M

COLUMNS = (("epoch", "epoch"), ("natural", M.NATURAL_RISK), ("hypocritical", M.HYPOCRITICAL_RISK),
           ("A", M.ACC_ADV))


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 100 and not v.is_integer() else f"{v:g}"
    return str(v)


def quiet_logs() -> None:
    """hyporay's console replaces Tune's per-failure tracebacks (``Events`` says what happened in one line) and
    MLflow's schema-creation chatter; ``--verbose`` keeps them."""
    import logging
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _error_line(trial) -> str:
    """What went wrong, in a few words: a lost worker, or the exception the trial raised (from the error file
    Tune has just written for it)."""
    from pathlib import Path

    try:
        text = Path(trial.error_file).read_text().rsplit("Failure #", 1)[-1]
    except (OSError, TypeError):
        return "failed"
    if "ActorDiedError" in text or "worker process has died" in text or "node has died" in text:
        return "its worker died"
    last = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not last:
        return "failed"
    # the exception's own line, without its qualified class name (hyporay's one-line errors read as they are)
    return re.sub(r"^[A-Za-z_][\w.]*(Error|Exception|Unavailable): ", "", last[-1])[:240]


class Events(Callback):
    """One line when a trial is retried (its worker died, or it raised) and when it fails for good."""

    def __init__(self, max_failures: int, say: Callable[[str], None] = print):
        self.max_failures, self.say, self.start = max_failures, say, time.time()

    def on_trial_recover(self, iteration, trials, trial, **info):
        epoch = int((trial.last_result or {}).get("epoch", 0) or 0)
        self.say(f"[{duration(time.time() - self.start):>6}] retry      {name_of(trial):<34} {_error_line(trial)}; "
                 f"continues from its checkpoint at epoch {epoch} (retry {trial.num_failures} of "
                 f"{self.max_failures})")


def plan_of(trial) -> dict:
    return (trial.config or {}).get("plan") or {}


def name_of(trial) -> str:
    """A Tune trial's name: its MLflow run's (``Tuner`` uses it for directories too)."""
    return plan_of(trial).get("name") or str(trial.trial_id)


def epochs_of(trial) -> int:
    return int(((plan_of(trial).get("trial") or {}).get("train") or {}).get("epochs", 1) or 1)


class Console(ProgressReporter):
    """``axes``: (column label, dotted trial field) shown per trial besides its name, e.g. ("λ", "train.lam")."""

    def __init__(self, total: int, every: float, axes: list[tuple[str, str]], say: Callable[[str], None] = print,
                 outcome: Callable[[object], str] | None = None):
        self.total, self.every, self.axes, self.say = total, every, axes, say
        self.outcome = outcome or (lambda trial: "")
        self.start = time.time()
        self.last = 0.0
        self.announced: set[str] = set()

    # ProgressReporter API
    def setup(self, start_time=None, total_samples=None, metric=None, mode=None, **kwargs):
        if start_time:
            self.start = start_time
        if total_samples:
            self.total = max(self.total, int(total_samples))

    def should_report(self, trials, done: bool = False) -> bool:
        finished = any(t.status in ("TERMINATED", "ERROR") and t.trial_id not in self.announced for t in trials)
        return done or finished or time.time() - self.last >= self.every

    def report(self, trials, done: bool, *sys_info) -> None:
        for t in trials:
            if t.status in ("TERMINATED", "ERROR") and t.trial_id not in self.announced:
                self.announced.add(t.trial_id)
                self.say(self.finished_line(t))
        if done or time.time() - self.last >= self.every:
            self.last = time.time()
            for line in self.progress(trials):
                self.say(line)

    # lines
    def _axis_text(self, trial) -> str:
        cfg = plan_of(trial).get("trial") or {}
        parts = []
        for label, key in self.axes:
            v = cfg
            for k in key.split("."):
                v = v.get(k) if isinstance(v, dict) else None
            parts.append(f"{label} {_fmt(v)}")
        return "  ".join(parts)

    def finished_line(self, trial) -> str:
        r = trial.last_result or {}
        how = self.outcome(trial) or ("failed" if trial.status == "ERROR" else "diverged" if r.get("diverged")
                                      else "degenerate" if r.get(M.DEGENERATE) else "done")
        risks = "  ".join(f"{label} {_fmt(r.get(key))}" for label, key in COLUMNS if key in r)
        if trial.status == "ERROR":
            risks = _error_line(trial)
        return f"[{duration(time.time() - self.start):>6}] {how:<10} {name_of(trial):<34} {risks}"

    def progress(self, trials) -> list[str]:
        count = {s: sum(t.status == s for t in trials) for s in ("TERMINATED", "ERROR", "RUNNING", "PENDING",
                                                                   "PAUSED")}
        done = count["TERMINATED"] + count["ERROR"]
        pending = max(0, self.total - done - count["RUNNING"])
        total_epochs = sum(epochs_of(t) for t in trials) + max(0, self.total - len(trials)) * (
            max((epochs_of(t) for t in trials), default=1))
        done_epochs = sum(epochs_of(t) if t.status in ("TERMINATED", "ERROR")
                          else int((t.last_result or {}).get("epoch", 0) or 0) for t in trials)
        # pruned and diverged trials end early: their remaining epochs are never trained
        total_epochs -= sum(epochs_of(t) - int((t.last_result or {}).get("epoch", 0) or 0) for t in trials
                            if t.status == "TERMINATED" and int((t.last_result or {}).get("epoch", 0) or 0))
        elapsed = time.time() - self.start
        eta = elapsed * (total_epochs - done_epochs) / done_epochs if done_epochs else math.inf
        failed = f" ({count['ERROR']} failed)" if count["ERROR"] else ""
        lines = [f"[{duration(elapsed):>6}] progress: {done}/{self.total} done{failed}, {count['RUNNING']} running, "
                 f"{pending} pending; elapsed {duration(elapsed)}, ETA {duration(eta) if done_epochs else '?'}"]
        running = [t for t in trials if t.status == "RUNNING"]
        for t in running:
            r = t.last_result or {}
            risks = "  ".join(f"{label} {_fmt(r.get(key))}" for label, key in COLUMNS if key in r)
            lines.append(f"{'':9}running    {name_of(t):<34} {self._axis_text(t)}  "
                         f"{risks or 'epoch 0/' + str(epochs_of(t))}")
        return lines
