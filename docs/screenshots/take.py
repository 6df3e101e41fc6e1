"""Take the README screenshots of a running GRPO-Guard Studio with Debian's Chromium.

    python docs/screenshots/take.py --url http://127.0.0.1:7860 --run 3 --compare 3,4 [--out docs/screenshots]

Writes runs.png, new_run.png, run.png (header and proxy-vs-gold chart), run_full.png, compare.png
(step slider, side by side, wipe) and compare_full.png. Each page is given time to load its
figures; the Run page is shot with Live off so a refresh cannot land mid-capture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:7860")
    ap.add_argument("--run", type=int, required=True, help="run id for the Run page")
    ap.add_argument("--compare", required=True, help="run ids for Compare, e.g. 3,4")
    ap.add_argument("--step", type=int, default=None, help="Compare's shared step (default: the last)")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731

    def box(page, selector: str) -> dict:
        """Page coordinates of an element (bounding_box is relative to the scrolled viewport)."""
        b = page.locator(selector).first.bounding_box()
        y = page.evaluate("() => window.scrollY")
        return {**b, "y": b["y"] + y}

    def clip(page, name: str, y0: float, y1: float) -> None:
        page.screenshot(path=out(name), full_page=True, clip={"x": 0, "y": max(0, y0), "width": 1400, "height": y1 - max(0, y0)})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
        page.set_default_timeout(120_000)

        page.goto(args.url + "/", wait_until="domcontentloaded")
        page.locator('#runs-table [data-testid="cell-0-0"]').wait_for()
        time.sleep(2)
        page.screenshot(path=out("runs.png"), full_page=True)

        page.goto(f"{args.url}/run?run={args.run}", wait_until="domcontentloaded")
        page.locator("#plot-proxy-gold .scatterlayer .trace").first.wait_for()
        page.locator("#plot-grad .js-plotly-plot").first.wait_for()
        page.locator("#run-live input").uncheck()
        time.sleep(4)
        page.screenshot(path=out("run_full.png"), full_page=True)
        pg = box(page, "#plot-proxy-gold")
        clip(page, "run.png", 0, pg["y"] + pg["height"] + 12)

        step = f"&step={args.step}" if args.step is not None else ""
        page.goto(f"{args.url}/compare?runs={args.compare}{step}", wait_until="domcontentloaded")
        page.locator("#compare-side-cards img").first.wait_for()
        page.locator("#compare-gold .scatterlayer .trace").first.wait_for()
        page.locator("#compare-grid img").first.wait_for()
        time.sleep(4)
        page.screenshot(path=out("compare_full.png"), full_page=True)
        grid = box(page, "#grid-run")
        clip(page, "compare.png", 0, grid["y"] - 50)
        gold, gp = box(page, "#compare-gold"), box(page, "#compare-gold-vs-proxy")
        clip(page, "compare_metrics.png", gold["y"] - 110, gp["y"] + gp["height"] + 10)

        page.goto(f"{args.url}/new?preset=toy%20GRPO-Guard", wait_until="domcontentloaded")
        page.locator("#submit-run").wait_for()
        time.sleep(3)
        clip(page, "new_run.png", 0, 1400)
        browser.close()
    print("wrote", ", ".join(sorted(f for f in os.listdir(args.out) if f.endswith(".png"))))


if __name__ == "__main__":
    main()
