// Drives an official Node analytics SDK, unchanged but for its host, against firehose-edge.
//
// Usage: node sdk_node.mjs SDK HOST WRITE_KEY COUNT
//   SDK: segment  @segment/analytics-node
//        rudder   @rudderstack/rudder-sdk-node
//        legacy   analytics-node (Segment's previous Node SDK)
// (The older form `node sdk_node.mjs HOST WRITE_KEY COUNT` means SDK segment.)
//
// Sends COUNT messages cycling through every type (all three SDKs have track, identify,
// page, screen, group and alias), each with a known messageId and an event time 60 s in the
// past, through the SDK's normal API: its default batching, compression and retry policy,
// except that the retry count is raised so that ~20 s of 5xx answers are survived. Then
// flushes, waits for every message's delivery callback, and prints one JSON object:
// {"sent": [{"messageId", "type"}...], "errors": [...]}.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const SDKS = ['segment', 'rudder', 'legacy']

let args = process.argv.slice(2)
if (!SDKS.includes(args[0]) && args.length === 3) args = ['segment', ...args]
const [sdk, host, writeKey, countText] = args
const count = Number(countText)
if (!SDKS.includes(sdk) || !host || !writeKey || !Number.isInteger(count)) {
  console.error(`usage: node sdk_node.mjs {${SDKS.join('|')}} HOST WRITE_KEY COUNT`)
  process.exit(2)
}

const errors = []
const describe = (e) => {
  if (e?.response?.status) return `HTTP ${e.response.status} ${e.response.statusText ?? ''}`.trim()
  return String(e?.code ?? e?.message ?? e)
}

// `send` for the SDKs here, whose calls take a callback run once the message is delivered
// (or failed after the SDK's last retry): a promise settled then.
const onCallback = (analytics) => (type, message) =>
  new Promise((resolve) => {
    analytics[type](message, (err) => {
      if (err) errors.push(`${message.messageId}: ${describe(err)}`)
      resolve()
    })
  })

// One adapter per SDK: `send(type, message)` returns a promise settled when the SDK
// reports that message delivered (or failed), and `close()` flushes everything.
function adapter() {
  if (sdk === 'segment') {
    const { Analytics } = require('@segment/analytics-node')
    // maxRetries defaults to 10 already; the backoff (0.5 s × 2^n, ×1–2 random, ≤ 60 s)
    // outlasts 20 s of 5xx within 5 retries. A 429 with Retry-After waits and is not counted.
    const analytics = new Analytics({ writeKey, host, maxRetries: 10 })
    analytics.on('error', (e) => errors.push(describe(e)))
    return {
      send: onCallback(analytics),
      close: () => analytics.closeAndFlush({ timeout: 120_000 }),
    }
  }
  // @rudderstack/rudder-sdk-node and analytics-node 6 share analytics-node's design:
  // an in-memory queue flushed every flushAt (20) messages or flushInterval (10 s), and
  // axios-retry with `retryCount` retries (default 3: 0.2 + 0.4 + 0.8 s, far short of
  // 20 s; 10 covers ~200 s).
  const Analytics =
    sdk === 'rudder' ? require('@rudderstack/rudder-sdk-node') : require('analytics-node')
  const options = {
    retryCount: 10,
    // Without an errorHandler a failed flush rejects a promise nobody awaits (the SDK's
    // own flushes on flushAt), which kills the process.
    errorHandler: (e) => errors.push(describe(e)),
  }
  const analytics =
    sdk === 'rudder'
      ? new Analytics(writeKey, { dataPlaneUrl: host, logLevel: 'error', ...options })
      : new Analytics(writeKey, { host, ...options })
  return {
    send: onCallback(analytics),
    async close() {
      // flush() sends at most flushAt messages a call: call it until the queue is empty.
      for (let i = 0; analytics.queue.length > 0 && i < count + 1; i++) {
        await analytics.flush().catch((e) => errors.push(describe(e)))
      }
    },
  }
}

const analytics = adapter()
const kinds = ['track', 'identify', 'page', 'screen', 'group', 'alias']
const sent = []
const delivered = []
for (let i = 0; i < count; i++) {
  const type = kinds[i % kinds.length]
  const messageId = `node-${sdk}-${i}`
  const common = { messageId, timestamp: new Date(Date.now() - 60_000) }
  let message
  switch (type) {
    case 'track':
      message = { userId: `u${i}`, event: 'Order Completed', properties: { i }, ...common }
      break
    case 'identify':
      message = { userId: `u${i}`, traits: { plan: 'pro' }, ...common }
      break
    case 'page':
      message = { userId: `u${i}`, name: 'Home', properties: { path: '/' }, ...common }
      break
    case 'screen':
      message = { anonymousId: `a${i}`, name: 'Settings', ...common }
      break
    case 'group':
      message = { userId: `u${i}`, groupId: `g${i}`, traits: { size: 3 }, ...common }
      break
    default:
      message = { previousId: `a${i}`, userId: `u${i}`, ...common }
  }
  delivered.push(analytics.send(type, message))
  sent.push({ messageId, type })
}
await analytics.close()
// Every message's callback has run: delivered, or failed after the SDK's last retry.
await Promise.all(delivered)
// Keep-alive sockets and timers must not hold the process open, but exiting before stdout
// (a pipe) drained would cut the report at 64 KiB: exit once it is written.
process.stdout.write(JSON.stringify({ sent, errors }) + '\n', () => process.exit(0))
