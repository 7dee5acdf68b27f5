"""Drives PostHog's official Python SDK (posthog), unchanged, against firehose-edge.

Usage: posthog_client.py HOST TOKEN COUNT [SKEW_SECONDS]

Sends COUNT events through `posthog.Client(TOKEN, host=HOST)` cycling through every kind
the SDK emits: capture (with properties and groups), set ($set), set_once ($set_once),
group_identify ($groupidentify) and alias ($create_alias). Each carries a uuid4 generated
here and an explicit timestamp 60 s before the device's clock. The client is configured only
so that it drops nothing: a large queue, fast flushes, and max_retries 10 (backoff
min(2^n, 30) s, at least Retry-After: 1+2+4+8+16 s outlasts 20 s of 503s). POSTHOG_GZIP=1
turns the SDK's gzip on (Content-Encoding: gzip); it is off by default, as in the SDK.
With SKEW_SECONDS, the device's clock (`datetime.now` as the SDK's modules see it, for
event timestamps and the batch's sent_at) runs that far ahead of the server's, so the
server's skew correction can be checked.

Flushes with no timeout, then prints one JSON object:
  {"sent": [{"uuid", "event", "distinct_id"}...], "errors": [...],
   "lib": "posthog-python", "version": "7.91.1"}
where errors are the SDK's on_error reports (a batch given up on) and its warnings (e.g. an
event dropped because the queue is full). Exits 0 if there are none, 1 otherwise.
"""

import json
import logging
import os
import sys
from datetime import datetime, timedelta, timezone
from uuid import uuid4

import posthog
import posthog.capture_v1 as sdk_capture_v1
import posthog.client as sdk_client
import posthog.request as sdk_request
from posthog.version import VERSION

if len(sys.argv) not in (4, 5):
    sys.exit("usage: posthog_client.py HOST TOKEN COUNT [SKEW_SECONDS]")
host, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
skew = timedelta(seconds=float(sys.argv[4])) if len(sys.argv) > 4 else timedelta(0)


class DeviceClock(datetime):
    """The device's clock: `skew` ahead of the real one."""

    @classmethod
    def now(cls, tz=None):
        return cls.fromtimestamp((datetime.now(timezone.utc) + skew).timestamp(), tz)


# Only the SDK's own modules see the skewed clock (client: event timestamps, request:
# the batch's sent_at; capture_v1 has the same for the opt-in v1 protocol). posthog.utils
# is left alone: it only guesses the zone of naive datetimes, and checks isinstance().
for module in (sdk_client, sdk_request, sdk_capture_v1):
    module.datetime = DeviceClock

errors = []


class Warnings(logging.Handler):
    """The SDK's warnings and errors (dropped events, rejected arguments) count as errors."""

    def emit(self, record):
        message = record.getMessage()
        if "error uploading" not in message:  # reported through on_error too
            errors.append(f"{record.levelname}: {message}")


logging.getLogger("posthog").addHandler(Warnings(level=logging.WARNING))

client = posthog.Client(
    token,
    host=host,
    gzip=os.environ.get("POSTHOG_GZIP") == "1",
    max_queue_size=1_000_000,  # default 10000, then newest events are dropped
    flush_at=500,
    flush_interval=0.5,
    max_retries=10,
    on_error=lambda error, batch: errors.append(f"{len(batch)} events: {error!r}"),
)

kinds = ["capture", "set", "set_once", "group_identify", "alias"]
sent = []
for i in range(count):
    kind = kinds[i % len(kinds)]
    uuid = str(uuid4())
    when = DeviceClock.now(timezone.utc) - timedelta(seconds=60)
    common = {"uuid": uuid, "timestamp": when}
    distinct_id = f"py-u{i}"
    if kind == "capture":
        event = "order_completed"
        client.capture(event, distinct_id=distinct_id, properties={"i": i, "price": 42.5},
                       groups={"company": f"c{i}"}, **common)
    elif kind == "set":
        event = "$set"
        client.set(distinct_id=distinct_id, properties={"plan": "pro", "i": i}, **common)
    elif kind == "set_once":
        event = "$set_once"
        client.set_once(distinct_id=distinct_id, properties={"first_seen": "2026-01-01"}, **common)
    elif kind == "group_identify":
        event = "$groupidentify"
        client.group_identify("company", f"c{i}", {"name": "Acme", "size": 3},
                              distinct_id=distinct_id, **common)
    else:
        event = "$create_alias"
        distinct_id = f"py-a{i}"  # an alias event's distinct_id is the previous id
        client.alias(previous_id=distinct_id, distinct_id=f"py-u{i}", **common)
    sent.append({"uuid": uuid, "event": event, "distinct_id": distinct_id})

client.flush(timeout_seconds=None)
client.shutdown()
print(json.dumps({"sent": sent, "errors": errors, "lib": "posthog-python", "version": VERSION}))
sys.exit(1 if errors else 0)
