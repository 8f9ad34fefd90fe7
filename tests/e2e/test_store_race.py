"""A fresh MLflow store that no reader can break (issue 22, item 1).

Round after round, on a fresh directory each time: two sweeps start at once (two processes calling what a sweep
calls at start to open its store and experiment) while a third process opens the store in a tight loop, as the
MLflow UI, a notebook or a test polling ``mlflow.db`` would: MLflow's own ``SqlAlchemyStore`` constructed again
and again, then queried. In half of the rounds the reader waits until ``mlflow.db`` exists (what a UI or a
polling test does); in the other half it opens the path at once and so creates the store itself, non-atomically,
with MLflow's own code (a notebook started first). Required: zero failures on every side, in every round.

HYPORAY_STORE_RACE_ROUNDS sets the number of rounds (default 8; ``make test-stress`` runs it under load).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import patience, sweep_env

ROUNDS = int(os.environ.get("HYPORAY_STORE_RACE_ROUNDS", "8"))

pytestmark = pytest.mark.slow

# a sweep's start: open the store (creating it when there is none) and find or create its experiment
SWEEP_START = """
import json, sys, time
from pathlib import Path
from hyporay.tracking import open_store

base, rounds = Path(sys.argv[1]), int(sys.argv[2])
for i in range(rounds):
    d = base / f"r{i}"
    while not (d / "go").exists():
        time.sleep(0.001)
    t = time.time()
    try:
        open_store(f"sqlite:///{d / 'mlflow.db'}", "race")
        out = {"round": i, "ok": True, "s": time.time() - t}
    except Exception as exc:
        out = {"round": i, "ok": False, "error": repr(exc)[:400]}
    print(json.dumps(out), flush=True)
    (d / f"done-{sys.argv[3]}").touch()
"""

# a reader: MLflow's store opened over and over (each construction checks, and if need be creates, the schema)
READER = """
import json, sys, time
from pathlib import Path
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

base, rounds, creators = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(rounds):
    d = base / f"r{i}"
    eager = i % 2 == 1
    db, opens, errors, names = d / "mlflow.db", 0, [], []
    while not (d / "go").exists():
        time.sleep(0.001)
    while True:
        finished = len(list(d.glob("done-*"))) == creators
        if eager or db.exists():
            try:
                names = [e.name for e in SqlAlchemyStore(f"sqlite:///{db}", (d / "art").as_uri()).search_experiments()]
                opens += 1
            except Exception as exc:
                errors.append(repr(exc)[:400])
        if finished:
            break
    print(json.dumps({"round": i, "eager": eager, "opens": opens, "errors": errors, "last": names}), flush=True)
"""


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_fresh_stores_survive_readers_in_a_tight_loop(tmp_path):
    for i in range(ROUNDS):
        (tmp_path / f"r{i}").mkdir()
    env = dict(sweep_env(), MLFLOW_LOGGING_LEVEL="ERROR")
    procs = [subprocess.Popen([sys.executable, "-c", SWEEP_START, str(tmp_path), str(ROUNDS), name], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), str(ROUNDS), "2"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    everyone = [*procs, reader]
    t0 = time.time()
    try:
        for i in range(ROUNDS):  # one round at a time: each starts when everyone has finished the one before
            (tmp_path / f"r{i}" / "go").touch()
            deadline = time.time() + patience(60)
            while len(list((tmp_path / f"r{i}").glob("done-*"))) < 2:
                if any(p.poll() is not None for p in everyone) or time.time() > deadline:
                    _stop(everyone)
                    pytest.fail(f"round {i}: a process ended early or the sweeps' start took over "
                                f"{patience(60):.0f} s:\n" + "\n".join(p.stderr.read()[-2000:] for p in everyone))
                time.sleep(0.01)
        outs = [p.communicate(timeout=patience(60)) for p in everyone]
    finally:
        _stop(everyone)
    for p, (out, err) in zip(everyone, outs):
        assert p.returncode == 0, err[-3000:]
    starts = [json.loads(line) for out, _ in outs[:2] for line in out.splitlines()]
    reads = [json.loads(line) for line in outs[2][0].splitlines()]
    print(f"{ROUNDS} rounds in {time.time() - t0:.0f} s; reader opened the store "
          f"{sum(r['opens'] for r in reads)} times; slowest sweep start {max(s.get('s', 0) for s in starts):.1f} s")
    assert len(starts) == 2 * ROUNDS and len(reads) == ROUNDS
    failed = [s for s in starts if not s["ok"]]
    assert not failed, failed
    broken = [r for r in reads if r["errors"]]
    assert not broken, broken
    for r in reads:  # the reader really read the store each round, and its last read saw the sweeps' experiment
        assert r["opens"] >= 1 and "race" in r["last"], r
