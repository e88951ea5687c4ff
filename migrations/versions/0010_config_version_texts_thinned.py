"""A config version's whole text may be left out (`document` NULL) once a newer version exists.

Until now every version kept its whole text: 0.7 MB a version for 10,000 routes, each one-route
change adding that much to the store for good. From this revision a commit keeps the whole text of
the newest version and of every `routes.store.TEXT_KEPT_EVERY`-th one; the others keep only their
splice of the version before (`delta`, revision 0009), and a reader rebuilds such a text from the
nearest earlier whole text and the splices after it (`routes.store.rebuild_text`). Only a version
whose splice is known to fit the version before it in this database is thinned.

The downgrade writes every left-out text back before `document` is NOT NULL again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("config_versions") as batch:
        batch.alter_column("document", existing_type=sa.Text(), nullable=True)


def downgrade() -> None:
    from routes.schema import config_versions
    from routes.store import rebuild_text

    c = config_versions.c
    bind = op.get_bind()
    before: tuple[str, datetime] | None = None  # the text and commit time of the version before
    rows = bind.execute(sa.select(c.version, c.created_at, c.document, c.delta).order_by(c.version)).all()
    for row in rows:
        text = row.document
        if text is None:
            text = rebuild_text(before[0], before[1], [(row.created_at, row.delta)]) \
                if before is not None else None
            if text is None:
                raise RuntimeError(f"config version {row.version}: its whole text cannot be rebuilt "
                                   "from the version before it; not downgrading")
            bind.execute(sa.update(config_versions).where(c.version == row.version)
                         .values(document=text))
        before = (text, row.created_at)
    with op.batch_alter_table("config_versions") as batch:
        batch.alter_column("document", existing_type=sa.Text(), nullable=False)
