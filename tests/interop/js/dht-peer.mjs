// js-libp2p Kademlia DHT test peer for p2pnode's interop tests (tests/interop/test_js_dht.py).
//
//   node dht-peer.mjs [--port N | --listen MULTIADDR]
//
// A DHT server (@libp2p/kad-dht, protocol /ipfs/kad/1.0.0, clientMode false) with tcp,
// noise, yamux, identify and ping, listening on 127.0.0.1 only (or on --listen, e.g. an
// address inside a private network namespace: /ip4/10.214.1.3/tcp/0). It has no bootstrap list,
// no mDNS and no other peer discovery: it knows only the peers the test makes it dial or
// that dial it, and its DHT keeps only private (loopback, 10.x, ...) addresses of peers.
//
// Every stdout line is one JSON object. The first is {"event": "listening", peer_id, addrs}.
// Then, as they happen: {"event": "connection"|"disconnection", peer_id},
// {"event": "identify", peer_id, protocols}, {"event": "table-add"|"table-remove", peer_id}.
//
// Commands are JSON lines on stdin, {"id": N, "cmd": NAME, ...}; each gets one
// {"event": "result", "id": N, "ok": true, ...} or {"event": "result", "id": N, "ok": false, "error": "..."}.
// Keys and values are hex; `timeout_ms` bounds a network operation (default 20000).
//   dial {addr}                        -> {peer_id}
//   hang-up {peer_id}                  -> {}
//   table                              -> {size, peers}
//   find-peer {peer_id}                -> {found, from, addrs} (the network is asked, not the cache)
//   closest-peers {key}                -> {peers}
//   provide {key}                      -> {sent_to}   key: a multihash (a CID of codec raw is made of it)
//   find-providers {key}               -> {providers: [{peer_id, addrs, from}]}
//   put {key, value}                   -> {sent_to, errors}
//   get {key}                          -> {value, from}  (value null when none was found)
//   public-key                         -> {value} our libp2p PublicKey protobuf (the /pk/ value)
// Stdin closing or SIGTERM stops the node.

// libp2p 3 wants Node >= 22; on Node 20 only Promise.withResolvers is missing.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { kadDHT, removePublicAddressesMapper } = await import('@libp2p/kad-dht')
const { multiaddr } = await import('@multiformats/multiaddr')
const { peerIdFromString } = await import('@libp2p/peer-id')
const { publicKeyToProtobuf } = await import('@libp2p/crypto/keys')
const { CID } = await import('multiformats/cid')
const Digest = await import('multiformats/hashes/digest')
const { createInterface } = await import('node:readline')

const PROTOCOL = '/ipfs/kad/1.0.0'
const RAW_CODEC = 0x55
const DEFAULT_TIMEOUT_MS = 20000

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }
function log (...args) { process.stderr.write(args.join(' ') + '\n') }

const hex = (bytes) => Buffer.from(bytes).toString('hex')
const unhex = (text) => Uint8Array.from(Buffer.from(text, 'hex'))
const cidOf = (multihashHex) => CID.createV1(RAW_CODEC, Digest.decode(unhex(multihashHex)))

