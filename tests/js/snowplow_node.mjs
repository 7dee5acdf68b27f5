// Drives the official Snowplow Node tracker (@snowplow/node-tracker), unchanged, against
// firehose-edge.
//
// Usage: node snowplow_node.mjs METHOD ENDPOINT COUNT      (cwd tests/js)
//   METHOD    post (batches to /com.snowplowanalytics.snowplow/tp2) or get (one event a
//             request to /i)
//   ENDPOINT  the collector's base URL, e.g. http://127.0.0.1:8080. It is passed as the
//             emitter's `endpoint` as is, with no `port` (the tracker appends `:port` to the
//             endpoint, so http://h:8080 with port 8080 would be http://h:8080:8080).
//
// Sends COUNT events cycling through a page view, a structured event and a self-describing
// event (iglu:com.example/checkout/jsonschema/1-0-0 {price: i, currency: 'EUR'}), each with
// the context entity iglu:com.example/user/jsonschema/1-0-0 {tier: 'gold', n: i}, with user
// id user-<i % 7> (setUserId before each event: the node tracker has no per-event subject),
// through newTracker({namespace: 'node', appId: 'node-app'}, {endpoint, eventMethod, bufferSize:
// 10}) and its defaults (base64 encoding, 5 s connection timeout, retry on anything but 2xx
// and 400/401/403/410/422).
//
// The tracker has no retry timer: a retryable failure (a 503, a connection error) leaves the
// events at the head of its in-memory store until the next flush, and flush() returns at
// once while another flush (one started by reaching bufferSize) is in progress. So this
// flushes, waits for the delivery callbacks, and flushes again (0.5 s apart) until every
// event was reported in onRequestSuccess (or dropped, reported in onRequestFailure with
// willRetry false), for at most SNOWPLOW_TIMEOUT_SECS (default 60). Prints one JSON object:
//   {"sent": [{"eid", "e", "uid", "price" (self-describing only), "dtm"}...],
//    "errors": [...], "statuses": [HTTP status of each answer, or "error: ..."],
//    "tracker": "node-4.8.0"}
// and exits 0 if there are no errors. Each eid is read from the payload `track` returns.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const {
  newTracker,
  buildPageView,
  buildStructEvent,
  buildSelfDescribingEvent,
  version,
} = require('@snowplow/node-tracker')

const [method, endpoint, countText] = process.argv.slice(2)
const count = Number(countText)
if (!['post', 'get'].includes(method) || !endpoint || !Number.isInteger(count)) {
  console.error('usage: node snowplow_node.mjs {post|get} ENDPOINT COUNT')
  process.exit(2)
}
const timeoutMs = Number(process.env.SNOWPLOW_TIMEOUT_SECS ?? '60') * 1000
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const delivered = new Set()
const dropped = new Map() // eid -> why
const failedSends = new Map() // eid -> count
const statuses = []

const tracker = newTracker(
  { namespace: 'node', appId: 'node-app' },
  {
    endpoint,
    eventMethod: method,
    bufferSize: 10,
    onRequestSuccess: (payloads, response) => {
      statuses.push(response.status)
      for (const p of payloads) delivered.add(p.eid)
    },
    onRequestFailure: (failure, response) => {
      statuses.push(response ? response.status : `error: ${failure.message}`)
      for (const p of failure.events) {
        failedSends.set(p.eid, (failedSends.get(p.eid) ?? 0) + 1)
        if (!failure.willRetry) dropped.set(p.eid, `HTTP ${failure.status} ${failure.message ?? ''}`.trim())
      }
    },
  }
)

const sent = []
const errors = []
for (let i = 0; i < count; i++) {
  const uid = `user-${i % 7}`
  tracker.setUserId(uid)
  const ctx = [{ schema: 'iglu:com.example/user/jsonschema/1-0-0', data: { tier: 'gold', n: i } }]
  let event
  let price
  switch (i % 3) {
    case 0:
      event = buildPageView({
        pageUrl: `https://shop.example/p/${i}`,
        pageTitle: `Product ${i}`,
        referrer: 'https://search.example/?q=shop',
      })
      break
    case 1:
      event = buildStructEvent({
        category: 'shop',
        action: 'add-to-basket',
        label: `sku-${i}`,
        property: 'size',
        value: i,
      })
      break
    default:
      price = i
      event = buildSelfDescribingEvent({
        event: { schema: 'iglu:com.example/checkout/jsonschema/1-0-0', data: { price, currency: 'EUR' } },
      })
  }
  // The built payload, as handed to the emitter (its input() runs without being awaited).
  const payload = tracker.track(event, ctx)
  if (!payload?.eid) {
    errors.push(`event ${i}: track returned no payload`)
    continue
  }
  const entry = { eid: payload.eid, e: payload.e, uid: payload.uid, dtm: Number(payload.dtm) }
  if (price !== undefined) entry.price = price
  sent.push(entry)
}

const settled = () => sent.every((s) => delivered.has(s.eid) || dropped.has(s.eid))
const deadline = Date.now() + timeoutMs
while (true) {
  await tracker.flush()
  // The onRequest* callbacks run in a setTimeout(0) after each answer.
  await sleep(0)
  if (settled() || Date.now() >= deadline) break
  await sleep(500)
}

for (const s of sent) {
  if (delivered.has(s.eid)) continue
  const n = failedSends.get(s.eid) ?? 0
  const why = dropped.has(s.eid)
    ? `dropped by the tracker (${dropped.get(s.eid)})`
    : `still queued after ${timeoutMs / 1000} s and ${n} failed sends`
  errors.push(`${s.eid} (${s.e}): not delivered: ${why}`)
}
// Keep-alive sockets must not hold the process open, but exiting before stdout (a pipe)
// drained would cut the report: exit once it is written.
const report = { sent, errors, statuses, tracker: `node-${version}` }
process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(errors.length ? 1 : 0))
