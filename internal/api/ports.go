package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

// PortRequest is the body of POST /v1/ports.
type PortRequest struct {
	// Proto is tcp or udp.
	Proto model.PortProto `json:"proto"`
	// Port is the port number wanted, in the gateway's port range; 0 means
	// any free one.
	Port int `json:"port,omitempty"`
	// Service is the service the port forwards to: a udp service for a
	// udp port, a tcp or tls service for a tcp port. Empty with SNI.
	Service string `json:"service,omitempty"`
	// SNI asks for a tcp port shared by the tenant's tls services, each
	// connection routed by the server name of its TLS ClientHello.
	SNI bool `json:"sni,omitempty"`
	// Tenant owns the port: required with the admin token; with a tenant
	// token empty or the caller's tenant.
	Tenant string `json:"tenant,omitempty"`
}

// PortDetail is a public port in answers: the stored record and the
// HOST:PORT clients connect to.
type PortDetail struct {
	model.Port
	Address string `json:"address"`
}

func (s *Server) portDetail(p model.Port) PortDetail {
	return PortDetail{Port: p, Address: s.portAddr(p.Number)}
}

// portAddr is the public HOST:PORT of port n: Server.PortAddr, or the host
// of Info.HTTPSAddr (where the gateway's ports listen).
func (s *Server) portAddr(n int) string {
	if s.PortAddr != nil {
		return s.PortAddr(n)
	}
	host, _, _ := net.SplitHostPort(s.Info.HTTPSAddr)
	return net.JoinHostPort(host, strconv.Itoa(n))
}

// errNoPorts refuses ports when the Server has no OpenPort hook.
const errNoPorts = "this gateway forwards no public ports"

// allocateAndOpen allocates port p (p.Number 0: any free one in the range)
// and opens its listener through OpenPort. It returns the port, the address
// OpenPort announced, whether the port is new (not held by the same owner
// before), and on error the status to answer with. A new port that cannot
// be opened is released again.
func (s *Server) allocateAndOpen(ctx context.Context, p model.Port) (port model.Port, addr string, fresh bool, status int, err error) {
	fresh = true
	if p.Number != 0 {
		var cur model.Port
		_, err := store.GetJSON(ctx, s.Store, store.PortKey(p.Proto, p.Number), &cur)
		fresh = err != nil || cur.Tenant != p.Tenant || cur.Service != p.Service || cur.SNI != p.SNI
	}
	port, err = store.AllocatePort(ctx, s.Store, p, s.PortRange, s.MaxPortsPerTenant)
	if err != nil {
		status, msg := portErrorStatus(err)
		return model.Port{}, "", false, status, errors.New(msg)
	}
	addr, err = s.OpenPort(port)
	if err == nil {
		return port, addr, fresh, 0, nil
	}
	err = fmt.Errorf("open %s: %w", port, err)
	if fresh {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		if rerr := store.ReleasePort(rctx, s.Store, port.Proto, port.Number, port.Tenant); rerr != nil && !errors.Is(rerr, store.ErrNotFound) {
			s.log().Error("port left allocated but closed", "port", port.String(), "err", rerr)
			err = errors.Join(err, fmt.Errorf("release %s: %w", port, rerr))
		}
	}
	return model.Port{}, "", false, http.StatusServiceUnavailable, err
}

// portErrorStatus maps the store's port errors to a status and a message
// for the caller.
func portErrorStatus(err error) (int, string) {
	msg := strings.ReplaceAll(err.Error(), "store: ", "")
	switch {
	case errors.Is(err, store.ErrInvalidPort):
		return http.StatusBadRequest, "port: " + msg
	case errors.Is(err, store.ErrPortTaken), errors.Is(err, store.ErrRangeFull):
		return http.StatusConflict, msg
	case errors.Is(err, store.ErrQuota), errors.Is(err, store.ErrNotOwner):
		return http.StatusForbidden, msg
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, msg
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict, msg
	}
	return http.StatusInternalServerError, msg
}

func (s *Server) listPorts(w http.ResponseWriter, r *http.Request, c caller) {
	var ports []model.Port
	var err error
	if c.admin {
		ports, err = store.ListPorts(r.Context(), s.Store)
	} else {
		ports, err = store.PortsOf(r.Context(), s.Store, c.tenant)
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]PortDetail, 0, len(ports))
	for _, p := range ports {
		out = append(out, s.portDetail(p))
	}
	writeJSON(w, http.StatusOK, out)
}

// checkPortRequest checks what a port request says by itself. Errors name
// the field.
func checkPortRequest(req *PortRequest) error {
	if !req.Proto.Valid() {
		return fmt.Errorf("proto: %q not accepted; use tcp or udp", req.Proto)
	}
	if req.Port != 0 {
		if err := model.ValidatePort(req.Port); err != nil {
			return fmt.Errorf("port: %v, or 0 for any free port", err)
		}
	}
	switch {
	case req.SNI && req.Proto != model.PortTCP:
		return fmt.Errorf("sni: only a tcp port can be an SNI port, not %s", req.Proto)
	case req.SNI && req.Service != "":
		return fmt.Errorf("service: an SNI port serves all of its tenant's tls services by server name; leave service out (%q given)", req.Service)
	case !req.SNI && req.Service == "":
		return errors.New(`service: name the service the port forwards to, or ask for an SNI port ("sni": true, tcp only)`)
	case !req.SNI:
		if err := model.ValidateName(req.Service); err != nil {
			return fmt.Errorf("service: %w", err)
		}
	}
	return nil
}

