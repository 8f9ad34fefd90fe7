"""A fresh SQLite MLflow store that no reader can break: it appears only when whole.

MLflow creates a store where it is opened, in steps (tables, then a chain of schema migrations, then the Default
experiment); a second process that opens the file meanwhile (the UI, a notebook, a test polling ``mlflow.db``)
runs the migrations again and one side dies (``table _alembic_tmp_... already exists``). So hyporay never lets
MLflow create a store in place:

- ``create`` makes and migrates it in a temporary file beside it (``.mlflow.db.creating-<pid>-<hex>``, same
  directory, same file system), then hard-links it into place: atomic, and it never replaces a store someone
  else made meanwhile;
- ``is_whole`` tells a complete store from a half-made one (MLflow adds the Default experiment last, after the
  last migration), read-only and with the standard library, so the check itself never creates or migrates;
- ``wait_whole`` waits for a store another program is creating in place (MLflow's own non-atomic way);
- ``being_created`` says whether a live process is creating one (what ``hyporay ui`` waits for).
"""
from __future__ import annotations

import os
import secrets
import sqlite3
import time
from pathlib import Path

CREATING = ".creating-"


class StoreNotReady(ValueError):
    """The store did not become whole in time (one line: which file and how long)."""


def temp_prefix(db: Path) -> str:
    return f".{db.name}{CREATING}"


def _drop(path: Path) -> None:
    for p in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


def create(db: Path, artifact_root: str) -> bool:
    """Create and migrate a store in a temporary file beside ``db``, then move it into place; True when this call
    made ``db``, False when another process made it first (its store is kept, ours dropped)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if db.exists():
        return False
    tmp = db.with_name(f"{temp_prefix(db)}{os.getpid()}-{secrets.token_hex(3)}")
    try:
        SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root).engine.dispose()
        try:
            os.link(tmp, db)  # fails if db exists: never replaces a store
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: replace, but only while db is still missing
            if db.exists():
                return False
            os.replace(tmp, db)
        return True
    finally:
        _drop(tmp)


def is_whole(db: Path) -> bool:
    """Whether ``db`` is a complete MLflow store (schema migrated, Default experiment made), read-only."""
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        return False
    try:
        return (con.execute("SELECT version_num FROM alembic_version").fetchone() is not None
                and con.execute("SELECT count(*) FROM experiments").fetchone()[0] > 0)
    except sqlite3.Error:
        return False
    finally:
        con.close()


def being_created(db: Path) -> bool:
    """Whether a live process is creating ``db`` (a temporary file of ``create`` whose process still runs)."""
    prefix = temp_prefix(db)
    for tmp in db.parent.glob(f"{prefix}*"):
        try:
            os.kill(int(tmp.name[len(prefix):].split("-")[0]), 0)
        except (ValueError, ProcessLookupError):
            continue  # not ours, or left by a process that died
        except PermissionError:
            pass  # alive, another user's
        return True
    return False


def wait_for_store(db: Path, limit: float, say=print) -> None:
    """For a program that opens a store made by others (``hyporay ui``): return once ``db`` is whole, waiting while
    a live process is creating it; ``FileNotFoundError`` when there is no store and nobody is making one."""
    if not db.is_file() and not being_created(db):
        raise FileNotFoundError(f"--db: no MLflow database at {db}; run a sweep first (make run)")
    if not is_whole(db):
        say(f"waiting for the MLflow store being created at {db} (up to {limit:.0f} s)")
        deadline = time.monotonic() + limit
        while not is_whole(db):
            if not db.is_file() and not being_created(db):
                raise FileNotFoundError(f"--db: the process creating {db} ended without making it")
            if time.monotonic() > deadline:
                raise StoreNotReady(f"--db: {db} is not a complete MLflow store after {limit:.0f} s")
            time.sleep(0.2)


def wait_whole(db: Path, limit: float, poll: float = 0.2) -> None:
    """Return once ``db`` is whole; ``StoreNotReady`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not is_whole(db):
        if time.monotonic() > deadline:
            raise StoreNotReady(f"tracking-uri: {db} is not a complete MLflow store after {limit:.0f} s (another "
                                "program is still creating it, or it is not an MLflow database)")
        time.sleep(poll)
