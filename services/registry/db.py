"""Engine, sessions and migrations for the registry database (SQLite default, PostgreSQL supported)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
WRITE_OPTION = "qanchor_write"


def _prepare_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with per-backend tuning. On SQLite, write transactions start with BEGIN IMMEDIATE.

    Why: a deferred SQLite transaction that reads and then writes can fail at once with "database is locked"
    when another writer got there first (the busy timeout does not apply to lock upgrades). Taking the write
    lock up front makes concurrent writers queue on the busy timeout instead. Reads stay plain BEGIN (WAL lets
    them run beside a writer).
    """
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, **kwargs)
    _prepare_sqlite_file(url)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below emit BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        if make_url(url).database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN")

    return engine


class Database:
    """Owns the engine and hands out read and write sessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False)

    def read(self) -> Session:
        return self._read()

    def write(self) -> Session:
        return self._write()

    def migrate(self) -> None:
        run_migrations(self.url, self.engine)

    def ping(self) -> bool:
        """One trivial query: readiness means the database answers, not just that the process runs."""
        from sqlalchemy import text

        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:  # any driver error means "not ready"; the readiness log line says which
            log.warning("database did not answer", extra={"error": type(exc).__name__, "detail": str(exc)[:200]})
            return False

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(url: str) -> Config:
    # Alembic is imported here, not at module level: the tuning worker runs in the model environment, which
    # uses the repository but never migrates (and has no alembic installed).
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Via attributes, not set_main_option: URLs may contain '%' (encoded passwords) that ini interpolation breaks.
    cfg.attributes["url"] = url
    return cfg


def run_migrations(url: str, engine: Engine | None = None) -> None:
    """`alembic upgrade head` against `url` (reusing `engine` when given)."""
    from alembic import command

    cfg = alembic_config(url)
    if engine is None:
        command.upgrade(cfg, "head")
    else:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    log.info("migrations applied", extra={"database": make_url(url).render_as_string(hide_password=True)})
