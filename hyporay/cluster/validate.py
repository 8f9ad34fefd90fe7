"""Offline checks of a Ray cluster-launcher file (cluster.yaml) before `ray up`: `hyporay validate-cluster`.

Two layers, no cloud call and no credentials needed:

1. Ray's own: ``ray.autoscaler._private.util.prepare_config`` (merges the provider's defaults.yaml, the
   setup-command lists, docker checks, per-node-type min/max workers; for ``provider.type: local`` it also
   builds the single node type from head_ip/worker_ips) then ``validate_config`` (Ray's ray-schema.json plus
   its cross-field rules). The cloud "bootstrap" (IAM, subnets, security groups: boto3 and credentials) is a
   separate step of ``ray up`` and is not run. Private Ray API: pyproject pins ray to 2.60.x.
2. hyporay's rules: a worker type with whole GPUs, integer node resources, the image's Ray version equal to
   the installed Ray, storage for Ray Tune set once and shared by all nodes (S3/GCS or a mounted NFS path),
   an MLflow server on the head that workers can reach and the head's environment pointing sweeps at the
   cluster and the server, no port but SSH open to any public address (CIDRs reasoned about, not matched),
   no service bound to every interface (dashboard, MLflow, Ray: the private address or loopback), and on AWS an explicit AMI (Ray's default
   is too old for CUDA 12) and, with S3 storage, an instance profile on GPU workers for their checkpoints.

Every problem is one line naming the field. Exit status of the command: 0 valid, 1 invalid, 2 unreadable.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from hyporay.cluster import rules as R
from hyporay.cluster.result import Result, short


class Unreadable(Exception):
    """The file cannot be read or parsed as YAML (exit status 2)."""


def load(path: str | Path) -> Any:
    import yaml

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise Unreadable(f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise Unreadable(f"not valid YAML{where}: {problem}") from None


def check_file(path: str | Path) -> Result:
    """Raises ``Unreadable``; otherwise returns the problems (none: valid) and a one-line summary."""
    return check(load(path), str(path))


def check(config: Any, name: str = "cluster.yaml") -> Result:
    res = Result(name)
    if not isinstance(config, dict):
        res.problems.append(f"the file holds a {type(config).__name__}, not a cluster config mapping "
                            "(cluster_name, provider, available_node_types, ...)")
        return res
    prepared = _ray_checks(config, res)
    cfg = prepared if prepared is not None else config
    if not isinstance(cfg.get("provider"), dict):
        return res  # Ray's lines say what is missing; nothing of ours can be checked
    local = cfg["provider"].get("type") == "local"
    ray_found = bool(res.problems)

    def rule(fn, *args, default="-"):
        # a file Ray already rejected may be shaped so that a rule cannot read it: Ray's lines say why
        try:
            return fn(*args)
        except (AttributeError, KeyError, TypeError, ValueError):
            if not ray_found:
                raise
            return default

    gpu_summary = rule(R.check_nodes, cfg, res, local)
    image_summary = rule(R.check_images, cfg, res)
    storage = rule(R.check_storage, config, res)  # as written: prepare_config copies setup_commands to 2 lists
    mlflow = rule(R.check_mlflow, cfg, res)
    rule(R.check_head_env, config, res)
    rule(R.check_exposure, cfg, res)
    rule(R.check_binds, config, res)
    rule(R.check_ami, cfg, res)
    rule(R.check_worker_iam, cfg, res, storage)
    rule(R.notes, config, res)
    if res.valid:
        prov = cfg["provider"]
        where = prov.get("type", "?") + (f" {prov['region']}" if prov.get("region") else "")
        res.summary = (f"{where}; {gpu_summary}; image {image_summary}; storage {storage}; "
                       f"MLflow on the head at :{mlflow}")
    return res


# --- 1. Ray's prepare_config + validate_config ---------------------------------------------------------

@contextlib.contextmanager
def _quiet_ray():
    """Ray's cli_logger prints (warnings, 'PANIC' lines before aborting) and its autoscaler logs at INFO:
    keep both off the command's output; what matters comes back as exceptions."""
    loggers = [logging.getLogger(n) for n in ("ray", "ray.autoscaler", "ray.autoscaler._private.util")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _ray_checks(config: dict, res: Result) -> dict | None:
    """Ray's own checks; returns the prepared config (defaults filled in) or None when preparing failed."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = None
    with _quiet_ray():
        try:
            prepared = prepare_config(config)
        except Exception as exc:  # noqa: BLE001 - any failure of Ray's preparation is a config problem
            prep_error = exc
    if prepared is None:
        # a wrong type can crash the preparation (e.g. a string where Ray adds lists): the schema on the raw
        # file usually says why in plain words
        lines, left_to_us = _schema_lines(config)
        if lines or not left_to_us:
            res.problems.extend(lines or [f"Ray's prepare_config failed: {_exc_line(prep_error)}"])
        return None
    with _quiet_ray():
        try:
            validate_config(prepared)
        except jsonschema.ValidationError as exc:
            lines, left_to_us = _schema_lines(prepared)
            res.problems.extend(lines if lines or left_to_us else [f"Ray's schema: {exc.message}"])
        except Exception as exc:  # noqa: BLE001 - Ray's cross-field rules raise ValueError/RuntimeError
            res.problems.append(f"Ray's validate_config: {_exc_line(exc)}")
    return prepared


def _exc_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__


def _schema_lines(config: dict) -> tuple[list[str], int]:
    """Every violation of Ray's ray-schema.json, one line each, named by its path in the file; and how many
    were left to our own integer rule for node resources (one clearer line instead of two)."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    lines, left_to_us = [], 0
    for err in sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path)):
        path = [str(p) for p in err.absolute_path]
        if len(path) == 4 and path[0] == "available_node_types" and path[2] == "resources":
            left_to_us += 1
            continue
        where = ".".join(path) or "top level"
        msg = err.message
        if err.validator == "additionalProperties":
            m = re.search(r"\((.*) (?:was|were) unexpected\)", msg)
            allowed = sorted((err.schema.get("properties") or {}).keys())
            unknown = m.group(1) if m else msg
            msg = f"unknown key {unknown}" + (f"; Ray knows: {', '.join(allowed)}" if allowed else "")
        elif err.validator == "type":
            msg = f"{short(err.instance)} is not of type {err.validator_value!r}"
        elif err.validator == "required":
            msg = err.message.replace(" is a required property", " is required")
        lines.append(f"{where}: {msg} (Ray's schema)")
    return lines, left_to_us


# --- the command -----------------------------------------------------------------------------------------

def run(files: list[str], out=None, err=None) -> int:
    """``hyporay validate-cluster``: 0 all valid, 1 some invalid, 2 some unreadable."""
    import sys

    out = out or sys.stdout
    err = err or sys.stderr
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    status = 0
    for f in files:
        try:
            r = check_file(f)
        except Unreadable as exc:
            print(f"{f}: {exc}", file=err)
            status = 2
            continue
        if r.valid:
            print(f"{f}: valid ({r.summary})", file=out)
            for n in r.notes:
                print(f"{f}: note: {n}", file=out)
        else:
            for p in r.problems:
                print(f"{f}: {p}", file=err)
            print(f"{f}: invalid ({len(r.problems)} problem{'s' if len(r.problems) != 1 else ''})", file=err)
            status = max(status, 1)
    return status
