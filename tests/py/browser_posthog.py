"""A real browser runs PostHog's official browser SDK (posthog-js) against firehose-edge.

Usage: browser_posthog.py PAGE_PORT API_URL TOKEN

Serves a page on http://127.0.0.1:PAGE_PORT (another origin than the API, so CORS is
exercised) that loads posthog-js's standalone bundle from tests/js's node_modules
(posthog-js/dist/array.full.js: the SDK with every extension built in, so no extension
script is lazily loaded from api_host/static/...; POSTHOG_BUNDLE=array.full.no-external.js
picks the build without the external-scripts loader, which reads the remote config as JSON
instead of loading config.js). The page calls

  posthog.init(TOKEN, {api_host: API_URL, autocapture: false, capture_pageview: false,
                       capture_pageleave: false, disable_session_recording: true,
                       disable_surveys: true, ..., before_send: <records each event's uuid>})

and, once it is loaded, capture('checkout', {price: 42}), identify('web-user', {plan: 'pro'})
and capture('after_identify'), with everything else at the SDK's defaults (request batching,
compression chosen by the remote config's supportedCompression, fetch transport, retries)
but opt_out_useragent_filter: headless Chromium under chromedriver looks like a bot
(HeadlessChrome, navigator.webdriver) and posthog-js would drop every event.
Chromium resolves no host but 127.0.0.1, so nothing can leave the machine (an attempt shows
in "external_requests").

Headless Chromium, driven by selenium through chromedriver, loads the page. Delivery is read
from the browser's own network log (Chrome DevTools protocol via chromedriver's performance
log): a call counts as delivered once a request to API_URL carrying its event got a 200
answer (posthog-js retries any other status). Request bodies come from the log, or from
Network.getRequestPostData, and are decoded as the SDK encodes them: gzip (text/plain, no
Content-Encoding), base64 form (data=..., ?compression=base64) or JSON; an event's uuid is
the one the page's before_send hook saw. (Should bodies be unreadable, a call counts as
delivered once every request to the API was answered 200 and none more came for 5 s; such
calls are listed in "unverified".) Prints one JSON object:

  {"ok": true once the three calls are delivered,
   "failed": [calls not delivered, or delivered under another uuid than the page's],
   "delivered": {"checkout": "POST /e/ 200", "$identify": ..., "after_identify": ...},
   "uuids": {"checkout": "...", "$identify": "...", "after_identify": "..."},
   "bundle": "array.full.js", "version": "1.449.2",
   "requests": [every request to the API: method, url, type, status, content_type, error,
                encoding (gzip / base64-form / json), events],
   "failed_requests": [those that failed: not 200, or a network/CORS error],
   "external_requests": [...], "page_server": [paths the page server answered],
   "console": [browser console messages], "error": "..." (only on failure)}

and exits 0 if ok, 1 if not. BROWSER_TIMEOUT_SECS (default 60) bounds the wait for delivery;
with BROWSER_DEBUG set, "all_requests" lists every request the browser made, with bodies.

The page server, Chromium, the network log and the report's fields from "requests" on are
browser_common.py's; this script has the page, how a body is decoded, what counts as
delivered (and as a failed request) and the uuids.
"""

import base64
import gzip
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlsplit

import browser_common  # noqa: E402

POSTHOG_JS = Path(__file__).resolve().parent.parent / "js" / "node_modules" / "posthog-js"
# The calls the page makes, by event name, and how to recognise each on the wire.
CALLS = {
    "checkout": lambda e: (e.get("properties") or {}).get("price") == 42,
    "$identify": lambda e: (e.get("properties") or {}).get("distinct_id") == "web-user",
    "after_identify": lambda e: (e.get("properties") or {}).get("distinct_id") == "web-user",
}

if len(sys.argv) != 4 or not sys.argv[1].isdigit():
    sys.exit("usage: browser_posthog.py PAGE_PORT API_URL TOKEN")
page_port, api_url, token = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]
bundle = os.environ.get("POSTHOG_BUNDLE", "array.full.js")
bundles = POSTHOG_JS / "dist"
if not (bundles / bundle).is_file():
    sys.exit(f"{bundles / bundle} is missing: run scripts/ensure-node-sdks.sh")
version = json.loads((POSTHOG_JS / "package.json").read_text())["version"]
timeout = browser_common.timeout_secs()

