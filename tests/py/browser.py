"""A real browser runs an official browser analytics SDK against firehose-edge.

Usage: browser.py SDK PAGE_PORT API_URL WRITE_KEY [BUNDLE_DIR]
       browser.py PAGE_PORT API_URL WRITE_KEY BUNDLE_DIR      (the older form: SDK segment)

SDK is one of
  segment        @segment/analytics-next (its standalone bundle; per-event fetch to /v1/i, /v1/t, /v1/p)
  rudder         @rudderstack/analytics-js v3, default transport (XhrQueue: one XHR per event
                 to /v1/identify, /v1/track, /v1/page)
  rudder-beacon  the same with `useBeacon: true` (BeaconQueue: navigator.sendBeacon of a batch
                 to /beacon/v1/batch?writeKey=..., sent when the page is left)

Serves a page on http://127.0.0.1:PAGE_PORT (another origin than the API, so CORS is
exercised) that loads the SDK from BUNDLE_DIR (default: its directory in tests/js's
node_modules): analytics-next's standalone bundle and its lazily loaded chunks, or
analytics-js's "bundled" UMD build, which carries its plugins, so none is fetched from a CDN.
RudderStack's control plane is the page server too: `configUrl` is the page's origin, which
answers GET /sourceConfig/ with a minimal source config (enabled, no device-mode
destinations, no error or metrics reporting). Chromium resolves no host but 127.0.0.1, so
nothing can leave the machine (an attempt shows in "external_requests").

The page points the SDK at API_URL and calls identify, track and page. Headless Chromium,
driven by selenium through chromedriver, loads it; for rudder-beacon the browser then leaves
the page, which is when the beacon batch is sent. Delivery is read from the browser's own
network log (Chrome DevTools protocol via chromedriver's performance log): a call counts as
delivered once a request to API_URL carrying it got a 2xx answer. Prints one JSON object:

  {"sdk", "ok": true once identify, track and page are all delivered,
   "failed": [calls not delivered (or, for segment, failedDelivery reasons)],
   "delivered": {"identify": "POST /v1/i 200", ...},
   "requests": [every request to the API: method, url, type, status, content_type, error],
   "failed_requests": [those that failed: non-2xx, or a network/CORS error],
   "external_requests": [...], "page_server": [paths the page server answered],
   "console": [browser console messages], "error": "..." (only on failure)}

and exits 0 if ok, 1 if not. BROWSER_TIMEOUT_SECS (default 60) bounds the wait for delivery;
with BROWSER_DEBUG set, "all_requests" lists every request the browser made.

The page server, Chromium, the network log and the report's fields from "requests" on are
browser_common.py's; this script has the pages, the source config, the beacons' bodies and
what counts as delivered.
"""

import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import browser_common  # noqa: E402

SDKS = ("segment", "rudder", "rudder-beacon")
NODE_MODULES = Path(__file__).resolve().parent.parent / "js" / "node_modules"
DEFAULT_BUNDLES = {
    "segment": NODE_MODULES / "@segment/analytics-next/dist/umd",
    "rudder": NODE_MODULES / "@rudderstack/analytics-js/dist/npm/modern/bundled/umd",
}
# The calls the page makes, by message type, and how to recognise each on the wire.
CALLS = {
    "identify": lambda m: m.get("userId") == "browser-user",
    "track": lambda m: m.get("event") == "Browser Clicked",
    "page": lambda m: m.get("name") == "Intro",
}

args = sys.argv[1:]
if args and args[0].isdigit():
    args = ["segment", *args]
if len(args) not in (4, 5) or args[0] not in SDKS:
    sys.exit(f"usage: browser.py {{{'|'.join(SDKS)}}} PAGE_PORT API_URL WRITE_KEY [BUNDLE_DIR]")
sdk, page_port, api_url, write_key = args[0], int(args[1]), args[2].rstrip("/"), args[3]
family = "rudder" if sdk.startswith("rudder") else "segment"
bundles = args[4] if len(args) == 5 else str(DEFAULT_BUNDLES[family])
if not (Path(bundles) / "index.js").is_file():
    sys.exit(f"{bundles}/index.js is missing: run scripts/ensure-node-sdks.sh")
timeout = browser_common.timeout_secs()
api = api_url.split("://", 1)[1]

SEGMENT_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>firehose-edge</title>
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
    window.__result = {{ called: true, failed: ctxs.filter(c => c.failedDelivery()).map(c => String(c.failedDelivery().reason)) }};
  }} catch (e) {{
    window.__result = {{ called: false, error: String(e && e.stack || e) }};
  }}
}})();
</script></body></html>"""

RUDDER_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>firehose-edge</title>
<script>
// The browser's network log has no body for a beacon: the page keeps a copy of each.
window.__beacons = [];
const sendBeacon = navigator.sendBeacon.bind(navigator);
navigator.sendBeacon = (url, data) => {{
  const copy = {{ url: new URL(url, location.href).href, body: typeof data === "string" ? data : null }};
  window.__beacons.push(copy);
  if (data instanceof Blob) data.text().then((text) => {{ copy.body = text; }});
  return sendBeacon(url, data);
}};
</script>
<script src="/rudder/index.js"></script></head><body><script>
window.__result = null;
try {{
  const analytics = new window.rudderanalytics.RudderAnalytics();
  analytics.load({json.dumps(write_key)}, {json.dumps(api_url)}, {{
    configUrl: location.origin,      // GET /sourceConfig/ from the page server
    useBeacon: {json.dumps(sdk == "rudder-beacon")},
    polyfillIfRequired: false,       // never fetch polyfills from a CDN
    logLevel: "WARN",
  }});
  analytics.ready(async () => {{
    try {{
      // Each callback runs once the SDK has queued the call (not on delivery).
      const queued = (call) => new Promise((resolve) => call(resolve));
      await queued((cb) => analytics.identify("browser-user", {{ plan: "pro" }}, cb));
      await queued((cb) => analytics.track("Browser Clicked", {{ button: "buy" }}, cb));
      await queued((cb) => analytics.page("Docs", "Intro", {{ section: 1 }}, cb));
      window.__result = {{ called: true, failed: [] }};
    }} catch (e) {{
      window.__result = {{ called: false, error: String(e && e.stack || e) }};
    }}
  }});
}} catch (e) {{
  window.__result = {{ called: false, error: String(e && e.stack || e) }};
}}
</script></body></html>"""

