"""What the browser drivers share: the page server, headless Chromium and its network log.

tests/py/browser.py (Segment's and RudderStack's browser SDKs), browser_posthog.py
(posthog-js) and browser_snowplow.py (Snowplow's browser tracker) each serve a page that
loads an SDK and points it at the service, have a real browser load it, and read what was
delivered from the browser's own network log. This module is the part that does not depend
on the SDK:

  PageServer      the page on http://127.0.0.1:PAGE_PORT (another origin than the API, so
                  CORS is exercised), with the SDK's files under a path prefix
  start_chromium  headless Chromium, driven by selenium through chromedriver, which
                  resolves no host but 127.0.0.1 (so nothing can leave the machine: an
                  attempt shows in "external_requests") and logs the DevTools network events
  Network         every request of the page, from that log (chromedriver's performance
                  log), and the browser console's messages
  open_page       loads the page and waits for its window.__result
  finish          the report's common fields, then closes browser and page server
  exit_with       prints the report (one JSON object) and exits 0 if it is ok, 1 if not

The fields finish adds to every report:

  "requests": [every request to the API: method, url, type, status, content_type, error,
               and what the driver's Network.report adds],
  "failed_requests": [those Network.failed says failed], "external_requests": [...],
  "page_server": [paths the page server answered], "console": [browser console messages],
  and, with BROWSER_DEBUG set, "all_requests": [every request the browser made, with its body].

BROWSER_TIMEOUT_SECS (default 60; timeout_secs) bounds a driver's wait for delivery. Each
driver keeps what is its SDK's: the page, how a body is read, what counts as delivered.
"""

import functools
import http.server
import json
import os
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
    # Only loopback resolves: nothing the page does can reach another host.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]


def timeout_secs():
    """How long a driver waits for delivery, in seconds: BROWSER_TIMEOUT_SECS, default 60."""
    return float(os.environ.get("BROWSER_TIMEOUT_SECS", "60"))


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """Answers a PageServer's requests (see there)."""

    def __init__(self, site, *args, **kwargs):
        self.site = site
        super().__init__(*args, **kwargs)

    def send_bytes(self, body, content_type):
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        site = self.site
        site.served.append(self.path)
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            return self.send_bytes(site.page.encode(), "text/html; charset=utf-8")
        if path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return
        answer = site.route(path) if site.route else None
        if answer is not None:
            return self.send_bytes(*answer)
        if path.startswith(site.prefix):
            self.path = "/" + path[len(site.prefix):]
            return super().do_GET()
        self.send_error(404)

    def log_message(self, *args):
        pass


