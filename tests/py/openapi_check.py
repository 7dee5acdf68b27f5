"""Checks openapi.yaml against a running firehose-edge, after schemathesis has fuzzed it.

Usage: openapi_check.py OPENAPI BASE_URL CASSETTE

1. Drift: every operation's documented `examples` are accepted (2xx) and its
   `x-counter-examples` refused with 400 by the real validator.
2. From schemathesis' VCR cassette: what every 2xx request carried, so the caller can check it
   all reached the lake — the records `accepted` by the classic endpoints, and the distinct
   messages of the `/v1` ones (a `messageId` already accepted is answered 200 and not stored
   again). Prints {"classic_records": N, "v1_records": M, "drift": [...problems]}.
"""

import base64
import json
import sys
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


drift = []
classic_records = 0
v1_ids, v1_without_id = set(), 0
for path, item in spec["paths"].items():
    media = item["post"]["requestBody"]["content"]["application/json"]
    for name, example in media.get("examples", {}).items():
        status, body = post(path, example["value"])
        if status // 100 != 2:
            drift.append(f"{path} example {name} refused: {status} {body!r}")
        elif not is_v1(path):
            classic_records += json.loads(body)["accepted"]
        elif example["value"].get("messageId") is None:
            v1_without_id += 1
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
    path = "/" + request["uri"].split("://", 1)[1].split("/", 1)[1].split("?", 1)[0]
    if is_v1(path):
        body = json.loads(text(request.get("body")).lstrip("\ufeff"))
        messages = body["batch"] if path in BATCH_PATHS else [body]
        for m in messages:
            if isinstance(m.get("messageId"), str):
                v1_ids.add(m["messageId"])
            else:
                v1_without_id += 1
    else:
        classic_records += json.loads(text(response.get("body")))["accepted"]

print(json.dumps({"classic_records": classic_records, "v1_records": len(v1_ids) + v1_without_id, "drift": drift}))
