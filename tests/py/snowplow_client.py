"""Drives the official Snowplow Python tracker, unchanged, against firehose-edge.

Usage: snowplow_client.py METHOD ENDPOINT COUNT [SKEW_SECONDS]

METHOD is "post" (batches of 10 to /com.snowplowanalytics.snowplow/tp2) or "get" (one
event a request to /i); ENDPOINT is the collector's base URL, e.g. http://127.0.0.1:8080.
snowplow-tracker 1.1.0 (the venv's) sends COUNT events through its normal API (a Tracker
with namespace "py", app_id "py-app" and the default base64 encoding, and the synchronous
Emitter), cycling through a page view, a structured event, a self-describing event
(iglu:com.example/checkout/jsonschema/1-0-0 {"price": i, "currency": "EUR"}) and a screen
view; each carries the context entity iglu:com.example/user/jsonschema/1-0-0
{"tier": "gold", "n": i}, and the tracker's Subject has user id user-<i % 7>.

The tracker answers a retryable failure (a 5xx such as 503, or a connection error) by
putting the events back in its buffer and starting a one-shot retry timer
(min(2 × previous + random(0, 1), max_retry_delay_seconds), raised here from 60 s to 10 s
so that ~20 s of 503 answers are survived well within the deadline); while that timer
runs, flush() returns at once without sending. So after tracking, this flushes until the
buffer is empty and no retry is pending, and every event was reported sent by on_success,
or SNOWPLOW_TIMEOUT_SECS (default 60) have passed. Prints one JSON object:

  {"sent": [{"eid", "e", "kind", "uid", "price" (self-describing checkout only),
             "dtm" (as sent; once delivered)}...],
   "errors": [events not delivered, and why], "statuses": [HTTP status of each request],
   "tracker": "py-1.1.0"}

and exits 0 if there are no errors. The eid is what Tracker.track returns (1.x).
With SKEW_SECONDS, the device's clock runs that far ahead of the real one: the tracker's
modules read it as `time.time()` (tracker.py for dtm, emitters.py for stm), and their
`time` names are replaced by a clock `skew` ahead; nothing else is patched.
"""

import json
import logging
import os
import sys
import time
import uuid

import requests
import snowplow_tracker.emitters as sp_emitters
import snowplow_tracker.tracker as sp_tracker
from snowplow_tracker import (
    Emitter,
    PageView,
    ScreenView,
    SelfDescribing,
    SelfDescribingJson,
    StructuredEvent,
    Subject,
    Tracker,
)
from snowplow_tracker.constants import VERSION

if len(sys.argv) not in (4, 5) or sys.argv[1] not in ("post", "get"):
    sys.exit("usage: snowplow_client.py {post|get} ENDPOINT COUNT [SKEW_SECONDS]")
method, endpoint, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
skew = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
timeout = float(os.environ.get("SNOWPLOW_TIMEOUT_SECS", "60"))


class DeviceTime:
    """The `time` module as the tracker's modules see it: `time()` runs `skew` ahead."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def time():
        return time.time() + skew


sp_tracker.time = DeviceTime()  # dtm: Tracker.get_timestamp, int(time.time() * 1000)
sp_emitters.time = DeviceTime()  # stm: Emitter.attach_sent_timestamp, int(time.time()) * 1000

# The emitter logs every request at INFO on stderr: keep its warnings only.
sp_emitters.logger.setLevel(logging.WARNING)

delivered = {}  # eid -> the payload as sent, once on_success reported it
failures = {}  # eid -> number of failed sends
statuses = []  # status of every HTTP answer, in order


def on_success(events):
    for e in events:
        delivered.setdefault(str(e["eid"]), e)


def on_failure(n_ok, events):
    for e in events:
        failures[str(e["eid"])] = failures.get(str(e["eid"]), 0) + 1


# A session is an Emitter option; its response hook only records each answer's status.
session = requests.Session()
session.hooks["response"].append(lambda r, *a, **k: statuses.append(r.status_code))

emitter = Emitter(
    endpoint,
    method=method,
    on_success=on_success,
    on_failure=on_failure,
    request_timeout=10,
    max_retry_delay_seconds=10,
    session=session,
)
subject = Subject()
tracker = Tracker(namespace="py", emitters=emitter, subject=subject, app_id="py-app")

sent = []
for i in range(count):
    uid = f"user-{i % 7}"
    subject.set_user_id(uid)
    ctx = [SelfDescribingJson("iglu:com.example/user/jsonschema/1-0-0", {"tier": "gold", "n": i})]
    kind = ("page_view", "struct", "checkout", "screen_view")[i % 4]
    entry = {"kind": kind, "uid": uid}
    if kind == "page_view":
        event = PageView(
            page_url=f"https://shop.example/p/{i}",
            page_title=f"Product {i}",
            referrer="https://search.example/?q=shop",
            context=ctx,
        )
        entry["e"] = "pv"
    elif kind == "struct":
        event = StructuredEvent(
            category="shop", action="add-to-basket", label=f"sku-{i}", property_="size", value=i, context=ctx
        )
        entry["e"] = "se"
    elif kind == "checkout":
        event = SelfDescribing(
            SelfDescribingJson("iglu:com.example/checkout/jsonschema/1-0-0", {"price": i, "currency": "EUR"}),
            context=ctx,
        )
        entry["e"] = "ue"
        entry["price"] = i
    else:
        event = ScreenView(id_=str(uuid.uuid4()), name="Settings", type="modal", context=ctx)
        entry["e"] = "ue"
    eid = tracker.track(event)  # 1.x returns the event id
    entry["eid"] = eid
    sent.append(entry)

errors = []
eids = [s["eid"] for s in sent]
if None in eids:
    errors.append("Tracker.track returned no event id")
deadline = time.monotonic() + timeout
timed_out = False
while True:
    # flush() sends nothing while a retry timer runs; that timer flushes by itself when it
    # fires. The emitter's lock is held for every send, so holding it means none is in flight.
    emitter.flush()
    with emitter.lock:
        pending = emitter.event_store.size()
        retrying = emitter.retry_timer.is_active()
    if pending == 0 and not retrying:
        break  # all sent, or dropped (see below)
    if time.monotonic() >= deadline:
        timed_out = True
        break
    time.sleep(0.1)
emitter.retry_timer.cancel()

for s in sent:
    payload = delivered.get(s["eid"])
    if payload is not None:
        s["dtm"] = int(payload["dtm"])
    else:
        n = failures.get(s["eid"], 0)
        if timed_out:
            why = f"still queued after {timeout:.0f} s and {n} failed sends"
        else:
            # A status it does not retry (400, 401, 403, 410, 422) drops the events; so does,
            # in GET mode, a failed request followed in the same flush by a successful one
            # (the retry decision looks at the last request's status only).
            why = f"dropped by the tracker after {n} failed sends"
        errors.append(f"{s['eid']} ({s['kind']}): not delivered: {why}")

print(json.dumps({"sent": sent, "errors": errors, "statuses": statuses, "tracker": VERSION}))
sys.exit(1 if errors else 0)
