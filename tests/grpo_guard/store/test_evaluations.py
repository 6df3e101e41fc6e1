"""The evaluations table on SQLite and PostgreSQL: rows, reuse of a base result by model and
protocol, a run's evaluations go with the run, and migration 0006 up and down on a store holding
rows of every kind."""

import pytest

from grpo_guard.config import RunConfig
from grpo_guard.store import evaluations as ev
from grpo_guard.store import queries


def test_an_evaluation_is_created_finished_and_found_again_for_the_same_protocol(store):
    base = ev.ModelRef("base", "base:toy:")
    proto = {"benchmark": "toy", "images_per_prompt": 2, "prompt_set_hash": "ab"}
    eid = ev.create_evaluation("toy", base, proto)
    assert ev.get_evaluation(eid).status == "queued" and ev.find_result("base:toy:", "toy", ev.protocol_hash(proto)) is None
    assert ev.claim_evaluation(eid) and not ev.claim_evaluation(eid), "a duplicate message claims nothing"
    ev.finish_evaluation(eid, {"toy_alignment": 0.5}, [{"prompt": "p", "toy_alignment": 0.5}], "evaluations/1")
    got = ev.find_result("base:toy:", "toy", ev.protocol_hash(proto))
    assert got.id == eid and got.metrics == {"toy_alignment": 0.5} and got.per_prompt[0]["prompt"] == "p"
    assert ev.find_result("base:toy:", "toy", ev.protocol_hash({**proto, "images_per_prompt": 4})) is None
    assert got.protocol == proto and got.model.label() == "base toy"
    assert ev.ModelRef("base", "base:sd3:/models/sd3.5-medium").label() == "base sd3 (/models/sd3.5-medium)"


def test_a_runs_evaluations_are_listed_and_deleted_with_it(store):
    rid = queries.create_run(RunConfig.from_dict({}))
    eid = ev.create_evaluation("toy", ev.ModelRef("run", f"run:{rid}:4", rid, 4), {"a": 1}, status="running")
    ev.fail_evaluation(eid, "boom")
    (row,) = ev.evaluations_of([rid])
    assert row.status == "failed" and row.error == "boom" and row.model.step == 4
    queries.delete_run(rid)
    assert ev.evaluations_of([rid]) == []


CHILD_ROWS = (
    "INSERT INTO run_tags (run_id, tag) VALUES (:rid, 'old')",
    "INSERT INTO run_keys (run_id, kind, key) VALUES (:rid, 'scalar', 'eval/gold')",
    "INSERT INTO scalars (run_id, key, step, value, special) VALUES (:rid, 'eval/gold', 0, 0.5, 0)",
    "INSERT INTO step_stats (run_id, step, denoise_index, sigma) VALUES (:rid, 0, 0, 0.9)",
    "INSERT INTO samples (run_id, step, prompt, seed, image_location, scores, prompt_meta) "
    "VALUES (:rid, 0, 'a cat', 0, 'runs/1/x.png', '{}', '{}')",
    "INSERT INTO checkpoints (run_id, step, location, meta, created_at) VALUES (:rid, 0, 'c.pt', '{}', CURRENT_TIMESTAMP)",
    "INSERT INTO log_lines (run_id, attempt, created_at, level, message) VALUES (:rid, 0, CURRENT_TIMESTAMP, 'info', 'hi')",
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0006_keeps_every_row_and_downgrades(backend, tmp_path):
    from sqlalchemy import inspect, text

    from grpo_guard.store import db
    from tests.grpo_guard.store.test_sample_prompt_meta import _downgrade
    from tests.storehelpers import backend_env

    with backend_env(backend, tmp_path, upgrade=False) as url:
        db.upgrade(url, "0004")
        with db.get_engine(url).execution_options(gg_write=True).begin() as conn:
            conn.execute(text("INSERT INTO experiments (name, config_json, tags_json, notes, created_at, updated_at) "
                              "VALUES ('e', '{}', '[]', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            eid = conn.execute(text("SELECT id FROM experiments")).scalar_one()
            conn.execute(text("INSERT INTO runs (name, config_json, config_fields_set, algorithm, backbone, status, "
                              "step, total, start_step, last_step, attempt, notes, created_at, updated_at, "
                              "experiment_id, experiment_arm, experiment_seed) VALUES "
                              "('old', '{}', '[]', 'grpo_guard', 'toy', 'queued', 0, 1, 0, 0, 0, '', "
                              "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, :eid, 'a', 0)"), {"eid": eid})
            old = conn.execute(text("SELECT id FROM runs")).scalar_one()
            for sql in CHILD_ROWS:
                conn.execute(text(sql), {"rid": old})
        tables = ("run_tags", "run_keys", "scalars", "step_stats", "samples", "checkpoints", "log_lines")

        def counts():
            with db.get_engine(url).connect() as conn:
                return {t: conn.execute(text(f"SELECT count(*) FROM {t} WHERE run_id = :rid"), {"rid": old}).scalar_one()
                        for t in tables}

        db.upgrade(url)
        assert counts() == dict.fromkeys(tables, 1), "the upgrade lost rows of an existing run"
        assert db.current_revision(url) == db.SCHEMA_REVISION
        assert queries.experiment_of(old) == (eid, "a", 0)
        ev.create_evaluation("toy", ev.ModelRef("run", f"run:{old}:0", old, 0), {"x": 1})
        _downgrade(url, "0004")
        assert "evaluations" not in inspect(db.get_engine(url)).get_table_names()
        assert counts() == dict.fromkeys(tables, 1), "the downgrade lost rows of an existing run"
