package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/resolve"
	"github.com/webgw/webgw/internal/store"
)

// ZoneRequest is the body of POST /v1/dns/zones.
type ZoneRequest struct {
	// Name is the zone, such as example.org.
	Name string `json:"name"`
	// Tenant owns the zone: required with the admin token; with a tenant
	// token empty or the caller's tenant.
	Tenant string `json:"tenant,omitempty"`
}

// ZoneDetail answers the zone endpoints: the zone, and what its tenant
// must publish to have it served.
type ZoneDetail struct {
	model.Zone
	// Challenge is the TXT record that proves control of the zone, to
	// create at the zone's current DNS provider before verifying.
	Challenge ChallengeRecord `json:"challenge"`
	// NameServers are the gateway's name servers, to set as the zone's NS
	// records at its registrar (the delegation).
	NameServers []string `json:"name_servers"`
	// Records is the number of records in the zone.
	Records int `json:"records"`
}

// ChallengeRecord is a TXT record to create.
type ChallengeRecord struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

// RecordRequest is the body of POST /v1/dns/zones/{zone}/records: a
// model.Record without its id.
type RecordRequest struct {
	Name    string `json:"name"`
	Type    string `json:"type,omitempty"`
	TTL     int    `json:"ttl,omitempty"`
	Data    string `json:"data,omitempty"`
	Service string `json:"service,omitempty"`
}

func (s *Server) zoneDetail(z model.Zone, records int) ZoneDetail {
	d := ZoneDetail{Zone: z, Records: records,
		Challenge: ChallengeRecord{Name: z.ChallengeName(), Type: "TXT", Value: z.Token}}
	if s.Info.Domain != "" {
		d.NameServers = []string{"ns1." + s.Info.Domain, "ns2." + s.Info.Domain}
	}
	return d
}

// checkZoneName refuses a zone the gateway cannot delegate: its own domain,
// a zone under it, or one that contains it.
func (s *Server) checkZoneName(name string) error {
	if d := s.Info.Domain; d != "" && (model.InZone(name, d) || model.InZone(d, name)) {
		return fmt.Errorf("name: %s overlaps the gateway's own domain %s; use a domain of your own", name, d)
	}
	return nil
}

// pathZone returns the zone in the path, or answers 400.
func pathZone(w http.ResponseWriter, r *http.Request) (string, bool) {
	name, err := model.ValidateZoneName(r.PathValue("zone"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "zone: "+err.Error())
		return "", false
	}
	return name, true
}

// zoneOf reads the caller's zone of the path, or answers 404 or 403.
func (s *Server) zoneOf(w http.ResponseWriter, r *http.Request, c caller) (model.Zone, bool) {
	name, ok := pathZone(w, r)
	if !ok {
		return model.Zone{}, false
	}
	z, _, err := store.GetZone(r.Context(), s.Store, name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("zone %s does not exist (add it with POST /v1/dns/zones)", name))
		return z, false
	case err != nil:
		writeError(w, http.StatusInternalServerError, "read zone: "+err.Error())
		return z, false
	case !c.admin && z.Tenant != c.tenant:
		writeError(w, http.StatusForbidden, fmt.Sprintf("zone %s belongs to another tenant", name))
		return z, false
	}
	return z, true
}