# What RudderStack's control plane would answer for an enabled source with no device-mode
# destinations (cloud mode only: the events go to the data plane) and with error and
# metrics reporting off (they would POST to the data plane's /rsaMetrics).
SOURCE_CONFIG = {
    "isHosted": False,
    "source": {
        "id": "firehose-edge-browser-test",
        "name": "firehose-edge browser test",
        "writeKey": write_key,
        "workspaceId": "firehose-edge",
        "enabled": True,
        "config": {},
        "destinations": [],
    },
}


def route(path):
    """The page server's answers besides the page and the bundle (see browser_common.PageServer)."""
    if path == "/bye":
        return b"<!doctype html><title>bye</title>", "text/html"
    if family == "rudder" and path.rstrip("/") == "/sourceConfig":
        return json.dumps(SOURCE_CONFIG).encode(), "application/json"
    return None


class Network(browser_common.Network):
    """The page's requests (browser_common.Network), with the bodies of its beacons."""

    def __init__(self, driver, api_url):
        super().__init__(driver, api_url)
        self.beacons = []  # the page's copies of its beacons: {url, body}
        self.beacon_of = {}  # requestId -> index in self.beacons

    def body(self, rid):
        """A request's body; a beacon's is the page's copy (the log has none)."""
        r = self.requests[rid]
        if r["type"] == "Ping" and r["post"] is None:
            if rid not in self.beacon_of:
                taken = set(self.beacon_of.values())
                match = [i for i, b in enumerate(self.beacons) if b["url"] == r["url"] and i not in taken]
                if not match:
                    return None
                self.beacon_of[rid] = match[0]
            return self.beacons[self.beacon_of[rid]]["body"]
        return super().body(rid)

    def delivered(self):
        """Type -> the request that delivered it (2xx, finished)."""
        found = {}
        for rid in self.api():
            r = self.requests[rid]
            if r["method"] != "POST" or r["status"] is None or not 200 <= r["status"] < 300 or r["error"]:
                continue
            try:
                body = json.loads(self.body(rid) or "")
            except ValueError:
                continue
            messages = body.get("batch", [body]) if isinstance(body, dict) else []
            for m in messages:
                kind = m.get("type") if isinstance(m, dict) else None
                if kind in CALLS and CALLS[kind](m) and kind not in found:
                    found[kind] = f"POST {urlsplit(r['url']).path} {r['status']}"
        return found


html = SEGMENT_PAGE if family == "segment" else RUDDER_PAGE
prefix = "/analytics-next/bundles/" if family == "segment" else "/rudder/"
server = browser_common.PageServer(page_port, html, bundles, prefix, route)
page_origin = server.origin
driver = browser_common.start_chromium()
result = {"sdk": sdk, "ok": False, "failed": []}
net = Network(driver, api_url)
try:
    deadline = time.monotonic() + timeout
    page = browser_common.open_page(net, f"{page_origin}/", deadline, timeout, result)
    if page:
        result["failed"] = list(page.get("failed") or [])
        if sdk == "rudder-beacon":
            # The beacon queue sends its batch when the page is left (or after 10 min): the
            # user switches to another tab (blur, visibilitychange). The page stays alive,
            # so its network log shows the beacon (one sent while navigating away does not).
            page_window = driver.current_window_handle
            driver.switch_to.new_window("tab")
            driver.get(f"{page_origin}/bye")
        delivered = {}
        while time.monotonic() < deadline:
            net.poll()
            if sdk == "rudder-beacon" and any(
                r["type"] == "Ping" and r["status"] is not None for r in net.requests.values()
            ):
                # A beacon was answered: fetch the page's copies of what it sent.
                driver.switch_to.window(page_window)
                net.beacons = driver.execute_script("return window.__beacons") or []
            delivered = net.delivered()
            if len(delivered) == len(CALLS):
                break
            pings = [r for r in net.requests.values() if r["type"] == "Ping"]
            if pings and all(r["done"] and not 200 <= (r["status"] or 0) < 300 for r in pings):
                # Beacons are never retried: once every one sent has failed, that is all.
                break
            time.sleep(0.2)
        net.poll()
        result["delivered"] = delivered
        missing = [kind for kind in CALLS if kind not in delivered]
        why = "its beacon failed" if sdk == "rudder-beacon" and time.monotonic() < deadline else f"within {timeout:.0f} s"
        result["failed"] += [f"{kind}: not delivered ({why})" for kind in missing]
        result["ok"] = not result["failed"]
        if missing:
            result["error"] = f"not delivered: {', '.join(missing)}"
except Exception as e:  # noqa: BLE001 - reported, and the exit code says it failed
    result["error"] = f"{type(e).__name__}: {e}"
finally:
    browser_common.finish(result, net, server)
browser_common.exit_with(result, f"browser.py {sdk}")
