"""A sweep or search script's command line to a run: the parser of its definition, the plan that runs it (a grid for
a ``SweepDefinition``, an Optuna study for a ``SearchDefinition``), handed to the ``Driver``."""
from __future__ import annotations

from pathlib import Path

from hyporay.user_errors import run_user_command
from hyporay.cluster.resources import bind_loopback_if_local, shutdown_ray
from hyporay.engine import flags
from hyporay.engine.definition import SweepDefinition, resolve
from hyporay.engine.definition import configs_dir as default_configs_dir
from hyporay.engine.optuna.definition import SearchDefinition


def build_parser(defn: SweepDefinition | SearchDefinition):
    p = flags.parser(f"sweeps/{defn.name}.py", defn.description)
    if isinstance(defn, SearchDefinition):
        from hyporay.engine.optuna.space import add_search_flags

        add_search_flags(p, defn)
    else:
        flags.add_sweep_flags(p, defn.axes)
        if defn.options is not None:
            resolve(defn.options)(p)
    return p


def plan_class(defn: SweepDefinition | SearchDefinition):
    """The plan that runs ``defn``: ``StudyPlan`` (Optuna proposes, its pruner stops) or ``GridPlan``."""
    if isinstance(defn, SearchDefinition):
        from hyporay.engine.optuna.plan import StudyPlan

        return StudyPlan
    from hyporay.engine.grid import GridPlan

    return GridPlan


def driver(defn: SweepDefinition | SearchDefinition, args, configs_dir: Path | None = None):
    from hyporay.engine.driver import Driver

    return Driver(defn, args, configs_dir or default_configs_dir(), plan_class(defn))


def main(defn: SweepDefinition | SearchDefinition, argv: list[str] | None = None,
         configs_dir: Path | None = None) -> int:
    """A sweep or search script's entry point: exit status 0 done, 1 some trial failed, 2 user error (one line),
    130 interrupted (``--resume`` continues)."""
    try:
        return run_command(defn, argv, configs_dir)
    finally:
        shutdown_ray()


def run_command(defn: SweepDefinition | SearchDefinition, argv: list[str] | None = None,
                configs_dir: Path | None = None) -> int:
    """``main`` without shutting Ray down afterwards (a bench running several studies on one Ray)."""
    args = build_parser(defn).parse_args(argv)
    bind_loopback_if_local(args.address)  # before anything imports ray
    return run_user_command(lambda: driver(defn, args, configs_dir).run(), defn.name)


def plan(defn: SweepDefinition | SearchDefinition, argv: list[str], configs_dir: Path | None = None):
    """The plan a command line makes (what ``--dry-run`` lists), without starting anything: for tests and tools
    (e.g. that a committed report still matches the trials the code would run)."""
    args = build_parser(defn).parse_args([*argv, "--dry-run"])
    return driver(defn, args, configs_dir).prepare(quiet=True)


def argv_of(options: dict) -> list[str]:
    """Keyword options as the command line of a sweep script: ``lambdas=[0, 10]`` -> ``--lambdas 0,10``,
    ``dry_run=True`` -> ``--dry-run``, ``set={"train.epochs": 3}`` -> ``--set train.epochs=3``; None and False are
    left out."""
    import json

    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif key == "set":
            pairs = value.items() if isinstance(value, dict) else [tuple(str(v).split("=", 1)) for v in value]
            for k, v in pairs:
                argv += ["--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
        elif isinstance(value, (list, tuple)):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def run_python(defn: SweepDefinition | SearchDefinition, configs_dir: Path | None = None, shutdown: bool = True,
               **options):
    """``hyporay.engine.run``: the same run as the script's command line made of ``options``; returns the runs
    table (``hyporay.tracking.runs.table``), with ``attrs``: status (the script's exit status), tracking_uri,
    experiment_id, parent_run_id. Bad options raise ``ConfigError`` (one line) before anything starts."""
    from hyporay.config import ConfigError
    from hyporay.tracking.runs import table

    parser = build_parser(defn)

    def error(message: str):
        raise ConfigError(f"{defn.name}: {message}")

    parser.error = error  # an exception for Python callers, not argparse's exit
    args = parser.parse_args(argv_of(options))
    bind_loopback_if_local(args.address)  # before anything imports ray (a notebook may have imported it already)
    d = driver(defn, args, configs_dir)
    try:
        status = d.run()
    finally:
        if shutdown:
            shutdown_ray()
    plan = d.plan
    df = getattr(plan, "table", None)
    df = table([]) if df is None else df
    df.attrs.update(status=status, tracking_uri=d.tracking_uri, experiment_id=getattr(plan, "exp_id", None),
                    parent_run_id=getattr(plan, "parent_id", None))
    return df
