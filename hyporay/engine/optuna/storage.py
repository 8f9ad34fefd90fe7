"""The Optuna storage of a search: a JournalStorage file (default), an RDB URL (sqlite, postgresql, mysql) or a
Redis URL; opened by the driver only (the searcher and the pruning scheduler run there), checked in one line."""
from __future__ import annotations

import re
from pathlib import Path

DEFAULT_JOURNAL = "optuna.journal"
_RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


class StorageError(ValueError):
    """The Optuna storage cannot be used (one line: which URL and why)."""


def resolve_storage(raw: str | None, workdir: Path) -> str:
    """Canonical storage string (absolute journal path or URL), recorded on the study's MLflow parent run."""
    raw = (raw or DEFAULT_JOURNAL).strip()
    if not raw:
        raise StorageError("--study-storage: empty")
    if "://" not in raw:
        p = Path(raw).expanduser()
        return str(p if p.is_absolute() else (workdir / p).resolve())
    scheme = raw.split("://", 1)[0].lower()
    base = scheme.split("+", 1)[0]
    if base == "sqlite" and raw.startswith("sqlite:///") and not raw.startswith("sqlite:////") \
            and raw != "sqlite:///:memory:":
        return "sqlite:///" + str((workdir / raw[len("sqlite:///"):]).resolve())
    if base not in _RDB_SCHEMES and base not in _REDIS_SCHEMES:
        raise StorageError(f"--study-storage: unknown scheme {scheme!r} in {raw!r}; use a journal file path, "
                           "sqlite:///PATH, postgresql://..., mysql://... or redis://HOST:PORT")
    return raw


def storage_kind(spec: str) -> str:
    if "://" not in spec:
        return "journal"
    return "redis" if spec.split("://", 1)[0].lower() in _REDIS_SCHEMES else "rdb"


def open_storage(spec: str, *, create: bool = True):
    """The Optuna storage for ``spec`` (from ``resolve_storage``); StorageError (one line) when unusable."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    kind = storage_kind(spec)
    try:
        if kind == "journal":
            path = Path(spec)
            if not path.parent.is_dir():
                raise StorageError(f"--study-storage: directory {path.parent} does not exist")
            if path.is_dir():
                raise StorageError(f"--study-storage: {path} is a directory; give a journal file path")
            if not create and not path.exists():
                raise StorageError(f"--study-storage: no journal file at {path}")
            return JournalStorage(JournalFileBackend(str(path)))
        if kind == "redis":
            try:
                import redis
            except ImportError:
                raise StorageError(f"--study-storage: {spec} needs the redis package (pip install redis)") from None
            redis.Redis.from_url(spec).ping()  # fail now, in one line, not after Ray started
            return JournalStorage(JournalRedisBackend(spec))
        _check_rdb_url(spec)
        return optuna.storages.RDBStorage(spec, engine_kwargs=_engine_kwargs(spec))
    except StorageError:
        raise
    except ModuleNotFoundError as exc:  # the database driver, imported when the engine is created
        raise StorageError(f"--study-storage: {redact(spec)} needs the database driver {exc.name!r} "
                           f"(pip install {_DRIVER_PACKAGES.get(exc.name, exc.name)})") from None
    except Exception as exc:  # noqa: BLE001 - any driver/connection error becomes one line
        raise StorageError(f"--study-storage: cannot open {redact(spec)} ({first_line(exc)})") from None


def _check_rdb_url(spec: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        url = make_url(spec)
        url.get_dialect().import_dbapi()  # the driver package (psycopg2, pymysql, ...) is there
    except ModuleNotFoundError as exc:
        raise StorageError(f"--study-storage: {redact(spec)} needs the database driver {exc.name!r} "
                           f"(pip install {_DRIVER_PACKAGES.get(exc.name, exc.name)})") from None
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's ArgumentError / NoSuchModuleError
        raise StorageError(f"--study-storage: not a database URL: {redact(spec)} ({first_line(exc)})") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        parent = Path(url.database).parent
        if not parent.is_dir():
            raise StorageError(f"--study-storage: directory {parent} does not exist")


_DRIVER_PACKAGES = {"psycopg": "\"psycopg[binary]\"", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
                    "MySQLdb": "mysqlclient"}


def _engine_kwargs(spec: str) -> dict:
    if spec.startswith(("postgresql", "postgres", "mysql", "mariadb")):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {}


def redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def first_line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return s[0][:300] if s else type(exc).__name__