function parseArgs (argv) {
  const options = {}
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument ${argv[i]}`)
    options[argv[i].slice(2)] = argv[i + 1]
    i++
  }
  return options
}

const options = parseArgs(process.argv.slice(2))
const node = await createLibp2p({
  addresses: { listen: [options.listen ?? `/ip4/127.0.0.1/tcp/${options.port ?? 0}`] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  peerDiscovery: [],
  nodeInfo: { userAgent: 'js-libp2p-interop-dht/1.0' },
  connectionGater: { denyDialMultiaddr: () => false },
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: PROTOCOL,
      clientMode: false,
      // loopback addresses are "private": keep them, drop any public one a peer names
      peerInfoMapper: removePublicAddressesMapper,
      // the self-query every 5 min and the table refresh ask only the peers we know
      initialQuerySelfInterval: 100
    })
  }
})
const dht = node.services.dht

node.addEventListener('connection:open', (evt) => out({ event: 'connection', peer_id: evt.detail.remotePeer.toString() }))
node.addEventListener('connection:close', (evt) => out({ event: 'disconnection', peer_id: evt.detail.remotePeer.toString() }))
node.addEventListener('peer:identify', (evt) => out({ event: 'identify', peer_id: evt.detail.peerId.toString(), protocols: evt.detail.protocols }))
dht.routingTable.addEventListener('peer:add', (evt) => out({ event: 'table-add', peer_id: evt.detail.toString() }))
dht.routingTable.addEventListener('peer:remove', (evt) => out({ event: 'table-remove', peer_id: evt.detail.toString() }))

const signalFor = (request) => AbortSignal.timeout(Number(request.timeout_ms ?? DEFAULT_TIMEOUT_MS))

function tablePeers () {
  if (dht.routingTable.kb == null) return []
  return [...dht.routingTable.kb.toIterable()].map(contact => contact.peerId.toString())
}

const COMMANDS = {
  async dial (request) {
    const connection = await node.dial(multiaddr(request.addr), { signal: signalFor(request) })
    return { peer_id: connection.remotePeer.toString() }
  },
  async 'hang-up' (request) {
    await node.hangUp(peerIdFromString(request.peer_id))
    return {}
  },
  async table () {
    return { size: dht.routingTable.size, peers: tablePeers() }
  },
  async 'find-peer' (request) {
    const target = peerIdFromString(request.peer_id)
    try {
      for await (const event of dht.findPeer(target, { useCache: false, signal: signalFor(request) })) {
        if (event.name === 'FINAL_PEER') {
          return { found: true, from: event.from.toString(), addrs: event.peer.multiaddrs.map(a => a.toString()) }
        }
      }
    } catch (err) {
      if (err.name !== 'NotFoundError') throw err
    }
    return { found: false, from: null, addrs: [] }
  },
  async 'closest-peers' (request) {
    const peers = []
    for await (const event of dht.getClosestPeers(unhex(request.key), { signal: signalFor(request) })) {
      if (event.name === 'FINAL_PEER') peers.push(event.peer.id.toString())
    }
    return { peers }
  },
  async provide (request) {
    const sentTo = []
    for await (const event of dht.provide(cidOf(request.key), { signal: signalFor(request) })) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'ADD_PROVIDER') sentTo.push(event.from.toString())
    }
    return { sent_to: sentTo }
  },
  async 'find-providers' (request) {
    const providers = new Map()
    for await (const event of dht.findProviders(cidOf(request.key), { signal: signalFor(request) })) {
      if (event.name !== 'PROVIDER') continue
      for (const provider of event.providers) {
        const id = provider.id.toString()
        if (!providers.has(id)) {
          providers.set(id, { peer_id: id, addrs: provider.multiaddrs.map(a => a.toString()), from: event.from.toString() })
        }
      }
    }
    return { providers: [...providers.values()] }
  },
  async put (request) {
    const sentTo = []
    const errors = []
    for await (const event of dht.put(unhex(request.key), unhex(request.value), { signal: signalFor(request) })) {
      if (event.name === 'PEER_RESPONSE' && event.messageName === 'PUT_VALUE') sentTo.push(event.from.toString())
      if (event.name === 'QUERY_ERROR') errors.push(`${event.from}: ${event.error?.message}`)
    }
    return { sent_to: sentTo, errors }
  },
  async get (request) {
    try {
      for await (const event of dht.get(unhex(request.key), { signal: signalFor(request) })) {
        if (event.name === 'VALUE') return { value: hex(event.value), from: event.from.toString() }
      }
    } catch (err) {
      if (err.name !== 'NotFoundError') throw err
    }
    return { value: null, from: null }
  },
  async 'public-key' () {
    return { value: hex(publicKeyToProtobuf(node.peerId.publicKey)) }
  }
}

async function run (request) {
  const command = COMMANDS[request.cmd]
  try {
    if (command === undefined) throw new Error(`unknown command ${request.cmd}`)
    out({ event: 'result', id: request.id, ok: true, ...(await command(request)) })
  } catch (err) {
    log(`command ${request.cmd} failed:`, err.stack)
    out({ event: 'result', id: request.id, ok: false, error: `${err.name}: ${err.message}` })
  }
}

let stopping = false
const stop = async () => {
  if (stopping) return
  stopping = true
  await node.stop()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (!line.trim()) return
  let request
  try {
    request = JSON.parse(line)
  } catch (err) {
    out({ event: 'result', id: null, ok: false, error: `bad command line: ${err.message}` })
    return
  }
  void run(request)
})
lines.on('close', stop)
out({ event: 'listening', peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(a => a.toString()) })
