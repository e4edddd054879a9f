// Package api is the gateway's admin and tenant HTTP API under /v1/ (JSON,
// bearer tokens), plus /healthz and /metrics. It is documented in
// api/openapi.yaml at the repository root.
package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/webgw/webgw/internal/cluster"
	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

// Server is the API handler. Set its fields, then use Handler.
type Server struct {
	Store store.Store
	Table *route.Table
	// AdminToken authenticates the operator.
	AdminToken string
	// Metrics serves /metrics; nil answers 404.
	Metrics http.Handler
	// Info describes the gateway for /v1/status.
	Info GatewayInfo
	// Log receives audit lines (tenant added, removed); nil discards.
	Log *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// CheckUpstream decides whether the gateway may dial a direct upstream
	// (the operator's --upstream-allow networks); a non-nil error refuses
	// it and is shown to the caller as the reason. nil means no direct
	// upstream is allowed at all: services may only be served by agents.
	CheckUpstream func(model.ParsedUpstream) error
	// PortRange is the range public ports of tcp and udp services (and
	// POST /v1/ports) are allocated from; the zero value holds no port.
	PortRange model.PortRange
	// MaxPortsPerTenant bounds the public ports (tcp and udp together) one
	// tenant may hold; 0 means no bound.
	MaxPortsPerTenant int
	// OpenPort opens the listener of a port just allocated, so it works
	// when the answer arrives, and returns the public HOST:PORT clients
	// use. An error undoes the request (503). nil means this gateway
	// forwards no public ports: tcp and udp services are refused (400) and
	// so is POST /v1/ports (503). The gateway closes a released port's
	// listener when it sees the store record go; the API has no hook for it.
	OpenPort func(model.Port) (string, error)
	// PortAddr returns the public HOST:PORT of port number n, for ports
	// listed (not just opened). nil means the host of Info.HTTPSAddr.
	PortAddr func(n int) string
	// PublicAddrs are the gateway's public addresses, offered as A/AAAA
	// records instead of a CNAME for custom domains; empty offers none.
	PublicAddrs []netip.Addr
	// VerifyDomain checks the proof of control of the custom domain named
	// name now, stores the outcome and returns the record. nil answers
	// POST /v1/domains/{name}/verify with 503.
	VerifyDomain func(ctx context.Context, name string) (model.Domain, error)
	// ZoneTXT looks up the TXT records of a name, for the proof of control
	// of tenants' DNS zones; an error wrapping resolve.ErrNotFound means
	// there are none. nil means zones cannot be verified (503).
	ZoneTXT func(ctx context.Context, name string) ([]string, error)
	// DS returns the DS records and DNSKEY (zone-file form) of a zone the
	// gateway signs; nil answers GET /v1/dns/ds with 503.
	DS func(ctx context.Context, zone string) (ds []string, dnskey string, err error)
	// Members lists the cluster's live gateways, this one included; nil
	// answers GET /v1/gateways with 503.
	Members func() []cluster.Member
	// WG serves the IPv4-to-IPv6 WireGuard devices (/v1/4to6/devices);
	// nil answers them with 503 (4to6 is off).
	WG *WG4to6
	// Ygg returns the embedded Yggdrasil node's state (GET /v1/ygg,
	// admin only); nil answers 503 (the node is off).
	Ygg func() YggStatus
}

// GatewayInfo is the static part of /v1/status.
type GatewayInfo struct {
	ID        string `json:"id"`
	Version   string `json:"version"`
	Domain    string `json:"domain"`
	HTTPAddr  string `json:"http_addr"`
	HTTPSAddr string `json:"https_addr"`
	// HTTP3Addr is the UDP address of HTTP/3 and QUIC agent tunnels; empty when off.
	HTTP3Addr string    `json:"http3_addr,omitempty"`
	APIAddr   string    `json:"api_addr"`
	Open      bool      `json:"open"`
	Started   time.Time `json:"started"`
}

// maxBody bounds request bodies.
const maxBody = 64 << 10

type caller struct {
	admin  bool
	tenant string
}

