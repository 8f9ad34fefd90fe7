"""The command line of every sweep and search: one vocabulary, every flag with help text, argparse types that
refuse bad values before anything starts. No heavy import here: ``--help`` answers in a moment."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from hyporay.user_errors import OneLineParser


class Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default unless it is None (those flags say in their help what None means)."""

    def _get_help_string(self, action):
        return action.help if action.default in (None, False) else super()._get_help_string(action)


def _number(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read {raw!r} as a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {raw}")
    return v


def positive(raw: str) -> float:
    """argparse type: a finite number > 0 (resource flags are checked before Ray starts)."""
    v = _number(raw)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {raw}")
    return v


def gpu_share(raw: str) -> float:
    """argparse type: a share of one GPU, in (0, 1] (more GPUs per trial: --gpus-per-trial)."""
    v = _number(raw)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"a share of one GPU is in (0, 1], e.g. 0.5 packs two trials per GPU "
                                         f"(more per trial: --gpus-per-trial); got {raw}")
    return v


def non_negative(raw: str) -> float:
    v = _number(raw)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return v


def fraction(raw: str) -> float:
    v = _number(raw)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {raw}")
    return v


def count(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number >= ``minimum``."""
    def parse(raw: str) -> int:
        try:
            v = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read {raw!r} as a whole number") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    parse.__name__ = "count"
    return parse


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags every sweep and search has (the script adds its axes or its search space)."""
    p = OneLineParser(prog=prog, description=description, formatter_class=Help)
    p.add_argument("--profile", default="auto", help="auto | local | paper | a YAML name under sweeps/configs/ | a "
                   "path to a profile .yaml; auto = paper when the Ray cluster has GPUs, else local")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trial field for every trial, e.g. train.epochs=3 (repeatable)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                                          "sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default <sweep>-<profile>)")
    p.add_argument("--storage-path", help="Ray Tune storage: local dir, NFS path or s3://bucket/prefix (shared on a "
                                          "cluster; default: HYPORAY_STORAGE_PATH, else hyporay_runs)")
    p.add_argument("--tracking-patience", type=positive, metavar="SECONDS",
                   help="how long a trial waits for a tracking server that does not answer before it stops (--resume "
                        "continues it; default: HYPORAY_TRACKING_PATIENCE, else 600)")
    p.add_argument("--max-failures", type=count(0), default=2, help="retries per trial, from its last checkpoint")
    p.add_argument("--cpus-per-trial", type=positive, help="CPUs per trial (default: the profile's)")
    p.add_argument("--gpu-fraction", type=gpu_share, help="GPU share per trial when the cluster has GPUs, in (0, 1]: "
                                                          "0.5 packs two trials per GPU (default: the profile's)")
    p.add_argument("--gpus-per-trial", type=non_negative, help="force a GPU request (autoscaling clusters whose "
                                                               "GPU workers are not up yet)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray on 127.0.0.1)")
    p.add_argument("--audit", action="store_true",
                   help="audit each finished trial's final checkpoint (hyporay audit, default settings): MLflow "
                        "artefacts audit.md + audit.json and tag audit=pass|flag on its run")
    p.add_argument("--dry-run", action="store_true", help="print the trials it would run and exit")
    p.add_argument("--verbose", action="store_true", help="Ray Tune's own full console output instead of hyporay's "
                                                          "trade-off table")
    p.add_argument("--progress-every", type=positive, default=30.0, metavar="SECONDS",
                   help="seconds between two progress lines on the console")
    p.add_argument("--chaos-exit-after-epoch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--chaos-dir", help=argparse.SUPPRESS)
    return p


def add_sweep_flags(p: argparse.ArgumentParser, axes) -> None:
    for a in axes:
        if a.flag:
            p.add_argument(a.flag, help=a.help + " (comma-separated; default: the profile's)")
    p.add_argument("--seeds", type=count(1), help="repeat every trial with seeds 0..N-1 (default: the profile's)")
    p.add_argument("--name", help="run name (default <sweep>-<profile>-<timestamp>-<random>)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="NAME",
                   help="continue an interrupted sweep (the latest one, or NAME) without re-running finished trials")


def parse_list(raw: str, typ: Callable, flag: str) -> list:
    """``"0,5,10"`` -> [0.0, 5.0, 10.0]; ConfigError (one line) naming the flag."""
    from hyporay.config import ConfigError

    out = []
    for tok in raw.split(","):
        tok = tok.strip()
        if not tok:
            continue
        try:
            out.append(typ(tok))
        except ValueError:
            raise ConfigError(f"{flag}: cannot read {tok!r} as {typ.__name__}") from None
    if not out:
        raise ConfigError(f"{flag}: give at least one value")
    return out