func (s *Server) createPort(w http.ResponseWriter, r *http.Request, c caller) {
	var req PortRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := checkPortRequest(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	tenant, status, err := s.owner(r.Context(), c, req.Tenant, "ports")
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	if s.OpenPort == nil {
		writeError(w, http.StatusServiceUnavailable, errNoPorts+"; ports cannot be added")
		return
	}
	if !req.SNI {
		sv, _, err := store.GetService(r.Context(), s.Store, req.Service)
		switch {
		case errors.Is(err, store.ErrNotFound):
			writeError(w, http.StatusBadRequest, fmt.Sprintf("service: service %q does not exist (create it first)", req.Service))
			return
		case err != nil:
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		case sv.Tenant != tenant && !c.admin:
			writeError(w, http.StatusForbidden, fmt.Sprintf("service: service %q belongs to another tenant", req.Service))
			return
		case sv.Tenant != tenant:
			writeError(w, http.StatusBadRequest, fmt.Sprintf("service: service %q belongs to tenant %q, not %q", req.Service, sv.Tenant, tenant))
			return
		case !portServes(req.Proto, protocolOf(sv)):
			writeError(w, http.StatusBadRequest, fmt.Sprintf("proto: a %s port cannot forward to service %q, a %s service; udp ports serve udp services, tcp ports tcp and tls services",
				req.Proto, req.Service, protocolOf(sv)))
			return
		}
	}
	p := model.Port{Proto: req.Proto, Number: req.Port, Tenant: tenant, Service: req.Service, SNI: req.SNI, Created: s.now().UTC()}
	port, addr, fresh, status, err := s.allocateAndOpen(r.Context(), p)
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	d := PortDetail{Port: port, Address: addr}
	w.Header().Set("Location", "/v1/ports/"+string(port.Proto)+"/"+strconv.Itoa(port.Number))
	if !fresh {
		writeJSON(w, http.StatusOK, d) // held already by the same owner: nothing new
		return
	}
	s.log().Info("port added", "port", port.String(), "service", port.Service, "sni", port.SNI, "tenant", tenant)
	writeJSON(w, http.StatusCreated, d)
}

// owner decides the tenant that owns a new resource (what names it, such as
// "ports", is for messages): the admin must name an existing tenant; a
// tenant may name only itself. On error it returns the status to answer.
func (s *Server) owner(ctx context.Context, c caller, tenant, what string) (string, int, error) {
	switch {
	case c.admin && tenant == "":
		return "", http.StatusBadRequest, fmt.Errorf("tenant: the admin token must name the tenant that will own the %s", what)
	case c.admin:
		if err := model.ValidateTenantName(tenant); err != nil {
			return "", http.StatusBadRequest, fmt.Errorf("tenant: %w", err)
		}
		var t model.Tenant
		if _, err := store.GetJSON(ctx, s.Store, store.TenantKey(tenant), &t); errors.Is(err, store.ErrNotFound) {
			return "", http.StatusBadRequest, fmt.Errorf("tenant: tenant %q does not exist (see GET /v1/tenants)", tenant)
		} else if err != nil {
			return "", http.StatusInternalServerError, fmt.Errorf("read tenant: %w", err)
		}
		return tenant, 0, nil
	case tenant != "" && tenant != c.tenant:
		return "", http.StatusForbidden, fmt.Errorf("tenant: a tenant token creates %s for its own tenant (%q) only", what, c.tenant)
	}
	return c.tenant, 0, nil
}

func (s *Server) deletePort(w http.ResponseWriter, r *http.Request, c caller) {
	proto := model.PortProto(r.PathValue("proto"))
	if !proto.Valid() {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("proto: %q not accepted; use tcp or udp (DELETE /v1/ports/tcp/20000)", proto))
		return
	}
	n, err := strconv.Atoi(r.PathValue("number"))
	if err == nil {
		err = model.ValidatePort(n)
	} else {
		err = fmt.Errorf("%q is not a port number; use 1-%d", r.PathValue("number"), model.MaxPort)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "number: "+err.Error())
		return
	}
	tenant := c.tenant
	if c.admin {
		var cur model.Port
		if _, err := store.GetJSON(r.Context(), s.Store, store.PortKey(proto, n), &cur); err != nil {
			status, msg := portErrorStatus(err)
			if status == http.StatusNotFound {
				msg = fmt.Sprintf("port %s/%d is not allocated", proto, n)
			}
			writeError(w, status, msg)
			return
		}
		tenant = cur.Tenant
	}
	err = store.ReleasePort(r.Context(), s.Store, proto, n, tenant)
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("port %s/%d is not allocated", proto, n))
		return
	case errors.Is(err, store.ErrNotOwner) && c.admin:
		writeError(w, http.StatusConflict, fmt.Sprintf("port %s/%d changed hands meanwhile; try again", proto, n))
		return
	case errors.Is(err, store.ErrNotOwner):
		writeError(w, http.StatusForbidden, fmt.Sprintf("port %s/%d belongs to another tenant", proto, n))
		return
	default:
		status, msg := portErrorStatus(err)
		writeError(w, status, msg)
		return
	}
	s.log().Info("port removed", "port", fmt.Sprintf("%s/%d", proto, n), "tenant", tenant)
	w.WriteHeader(http.StatusNoContent)
}
