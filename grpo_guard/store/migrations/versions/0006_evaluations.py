"""Evaluations: one row per benchmark evaluation of a model (the base model, a run's checkpoint
at a step, or a checkpoint file) under a protocol, with every metric and the per-prompt results.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("benchmark", sa.String(40), nullable=False),
        sa.Column("model_kind", sa.String(12), nullable=False),
        sa.Column("model_key", sa.String(300), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("checkpoint_path", sa.String(1000), nullable=True),
        sa.Column("protocol_json", sa.Text(), nullable=False),
        sa.Column("protocol_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("metrics_json", sa.Text(), nullable=False, server_default="{}"),
        sa.Column("per_prompt_json", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("images_location", sa.String(1000), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_evaluations_run_id_runs", ondelete="CASCADE"),
        sa.CheckConstraint("model_kind IN ('base', 'run', 'checkpoint')", name="ck_evaluations_model_kind"),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="ck_evaluations_status"),
    )
    op.create_index("ix_evaluations_run_id", "evaluations", ["run_id"])
    op.create_index("ix_evaluations_model_key_benchmark_protocol_hash", "evaluations",
                    ["model_key", "benchmark", "protocol_hash"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_model_key_benchmark_protocol_hash", table_name="evaluations")
    op.drop_index("ix_evaluations_run_id", table_name="evaluations")
    op.drop_table("evaluations")
