"""Alembic environment: URL from the caller (run_migrations) or RegistrySettings (CLI use)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from services.registry.db import make_engine
from services.registry.models import Base

config = context.config


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return str(url)
    from services.registry.settings import RegistrySettings

    return RegistrySettings().resolved_database_url()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True,
                      render_as_batch=True)  # batch mode: SQLite cannot ALTER most things in place
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url(), poolclass=pool.NullPool)  # creates the SQLite folder, sets pragmas
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
