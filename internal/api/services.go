package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/route"
	"github.com/webgw/webgw/internal/store"
)

// ServiceRequest is the body of POST /v1/services and PUT /v1/services/{name}.
// A PUT replaces every routing setting (Protocol to Passive): a field left
// out takes its zero value, not the stored one.
type ServiceRequest struct {
	// Name is the service name. POST: required. PUT: empty, or the name in the path.
	Name string `json:"name,omitempty"`
	// Tenant owns the service. POST: required with the admin token; with a
	// tenant token empty or the caller's tenant. PUT: empty, or the current owner.
	Tenant string `json:"tenant,omitempty"`
	// Protocol is http, h2c, tls, tcp or udp; empty means http. A PUT
	// cannot change it between tcp or udp and another protocol: the public
	// port goes with it (delete and create the service again).
	Protocol model.Protocol `json:"protocol,omitempty"`
	// Upstreams are the direct upstreams; each must be allowed by the
	// gateway (Server.CheckUpstream).
	Upstreams []model.Upstream `json:"upstreams,omitempty"`
	// LB is the load-balancing policy; empty means round_robin.
	LB model.LBPolicy `json:"lb,omitempty"`
	// Health configures active health checks; nil means none.
	Health *model.HealthCheck `json:"health,omitempty"`
	// Passive configures passive ejection; nil means the defaults.
	Passive *model.PassiveHealth `json:"passive,omitempty"`
	// ProxyProtocol, 1 or 2, sends a PROXY protocol header of that version
	// before each connection's bytes to the backend; 0 sends none. Not for
	// udp services.
	ProxyProtocol int `json:"proxy_protocol,omitempty"`
	// Ygg publishes the service on the gateway's Yggdrasil overlay address
	// too (HTTPS on 443, redirects on 80), when the gateway runs a node;
	// false means the public listeners only. Not for tcp and udp services.
	Ygg bool `json:"ygg,omitempty"`
	// Port is the public port a tcp or udp service asks for at creation
	// (POST): one in the gateway's port range, or 0 for any free one. It
	// is refused for other protocols. PUT: 0, or a port the service holds;
	// ports are added and removed with /v1/ports.
	Port int `json:"port,omitempty"`
}

// RequestOf returns the request that stores sv's routing settings again,
// for a read-modify-write (GET, change, PUT).
func RequestOf(sv model.Service) ServiceRequest {
	return ServiceRequest{
		Name: sv.Name, Tenant: sv.Tenant, Protocol: sv.Protocol,
		Upstreams: sv.Upstreams, LB: sv.LB, Health: sv.Health, Passive: sv.Passive,
		ProxyProtocol: sv.ProxyProtocol, Ygg: sv.Ygg,
	}
}

// ServiceLive is the live state of a service in the gateway's table.
type ServiceLive struct {
	Agents   int   `json:"agents"`
	Streams  int64 `json:"streams"`
	Requests int64 `json:"requests"`
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// UpstreamHealth is each upstream's live state, agents and direct ones.
	UpstreamHealth []UpstreamState `json:"upstream_health,omitempty"`
}

// UpstreamState is one upstream as the balancer sees it now.
type UpstreamState struct {
	// Upstream names it: "agent <id>", "peer <gateway id>" or the direct URL.
	Upstream string `json:"upstream"`
	// Kind is "agent", "direct", or "peer" (another gateway that holds the
	// service, used while this one has no usable upstream of its own).
	Kind   string `json:"kind"`
	Weight int    `json:"weight"`
	// State is healthy, unhealthy (active checks), ejected (passive), or draining.
	State       string `json:"state"`
	Outstanding int64  `json:"outstanding"`
}

// ServiceDetail answers GET, POST and PUT on /v1/services/{name}: the stored
// record, its public URL and its live state. The answer's ETag header holds
// the record's revision, for If-Match on a later PUT or DELETE.
type ServiceDetail struct {
	model.Service
	// URL is the service's public URL; empty when the gateway has no domain.
	// For a tcp or udp service it is the HOST:PORT of its first public
	// port, and empty while it holds none.
	URL string `json:"url,omitempty"`
	// Ports are the public ports that forward to the service (not the
	// SNI ports its tenant's tls services share).
	Ports []PortDetail `json:"ports,omitempty"`
	// Stored is false for an anonymous quick tunnel (shown to the admin only).
	Stored bool `json:"stored"`
	ServiceLive
}

