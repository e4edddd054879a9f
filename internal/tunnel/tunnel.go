// Package tunnel is webgw's agent-gateway wire protocol: the multiplexed
// session over one TLS connection (yamux) or one QUIC connection, the
// control messages that register services, the header that starts every
// data stream, and the handshake of gateway-to-gateway (peer) sessions. The
// format is written down in spec.md.
package tunnel

// ALPN is the TLS application protocol agents offer, over TCP and over
// QUIC, so the gateway's public HTTPS port (and its UDP twin) tells agents
// from browsers before the handshake completes.
const ALPN = "webgw-tunnel/1"

// ProtocolVersion is the version of the control protocol carried in Hello.
const ProtocolVersion = 1
