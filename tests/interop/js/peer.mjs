// js-libp2p test peer for p2pnode's interop tests. Every stdout line is one JSON object.
//
//   node peer.mjs listen [--muxer yamux|mplex|both|mplex-first] [--no-inline-muxer]
//                        [--mdns] [--port N] [--task-style one-message|eof]
//   node peer.mjs dial <multiaddr> <action> [--muxer ...] [action options]
//     actions: ping [--count N] | identify | echo --size N --streams K
//              | bulk-send --size N | bulk-recv --size N
//              | task --input TEXT [--kind K] [--timeout-ms N] [--client-style half-close|keep-open]
//
// Test protocols (served in listen mode; p2pnode's tests serve the same ones):
//   /p2pnode/echo/1.0.0  echo every byte until the remote half-closes
//   /p2pnode/bulk/1.0.0  header: 8-byte big-endian N, 1-byte mode; mode 0: the dialer sends
//                        N bytes and gets their SHA-256 back; mode 1: the listener sends N
//                        bytes of the pattern byte[i] = (i * 31 + 7) & 0xff
//   /p2pnode/task/1.0.0  the task protocol, implemented from docs/task-protocol.md, in the styles
//                        of real libp2p stacks. Servers (--task-style): `one-message` (default)
//                        answers once one length-prefixed request is read; `eof` reads until the
//                        client half-closes, then answers (libp2p request-response codecs). Each
//                        task prints a `task-served` or `task-error` event. Clients
//                        (--client-style): `half-close` (default) closes the write side after
//                        the request; `keep-open` keeps it open until the response arrived.

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
const { mplex } = await import('@libp2p/mplex')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { multiaddr } = await import('@multiformats/multiaddr')
const { publicKeyFromProtobuf } = await import('@libp2p/crypto/keys')
const { peerIdFromPublicKey } = await import('@libp2p/peer-id')
const { createHash, randomBytes } = await import('node:crypto')

const ECHO = '/p2pnode/echo/1.0.0'
const BULK = '/p2pnode/bulk/1.0.0'
const TASK = '/p2pnode/task/1.0.0'
const MAX_TASK_REQUEST = 1024 * 1024
const CHUNK = 64 * 1024

function out (obj) { process.stdout.write(JSON.stringify(obj) + '\n') }
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

// -- stream helpers ---------------------------------------------------------------

function toBytes (chunk) { return chunk instanceof Uint8Array ? chunk : chunk.subarray() }

/** Reads exact byte counts from a libp2p stream (an async iterable of chunks). */
class Reader {
  constructor (stream) {
    this.iterator = stream[Symbol.asyncIterator]()
    this.chunks = []
    this.length = 0
  }

  async fill (n) {
    while (this.length < n) {
      const { value, done } = await this.iterator.next()
      if (done) return false
      const bytes = toBytes(value)
      this.chunks.push(bytes)
      this.length += bytes.length
    }
    return true
  }

  take (n) {
    const result = new Uint8Array(n)
    let offset = 0
    while (offset < n) {
      const head = this.chunks[0]
      const need = n - offset
      if (head.length <= need) {
        result.set(head, offset); offset += head.length; this.chunks.shift()
      } else {
        result.set(head.subarray(0, need), offset); offset += need
        this.chunks[0] = head.subarray(need)
      }
    }
    this.length -= n
    return result
  }

  async exactly (n) {
    if (!(await this.fill(n))) throw new Error(`stream ended before ${n} bytes`)
    return this.take(n)
  }

  /** Next chunk of at most n bytes, or null at the end. */
  async some (n) {
    if (this.length === 0 && !(await this.fill(1))) return null
    return this.take(Math.min(n, this.length))
  }

  async varint () {
    let value = 0; let shift = 0
    for (let i = 0; i < 9; i++) {
      const [byte] = await this.exactly(1)
      value += (byte & 0x7f) * 2 ** shift
      if (byte < 0x80) return value
      shift += 7
    }
    throw new Error('varint too long')
  }

  async untilEnd () {
    while (await this.fill(this.length + 1)) { /* keep reading */ }
    return this.take(this.length)
  }
}

async function send (stream, data) {
  for (let offset = 0; offset < data.length; offset += CHUNK) {
    if (!stream.send(data.subarray(offset, offset + CHUNK))) await stream.onDrain()
  }
}

function encodeVarint (n) {
  const bytes = []
  while (n >= 0x80) { bytes.push((n % 0x80) | 0x80); n = Math.floor(n / 0x80) }
  bytes.push(n)
  return Uint8Array.from(bytes)
}

