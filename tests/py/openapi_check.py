"""Checks openapi.yaml against a running firehose-edge, after schemathesis has fuzzed it.

Usage: openapi_check.py OPENAPI BASE_URL CASSETTE

1. Drift: every operation's documented `examples` are accepted (2xx) and its
   `x-counter-examples` refused with 400 by the real validator.
2. From schemathesis' VCR cassette: what every 2xx request carried, so the caller can check it
   all reached the lake — the records `accepted` by the classic endpoints, and the distinct
   messages of the `/v1` ones (a `messageId` already accepted is answered 200 and not stored
   again), PostHog's events (by `uuid`) and Snowplow's (by `eid`, the pixel's from its query).
   Prints {"classic_records": N, "v1_records": M, "posthog_records": P, "snowplow_records": S,
   "drift": [...problems]}.
"""

import base64
import json
import sys
import urllib.parse
import urllib.request

import yaml

spec_path, base, cassette_path = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
spec = yaml.safe_load(open(spec_path))


def post(path, body):
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


BATCH_PATHS = ("/v1/batch", "/v1/import", "/beacon/v1/batch")


def is_v1(path):
    """The Segment-compatible API (which answers {"success": true}, not a count)."""
    return path.startswith("/v1/") or path in BATCH_PATHS


POSTHOG_CAPTURE = {f"/{p}{s}" for p in ("e", "i/v0/e", "capture", "batch") for s in ("", "/")}
SNOWPLOW_POST, SNOWPLOW_PIXEL = "/com.snowplowanalytics.snowplow/tp2", ("/i", "/ice.png")
STORES_NOTHING = ("/flags", "/decide", "/array/")


class Distinct:
    """Stored messages, deduplicated by id (one without an id is always stored)."""

    def __init__(self):
        self.ids, self.without = set(), 0

    def add(self, message, key):
        if isinstance(message.get(key), str):
            self.ids.add(message[key])
        else:
            self.without += 1

    def count(self):
        return len(self.ids) + self.without


def posthog_events(body):
    if isinstance(body, list):
        return body
    return body["batch"] if "batch" in body else [body]


drift = []
classic_records = 0
v1, posthog, snowplow = Distinct(), Distinct(), Distinct()
for path, item in spec["paths"].items():
    request_body = item.get("post", {}).get("requestBody", {})
    media = request_body.get("content", {}).get("application/json", {})
    for name, example in media.get("examples", {}).items():
        status, body = post(path, example["value"])
        if status // 100 != 2:
            drift.append(f"{path} example {name} refused: {status} {body!r}")
        elif path in POSTHOG_CAPTURE:
            for event in posthog_events(example["value"]):
                posthog.add(event, "uuid")
        elif path == SNOWPLOW_POST:
            for event in example["value"]["data"]:
                snowplow.add(event, "eid")
        elif not is_v1(path):
            classic_records += json.loads(body)["accepted"]
        else:
            v1.add(example["value"], "messageId")
    for counter in media.get("x-counter-examples", []):
        status, body = post(path, counter)
        if status != 400:
            drift.append(f"{path} counter-example {counter} answered {status} {body!r}")


def text(body):
    if body is None:
        return ""
    if isinstance(body, dict):
        if "base64_string" in body:
            return base64.b64decode(body["base64_string"]).decode("utf-8", "replace")
        return body.get("string", "")
    return str(body)


# libyaml's loader when PyYAML has it: the pure-Python one takes ~20 s over the cassette of
# a full run (thousands of interactions), most of the test's time.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
cassette = yaml.load(open(cassette_path), Loader=Loader)
for interaction in cassette.get("http_interactions", []):
    request, response = interaction["request"], interaction.get("response") or {}
    code = (response.get("status") or {}).get("code")
    if code is None or int(code) // 100 != 2:
        continue
    target = request["uri"].split("://", 1)[1].split("/", 1)[1]
    path = "/" + target.split("?", 1)[0]
    query = target.split("?", 1)[1] if "?" in target else ""
    if path.startswith(STORES_NOTHING):
        continue
    if path in SNOWPLOW_PIXEL:
        snowplow.add(dict(urllib.parse.parse_qsl(query, keep_blank_values=True)), "eid")
        continue
    body = json.loads(text(request.get("body")).lstrip("\ufeff"))
    if path in POSTHOG_CAPTURE:
        for event in posthog_events(body):
            posthog.add(event, "uuid")
    elif path == SNOWPLOW_POST:
        for event in body["data"]:
            snowplow.add(event, "eid")
    elif is_v1(path):
        messages = body["batch"] if path in BATCH_PATHS else [body]
        for m in messages:
            v1.add(m, "messageId")
    else:
        classic_records += json.loads(text(response.get("body")))["accepted"]

print(json.dumps({
    "classic_records": classic_records, "v1_records": v1.count(),
    "posthog_records": posthog.count(), "snowplow_records": snowplow.count(), "drift": drift,
}))