func liveOf(sv *route.Service) ServiceLive {
	var l ServiceLive
	if sv == nil {
		return l
	}
	l.Requests = sv.Requests()
	for _, a := range sv.Agents() {
		l.Agents++
		l.Streams += a.Streams()
	}
	now := time.Now()
	for _, u := range sv.Upstreams() {
		st := UpstreamState{Upstream: u.String(), Kind: "direct", Weight: u.Weight(), State: u.Health.State(now), Outstanding: u.Outstanding()}
		switch {
		case u.Peer():
			st.Kind = "peer"
		case u.Agent != nil:
			st.Kind = "agent"
		}
		if u.Draining() {
			st.State = "draining"
		}
		l.UpstreamHealth = append(l.UpstreamHealth, st)
	}
	if m := sv.Metrics; m != nil {
		l.BytesIn = int64(counterValue(m.BytesIn))
		l.BytesOut = int64(counterValue(m.BytesOut))
	}
	return l
}

func protocolOf(sv model.Service) model.Protocol {
	if sv.Protocol == "" {
		return model.ProtoHTTP
	}
	return sv.Protocol
}

// publicURL is the https URL of a service name on this gateway (TLS
// passthrough services share the HTTPS port).
func (s *Server) publicURL(name string) string {
	if s.Info.Domain == "" {
		return ""
	}
	host := name + "." + s.Info.Domain
	if _, port, err := net.SplitHostPort(s.Info.HTTPSAddr); err == nil && port != "" && port != "443" {
		host = net.JoinHostPort(host, port)
	}
	return "https://" + host
}

// detail is the answer about stored service sv, which holds ports.
func (s *Server) detail(sv model.Service, ports []model.Port) ServiceDetail {
	d := ServiceDetail{Service: sv, Stored: true, ServiceLive: liveOf(s.Table.Lookup(sv.Name))}
	s.setURL(&d, ports)
	return d
}

// setURL sets d's URL and Ports from the ports d's service holds.
func (s *Server) setURL(d *ServiceDetail, ports []model.Port) {
	for _, p := range ports {
		d.Ports = append(d.Ports, s.portDetail(p))
	}
	switch {
	case !protocolOf(d.Service).Forwarded():
		d.URL = s.publicURL(d.Name)
	case len(d.Ports) > 0:
		d.URL = d.Ports[0].Address
	}
}

// servicePorts returns the ports of tenant's service name.
func (s *Server) servicePorts(ctx context.Context, name, tenant string) ([]model.Port, error) {
	all, err := store.PortsOf(ctx, s.Store, tenant)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(p model.Port) bool { return p.Service != name || p.SNI }), nil
}

// decodeService reads a service body strictly. A bad duration is reported
// with its field's name, which encoding/json does not give for errors from
// a field's own UnmarshalJSON.
func decodeService(w http.ResponseWriter, r *http.Request, req *ServiceRequest) error {
	b, err := readBody(w, r)
	if err != nil {
		return err
	}
	if err := decodeJSON(b, req); err != nil {
		if derr := badDuration(b); derr != nil {
			return derr
		}
		return err
	}
	return nil
}

// badDuration returns an error naming the first duration field of a service
// body that does not decode, or nil.
func badDuration(b []byte) error {
	var p struct {
		Health *struct {
			Interval json.RawMessage `json:"interval"`
			Timeout  json.RawMessage `json:"timeout"`
		} `json:"health"`
		Passive *struct {
			Cooldown json.RawMessage `json:"cooldown"`
		} `json:"passive"`
	}
	if json.Unmarshal(b, &p) != nil {
		return nil
	}
	var fields []string
	var raws []json.RawMessage
	if p.Health != nil {
		fields, raws = append(fields, "health.interval", "health.timeout"), append(raws, p.Health.Interval, p.Health.Timeout)
	}
	if p.Passive != nil {
		fields, raws = append(fields, "passive.cooldown"), append(raws, p.Passive.Cooldown)
	}
	for i, raw := range raws {
		if raw == nil {
			continue
		}
		var d model.Duration
		if err := d.UnmarshalJSON(raw); err != nil {
			return fmt.Errorf("%s: %v", fields[i], err)
		}
	}
	return nil
}

