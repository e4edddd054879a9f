package api

import (
	"net/http"
	"strings"
)

// DSAnswer answers GET /v1/dns/ds: the records to put at the parent zone
// so resolvers validate the zone's signatures.
type DSAnswer struct {
	Zone string `json:"zone"`
	// DS are the DS records, in zone-file form.
	DS []string `json:"ds"`
	// DNSKEY is the zone's key, in zone-file form.
	DNSKEY string `json:"dnskey"`
}

// getDS answers GET /v1/dns/ds?zone=Z: the gateway domain (admin only, the
// default) or a tenant's zone (its owner or the admin).
func (s *Server) getDS(w http.ResponseWriter, r *http.Request, c caller) {
	if s.DS == nil {
		writeError(w, http.StatusServiceUnavailable, "DNSSEC is not served by this gateway")
		return
	}
	zone := strings.ToLower(strings.TrimSuffix(r.URL.Query().Get("zone"), "."))
	if zone == "" {
		zone = s.Info.Domain
	}
	if zone == s.Info.Domain {
		if !c.admin {
			writeError(w, http.StatusForbidden, "zone: the gateway's own domain is the operator's; ask with the admin token")
			return
		}
	} else {
		r.SetPathValue("zone", zone)
		z, ok := s.zoneOf(w, r, c)
		if !ok {
			return
		}
		zone = z.Name
	}
	ds, dnskey, err := s.DS(r.Context(), zone)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "dnssec key: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, DSAnswer{Zone: zone, DS: ds, DNSKEY: dnskey})
}
