"""Migration transitions and live traffic counts.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "migration_transitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_stage", sa.String(length=16), nullable=True),
        sa.Column("to_stage", sa.String(length=16), nullable=False),
        sa.Column("share", sa.Integer(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("config_version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_migration_transitions"),
    )
    op.create_index("ix_migration_transitions_route", "migration_transitions", ["route"])
    op.create_table(
        "traffic_counts",
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("config_version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("to_count", sa.Integer(), nullable=False),
        sa.Column("from_count", sa.Integer(), nullable=False),
        sa.Column("fallback_count", sa.Integer(), nullable=False),
        sa.Column("retired_misses", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route", "config_version", "instance", name="pk_traffic_counts"),
    )


def downgrade() -> None:
    op.drop_table("traffic_counts")
    op.drop_index("ix_migration_transitions_route", table_name="migration_transitions")
    op.drop_table("migration_transitions")
