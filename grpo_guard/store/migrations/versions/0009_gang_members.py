"""``gang_members``: the nodes of the gang of workers that runs a multi-node run (``num_nodes`` > 1),
one row per node rank of the run's latest gang. A new table only; nothing stored changes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)
STATES = ("joined", "ready", "stopping", "lost", "done", "released")


def upgrade() -> None:
    op.create_table(
        "gang_members",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("node_rank", sa.Integer(), nullable=False),
        sa.Column("gang", sa.String(36), nullable=False),
        sa.Column("num_nodes", sa.Integer(), nullable=False),
        sa.Column("num_gpus", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("worker_host", sa.String(255), nullable=False),
        sa.Column("worker_gpu", sa.String(255), nullable=True),
        sa.Column("address", sa.String(255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("deadline", UTC_DATETIME, nullable=False),
        sa.Column("joined_at", UTC_DATETIME, nullable=False),
        sa.Column("heartbeat_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "node_rank", name="pk_gang_members"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_gang_members_run_id_runs", ondelete="CASCADE"),
        sa.CheckConstraint("state IN ({})".format(", ".join(f"'{s}'" for s in STATES)), name="ck_gang_members_state"),
    )
    op.create_index("ix_gang_members_gang", "gang_members", ["gang"])


def downgrade() -> None:
    op.drop_index("ix_gang_members_gang", table_name="gang_members")
    op.drop_table("gang_members")
