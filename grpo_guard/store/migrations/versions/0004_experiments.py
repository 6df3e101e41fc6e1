"""Experiments: an ``experiments`` table (arms x seeds over a base config, as one object) and,
on ``runs``, the experiment a run belongs to with its arm label and seed.

Existing runs belong to no experiment (NULL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("tags_json", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("notes", sa.Text(), nullable=False, server_default=""),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
    )
    op.create_index("ix_experiments_created_at", "experiments", ["created_at"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("experiment_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("experiment_arm", sa.String(80), nullable=True))
        batch.add_column(sa.Column("experiment_seed", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_runs_experiment_id_experiments", "experiments", ["experiment_id"], ["id"],
                                 ondelete="SET NULL")
        batch.create_index("ix_runs_experiment_id", ["experiment_id"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_experiment_id")
        batch.drop_constraint("fk_runs_experiment_id_experiments", type_="foreignkey")
        batch.drop_column("experiment_seed")
        batch.drop_column("experiment_arm")
        batch.drop_column("experiment_id")
    op.drop_index("ix_experiments_created_at", table_name="experiments")
    op.drop_table("experiments")
