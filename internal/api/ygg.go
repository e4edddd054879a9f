package api

import "net/http"

// YggStatus is GET /v1/ygg: the gateway's embedded Yggdrasil node.
type YggStatus struct {
	// Addr is the node's overlay address in 200::/7.
	Addr string `json:"address"`
	// Subnet is the node's routed /64 in 300::/8.
	Subnet string `json:"subnet"`
	// PublicKey is the node's ed25519 public key, hex.
	PublicKey string    `json:"public_key"`
	Peers     []YggPeer `json:"peers"`
}

// YggPeer is one peer of the node.
type YggPeer struct {
	URI string `json:"uri"`
	// Inbound is true for a peer that connected to the access point.
	Inbound   bool   `json:"inbound"`
	Up        bool   `json:"up"`
	PublicKey string `json:"public_key,omitempty"`
	// Addr is the peer's overlay address; empty when unknown.
	Addr    string `json:"addr,omitempty"`
	RxBytes uint64 `json:"rx_bytes"`
	TxBytes uint64 `json:"tx_bytes"`
	// Uptime is how long the peering is up, in seconds.
	Uptime    float64 `json:"uptime"`
	LastError string  `json:"last_error,omitempty"`
}

// getYgg answers GET /v1/ygg.
func (s *Server) getYgg(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.Ygg == nil {
		writeError(w, http.StatusServiceUnavailable, "the yggdrasil node is off (start the gateway with --ygg-listen, --ygg-peer or --ygg-tun)")
		return
	}
	st := s.Ygg()
	if st.Peers == nil {
		st.Peers = []YggPeer{}
	}
	writeJSON(w, http.StatusOK, st)
}
