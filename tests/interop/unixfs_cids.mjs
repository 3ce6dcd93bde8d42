// Prints the CIDs `ipfs add --cid-version=1` (kubo defaults) would give, computed by an
// independent UnixFS implementation: ipfs-unixfs-importer (the importer helia uses) with its
// kubo-compatible options. Used by tests/content to check p2p/content/unixfs.py.
//
//   node unixfs_cids.mjs PATH...
//
// One JSON line per PATH: {"path": PATH, "cid": ..., "entries": {relpath: cid, ...}}.
// A file gives its own CID; a directory is imported like `ipfs add -r --hidden` (every entry,
// hidden ones too, symlinks followed), and `entries` maps each file and subdirectory under it
// ("" is the directory itself) to its CID. With UNIXFS_BLOCKS=1 each line also has "blocks":
// the binary CIDs (hex, sorted, distinct) of every block reachable from the root: the blocks an
// IPFS node fetching it would ask for.
import { createReadStream } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { MemoryBlockstore } from 'blockstore-core/memory'
import * as dagPb from '@ipld/dag-pb'

const OPTIONS = {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: 262144 }),
  layout: balanced({ maxChildrenPerNode: 174 }),
  shardSplitThresholdBytes: 262144,
  shardSplitStrategy: 'links-bytes',
  wrapWithDirectory: false
}

async function * walk (abs, rel) {
  const st = await stat(abs) // follows symlinks, like a content copy of the tree
  if (st.isDirectory()) {
    yield { path: rel }
    for (const name of await readdir(abs)) {
      yield * walk(join(abs, name), rel + '/' + name)
    }
  } else if (st.isFile()) {
    yield { path: rel, content: createReadStream(abs) }
  } else {
    throw new Error(`not a file or directory: ${abs}`)
  }
}

async function cids (path) {
  const top = basename(path) || 'root'
  const entries = {}
  let cid
  let rootCid
  const blockstore = new MemoryBlockstore() // a fresh one per path
  for await (const entry of importer(walk(path, top), blockstore, OPTIONS)) {
    const rel = entry.path === top ? '' : entry.path.slice(top.length + 1)
    entries[rel] = entry.cid.toString()
    if (rel === '') { cid = entry.cid.toString(); rootCid = entry.cid }
  }
  if (process.env.UNIXFS_BLOCKS !== '1') return { path, cid, entries }
  const seen = new Set()
  const visit = (c) => {
    const hex = Buffer.from(c.bytes).toString('hex')
    if (seen.has(hex)) return
    if (!blockstore.has(c)) throw new Error(`the import did not store block ${hex}`)
    seen.add(hex)
    if (c.code !== dagPb.code) return
    const bytes = Buffer.concat([...blockstore.get(c)])
    for (const link of dagPb.decode(bytes).Links) visit(link.Hash)
  }
  visit(rootCid)
  return { path, cid, entries, blocks: [...seen].sort() }
}

for (const path of process.argv.slice(2)) {
  process.stdout.write(JSON.stringify(await cids(path)) + '\n')
}