CONFIG = {
    "api_host": api_url,
    "autocapture": False,
    "capture_pageview": False,
    "capture_pageleave": False,
    "capture_dead_clicks": False,
    "capture_heatmaps": False,
    "capture_performance": False,
    "capture_exceptions": False,
    "disable_session_recording": True,
    "disable_surveys": True,
    "disable_product_tours": True,
    "disable_conversations": True,
    "disable_web_experiments": True,
    "advanced_disable_toolbar_metrics": True,
    # Headless Chromium under chromedriver is a "bot" to posthog-js (HeadlessChrome in the
    # user agent, navigator.webdriver), whose events it drops; its own advice for
    # end-to-end tests is this option.
    "opt_out_useragent_filter": True,
    "debug": True,  # the SDK's own log lines show in "console"
}

PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>firehose-edge</title>
<script src="/posthog/{bundle}"></script></head><body><script>
window.__result = null;
window.__events = [];   // {{event, uuid}} of every event the SDK sends, from before_send
try {{
  const config = {json.dumps(CONFIG)};
  config.before_send = (event) => {{
    if (event) window.__events.push({{ event: event.event, uuid: event.uuid }});
    return event;
  }};
  config.loaded = (posthog) => {{
    try {{
      posthog.capture("checkout", {{ price: 42 }});
      posthog.identify("web-user", {{ plan: "pro" }});
      posthog.capture("after_identify");
      window.__result = {{ called: true }};
    }} catch (e) {{
      window.__result = {{ called: false, error: String(e && e.stack || e) }};
    }}
  }};
  window.posthog.init({json.dumps(token)}, config);
}} catch (e) {{
  window.__result = {{ called: false, error: String(e && e.stack || e) }};
}}
</script></body></html>"""

def decode(raw, url, content_type):
    """(encoding, events) of a capture body as posthog-js sends it; events None if unreadable."""
    query = dict(parse_qsl(urlsplit(url).query))
    steps = []
    try:
        if raw[:2] == b"\x1f\x8b" or query.get("compression") == "gzip-js":
            raw = gzip.decompress(raw)
            steps.append("gzip")
        text = raw.decode("utf-8")
        if "x-www-form-urlencoded" in (content_type or "") or query.get("compression") == "base64":
            data = parse_qs(text).get("data", [text])[0]
            text = base64.b64decode(data + "=" * (-len(data) % 4)).decode("utf-8")
            steps.append("base64-form")
        doc = json.loads(text)
    except Exception as e:  # noqa: BLE001
        return f"unreadable ({type(e).__name__})", None
    if isinstance(doc, dict) and isinstance(doc.get("batch"), list):
        events = doc["batch"]
    elif isinstance(doc, list):
        events = doc
    else:
        events = [doc]
    return "+".join(steps) or "json", [e for e in events if isinstance(e, dict)]


class Network(browser_common.Network):
    """The page's requests (browser_common.Network), bodies kept as bytes and decoded."""

    def request_body(self, request):
        """The exact bytes of a body from the log (postDataEntries), else postData's; None if neither."""
        entries = request.get("postDataEntries")
        if entries and all("bytes" in e for e in entries):
            # The exact bytes (base64), which a binary (gzip) body needs.
            return b"".join(base64.b64decode(e["bytes"]) for e in entries)
        if request.get("postData") is not None:
            return request["postData"].encode("utf-8")
        return None

    def fetched_body(self, answer):
        """The bytes of a body Network.getRequestPostData answered (base64 if it says so)."""
        data = answer["postData"]
        return base64.b64decode(data) if answer.get("base64Encoded") else data.encode("utf-8")

    def decoded(self, rid):
        """(encoding, events) of a request's body, None if it has none or it is gone."""
        raw = self.body(rid)
        if raw is None:
            return None
        r = self.requests[rid]
        if "decoded" not in r:
            r["decoded"] = decode(raw, r["url"], r["content_type"])
        return r["decoded"]

    def delivered(self):
        """Event name -> (the request that delivered it (200, finished), the uuid on the wire)."""
        found = {}
        for rid in self.api():
            r = self.requests[rid]
            if r["method"] != "POST" or r["status"] != 200 or r["error"]:
                continue
            decoded = self.decoded(rid)
            for e in (decoded or (None, None))[1] or []:
                name = e.get("event")
                if name in CALLS and CALLS[name](e) and name not in found:
                    found[name] = (f"POST {urlsplit(r['url']).path} {r['status']}", e.get("uuid"))
        return found

    def unreadable_answered(self):
        """Requests to an event path answered 200 whose body could not be read."""
        return [
            rid for rid in self.api()
            if self.requests[rid]["method"] == "POST" and self.requests[rid]["status"] == 200
            and not urlsplit(self.requests[rid]["url"]).path.startswith(("/flags", "/decide"))
            and (self.decoded(rid) or (None, None))[1] is None
        ]

    def settled(self):
        return all(self.requests[rid]["done"] for rid in self.api())

    def report(self, rid):
        r = self.requests[rid]
        out = super().report(rid)
        if r["method"] == "POST" and r["url"].startswith(self.api_url + "/"):
            decoded = self.decoded(rid)
            if decoded:
                out["encoding"] = decoded[0]
            if decoded and not urlsplit(r["url"]).path.startswith(("/flags", "/decide")):
                out["events"] = [e.get("event") for e in decoded[1]] if decoded[1] is not None else None
        return out

    def failed(self, report):
        """Whether a reported request failed: a network/CORS error, or not 200 (but a preflight)."""
        return report["error"] or (
            report["status"] is not None and report["status"] != 200 and report["method"] != "OPTIONS"
        )

    def debug_body(self, rid):
        """A request's body's first 2000 bytes, one character a byte."""
        return (self.requests[rid]["post"] or b"")[:2000].decode("latin-1")


