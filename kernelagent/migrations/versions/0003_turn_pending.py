"""A waiting turn's pending question or approval, kept with the turn (it survives restarts).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("pending", sa.Text(), nullable=True))
    op.create_index("ix_turns_status", "turns", ["status"])


def downgrade() -> None:
    op.drop_index("ix_turns_status", table_name="turns")
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("pending")
