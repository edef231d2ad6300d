// js-libp2p dialer for bench/delayed_link.py: fresh connections, each timed to "ready" and
// to the answer of its first 64-byte task, then `warm` tasks on the open connection.
//
//   node delayed_link.mjs <multiaddr> [--rounds N] [--warm W]
//
// Prints one JSON line: {"connect_ms": [...], "first_task_ms": [...], "warm_task_ms": [...],
// "dial_starts_epoch_ms": [...]} (the wall clock at each dial's start, to line up with the proxy's).
// "ready" is node.dial() returning (TCP + multistream + Noise + muxer).
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
const { ping } = await import('@libp2p/ping')
const { identify } = await import('@libp2p/identify')
const { multiaddr } = await import('@multiformats/multiaddr')

const TASK = '/p2pnode/task/1.0.0'
const now = () => performance.now()
const toBytes = (chunk) => chunk instanceof Uint8Array ? chunk : chunk.subarray()

function varint (n) {
  const bytes = []
  while (n >= 0x80) { bytes.push((n % 0x80) | 0x80); n = Math.floor(n / 0x80) }
  bytes.push(n)
  return Uint8Array.from(bytes)
}

function frame (obj) {
  const body = new TextEncoder().encode(JSON.stringify(obj))
  const prefix = varint(body.length)
  const message = new Uint8Array(prefix.length + body.length)
  message.set(prefix); message.set(body, prefix.length)
  return message
}

/** One task on a new stream: the request, a half-close, then the whole length-prefixed answer. */
async function task (connection, i) {
  const stream = await connection.newStream(TASK)
  if (!stream.send(frame({ task_id: `js-${i}`, input: 'x'.repeat(64) }))) await stream.onDrain()
  await stream.close()
  let buffer = new Uint8Array(0)
  for await (const chunk of stream) {
    const bytes = toBytes(chunk)
    const joined = new Uint8Array(buffer.length + bytes.length)
    joined.set(buffer); joined.set(bytes, buffer.length)
    buffer = joined
  }
  let size = 0; let offset = 0
  for (let shift = 0; offset < buffer.length; shift += 7) {
    const byte = buffer[offset++]
    size += (byte & 0x7f) * 2 ** shift
    if (byte < 0x80) break
  }
  const response = JSON.parse(new TextDecoder().decode(buffer.subarray(offset, offset + size)))
  if (response.output !== 'x'.repeat(64)) throw new Error(`bad answer ${JSON.stringify(response)}`)
}

const args = process.argv.slice(2)
const option = (name, fallback) => { const i = args.indexOf(`--${name}`); return i < 0 ? fallback : Number(args[i + 1]) }
const target = multiaddr(args[0])
const rounds = option('rounds', 10)
const warm = option('warm', 3)
const node = await createLibp2p({
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionGater: { denyDialMultiaddr: () => false },
  services: { ping: ping(), identify: identify() }
})
const result = { connect_ms: [], first_task_ms: [], warm_task_ms: [], dial_starts_epoch_ms: [] }
let line = result
try {
  for (let r = 0; r < rounds; r++) {
    const started = now()
    result.dial_starts_epoch_ms.push(performance.timeOrigin + started)
    const connection = await node.dial(target, { force: true })
    result.connect_ms.push(now() - started)
    await task(connection, 0)
    result.first_task_ms.push(now() - started)
    for (let i = 1; i <= warm; i++) {
      const t = now()
      await task(connection, i)
      result.warm_task_ms.push(now() - t)
    }
    await connection.close()
  }
} catch (err) {
  process.stderr.write(String(err?.stack) + '\n')
  line = { event: 'error', message: String(err?.message ?? err) }
}
await node.stop()
process.stdout.write(JSON.stringify(line) + '\n', () => process.exit(line === result ? 0 : 1))
