"""A real browser runs @segment/analytics-next against firehose-edge.

Usage: browser.py PAGE_PORT API_URL WRITE_KEY BUNDLE_DIR

Serves a page on http://127.0.0.1:PAGE_PORT (another origin than the API, so CORS is
exercised) that loads analytics-next's standalone bundle from BUNDLE_DIR (the local npm
install; its lazily loaded chunks too, so nothing comes from Segment's CDN), points it at
API_URL, and calls identify, track and page. Headless Chromium, driven by selenium through
chromedriver, loads it; the script waits until the page reports that every call resolved and
prints {"ok": true} or {"error": ...}.
"""

import functools
import http.server
import json
import sys
import tempfile
import threading

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

page_port, api_url, write_key, bundles = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
api = api_url.split("://", 1)[1]

PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>firehose-edge</title>
<script src="/analytics-next/bundles/index.js"></script></head><body><script>
window.__result = null;
(async () => {{
  try {{
    const [analytics] = await AnalyticsNext.AnalyticsBrowser.load(
      {{
        writeKey: {json.dumps(write_key)},
        cdnURL: location.origin,
        cdnSettings: {{ integrations: {{ "Segment.io": {{
          apiKey: {json.dumps(write_key)}, apiHost: {json.dumps(api + "/v1")}, protocol: "http"
        }} }} }},
      }},
      {{ retryQueue: true }}
    );
    const ctxs = [
      await analytics.identify("browser-user", {{ plan: "pro" }}),
      await analytics.track("Browser Clicked", {{ button: "buy" }}),
      await analytics.page("Docs", "Intro", {{ section: 1 }}),
    ];
    window.__result = {{ ok: true, failed: ctxs.filter(c => c.failedDelivery()).map(c => String(c.failedDelivery().reason)) }};
  }} catch (e) {{
    window.__result = {{ ok: false, error: String(e && e.stack || e) }};
  }}
}})();
</script></body></html>"""


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path in ("/", "/index.html"):
            body = PAGE.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        prefix = "/analytics-next/bundles/"
        if self.path.startswith(prefix):
            self.path = "/" + self.path[len(prefix):]
            return super().do_GET()
        self.send_error(404)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), functools.partial(Handler, directory=bundles))
threading.Thread(target=server.serve_forever, daemon=True).start()

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage"]:
    options.add_argument(flag)
profile = tempfile.mkdtemp()
options.add_argument(f"--user-data-dir={profile}")
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.set_page_load_timeout(30)
    driver.get(f"http://127.0.0.1:{page_port}/")
    result = WebDriverWait(driver, 30, poll_frequency=0.1).until(
        lambda d: d.execute_script("return window.__result")
    )
    logs = []
    try:
        logs = [entry["message"] for entry in driver.get_log("browser")]
    except Exception:
        pass
    result["console"] = logs
    print(json.dumps(result))
finally:
    driver.quit()
    server.shutdown()
