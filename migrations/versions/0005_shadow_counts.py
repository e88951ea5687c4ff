"""Shadow comparison counts and example pairs (issue 15: the shadow stage).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "shadow_counts",
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("config_version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("instance", sa.String(length=128), nullable=False),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("mismatched", sa.Integer(), nullable=False),
        sa.Column("baseline_pairs", sa.Integer(), nullable=False),
        sa.Column("baseline_mismatched", sa.Integer(), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("route", "config_version", "bucket", "instance",
                                name="pk_shadow_counts"),
    )
    op.create_table(
        "shadow_examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("example", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_shadow_examples"),
    )
    op.create_index("ix_shadow_examples_route", "shadow_examples", ["route"])


def downgrade() -> None:
    op.drop_index("ix_shadow_examples_route", table_name="shadow_examples")
    op.drop_table("shadow_examples")
    op.drop_table("shadow_counts")
