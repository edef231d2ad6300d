// js-libp2p circuit relay v2 peer for p2pnode's interop tests. Every stdout line is one
// JSON object; diagnostics go to stderr.
//
//   node relay-peer.mjs listen relay
//       A relay: circuitRelayServer() with its default limits, on 127.0.0.1. Prints
//       {"event":"listening", peer_id, addrs}. Each stdin line `reservations` prints
//       {"event":"reservations", reservations: [{peer_id, limit: {data, duration}, expiry}]},
//       straight from the server's reservation store (what it grants and sends).
//   node relay-peer.mjs listen reserve <relay multiaddr>
//       A client: listens on <relay>/p2p-circuit with circuitRelayTransport() (a reservation
//       on that relay) and serves /test/echo/1.0.0 on limited connections. Prints
//       {"event":"listening", peer_id, addrs} once it has a relayed address (addrs are the
//       relayed ones), then {"event":"connection", ...} for each new connection and
//       {"event":"echoed", bytes, limited} for each echo stream served.
//   node relay-peer.mjs dial <.../p2p-circuit/p2p/<peer>> [--size N]
//       A dialer: dials the circuit address, opens /test/echo/1.0.0 on the (limited)
//       connection, writes N random bytes, half-closes, reads until the end, prints
//       {"event":"echo", ok, bytes, dialer, peer_id, remote_addr, limited, limits} and exits.
//
// The listen modes stop at SIGTERM, SIGINT or the end of stdin (the test ending).

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
const { circuitRelayServer, circuitRelayTransport } = await import('@libp2p/circuit-relay-v2')
const { multiaddr } = await import('@multiformats/multiaddr')
const { createInterface } = await import('node:readline')
const { randomBytes } = await import('node:crypto')

const ECHO = '/test/echo/1.0.0'

function out (obj) {
  process.stdout.write(JSON.stringify(obj, (key, value) => typeof value === 'bigint' ? Number(value) : value) + '\n')
}
function log (...args) { process.stderr.write(args.join(' ') + '\n') }

function parseArgs (argv) {
  const positional = []
  const options = {}
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) {
      const key = argv[i].slice(2)
      const next = argv[i + 1]
      if (next === undefined || next.startsWith('--')) options[key] = true
      else { options[key] = next; i++ }
    } else positional.push(argv[i])
  }
  return { positional, options }
}

function toBytes (chunk) { return chunk instanceof Uint8Array ? chunk : chunk.subarray() }

function limitsJson (limits) {
  if (limits == null) return null
  return { bytes: limits.bytes ?? null, seconds: limits.seconds ?? null }
}

function connectionJson (connection) {
  return {
    peer_id: connection.remotePeer.toString(),
    remote_addr: connection.remoteAddr.toString(),
    direct: connection.direct,
    limited: connection.limits != null,
    limits: limitsJson(connection.limits)
  }
}

async function createNode (listenAddrs, extra = {}) {
  return await createLibp2p({
    addresses: { listen: listenAddrs },
    transports: [tcp(), ...(extra.transports ?? [])],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    nodeInfo: { userAgent: 'js-libp2p-relay-interop/1.0' },
    // loopback addresses are private: let js dial them (everything here is on 127.0.0.1)
    connectionGater: { denyDialMultiaddr: () => false },
    services: { identify: identify(), ping: ping(), ...(extra.services ?? {}) }
  })
}

function stopOnExit (node, onLine = () => {}) {
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
    try { onLine(line.trim()) } catch (err) { out({ event: 'error', message: err.message }); log(err.stack) }
  })
  lines.on('close', stop)
}

// -- relay ----------------------------------------------------------------------------------