func (s *Server) createZone(w http.ResponseWriter, r *http.Request, c caller) {
	var req ZoneRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	name, err := model.ValidateZoneName(req.Name)
	if err != nil {
		writeError(w, http.StatusBadRequest, "name: "+err.Error())
		return
	}
	if err := s.checkZoneName(name); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	tenant, status, err := s.owner(r.Context(), c, req.Tenant, "zones")
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	z := model.Zone{Name: name, Tenant: tenant, Token: model.NewZoneToken(), State: model.ZonePending, Created: s.now().UTC()}
	_, err = store.CreateZone(r.Context(), s.Store, z)
	var ce *store.ZoneConflictError
	switch {
	case errors.As(err, &ce) && ce.Same:
		if cur, _, gerr := store.GetZone(r.Context(), s.Store, name); gerr == nil && cur.Tenant == tenant {
			writeError(w, http.StatusConflict, fmt.Sprintf("zone %s exists already (see GET /v1/dns/zones/%s)", name, name))
			return
		}
		writeError(w, http.StatusConflict, fmt.Sprintf("zone %s is held by another tenant", name))
		return
	case errors.As(err, &ce):
		writeError(w, http.StatusConflict, fmt.Sprintf("zone %s overlaps %s, which another tenant holds", name, ce.Zone))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log().Info("dns zone added", "zone", name, "tenant", tenant)
	w.Header().Set("Location", "/v1/dns/zones/"+name)
	writeJSON(w, http.StatusCreated, s.zoneDetail(z, 0))
}

func (s *Server) listZones(w http.ResponseWriter, r *http.Request, c caller) {
	zones, err := store.ListZones(r.Context(), s.Store)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "list zones: "+err.Error())
		return
	}
	out := []ZoneDetail{}
	for _, z := range zones {
		if !c.admin && z.Tenant != c.tenant {
			continue
		}
		recs, _, err := store.ZoneRecords(r.Context(), s.Store, z.Name)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "list records: "+err.Error())
			return
		}
		out = append(out, s.zoneDetail(z, len(recs)))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getZone(w http.ResponseWriter, r *http.Request, c caller) {
	z, ok := s.zoneOf(w, r, c)
	if !ok {
		return
	}
	recs, _, err := store.ZoneRecords(r.Context(), s.Store, z.Name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "list records: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, s.zoneDetail(z, len(recs)))
}

func (s *Server) deleteZone(w http.ResponseWriter, r *http.Request, c caller) {
	name, ok := pathZone(w, r)
	if !ok {
		return
	}
	err := store.DeleteZone(r.Context(), s.Store, name, func(z model.Zone) error {
		if !c.admin && z.Tenant != c.tenant {
			return errNotYours
		}
		return nil
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("zone %s does not exist", name))
		return
	case errors.Is(err, errNotYours):
		writeError(w, http.StatusForbidden, fmt.Sprintf("zone %s belongs to another tenant", name))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log().Info("dns zone removed", "zone", name)
	w.WriteHeader(http.StatusNoContent)
}

// verifyZone looks up the zone's challenge TXT and marks it verified when
// one of its values is the token. 422 says what was found instead.
func (s *Server) verifyZone(w http.ResponseWriter, r *http.Request, c caller) {
	z, ok := s.zoneOf(w, r, c)
	if !ok {
		return
	}
	if z.State != model.ZoneVerified {
		if s.ZoneTXT == nil {
			writeError(w, http.StatusServiceUnavailable, "this gateway cannot look up DNS records to verify zones")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), verifyTimeout)
		vals, err := s.ZoneTXT(ctx, z.ChallengeName())
		cancel()
		want := fmt.Sprintf("create TXT %s with the value %q at the zone's DNS provider, wait for it to be published, and verify again", z.ChallengeName(), z.Token)
		switch {
		case errors.Is(err, resolve.ErrNotFound):
			writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("zone %s is not verified: no TXT record at %s; %s", z.Name, z.ChallengeName(), want))
			return
		case err != nil:
			writeError(w, http.StatusBadGateway, fmt.Sprintf("zone %s is not verified: look up TXT %s: %v", z.Name, z.ChallengeName(), err))
			return
		case !slices.Contains(vals, z.Token):
			writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("zone %s is not verified: TXT %s holds %s, not the zone's token; %s",
				z.Name, z.ChallengeName(), quoteAll(vals), want))
			return
		}
		var err2 error
		z, err2 = store.UpdateZone(r.Context(), s.Store, z.Name, func(cur *model.Zone) error {
			if cur.Tenant != z.Tenant || cur.Token != z.Token {
				return errReplaced
			}
			if cur.State != model.ZoneVerified {
				cur.State, cur.Verified = model.ZoneVerified, s.now().UTC()
			}
			return nil
		})
		if err2 != nil {
			writeError(w, http.StatusConflict, fmt.Sprintf("zone %s changed meanwhile (%v); try again", z.Name, err2))
			return
		}
		s.log().Info("dns zone verified", "zone", z.Name, "tenant", z.Tenant)
	}
	recs, _, err := store.ZoneRecords(r.Context(), s.Store, z.Name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "list records: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, s.zoneDetail(z, len(recs)))
}

func quoteAll(vals []string) string {
	q := make([]string, len(vals))
	for i, v := range vals {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

func (s *Server) listRecords(w http.ResponseWriter, r *http.Request, c caller) {
	z, ok := s.zoneOf(w, r, c)
	if !ok {
		return
	}
	recs, _, err := store.ZoneRecords(r.Context(), s.Store, z.Name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "list records: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, recs)
}

func (s *Server) createRecord(w http.ResponseWriter, r *http.Request, c caller) {
	z, ok := s.zoneOf(w, r, c)
	if !ok {
		return
	}
	var req RecordRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	rec := model.Record{Name: req.Name, Type: req.Type, TTL: req.TTL, Data: req.Data, Service: req.Service}
	if err := model.ValidateRecord(z.Name, &rec); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if rec.Service != "" {
		sv, _, err := store.GetService(r.Context(), s.Store, rec.Service)
		switch {
		case errors.Is(err, store.ErrNotFound) || err == nil && sv.Tenant != z.Tenant:
			writeError(w, http.StatusBadRequest, fmt.Sprintf("service: the zone's tenant has no service %q (see GET /v1/services)", rec.Service))
			return
		case err != nil:
			writeError(w, http.StatusInternalServerError, "read service: "+err.Error())
			return
		}
	}
	rec.ID = model.NewRecordID()
	var re *store.RecordsError
	_, err := store.UpdateZoneRecords(r.Context(), s.Store, z.Name, func(recs []model.Record) ([]model.Record, error) {
		for slices.ContainsFunc(recs, func(o model.Record) bool { return o.ID == rec.ID }) {
			rec.ID = model.NewRecordID()
		}
		return append(recs, rec), nil
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("zone %s does not exist", z.Name))
		return
	case errors.As(err, &re):
		writeError(w, http.StatusBadRequest, re.Error())
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log().Info("dns record added", "zone", z.Name, "record", rec.ID, "name", rec.Name, "type", rec.Type, "service", rec.Service)
	w.Header().Set("Location", "/v1/dns/zones/"+z.Name+"/records/"+rec.ID)
	writeJSON(w, http.StatusCreated, rec)
}

func (s *Server) deleteRecord(w http.ResponseWriter, r *http.Request, c caller) {
	z, ok := s.zoneOf(w, r, c)
	if !ok {
		return
	}
	id := r.PathValue("id")
	errNoRecord := errors.New("no such record")
	_, err := store.UpdateZoneRecords(r.Context(), s.Store, z.Name, func(recs []model.Record) ([]model.Record, error) {
		i := slices.IndexFunc(recs, func(o model.Record) bool { return o.ID == id })
		if i < 0 {
			return nil, errNoRecord
		}
		return slices.Delete(recs, i, i+1), nil
	})
	switch {
	case errors.Is(err, errNoRecord):
		writeError(w, http.StatusNotFound, fmt.Sprintf("zone %s has no record %q (see GET /v1/dns/zones/%s/records)", z.Name, id, z.Name))
		return
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("zone %s does not exist", z.Name))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.log().Info("dns record removed", "zone", z.Name, "record", id)
	w.WriteHeader(http.StatusNoContent)
}
