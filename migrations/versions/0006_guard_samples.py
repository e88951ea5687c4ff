"""The guard's measurements: requests, errors and latency per route, side and second.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "guard_samples",
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("slice", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("latency", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route", "side", "slice", "instance", name="pk_guard_samples"),
    )


def downgrade() -> None:
    op.drop_table("guard_samples")