server = browser_common.PageServer(page_port, PAGE, bundles, "/posthog/")
page_origin = server.origin
driver = browser_common.start_chromium()
result = {"ok": False, "failed": [], "bundle": bundle, "version": version}
net = Network(driver, api_url)
try:
    deadline = time.monotonic() + timeout
    page = browser_common.open_page(
        net, f"{page_origin}/", deadline, timeout, result, "posthog-js did not load (call `loaded`)"
    )
    if page:
        delivered = {}
        fallback_since = None
        while time.monotonic() < deadline:
            net.poll()
            delivered = net.delivered()
            if len(delivered) == len(CALLS):
                break
            # If some bodies cannot be read, a call counts as delivered by 200 answers to
            # its requests: once every request is answered 200 and nothing more has been
            # sent for 5 s (the SDK's queue flushes every 3 s and retries anything not 200).
            unreadable = net.unreadable_answered()
            if unreadable and net.settled() and not [
                r for r in net.api() if net.requests[r]["status"] not in (200, 204)
                and net.requests[r]["method"] != "GET"
            ]:
                fallback_since = fallback_since or (time.monotonic(), len(net.requests))
                if fallback_since[1] != len(net.requests):
                    fallback_since = (time.monotonic(), len(net.requests))
                elif time.monotonic() - fallback_since[0] > 5:
                    seen = driver.execute_script("return window.__events") or []
                    names = {e.get("event"): e.get("uuid") for e in reversed(seen)}
                    result["unverified"] = [n for n in CALLS if n not in delivered and n in names]
                    for name in result["unverified"]:
                        delivered[name] = (f"POST 200 x{len(unreadable)} (bodies unreadable)", names[name])
                    break
            else:
                fallback_since = None
            time.sleep(0.2)
        # Let requests still in flight (e.g. /flags/ after identify) finish, briefly.
        settle = min(deadline, time.monotonic() + 2)
        while time.monotonic() < settle and not all(net.requests[rid]["done"] for rid in net.api()):
            time.sleep(0.2)
            net.poll()
        seen = driver.execute_script("return window.__events") or []
        uuids = {}
        for e in seen:
            if e.get("event") in CALLS:
                uuids.setdefault(e["event"], e.get("uuid"))
        result["uuids"] = uuids
        result["delivered"] = {name: how for name, (how, _) in delivered.items()}
        for name, (_, wire_uuid) in delivered.items():
            if wire_uuid != uuids.get(name):
                result["failed"].append(f"{name}: delivered as uuid {wire_uuid}, the page saw {uuids.get(name)}")
        missing = [name for name in CALLS if name not in delivered]
        result["failed"] += [f"{name}: not delivered within {timeout:.0f} s" for name in missing]
        result["ok"] = not result["failed"]
        if result["failed"]:
            result["error"] = "; ".join(result["failed"])
except Exception as e:  # noqa: BLE001 - reported, and the exit code says it failed
    result["error"] = f"{type(e).__name__}: {e}"
finally:
    browser_common.finish(result, net, server)
browser_common.exit_with(result, "browser_posthog.py")