class PageServer:
    """The page's server on http://127.0.0.1:PORT (`origin`), serving from a thread.

    GET / (or /index.html) is `page` (HTML), /favicon.ico a 204, a path for which
    `route(path)` gives (body bytes, content type) that answer, a path under `prefix` the
    file of that name in `directory` (the SDK's bundle and its chunks); anything else is a
    404. `served` lists every path asked, with its query.
    """

    def __init__(self, port, page, directory, prefix, route=None):
        self.page, self.prefix, self.route = page, prefix, route
        self.origin = f"http://127.0.0.1:{port}"
        self.served = []
        handler = functools.partial(PageHandler, self, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def shutdown(self):
        self.httpd.shutdown()


def start_chromium():
    """Headless Chromium under chromedriver (a selenium driver), on a fresh profile.

    No host but loopback resolves (CHROMIUM_FLAGS). The browser console and the DevTools
    network events are logged, for Network to read.
    """
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
    profile = tempfile.mkdtemp()
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Network:
    """Every request of the page, from chromedriver's performance log (DevTools events).

    `requests` maps a DevTools requestId to {method, url, type, content_type, post (the
    body, as request_body keeps it), has_post, status, error, done}; `order` lists the ids
    as the requests were sent; `console` the browser console's messages. poll() reads what
    the logs gained since it last did. The API is every URL under `api_url`. A driver
    subclasses it for its SDK's bodies, what it reports of a request and what is delivered.
    """

    def __init__(self, driver, api_url):
        self.driver = driver
        self.api_url = api_url
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
                    "post": self.request_body(request),
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

    def request_body(self, request):
        """What is kept of a body from its Network.requestWillBeSent: postData (str) or None."""
        return request.get("postData")

    def fetched_body(self, answer):
        """What is kept of a body from Network.getRequestPostData's answer: its postData."""
        return answer["postData"]

    def body(self, rid):
        """A request's body, asked of the browser if the log had none; None if it has none or it is gone."""
        r = self.requests[rid]
        if r["post"] is None and r["has_post"]:
            try:
                r["post"] = self.fetched_body(
                    self.driver.execute_cdp_cmd("Network.getRequestPostData", {"requestId": rid})
                )
            except Exception:
                r["has_post"] = False  # gone with its page; do not ask again
        return r["post"]

    def api(self):
        """The ids of the requests to the API, in the order they were sent."""
        return [rid for rid in self.order if self.requests[rid]["url"].startswith(self.api_url + "/")]

    def external(self, origin):
        """The ids of the requests that tried to leave: neither to the API nor to `origin`."""
        return [
            rid for rid in self.order
            if self.requests[rid]["url"].startswith(("http:", "https:", "ws:", "wss:"))
            and not self.requests[rid]["url"].startswith((self.api_url + "/", origin + "/"))
        ]

    def report(self, rid):
        """A request as the report lists it."""
        r = self.requests[rid]
        return {k: r[k] for k in ("method", "url", "type", "status", "content_type", "error")}

    def failed(self, report):
        """Whether a reported request failed: a network/CORS error, or a non-2xx answer."""
        return report["error"] or (report["status"] is not None and not 200 <= report["status"] < 300)

    def debug_body(self, rid):
        """A request's body as "all_requests" (BROWSER_DEBUG) shows it."""
        return self.requests[rid]["post"]


def open_page(net, url, deadline, timeout, result, not_loaded="the page's calls did not return"):
    """Loads the page at `url` and waits, polling `net`, for it to set window.__result.

    Returns that ({called: true, ...}) once the page says it made its calls. If it says it
    could not ({called: false, error}), or sets nothing by `deadline`, returns None with
    result["error"] set to its error, or to "{not_loaded} within {timeout} s".
    """
    driver = net.driver
    driver.set_page_load_timeout(30)
    driver.get(url)
    page = None
    while time.monotonic() < deadline:
        net.poll()
        page = driver.execute_script("return window.__result")
        if page is not None:
            break
        time.sleep(0.1)
    if page is None:
        result["error"] = f"{not_loaded} within {timeout:.0f} s"
    elif not page.get("called"):
        result["error"] = page.get("error")
    else:
        return page
    return None


def finish(result, net, server, poll=True):
    """Adds the common fields (see the module's doc) to `result`, then quits browser and server.

    Polls `net` a last time first (an error then is ignored), unless `poll` is False.
    """
    if poll:
        try:
            net.poll()
        except Exception:
            pass
    api_requests = [net.report(rid) for rid in net.api()]
    result["requests"] = api_requests
    result["failed_requests"] = [r for r in api_requests if net.failed(r)]
    result["external_requests"] = [net.report(rid) for rid in net.external(server.origin)]
    result["page_server"] = server.served
    if os.environ.get("BROWSER_DEBUG"):
        result["all_requests"] = [{**net.report(rid), "body": net.debug_body(rid)} for rid in net.order]
    result["console"] = net.console
    net.driver.quit()
    server.shutdown()


def exit_with(result, name):
    """Prints `result` as one JSON object and exits 0 if result["ok"], else 1 (saying why on stderr)."""
    print(json.dumps(result))
    if not result["ok"]:
        print(f"{name}: {result.get('error')}; failed requests: {result['failed_requests']}", file=sys.stderr)
    sys.exit(0 if result["ok"] else 1)
