"""SQLAlchemy 2 typed models: the schema of the store. Imports no torch.

The schema itself is owned by the Alembic migrations in ``migrations/versions``; these classes
mirror them (``tests/grpo_guard/store/test_db.py`` checks that the two agree on both SQLite and
PostgreSQL). Constraints are named through ``NAMING_CONVENTION`` so that batch migrations on
SQLite can drop and recreate them. The two high-volume tables, ``scalars`` and ``step_stats``,
carry no foreign key (migration 0002: on PostgreSQL the per-row trigger halves ingestion);
``queries.delete_run`` removes their rows explicitly.

Tables (natural keys in brackets; writes are upserts on them):
  runs         one row per run: config, status, control flags, progress, worker, heartbeat, error
  run_tags     [run_id, tag]
  run_keys     [run_id, kind, key]  metric / step-stat keys a run has, so key lists need no scan
  scalars      [run_id, key, step]  long and narrow; NaN/inf kept in ``special``
  step_stats   [run_id, step, denoise_index]  one wide row per denoising step (ALGORITHM.md §8)
  samples      [run_id, step, prompt, seed]  eval images (bytes live in the artifact store)
  checkpoints  [run_id, step]
  log_lines    append-only, ordered by id
  experiments  one row per experiment (arms x seeds over a base config); its runs point at it
  judging_sessions, judgments  human gold: blind A/B choices on pairs of eval samples (0007)
  evaluations  one benchmark evaluation of a model (base, run + step, checkpoint file) under a protocol
  gang_members [run_id, node_rank]  the nodes of a multi-node run's latest gang (0009, store.gangs)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from grpo_guard.store.entities import RUN_STATUSES

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The per-denoising-step statistics of ALGORITHM.md §8 that get their own column (fast to read
# as a step x j matrix). Any other float a trainer reports lands in ``step_stats.extra`` (JSON).
STEP_STAT_COLUMNS: tuple[str, ...] = (
    "std_dev_t", "s", "beta", "delta",
    "logr_mean", "logr_std", "r_mean_minus_1", "r_std",
    "logrhat_mean", "logrhat_std", "rhat_mean_minus_1", "rhat_std",
    "bias", "drift_rms", "clip_high", "clip_low", "pos_adv_clipped", "neg_adv_clipped",
    "grad_zeroed_frac", "grad_norm_v", "eff_weight", "approx_kl", "kl_ref",
    "adv_pos_frac", "adv_abs_mean",
)

# SQLite: a 64-bit autoincrement key must be spelled INTEGER to alias the rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
UtcDateTime = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    config_json: Mapped[str] = mapped_column(Text)  # the full resolved RunConfig (JSON text)
    config_fields_set: Mapped[str] = mapped_column(Text, default="[]")  # JSON list: user-set fields
    algorithm: Mapped[str] = mapped_column(String(40), default="")
    backbone: Mapped[str] = mapped_column(String(20), default="")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # control flags (DESIGN.md data flow 6): set by the UI/CLI, polled by the trainer each step
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    sample_now: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    save_now: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # progress, as reported by the trainer; last_step is the largest step with stored rows
    step: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    start_step: Mapped[int] = mapped_column(Integer, default=0)  # step at which this attempt began
    last_step: Mapped[int] = mapped_column(Integer, default=-1)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    # the worker that holds the run; `lease` fences writes of a worker that lost it
    worker_host: Mapped[str | None] = mapped_column(String(255))
    worker_gpu: Mapped[str | None] = mapped_column(String(32))
    task_id: Mapped[str | None] = mapped_column(String(64))
    lease: Mapped[str | None] = mapped_column(String(36))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    pair_id: Mapped[str | None] = mapped_column(String(64))
    # an experiment's runs: which experiment, which arm label (``<arm>`` or ``<arm>/control``), which seed
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id", ondelete="SET NULL"))
    experiment_arm: Mapped[str | None] = mapped_column(String(80))
    experiment_seed: Mapped[int | None] = mapped_column(Integer)
    notes: Mapped[str] = mapped_column(Text, default="")
    # latest eval values (mean over the eval prompt x seed set at the latest eval step)
    last_proxy: Mapped[float | None] = mapped_column(Float)
    last_gold: Mapped[float | None] = mapped_column(Float)
    last_eval_step: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    enqueued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("status IN ({})".format(", ".join(f"'{s}'" for s in RUN_STATUSES)), name="status"),
        Index(None, "status"),
        Index(None, "created_at"),
        Index(None, "pair_id"),
        Index(None, "parent_id"),
        Index(None, "experiment_id"),
    )


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    config_json: Mapped[str] = mapped_column(Text)  # the ExperimentConfig (JSON text, base inlined)
    tags_json: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index(None, "created_at"),)


class RunTag(Base):
    __tablename__ = "run_tags"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)

    __table_args__ = (Index(None, "tag"),)


class RunKey(Base):
    __tablename__ = "run_keys"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(12), primary_key=True)  # "scalar" | "step_stat"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)


class Scalar(Base):
    __tablename__ = "scalars"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # no FK: see migration 0002
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)  # NULL when not finite, see `special`
    special: Mapped[int] = mapped_column(SmallInteger, default=0)  # 0 finite, 1 NaN, 2 +inf, 3 -inf

    __table_args__ = ({"sqlite_with_rowid": False},)


class StepStatRow(Base):
    __tablename__ = "step_stats"

    run_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # no FK: see migration 0002
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    denoise_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    sigma: Mapped[float | None] = mapped_column(Float)
    dt: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict | None] = mapped_column(JSON(none_as_null=True))

    __table_args__ = ({"sqlite_with_rowid": False},)


for _name in STEP_STAT_COLUMNS:  # one nullable float column per §8 statistic
    setattr(StepStatRow, _name, Column(_name, Float, nullable=True))
del _name


class EvalSample(Base):
    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    image_location: Mapped[str] = mapped_column(String(1000))
    proxy: Mapped[float | None] = mapped_column(Float)
    gold: Mapped[float | None] = mapped_column(Float)
    scores: Mapped[str] = mapped_column(Text, default="{}")  # JSON object name -> value
    prompt_meta: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")  # JSON: GenEval tag, include, exclude

    __table_args__ = (
        UniqueConstraint("run_id", "step", "prompt", "seed"),
        Index(None, "run_id", "prompt", "seed", "step"),
    )


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    location: Mapped[str] = mapped_column(String(1000))
    meta: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LogLine(Base):
    __tablename__ = "log_lines"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    level: Mapped[str] = mapped_column(String(10), default="info")
    message: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index(None, "run_id", "id"),)


class JudgingSession(Base):
    """What a human judging session compares (migration 0007): ``spec_json`` holds the mode,
    runs and steps; ``pairs_json`` the drawn sample pairs ``[[a_id, b_id], ...]`` in the order
    judges get them (balanced over prompts)."""

    __tablename__ = "judging_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    spec_json: Mapped[str] = mapped_column(Text)
    pairs_json: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Judgment(Base):
    """One blind choice: ``choice`` is the side pressed (left / right / tie) and
    ``left_sample_id`` which sample was shown left; run, step, prompt and seed of both samples
    are kept so a judgment outlives a deleted run."""

    __tablename__ = "judgments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("judging_sessions.id", ondelete="CASCADE"))
    judge: Mapped[str] = mapped_column(String(200))
    sample_a_id: Mapped[int] = mapped_column(BigInteger)
    sample_b_id: Mapped[int] = mapped_column(BigInteger)
    a_run_id: Mapped[int] = mapped_column(Integer)
    a_step: Mapped[int] = mapped_column(Integer)
    b_run_id: Mapped[int] = mapped_column(Integer)
    b_step: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    family: Mapped[str] = mapped_column(String(80), default="", server_default="")
    left_sample_id: Mapped[int] = mapped_column(BigInteger)
    choice: Mapped[str] = mapped_column(String(8))
    reasons: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    decide_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("choice IN ('left', 'right', 'tie')", name="choice"),
        UniqueConstraint("session_id", "judge", "sample_a_id", "sample_b_id"),
        Index(None, "a_run_id"),
        Index(None, "b_run_id"),
        Index(None, "judge"),
    )


EVALUATION_STATUSES = ("queued", "running", "succeeded", "failed")
MODEL_KINDS = ("base", "run", "checkpoint")


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    benchmark: Mapped[str] = mapped_column(String(40))
    model_kind: Mapped[str] = mapped_column(String(12))  # base | run | checkpoint
    model_key: Mapped[str] = mapped_column(String(300))  # what "the same model" means for reuse
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int | None] = mapped_column(Integer)
    checkpoint_path: Mapped[str | None] = mapped_column(String(1000))
    protocol_json: Mapped[str] = mapped_column(Text)
    protocol_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(12))
    metrics_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    per_prompt_json: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    images_location: Mapped[str | None] = mapped_column(String(1000))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("model_kind IN ('base', 'run', 'checkpoint')", name="model_kind"),
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="status"),
        Index(None, "run_id"),
        Index(None, "model_key", "benchmark", "protocol_hash"),
    )


GANG_STATES = ("joined", "ready", "stopping", "lost", "done", "released")


class GangMember(Base):
    """One node of the gang that runs a multi-node run (migration 0009, ``grpo_guard.store.gangs``):
    the latest gang of each run, one row per node rank. ``gang`` names one formation; node 0's
    row carries the rendezvous endpoint (``address``:``port``) the other nodes launch against."""

    __tablename__ = "gang_members"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    node_rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    gang: Mapped[str] = mapped_column(String(36))
    num_nodes: Mapped[int] = mapped_column(Integer)
    num_gpus: Mapped[int] = mapped_column(Integer)  # per node: with num_nodes, the gang's queue
    state: Mapped[str] = mapped_column(String(10))
    worker_host: Mapped[str] = mapped_column(String(255))
    worker_gpu: Mapped[str | None] = mapped_column(String(255))
    address: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int | None] = mapped_column(Integer)
    deadline: Mapped[datetime] = mapped_column(UtcDateTime)  # the gang must be complete by then
    joined_at: Mapped[datetime] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("state IN ({})".format(", ".join(f"'{s}'" for s in GANG_STATES)), name="state"),
        Index(None, "gang"),
    )
