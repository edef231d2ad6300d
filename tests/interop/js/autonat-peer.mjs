// js-libp2p AutoNAT v1 peer for p2pnode's interop tests (tests/interop/test_autonat_interop.py).
// Every stdout line is one JSON object; diagnostics (and DEBUG=libp2p:auto-nat* logs) go
// to stderr.
//
//   node autonat-peer.mjs --listen <multiaddr>
//       A node with identify and autoNAT() (@libp2p/autonat: it serves /libp2p/autonat/1.0.0
//       and, when a connected peer supports it, asks that peer to verify one of its own
//       unverified public addresses). Prints
//         {"event":"listening", peer_id, addrs}     addrs: the transport's bound addresses
//         {"event":"connection", peer_id, remote_addr, direction}   each new connection
//         {"event":"connection-closed", peer_id, remote_addr, direction}
//         {"event":"self-update", addrs}  at self:peer:update; addrs: node.getMultiaddrs(),
//                                         which lists a public address only once verified
//       and answers stdin lines (JSON):
//         {"cmd":"dial","addr":MA}  -> {"event":"dialed", ok, remote_addr | error}
//         {"cmd":"addrs"}           -> {"event":"addrs", verified: [..], addresses:
//                                       [{addr, verified, type}]} (the address manager's view)
//
// It stops at SIGTERM, SIGINT or the end of stdin (the test ending).

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
const { autoNAT } = await import('@libp2p/autonat')
const { multiaddr } = await import('@multiformats/multiaddr')
const { createInterface } = await import('node:readline')

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }
function log (...args) { process.stderr.write(args.join(' ') + '\n') }

function parseArgs (argv) {
  const options = {}
  for (let i = 0; i < argv.length; i++) {
    if (!argv[i].startsWith('--')) throw new Error(`unexpected argument ${argv[i]}`)
    options[argv[i].slice(2)] = argv[i + 1]
    i++
  }
  return options
}

function connectionJson (connection) {
  return {
    peer_id: connection.remotePeer.toString(),
    remote_addr: connection.remoteAddr.toString(),
    direction: connection.direction
  }
}

const options = parseArgs(process.argv.slice(2))
if (options.listen == null) throw new Error('usage: autonat-peer.mjs --listen <multiaddr>')

const node = await createLibp2p({
  addresses: { listen: [options.listen] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  nodeInfo: { userAgent: 'js-libp2p-autonat-interop/1.0' },
  services: { identify: identify(), autoNAT: autoNAT() }
})

node.addEventListener('connection:open', (evt) => out({ event: 'connection', ...connectionJson(evt.detail) }))
node.addEventListener('connection:close', (evt) => out({ event: 'connection-closed', ...connectionJson(evt.detail) }))
node.addEventListener('self:peer:update', () => out({ event: 'self-update', addrs: node.getMultiaddrs().map(a => a.toString()) }))

const addressManager = node.components.addressManager
out({
  event: 'listening',
  peer_id: node.peerId.toString(),
  addrs: node.components.transportManager.getAddrs().map(a => a.toString())
})

async function command (line) {
  const cmd = JSON.parse(line)
  if (cmd.cmd === 'dial') {
    try {
      const connection = await node.dial(multiaddr(cmd.addr))
      out({ event: 'dialed', ok: true, remote_addr: connection.remoteAddr.toString() })
    } catch (err) {
      out({ event: 'dialed', ok: false, error: err.message })
    }
  } else if (cmd.cmd === 'addrs') {
    out({
      event: 'addrs',
      verified: node.getMultiaddrs().map(a => a.toString()),
      addresses: addressManager.getAddressesWithMetadata().map(a => ({
        addr: a.multiaddr.toString(), verified: a.verified, type: a.type
      }))
    })
  } else {
    throw new Error(`unknown command ${line}`)
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
  if (line.trim() === '') return
  command(line).catch((err) => { out({ event: 'error', message: err.message }); log(err.stack) })
})
lines.on('close', stop)
