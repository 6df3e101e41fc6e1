"""Browser end-to-end: every Plotly figure of the Run page holds what the store holds.

`grpo-guard serve` (one embedded worker) runs a gated trainer double (tests/e2e/gated_trainer.py:
the full set of rows of a toy run, SYNTHETIC values) that pauses mid-way. Debian's Chromium
opens the Run page; each figure's data is read from the page (``el.data`` of every
``.js-plotly-plot``) and compared with the store (``grpo_guard.store.queries``, read in another
process): for the live run paused mid-way, for the same run once it finished (no reload), and
after a fresh reload. Every heatmap must cover exactly the stored steps.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.e2e.test_ui_e2e import (
    ARTIFACTS,
    ROOT,
    _free_port,
    _wait_for,
    _wait_health,
    chromium_page,
    stop_group,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 12
PAUSE_AT = 6
HEATMAP_PLOTS = {"plot-r-mean": "r_mean_minus_1", "plot-rhat-mean": "rhat_mean_minus_1", "plot-r-std": "r_std",
                 "plot-rhat-std": "rhat_std", "plot-clip-heat": "pos_adv_clipped"}
SCALAR_TRACES = ("kl", "lr", "grad_norm", "policy_loss")
RECENT = 10  # app.figures.run: bars are the mean of the last 10 steps

READ_FIGURES = """() => {
  const conv = v => {
    if (v === null || v === undefined) return null;
    if (ArrayBuffer.isView(v)) return Array.from(v);
    if (Array.isArray(v)) return v.map(conv);
    if (typeof v === 'object' && 'bdata' in v) return {bdata: v.bdata, dtype: v.dtype, shape: v.shape || null};
    return v;
  };
  const out = {};
  for (const box of document.querySelectorAll('[id^="plot-"]')) {
    const el = box.querySelector('.js-plotly-plot');
    if (!el || !el.data) continue;
    out[box.id] = el.data.map(t => ({name: t.name, type: t.type, x: conv(t.x), y: conv(t.y), z: conv(t.z),
                                     customdata: conv(t.customdata)}));
  }
  return out;
}"""


def _arr(v) -> np.ndarray:
    """A trace array from the page: a list, or a typed-array spec the page left encoded."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]).newbyteorder("<"))
        return a.reshape([int(n) for n in v["shape"].split(",")]) if v.get("shape") else a
    return np.asarray([np.nan if x is None else x for x in v] if v and not isinstance(v[0], list) else v, dtype=float)


