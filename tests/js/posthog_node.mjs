// Drives PostHog's official Node SDK (posthog-node), unchanged but for its host and queue
// settings, against firehose-edge.
//
// Usage: node posthog_node.mjs HOST TOKEN COUNT      (cwd tests/js)
//
// Sends COUNT events cycling through every call that emits one: capture (with properties
// and groups), identify ($identify with $set / $set_once), alias ($create_alias),
// groupIdentify ($groupidentify) and setPersonProperties ($set). Only capture() takes a
// uuid and a timestamp: each capture gets a uuid generated here and an event time 60 s in
// the past. The other calls' uuids (uuidv7s the SDK generates) are recorded from the
// SDK's own 'identify' / 'alias' / 'capture' events, emitted as each message is queued.
// Everything goes through the SDK's normal path: its batching, its default gzip
// (Content-Encoding: gzip) and retry policy, except that nothing is dropped: a large
// queue, and fetchRetryCount 10 at a fixed fetchRetryDelay of 3 s, so that ~20 s of 503s
// are survived (the SDK ignores Retry-After for events). The `fetch` option is a wrapper
// that only observes: it reads the batches sent and the answers, so that every uuid is
// checked to have been in a request answered 2xx (the SDK's own success test).
//
// Then `await client.shutdown()` and prints one JSON object:
//   {"sent": [{"uuid", "event", "distinct_id"}...], "errors": [...],
//    "lib": "posthog-node", "version": "5.70.0", "requests": ["POST /batch/ 200 (20 events)", ...]}
// errors: the SDK's 'error' events, and any uuid not delivered. Exits 0 if there are none.
import { gunzipSync } from 'node:zlib'
import { randomUUID } from 'node:crypto'
import { PostHog } from 'posthog-node'

const [host, token, countText] = process.argv.slice(2)
const count = Number(countText)
if (!host || !token || !Number.isInteger(count)) {
  console.error('usage: node posthog_node.mjs HOST TOKEN COUNT')
  process.exit(2)
}

const errors = []
const describe = (e) => {
  if (e?.status) return `HTTP ${e.status}: ${e.message}`
  return `${e?.name ?? 'Error'}: ${e?.message ?? e}${e?.error ? ` (${e.error?.cause?.code ?? e.error?.message ?? e.error})` : ''}`
}

// The wire, as the SDK's fetch sees it: uuid -> statuses of the requests that carried it.
const onWire = new Map()
const requests = []
async function bodyText(options) {
  let body = options.body
  if (body === undefined || body === null) return null
  if (typeof body === 'string') return body
  if (typeof Blob !== 'undefined' && body instanceof Blob) body = new Uint8Array(await body.arrayBuffer())
  const bytes = Buffer.from(body.buffer ?? body, body.byteOffset ?? 0, body.byteLength)
  const gzipped = Object.entries(options.headers ?? {}).some(
    ([k, v]) => k.toLowerCase() === 'content-encoding' && v === 'gzip'
  )
  return (gzipped ? gunzipSync(bytes) : bytes).toString('utf8')
}
async function observingFetch(url, options) {
  let batch = []
  try {
    const doc = JSON.parse((await bodyText(options)) ?? 'null')
    batch = Array.isArray(doc?.batch) ? doc.batch : []
  } catch (e) {
    errors.push(`could not read a request body the SDK sent: ${e}`)
  }
  const label = `${options.method} ${new URL(url).pathname}`
  const note = (status) => {
    requests.push(`${label} ${status} (${batch.length} events)`)
    for (const m of batch) {
      if (!onWire.has(m?.uuid)) onWire.set(m?.uuid, [])
      onWire.get(m?.uuid).push(status)
    }
  }
  let res
  try {
    res = await fetch(url, options)
  } catch (e) {
    note(`network error ${e?.cause?.code ?? e?.message ?? e}`)
    throw e
  }
  note(res.status)
  return res
}

const client = new PostHog(token, {
  host,
  flushAt: 100,
  flushInterval: 250,
  maxBatchSize: 500,
  maxQueueSize: 1_000_000, // default 10000, then the oldest events are dropped
  fetchRetryCount: 10, // default 3 (4 attempts 3 s apart: 9 s); 10 covers 30 s
  fetchRetryDelay: 3000,
  fetch: observingFetch,
})
client.on('error', (e) => errors.push(describe(e)))

// The uuid of each queued message, by event and distinct_id (unique per call here).
const queued = new Map()
const key = (event, distinctId) => `${event}\u0000${distinctId}`
for (const type of ['capture', 'identify', 'alias']) {
  client.on(type, (message) => {
    if (message && typeof message === 'object') queued.set(key(message.event, message.distinct_id), message.uuid)
  })
}

const kinds = ['capture', 'identify', 'alias', 'groupIdentify', 'setPersonProperties']
const calls = []
for (let i = 0; i < count; i++) {
  const kind = kinds[i % kinds.length]
  const distinctId = `node-u${i}`
  switch (kind) {
    case 'capture': {
      const uuid = randomUUID()
      client.capture({
        distinctId,
        event: 'order_completed',
        properties: { i, price: 42.5 },
        groups: { company: `c${i}` },
        uuid,
        timestamp: new Date(Date.now() - 60_000),
      })
      calls.push({ uuid, event: 'order_completed', distinct_id: distinctId })
      break
    }
    case 'identify':
      client.identify({ distinctId, properties: { $set: { plan: 'pro', i }, $set_once: { first_seen: '2026-01-01' } } })
      calls.push({ event: '$identify', distinct_id: distinctId })
      break
    case 'alias':
      // $create_alias's distinct_id is distinctId (the previous id); alias is the new one.
      client.alias({ distinctId: `node-a${i}`, alias: distinctId })
      calls.push({ event: '$create_alias', distinct_id: `node-a${i}` })
      break
    case 'groupIdentify':
      client.groupIdentify({ groupType: 'company', groupKey: `c${i}`, properties: { name: 'Acme', size: 3 }, distinctId })
      calls.push({ event: '$groupidentify', distinct_id: distinctId })
      break
    default:
      client.setPersonProperties({ distinctId, properties: { plan: 'team' }, propertiesOnce: { first_plan: 'free' } })
      calls.push({ event: '$set', distinct_id: distinctId })
  }
}

await client.shutdown(300_000)

const sent = []
for (const call of calls) {
  const seen = queued.get(key(call.event, call.distinct_id))
  if (!seen) {
    errors.push(`${call.event} ${call.distinct_id}: never queued`)
    continue
  }
  if (call.uuid && seen !== call.uuid) errors.push(`${call.event} ${call.distinct_id}: sent as ${seen}, not ${call.uuid}`)
  const statuses = onWire.get(seen) ?? []
  if (!statuses.some((s) => typeof s === 'number' && s >= 200 && s < 300)) {
    errors.push(`${seen} (${call.event} ${call.distinct_id}): not delivered (${statuses.join(', ') || 'never sent'})`)
  }
  sent.push({ uuid: seen, event: call.event, distinct_id: call.distinct_id })
}

const report = { sent, errors, lib: 'posthog-node', version: client.getLibraryVersion(), requests }
// Exit once stdout (a pipe) has drained, or a report over 64 KiB would be cut.
process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(errors.length ? 1 : 0))
