"""Run page speed on a long run: first render and live refresh, measured in the server.

Builds a temporary store holding one 5,000-step run (synthetic rows written through the real
StoreRecorder: 12 scalars per step, 9 denoising steps x 17 statistics per step, an eval every
50 steps), then times, with the app's own functions:

- poll:       the 1 s change check (one primary-key read of the run);
- first:      opening the Run page on that run with cold caches (run row + config YAML + every
              figure, the header, logs, checkpoints, status), figures serialised to JSON as
              Gradio does;
- refresh:    after the "trainer" writes one more step: poll + redraw + JSON, warm caches
              (most refreshes re-read only the new rows; when a heatmap column is due, every
              per-denoising-step matrix is re-read as well; both kinds are reported).

With ``--browser`` it also serves the app and times, in Debian's Chromium, from navigation to
the proxy-vs-gold chart being drawn.

    python benchmarks/ui/bench_run_page.py [--steps 5000] [--refreshes 40] [--browser] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def _ms(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"median_ms": round(1000 * statistics.median(xs), 1), "p90_ms": round(1000 * xs[int(0.9 * (len(xs) - 1))], 1),
            "max_ms": round(1000 * xs[-1], 1), "n": len(xs)}


def _serialise(out: tuple) -> int:
    """What Gradio does with the outputs: figures to JSON (gr.Plot.postprocess)."""
    n = 0
    for o in out:
        if hasattr(o, "to_json"):
            n += len(o.to_json())
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--refreshes", type=int, default=40)
    ap.add_argument("--firsts", type=int, default=5)
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="gg-bench-ui-")
    os.environ["GG_DATA_DIR"] = tmp
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from grpo_guard.store import db

    db.verify_schema()
    from tests.app import synthetic

    t = time.perf_counter()
    rid = synthetic.make_run("flow_grpo", args.steps, eval_every=50, ckpt_every=1000, with_images=False,
                             name=f"bench {args.steps} steps", finish=None)
    print(f"store: {args.steps}-step run #{rid} written in {time.perf_counter() - t:.1f} s ({tmp})", flush=True)

    import numpy as np

    from app import figures, run_cache
    from app.pages import run_detail as R
    from grpo_guard.store import queries as q
    from grpo_guard.store.recorder import StoreRecorder

    figures.proxy_gold_figure({"eval/proxy": ([0, 1], [0.0, 1.0])}).to_json()  # the app warms plotly at startup

    # 1. the poll
    polls = []
    for _ in range(50):
        t = time.perf_counter()
        R.poll_cursor(rid)
        polls.append(time.perf_counter() - t)

    # 2. first render, cold caches
    firsts = []
    for _ in range(args.firsts):
        run_cache.forget()
        t = time.perf_counter()
        run = q.get_run(rid)  # the page's on_pick: row, config YAML, cursor
        R.yaml.safe_dump(run.config, sort_keys=False)
        cur = R.cursor_of(run)
        out = R.render_run(rid, cur, False, None)  # cursor.change -> every figure, header, tables
        R.tail_logs(rid, "all")
        size = _serialise(out)
        firsts.append(time.perf_counter() - t)
    shown = out[-1]

    # 3. refresh after each new step (warm caches)
    rec = StoreRecorder(rid, background=False)
    rng = np.random.default_rng(1)
    light, heavy = [], []
    cur = R.poll_cursor(rid)
    for i in range(args.refreshes):
        step = args.steps + i
        rec.log_scalars(step, synthetic.scalars("flow_grpo", step, args.steps, rng, 3e-4))
        rec.log_step_stats(synthetic.step_stats("flow_grpo", step, args.steps, rng))
        rec.set_progress(step + 1, args.steps + args.refreshes)
        rec.flush()
        before = run_cache.reads(rid)["stats"]
        t = time.perf_counter()
        new = R.poll_cursor(rid)
        assert new != cur, "a new step must move the cursor"
        out = R.render_run(rid, new, False, shown)
        _serialise(out)
        dt = time.perf_counter() - t
        shown = out[-1]
        (heavy if run_cache.reads(rid)["stats"] > before else light).append(dt)
        cur = new
    rec.close()

    res = {"steps": args.steps, "poll": _ms(polls), "first_render": _ms(firsts), "figure_json_bytes": size,
           "refresh": _ms(light + heavy), "refresh_rows_only": _ms(light) if light else None,
           "refresh_with_heatmaps": _ms(heavy) if heavy else None}

    if args.browser:
        res["browser_first_paint"] = _browser(rid)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


def _browser(rid: int) -> dict[str, float]:
    """Serve the app in a thread; time navigation -> proxy-vs-gold chart drawn, in Chromium."""
    import shutil
    import socket
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    from app.main import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(port=port), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    shell, header, first, plots = [], [], [], []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                  args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                        "--disable-component-update", "--no-first-run"])
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/run?run={rid}", wait_until="domcontentloaded")  # warm the caches
            page.wait_for_selector("#plot-grad .js-plotly-plot .barlayer", timeout=120000)
            for _ in range(5):
                t = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/run?run={rid}", wait_until="domcontentloaded")
                page.wait_for_selector("#run-pick", timeout=60000)  # Gradio's page is up
                shell.append(time.perf_counter() - t)
                page.wait_for_selector("#run-header", timeout=60000)
                header.append(time.perf_counter() - t)
                page.wait_for_selector("#plot-proxy-gold .js-plotly-plot .scatterlayer .trace", timeout=60000)
                first.append(time.perf_counter() - t)
                page.wait_for_selector("#plot-grad .js-plotly-plot .barlayer", timeout=60000)
                plots.append(time.perf_counter() - t)
            b.close()
    finally:
        server.should_exit = True
    return {"gradio_page_up": _ms(shell), "run_header": _ms(header), "proxy_gold_drawn": _ms(first),
            "all_figures_drawn": _ms(plots)}


if __name__ == "__main__":
    main()
