"""The driver every sweep and search goes through: inputs checked, profile chosen, the plan it is handed built and
validated, data loaded once, Ray started, MLflow's experiment and parent run opened, one Ray Tune run, the results
read once into the runs table, artefacts and the closing summary. A grid sweep (``hyporay.engine.grid``) and an
Optuna search (``hyporay.engine.optuna.plan``) differ only in who proposes the trials and who may stop one early;
the driver imports neither (``hyporay.engine.launch`` picks the plan)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from hyporay import tracking
from hyporay.engine.output import say
from hyporay.engine.trials import absolute_paths


def check_writable(storage: str, flag: str) -> None:
    """A local storage path must be a directory this process can create and write (remote URIs are Ray's to
    check): one line naming the flag otherwise, before anything is written."""
    if "://" in storage:
        return
    from hyporay.config import ConfigError

    path = Path(storage)
    probe = path
    while not probe.exists():  # the nearest part of the path that exists: the directories below get created
        if probe.is_symlink():
            raise ConfigError(f"{flag}: cannot create {storage}: {probe} is a broken symbolic link")
        probe = probe.parent
    why = ("is not a directory" if not probe.is_dir() else "is not writable" if not os.access(probe, os.W_OK | os.X_OK)
           else "does not take new directories" if probe != path and _refuses_dirs(probe) else "")
    if why:
        raise ConfigError(f"{flag}: cannot write Ray Tune's storage to {storage} ({probe} {why}); pass a writable "
                          "directory, or s3://bucket/prefix on a cluster")


def _refuses_dirs(parent: Path) -> bool:
    """Whether ``parent`` refuses a new directory (virtual file systems such as /proc tell root they are writable
    and refuse every one): a probe directory made and removed at once."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hyporay-probe-", dir=parent))
    except OSError:
        return True
    return False