// routing checks the routing settings of req and copies them into sv.
// Errors name the field.
func (s *Server) routing(sv *model.Service, req *ServiceRequest) error {
	sv.Protocol = req.Protocol
	if sv.Protocol == "" {
		sv.Protocol = model.ProtoHTTP
	}
	if !sv.Protocol.Valid() {
		return fmt.Errorf("protocol: %q not accepted; use http, h2c, tls, tcp or udp", req.Protocol)
	}
	if req.Port != 0 && !sv.Protocol.Forwarded() {
		return fmt.Errorf("port: only tcp and udp services have a public port, not %s services; leave it out", sv.Protocol)
	}
	if req.Port < 0 || req.Port > model.MaxPort {
		return fmt.Errorf("port: %d not accepted; use one of the gateway's port range, or 0 for any", req.Port)
	}
	sv.Upstreams, sv.LB, sv.Health, sv.Passive = req.Upstreams, req.LB, req.Health, req.Passive
	sv.ProxyProtocol = req.ProxyProtocol
	sv.Ygg = req.Ygg
	if err := sv.ValidateRouting(); err != nil {
		return err
	}
	for i, u := range sv.Upstreams {
		if s.CheckUpstream == nil {
			return fmt.Errorf("upstreams[%d].url: direct upstreams are not allowed on this gateway; the operator lists allowed networks with --upstream-allow", i)
		}
		p, err := model.ParseUpstreamURL(u.URL, sv.Protocol)
		if err != nil { // ValidateRouting parsed it already
			return fmt.Errorf("upstreams[%d].url: %w", i, err)
		}
		if err := s.CheckUpstream(p); err != nil {
			return fmt.Errorf("upstreams[%d].url: %w", i, err)
		}
	}
	return nil
}

// setRevision sets the ETag that carries a record's store revision.
func setRevision(w http.ResponseWriter, rev int64) {
	w.Header().Set("ETag", `"`+strconv.FormatInt(rev, 10)+`"`)
}

// ifMatch returns the revision an If-Match header asks for: 0 for none or "*".
func ifMatch(r *http.Request) (int64, error) {
	v := strings.TrimSpace(r.Header.Get("If-Match"))
	if v == "" || v == "*" {
		return 0, nil
	}
	n, err := strconv.ParseInt(strings.Trim(v, `"`), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("If-Match: %q; send the ETag of a GET answer, such as \"42\"", v)
	}
	return n, nil
}

// errNotYours refuses a tenant's access to another tenant's service.
var errNotYours = errors.New("belongs to another tenant")

// badRequestError is an error in the request, answered with 400.
type badRequestError struct{ err error }

func (e *badRequestError) Error() string { return e.err.Error() }

func (s *Server) createService(w http.ResponseWriter, r *http.Request, c caller) {
	var req ServiceRequest
	if err := decodeService(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := model.ValidateName(req.Name); err != nil {
		writeError(w, http.StatusBadRequest, "name: "+err.Error())
		return
	}
	tenant := c.tenant
	switch {
	case c.admin && req.Tenant == "":
		writeError(w, http.StatusBadRequest, "tenant: the admin token must name the tenant that will own the service")
		return
	case c.admin:
		if err := model.ValidateTenantName(req.Tenant); err != nil {
			writeError(w, http.StatusBadRequest, "tenant: "+err.Error())
			return
		}
		var t model.Tenant
		if _, err := store.GetJSON(r.Context(), s.Store, store.TenantKey(req.Tenant), &t); errors.Is(err, store.ErrNotFound) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("tenant: tenant %q does not exist (see GET /v1/tenants)", req.Tenant))
			return
		} else if err != nil {
			writeError(w, http.StatusInternalServerError, "read tenant: "+err.Error())
			return
		}
		tenant = req.Tenant
	case req.Tenant != "" && req.Tenant != c.tenant:
		writeError(w, http.StatusForbidden, fmt.Sprintf("tenant: a tenant token creates services for its own tenant (%q) only", c.tenant))
		return
	}
	sv := model.Service{Name: req.Name, Tenant: tenant, Created: s.now().UTC()}
	if err := s.routing(&sv, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if sv.Protocol.Forwarded() && s.OpenPort == nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("protocol: %q not accepted: this gateway forwards no public ports; use http, h2c or tls", sv.Protocol))
		return
	}
	if ts := s.Table.Lookup(req.Name); ts != nil && !ts.Stored && ts.Tenant == "" && (len(ts.Agents()) > 0 || ts.Reachable()) {
		// A quick tunnel here, or on another gateway of the cluster (a peer).
		writeError(w, http.StatusConflict, fmt.Sprintf("name %q is in use by a quick tunnel right now; choose another name or try again when it disconnects", req.Name))
		return
	}
	rev, err := store.CreateService(r.Context(), s.Store, sv)
	if errors.Is(err, store.ErrConflict) {
		writeError(w, http.StatusConflict, fmt.Sprintf("service %q already exists; choose another name", req.Name))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	var ports []model.Port
	var addr string
	if sv.Protocol.Forwarded() {
		p := model.Port{Proto: model.PortProto(sv.Protocol), Number: req.Port, Tenant: tenant, Service: sv.Name, Created: sv.Created}
		port, a, _, status, err := s.allocateAndOpen(r.Context(), p)
		if err != nil {
			// No half-made service: it goes again (and any port with it).
			if derr := s.undoCreate(r.Context(), sv); derr != nil {
				err = errors.Join(err, derr)
			}
			writeError(w, status, err.Error())
			return
		}
		ports, addr = []model.Port{port}, a
		s.log().Info("port added", "port", port.String(), "service", sv.Name, "tenant", tenant)
	}
	s.log().Info("service added", "service", sv.Name, "tenant", sv.Tenant, "protocol", sv.Protocol, "upstreams", len(sv.Upstreams))
	setRevision(w, rev)
	w.Header().Set("Location", "/v1/services/"+sv.Name)
	d := s.detail(sv, ports)
	if addr != "" { // the address OpenPort announced
		d.Ports[0].Address, d.URL = addr, addr
	}
	writeJSON(w, http.StatusCreated, d)
}

