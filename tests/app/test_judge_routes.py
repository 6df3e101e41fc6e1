"""/judge behind a login: no cookie, no page, no pair and no image (401); after Gradio's own
login the judge is the signed-in user whatever name the browser sends, and another user cannot
fetch this judge's images. Without a login (loopback) a typed name is required. Also the PNG
stripping, the trial book and the Judge page's result tables."""

from __future__ import annotations

import pytest

from app.judge_routes import BOOK, MAX_PENDING, TrialBook, strip_png
from tests.e2e.judge_data import png_with_text


@pytest.fixture(scope="module")
def session(store):
    from grpo_guard.judging.sessions import new_session
    from tests.app.synthetic import make_run

    a = make_run("flow_grpo", 11, name="ra", eval_every=10, ckpt_every=100)
    b = make_run("grpo_guard", 11, name="rb", eval_every=10, ckpt_every=100)
    return new_session([a, b], pairs=6)


def _client(monkeypatch, auth: str | None, host: str):
    from fastapi.testclient import TestClient

    from app.main import create_app

    if auth:
        monkeypatch.setenv("GG_AUTH_FILE", auth)
    else:
        monkeypatch.delenv("GG_AUTH_FILE", raising=False)
    monkeypatch.delenv("GG_AUTH", raising=False)
    return TestClient(create_app(host=host, port=7998))


