"""Where a number came from: the code (git commit, dirty tree and a hash of its diff, hyporay's version), the
machine that computed it (torch's version, the CPU model, the thread count) and the exact trial configuration (a
hash). Recorded on every MLflow run, in metrics.json and in checkpoints, so that a report can say which code produced
it and a stale one can be told from a fresh one.

A trial is deterministic on one machine and build (same torch, CPU and thread count: bit for bit). Elsewhere float
kernels differ (other vector units, other reduction orders, other thread splits) and the numbers move within the
seed-to-seed noise (docs/data.md gives the measured figure): the machine keys say which case a comparison is.

No Ray, MLflow or Optuna here; git is asked once per process (the code a process runs does not change under it).
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from hyporay.dotted import flatten

COMMIT = "hyporay.git_commit"          # full sha of HEAD, or "unknown (...)" outside a checkout
DIRTY = "hyporay.git_dirty"            # "true" / "false" / "unknown"
DIFF = "hyporay.git_diff_sha256"       # sha256 of the uncommitted changes (tracked diff + untracked files)
VERSION = "hyporay.version"
CONFIG = "hyporay.config_sha256"       # ``config_hash`` of the trial
TORCH = "hyporay.torch_version"        # torch.__version__ (its build: +cpu, +cu128, ...)
CPU = "hyporay.cpu"                    # the CPU model (/proc/cpuinfo's model name, else platform's)
THREADS = "hyporay.threads"            # torch's intra-op threads the trial ran with
GPU = "hyporay.gpu"                    # the GPU a CUDA trial ran on and torch's CUDA version (absent on CPU)
KEYS = (COMMIT, DIRTY, DIFF, VERSION)
MACHINE_KEYS = (TORCH, CPU, GPU, THREADS)

# Fields that say where and how a trial runs, not what it computes: left out of the config hash, so the same
# trial hashes alike on a laptop and on a cluster node (absolute data paths, devices and threads differ there).
# ``imports`` (where your own data sets and models are defined) is a path that differs between machines too.
PLACEMENT_FIELDS = ("device", "threads", "data.root", "data.download", "data.cache_dir", "imports")

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, check=True,
                          timeout=30).stdout


@functools.lru_cache(maxsize=1)
def code() -> dict[str, str]:
    """The code this process runs: ``{COMMIT, DIRTY, DIFF, VERSION}`` (strings, as MLflow tags)."""
    try:
        version = metadata.version("hyporay")
    except metadata.PackageNotFoundError:
        version = "unknown"
    out = {VERSION: version}
    try:
        commit = _git("rev-parse", "HEAD").decode().strip()
        status = _git("status", "--porcelain", "--untracked-files=all").decode()
    except (OSError, subprocess.SubprocessError):
        return out | {COMMIT: "unknown (not a git checkout)", DIRTY: "unknown", DIFF: ""}
    h = hashlib.sha256(_git("diff", "HEAD", "--binary"))
    for line in sorted(status.splitlines()):
        if line.startswith("??"):  # untracked files change what runs too: their names and contents
            path = line[3:].strip().strip('"')
            h.update(path.encode())
            try:
                h.update((SOURCE_ROOT / path).read_bytes())
            except OSError:
                pass
    dirty = bool(status.strip())
    return out | {COMMIT: commit, DIRTY: "true" if dirty else "false", DIFF: h.hexdigest() if dirty else ""}


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; else ``platform.processor()``), or the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model Name", "cpu model", "Processor") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpu_model(device: str | None) -> str | None:
    """``NVIDIA H200, CUDA 13.0`` for a trial that runs on CUDA (``device`` cuda, cuda:N, or auto with a GPU
    here); None on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda" if device in (None, "auto") else device)
    if dev.type != "cuda":
        return None
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return f"{torch.cuda.get_device_name(index)}, CUDA {torch.version.cuda}"


def machine(threads: int | None = None, device: str | None = "cpu") -> dict[str, str]:
    """The machine a number is computed on: ``{TORCH, CPU, THREADS}``, and ``GPU`` for a trial on CUDA (strings, as
    MLflow tags). ``threads``: the count the trial sets (its ``threads`` field); None or 0 = torch's current count in
    this process. ``device``: the trial's (auto = the GPU where there is one)."""
    import torch

    gpu = gpu_model(device)
    return ({TORCH: str(torch.__version__), CPU: cpu_model()} | ({GPU: gpu} if gpu else {})
            | {THREADS: str(int(threads or torch.get_num_threads()))})


def identity(trial: dict) -> dict[str, Any]:
    """The dotted fields of a trial config that determine its numbers (``PLACEMENT_FIELDS`` left out)."""
    return {k: v for k, v in sorted(flatten(trial).items())
            if not any(k == f or k.startswith(f + ".") for f in PLACEMENT_FIELDS)}


def config_hash(trial: dict) -> str:
    """sha256 of ``identity(trial)``: equal for the same trial wherever it runs."""
    return hashlib.sha256(json.dumps(identity(trial), sort_keys=True, default=str).encode()).hexdigest()


def plan_hash(trials: list[dict]) -> str:
    """sha256 over the sorted config hashes of a sweep's trials: the same plan, the same hash."""
    return hashlib.sha256("\n".join(sorted(config_hash(t) for t in trials)).encode()).hexdigest()


def of_trial(trial: dict) -> dict[str, str]:
    """Provenance of one trial: the code, the machine (with the trial's thread count) and the config hash."""
    return code() | machine(trial.get("threads"), trial.get("device", "auto")) | {CONFIG: config_hash(trial)}


def is_clean(prov: dict) -> bool:
    return prov.get(DIRTY) == "false" and not str(prov.get(COMMIT, "unknown")).startswith("unknown")


def describe_machine(prov: dict) -> str:
    """``torch 2.14.1+cpu, AMD EPYC, 1 thread`` (+ ``, NVIDIA H200, CUDA 13.0`` after the CPU for a CUDA trial; the
    keys present; "unknown machine" when none is)."""
    parts = []
    if prov.get(TORCH):
        parts.append(f"torch {prov[TORCH]}")
    if prov.get(CPU):
        parts.append(str(prov[CPU]))
    if prov.get(GPU):
        parts.append(str(prov[GPU]))
    if prov.get(THREADS):
        n = str(prov[THREADS])
        parts.append(f"{n} thread{'' if n == '1' else 's'}")
    return ", ".join(parts) or "unknown machine"


def describe(prov: dict) -> str:
    """``commit abc1234`` / ``commit abc1234 + uncommitted changes (diff 9f3e...)`` / ``unknown code``."""
    commit = str(prov.get(COMMIT, "unknown"))
    if commit.startswith("unknown"):
        return "unknown code (not a git checkout)"
    if prov.get(DIRTY) == "true":
        return f"commit {commit[:12]} + uncommitted changes (diff {str(prov.get(DIFF, ''))[:12]})"
    return f"commit {commit[:12]}"
