// A member of a private network from another stack (js-libp2p 3, @libp2p/gossipsub 17,
// @libp2p/pnet, Node 22): it speaks the node's own protocols from docs/protocols.md.
// Usage: node member_peer.mjs <multiaddr of a node> <network name> <swarm key file> [seconds]
// Prints one JSON line per event:
//   {"peer"}                                  this peer's id
//   {"connected"} or {"dial_error"}
//   {"heartbeat": {peer_id, name, models}}    a heartbeat heard on /ipfs-accelerate/<net>/peers
//   {"heads": [cid...], "from", "events"}     a heads announcement heard on .../heads
//   {"fetched", "bytes", "verified"}          a head block fetched on /ipfs-accelerate/<network>/blocks/1.0.0
//                                             and checked against its CID (sha2-256)
//   {"published_heads", "recipients"}         our own announcement of those heads, on .../heads
//   {"done": true}
import { readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@libp2p/gossipsub'
import { preSharedKey } from '@libp2p/pnet'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import * as cbor from 'cborg'

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const [target, network, keyFile, secondsArg] = process.argv.slice(2)
const seconds = Number(secondsArg ?? '15')
const BLOCKS = `/ipfs-accelerate/${network}/blocks/1.0.0`
const topic = (name) => `/ipfs-accelerate/${network}/${name}`

const uvarint = (n) => {
  const bytes = []
  while (n >= 0x80) { bytes.push((n & 0x7f) | 0x80); n = Math.floor(n / 128) }
  bytes.push(n)
  return Uint8Array.from(bytes)
}
const readUvarint = (buf) => {
  let value = 0; let shift = 1
  for (let i = 0; i < buf.length && i < 10; i++) {
    value += (buf[i] & 0x7f) * shift
    if ((buf[i] & 0x80) === 0) return [value, i + 1]
    shift *= 128
  }
  return [-1, 0]
}
const frame = (payload) => {
  const prefix = uvarint(payload.length)
  const all = new Uint8Array(prefix.length + payload.length)
  all.set(prefix); all.set(payload, prefix.length)
  return all
}
const cidString = (bytes) => CID.decode(bytes).toString()

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionProtector: preSharedKey({ psk: readFileSync(keyFile) }),
  services: { identify: identify(), ping: ping(), pubsub: gossipsub({ allowPublishToZeroTopicPeers: true }) },
})
out({ peer: node.peerId.toString() })

let firstHeads = null
node.services.pubsub.addEventListener('message', (evt) => {
  const m = evt.detail
  try {
    if (m.topic === topic('peers')) {
      const hb = JSON.parse(new TextDecoder().decode(m.data))
      out({ heartbeat: { peer_id: hb.peer_id, name: hb.name, models: hb.models } })
    } else if (m.topic === topic('heads')) {
      const ann = cbor.decode(m.data)
      out({ heads: ann.heads.map(cidString), from: m.from?.toString(), events: ann.events })
      if (firstHeads === null && ann.heads.length > 0) firstHeads = ann
    }
  } catch (err) {
    out({ decode_error: String(err?.message ?? err), topic: m.topic })
  }
})
node.services.pubsub.subscribe(topic('peers'))
node.services.pubsub.subscribe(topic('heads'))

async function fetchBlock (cidBytes) {
  const stream = await node.dialProtocol(multiaddr(target), BLOCKS, { signal: AbortSignal.timeout(10000) })
  if (!stream.send(frame(cbor.encode({ t: 'want', cids: [cidBytes], ancestors: 0 })))) await stream.onDrain()
  await stream.close()
  let buf = new Uint8Array(0)
  for await (const chunk of stream) {
    const part = chunk.subarray()
    const next = new Uint8Array(buf.length + part.length)
    next.set(buf); next.set(part, buf.length); buf = next
  }
  const [length, used] = readUvarint(buf)
  if (length < 0 || buf.length < used + length) throw new Error(`short reply: ${buf.length} bytes`)
  const reply = cbor.decode(buf.subarray(used, used + length))
  for (const [cid, block] of reply.blocks) {
    const digest = CID.decode(cid).multihash.digest
    const actual = createHash('sha256').update(block).digest()
    out({ fetched: cidString(cid), bytes: block.length, verified: Buffer.compare(Buffer.from(digest), actual) === 0 })
  }
}

try {
  await node.dial(multiaddr(target), { signal: AbortSignal.timeout(15000) })
  out({ connected: true })
} catch (err) {
  out({ dial_error: String(err?.name ?? err), message: String(err?.message ?? '') })
}
const end = Date.now() + seconds * 1000
let fetched = false
while (Date.now() < end) {
  await new Promise((resolve) => setTimeout(resolve, 250))
  if (firstHeads !== null && !fetched) {
    fetched = true
    try {
      await fetchBlock(firstHeads.heads[0])
    } catch (err) {
      out({ fetch_error: String(err?.message ?? err) })
    }
    const ann = { t: 'heads', peer: node.peerId.toString(), heads: firstHeads.heads, events: firstHeads.events, blocks: [] }
    const r = await node.services.pubsub.publish(topic('heads'), cbor.encode(ann))
    out({ published_heads: true, recipients: r.recipients.length })
  }
}
out({ done: true })
await node.stop()
process.exit(0)