class Driver:
    """Runs one plan (``plan_class(driver)``: a ``GridPlan`` or a ``StudyPlan``, chosen by the caller) through every
    step; the plan says what its trials are, who proposes them and what is published at the end."""

    def __init__(self, defn, args, configs_dir: Path, plan_class):
        self.defn, self.args, self.configs_dir, self.plan_class = defn, args, configs_dir, plan_class
        self.workdir = Path.cwd()
        # on a cluster both come from the environment cluster.yaml sets up (one place for each)
        self.tracking_uri = (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                             or tracking.default_tracking_uri(self.workdir))
        raw = args.storage_path or os.environ.get("HYPORAY_STORAGE_PATH") or "hyporay_runs"
        self.storage_flag = "--storage-path" if args.storage_path else "HYPORAY_STORAGE_PATH" if os.environ.get(
            "HYPORAY_STORAGE_PATH") else "--storage-path (default hyporay_runs)"
        self.storage = raw if "://" in raw else str((self.workdir / raw).resolve())
        if getattr(args, "tracking_patience", None):
            tracking.set_patience(args.tracking_patience)
        self.info = None

    def prepare(self, quiet: bool = False):
        """Everything before work starts: inputs checked, profile chosen, every trial planned and validated."""
        from hyporay.engine.definition import load_profile, profile_name

        if self.args.profile != "auto":
            load_profile(self.configs_dir, self.args.profile)  # a missing or malformed profile: one line, now
        plan = self.plan_class(self)
        plan.check_inputs()  # cheap checks first: nothing starts before the inputs are known to be good
        if not self.args.dry_run:
            check_writable(self.storage, self.storage_flag)
            tracking.check_reachable(plan.tracking_uri())
        self.profile_ref, why = plan.profile_choice()
        self.profile = profile_name(self.profile_ref)
        if not quiet:
            say(f"profile: {self.profile} ({why})")
        self.prof = load_profile(self.configs_dir, self.profile_ref)
        plan.build()
        return plan

    def run(self) -> int:
        if not self.args.verbose:
            from hyporay.engine.console import quiet_logs

            quiet_logs()
        plan = self.plan = self.prepare()
        if self.args.dry_run:
            plan.dry_run()
            return 0
        datasets = plan.load_data()
        # the tracking store (a fresh SQLite file takes seconds to create) while Ray starts: the two wait on
        # different things
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            store = pool.submit(self.open_store, plan)
            self.start_ray()
            store.result()
        plan.place(self.resources)
        plan.open_tracking()
        plan.announce()
        results = self.fit(plan, datasets)
        return plan.finish(results)

    def open_store(self, plan) -> None:
        """The MLflow store and the plan's experiment (a fresh SQLite file takes seconds: run while Ray starts); a
        resumed grid keeps the experiment it recorded."""
        plan.experiment, plan.exp_id = plan.experiment_ref()
        if plan.exp_id is None:
            plan.exp_id = tracking.open_store(self.tracking_uri, plan.experiment)

    def experiment_name(self) -> str:
        return self.args.experiment or f"{self.defn.name}-{self.profile}"

    # --- pieces the plans share ---------------------------------------------------------------------------

    def cluster(self):
        """Connect to the cluster named by --address / RAY_ADDRESS (only then: a local Ray waits until the plan is
        validated); its ClusterInfo, or None."""
        from hyporay.cluster.resources import cluster_info, init_ray, joins_cluster

        if self.info is None and joins_cluster(self.args.address):
            init_ray(self.args.address)
            self.info = cluster_info()
        return self.info

    def choose(self, requested: str) -> tuple[str, str]:
        import torch

        from hyporay.engine.definition import choose_profile, is_profile_path

        info = self.cluster() if requested == "auto" else None
        ref, why = choose_profile(requested, info, torch.cuda.device_count())
        if is_profile_path(ref):
            ref = str(Path(ref).expanduser().resolve())
        return ref, why

    def base_trial(self, sweep_defaults: dict) -> dict:
        """The profile's trial section, the sweep's own fields, then ``--set``; paths absolute (workers run
        elsewhere)."""
        from hyporay.config import merge, parse_overrides
        from hyporay.dotted import put

        own: dict = {}
        for k, v in sweep_defaults.items():
            put(own, k, v)
        return absolute_paths(merge(merge(self.prof.get("trial", {}), own), parse_overrides(self.args.set)),
                              self.workdir)

    def start_ray(self) -> None:
        from hyporay.cluster.resources import cluster_info, init_ray, trial_resources

        if self.info is None:
            init_ray(self.args.address)
            self.info = cluster_info()
        res = self.prof.get("resources", {})
        self.resources = trial_resources(self.info, cpus_per_trial=self.args.cpus_per_trial or res.get(
            "cpus_per_trial", 1), gpu_fraction=self.args.gpu_fraction or res.get("gpu_fraction", 1.0),
            gpus_per_trial=self.args.gpus_per_trial)

    def meta(self, experiment_id: str, parent_id: str, tags: dict, **extra) -> dict:
        meta = {"tracking_uri": self.tracking_uri, "experiment_id": experiment_id, "parent_run_id": parent_id,
                "tracking_patience": tracking.patience(),
                "tags": {"profile": self.profile, tracking.SWEEP_TAG: self.defn.name, **tags}, **extra}
        if self.args.audit:
            meta["audit"] = {}  # run_audit options (empty: the defaults of `hyporay audit`)
        if self.args.chaos_exit_after_epoch is not None:
            meta["chaos_exit_after_epoch"] = {"epoch": self.args.chaos_exit_after_epoch,
                                              "marker_dir": str(Path(self.args.chaos_dir or self.workdir).resolve()),
                                              **extra.pop("chaos", {})}
        return meta

    def fit(self, plan, datasets):
        """One Ray Tune run of the plan: trials named as their MLflow runs, hyporay's console (or Tune's own with
        --verbose), retries from the last checkpoint."""
        from ray import tune

        from hyporay.engine.console import Console, Events, name_of
        from hyporay.engine.trainable import tune_trainable

        trainable = tune.with_resources(tune.with_parameters(tune_trainable, datasets=datasets), self.resources)
        events = []
        if not self.args.verbose:
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's legacy console honours a progress reporter
            events = [Events(self.args.max_failures, say)]
        console = None if self.args.verbose else Console(plan.total(), self.args.progress_every, plan.axes(), say,
                                                         plan.outcome_of)
        run_config = tune.RunConfig(
            name=plan.run_dir_name, storage_path=self.storage, verbose=2 if self.args.verbose else 1,
            progress_reporter=console, callbacks=[*plan.callbacks(), *events],
            failure_config=tune.FailureConfig(max_failures=self.args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
        tune_config = tune.TuneConfig(reuse_actors=True,  # same resources: no worker start per trial
                                      trial_name_creator=name_of, trial_dirname_creator=name_of,
                                      **plan.tune_config())
        tuner = plan.tuner(trainable, tune_config, run_config)
        start = time.perf_counter()
        results = tuner.fit()
        self.seconds = time.perf_counter() - start
        return results

    def art_dir(self, name: str) -> Path:
        return Path(self.storage if "://" not in self.storage else self.workdir / "hyporay_runs") / name / "artefacts"
