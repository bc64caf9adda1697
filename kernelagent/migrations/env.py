"""Alembic environment: runs the migrations on the connection ``open_database`` hands over.

At runtime ``kernelagent.adapters.db.open_database`` configures Alembic in code (no alembic.ini)
and passes its connection, inside a transaction it commits, in ``config.attributes``. Without
one, the URL in the config is used: how to write the next revision against a scratch database::

    from alembic import command
    from kernelagent.adapters.db import alembic_config

    config = alembic_config("sqlite:///scratch.db")
    command.upgrade(config, "head")
    command.revision(config, "add something", autogenerate=True)  # then edit and review it
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from kernelagent.adapters.db import create_engine_for
from kernelagent.adapters.tables import SQLModel

config = context.config
target_metadata = SQLModel.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them; batch mode does that
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    engine = create_engine_for(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.begin() as conn:
            run(conn)
    finally:
        engine.dispose()