def test_judging_requires_the_servers_login(session, monkeypatch, tmp_path):
    from grpo_guard.store import judgments as J

    users = tmp_path / "users"
    users.write_text("ann:pw\nbob:pw2\n")
    with _client(monkeypatch, str(users), "0.0.0.0") as c:
        page = c.get(f"/judge?session={session}")
        assert page.status_code == 200 and "Sign in to judge" in page.text and "judge/api/next" not in page.text
        assert c.post("/judge/api/next", json={"session": session, "name": "mallory"}).status_code == 401
        assert c.post("/login", data={"username": "ann", "password": "pw"}).status_code == 200
        assert "judge/api/next" in c.get(f"/judge?session={session}").text
        t = c.post("/judge/api/next", json={"session": session, "name": "mallory", "reset": True}).json()
        img = c.get(t["left"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert "content-disposition" not in img.headers and "etag" not in img.headers
        r = c.post("/judge/api/choose", json={"session": session, "trial": t["trial"], "choice": "tie",
                                              "reasons": ["artifacts"], "decide_ms": 812})
        assert r.status_code == 200 and r.json() == {"ok": True, "done": 1, "total": 6}
        stored = J.judgments(session_id=session)
        assert [(j.judge, j.choice, j.reasons, j.decide_ms) for j in stored][-1] == ("ann", "tie", ("artifacts",), 812)
        # a choice twice, a bad choice, a bad reason: refused, nothing more stored
        assert c.post("/judge/api/choose", json={"trial": t["trial"], "choice": "tie"}).status_code == 404
        t2 = c.post("/judge/api/next", json={"session": session}).json()
        assert c.post("/judge/api/choose", json={"trial": t2["trial"], "choice": "up"}).status_code == 400
        assert c.post("/judge/api/choose", json={"trial": t2["trial"], "choice": "left",
                                                 "reasons": ["vibes"]}).status_code == 400
        assert len(J.judgments(session_id=session)) == len(stored)
        c.cookies.clear()
        assert c.post("/login", data={"username": "bob", "password": "pw2"}).status_code == 200
        assert c.get(t2["left"]).status_code == 401, "another user cannot open this judge's images"
        assert c.post("/judge/api/choose", json={"trial": t2["trial"], "choice": "left"}).status_code == 404


def test_without_login_the_judge_types_a_name(session, monkeypatch):
    with _client(monkeypatch, None, "127.0.0.1") as c:
        assert c.get("/judge", follow_redirects=False).headers["location"] == "judgments"
        assert "ASK_NAME = true" in c.get(f"/judge?session={session}").text
        r = c.post("/judge/api/next", json={"session": session})
        assert r.status_code == 400 and "type your name" in r.json()["error"]
        assert c.post("/judge/api/next", json={"session": 999, "name": "cy"}).status_code == 404
        assert c.post("/judge/api/next", json={"session": 10**20, "name": "cy"}).status_code == 404, "not a 500"
        assert c.post("/judge/api/next", json={"session": session, "name": ["cy"]}).status_code == 400
        t = c.post("/judge/api/next", json={"session": session, "name": "cy", "reset": True}).json()
        assert set(t) == {"trial", "prompt", "left", "right", "done", "total"}
        assert c.get("/judge/img/not-a-token").status_code == 404
        # a sample file that is not a PNG is refused, not sent with whatever metadata it carries
        from grpo_guard.store import artifacts

        path = artifacts.resolve(BOOK.image(t["left"].rsplit("/", 1)[1])[0].sample("left").image_location)
        with open(path, "rb") as fh:
            kept = fh.read()
        try:
            with open(path, "wb") as fh:
                fh.write(b"\xff\xd8\xff\xe1 Exif zebra run 7 step 40")
            r = c.get(t["left"])
            assert r.status_code == 415 and b"zebra" not in r.content
        finally:
            with open(path, "wb") as fh:
                fh.write(kept)
        assert c.get(t["left"]).status_code == 200


def test_sides_of_1000_handed_out_trials_are_a_fair_coin(session):
    """The binomial check on what the server hands out, not only on the coin: 1,000 trials of
    the same first pair (the page reloaded each time), each side read back from the trial book
    that only the server holds."""
    from app.judge_routes import next_trial
    from tests.grpo_guard.judging.test_stats import assert_fair_coin

    flips, pairs = [], set()
    for _ in range(1000):
        t = next_trial({"session": session, "reset": True}, "sides")
        trial, side = BOOK.image(t["left"].rsplit("/", 1)[1])
        assert side == "left" and trial.token == t["trial"]
        flips.append(trial.sample("left").id == trial.a.id)
        pairs.add((trial.a.id, trial.b.id))
    assert len(pairs) == 1, "the same pair each time: only its sides may change"
    assert_fair_coin(flips)


def test_pairs_handed_out_at_once_are_all_different(session):
    """Calls for one judge that run at the same time (a prefetch beside a reload; the handler
    runs in the thread pool) each get a different pair."""
    import threading

    from app.judge_routes import next_trial

    def call(start: threading.Barrier, judge: str, got: list) -> None:
        start.wait()
        got.append(next_trial({"session": session}, judge)["trial"])

    for rnd in range(5):
        start, got = threading.Barrier(MAX_PENDING), []
        threads = [threading.Thread(target=call, args=(start, f"race-{rnd}", got)) for _ in range(MAX_PENDING)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pairs = [BOOK.get(tok).pair for tok in got]
        assert len(set(pairs)) == MAX_PENDING, f"round {rnd}: a pair was handed out twice at once"


def test_png_text_chunks_are_stripped_and_pixels_kept():
    from tests.app.synthetic import image

    raw = image("a red circle on a blue background", 0, 0.0)
    leaky = png_with_text(raw, "zebra run 7 step 40")
    assert b"zebra" in leaky and b"zebra" not in strip_png(leaky)
    assert strip_png(leaky) == strip_png(raw)
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(strip_png(leaky))).tobytes() == Image.open(io.BytesIO(raw)).tobytes()
    with pytest.raises(ValueError):
        strip_png(b"GIF89a")


class _S:
    def __init__(self, i):
        self.id = i


def test_trial_book_keeps_few_pending_trials_per_judge():
    book = TrialBook()
    trials = [book.issue(1, "ann", _S(2 * i), _S(2 * i + 1), a_left=True) for i in range(MAX_PENDING + 2)]
    pending = book.pending(1, "ann")
    assert len(pending) == MAX_PENDING and pending[-1] is trials[-1], "the oldest unanswered trials are dropped"
    assert book.image(trials[0].images["left"]) is None and book.image(trials[-1].images["right"])[1] == "right"
    assert trials[-1].sample("left").id == trials[-1].a.id and book.pending(1, "bob") == []
    other = book.issue(2, "ann", _S(100), _S(101), a_left=False)
    assert book.pending_pairs("ann") == {t.pair for t in trials[-MAX_PENDING:]} | {other.pair}, "every session's"
    book.reset(1, "ann")
    assert book.pending(1, "ann") == [] and book.pending_pairs("ann") == {other.pair} and BOOK is not book


def test_results_tables_carry_the_summary(session):
    from app.pages.judge import results_html, show_session
    from grpo_guard.judging.sessions import next_pair, session_summary
    from grpo_guard.store import judgments as J

    x, y = next_pair(J.get_session(session), "dee")
    J.add_judgment(session, "dee", x, y, left_sample_id=y.id, choice="left")
    html, fig = show_session(session)
    s = session_summary(session)
    assert f'data-judgments="{s.judgments}"' in html and "judge?session=" in html
    for p in s.pairs:
        assert f'data-a="{p.a[0]}:{p.a[1]}" data-b="{p.b[0]}:{p.b[1]}"' in html
    assert "no judgments yet" in results_html(type(s)(**{**s.__dict__, "judgments": 0}), {})
    assert "No judging session #4242" in show_session(4242)[0]
    # three runs at two matched steps: a Bradley–Terry table per step, each checkpoint a row
    from grpo_guard.judging.sessions import summarize
    from tests.grpo_guard.judging.test_stats import _row

    rows = [_row("ann", (r, st), (r % 3 + 1, st), "a", (10 * st + r, 10 * st + r + 100)) for st in (0, 1) for r in (1, 2, 3)]
    html = results_html(summarize(rows), {1: "#1 x"})
    assert html.count('class="gg-table judge-results-bt"') == 2 and 'data-ck="3:1"' in html and "#1 x @ step 0" in html


def test_experiments_human_series_pools_each_arms_seeds(store):
    """The Experiments hook: the Judge link names the first seed's arms (no controls) and the
    human series of an arm pools the judgments of all its seeds' runs at each step."""
    from app.pages.judge import experiment_hook
    from grpo_guard.judging.stats import win_rate
    from grpo_guard.store import judgments as J
    from grpo_guard.store import queries
    from tests.experiment_data import stored_experiment

    eid = stored_experiment()
    members = queries.experiment_runs(eid)
    run = {(m.arm, m.seed): m.run.id for m in members}
    sid = J.create_session({"mode": "matched"}, [(1, 2)])
    outcomes = {0: ["left", "left", "tie"], 1: ["right", "left"]}  # flow shown left throughout
    n = 0
    for seed, choices in outcomes.items():
        for c in choices:
            n += 1
            fa = J.JudgeSample(10_000 + n, run[("flow", seed)], 4, f"p{n}", 0, "x", None)
            ga = J.JudgeSample(20_000 + n, run[("guard", seed)], 4, f"p{n}", 0, "x", None)
            J.add_judgment(sid, "ann", fa, ga, left_sample_id=fa.id, choice=c)
    button, fig = experiment_hook(eid)
    assert button.link == f"judgments?runs={run[('flow', 0)]},{run[('guard', 0)]}"
    traces = {t["name"]: t for t in fig.data}
    flow = win_rate(3, 1, 1)  # seed 0: 2 wins 1 tie; seed 1: 1 loss 1 win
    assert list(traces) == ["flow", "guard"] and list(traces["flow"]["y"]) == [pytest.approx(flow.rate)]
    assert list(traces["guard"]["y"]) == [pytest.approx(1 - flow.rate)] and traces["flow"]["text"] == ["n=5"]
    assert list(traces["flow"]["error_y"]["array"]) == [pytest.approx(flow.hi - flow.rate)]
    fig.to_plotly()  # valid against Plotly's schema
    from app.figures import human, is_empty

    assert is_empty(human.human_figure({})) and is_empty(experiment_hook(None)[1])
