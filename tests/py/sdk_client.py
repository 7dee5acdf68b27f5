"""Drives an official analytics SDK, unchanged, against firehose-edge.

Usage: sdk_client.py SDK HOST WRITE_KEY COUNT [SKEW_SECONDS]

SDK is "segment" (segment-analytics-python), "rudder" (rudder-sdk-python) or "analytics"
(analytics-python 1.4.post1, segment-analytics-python's old name, which
scripts/ensure-sdks.sh installs apart from the venv's site-packages). Sends COUNT
messages cycling through track, identify, page, screen, group and alias through the SDK's
normal API, each with a known messageId and an event time 60 s before the device's clock,
flushes, and prints one JSON object: {"sent": [{"messageId", "type"}...], "errors": [...]}.
With SKEW_SECONDS, the device's clock (the SDK's own `datetime.now`) runs that far ahead of
the server's, so the server's skew correction can be checked. With SDK_USERS=N in the
environment, messages cycle through N users (`u0`…, anonymous `a0`…) instead of one each,
and each sent entry also says its `userId`, `anonymousId` and `previousId`.
"""

import importlib.util
import json
import os
import sys
from datetime import datetime, timedelta, timezone

sdk, host, key, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
skew = timedelta(seconds=float(sys.argv[5])) if len(sys.argv) > 5 else timedelta(0)


class DeviceClock(datetime):
    """The device's clock: `skew` ahead of the real one."""

    @classmethod
    def now(cls, tz=None):
        # An instance of this class: the SDKs check `isinstance(timestamp, datetime)` with
        # the name patched below.
        return cls.fromtimestamp((datetime.now(timezone.utc) + skew).timestamp(), tz)

    @classmethod
    def utcnow(cls):
        # analytics-python 1.4 reads the clock with `datetime.utcnow()` (naive UTC).
        return cls.now(timezone.utc).replace(tzinfo=None)


if sdk == "segment":
    import segment.analytics.client as sdk_client
    import segment.analytics.request as sdk_request
    from segment import analytics
elif sdk == "rudder":
    import rudderstack.analytics.client as sdk_client
    import rudderstack.analytics.request as sdk_request
    from rudderstack import analytics
elif sdk == "analytics":
    # Its directory goes first on the path, so that it runs with the dependency it pins
    # (backoff 1.10.0, which rudder-sdk-python's pin excludes from the venv itself).
    spec = importlib.util.find_spec("analytics")
    if spec is None or spec.origin is None:
        sys.exit("analytics-python is not installed: run scripts/ensure-sdks.sh")
    sys.path.insert(0, os.path.dirname(os.path.dirname(spec.origin)))
    import analytics
    import analytics.client as sdk_client
    import analytics.request as sdk_request
else:
    sys.exit(f"unknown SDK {sdk}")

sdk_client.datetime = DeviceClock
sdk_request.datetime = DeviceClock

errors = []
analytics.write_key = key
analytics.host = host
if sdk == "rudder":
    analytics.dataPlaneUrl = host
analytics.on_error = lambda error, items: errors.append(repr(error))
analytics.max_retries = 20

kinds = ["track", "identify", "page", "screen", "group", "alias"]
users = int(os.environ.get("SDK_USERS", "0"))
sent = []
for n in range(count):
    kind = kinds[n % len(kinds)]
    mid = f"{sdk}-{n}"
    i = n % users if users else n
    when = DeviceClock.fromtimestamp(
        DeviceClock.now(timezone.utc).timestamp() - 60, timezone.utc
    )
    common = {"message_id": mid, "timestamp": when}
    if kind == "track":
        analytics.track(user_id=f"u{i}", event="Order Completed", properties={"i": i}, **common)
    elif kind == "identify":
        analytics.identify(user_id=f"u{i}", traits={"plan": "pro"}, **common)
    elif kind == "page":
        analytics.page(user_id=f"u{i}", name="Home", properties={"path": "/"}, **common)
    elif kind == "screen":
        analytics.screen(anonymous_id=f"a{i}", name="Settings", **common)
    elif kind == "group":
        analytics.group(user_id=f"u{i}", group_id=f"g{i}", traits={"size": 3}, **common)
    else:
        analytics.alias(previous_id=f"a{i}", user_id=f"u{i}", **common)
    ids = {
        "userId": None if kind == "screen" else f"u{i}",
        "anonymousId": f"a{i}" if kind == "screen" else None,
        "previousId": f"a{i}" if kind == "alias" else None,
    }
    sent.append({"messageId": mid, "type": kind, **ids})

analytics.flush()
analytics.shutdown()
print(json.dumps({"sent": sent, "errors": errors}))
