// js-libp2p contender for the p2pnode benchmarks: see bench/CONTRACT.md.
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
const { ping } = await import('@libp2p/ping')
const { identify } = await import('@libp2p/identify')
const { multiaddr } = await import('@multiformats/multiaddr')
const { fstatSync } = await import('node:fs')

const TASK = '/p2pnode/task/1.0.0'
const BULK = '/p2pnode/bulk/1.0.0'
const PING = '/ipfs/ping/1.0.0'
const BLOCK = new Uint8Array(65536).fill(0xa5)

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
// A line longer than the pipe's buffer is finished asynchronously: exit once it is written.
const outAndExit = (obj, code) => process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code))
const now = () => performance.now()
const toBytes = (chunk) => chunk instanceof Uint8Array ? chunk : chunk.subarray()

class Reader {
  constructor (stream) { this.it = stream[Symbol.asyncIterator](); this.chunks = []; this.length = 0 }
  async fill (n) {
    while (this.length < n) {
      const { value, done } = await this.it.next()
      if (done) return false
      const bytes = toBytes(value); this.chunks.push(bytes); this.length += bytes.length
    }
    return true
  }

  take (n) {
    const result = new Uint8Array(n); let offset = 0
    while (offset < n) {
      const head = this.chunks[0]; const need = n - offset
      if (head.length <= need) { result.set(head, offset); offset += head.length; this.chunks.shift() } else { result.set(head.subarray(0, need), offset); offset += need; this.chunks[0] = head.subarray(need) }
    }
    this.length -= n
    return result
  }

  async exactly (n) { if (!(await this.fill(n))) throw new Error('stream ended early'); return this.take(n) }
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

  /** Count bytes until the stream ends (no copying). */
  async drain () {
    let total = this.length; this.chunks = []; this.length = 0
    for (;;) { const { value, done } = await this.it.next(); if (done) return total; total += value.byteLength ?? value.length }
  }
}

async function send (stream, data) { if (!stream.send(data)) await stream.onDrain() }

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

async function handleTask (stream) {
  const reader = new Reader(stream)
  const size = await reader.varint()
  const request = JSON.parse(new TextDecoder().decode(await reader.exactly(size)))
  await send(stream, frame({ task_id: request.task_id, output: request.input, latency_ms: 0 }))
  await stream.close()
}

async function handleBulk (stream) {
  const reader = new Reader(stream)
  const header = await reader.exactly(9)
  const size = Number(new DataView(header.buffer, header.byteOffset).getBigUint64(0))
  if (header[8] === 1) {
    for (let left = size; left > 0; left -= BLOCK.length) await send(stream, left >= BLOCK.length ? BLOCK : BLOCK.subarray(0, left))
  } else {
    let left = size - reader.length; reader.chunks = []; reader.length = 0
    while (left > 0) { const { value, done } = await reader.it.next(); if (done) throw new Error('sender stopped early'); left -= value.byteLength ?? value.length }
    await send(stream, Uint8Array.of(1))
  }
  await stream.close()
}

function muxers (choice) {
  const m = () => mplex({ disconnectThreshold: 100000 })
  if (choice === 'mplex') return [m()]
  return [yamux({ maxInboundStreams: 4096 })]
}

