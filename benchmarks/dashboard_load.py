"""The dashboard with many models, in headless Chromium against a real server (`serve`).

    uv run python benchmarks/dashboard_load.py [--models 200 1000] [--observed-every 5] [--workers 1]

For each number of models, a data directory is built (one small trained model copied under
other identities, one model in ``--observed-every`` given 50 observations: benchmarks/many_models.py's
`build`), a server started on it, and the page opened: how long until it shows every model
(`document.body.dataset.ready`), when the last of its requests had answered (Resource Timing,
from the start of the navigation), how many requests it sent and how many bytes they answered,
then the same for one update of the page (paused and resumed: brought up to date at once).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from latency import RawClient  # noqa: E402
from many_models import build, start_server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def measure(data: Path, n_models: int, workers: int, browser) -> dict:
    proc, port = start_server(data, workers, ready="/health")
    try:
        c = RawClient(port)
        c.request("GET", "/models")  # (each worker's first read of the registry is not the page's)
        c.close()
        context = browser.new_context()
        page = context.new_page()
        page.add_init_script("performance.setResourceTimingBufferSize(1000000)")  # (250 entries by default)
        sent: list[str] = []
        answered: list[int] = []
        page.on("request", lambda r: sent.append(r.url))
        page.on("response", lambda r: answered.append(int(r.headers.get("content-length") or 0)))
        t0 = time.perf_counter()
        page.goto(f"http://127.0.0.1:{port}/dashboard?refresh=3600")
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=600_000, polling=50)
        load_s = time.perf_counter() - t0
        load_requests, load_bytes = len(sent) - 1, sum(answered[1:])  # less the page itself
        # When the last of its requests (less the page itself) had answered, from the start of
        # the page's navigation (the browser's Resource Timing): the rest of the time is the page's own.
        answered_s = page.evaluate("Math.max(...performance.getEntriesByType('resource').map(e => e.responseEnd))") / 1e3
        assert page.locator("tr.model-row").count() == n_models
        failed = page.evaluate("document.body.dataset.failed")
        # One update: paused, then resumed (brought up to date at once).
        page.locator("#pause").click()
        page.wait_for_function("document.body.dataset.update === 'paused'", timeout=60_000)
        sent.clear()
        answered.clear()
        t0 = time.perf_counter()
        page.locator("#pause").click()
        page.wait_for_function("document.body.dataset.updates === '1' && document.body.dataset.update === 'ok'",
                               timeout=600_000, polling=50)
        update_s = time.perf_counter() - t0
        update_requests, update_bytes = len(sent), sum(answered)
        context.close()
        return {"models": n_models, "load_s": load_s, "answered_s": answered_s, "load_requests": load_requests, "load_mb": load_bytes / 1e6,
                "update_s": update_s, "update_requests": update_requests, "update_mb": update_bytes / 1e6,
                "failed": failed}
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--observed-every", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for n in args.models:
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(tmp) / "data"
                build(data, n, n // args.observed_every, 0, 1)
                rows.append(measure(data, n, args.workers, browser))
                print(rows[-1], flush=True)
        browser.close()
    print("| models | page shows them all | its last request answered | requests | answered | one update | its requests | answered |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['models']:,} | {r['load_s']:.2f} s | {r['answered_s']:.2f} s | {r['load_requests']:,} | {r['load_mb']:.1f} MB | "
              f"{r['update_s']:.2f} s | {r['update_requests']:,} | {r['update_mb']:.1f} MB |")


if __name__ == "__main__":
    main()
