"""Browser end-to-end of human judging: `grpo-guard serve` on a store with two SYNTHETIC runs
(tests/e2e/judge_data.py), a session made by `grpo-guard judge new`, judged with the keyboard
in Debian's Chromium through Playwright.

* 20 pairs judged with ←, →, ↓; every choice is stored as pressed, and each next pair is on
  screen within 200 ms of the key press (performance.now() in the page, prefetched pair);
* blinding: every URL the judging page requested and every body it received (HTML, JSON,
  image bytes) is free of run names and ids-in-paths, steps, algorithms and artifact paths
  (the stored PNGs carry a tEXt chunk naming them, which the server strips);
* a second judge with the buttons and the reason tags (keys 1–3 and clicks);
* the results page (win rates, Cohen's kappa of the two judges, human series) and the human
  series on Compare and Experiments equal the statistics of the stored rows; the Judge
  buttons of Compare and Experiments open the Judge page with their runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.e2e.conftest import served, store_env
from tests.e2e.judge_data import RUN_NAMES
from tests.e2e.test_ui_e2e import (
    ARTIFACTS,
    ROOT,
    _free_port,
    _wait_for,
    chromium_page,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KEYS = ["ArrowLeft", "ArrowRight", "ArrowDown", "ArrowLeft", "ArrowLeft"] * 4
CHOICE = {"ArrowLeft": "left", "ArrowRight": "right", "ArrowDown": "tie"}
READ_TRACES = """(sel) => {
    const gd = document.querySelector(sel + ' .js-plotly-plot');
    if (!gd || !gd._fullData || !gd._fullData.length) return null;
    return gd._fullData.map(t => ({name: t.name, x: Array.from(t.x || []), y: Array.from(t.y || []),
                                   plus: Array.from((t.error_y && t.error_y.array) || []),
                                   minus: Array.from((t.error_y && t.error_y.arrayminus) || [])}));
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; see scripts/install.sh)")
    data = tmp_path_factory.mktemp("e2e-judge")
    env = store_env(data, "GG_PUBLIC_URL")
    made = subprocess.run([sys.executable, "-m", "tests.e2e.judge_data"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert made.returncode == 0, made.stderr[-2000:]
    *runs, experiment = [int(x) for x in made.stdout.split()]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    new = subprocess.run([sys.executable, "-m", "grpo_guard.cli", "judge", "new", "--runs", ",".join(map(str, runs)),
                          "--pairs", "20", "--url", url], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert new.returncode == 0, new.stderr[-2000:]
    link = new.stdout.strip().splitlines()[-1]
    assert re.fullmatch(re.escape(url) + r"/judge\?session=\d+", link), f"judge new prints the session URL: {link!r}"
    with served(data, env, port):
        yield {"url": url, "link": link, "session": int(link.rsplit("=", 1)[1]), "runs": runs, "data": str(data),
               "experiment": experiment}


@pytest.fixture(scope="module")
def store(server):
    """The server's store, read in this process (same SQLite file)."""
    from grpo_guard.store import db

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GG_DATA_DIR", server["data"])
        for k in ("GG_DATABASE_URL", "GG_ARTIFACTS"):
            mp.delenv(k, raising=False)
        try:
            yield
        finally:
            db.dispose_engines()


def _forbidden(server) -> list[str]:
    """What must never reach the judging browser: run names, algorithms, artifact paths and the
    sample files' prompt digests, and any 'step' or 'run' field."""
    from tests.app.synthetic import PROMPTS

    words = [*RUN_NAMES, "flow_grpo", "grpo_guard", "flow-grpo", "grpo-guard", "runs/", "samples/", ".png",
             "image_location", '"step"', '"run', "step ", "orig_name"]
    return words + [hashlib.sha1(p.encode()).hexdigest()[:12] for p in PROMPTS]


def test_judge_20_pairs_by_keyboard_blind_fast_and_the_results_equal_the_store(server, store):
    from grpo_guard.judging import sessions as S
    from grpo_guard.store import judgments as J
    from grpo_guard.store import queries

    seen: list[tuple[str, bytes]] = []
    with chromium_page() as page:
        page.on("request", lambda r: seen.append((f"request {r.method} {r.url}", (r.post_data or "").encode())))

        def keep(resp):
            try:
                seen.append((f"response {resp.url} {json.dumps(resp.headers)}", resp.body()))
            except Exception:  # a response without a body (a redirect)
                seen.append((f"response {resp.url} {json.dumps(resp.headers)}", b""))

        page.on("response", keep)

        def through(route):
            """Every image goes through here, so its bytes are read for certain: Playwright's
            response.body() comes back empty for a fetch() the page reads as a blob."""
            resp = route.fetch()
            body = resp.body()
            seen.append((f"image {route.request.url} {json.dumps(resp.headers)}", body))
            route.fulfill(response=resp, body=body)

        page.route("**/judge/img/**", through)
        page.goto(server["link"], wait_until="domcontentloaded")
        page.locator("#judge-name").fill("ann")
        page.locator("#judge-name").press("Enter")
        page.wait_for_function("window.ggJudge.ready")
        assert page.locator("#judge-left").get_attribute("alt") == "left image"
        assert page.locator("#judge-left").get_attribute("src").startswith("blob:")
        page.screenshot(path=os.path.join(ARTIFACTS, "judge.png"))
        for i, key in enumerate(KEYS):
            page.wait_for_function("window.ggJudge.prefetched && !window.ggJudge.finished")
            page.keyboard.press(key)
            page.wait_for_function(f"window.ggJudge.shown >= {i + 1}")
        page.wait_for_function("window.ggJudge.finished")
        _wait_for(lambda: "20 / 20" in page.locator("#judge-progress").inner_text(), 30, "the last choice stored")
        state = page.evaluate("window.ggJudge")
        page.screenshot(path=os.path.join(ARTIFACTS, "judge_done.png"))
        page.remove_listener("response", keep)
        page.unroute("**/judge/img/**")
        assert state["errors"] == [], state["errors"]

        # 1. every choice stored as pressed, once, by the typed judge
        rows = J.judgments(session_id=server["session"])
        assert [j.choice for j in rows] == [CHOICE[k] for k in KEYS] and {j.judge for j in rows} == {"ann"}
        assert len({frozenset((j.sample_a_id, j.sample_b_id)) for j in rows}) == 20, "never the same pair twice"
        # 2. the next pair on screen within 200 ms of each key press (measured in the page)
        lat = sorted(state["latencies"])
        with open(os.path.join(ARTIFACTS, "judge_latency.json"), "w") as fh:
            json.dump({"latencies_ms": state["latencies"]}, fh)
        # 19 of 20: one scheduling hiccup of a loaded CI machine is not the page's (measured here:
        # 3-48 ms, medians 12-15 ms, at load 10 on 2 cores)
        assert len(lat) == 20 and lat[-2] < 200, f"next-pair latency (ms), 19 of 20 under 200: {lat}"
        # 3. blinding: nothing identifying in any URL or body the judging page saw
        bad = [(where, w) for where, body in seen for w in _forbidden(server)
               if w.lower() in where.lower() or w.lower().encode() in body.lower()]
        assert not bad, f"the judging page leaked: {bad[:5]}"
        apis = [json.loads(body) for where, body in seen if where.startswith("response") and "/judge/api/" in where]
        assert apis and all(set(a) <= {"trial", "prompt", "left", "right", "done", "total", "ok"} for a in apis)
        images = [body for where, body in seen if where.startswith("image ")]
        assert len(images) == 2 * 20, "each pair fetched once, prefetch included"
        assert all(body.startswith(b"\x89PNG\r\n\x1a\n") and len(body) > 100 for body in images), \
            "the image bytes themselves were read (and searched) above"

        # 4. a second judge with the buttons and the reason tags (key 1, a click on "artifacts"; key
        #    2 twice is off again); the tags start unpressed on each new pair
        page.evaluate("localStorage.clear()")
        page.goto(server["link"], wait_until="domcontentloaded")
        page.locator("#judge-name").fill("bob")
        page.locator("#judge-name").press("Enter")
        page.wait_for_function("window.ggJudge.ready")
        pressed = "() => [...document.querySelectorAll('.reason')].map(b => b.getAttribute('aria-pressed'))"
        for i, (button, tags) in enumerate([("#judge-btn-right", ["1", "artifacts"]), ("#judge-btn-tie", ["2", "2"]),
                                            ("#judge-btn-left", [])]):
            page.wait_for_function("window.ggJudge.prefetched")
            assert page.evaluate(pressed) == ["false"] * 3
            for tag in tags:
                if tag.isdigit():
                    page.keyboard.press(tag)
                else:
                    page.locator(f'.reason[data-reason="{tag}"]').click()
            page.locator(button).click()
            page.wait_for_function(f"window.ggJudge.shown >= {i + 1}")
        _wait_for(lambda: "3 / 20" in page.locator("#judge-progress").inner_text(), 30, "bob's choices stored")
        assert page.evaluate("window.ggJudge.errors") == []
        bob = J.judgments(session_id=server["session"], judge="bob")
        assert [(j.choice, j.reasons) for j in bob] == [("right", ("prompt alignment", "artifacts")), ("tie", ()),
                                                       ("left", ())]
        ann_pairs = [frozenset((j.sample_a_id, j.sample_b_id)) for j in rows]
        assert [frozenset((j.sample_a_id, j.sample_b_id)) for j in bob] == ann_pairs[:3], "the session's order"

        # 5. the results page shows the statistics of the stored rows, the judges' agreement and
        #    the session's human series
        page.goto(f"{server['url']}/judgments?session={server['session']}", wait_until="domcontentloaded")
        page.locator("#judge-results").wait_for()
        summary = S.session_summary(server["session"])
        shown = page.evaluate("""() => [...document.querySelectorAll('#judge-results-pairs tr[data-a]')].map(r =>
            [r.dataset.a, r.dataset.b, ...[...r.querySelectorAll('td')].slice(2).map(td => td.innerText)])""")
        want = [[f"{p.a[0]}:{p.a[1]}", f"{p.b[0]}:{p.b[1]}", str(p.rate.wins), str(p.rate.losses), str(p.rate.ties),
                 str(p.rate.n), f"{p.rate.rate:.3f}", f"[{p.rate.lo:.3f}, {p.rate.hi:.3f}]"] for p in summary.pairs]
        assert shown == want and sum(int(r[5]) for r in shown) == 23
        assert page.locator("#judge-results").get_attribute("data-judgments") == "23"
        ag = summary.agreement
        assert ag is not None and (ag.method, ag.items, ag.judges) == ("cohen", 3, 2)
        kappa = page.locator("#judge-results-kappa").get_attribute("data-kappa")
        assert (kappa == "") if ag.kappa is None else float(kappa) == pytest.approx(ag.kappa, abs=1e-12)
        assert "Cohen's kappa" in page.locator("#judge-results-kappa").inner_text()
        labels = {r: f"#{r} {n}" for r, n in zip(server["runs"], RUN_NAMES, strict=True)}
        series = S.human_series({labels[r]: [r] for r in server["runs"]})
        _same_series(_wait_for(lambda: page.evaluate(READ_TRACES, "#judge-human"), 60, "the results' human series"),
                     series)
        page.screenshot(path=os.path.join(ARTIFACTS, "judge_results.png"), full_page=True)

        # 6. Compare shows the human series of the two runs with its intervals
        page.goto(f"{server['url']}/compare?runs={','.join(map(str, server['runs']))}", wait_until="domcontentloaded")
        _same_series(_wait_for(lambda: page.evaluate(READ_TRACES, "#compare-human"), 60, "the human series"), series)
        page.locator("#compare-human").screenshot(path=os.path.join(ARTIFACTS, "judge_compare_human.png"))
        href = page.locator("#compare-judge").get_attribute("href") or page.locator("#compare-judge a").get_attribute("href")
        assert href and href.endswith("judgments?runs=" + ",".join(map(str, server["runs"])))

        # 7. Compare's Judge button opens the Judge page with the runs filled in; a session is made there
        page.locator("#compare-judge").click()
        page.wait_for_url(re.compile(r".*/judgments\?runs="))
        box = page.locator("#judge-runs textarea, #judge-runs input").first
        _wait_for(lambda: box.input_value() == ",".join(map(str, server["runs"])), 60, "the runs filled in")
        steps = page.locator("#judge-steps textarea, #judge-steps input").first
        steps.fill("15")
        steps.press("Tab")
        before = len(J.list_sessions())
        page.locator("#judge-create").click()
        page.locator("#judge-create-error").wait_for()
        assert "no eval samples at step 15" in page.locator("#judge-create-error").inner_text()
        assert len(J.list_sessions()) == before, "a refused session writes nothing"
        steps.fill("10")
        steps.press("Tab")
        page.locator("#judge-create").click()
        page.locator("#judge-created").wait_for()
        new = int(page.locator("#judge-created").get_attribute("data-session"))
        made = J.get_session(new)
        assert made.spec["mode"] == "matched" and made.spec["steps"] == [10] and len(made.pairs) == 8
        assert page.locator("#judge-start-link").get_attribute("href") == f"judge?session={new}"

        # 8. Experiments: the Judge button names the first seed's arms (controls left out) and the
        #    human series of each arm pools its seeds' judgments
        _experiment_judgments(server["experiment"])
        arms: dict[str, list[int]] = {}
        for m in queries.experiment_runs(server["experiment"]):
            arms.setdefault(m.arm, []).append(m.run.id)
        page.goto(f"{server['url']}/experiments?experiment={server['experiment']}", wait_until="domcontentloaded")
        traces = _wait_for(lambda: page.evaluate(READ_TRACES, "#exp-plot-human"), 60, "the arms' human series")
        want = S.human_series(arms)
        assert set(want) == {"flow", "guard"} and want["flow"][0][1].n == 5
        _same_series(traces, want)
        first = [m.run.id for m in queries.experiment_runs(server["experiment"]) if m.seed == 0 and "/" not in m.arm]
        href = page.locator("#exp-judge").get_attribute("href") or page.locator("#exp-judge a").get_attribute("href")
        assert href and href.endswith("judgments?runs=" + ",".join(map(str, first)))
        page.locator("#exp-plot-human").screenshot(path=os.path.join(ARTIFACTS, "judge_experiment_human.png"))


def _same_series(traces, series) -> None:
    """The plotted human series equal ``series`` (label -> [(step, WinRate)]): steps, win rates,
    Wilson bounds as error bars, and no trace besides."""
    assert traces is not None and sorted(t["name"] for t in traces) == sorted(series)
    for name, points in series.items():
        t = next(t for t in traces if t["name"] == name)
        assert t["x"] == [st for st, _ in points]
        assert t["y"] == pytest.approx([r.rate for _, r in points], abs=1e-9)
        assert t["plus"] == pytest.approx([r.hi - r.rate for _, r in points], abs=1e-9)
        assert t["minus"] == pytest.approx([r.rate - r.lo for _, r in points], abs=1e-9)


def _experiment_judgments(eid: int) -> None:
    """Judgments of the experiment's flow against guard runs at step 4 (flow shown left):
    seed 0 two flow wins and a tie, seed 1 a loss and a win: flow 3 wins, 1 loss, 1 tie."""
    from grpo_guard.store import judgments as J
    from grpo_guard.store import queries

    run = {(m.arm, m.seed): m.run.id for m in queries.experiment_runs(eid)}
    sid = J.create_session({"mode": "matched"}, [(1, 2)])
    n = 0
    for seed, choices in {0: ["left", "left", "tie"], 1: ["right", "left"]}.items():
        for c in choices:
            n += 1
            fa = J.JudgeSample(10_000 + n, run[("flow", seed)], 4, f"p{n}", 0, "x", None)
            ga = J.JudgeSample(20_000 + n, run[("guard", seed)], 4, f"p{n}", 0, "x", None)
            J.add_judgment(sid, "ann", fa, ga, left_sample_id=fa.id, choice=c)
