"""A real browser runs the official Snowplow browser tracker against firehose-edge.

Usage: browser_snowplow.py MODE PAGE_PORT API_URL

MODE is "post" or "get" (the tracker's `eventMethod`). Serves a page on
http://127.0.0.1:PAGE_PORT (another origin than API_URL, so CORS is exercised) that loads
@snowplow/browser-tracker 4.x from tests/js's node_modules (its self-contained UMD build,
dist/index.umd.js, which defines `window.snowplowBrowserTracking`; nothing is fetched from
a CDN), creates a tracker with `appId: 'web-app'`, `eventMethod: MODE` and otherwise the
defaults (fetch with credentials 'include', bufferSize 1, base64 only for GET, a web_page
context entity on every event, the queue kept in localStorage), pointed at API_URL, then
calls setUserId('web-user'), trackPageView(), trackStructEvent({category: 'c', action: 'a'})
and trackSelfDescribingEvent(iglu:com.example/checkout/jsonschema/1-0-0 {price: 42,
currency: 'EUR'}). Chromium resolves no host but 127.0.0.1, so nothing can leave the
machine (an attempt shows in "external_requests").

Headless Chromium, driven by selenium through chromedriver, loads it. Delivery is read from
the browser's own network log (Chrome DevTools protocol via chromedriver's performance
log): an event counts as delivered once a request to API_URL carrying it (in the POST body's
payload_data, or in the GET URL's query) got a 2xx answer. The tracker keeps a failed
(retryable) request's events queued until its next flush, which only the next event (or
leaving the page) triggers: while waiting, the page calls flushBuffer() once a second,
as an application tracking more events would. Prints one JSON object:

  {"mode", "ok": true once pv, se and ue are all delivered,
   "failed": [events not delivered],
   "delivered": {"pv": "POST /com.snowplowanalytics.snowplow/tp2 200", "se": ..., "ue": ...},
   "eids": {"pv": "<uuid>", "se": ..., "ue": ...} (the event ids the tracker sent),
   "requests": [every request to the API: method, url, type, status, content_type, error,
                events: [{e, eid}] it carried],
   "failed_requests": [those that failed: non-2xx, or a network/CORS error],
   "external_requests": [...], "page_server": [paths the page server answered],
   "tracker_failures": [the tracker's onRequestFailure reports],
   "console": [browser console messages], "error": "..." (only on failure)}

and exits 0 if ok, 1 if not. BROWSER_TIMEOUT_SECS (default 60) bounds the wait for delivery;
with BROWSER_DEBUG set, "all_requests" lists every request the browser made, with its body.
"""

import base64
import functools
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

MODES = ("post", "get")
NODE_MODULES = Path(__file__).resolve().parent.parent / "js" / "node_modules"
BUNDLE_DIR = NODE_MODULES / "@snowplow/browser-tracker/dist"
BUNDLE = "index.umd.js"
CHECKOUT = "iglu:com.example/checkout/jsonschema/1-0-0"


def b64decode(s):
    # The JS trackers use the URL-safe alphabet without padding.
    s = s.replace("-", "+").replace("_", "/")
    return base64.b64decode(s + "=" * (-len(s) % 4)).decode("utf-8")


def self_describing(event):
    """The self-describing event's inner {schema, data}, from ue_pr or ue_px."""
    try:
        if "ue_pr" in event:
            return json.loads(event["ue_pr"]).get("data") or {}
        if "ue_px" in event:
            return json.loads(b64decode(event["ue_px"])).get("data") or {}
    except (ValueError, AttributeError):
        pass
    return {}


# The calls the page makes, by event type, and how to recognise each on the wire.
CALLS = {
    "pv": lambda ev: ev.get("e") == "pv",
    "se": lambda ev: ev.get("e") == "se" and ev.get("se_ca") == "c" and ev.get("se_ac") == "a",
    "ue": lambda ev: ev.get("e") == "ue"
    and self_describing(ev).get("schema") == CHECKOUT
    and (self_describing(ev).get("data") or {}).get("price") == 42,
}

args = sys.argv[1:]
if len(args) != 3 or args[0] not in MODES or not args[1].isdigit():
    sys.exit(f"usage: browser_snowplow.py {{{'|'.join(MODES)}}} PAGE_PORT API_URL")
mode, page_port, api_url = args[0], int(args[1]), args[2].rstrip("/")
if not (BUNDLE_DIR / BUNDLE).is_file():
    sys.exit(f"{BUNDLE_DIR / BUNDLE} is missing: run npm ci in tests/js")
