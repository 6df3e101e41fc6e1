"""Human gold: ``judging_sessions`` (what is judged: runs, steps, the drawn sample pairs) and
``judgments`` (one blind A/B choice of one judge on one pair of eval samples).

A judgment keeps the run, step, prompt and seed of both samples beside their ids, so the human
record survives the deletion of a run (samples carry no foreign key from here).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "judging_sessions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("pairs_json", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_judging_sessions"),
    )
    op.create_table(
        "judgments",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("judge", sa.String(200), nullable=False),
        sa.Column("sample_a_id", sa.BigInteger(), nullable=False),
        sa.Column("sample_b_id", sa.BigInteger(), nullable=False),
        sa.Column("a_run_id", sa.Integer(), nullable=False),
        sa.Column("a_step", sa.Integer(), nullable=False),
        sa.Column("b_run_id", sa.Integer(), nullable=False),
        sa.Column("b_step", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(80), nullable=False, server_default=""),
        sa.Column("left_sample_id", sa.BigInteger(), nullable=False),
        sa.Column("choice", sa.String(8), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False, server_default="[]"),
        sa.Column("decide_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_judgments"),
        sa.ForeignKeyConstraint(["session_id"], ["judging_sessions.id"], name="fk_judgments_session_id_judging_sessions",
                                ondelete="CASCADE"),
        sa.CheckConstraint("choice IN ('left', 'right', 'tie')", name="ck_judgments_choice"),
        sa.UniqueConstraint("session_id", "judge", "sample_a_id", "sample_b_id",
                            name="uq_judgments_session_id_judge_sample_a_id_sample_b_id"),
    )
    op.create_index("ix_judgments_a_run_id", "judgments", ["a_run_id"])
    op.create_index("ix_judgments_b_run_id", "judgments", ["b_run_id"])
    op.create_index("ix_judgments_judge", "judgments", ["judge"])


def downgrade() -> None:
    op.drop_index("ix_judgments_judge", table_name="judgments")
    op.drop_index("ix_judgments_b_run_id", table_name="judgments")
    op.drop_index("ix_judgments_a_run_id", table_name="judgments")
    op.drop_table("judgments")
    op.drop_table("judging_sessions")
