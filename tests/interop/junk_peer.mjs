// A peer from another stack (js-libp2p 3, Node 22) that writes junk on every protocol a node
// announces. Usage: node junk_peer.mjs <victim multiaddr> [swarm key file] (a member of a private
// network: the key file goes to @libp2p/pnet). Prints one JSON line per attempt
// ({"protocol", "junk", "sent": bool, "error"?}) and a final {"done": true, "protocols": [...]}.
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { preSharedKey } from '@libp2p/pnet'
import { multiaddr } from '@multiformats/multiaddr'
import { readFileSync } from 'node:fs'

const uvarint = (n) => {
  const out = []
  let v = BigInt(n)
  while (v >= 0x80n) { out.push(Number(v & 0x7fn) | 0x80); v >>= 7n }
  out.push(Number(v))
  return Uint8Array.from(out)
}
const cat = (...parts) => Uint8Array.from(parts.flatMap((p) => [...p]))
const fill = (n, b) => new Uint8Array(n).fill(b)

const JUNK = {
  'truncated-varint': Uint8Array.from([0xff, 0xff, 0xff]),
  'ff-flood': fill(65536, 0xff),
  'oversize-length': cat(uvarint(2n ** 40n), fill(16, 0)),
  'prefix+garbage-protobuf': cat(uvarint(40), fill(40, 0xff)), // the 41 bytes of issue 7
  'prefix+short-body': cat(uvarint(5000), fill(100, 0x0a)),
  'zero-length-frames': fill(64, 0),
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionProtector: process.argv[3] ? preSharedKey({ psk: readFileSync(process.argv[3]) }) : undefined,
  services: { identify: identify() },
})
const victim = multiaddr(process.argv[2])
const conn = await node.dial(victim)
let protocols = []
for (let i = 0; i < 100 && protocols.length === 0; i++) { // identify fills the peer store
  try { protocols = (await node.peerStore.get(conn.remotePeer)).protocols } catch {}
  if (protocols.length === 0) await new Promise((r) => setTimeout(r, 100))
}
for (const protocol of protocols) {
  for (const [name, bytes] of Object.entries(JUNK)) {
    try {
      const stream = await node.dialProtocol(victim, protocol, { signal: AbortSignal.timeout(10000) })
      if (!stream.send(bytes)) await stream.onDrain({ signal: AbortSignal.timeout(10000) })
      await stream.close({ signal: AbortSignal.timeout(5000) }).catch(() => {})
      out({ protocol, junk: name, sent: true })
    } catch (err) {
      out({ protocol, junk: name, sent: false, error: String(err?.name ?? err) })
    }
  }
}
out({ done: true, protocols, peer: node.peerId.toString() })
await node.stop()