function frame (obj) {
  const body = new TextEncoder().encode(JSON.stringify(obj))
  const prefix = encodeVarint(body.length)
  const message = new Uint8Array(prefix.length + body.length)
  message.set(prefix); message.set(body, prefix.length)
  return message
}

function pattern (size) {
  const period = new Uint8Array(256)
  for (let i = 0; i < 256; i++) period[i] = (i * 31 + 7) & 0xff
  const data = new Uint8Array(size)
  for (let offset = 0; offset < size; offset += 256) data.set(period.subarray(0, Math.min(256, size - offset)), offset)
  return data
}

// -- protocol handlers ----------------------------------------------------------------

async function handleEcho (stream) {
  for await (const chunk of stream) {
    if (!stream.send(toBytes(chunk))) await stream.onDrain()
  }
  await stream.close()
}

async function handleBulk (stream) {
  const reader = new Reader(stream)
  const header = await reader.exactly(9)
  const size = Number(new DataView(header.buffer, header.byteOffset).getBigUint64(0))
  const mode = header[8]
  if (mode === 0) {
    const hash = createHash('sha256')
    let remaining = size
    while (remaining > 0) {
      const chunk = await reader.some(remaining)
      if (chunk === null) throw new Error('bulk sender stopped early')
      hash.update(chunk); remaining -= chunk.length
    }
    await send(stream, hash.digest())
  } else {
    await send(stream, pattern(size))
  }
  await stream.close()
}

function taskResponse (taskId, started, output, error) {
  const response = { task_id: taskId, output, latency_ms: Math.round(performance.now() - started) }
  if (error) { response.output = ''; response.error = error }
  return response
}

/** The response to a request body (the bytes after the length prefix). */
function answerTask (body, started) {
  let request
  try {
    request = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(body))
  } catch (err) {
    request = null
  }
  if (request === null || typeof request !== 'object' || typeof request.task_id !== 'string' || typeof request.input !== 'string' ||
      (request.kind !== undefined && typeof request.kind !== 'string')) {
    const taskId = request && typeof request.task_id === 'string' ? request.task_id : ''
    return taskResponse(taskId, started, '', { code: 'bad_request', message: 'request must be a JSON object with string task_id and input' })
  }
  const kind = request.kind ?? 'default'
  if (kind === 'default' || kind === 'echo') return taskResponse(request.task_id, started, request.input)
  if (kind === 'upper') return taskResponse(request.task_id, started, request.input.toUpperCase())
  return taskResponse(request.task_id, started, '', { code: 'unknown_kind', message: `no handler for kind ${kind}; try default, echo or upper` })
}

function tooLarge (size, started) {
  return taskResponse('', started, '', { code: 'too_large', message: `request of ${size} bytes exceeds ${MAX_TASK_REQUEST}` })
}

/** Server style `one-message`: answer as soon as one length-prefixed request has been read. */
async function serveTaskOneMessage (stream) {
  const reader = new Reader(stream)
  const started = performance.now()
  const size = await reader.varint()
  const response = size > MAX_TASK_REQUEST ? tooLarge(size, started) : answerTask(await reader.exactly(size), started)
  await send(stream, frame(response))
  await stream.close()
  return response
}

/**
 * Server style `eof`: read the whole request until the client half-closes, then answer,
 * as libp2p request-response codecs do (read to the end with a size limit, then decode).
 */
async function serveTaskUntilEof (stream) {
  const started = performance.now()
  const chunks = []
  let received = 0
  // What the stream said after the last chunk: if the loop never ends although the remote
  // write side was closed by then, the failure message shows it.
  let seen = 'no data yet'
  try {
    for await (const chunk of stream) {
      const bytes = chunk.subarray()
      received += bytes.byteLength
      seen = `after ${received} request bytes remoteWriteStatus=${stream.remoteWriteStatus} readableEnded=${stream.readableEnded}`
      if (received > MAX_TASK_REQUEST + 10) {
        stream.abort(new Error(`request over ${MAX_TASK_REQUEST} bytes`))
        throw new Error(`request over ${MAX_TASK_REQUEST} bytes, stream reset`)
      }
      chunks.push(bytes)
    }
  } catch (err) {
    err.message += ` (while waiting for the end of the request; ${seen})`
    throw err
  }
  const request = Buffer.concat(chunks)
  let size = 0; let prefix = 0
  for (let shift = 0; prefix < Math.min(request.length, 9); shift += 7) {
    const byte = request[prefix++]
    size += (byte & 0x7f) * 2 ** shift
    if (byte < 0x80) break
  }
  let response
  if (size > MAX_TASK_REQUEST) response = tooLarge(size, started)
  else if (request.length !== prefix + size) {
    response = taskResponse('', started, '', { code: 'bad_request', message: `expected one message of ${size} bytes, got ${request.length - prefix} bytes before the end of the stream` })
  } else response = answerTask(request.subarray(prefix), started)
  await send(stream, frame(response))
  await stream.close()
  return response
}

