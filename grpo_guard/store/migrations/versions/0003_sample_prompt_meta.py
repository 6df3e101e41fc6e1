"""Eval samples keep their prompt's metadata (GenEval: tag, include, exclude) as a JSON object.

Existing rows get ``{}``: their prompts carried none.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("prompt_meta", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("prompt_meta")
