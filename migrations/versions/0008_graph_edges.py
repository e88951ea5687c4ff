"""The dependency graph's edges: requests, errors and latency per listener, caller, service and minute.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "graph_edges",
        sa.Column("listener", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("destination", sa.String(length=63), nullable=False),
        sa.Column("minute", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("latency", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("listener", "source", "destination", "minute", "instance",
                                name="pk_graph_edges"),
    )
    op.create_index("ix_graph_edges_minute", "graph_edges", ["minute"])


def downgrade() -> None:
    op.drop_index("ix_graph_edges_minute", table_name="graph_edges")
    op.drop_table("graph_edges")
