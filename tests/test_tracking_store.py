"""The store's reliability pieces on real files and a real MLflow client (issue 22): a fresh SQLite store appears
whole, readers wait for one being created, a server that does not answer is retried up to the stated limit and
then reported in one line, and a create whose answer was lost never makes a second run."""
from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time

import pytest

from hyporay import tracking
from hyporay.tracking import sqlite


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store made the sweeps' way (MLflow's migrations take seconds): its URI."""
    d = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{d / 'mlflow.db'}"
    tracking.open_store(uri, "exp")
    return uri


@pytest.fixture
def limit():
    """A 1 s outage limit for this test only."""
    tracking.set_patience(1.0)
    yield 1.0
    tracking.set_patience(None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens on it once the socket is closed


def test_fresh_store_appears_whole_and_only_once(store):
    db = tracking.store.sqlite_path(store)
    assert sqlite.is_whole(db)
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]  # no temporary file left
    before = db.stat().st_ino
    assert sqlite.create(db, "file:///nowhere") is False  # never replaces an existing store
    assert db.stat().st_ino == before
    assert not sqlite.is_whole(db.parent / "none.db") and not (db.parent / "none.db").exists()


def test_half_made_store_is_not_whole(tmp_path):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)  # what a reader sees while MLflow migrates in place: tables, no Default experiment
    con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    con.execute("INSERT INTO alembic_version VALUES ('abc')")
    con.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    con.commit()
    assert not sqlite.is_whole(db)
    con.execute("INSERT INTO experiments VALUES (0)")
    con.commit()
    con.close()
    assert sqlite.is_whole(db)
    (tmp_path / "other.db").write_bytes(b"not a database")
    assert not sqlite.is_whole(tmp_path / "other.db")


def test_ui_waits_for_a_store_being_created_and_not_for_a_dead_creator(tmp_path, store):
    db = tmp_path / "mlflow.db"
    with pytest.raises(FileNotFoundError, match="no MLflow database"):
        sqlite.wait_for_store(db, 5)
    dead = tmp_path / f"{sqlite.temp_prefix(db)}999999999-abc"  # left by a process that is gone
    dead.write_bytes(b"")
    assert not sqlite.being_created(db)
    live = tmp_path / f"{sqlite.temp_prefix(db)}{os.getpid()}-abc"
    live.write_bytes(b"")
    assert sqlite.being_created(db)
    said = []
    # the creator's last step: its whole store linked into place, a second later
    maker = threading.Timer(1.0, lambda: os.link(tracking.store.sqlite_path(store), db))
    maker.start()
    t = time.monotonic()
    sqlite.wait_for_store(db, 60, say=said.append)
    maker.join()
    assert sqlite.is_whole(db) and time.monotonic() - t >= 0.9
    assert said and said[0].startswith("waiting for the MLflow store being created at")


def test_open_store_again_finds_the_same_experiment(store):
    a = tracking.open_store(store, "exp")
    assert tracking.open_store(store, "exp") == a
    assert [e.name for e in tracking.client(store).search_experiments()].count("exp") == 1


def test_unanswered_server_is_retried_up_to_the_limit_then_one_line(limit, monkeypatch):
    # tracking.client turns MLflow's own HTTP retries off for a server (this process's environment is restored after)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    url = f"http://127.0.0.1:{_closed_port()}"
    c = tracking.client(url)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    t = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        tracking.retry(c.get_experiment_by_name, "x")
    took = time.monotonic() - t
    assert limit <= took < limit + 10, took  # retried until the limit, not given up at once nor hung
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"tracking-uri: {url} did not answer for 1 s (limit: "
                                              "--tracking-patience / HYPORAY_TRACKING_PATIENCE)")
    assert "--resume continues once the server answers" in msg
    assert isinstance(err.value, tracking.TrackingError)  # a command reports it in one line, no traceback


def test_errors_that_are_not_an_outage_are_raised_at_once(store):
    c = tracking.client(store)
    t = time.monotonic()
    with pytest.raises(Exception, match="(?i)run .*not found|does not exist"):
        tracking.retry(c.get_run, "0" * 32)
    assert time.monotonic() - t < 5
    assert not tracking.store.unreachable(ValueError("Changing param values is not allowed"))
    assert tracking.store.unreachable(ValueError("API request to http://h/api failed with exception "
                                                 "HTTPConnectionPool: Max retries exceeded (Connection refused)"))
    assert tracking.store.unreachable(ValueError("API request to endpoint /x failed with error code 503 != 200"))
    assert not tracking.store.unreachable(ValueError("API request to endpoint /x failed with error code 400 != 200"))


def test_a_create_whose_answer_was_lost_makes_no_second_run(store):
    """The first create reaches the store but its answer is lost (the server died after the write): the retry
    finds the run instead of creating another."""
    exp = tracking.open_store(store, "lost-answer")
    c = tracking.client(store)
    tries = []

    def create():
        run = c.create_run(exp, tags={tracking.CREATE_TAG: "once-1"})
        tries.append(run.info.run_id)
        if len(tries) == 1:
            raise ConnectionError("Connection aborted: RemoteDisconnected('Remote end closed connection')")
        return run

    def find():
        return next(iter(c.search_runs([exp], filter_string=f"tags.`{tracking.CREATE_TAG}` = 'once-1'")), None)

    run = tracking.create_once(create, find)
    assert len(tries) == 1 and run.info.run_id == tries[0]
    assert len(c.search_runs([exp])) == 1


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "0", "ten"])
def test_patience_from_the_environment_is_a_finite_positive_number(raw, monkeypatch):
    """nan would make every wait endless, inf never stop one: one line naming the variable, before any wait."""
    monkeypatch.setenv("HYPORAY_TRACKING_PATIENCE", raw)
    with pytest.raises(tracking.TrackingError) as err:
        tracking.patience()
    assert str(err.value) == f"HYPORAY_TRACKING_PATIENCE: must be a number of seconds > 0, got {raw!r}"
    monkeypatch.setenv("HYPORAY_TRACKING_PATIENCE", "2.5")
    assert tracking.patience() == 2.5
