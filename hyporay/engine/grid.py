"""A grid sweep on the engine: the product of its axes (or its own grid) x seeds, each trial validated before
anything starts, TRADES/THRM at λ = 0 planned once as natural training, one Tune trial per planned trial, and
``--resume`` through ``Tuner.restore``."""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

from hyporay import tracking
from hyporay.engine import publish
from hyporay.engine.definition import (
    Planned,
    canonical,
    dedupe,
    name_all,
    name_keys,
    product,
    resolve,
)
from hyporay.engine.output import command_line, say
from hyporay.engine.trials import load_and_check, trial_key, with_plugins
from hyporay.tracking.tags import CURVES_TAG

# --- the sweep state kept for --resume ----------------------------------------------------------------------

STATE_FILE = "hyporay_sweep.json"


def state_root(storage: str) -> Path:
    return Path(storage) if "://" not in storage else Path("hyporay_runs")


def write_state(storage: str, name: str, state: dict) -> None:
    path = state_root(storage) / name / STATE_FILE  # remote storage: the driver-side state stays local
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1, default=str))


def find_state(storage: str, sweep: str, which: str) -> Path:
    from hyporay.config import ConfigError

    root = state_root(storage)
    if which != "latest":
        p = root / which / STATE_FILE
        if not p.is_file():
            raise ConfigError(f"--resume: no sweep named {which!r} under {root}")
        return p
    found = sorted((p for p in root.glob(f"*/{STATE_FILE}") if json.loads(p.read_text()).get("sweep") == sweep),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(f"--resume: no interrupted {sweep} sweep under {root}")
    return found[-1]



def check_definition(defn) -> None:
    """A sweep's axes, label and defaults name trial fields (ConfigError, one line, naming the first that does not)."""
    from hyporay.config import ConfigError, TrialConfig
    from hyporay.dotted import flatten

    known = set(flatten(TrialConfig().model_dump()))

    def ok(key: str) -> bool:
        return key in known or key.startswith(("model.kwargs.", "imports"))

    for what, key in ([("axis", a.key) for a in defn.axes] + [("label_key", defn.label_key)]
                      + [("defaults", k) for k in defn.defaults]):
        if not ok(key):
            near = sorted(k for k in known if k.split(".")[0] == key.split(".")[0])[:8]
            raise ConfigError(f"sweep {defn.name}: {what} {key!r} is not a trial field; e.g. {', '.join(near) or 'seed'}")


class GridPlan:
    """The plan of a ``SweepDefinition`` (see the module doc); ``driver``: the ``Driver`` that runs it."""

    def __init__(self, driver):
        self.d, self.defn, self.args = driver, driver.defn, driver.args
        self.resumed: dict | None = None
        self.planned: list[Planned] = []

    # --- before anything starts -----------------------------------------------------------------------------
    def check_inputs(self) -> None:
        from hyporay.config import ConfigError

        args = self.args
        if args.resume:
            self.resumed = json.loads(find_state(self.d.storage, self.defn.name, args.resume).read_text())
        elif args.name and "://" not in self.d.storage and (Path(self.d.storage) / args.name).exists():
            raise ConfigError(f"--name: a sweep named {args.name!r} already exists under {self.d.storage}; --resume "
                              f"{args.name} continues it, or choose another --name")

    def tracking_uri(self) -> str:
        return self.resumed["tracking_uri"] if self.resumed else self.d.tracking_uri

    def profile_choice(self) -> tuple[str, str]:
        if self.resumed:
            return (self.resumed.get("profile_ref", self.resumed["profile"]),
                    f"the profile of the resumed sweep {self.resumed['name']}")
        return self.d.choose(self.args.profile)

    def build(self) -> None:
        """Every planned trial, validated (one line naming the first bad field), named, deduplicated."""
        from hyporay.config import ConfigError, load_config
        from hyporay.engine.flags import parse_list

        if self.resumed:
            self.planned = [Planned(p["trial"], p["tags"], p["name"]) for p in self.resumed["plan"]]
            self.values, self.n_seeds = {}, len({p.config["seed"] for p in self.planned})
            return
        d, defn, args = self.d, self.defn, self.args
        check_definition(defn)
        base = d.base_trial(defn.defaults)
        values = {}
        for a in defn.axes:
            raw = getattr(args, a.flag.lstrip("-").replace("-", "_")) if a.flag else None
            if raw is not None:
                values[a.key] = parse_list(raw, a.type, a.flag)
            elif a.values is not None:
                values[a.key] = list(a.values)
            else:
                prof_vals = d.prof.get("sweep", {}).get(a.key)
                if not prof_vals:
                    raise ConfigError(f"profile {d.profile}: sweep.{a.key} is missing (values of the {a.flag} axis)")
                values[a.key] = list(prof_vals)
        n_seeds = args.seeds if args.seeds is not None else int(defn.seeds.get(d.profile, d.prof.get("seeds", 1)))
        seeds = list(range(n_seeds))
        if defn.grid is None:
            pairs = product(base, defn.axes, values, seeds)
        else:
            pairs = resolve(defn.grid)(base, values, seeds, d.profile)
        trainers = values.get("train.trainer")
        planned = []
        for trial, tags in pairs:
            cfg = load_config(trial).model_dump()  # every trial valid before any work
            cfg, shared = canonical(cfg, trainers)
            planned.append(Planned(with_plugins(cfg), {**tags, **shared}))
        self.planned = name_all(dedupe(planned), name_keys(defn))
        self.values, self.n_seeds = values, n_seeds

    def configs(self) -> list[dict]:
        return [p.config for p in self.planned]

    def dry_run(self) -> None:
        from hyporay.config import load_config

        shared = sum(CURVES_TAG in p.tags and "," in p.tags[CURVES_TAG] for p in self.planned)
        shape = ", ".join(f"{k} {','.join(map(str, v))}" for k, v in self.values.items())
        say(f"{self.defn.name}: {len(self.planned)} trials ({shape}; {self.n_seeds} seeds), profile {self.d.profile}"
            + (f"; {shared} natural-training trials (λ=0) shared by the TRADES and THRM curves" if shared else ""))
        for p in self.planned:
            t = p.config
            say(f"  {p.name:<40s} data={t['data']['name']} variant={t['variant']['name']} epochs={t['train']['epochs']}"
                f" train[{load_config(t).train.attack.describe()}]")
        say(f"eval attack: {load_config(self.planned[0].config).eval.attack.describe()}")

    def load_data(self) -> dict:
        return load_and_check(self.configs())

    def place(self, resources: dict) -> None:
        """Device and threads from what each trial gets (a resumed sweep keeps its own)."""
        from hyporay.config import load_config

        if not self.resumed:
            device, threads = ("cuda" if resources.get("gpu") else "cpu"), max(1, int(resources["cpu"]))
            for p in self.planned:
                p.config = load_config(p.config, {"device": device,
                                                  "threads": p.config.get("threads") or threads}).model_dump()
        self.keys = [trial_key(p.config) for p in self.planned]

    # --- MLflow and Tune --------------------------------------------------------------------------------------
    def experiment_ref(self) -> tuple[str, str | None]:
        """(experiment name, its id when already known: a resumed sweep's)."""
        r = self.resumed or {}
        return r.get("experiment") or self.d.experiment_name(), r.get("experiment_id")

    def open_tracking(self) -> None:
        from hyporay import provenance

        d, defn = self.d, self.defn
        if self.resumed:
            r = self.resumed
            self.run_dir_name, self.parent_id = r["name"], r["parent_run_id"]
            d.tracking_uri = r["tracking_uri"]
            self.command = r.get("command", "")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            # a random suffix: two sweeps started in the same second get their own Tune directories
            self.run_dir_name = d.args.name or f"{defn.name}-{d.profile}-{stamp}-{secrets.token_hex(2)}"
            c = tracking.client(d.tracking_uri)
            once = secrets.token_hex(8)  # finds the parent again if the answer to its create is lost in an outage
            tags = {tracking.ROLE_TAG: "sweep", tracking.SWEEP_TAG: defn.name, "profile": d.profile,
                    **({tracking.FRONTIER_LABEL_TAG: defn.label_key} if defn.frontier else {}), **defn.tags,
                    **tracking.provenance_tags(provenance.code()),
                    provenance.CONFIG: provenance.plan_hash(self.configs()), tracking.CREATE_TAG: once}
            parent = tracking.create_once(
                lambda: c.create_run(self.exp_id, run_name=self.run_dir_name, tags=tags),
                lambda: next(iter(c.search_runs([self.exp_id], filter_string=f"tags.`{tracking.CREATE_TAG}` = "
                                                f"'{once}'", max_results=1)), None))
            self.parent_id = parent.info.run_id
            self.command = command_line()
            tracking.log_params(c, self.parent_id, {
                "sweep": defn.name, "profile": d.profile, "n_trials": len(self.planned), "seeds": self.n_seeds,
                **{f"axis.{k}": v for k, v in self.values.items()}, "resources": d.resources,
                "storage_path": d.storage, "command": self.command})
            write_state(d.storage, self.run_dir_name, {
                "name": self.run_dir_name, "sweep": defn.name, "profile": d.profile, "profile_ref": d.profile_ref,
                "command": self.command, "experiment": self.experiment, "experiment_id": self.exp_id,
                "parent_run_id": self.parent_id, "tracking_uri": d.tracking_uri,
                "plan": [{"trial": p.config, "tags": p.tags, "name": p.name} for p in self.planned]})
        self.meta = d.meta(self.exp_id, self.parent_id, {})

    def announce(self) -> None:
        d = self.d
        info = d.info
        publish.announce(d, self, self.planned[0].config, self.defn.label_key, [
            f"{self.defn.name}: {len(self.planned)} trials on {info.nodes} node(s) ({info.cpus:g} CPU, {info.gpus:g} "
            f"GPU), {d.resources} per trial; Tune storage {d.storage}/{self.run_dir_name}"
            + (" (resumed)" if self.resumed else "")])

    def total(self) -> int:
        return len(self.planned)

    def axes(self) -> list[tuple[str, str]]:
        short = {"train.trainer": "trainer", "train.lam": "λ", "train.attack.eps": "ε", "model.name": "model",
                 "variant.name": "variant"}
        keys = [a.key for a in self.defn.axes] + ["seed"]
        return [(short.get(k, k.split(".")[-1]), k) for k in dict.fromkeys(keys)]

    def outcome_of(self, trial) -> str:
        return ""

    def callbacks(self) -> list:
        return []

    def tune_config(self) -> dict:
        return {}

    def tuner(self, trainable, tune_config, run_config):
        from ray import tune

        if self.resumed:
            return tune.Tuner.restore(f"{self.d.storage.rstrip('/')}/{self.run_dir_name}", trainable=trainable,
                                      resume_errored=True)
        plans = [{"trial": p.config, "key": k, "name": p.name, "tags": p.tags}
                 for p, k in zip(self.planned, self.keys)]
        return tune.Tuner(trainable, param_space={"plan": tune.grid_search(plans), "meta": self.meta},
                          tune_config=tune_config, run_config=run_config)

    # --- after the trials ---------------------------------------------------------------------------------------
    def finish(self, results) -> int:
        from hyporay.analysis import reports
        from hyporay.tracking import runs

        d, defn = self.d, self.defn
        errors = [r for r in results if r.error is not None]
        df = self.table = runs.read(d.tracking_uri, self.exp_id, self.parent_id)
        counts = df["outcome"].value_counts().to_dict() if not df.empty else {}
        done = counts.get("result", 0) + counts.get("degenerate", 0) + counts.get("diverged", 0)
        unfinished = len(self.planned) - done - len(errors)
        out_dir = d.art_dir(self.run_dir_name)
        artefacts, pts, caption = [], [], ""
        title = publish.title(defn.name, d.profile, df)
        if defn.frontier:
            pts, paths, caption = reports.frontier(df, out_dir, title, self.planned[0].config, d.profile,
                                                   defn.label_key)
            artefacts += paths
        if defn.after is not None:
            ctx = {"table": df, "trials": self.configs(), "plan": self.planned, "profile": d.profile,
                   "out_dir": out_dir, "args": d.args, "say": say, "command": self.command,
                   "parent_run_id": self.parent_id, "tracking_uri": d.tracking_uri}
            artefacts += resolve(defn.after)(ctx)
        c = tracking.client(d.tracking_uri)
        view = publish.to_parent(c, d.tracking_uri, self.exp_id, self.parent_id, df, artefacts,
                                 note=publish.note(title, caption, pts, df), label_key=defn.label_key,
                                 tags={"errored_trials": str(len(errors))})
        if not unfinished:  # an interrupted sweep's parent stays RUNNING until --resume completes it
            tracking.retry(c.set_terminated, self.parent_id,
                           "FAILED" if errors and len(errors) == len(self.planned) else "FINISHED")
        publish.summary(d, self, df, pts, caption, errors, unfinished, artefacts, view,
                        publish.resume_command(self.run_dir_name, d.args) if errors or unfinished else None)
        return 130 if unfinished else 1 if errors else 0
