"""Judging sessions and judgments in the store (SQLite and PostgreSQL): a session draws its
pairs from stored eval samples, a judge never gets a pair twice, a choice is written once,
the summary and the human series count what was stored, and migration 0007 adds the tables
beside rows of every kind and downgrades."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from grpo_guard.config import RunConfig
from grpo_guard.judging import sessions as S
from grpo_guard.store import db, queries
from grpo_guard.store import judgments as J
from grpo_guard.store.recorder import StoreRecorder
from grpo_guard.training.recording import Sample

PROMPTS = ("a red circle", "a blue square", "a green triangle")


def _run(n_steps=(0, 10, 20), family: str = "colors") -> int:
    rid = queries.create_run(RunConfig.from_dict({"epochs": 21}))
    with StoreRecorder(rid, background=False) as rec:
        for st in n_steps:
            for p in PROMPTS:
                for seed in (0, 1):
                    rec.log_sample(Sample(st, p, seed, b"\x89PNG\r\n\x1a\nfake", proxy=0.5, gold=0.1 * st,
                                          prompt_meta={"tag": family}))
    return rid


def test_a_session_hands_each_pair_once_and_records_choices_once(store):
    a, b = _run(), _run()
    sid = S.new_session([a, b], ["10", "20"], pairs=8, name="t")
    sess = J.get_session(sid)
    assert sess.spec["mode"] == "matched" and sess.spec["steps"] == [10, 20] and len(sess.pairs) == 8
    rows = J.samples_by_id(i for p in sess.pairs for i in p)
    for x, y in sess.pairs:
        sx, sy = rows[x], rows[y]
        assert (sx.run_id, sy.run_id) == (a, b) and sx.step == sy.step and (sx.prompt, sx.seed) == (sy.prompt, sy.seed)
    prompts = [rows[x].prompt for x, _ in sess.pairs]
    assert max(prompts.count(p) for p in PROMPTS) - min(prompts.count(p) for p in PROMPTS) <= 1, "balanced over prompts"

    seen = set()
    for i in range(8):
        pair = S.next_pair(sess, "ann")
        assert pair is not None and frozenset((pair[0].id, pair[1].id)) not in seen
        seen.add(frozenset((pair[0].id, pair[1].id)))
        # the pending pair is skipped when the next one is prefetched before this choice lands
        nxt = S.next_pair(sess, "ann", pending=[frozenset((pair[0].id, pair[1].id))])
        assert nxt is None or {nxt[0].id, nxt[1].id} != {pair[0].id, pair[1].id}
        choice = ("left", "right", "tie")[i % 3]
        assert J.add_judgment(sid, "ann", *pair, left_sample_id=pair[i % 2].id, choice=choice,
                              reasons=["artifacts"] if i == 0 else [], decide_ms=300 + i)
        assert not J.add_judgment(sid, "ann", *pair, left_sample_id=pair[0].id, choice="left"), "written once"
    assert S.next_pair(sess, "ann") is None and S.progress(sess, "ann") == S.Progress(8, 8)
    assert S.next_pair(sess, "bob") is not None

    stored = J.judgments(session_id=sid)
    assert len(stored) == 8 and stored[0].reasons == ("artifacts",) and stored[0].family == "colors"
    summary = S.session_summary(sid)
    wins = sum(j.outcome == "a" for j in stored)
    ties = sum(j.outcome == "tie" for j in stored)
    assert summary.judgments == 8 and summary.judges == ("ann",)
    total = sum(p.rate.n for p in summary.pairs)
    assert total == 8 and sum(p.rate.wins for p in summary.pairs) == wins and sum(p.rate.ties for p in summary.pairs) == ties
    assert [p.family for p in summary.families] == ["colors", "colors"]
    series = S.human_series({"A": [a], "B": [b]})
    assert [st for st, _ in series["A"]] == [10, 20]
    assert sum(r.wins for _, r in series["A"]) == sum(r.losses for _, r in series["B"]) == wins

    out = S.export(sid, "jsonl").splitlines()
    assert len(out) == 8 and json.loads(out[0])["outcome"] == stored[0].outcome
    assert S.export(sid, "csv").splitlines()[0].startswith("id,session_id,judge,")


def test_a_judge_never_gets_a_pair_twice_across_sessions(store):
    """Two sessions over the same runs share their pairs: what a judge judged in the first is
    never handed in the second, and a choice on it there (a second tab) is not written."""
    a, b = _run(n_steps=(0,)), _run(n_steps=(0,))
    first, second = S.new_session([a, b], pairs=6), S.new_session([a, b], pairs=6)
    assert {frozenset(p) for p in J.get_session(first).pairs} == {frozenset(p) for p in J.get_session(second).pairs}
    judged = []
    for _ in range(4):
        x, y = S.next_pair(J.get_session(first), "ann")
        assert J.add_judgment(first, "ann", x, y, left_sample_id=x.id, choice="left")
        judged.append((x, y))
    sess2 = J.get_session(second)
    assert S.progress(sess2, "ann") == S.Progress(4, 6), "progress counts pairs judged in any session"
    rest = []
    while (nxt := S.next_pair(sess2, "ann", pending=[frozenset((p.id, q.id)) for p, q in rest])) is not None:
        rest.append(nxt)
    assert len(rest) == 2 and not {frozenset((p.id, q.id)) for p, q in rest} & {frozenset((p.id, q.id)) for p, q in judged}
    x, y = judged[0]
    assert not J.add_judgment(second, "ann", y, x, left_sample_id=y.id, choice="tie"), "either way round"
    assert len(J.judgments(judge="ann", run_ids=[a])) == 4
    assert J.add_judgment(second, "bob", x, y, left_sample_id=x.id, choice="tie"), "another judge may judge it"


def test_bad_sessions_and_choices_are_refused_with_one_sentence(store):
    a = _run(n_steps=(0, 10))
    with pytest.raises(ValueError, match="no eval samples at step 30"):
        S.new_session([a], ["0", "30"])
    with pytest.raises(LookupError):
        J.get_session(999)
    sid = S.new_session([a], base=True, pairs=2)
    x, y = S.next_pair(J.get_session(sid), "ann")
    assert (x.step, y.step) == (10, 0)
    with pytest.raises(ValueError, match="choice"):
        J.add_judgment(sid, "ann", x, y, left_sample_id=x.id, choice="up")
    with pytest.raises(ValueError, match="left sample"):
        J.add_judgment(sid, "ann", x, y, left_sample_id=12345, choice="left")
    assert J.judgments(session_id=sid) == []


def test_judgments_outlive_a_deleted_run(store):
    a, b = _run(n_steps=(0,)), _run(n_steps=(0,))
    sid = S.new_session([a, b], pairs=1)
    x, y = S.next_pair(J.get_session(sid), "ann")
    J.add_judgment(sid, "ann", x, y, left_sample_id=y.id, choice="left")
    queries.delete_run(a)
    assert [j.outcome for j in J.judgments(session_id=sid)] == ["b"]
    assert S.next_pair(J.get_session(sid), "bob") is None, "a deleted sample is never handed out"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0007_adds_judging_beside_existing_rows_and_downgrades(backend, tmp_path):
    from tests.grpo_guard.store.test_experiments import CHILD_ROWS
    from tests.grpo_guard.store.test_sample_prompt_meta import _downgrade
    from tests.storehelpers import backend_env

    with backend_env(backend, tmp_path, upgrade=False) as url:
        db.upgrade(url, "0004")
        with db.get_engine(url).execution_options(gg_write=True).begin() as conn:
            conn.execute(text("INSERT INTO experiments (name, config_json, created_at, updated_at) VALUES "
                              "('e', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO runs (name, config_json, config_fields_set, algorithm, backbone, status, "
                              "step, total, start_step, last_step, attempt, notes, created_at, updated_at, experiment_id) "
                              "VALUES ('old', '{}', '[]', 'grpo_guard', 'toy', 'queued', 0, 1, 0, 0, 0, '', "
                              "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1)"))
            old = conn.execute(text("SELECT id FROM runs")).scalar_one()
            conn.execute(text("INSERT INTO scalars (run_id, key, step, value, special) VALUES (:r, 'k', 0, 1.0, 0)"),
                         {"r": old})
            conn.execute(text("INSERT INTO step_stats (run_id, step, denoise_index, sigma) VALUES (:r, 0, 0, 0.5)"),
                         {"r": old})
            for sql in CHILD_ROWS:
                conn.execute(text(sql), {"rid": old})
        db.upgrade(url)
        assert db.current_revision(url) == db.SCHEMA_REVISION
        with db.get_engine(url).connect() as conn:
            kept = {t: conn.execute(text(f"SELECT count(*) FROM {t} WHERE run_id = :rid"), {"rid": old}).scalar_one()
                    for t in ("run_tags", "run_keys", "samples", "checkpoints", "log_lines", "scalars", "step_stats")}
            assert conn.execute(text("SELECT count(*) FROM experiments")).scalar_one() == 1
        assert kept == dict.fromkeys(kept, 1), f"the upgrade lost rows: {kept}"
        sample = J.run_samples([old])[0]
        sid = J.create_session({"mode": "steps"}, [(sample.id, sample.id + 1)])
        J.add_judgment(sid, "ann", sample, sample, left_sample_id=sample.id, choice="tie")
        assert len(J.judgments(run_ids=[old])) == 1
        _downgrade(url, "0004")
        with db.get_engine(url).connect() as conn:
            if backend == "sqlite":
                tables = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))}
            else:
                tables = {r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))}
            assert "judgments" not in tables and "judging_sessions" not in tables
            assert conn.execute(text("SELECT count(*) FROM samples")).scalar_one() == 1