async function relay () {
  const node = await createNode(['/ip4/127.0.0.1/tcp/0'], { services: { relay: circuitRelayServer() } })
  node.addEventListener('connection:open', (evt) => out({ event: 'connection', ...connectionJson(evt.detail) }))
  out({ event: 'listening', peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(a => a.toString()) })
  stopOnExit(node, (line) => {
    if (line !== 'reservations') throw new Error(`unknown command ${JSON.stringify(line)}`)
    const reservations = []
    for (const [peer, reservation] of node.services.relay.reservations.entries()) {
      reservations.push({
        peer_id: peer.toString(),
        addr: reservation.addr.toString(),
        expiry: reservation.expiry.getTime() / 1000,
        limit: reservation.limit == null
          ? null
          : { data: reservation.limit.data ?? null, duration: reservation.limit.duration ?? null }
      })
    }
    out({ event: 'reservations', reservations })
  })
}

// -- client with a reservation ----------------------------------------------------------

async function handleEcho (stream, connection) {
  let bytes = 0
  for await (const chunk of stream) {
    const data = toBytes(chunk)
    bytes += data.byteLength
    if (!stream.send(data)) await stream.onDrain()
  }
  await stream.close()
  out({ event: 'echoed', bytes, ...connectionJson(connection) })
}

function relayedAddrs (node) {
  return node.getMultiaddrs().filter(a => a.toString().includes('/p2p-circuit')).map(a => a.toString())
}

async function reserve (relayAddr) {
  const listenOn = multiaddr(relayAddr).encapsulate('/p2p-circuit').toString()
  const node = await createNode([listenOn], { transports: [circuitRelayTransport()] })
  await node.handle(ECHO, (stream, connection) => {
    handleEcho(stream, connection).catch((err) => {
      log('echo handler failed:', err.stack)
      out({ event: 'echo-error', message: `${err.name}: ${err.message}` })
      stream.abort(err)
    })
  }, { runOnLimitedConnection: true })
  // the listener announces the relayed address once the reservation is made
  let addrs = relayedAddrs(node)
  if (addrs.length === 0) {
    addrs = await new Promise((resolve) => {
      const onUpdate = () => {
        const found = relayedAddrs(node)
        if (found.length > 0) {
          node.removeEventListener('self:peer:update', onUpdate)
          resolve(found)
        }
      }
      node.addEventListener('self:peer:update', onUpdate)
    })
  }
  out({ event: 'listening', peer_id: node.peerId.toString(), addrs })
  // after the hello line, which must come first: the relay connection opened before it
  node.addEventListener('connection:open', (evt) => out({ event: 'connection', ...connectionJson(evt.detail) }))
  stopOnExit(node)
}

// -- dialer -----------------------------------------------------------------------------------

async function dial (addr, options) {
  const node = await createNode([], { transports: [circuitRelayTransport()] })
  try {
    const connection = await node.dial(multiaddr(addr))
    const size = Number(options.size ?? 1024)
    const payload = randomBytes(size)
    const stream = await connection.newStream(ECHO, { runOnLimitedConnection: true })
    const received = []
    const reading = (async () => {
      for await (const chunk of stream) received.push(Buffer.from(toBytes(chunk)))
    })()
    if (!stream.send(payload)) await stream.onDrain()
    await stream.close()
    await reading
    const echoed = Buffer.concat(received)
    out({ event: 'echo', ok: Buffer.compare(echoed, payload) === 0, bytes: echoed.length, dialer: node.peerId.toString(), ...connectionJson(connection) })
  } finally {
    await node.stop()
  }
}

const { positional, options } = parseArgs(process.argv.slice(2))
try {
  if (positional[0] === 'listen' && positional[1] === 'relay') await relay()
  else if (positional[0] === 'listen' && positional[1] === 'reserve' && positional[2]) await reserve(positional[2])
  else if (positional[0] === 'dial' && positional[1]) { await dial(positional[1], options); process.exit(0) }
  else throw new Error('usage: relay-peer.mjs listen relay | listen reserve <relay maddr> | dial <circuit maddr> [--size N]')
} catch (err) {
  out({ event: 'error', message: `${err.name}: ${err.message}` })
  log(err.stack)
  process.exit(1)
}