def _recent(m: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nanmean(m[-RECENT:], axis=0)


def mismatches(page_figs: dict, store: dict) -> list[str]:
    """Where the page's figures differ from the store (empty: they agree)."""
    bad: list[str] = []

    def trace(plot: str, name: str | None = None, kind: str | None = None) -> dict | None:
        for t in page_figs.get(plot, []):
            if (name is None or t["name"] == name) and (kind is None or t["type"] == kind):
                return t
        bad.append(f"{plot}: no trace {name or kind!r} (has {[t['name'] for t in page_figs.get(plot, [])]})")
        return None

    def same(what: str, got, want, exact: bool = False) -> None:
        g, w = _arr(got), np.asarray(want, dtype=float)
        if g.shape != w.shape:
            bad.append(f"{what}: shape {g.shape} on the page, {w.shape} in the store")
        elif not np.allclose(g, w, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-9, equal_nan=True):
            bad.append(f"{what}: page {g.ravel()[:6]}... != store {w.ravel()[:6]}...")

    series, stats = store["series"], store["stats"]
    stored_steps = stats["r_mean_minus_1"][0]
    for plot, stat in HEATMAP_PLOTS.items():
        t = trace(plot, kind="heatmap")
        if t is None:
            continue
        steps, js, m = stats[stat]
        same(f"{plot} steps", t["x"], steps, exact=True)
        same(f"{plot} denoising steps", t["y"], js, exact=True)
        z = np.asarray([[np.nan if v is None else v for v in row] for row in m], dtype=np.float32).T
        same(f"{plot} values", t["z"], z)
        if list(steps) != list(stored_steps):
            bad.append(f"{plot}: the store's {stat} steps differ from r_mean_minus_1's")
    for name, key in (("proxy reward", "eval/proxy"), ("gold", "eval/gold")):
        t = trace("plot-proxy-gold", name)
        if t is not None:
            s, v = series[key]
            same(f"proxy-gold {name} steps", t["x"], s, exact=True)
            same(f"proxy-gold {name} raw values (hover)", t["customdata"], v)
            same(f"proxy-gold {name} relative to step 0", t["y"], np.asarray(v) / v[0])
    t = trace("plot-rewards", "total reward (mean)")
    if t is not None:
        same("rewards steps", t["x"], series["reward/total/mean"][0], exact=True)
        same("rewards values", t["y"], series["reward/total/mean"][1])
    for key in SCALAR_TRACES:
        t = trace("plot-scalars", key)
        if t is not None:
            same(f"scalars {key} steps", t["x"], series[key][0], exact=True)
            same(f"scalars {key} values", t["y"], series[key][1])
    for name, stat in (("A>0 ∧ r>1+ε", "pos_adv_clipped"), ("A<0 ∧ r<1−ε", "neg_adv_clipped")):
        t = trace("plot-clip", name)
        if t is not None:
            _, js, m = stats[stat]
            same(f"clip {name} denoising steps", t["x"], js, exact=True)
            same(f"clip {name} recent mean", t["y"], _recent(np.asarray(m, dtype=float)))
    steps, js, m = stats["grad_norm_v"]
    t = trace("plot-grad", "grad_norm_v")
    if t is not None:
        same("grad per-j recent mean", t["y"], _recent(np.asarray(m, dtype=float)))
    t = trace("plot-grad", "max/min")
    if t is not None:
        same("grad spread steps", t["x"], steps, exact=True)
    return bad


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if shutil.which("chromium") is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; see scripts/install.sh)")
    data = tmp_path_factory.mktemp("e2e-figures")
    port = _free_port()
    env = {**os.environ, "GG_DATA_DIR": str(data), "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": ROOT,
           "GG_TRAINER": "tests.e2e.gated_trainer:train", "GG_E2E_GATE": str(data / "gate"),
           "GG_E2E_PAUSE_AT": str(PAUSE_AT), "GG_FAKE_STEP_SECONDS": "0.3"}
    for k in ("GG_DATABASE_URL", "GG_ARTIFACTS", "GG_BROKER_URL", "GG_AUTH", "GG_AUTH_FILE"):
        env.pop(k, None)
    log = open(data / "serve.log", "w")  # noqa: SIM115 (closed in teardown)
    proc = subprocess.Popen([sys.executable, "-m", "grpo_guard.cli", "serve", "--port", str(port), "--workers", "1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc, timeout=180)
        yield {"url": url, "data": data, "env": env}
    finally:
        (data / "gate").touch()
        stop_group(proc)
        log.close()


def _python(server, code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=server["env"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def _store(server, run_id: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.e2e.store_dump", str(run_id)], env=server["env"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _header(page) -> tuple[str | None, int]:
    h = page.locator("#run-header")
    if h.count() == 0:
        return None, -1
    return h.get_attribute("data-status"), int(h.get_attribute("data-step") or -1)


def _page_agrees(page, store: dict, what: str, timeout: float = 120) -> None:
    """Wait until every figure on the page holds what the store holds (the page redraws within
    a second or two of a change; a loaded machine may take longer)."""
    last: list[str] = []

    def agree() -> bool:
        nonlocal last
        last = mismatches(page.evaluate(READ_FIGURES), store)
        return not last

    try:
        _wait_for(agree, timeout, what)
    except AssertionError:
        raise AssertionError(f"{what}: the page's figures differ from the store:\n" + "\n".join(last)) from None


def test_every_run_page_figure_shows_what_the_store_holds_live_and_finished(server):
    code = ("from grpo_guard.config import RunConfig; from grpo_guard.store import queries as q; "
            "from worker.celery_app import enqueue_run; from tests.app import synthetic; "
            f"rid = q.create_run(RunConfig.from_dict(dict(algorithm='flow_grpo', epochs={EPOCHS}, eval_every=2, "
            "eval_prompts=synthetic.PROMPTS[:2], eval_seeds=[0])), name='e2e figures'); enqueue_run(rid); print(rid)")
    run_id = int(_python(server, code))
    with chromium_page() as page:
        # 1. Live, mid-way: the trainer holds at PAUSE_AT with the run still running.
        page.goto(f"{server['url']}/run?run={run_id}", wait_until="domcontentloaded")
        _wait_for(lambda: _header(page) == ("running", PAUSE_AT), 180, f"the run to reach step {PAUSE_AT}")
        live = _store(server, run_id)
        assert live["status"] == "running" and live["last_step"] == PAUSE_AT
        assert live["stats"]["r_std"][0] == list(range(PAUSE_AT + 1)), "the store holds every step so far"
        _page_agrees(page, live, "the live run mid-way")
        assert page.locator("#run-stop").is_enabled() and page.locator("#run-sample-now").is_enabled()
        page.screenshot(path=os.path.join(ARTIFACTS, "figures_live.png"), full_page=True)

        # 2. It finishes while the page is open: the same page catches up, without a reload.
        (server["data"] / "gate").touch()
        _wait_for(lambda: _header(page)[0] == "succeeded", 180, "the run to finish")
        done = _store(server, run_id)
        assert done["stats"]["r_std"][0] == list(range(EPOCHS))
        _page_agrees(page, done, "the finished run, same page")
        _wait_for(lambda: page.locator("#run-stop").is_disabled(), 30, "Stop to be disabled")
        assert page.locator("#run-sample-now").is_disabled() and page.locator("#run-save-now").is_disabled()

        # 3. A fresh reload shows the same.
        page.reload(wait_until="domcontentloaded")
        _wait_for(lambda: _header(page)[0] == "succeeded", 60, "the header after a reload")
        _page_agrees(page, done, "the finished run after a reload")
        page.screenshot(path=os.path.join(ARTIFACTS, "figures_finished.png"), full_page=True)