const TASK_SERVER_STYLES = { 'one-message': serveTaskOneMessage, eof: serveTaskUntilEof }

/** A task handler that reports every task as an event (`task-served` or `task-error`). */
function taskHandler (style) {
  const serve = TASK_SERVER_STYLES[style]
  if (serve === undefined) throw new Error(`unknown --task-style ${style}; use one-message or eof`)
  return async (stream, connection) => {
    const muxer = connection.multiplexer ?? null
    try {
      const response = await serve(stream)
      out({ event: 'task-served', style, muxer, task_id: response.task_id, error: response.error?.code ?? null })
    } catch (err) {
      log(`task handler (${style}) failed:`, err.stack)
      out({ event: 'task-error', style, muxer, error: `${err.name}: ${err.message}` })
      stream.abort(err)
    }
  }
}

// -- node set-up ------------------------------------------------------------------------

// js mplex charges every new inbound stream against `disconnectThreshold` (default 5 per
// second) and drops the connection beyond it, so 32 concurrent streams need a higher value.
const mplexMuxer = () => mplex({ disconnectThreshold: 1000 })

function muxersFor (choice) {
  if (choice === 'yamux') return [yamux()]
  if (choice === 'mplex') return [mplexMuxer()]
  if (choice === 'mplex-first') return [mplexMuxer(), yamux()]
  return [yamux(), mplexMuxer()]
}

// --no-inline-muxer: Noise neither offers nor picks a muxer (as js-libp2p did before
// @chainsafe/libp2p-noise 16.1), so the muxer is chosen by multistream-select afterwards.
function encrypterFor (options) {
  if (!options['no-inline-muxer']) return noise()
  const plain = noise()
  return (components) => {
    const encrypter = plain(components)
    const skip = (opts) => ({ ...opts, skipStreamMuxerNegotiation: true })
    return {
      protocol: encrypter.protocol,
      [Symbol.toStringTag]: 'noise-without-inlined-muxer',
      secureInbound: (connection, opts) => encrypter.secureInbound(connection, skip(opts)),
      secureOutbound: (connection, opts) => encrypter.secureOutbound(connection, skip(opts))
    }
  }
}

async function createNode (options, listenAddrs) {
  const peerDiscovery = []
  if (options.mdns) {
    const { mdns } = await import('@libp2p/mdns')
    peerDiscovery.push(mdns({ interval: 1000 }))
  }
  return await createLibp2p({
    addresses: { listen: listenAddrs },
    transports: [tcp()],
    connectionEncrypters: [encrypterFor(options)],
    streamMuxers: muxersFor(options.muxer ?? 'both'),
    peerDiscovery,
    nodeInfo: { userAgent: 'js-libp2p-interop/1.0' },
    connectionManager: { inboundConnectionThreshold: 10000, maxIncomingPendingConnections: 1000, maxConnections: 2000 },
    connectionGater: { denyDialMultiaddr: () => false },
    services: { identify: identify(), ping: ping() }
  })
}

function identifyJson (result) {
  let publicKeyMatches = false
  if (result.publicKey) {
    try {
      publicKeyMatches = peerIdFromPublicKey(publicKeyFromProtobuf(result.publicKey)).equals(result.peerId)
    } catch (err) { log('bad identify public key', err.message) }
  }
  return {
    event: 'identify',
    peer_id: result.peerId.toString(),
    agent_version: result.agentVersion ?? null,
    protocol_version: result.protocolVersion ?? null,
    protocols: result.protocols,
    listen_addrs: result.listenAddrs.map(a => a.toString()),
    observed_addr: result.observedAddr ? result.observedAddr.toString() : null,
    public_key_matches: publicKeyMatches
  }
}

