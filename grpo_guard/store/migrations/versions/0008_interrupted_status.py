"""The ``interrupted`` run status: a worker shut down (Ctrl-C, SIGTERM) checkpointed the run and let
it go; the next worker resumes it at once. Only the ``runs.status`` CHECK constraint changes.

On SQLite the batch mode recreates ``runs``: ``grpo_guard.store.db`` runs every migration with
foreign keys off, so the recreate cannot cascade into the rows the runs own. The downgrade turns
interrupted runs into cancelled ones (resumable by hand, as before this revision).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD = ("queued", "running", "stopping", "succeeded", "failed", "cancelled")
NEW = (*OLD, "interrupted")


def _check(statuses: tuple[str, ...]) -> str:
    return "status IN ({})".format(", ".join(f"'{s}'" for s in statuses))


def _replace(statuses: tuple[str, ...]) -> None:
    # Older revisions passed the constraint's name through the naming convention once more
    # (ck_runs_ck_runs_status): drop the status check by the name it has, whatever that is.
    bind = op.get_bind()
    old = [c["name"] for c in sa.inspect(bind).get_check_constraints("runs") if "status" in c["sqltext"]]
    if bind.dialect.name == "sqlite":
        # batch mode recreates the table; it must keep reflected names as they are
        with op.batch_alter_table("runs", recreate="always", naming_convention={"ck": "%(constraint_name)s"}) as batch:
            for name in old:
                batch.drop_constraint(op.f(name), type_="check")
            batch.create_check_constraint(op.f("ck_runs_status"), _check(statuses))
    else:
        for name in old:
            op.drop_constraint(op.f(name), "runs", type_="check")
        op.create_check_constraint(op.f("ck_runs_status"), "runs", _check(statuses))


def upgrade() -> None:
    _replace(NEW)


def downgrade() -> None:
    op.execute(sa.text("UPDATE runs SET status = 'cancelled' WHERE status = 'interrupted'"))
    _replace(OLD)