// Handler returns the HTTP handler for the whole API.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics)
	}
	mux.HandleFunc("GET /v1/status", s.auth(true, s.status))
	mux.HandleFunc("GET /v1/gateways", s.auth(true, s.listGateways))
	mux.HandleFunc("GET /v1/ygg", s.auth(true, s.getYgg))
	mux.HandleFunc("GET /v1/tenants", s.auth(true, s.listTenants))
	mux.HandleFunc("POST /v1/tenants", s.auth(true, s.addTenant))
	mux.HandleFunc("DELETE /v1/tenants/{name}", s.auth(true, s.removeTenant))
	mux.HandleFunc("GET /v1/services", s.auth(false, s.listServices))
	mux.HandleFunc("POST /v1/services", s.auth(false, s.createService))
	mux.HandleFunc("GET /v1/services/{name}", s.auth(false, s.getService))
	mux.HandleFunc("PUT /v1/services/{name}", s.auth(false, s.putService))
	mux.HandleFunc("DELETE /v1/services/{name}", s.auth(false, s.deleteService))
	mux.HandleFunc("GET /v1/ports", s.auth(false, s.listPorts))
	mux.HandleFunc("POST /v1/ports", s.auth(false, s.createPort))
	mux.HandleFunc("DELETE /v1/ports/{proto}/{number}", s.auth(false, s.deletePort))
	mux.HandleFunc("GET /v1/domains", s.auth(false, s.listDomains))
	mux.HandleFunc("POST /v1/domains", s.auth(false, s.createDomain))
	mux.HandleFunc("GET /v1/domains/{name}", s.auth(false, s.getDomain))
	mux.HandleFunc("DELETE /v1/domains/{name}", s.auth(false, s.deleteDomain))
	mux.HandleFunc("POST /v1/domains/{name}/verify", s.auth(false, s.verifyDomain))
	mux.HandleFunc("GET /v1/whoami", s.auth(false, s.whoami))
	mux.HandleFunc("GET /v1/dns/ds", s.auth(false, s.getDS))
	mux.HandleFunc("GET /v1/dns/zones", s.auth(false, s.listZones))
	mux.HandleFunc("POST /v1/dns/zones", s.auth(false, s.createZone))
	mux.HandleFunc("GET /v1/dns/zones/{zone}", s.auth(false, s.getZone))
	mux.HandleFunc("DELETE /v1/dns/zones/{zone}", s.auth(false, s.deleteZone))
	mux.HandleFunc("POST /v1/dns/zones/{zone}/verify", s.auth(false, s.verifyZone))
	mux.HandleFunc("GET /v1/dns/zones/{zone}/records", s.auth(false, s.listRecords))
	mux.HandleFunc("POST /v1/dns/zones/{zone}/records", s.auth(false, s.createRecord))
	mux.HandleFunc("DELETE /v1/dns/zones/{zone}/records/{id}", s.auth(false, s.deleteRecord))
	mux.HandleFunc("GET /v1/4to6/devices", s.auth(false, s.with4to6(s.listDevices)))
	mux.HandleFunc("POST /v1/4to6/devices", s.auth(false, s.with4to6(s.createDevice)))
	mux.HandleFunc("GET /v1/4to6/devices/{name}", s.auth(false, s.with4to6(s.getDevice)))
	mux.HandleFunc("PATCH /v1/4to6/devices/{name}", s.auth(false, s.with4to6(s.patchDevice)))
	mux.HandleFunc("DELETE /v1/4to6/devices/{name}", s.auth(false, s.with4to6(s.deleteDevice)))
	notFound := func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	}
	mux.HandleFunc("/v1/", notFound)
	mux.HandleFunc("/", notFound)
	return mux
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) auth(adminOnly bool, h func(http.ResponseWriter, *http.Request, caller)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="webgw"`)
			writeError(w, http.StatusUnauthorized, "missing bearer token: send 'Authorization: Bearer <admin or tenant token>'")
			return
		}
		if subtle.ConstantTimeCompare([]byte(tok), []byte(s.AdminToken)) == 1 {
			h(w, r, caller{admin: true})
			return
		}
		t, err := store.TenantByToken(r.Context(), s.Store, tok)
		if err != nil {
			if errors.Is(err, store.ErrNotFound) {
				writeError(w, http.StatusUnauthorized, "token refused")
			} else {
				writeError(w, http.StatusInternalServerError, "check token: "+err.Error())
			}
			return
		}
		if adminOnly {
			writeError(w, http.StatusForbidden, "this operation needs the admin token")
			return
		}
		h(w, r, caller{tenant: t.Name})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	if status == http.StatusInternalServerError && strings.Contains(msg, store.ErrUnavailable.Error()) {
		// The store (etcd) does not answer: a condition of the moment,
		// not a bug; the message says what is going on.
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, Error{Error: msg})
}

// decode reads a JSON body strictly: unknown fields and trailing data are
// refused with a message naming them.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := readBody(w, r)
	if err != nil {
		return err
	}
	return decodeJSON(b, v)
}

// readBody reads a request body of at most maxBody bytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var me *http.MaxBytesError
	switch {
	case errors.As(err, &me):
		return nil, fmt.Errorf("body larger than %d bytes", maxBody)
	case err != nil:
		return nil, fmt.Errorf("read body: %v", err)
	}
	return b, nil
}

// decodeJSON decodes b strictly into v; see decode.
func decodeJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body: send a JSON object")
		}
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return fmt.Errorf("body is not valid JSON at byte %d: %v", se.Offset, err)
		case errors.As(err, &te) && te.Field == "":
			return fmt.Errorf("body must be a JSON object, not %s", te.Value)
		case errors.As(err, &te):
			return fmt.Errorf("field %q must be a %s, not %s", te.Field, te.Type, te.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		case errors.Is(err, io.ErrUnexpectedEOF):
			return errors.New("body ends inside the JSON object")
		}
		return fmt.Errorf("body: %v", err)
	}
	// Only white space may follow. (Decoder.More would accept a stray '}' or ']'.)
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("body has data after the JSON object")
	}
	return nil
}

// TenantRequest is the body of POST /v1/tenants.
type TenantRequest struct {
	Name string `json:"name"`
}

// TenantCreated answers POST /v1/tenants. Token is shown only here.
type TenantCreated struct {
	Name  string `json:"name"`
	Token string `json:"token"`
}

// TenantInfo is one tenant in GET /v1/tenants.
type TenantInfo struct {
	Name     string    `json:"name"`
	Created  time.Time `json:"created"`
	Services int       `json:"services"`
}

func (s *Server) addTenant(w http.ResponseWriter, r *http.Request, _ caller) {
	var req TenantRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := model.ValidateTenantName(req.Name); err != nil {
		writeError(w, http.StatusBadRequest, "field \"name\": "+err.Error())
		return
	}
	token := model.NewToken()
	t := model.Tenant{Name: req.Name, TokenHash: model.HashToken(token), Created: s.now().UTC()}
	if err := store.CreateTenant(r.Context(), s.Store, t); err != nil {
		if errors.Is(err, store.ErrConflict) {
			writeError(w, http.StatusConflict, fmt.Sprintf("tenant %q already exists", req.Name))
			return
		}
		writeError(w, http.StatusInternalServerError, "create tenant: "+err.Error())
		return
	}
	s.log().Info("tenant added", "tenant", req.Name)
	writeJSON(w, http.StatusCreated, TenantCreated{Name: req.Name, Token: token})
}

func (s *Server) listTenants(w http.ResponseWriter, r *http.Request, _ caller) {
	ts, err := store.ListTenants(r.Context(), s.Store)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "list tenants: "+err.Error())
		return
	}
	svcs, err := store.ListServices(r.Context(), s.Store)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "list services: "+err.Error())
		return
	}
	count := map[string]int{}
	for _, sv := range svcs {
		count[sv.Tenant]++
	}
	out := make([]TenantInfo, 0, len(ts))
	for _, t := range ts {
		out = append(out, TenantInfo{Name: t.Name, Created: t.Created, Services: count[t.Name]})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) removeTenant(w http.ResponseWriter, r *http.Request, _ caller) {
	name := r.PathValue("name")
	if err := model.ValidateTenantName(name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Note the tenant's agents before deleting: deleting its services makes
	// the gateway drop them from the table (and so from AgentsOf) at once.
	agents := s.tenantAgents(name)
	if err := store.DeleteTenant(r.Context(), s.Store, name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusNotFound, fmt.Sprintf("tenant %q does not exist", name))
			return
		}
		writeError(w, http.StatusInternalServerError, "remove tenant: "+err.Error())
		return
	}
	// Cut the tenant's agents at once: their token no longer exists. Look
	// again for any that attached while the tenant was being deleted.
	for _, a := range append(agents, s.tenantAgents(name)...) {
		a.Session.Close()
	}
	s.log().Info("tenant removed", "tenant", name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) tenantAgents(tenant string) []*route.Agent {
	var out []*route.Agent
	for _, a := range s.Table.AgentsOf() {
		if a.Tenant == tenant {
			out = append(out, a)
		}
	}
	return out
}

// ServiceInfo is one service in GET /v1/services and /v1/status: the
// services in the gateway's table (with agents, or stored) and the stored
// services the table does not hold yet.
type ServiceInfo struct {
	Name     string `json:"name"`
	Tenant   string `json:"tenant"`
	Protocol string `json:"protocol"`
	// Upstreams is the number of direct upstreams stored for the service.
	Upstreams int   `json:"upstreams"`
	Agents    int   `json:"agents"`
	Streams   int64 `json:"streams"`
	Requests  int64 `json:"requests"`
	BytesIn   int64 `json:"bytes_in"`
	BytesOut  int64 `json:"bytes_out"`
}

// AgentInfo is one agent session in /v1/status.
type AgentInfo struct {
	ID      string `json:"id"`
	Tenant  string `json:"tenant"`
	Remote  string `json:"remote"`
	Version string `json:"version"`
	// Conn numbers the session among its agent's connections (--connections).
	Conn int `json:"conn"`
	// Transport is the tunnel's transport, "tcp" or "quic".
	Transport string    `json:"transport"`
	Services  []string  `json:"services"`
	Connected time.Time `json:"connected"`
	Draining  bool      `json:"draining"`
	Streams   int64     `json:"streams"`
	BytesIn   int64     `json:"bytes_in"`
	BytesOut  int64     `json:"bytes_out"`
}

// Status answers GET /v1/status.
type Status struct {
	Gateway  GatewayInfo   `json:"gateway"`
	Services []ServiceInfo `json:"services"`
	Agents   []AgentInfo   `json:"agents"`
}

func (s *Server) services(ctx context.Context, c caller) ([]ServiceInfo, error) {
	stored, err := store.ListServices(ctx, s.Store)
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	byName := make(map[string]model.Service, len(stored))
	for _, sv := range stored {
		byName[sv.Name] = sv
	}
	out := []ServiceInfo{}
	for _, sv := range s.Table.List() {
		st, ok := byName[sv.Name]
		delete(byName, sv.Name)
		if !c.admin && sv.Tenant != c.tenant {
			continue
		}
		si := ServiceInfo{Name: sv.Name, Tenant: sv.Tenant, Protocol: string(sv.Protocol)}
		if ok {
			si.Upstreams = len(st.Upstreams)
		}
		l := liveOf(sv)
		si.Agents, si.Streams, si.Requests, si.BytesIn, si.BytesOut = l.Agents, l.Streams, l.Requests, l.BytesIn, l.BytesOut
		out = append(out, si)
	}
	for _, st := range byName {
		if !c.admin && st.Tenant != c.tenant {
			continue
		}
		out = append(out, ServiceInfo{Name: st.Name, Tenant: st.Tenant, Protocol: string(protocolOf(st)), Upstreams: len(st.Upstreams)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request, c caller) {
	out, err := s.services(r.Context(), c)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, c caller) {
	writeJSON(w, http.StatusOK, map[string]any{"admin": c.admin, "tenant": c.tenant})
}

func (s *Server) status(w http.ResponseWriter, r *http.Request, c caller) {
	svcs, err := s.services(r.Context(), c)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	st := Status{Gateway: s.Info, Services: svcs, Agents: []AgentInfo{}}
	for _, a := range s.Table.AgentsOf() {
		in, out := a.Bytes()
		st.Agents = append(st.Agents, AgentInfo{
			ID: a.ID, Tenant: a.Tenant, Remote: a.Remote, Version: a.Version, Conn: a.Conn, Transport: a.Transport, Services: a.Services,
			Connected: a.Connected, Draining: a.Draining(), Streams: a.Streams(), BytesIn: in, BytesOut: out,
		})
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}