async function listen (options) {
  const port = options.port ?? 0
  const host = options.mdns ? '0.0.0.0' : '127.0.0.1'
  const node = await createNode(options, [`/ip4/${host}/tcp/${port}`])
  const handlerOptions = { maxInboundStreams: 256, maxOutboundStreams: 256 }
  await node.handle(ECHO, handleEcho, handlerOptions)
  await node.handle(BULK, handleBulk, handlerOptions)
  await node.handle(TASK, taskHandler(options['task-style'] ?? 'one-message'), handlerOptions)
  node.addEventListener('connection:open', (evt) => out({ event: 'connection', peer_id: evt.detail.remotePeer.toString() }))
  node.addEventListener('peer:identify', (evt) => out(identifyJson(evt.detail)))
  node.addEventListener('peer:discovery', (evt) => out({ event: 'discovered', peer_id: evt.detail.id.toString(), addrs: evt.detail.multiaddrs.map(a => a.toString()) }))
  out({ event: 'listening', peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(a => a.toString()) })
  const stop = async () => { await node.stop(); process.exit(0) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  process.stdin.on('end', stop)
  process.stdin.resume()
}

// -- dial actions -------------------------------------------------------------------------

async function dial (addr, action, options) {
  const node = await createNode(options, [])
  const target = multiaddr(addr)
  // js identifies every new connection by itself; take that result rather than a second stream.
  const identified = new Promise((resolve) => {
    node.addEventListener('peer:identify', (evt) => resolve(evt.detail), { once: true })
  })
  try {
    const connection = await node.dial(target)
    if (action === 'ping') {
      const rtts = []
      for (let i = 0; i < Number(options.count ?? 1); i++) rtts.push(await node.services.ping.ping(target))
      out({ event: 'ping', rtts_ms: rtts })
    } else if (action === 'identify') {
      out(identifyJson(await identified))
    } else if (action === 'echo') {
      const size = Number(options.size ?? 1024)
      const streams = Number(options.streams ?? 1)
      const results = await Promise.all(Array.from({ length: streams }, async () => {
        const payload = randomBytes(size)
        const stream = await connection.newStream(ECHO)
        const reader = new Reader(stream)
        const [, echoed] = await Promise.all([
          send(stream, payload).then(() => stream.close()),
          reader.untilEnd()
        ])
        return Buffer.compare(Buffer.from(echoed), payload) === 0
      }))
      out({ event: 'echo', streams, ok: results.every(Boolean), muxer: connection.multiplexer ?? null })
    } else if (action === 'bulk-send' || action === 'bulk-recv') {
      const size = Number(options.size)
      const started = performance.now()
      const stream = await connection.newStream(BULK)
      const header = new Uint8Array(9)
      new DataView(header.buffer).setBigUint64(0, BigInt(size))
      header[8] = action === 'bulk-send' ? 0 : 1
      const reader = new Reader(stream)
      let ok
      if (action === 'bulk-send') {
        const payload = pattern(size)
        await send(stream, header)
        await send(stream, payload)
        const digest = await reader.exactly(32)
        ok = Buffer.compare(Buffer.from(digest), createHash('sha256').update(payload).digest()) === 0
        await stream.close()
      } else {
        await send(stream, header)
        await stream.close()
        const received = await reader.untilEnd()
        ok = received.length === size && Buffer.compare(Buffer.from(received), Buffer.from(pattern(size))) === 0
      }
      out({ event: 'bulk', bytes: size, ok, seconds: (performance.now() - started) / 1000 })
    } else if (action === 'task') {
      const style = options['client-style'] ?? 'half-close'
      if (style !== 'half-close' && style !== 'keep-open') throw new Error(`unknown --client-style ${style}; use half-close or keep-open`)
      const request = { task_id: `js-${Date.now()}`, input: String(options.input ?? '') }
      if (options.kind) request.kind = options.kind
      if (options['timeout-ms']) request.timeout_ms = Number(options['timeout-ms'])
      const stream = await connection.newStream(TASK)
      const reader = new Reader(stream)
      await send(stream, frame(request))
      // half-close: close() ends our write side only (a yamux FIN / mplex Close); the
      // stream stays readable until the server closes its side.
      if (style === 'half-close') await stream.close()
      const size = await reader.varint()
      const response = JSON.parse(new TextDecoder().decode(await reader.exactly(size)))
      // keep-open: the write side stays open until the response has arrived.
      if (style === 'keep-open') await stream.close()
      out({ event: 'task', style, muxer: connection.multiplexer ?? null, response })
    } else {
      throw new Error(`unknown action ${action}`)
    }
  } finally {
    await node.stop()
  }
}

const { positional, options } = parseArgs(process.argv.slice(2))
try {
  if (positional[0] === 'listen') await listen(options)
  else if (positional[0] === 'dial') { await dial(positional[1], positional[2], options); process.exit(0) }
  else throw new Error('usage: peer.mjs listen|dial ...')
} catch (err) {
  out({ event: 'error', message: err.message })
  log(err.stack)
  process.exit(1)
}
