// Drives @segment/analytics-node, unchanged but for its host, against firehose-edge.
//
// Usage: node sdk_node.mjs HOST WRITE_KEY COUNT
// Sends COUNT messages cycling through every type, each with a known messageId and an event
// time 60 s in the past, flushes, and prints {"sent": [{messageId, type}], "errors": [...]}.
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, countText] = process.argv.slice(2)
const count = Number(countText)
const analytics = new Analytics({ writeKey, host, flushAt: 100, maxRetries: 10 })
const errors = []
analytics.on('error', (e) => errors.push(String(e?.code ?? e)))

const kinds = ['track', 'identify', 'page', 'screen', 'group', 'alias']
const sent = []
for (let i = 0; i < count; i++) {
  const type = kinds[i % kinds.length]
  const common = { messageId: `node-${i}`, timestamp: new Date(Date.now() - 60_000) }
  switch (type) {
    case 'track':
      analytics.track({ userId: `u${i}`, event: 'Order Completed', properties: { i }, ...common })
      break
    case 'identify':
      analytics.identify({ userId: `u${i}`, traits: { plan: 'pro' }, ...common })
      break
    case 'page':
      analytics.page({ userId: `u${i}`, name: 'Home', properties: { path: '/' }, ...common })
      break
    case 'screen':
      analytics.screen({ anonymousId: `a${i}`, name: 'Settings', ...common })
      break
    case 'group':
      analytics.group({ userId: `u${i}`, groupId: `g${i}`, traits: { size: 3 }, ...common })
      break
    default:
      analytics.alias({ previousId: `a${i}`, userId: `u${i}`, ...common })
  }
  sent.push({ messageId: `node-${i}`, type })
}
await analytics.closeAndFlush({ timeout: 60_000 })
console.log(JSON.stringify({ sent, errors }))
