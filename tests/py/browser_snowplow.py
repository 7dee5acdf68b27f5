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

The page server, Chromium, the network log and the report's fields from "requests" on are
browser_common.py's; this script has the page, how a request's events are read, what counts
as delivered and the event ids.
"""

import base64
import json
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import browser_common  # noqa: E402

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
timeout = browser_common.timeout_secs()

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

class Network(browser_common.Network):
    """The page's requests (browser_common.Network), with the Snowplow events each carried."""

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
        out = super().report(rid)
        if self.requests[rid]["url"].startswith(self.api_url + "/"):
            out["events"] = [{"e": ev.get("e"), "eid": ev.get("eid")} for ev in self.events(rid)]
        return out


server = browser_common.PageServer(page_port, PAGE, BUNDLE_DIR, "/snowplow/")
page_origin = server.origin
driver = browser_common.start_chromium()
result = {"mode": mode, "ok": False, "failed": []}
net = Network(driver, api_url)
try:
    deadline = time.monotonic() + timeout
    page = browser_common.open_page(net, f"{page_origin}/", deadline, timeout, result)
    if page:
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
    browser_common.finish(result, net, server, poll=False)
browser_common.exit_with(result, f"browser_snowplow.py {mode}")
