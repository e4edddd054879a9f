package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

// DomainRequest is the body of POST /v1/domains.
type DomainRequest struct {
	// Name is the custom domain, such as www.example.com: lower case, no
	// trailing dot, not under the gateway's own domain.
	Name string `json:"name"`
	// Service is the caller's service the domain is served by.
	Service string `json:"service"`
	// Tenant owns the domain: required with the admin token; with a tenant
	// token empty or the caller's tenant.
	Tenant string `json:"tenant,omitempty"`
}

// DNSRecord is a record the domain's owner creates in its DNS zone.
type DNSRecord struct {
	Type  string `json:"type"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

// DomainDetail is a custom domain in answers: the stored record, the name
// it must point to and the DNS records that prove control of it.
type DomainDetail struct {
	model.Domain
	// Target is the service's gateway name the domain's CNAME points to.
	Target string `json:"target"`
	// Records are to be created: the TXT record holding the token and a
	// CNAME to Target.
	Records []DNSRecord `json:"records"`
	// Alternatives may replace the CNAME (at a zone apex, where a CNAME is
	// not allowed): A/AAAA records of every one of the gateway's public
	// addresses. Empty when the gateway knows none.
	Alternatives []DNSRecord `json:"alternatives,omitempty"`
}

func (s *Server) domainDetail(d model.Domain) DomainDetail {
	target := d.Service + "." + s.Info.Domain
	out := DomainDetail{Domain: d, Target: target, Records: []DNSRecord{
		{Type: "TXT", Name: model.ChallengeName(d.Name), Value: d.Token},
		{Type: "CNAME", Name: d.Name, Value: target},
	}}
	for _, a := range s.PublicAddrs {
		typ := "A"
		if a.Is6() {
			typ = "AAAA"
		}
		out.Alternatives = append(out.Alternatives, DNSRecord{Type: typ, Name: d.Name, Value: a.String()})
	}
	return out
}

// checkDomainName checks a custom domain name given in field (for
// messages) and refuses names of the gateway's own domain.
func (s *Server) checkDomainName(field, name string) error {
	if err := model.ValidateDomainName(name); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if s.Info.Domain != "" && model.IsUnder(name, s.Info.Domain) {
		return fmt.Errorf("%s: %q is under the gateway's own domain %s, whose names are served already; give a domain of your own", field, name, s.Info.Domain)
	}
	return nil
}

func (s *Server) createDomain(w http.ResponseWriter, r *http.Request, c caller) {
	var req DomainRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.checkDomainName("name", req.Name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.Service == "" {
		writeError(w, http.StatusBadRequest, "service: name the service the domain is served by")
		return
	}
	if err := model.ValidateName(req.Service); err != nil {
		writeError(w, http.StatusBadRequest, "service: "+err.Error())
		return
	}
	tenant, status, err := s.owner(r.Context(), c, req.Tenant, "domains")
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	sv, _, err := store.GetService(r.Context(), s.Store, req.Service)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("service: service %q does not exist (create it first, or expose it with a token)", req.Service))
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
	case protocolOf(sv).Forwarded():
		writeError(w, http.StatusBadRequest, fmt.Sprintf("service: service %q is a %s service, served on a port of its own, not by name; domains serve http, h2c and tls services", req.Service, protocolOf(sv)))
		return
	}
	d := model.Domain{Name: req.Name, Tenant: tenant, Service: req.Service, Token: model.NewDomainToken(),
		State: model.DomainPending, Created: s.now().UTC()}
	if _, err := store.CreateDomain(r.Context(), s.Store, d); err != nil {
		if !errors.Is(err, store.ErrConflict) {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		cur, _, gerr := store.GetDomain(r.Context(), s.Store, req.Name)
		switch {
		case gerr == nil && cur.Tenant == tenant && cur.Service == req.Service:
			// Added before by the same owner: the same records again.
			w.Header().Set("Location", "/v1/domains/"+req.Name)
			writeJSON(w, http.StatusOK, s.domainDetail(cur))
		case gerr == nil && cur.Tenant == tenant:
			writeError(w, http.StatusConflict, fmt.Sprintf("domain %q is attached to your service %q already; remove it first to move it", req.Name, cur.Service))
		default:
			writeError(w, http.StatusConflict, fmt.Sprintf("domain %q is held by another tenant", req.Name))
		}
		return
	}
	s.log().Info("domain added", "domain", d.Name, "service", d.Service, "tenant", tenant)
	w.Header().Set("Location", "/v1/domains/"+d.Name)
	writeJSON(w, http.StatusCreated, s.domainDetail(d))
}

func (s *Server) listDomains(w http.ResponseWriter, r *http.Request, c caller) {
	var ds []model.Domain
	var err error
	if c.admin {
		ds, err = store.ListDomains(r.Context(), s.Store)
	} else {
		ds, err = store.DomainsOf(r.Context(), s.Store, c.tenant)
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]DomainDetail, 0, len(ds))
	for _, d := range ds {
		out = append(out, s.domainDetail(d))
	}
	writeJSON(w, http.StatusOK, out)
}

// callerDomain reads the domain named in the path for caller c, or answers
// the error and returns false.
func (s *Server) callerDomain(w http.ResponseWriter, r *http.Request, c caller) (model.Domain, bool) {
	name := r.PathValue("name")
	if err := model.ValidateDomainName(name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return model.Domain{}, false
	}
	d, _, err := store.GetDomain(r.Context(), s.Store, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("domain %q is not added", name))
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	case !c.admin && d.Tenant != c.tenant:
		writeError(w, http.StatusForbidden, fmt.Sprintf("domain %q belongs to another tenant", name))
	default:
		return d, true
	}
	return model.Domain{}, false
}

func (s *Server) getDomain(w http.ResponseWriter, r *http.Request, c caller) {
	if d, ok := s.callerDomain(w, r, c); ok {
		writeJSON(w, http.StatusOK, s.domainDetail(d))
	}
}

var errDomainNotYours = errors.New("belongs to another tenant")

func (s *Server) deleteDomain(w http.ResponseWriter, r *http.Request, c caller) {
	d, ok := s.callerDomain(w, r, c)
	if !ok {
		return
	}
	err := store.DeleteDomain(r.Context(), s.Store, d.Name, func(cur model.Domain) error {
		if !c.admin && cur.Tenant != c.tenant {
			return errDomainNotYours
		}
		return nil
	})
	switch {
	case err == nil:
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("domain %q is not added", d.Name))
		return
	case errors.Is(err, errDomainNotYours):
		writeError(w, http.StatusForbidden, fmt.Sprintf("domain %q belongs to another tenant", d.Name))
		return
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log().Info("domain removed", "domain", d.Name, "tenant", d.Tenant)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) verifyDomain(w http.ResponseWriter, r *http.Request, c caller) {
	d, ok := s.callerDomain(w, r, c)
	if !ok {
		return
	}
	if s.VerifyDomain == nil {
		writeError(w, http.StatusServiceUnavailable, "this gateway does not verify domains")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), verifyTimeout)
	defer cancel()
	got, err := s.VerifyDomain(ctx, d.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("domain %q is not added", d.Name))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, s.domainDetail(got))
}

// verifyTimeout bounds one check of a proof of control (a custom domain's
// or a zone's) asked for through the API.
const verifyTimeout = 20 * time.Second