timeout = float(os.environ.get("BROWSER_TIMEOUT_SECS", "60"))
page_origin = f"http://127.0.0.1:{page_port}"

PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>firehose-edge snowplow</title>
<script src="/snowplow/{BUNDLE}"></script></head><body><script>
window.__result = null;
window.__failures = [];
try {{
  const sp = window.snowplowBrowserTracking;
  sp.newTracker("sp", {json.dumps(api_url)}, {{
    appId: "web-app",
    eventMethod: {json.dumps(mode)},
    onRequestFailure: (f, response) => window.__failures.push({{
      status: f.status === undefined ? null : f.status, message: String(f.message),
      willRetry: f.willRetry, events: f.events.map((e) => e.e + " " + e.eid),
    }}),
  }});
  sp.setUserId("web-user");
  sp.trackPageView();
  sp.trackStructEvent({{ category: "c", action: "a" }});
  sp.trackSelfDescribingEvent({{ event: {{ schema: {json.dumps(CHECKOUT)}, data: {{ price: 42, currency: "EUR" }} }} }});
  window.__result = {{ called: true }};
}} catch (e) {{
  window.__result = {{ called: false, error: String(e && e.stack || e) }};
}}
</script></body></html>"""

served = []


class Handler(http.server.SimpleHTTPRequestHandler):
    def send_bytes(self, body, content_type):
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        served.append(self.path)
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            return self.send_bytes(PAGE.encode(), "text/html; charset=utf-8")
        if path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return
        if path.startswith("/snowplow/"):
            self.path = "/" + path[len("/snowplow/"):]
            return super().do_GET()
        self.send_error(404)

    def log_message(self, *args):
        pass


class Network:
    """Every request of the page, from chromedriver's performance log (DevTools events)."""

    def __init__(self, driver):
        self.driver = driver
        self.requests = {}  # requestId -> dict
        self.order = []
        self.console = []

    def poll(self):
        for entry in self.driver.get_log("performance"):
            try:
                message = json.loads(entry["message"])["message"]
            except (KeyError, ValueError):
                continue
            method, params = message.get("method", ""), message.get("params", {})
            rid = params.get("requestId")
            if method == "Network.requestWillBeSent":
                request = params["request"]
                if rid not in self.requests:
                    self.order.append(rid)
                # (A redirect reuses the id: the last hop is kept.)
                self.requests[rid] = {
                    "method": request["method"],
                    "url": request["url"],
                    "type": params.get("type"),
                    "content_type": next(
                        (v for k, v in request.get("headers", {}).items() if k.lower() == "content-type"),
                        None,
                    ),
                    "post": request.get("postData"),
                    "has_post": request.get("hasPostData", False),
                    "status": None,
                    "error": None,
                    "done": False,
                }
            elif method == "Network.responseReceived" and rid in self.requests:
                self.requests[rid]["status"] = params["response"]["status"]
            elif method == "Network.loadingFinished" and rid in self.requests:
                self.requests[rid]["done"] = True
            elif method == "Network.loadingFailed" and rid in self.requests:
                r = self.requests[rid]
                r["done"] = True
                reason = params.get("blockedReason") or (params.get("corsErrorStatus") or {}).get("corsError")
                r["error"] = params.get("errorText", "failed") + (f" ({reason})" if reason else "")
        for entry in self.driver.get_log("browser"):
            self.console.append(entry.get("message"))

    def body(self, rid):
        r = self.requests[rid]
        if r["post"] is None and r["has_post"]:
            try:
                r["post"] = self.driver.execute_cdp_cmd("Network.getRequestPostData", {"requestId": rid})["postData"]
            except Exception:
                r["has_post"] = False  # gone with its page; do not ask again
        return r["post"]

    def events(self, rid):
        """The Snowplow events a request carried: the POST body's payload_data, or the GET query."""
        r = self.requests[rid]
        if r["method"] == "GET":
            query = urlsplit(r["url"]).query
            return [dict(parse_qsl(query, keep_blank_values=True))] if query else []
        if r["method"] == "POST":
            try:
                body = json.loads(self.body(rid) or "")
            except ValueError:
                return []
            data = body.get("data") if isinstance(body, dict) else None
            return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
        return []

    def api(self):
        return [rid for rid in self.order if self.requests[rid]["url"].startswith(api_url + "/")]

    def eids(self):
        """Event type -> the id of the event the tracker sent for that call (first request seen)."""
        found = {}
        for rid in self.api():
            for ev in self.events(rid):
                for kind, matches in CALLS.items():
                    if kind not in found and matches(ev) and ev.get("eid"):
                        found[kind] = ev["eid"]
        return found

    def delivered(self):
        """Event type -> the request that delivered it (2xx, finished)."""
        found = {}
        for rid in self.api():
            r = self.requests[rid]
            if r["status"] is None or not 200 <= r["status"] < 300 or r["error"] or not r["done"]:
                continue
            for ev in self.events(rid):
                for kind, matches in CALLS.items():
                    if kind not in found and matches(ev):
                        found[kind] = f"{r['method']} {urlsplit(r['url']).path} {r['status']}"
        return found

    def report(self, rid):
        r = self.requests[rid]
        out = {k: r[k] for k in ("method", "url", "type", "status", "content_type", "error")}
        if r["url"].startswith(api_url + "/"):
            out["events"] = [{"e": ev.get("e"), "eid": ev.get("eid")} for ev in self.events(rid)]
        return out


server = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), functools.partial(Handler, directory=str(BUNDLE_DIR)))
threading.Thread(target=server.serve_forever, daemon=True).start()

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage",
             # Only loopback resolves: nothing the page does can reach another host.
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]:
    options.add_argument(flag)
options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
profile = tempfile.mkdtemp()
options.add_argument(f"--user-data-dir={profile}")
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
result = {"mode": mode, "ok": False, "failed": []}
net = Network(driver)
try:
    deadline = time.monotonic() + timeout
    driver.set_page_load_timeout(30)
    driver.get(f"{page_origin}/")
    page = None
    while time.monotonic() < deadline:
        net.poll()
        page = driver.execute_script("return window.__result")
        if page is not None:
            break
        time.sleep(0.1)
    if page is None:
        result["error"] = f"the page's calls did not return within {timeout:.0f} s"
    elif not page.get("called"):
        result["error"] = page.get("error")
    else:
        delivered = {}
        next_flush = time.monotonic() + 1
        while time.monotonic() < deadline:
            net.poll()
            delivered = net.delivered()
            if len(delivered) == len(CALLS):
                break
            if time.monotonic() >= next_flush:
                # Resend what a failed request left queued (the tracker has no retry timer).
                driver.execute_script("window.snowplowBrowserTracking.flushBuffer()")
                next_flush = time.monotonic() + 1
            time.sleep(0.2)
        net.poll()
        result["delivered"] = delivered
        missing = [kind for kind in CALLS if kind not in delivered]
        result["failed"] = [f"{kind}: not delivered within {timeout:.0f} s" for kind in missing]
        result["ok"] = not result["failed"]
        if missing:
            result["error"] = f"not delivered: {', '.join(missing)}"
except Exception as e:  # noqa: BLE001 - reported, and the exit code says it failed
    result["error"] = f"{type(e).__name__}: {e}"
finally:
    try:
        net.poll()
        result["tracker_failures"] = driver.execute_script("return window.__failures") or []
    except Exception:
        result.setdefault("tracker_failures", [])
    result["eids"] = net.eids()
    if result["ok"] and len(result["eids"]) != len(CALLS):
        result["ok"] = False
        result["error"] = f"delivered, but no event id found for {sorted(set(CALLS) - set(result['eids']))}"
    api_requests = [net.report(rid) for rid in net.api()]
    result["requests"] = api_requests
    result["failed_requests"] = [
        r for r in api_requests
        if r["error"] or (r["status"] is not None and not 200 <= r["status"] < 300)
    ]
    result["external_requests"] = [
        net.report(rid) for rid in net.order
        if net.requests[rid]["url"].startswith(("http:", "https:", "ws:", "wss:"))
        and not net.requests[rid]["url"].startswith((api_url + "/", page_origin + "/"))
    ]
    result["page_server"] = served
    if os.environ.get("BROWSER_DEBUG"):
        result["all_requests"] = [{**net.report(rid), "body": net.requests[rid]["post"]} for rid in net.order]
    result["console"] = net.console
    driver.quit()
    server.shutdown()
print(json.dumps(result))
if not result["ok"]:
    print(f"browser_snowplow.py {mode}: {result.get('error')}; failed requests: {result['failed_requests']}",
          file=sys.stderr)
sys.exit(0 if result["ok"] else 1)