// undoCreate deletes service sv again after its port could not be had,
// unless it was replaced meanwhile. It runs even if the client has gone.
func (s *Server) undoCreate(ctx context.Context, sv model.Service) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
	defer cancel()
	err := store.DeleteService(ctx, s.Store, sv.Name, 0, func(cur model.Service) error {
		if cur.Tenant != sv.Tenant || !cur.Created.Equal(sv.Created) {
			return errReplaced
		}
		return nil
	})
	if err == nil || errors.Is(err, errReplaced) || errors.Is(err, store.ErrNotFound) {
		return nil
	}
	s.log().Error("service left without its port", "service", sv.Name, "tenant", sv.Tenant, "err", err)
	return fmt.Errorf("remove service %s again: %w", sv.Name, err)
}

// undoTimeout bounds the store writes that undo half a request.
const undoTimeout = 10 * time.Second

var errReplaced = errors.New("replaced meanwhile")

// pathName returns the service name in the path, or answers 400.
func pathName(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	if err := model.ValidateName(name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "", false
	}
	return name, true
}

func (s *Server) getService(w http.ResponseWriter, r *http.Request, c caller) {
	name, ok := pathName(w, r)
	if !ok {
		return
	}
	sv, rev, err := store.GetService(r.Context(), s.Store, name)
	if errors.Is(err, store.ErrNotFound) {
		if ts := s.Table.Lookup(name); ts != nil && !ts.Stored && c.admin {
			d := ServiceDetail{Service: model.Service{Name: ts.Name, Tenant: ts.Tenant, Protocol: ts.Protocol}, ServiceLive: liveOf(ts)}
			ports, err := s.servicePorts(r.Context(), name, ts.Tenant)
			if err != nil {
				writeError(w, http.StatusInternalServerError, err.Error())
				return
			}
			s.setURL(&d, ports)
			writeJSON(w, http.StatusOK, d)
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("service %q does not exist", name))
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if !c.admin && sv.Tenant != c.tenant {
		writeError(w, http.StatusForbidden, fmt.Sprintf("service %q belongs to another tenant", name))
		return
	}
	ports, err := s.servicePorts(r.Context(), name, sv.Tenant)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	setRevision(w, rev)
	writeJSON(w, http.StatusOK, s.detail(sv, ports))
}

func (s *Server) putService(w http.ResponseWriter, r *http.Request, c caller) {
	name, ok := pathName(w, r)
	if !ok {
		return
	}
	ifRev, err := ifMatch(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var req ServiceRequest
	if err := decodeService(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Name != "" && req.Name != name {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("name: %q is not the name in the path (%q); a service cannot be renamed", req.Name, name))
		return
	}
	var want model.Service
	if err := s.routing(&want, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var ports []model.Port
	sv, rev, err := store.UpdateService(r.Context(), s.Store, name, ifRev, func(sv *model.Service) error {
		if !c.admin && sv.Tenant != c.tenant {
			return errNotYours
		}
		if req.Tenant != "" && req.Tenant != sv.Tenant {
			return &badRequestError{fmt.Errorf("tenant: %q is not the owner (%q); the owner cannot be changed", req.Tenant, sv.Tenant)}
		}
		var err error
		if ports, err = s.servicePorts(r.Context(), name, sv.Tenant); err != nil {
			return err
		}
		if err := portsAllow(protocolOf(*sv), want.Protocol, req.Port, ports); err != nil {
			return &badRequestError{err}
		}
		sv.Protocol, sv.Upstreams, sv.LB, sv.Health, sv.Passive = want.Protocol, want.Upstreams, want.LB, want.Health, want.Passive
		sv.ProxyProtocol, sv.Ygg = want.ProxyProtocol, want.Ygg
		return nil
	})
	if s.serviceWriteError(w, name, ifRev, err) {
		return
	}
	s.log().Info("service updated", "service", sv.Name, "tenant", sv.Tenant, "protocol", sv.Protocol, "upstreams", len(sv.Upstreams))
	setRevision(w, rev)
	writeJSON(w, http.StatusOK, s.detail(sv, ports))
}

// portsAllow checks a PUT that changes a service's protocol from old to
// proto, asking for port (0: none), against the ports the service holds.
// A service's public port is made with it: a change between tcp or udp and
// another protocol is refused, and so is a change that would leave a port
// forwarding to a service of the wrong kind (a tls service's tcp port).
func portsAllow(old, proto model.Protocol, port int, held []model.Port) error {
	if old != proto && (old.Forwarded() || proto.Forwarded()) {
		return fmt.Errorf("protocol: a %s service cannot become %s, as its public port goes with its protocol; delete and create the service again", old, proto)
	}
	for _, p := range held {
		if !portServes(p.Proto, proto) {
			return fmt.Errorf("protocol: the service holds %s, which cannot forward to a %s service; remove the port first (DELETE /v1/ports/%s/%d)", p, proto, p.Proto, p.Number)
		}
	}
	if port == 0 {
		return nil
	}
	for _, p := range held {
		if p.Number == port && p.Proto == model.PortProto(proto) {
			return nil
		}
	}
	return fmt.Errorf("port: the service does not hold %s/%d; a PUT cannot change ports: add one with POST /v1/ports, or leave port out", proto, port)
}

// portServes reports whether a public port of proto can forward to a
// service of protocol sp: udp ports to udp services, tcp ports to tcp and
// tls (passthrough) services.
func portServes(proto model.PortProto, sp model.Protocol) bool {
	switch proto {
	case model.PortUDP:
		return sp == model.ProtoUDP
	case model.PortTCP:
		return sp == model.ProtoTCP || sp == model.ProtoTLS
	}
	return false
}

func (s *Server) deleteService(w http.ResponseWriter, r *http.Request, c caller) {
	name, ok := pathName(w, r)
	if !ok {
		return
	}
	ifRev, err := ifMatch(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var tenant string
	err = store.DeleteService(r.Context(), s.Store, name, ifRev, func(sv model.Service) error {
		if !c.admin && sv.Tenant != c.tenant {
			return errNotYours
		}
		tenant = sv.Tenant
		return nil
	})
	if s.serviceWriteError(w, name, ifRev, err) {
		return
	}
	s.log().Info("service removed", "service", name, "tenant", tenant)
	w.WriteHeader(http.StatusNoContent)
}

// serviceWriteError answers the error of an update or delete, if any, and
// reports whether it did.
func (s *Server) serviceWriteError(w http.ResponseWriter, name string, ifRev int64, err error) bool {
	var bre *badRequestError
	switch {
	case err == nil:
		return false
	case errors.Is(err, store.ErrNotFound):
		msg := fmt.Sprintf("service %q does not exist", name)
		if ts := s.Table.Lookup(name); ts != nil && !ts.Stored {
			msg += " in the store (it is a quick tunnel, which ends when its agent disconnects)"
		}
		writeError(w, http.StatusNotFound, msg)
	case errors.Is(err, errNotYours):
		writeError(w, http.StatusForbidden, fmt.Sprintf("service %q belongs to another tenant", name))
	case errors.As(err, &bre):
		writeError(w, http.StatusBadRequest, bre.Error())
	case errors.Is(err, store.ErrConflict) && ifRev > 0:
		writeError(w, http.StatusPreconditionFailed, fmt.Sprintf("service %q changed since revision %d (If-Match); read it again", name, ifRev))
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, fmt.Sprintf("service %q is being changed by others; try again", name))
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
	return true
}
