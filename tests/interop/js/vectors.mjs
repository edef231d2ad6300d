// Generates test vectors from js-libp2p for p2pnode's tests: node vectors.mjs > ../../vectors/js_vectors.json
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
const { generateKeyPair, privateKeyToProtobuf, publicKeyToProtobuf } = await import('@libp2p/crypto/keys')
const { peerIdFromPrivateKey } = await import('@libp2p/peer-id')
const { multiaddr } = await import('@multiformats/multiaddr')

const hex = (bytes) => Buffer.from(bytes).toString('hex')
const message = new TextEncoder().encode('p2pnode test vector')
const keys = []
for (const [type, extra] of [['Ed25519'], ['secp256k1'], ['ECDSA', 'P-256'], ['RSA', 2048]]) {
  const key = await generateKeyPair(type, extra)
  let peerId = null
  try { peerId = peerIdFromPrivateKey(key) } catch { /* js has no PeerIds for ECDSA keys */ }
  keys.push({
    type,
    private_key_protobuf: type === 'Ed25519' ? hex(privateKeyToProtobuf(key)) : null,
    public_key_protobuf: hex(publicKeyToProtobuf(key.publicKey)),
    peer_id: peerId?.toString() ?? null,
    peer_id_cid: peerId?.toCID().toString() ?? null,
    message: hex(message),
    signature: hex(await key.sign(message))
  })
}
const ed = keys[0].peer_id
const multiaddrs = [
  '/ip4/127.0.0.1/tcp/4001',
  '/ip4/0.0.0.0/tcp/0',
  '/ip6/::1/tcp/4001',
  '/ip6/2001:db8::1/tcp/65535',
  '/dns/example.com/tcp/443',
  '/dns4/localhost/tcp/80',
  '/dns6/localhost/tcp/80',
  `/ip4/1.2.3.4/tcp/4001/p2p/${ed}`,
  `/ip4/1.2.3.4/tcp/4001/p2p/${keys[3].peer_id}`,
  '/ip4/1.2.3.4/udp/4001/quic-v1',
  '/ip4/1.2.3.4/tcp/443/tls/ws',
  '/ip4/1.2.3.4/tcp/443/wss',
  `/ip4/1.2.3.4/tcp/4001/p2p/${ed}/p2p-circuit`,
  '/dnsaddr/bootstrap.example.org'
].map((text) => ({ text: multiaddr(text).toString(), bytes: hex(multiaddr(text).bytes) }))
process.stdout.write(JSON.stringify({ generated_by: 'js-libp2p @libp2p/crypto 5.1.23, @multiformats/multiaddr 13.0.3', keys, multiaddrs }, null, 1) + '\n')