async function createNode (options, listen) {
  return await createLibp2p({
    addresses: { listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: muxers(options.muxer),
    connectionManager: { inboundConnectionThreshold: 100000, maxIncomingPendingConnections: 10000, maxConnections: 100000 },
    connectionGater: { denyDialMultiaddr: () => false },
    services: { ping: ping({ maxInboundStreams: 4096 }), identify: identify() }
  })
}

async function server (options) {
  const node = await createNode(options, ['/ip4/127.0.0.1/tcp/0'])
  const opts = { maxInboundStreams: 4096, maxOutboundStreams: 4096 }
  await node.handle(TASK, handleTask, opts)
  await node.handle(BULK, handleBulk, opts)
  out({ event: 'listening', addr: node.getMultiaddrs()[0].toString() })
  const stop = async () => { await node.stop(); process.exit(0) }
  process.on('SIGTERM', stop); process.on('SIGINT', stop)
  const stdin = fstatSync(0)
  if (stdin.isFIFO() || stdin.isSocket()) { // the runner holds the other end: its end means stop
    process.stdin.on('end', stop); process.stdin.resume()
  }
}

async function runTask (connection, text, i) {
  const stream = await connection.newStream(TASK, { maxOutboundStreams: 4096 })
  await send(stream, frame({ task_id: String(i), input: text }))
  await stream.close()
  const reader = new Reader(stream)
  const size = await reader.varint()
  JSON.parse(new TextDecoder().decode(await reader.exactly(size)))
}

async function client (addr, measurement, o) {
  const target = multiaddr(addr)
  const nodes = [await createNode(o, [])]
  try {
    const n = Number(o.n ?? 100)
    if (measurement === 'connect') {
      const samples = []
      for (let i = 0; i < n; i++) {
        const t = now()
        const conn = await nodes[0].dial(target, { force: true })
        await conn.newStream(PING)
        samples.push(now() - t)
        await conn.close()
      }
      return { measurement, samples_ms: samples }
    }
    const conn = await nodes[0].dial(target)
    if (measurement === 'ping') {
      const stream = await conn.newStream(PING)
      const reader = new Reader(stream); const payload = new Uint8Array(32); const samples = []
      for (let i = 0; i < n + 20; i++) {
        const t = now(); await send(stream, payload); await reader.exactly(32)
        if (i >= 20) samples.push(now() - t)
      }
      return { measurement, samples_ms: samples }
    }
    if (measurement === 'task') {
      const text = 'x'.repeat(Number(o.size ?? 64)); const samples = []
      for (let i = 0; i < n + 20; i++) { const t = now(); await runTask(conn, text, i); if (i >= 20) samples.push(now() - t) }
      return { measurement, size: Number(o.size ?? 64), samples_ms: samples }
    }
    if (measurement === 'rate') {
      const inflight = Number(o.inflight ?? 1); const connections = Number(o.connections ?? 1)
      const conns = [conn]
      for (let c = 1; c < connections; c++) { const extra = await createNode(o, []); nodes.push(extra); conns.push(await extra.dial(target)) }
      const perConn = Math.floor(n / connections); const text = 'x'.repeat(64)
      const run = async (count) => Promise.all(conns.flatMap((c) => Array.from({ length: inflight }, async (_, w) => {
        const share = Math.floor(count / inflight) + (w < count % inflight ? 1 : 0)
        for (let i = 0; i < share; i++) await runTask(c, text, i)
      })))
      await run(Math.min(200, perConn))
      const t = now(); await run(perConn)
      return { measurement, tasks: perConn * connections, inflight, connections, seconds: (now() - t) / 1000 }
    }
    if (measurement === 'throughput') {
      const streams = Number(o.streams ?? 1); const perStream = Math.floor(Number(o.bytes) / streams); const up = o.direction !== 'down'
      const one = async (size) => {
        const stream = await conn.newStream(BULK)
        const header = new Uint8Array(9); new DataView(header.buffer).setBigUint64(0, BigInt(size)); header[8] = up ? 2 : 1
        await send(stream, header)
        const reader = new Reader(stream)
        if (up) {
          for (let left = size; left > 0; left -= BLOCK.length) await send(stream, left >= BLOCK.length ? BLOCK : BLOCK.subarray(0, left))
          await reader.exactly(1)
          await stream.close()
        } else {
          await stream.close()
          const got = await reader.drain()
          if (got !== size) throw new Error(`got ${got} of ${size} bytes`)
        }
      }
      await Promise.all(Array.from({ length: streams }, () => one(Math.min(perStream, 4 << 20))))
      const t = now(); await Promise.all(Array.from({ length: streams }, () => one(perStream)))
      return { measurement, bytes: perStream * streams, streams, direction: up ? 'up' : 'down', seconds: (now() - t) / 1000 }
    }
    throw new Error(`unknown measurement ${measurement}`)
  } finally {
    for (const node of nodes) await node.stop()
  }
}

const args = process.argv.slice(2); const positional = []; const options = {}
for (let i = 0; i < args.length; i++) {
  if (args[i].startsWith('--')) { options[args[i].slice(2)] = args[i + 1]; i++ } else positional.push(args[i])
}
try {
  if (positional[0] === 'server') await server(options)
  else outAndExit(await client(positional[1], positional[2], options), 0)
} catch (err) {
  process.stderr.write(String(err?.stack) + '\n')
  outAndExit({ event: 'error', message: String(err?.message ?? err) }, 1)
}
