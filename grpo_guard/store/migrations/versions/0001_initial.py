"""Initial schema: runs, run_tags, run_keys, scalars, step_stats, samples, checkpoints, log_lines.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC_DATETIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STATUSES = ("queued", "running", "stopping", "succeeded", "failed", "cancelled")
# ALGORITHM.md §8 statistics with their own column (spelled out: a migration never changes).
STEP_STAT_COLUMNS = (
    "std_dev_t", "s", "beta", "delta",
    "logr_mean", "logr_std", "r_mean_minus_1", "r_std",
    "logrhat_mean", "logrhat_std", "rhat_mean_minus_1", "rhat_std",
    "bias", "drift_rms", "clip_high", "clip_low", "pos_adv_clipped", "neg_adv_clipped",
    "grad_zeroed_frac", "grad_norm_v", "eff_weight", "approx_kl", "kl_ref",
    "adv_pos_frac", "adv_abs_mean",
)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("config_json", sa.Text(), nullable=False),
        sa.Column("config_fields_set", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.String(40), nullable=False),
        sa.Column("backbone", sa.String(20), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stop_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("sample_now", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("save_now", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("start_step", sa.Integer(), nullable=False),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker_host", sa.String(255), nullable=True),
        sa.Column("worker_gpu", sa.String(32), nullable=True),
        sa.Column("task_id", sa.String(64), nullable=True),
        sa.Column("lease", sa.String(36), nullable=True),
        sa.Column("heartbeat_at", UTC_DATETIME, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("pair_id", sa.String(64), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("last_proxy", sa.Float(), nullable=True),
        sa.Column("last_gold", sa.Float(), nullable=True),
        sa.Column("last_eval_step", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("enqueued_at", UTC_DATETIME, nullable=True),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.CheckConstraint("status IN ({})".format(", ".join(f"'{s}'" for s in STATUSES)), name="ck_runs_status"),
        sa.ForeignKeyConstraint(["parent_id"], ["runs.id"], name="fk_runs_parent_id_runs", ondelete="SET NULL"),
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_index("ix_runs_pair_id", "runs", ["pair_id"])
    op.create_index("ix_runs_parent_id", "runs", ["parent_id"])

    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "tag", name="pk_run_tags"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_tags_run_id_runs", ondelete="CASCADE"),
    )
    op.create_index("ix_run_tags_tag", "run_tags", ["tag"])

    op.create_table(
        "run_keys",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "kind", "key", name="pk_run_keys"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_run_keys_run_id_runs", ondelete="CASCADE"),
    )

    op.create_table(
        "scalars",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("special", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "key", "step", name="pk_scalars"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_scalars_run_id_runs", ondelete="CASCADE"),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "step_stats",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("denoise_index", sa.Integer(), nullable=False),
        sa.Column("sigma", sa.Float(), nullable=True),
        sa.Column("dt", sa.Float(), nullable=True),
        sa.Column("extra", sa.JSON(none_as_null=True), nullable=True),
        *[sa.Column(name, sa.Float(), nullable=True) for name in STEP_STAT_COLUMNS],
        sa.PrimaryKeyConstraint("run_id", "step", "denoise_index", name="pk_step_stats"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_step_stats_run_id_runs", ondelete="CASCADE"),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "samples",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("image_location", sa.String(1000), nullable=False),
        sa.Column("proxy", sa.Float(), nullable=True),
        sa.Column("gold", sa.Float(), nullable=True),
        sa.Column("scores", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_samples"),
        sa.UniqueConstraint("run_id", "step", "prompt", "seed", name="uq_samples_run_id_step_prompt_seed"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_samples_run_id_runs", ondelete="CASCADE"),
    )
    op.create_index("ix_samples_run_id_prompt_seed_step", "samples", ["run_id", "prompt", "seed", "step"])

    op.create_table(
        "checkpoints",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("location", sa.String(1000), nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "step", name="pk_checkpoints"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_checkpoints_run_id_runs", ondelete="CASCADE"),
    )

    op.create_table(
        "log_lines",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("level", sa.String(10), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_log_lines"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_log_lines_run_id_runs", ondelete="CASCADE"),
    )
    op.create_index("ix_log_lines_run_id_id", "log_lines", ["run_id", "id"])


def downgrade() -> None:
    for table in ("log_lines", "checkpoints", "samples", "step_stats", "scalars", "run_keys", "run_tags", "runs"):
        op.drop_table(table)
