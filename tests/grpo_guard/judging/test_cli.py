"""`grpo-guard judge new` prints the session URL; `grpo-guard judgments summary|export` print
what the store holds; bad input is one line and exit code 1, with nothing written."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from grpo_guard.cli import main
from tests.storehelpers import backend_env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    with backend_env("sqlite", tmp_path_factory.mktemp("judge-cli")):
        from tests.app.synthetic import make_run

        yield (make_run("flow_grpo", 21, name="a", eval_every=10, ckpt_every=100),
               make_run("grpo_guard", 21, name="b", eval_every=10, ckpt_every=100))


def test_judge_new_prints_the_url_and_summary_export_read_the_store(runs):
    from grpo_guard.judging.sessions import next_pair
    from grpo_guard.store import judgments as J

    a, b = runs
    r = CliRunner().invoke(main, ["judge", "new", "--runs", f"{a},{b}", "--steps", "10,20", "--pairs", "6",
                                  "--url", "http://studio:8080/"])
    assert r.exit_code == 0, r.output
    url = r.stdout.strip().splitlines()[-1]
    sid = int(url.rsplit("=", 1)[1])
    assert url == f"http://studio:8080/judge?session={sid}"
    sess = J.get_session(sid)
    assert len(sess.pairs) == 6 and sess.spec["steps"] == [10, 20]
    for i, choice in enumerate(("left", "right", "tie")):
        x, y = next_pair(sess, "ann")
        J.add_judgment(sid, "ann", x, y, left_sample_id=x.id, choice=choice, reasons=["image quality"] * (i == 0))
    out = CliRunner().invoke(main, ["judgments", "summary", str(sid)])
    assert out.exit_code == 0 and "3 judgment(s) by 1 judge(s) (ann)" in out.output and "Wilson" in out.output
    data = json.loads(CliRunner().invoke(main, ["judgments", "summary", str(sid), "--json"]).output)
    assert sum(p["n"] for p in data["pairs"]) == 3 and data["reasons"] == {"image quality": 1}
    rows = list(csv.DictReader(io.StringIO(CliRunner().invoke(main, ["judgments", "export", str(sid)]).output)))
    assert [r["choice"] for r in rows] == ["left", "right", "tie"] and rows[0]["left"] == "a"
    lines = CliRunner().invoke(main, ["judgments", "export", str(sid), "--format", "jsonl"]).output.splitlines()
    assert [json.loads(x)["outcome"] for x in lines] == ["a", "b", "tie"], "A was left: right means B"

    one = CliRunner().invoke(main, ["judge", "new", "--runs", str(a), "--steps", "best,last"])
    assert one.exit_code == 0 and J.get_session(int(one.stdout.strip().rsplit("=", 1)[1])).spec["mode"] == "steps"


@pytest.mark.parametrize("args, needle", [
    (["judge", "new", "--runs", "x"], "run ids are numbers"),
    (["judge", "new", "--runs", "1,999"], "run 999 has no eval samples"),
    (["judge", "new", "--runs", "1", "--steps", "0,15"], "no eval samples at step 15"),
    (["judgments", "summary", "4242"], "no judging session with id 4242"),
    (["judgments", "export", "4242"], "no judging session with id 4242"),
    (["judgments", "summary", str(10**20)], f"no judging session with id {10**20}"),
    (["judge", "new", "--runs", f"1,{10**20}"], f"run {10**20} has no eval samples"),
])
def test_bad_input_is_one_line(runs, args, needle):
    from grpo_guard.store import judgments as J

    before = len(J.list_sessions())
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and needle in r.output and "Traceback" not in r.output, r.output
    assert len(J.list_sessions()) == before
