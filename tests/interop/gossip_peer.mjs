// A gossipsub peer from another stack (js-libp2p 3, @libp2p/gossipsub 17, Node 22) for
// tests/interop. Usage:
//   node gossip_peer.mjs <multiaddr> <topic> [--publish N] [--seconds S] [--swarm-key FILE]
// Dials <multiaddr> (TCP, Noise, Yamux; through @libp2p/pnet with FILE, a go-format swarm key),
// subscribes to <topic>, publishes "js-0".."js-(N-1)" on it every 300 ms and prints one JSON
// line per event: {"peer"}, {"connected"} or {"dial_error"}, {"received", "from", "topic", "at_ms" (Unix ms)},
// {"published", "recipients"}, and last {"done": true, "messages": count}. Exits 0 unless the
// script itself fails (a refused dial is reported, not thrown).
import { readFileSync } from 'node:fs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@libp2p/gossipsub'
import { preSharedKey } from '@libp2p/pnet'
import { multiaddr } from '@multiformats/multiaddr'

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const args = process.argv.slice(2)
const option = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : fallback
}
const [target, topic] = args
const publish = Number(option('--publish', '0'))
const seconds = Number(option('--seconds', '20'))
const keyFile = option('--swarm-key', null)

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionProtector: keyFile ? preSharedKey({ psk: readFileSync(keyFile) }) : undefined,
  services: { identify: identify(), ping: ping(), pubsub: gossipsub({ allowPublishToZeroTopicPeers: true }) },
})
let received = 0
node.services.pubsub.addEventListener('message', (evt) => {
  const m = evt.detail
  received++
  out({ received: Buffer.from(m.data).toString('base64'), topic: m.topic, from: m.from?.toString(), at_ms: performance.timeOrigin + performance.now() })
})
node.services.pubsub.subscribe(topic)
out({ peer: node.peerId.toString() })
let connected = false
try {
  await node.dial(multiaddr(target), { signal: AbortSignal.timeout(15000) })
  connected = true
  out({ connected: true })
} catch (err) {
  out({ dial_error: String(err?.name ?? err), message: String(err?.message ?? '') })
}
const end = Date.now() + seconds * 1000
for (let i = 0; connected && Date.now() < end; i++) {
  await new Promise((resolve) => setTimeout(resolve, 300))
  if (i < publish) {
    try {
      const r = await node.services.pubsub.publish(topic, new TextEncoder().encode(`js-${i}`))
      out({ published: i, recipients: r.recipients.length })
    } catch (err) {
      out({ publish_error: String(err?.message ?? err) })
    }
  }
}
out({ done: true, messages: received })
await node.stop()
process.exit(0)
