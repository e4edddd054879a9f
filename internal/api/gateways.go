package api

import (
	"net/http"

	"github.com/webgw/webgw/internal/cluster"
)

// MemberInfo is one live gateway in GET /v1/gateways.
type MemberInfo struct {
	cluster.Member
	// Self marks the gateway that answered.
	Self bool `json:"self,omitempty"`
}

// listGateways answers GET /v1/gateways: the cluster's live members.
func (s *Server) listGateways(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.Members == nil {
		writeError(w, http.StatusServiceUnavailable, "this gateway keeps no member list")
		return
	}
	out := []MemberInfo{}
	for _, m := range s.Members() {
		out = append(out, MemberInfo{Member: m, Self: m.ID == s.Info.ID})
	}
	writeJSON(w, http.StatusOK, out)
}
