#!/usr/bin/env python3
"""Run the end-to-end tests while other processes keep every core busy (``make test-stress``; not part of CI).

A test that passes on an idle machine and fails on a busy one waits on time instead of on the event it needs, or
sizes a timeout for an idle machine. This runs ``pytest tests/e2e`` ``--runs`` times in a row, each under load:
``--burners`` processes (default: one per core) spinning on the CPU at the same priority as the tests. The tests
are not retried: a run passes or it does not, and the report says which tests failed in which run.

Bounded and self-cleaning: each burner stops by itself after ``--max-minutes`` (or as soon as this script is gone),
each pytest run is stopped after ``--max-minutes``, and whatever is left of a run (pytest, its sweeps, their Ray
and MLflow processes) is killed by pid when the run ends.

    python tools/stress.py                         # 3 runs of tests/e2e under full load
    python tools/stress.py --runs 1 -- tests/e2e/test_sweep.py -k interrupted
    make test-stress STRESS_ARGS="--runs 5"

Exit status 0 when every run passed.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a burner: spins until its deadline, or until its parent (this script) is gone
BURNER = """
import os, sys, time
deadline, parent = float(sys.argv[1]), int(sys.argv[2])
while time.time() < deadline and os.getppid() == parent:
    sum(i * i for i in range(20000))
"""


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process (from /proc) but zombies (dead, nothing to kill)."""
    out: dict[int, tuple[int, int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                out[int(d)] = (int(fields[1]), int(fields[2]))
    return out


def _children() -> dict[int, int]:
    """pid -> parent pid of every process."""
    return {pid: pp for pid, (pp, _) in _processes().items()}


def group(pgid: int) -> set[int]:
    """Every live process of process group ``pgid`` (orphans re-parented to init included)."""
    return {pid for pid, (_, g) in _processes().items() if g == pgid}


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (not ``root`` itself)."""
    parent = _children()
    found, frontier = set(), [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in found]
        found.update(kids)
        frontier += kids
    return found


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL ``proc`` (started in its own session) and everything it started that is still alive (a run cut short
    leaves sweeps, Ray and MLflow servers behind): its descendants while it lives, and every process left in its
    process group, orphans too. Once ``proc`` is reaped its pid is not ours, so it is never signalled by number.
    Returns how many processes were killed besides ``proc``."""
    left = descendants(proc.pid) if proc.poll() is None else set()
    left |= group(proc.pid) - {proc.pid}
    proc.kill()  # a no-op once reaped (Popen knows its return code)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    return len(left)


def start_burners(n: int, seconds: float) -> list[subprocess.Popen]:
    deadline = time.time() + seconds
    return [subprocess.Popen([sys.executable, "-c", BURNER, str(deadline), str(os.getpid())],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def summary_line(log: str) -> str:
    """pytest's last line (``3 passed, 1 skipped in 512.30s``), or what ended the run."""
    lines = [ln.strip("= ") for ln in log.splitlines() if ln.strip()]
    found = [ln for ln in lines if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b", ln)
             and re.search(r"\bin [\d.]+s\b", ln)]
    return found[-1] if found else (lines[-1][:200] if lines else "no output")


def failed_tests(log: str) -> list[str]:
    return sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", log, re.M)))


def one_run(i: int, args, pytest_args: list[str], log_dir: Path) -> bool:
    log_path = log_dir / f"run{i}.log"
    burners = start_burners(args.burners, args.max_minutes * 60 + 30)
    # pytest's own per-test limit (pyproject: 600 s on an idle machine) grows with the load we add
    cores = os.cpu_count() or 1
    per_test = int(600 * (cores + args.burners) / cores)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", f"timeout={per_test}",
           *pytest_args]
    start, loads = time.time(), []
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
            deadline = start + args.max_minutes * 60
            while proc.poll() is None and time.time() < deadline:
                loads.append(os.getloadavg()[0])
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            timed_out = proc.poll() is None
            left = kill_tree(proc)
    finally:
        stop(burners)
    text = log_path.read_text()
    ok = proc.returncode == 0 and not timed_out
    load = sum(loads) / len(loads) if loads else float("nan")
    result = "PASS" if ok else "FAIL"
    how = f"stopped after {args.max_minutes} min" if timed_out else summary_line(text)
    print(f"run {i}/{args.runs}: {result}  {how}  ({time.time() - start:.0f} s, mean load {load:.1f} on {cores} "
          f"cores, {args.burners} burners{f'; killed {left} leftover processes' if left else ''}) log: {log_path}",
          flush=True)
    for name in failed_tests(text):
        print(f"    failed: {name}", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="arguments after -- go to pytest (default: tests/e2e)")
    p.add_argument("--runs", type=int, default=3, help="runs in a row")
    p.add_argument("--burners", type=int, default=os.cpu_count() or 1, help="CPU-bound processes beside the tests")
    p.add_argument("--max-minutes", type=float, default=45.0, help="limit of one run (the burners' too)")
    p.add_argument("--stop-on-failure", action="store_true", help="no further run after a failed one")
    p.add_argument("--log-dir", help="where each run's pytest output goes (default: a new temporary directory)")
    args = p.parse_args(own)
    if args.runs < 1 or args.burners < 0 or args.max_minutes <= 0:
        p.error("--runs must be >= 1, --burners >= 0, --max-minutes > 0")
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="hyporay-stress-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    pytest_args = pytest_args or ["tests/e2e"]
    print(f"stress: {args.runs} run(s) of pytest {' '.join(pytest_args)} beside {args.burners} CPU burner(s) on "
          f"{os.cpu_count()} cores", flush=True)
    passed = 0
    for i in range(1, args.runs + 1):
        ok = one_run(i, args, pytest_args, log_dir)
        passed += ok
        if not ok and args.stop_on_failure:
            break
    print(f"stress: {passed}/{args.runs} runs passed", flush=True)
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
