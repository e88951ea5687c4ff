"""A config version's whole text may be left out (`document` NULL) once a newer version exists.

Until now every version kept its whole text: 0.7 MB a version for 10,000 routes, each one-route
change adding that much to the store for good. From this revision a commit keeps the whole text of
the newest version and of every `routes.store.TEXT_KEPT_EVERY`-th one; the others keep only their
splice of the version before (`delta`, revision 0009), and a reader rebuilds such a text from the
nearest earlier whole text and the splices after it (`routes.store.rebuild_text`). Only a version
whose splice is known to fit the version before it in this database is thinned. The upgrade
leaves out the texts of the versions already stored likewise, each only after its splice has been
checked to rebuild it exactly (SQLite reuses the pages freed for the next commits; `VACUUM` gives
them back to the file system).

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
    from routes.schema import config_versions
    from routes.store import TEXT_KEPT_EVERY, rebuild_text

    with op.batch_alter_table("config_versions") as batch:
        batch.alter_column("document", existing_type=sa.Text(), nullable=True)
    # The versions stored so far, as a commit from now on leaves them: each one's text left out
    # when its splice rebuilds exactly that text from the version before's (checked here, text by
    # text: only two texts in memory at a time).
    c = config_versions.c
    bind = op.get_bind()
    newest = bind.scalar(sa.select(sa.func.max(c.version)))
    before: tuple[str, datetime] | None = None
    thinned: list[int] = []
    rows = bind.execute(sa.select(c.version, c.created_at, c.document, c.delta).order_by(c.version)
                        .execution_options(yield_per=16))
    for row in rows:
        if before is not None and row.delta is not None and row.version % TEXT_KEPT_EVERY \
                and row.version != newest \
                and rebuild_text(before[0], before[1], [(row.created_at, row.delta)]) == row.document:
            thinned.append(row.version)
        before = (row.document, row.created_at)
    for version in thinned:
        bind.execute(sa.update(config_versions).where(c.version == version).values(document=None))


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
