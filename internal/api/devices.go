package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/webgw/webgw/internal/model"
	"github.com/webgw/webgw/internal/store"
)

// WG4to6 configures the IPv4-to-IPv6 access endpoints, /v1/4to6/devices:
// WireGuard devices that get their own public IPv6 address through the
// gateway.
type WG4to6 struct {
	// Plan is where devices' addresses are allocated from.
	Plan model.DevicePlan
	// PublicKey is the gateway's WireGuard public key, the devices' peer.
	PublicKey model.WGKey
	// Endpoint is the HOST:PORT devices dial (an IPv4 address, for
	// IPv4-only networks).
	Endpoint string
	// DNS are the resolvers put in devices' configs; empty means no DNS line.
	DNS []netip.Addr
	// MaxDevicesPerTenant bounds one tenant's devices; 0 means no bound.
	MaxDevicesPerTenant int
	// Stats returns the engine's counters by device public key; nil means
	// none are known (all zero).
	Stats func() map[model.WGKey]DeviceStats
}

// DeviceStats are one device's counters on this gateway.
type DeviceStats struct {
	// RxBytes came from the device, TxBytes went to it.
	RxBytes, TxBytes int64
	// LastHandshake is the device's last WireGuard handshake; zero if none.
	LastHandshake time.Time
}

// DeviceRequest is the body of POST /v1/4to6/devices.
type DeviceRequest struct {
	// Name is the tenant's name for the device, one DNS label.
	Name string `json:"name"`
	// PublicKey is the device's WireGuard public key (wg pubkey). The
	// private key stays on the device: the gateway never takes it.
	PublicKey string `json:"public_key"`
	// Open are the inbound ports to open ("tcp/22", "udp/60000", "all");
	// empty: only established and related traffic comes in.
	Open []string `json:"open,omitempty"`
	// Tenant owns the device: required with the admin token; with a tenant
	// token empty or the caller's tenant.
	Tenant string `json:"tenant,omitempty"`
}

// DevicePatch is the body of PATCH /v1/4to6/devices/{name}: either the
// whole open list, or ports to add and to remove.
type DevicePatch struct {
	// Open replaces the open list ([] closes every port).
	Open *[]string `json:"open,omitempty"`
	// Add are ports opened in addition.
	Add []string `json:"add,omitempty"`
	// Remove are ports closed.
	Remove []string `json:"remove,omitempty"`
}

// DeviceDetail is a device in answers: the stored record, its counters on
// this gateway and, for one device, its wg-quick config.
type DeviceDetail struct {
	model.Device
	// RxBytes came from the device, TxBytes went to it (this gateway only).
	RxBytes int64 `json:"rx_bytes"`
	TxBytes int64 `json:"tx_bytes"`
	// LastHandshake is absent before the first.
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	// Config is the device's wg-quick config, its private key replaced by
	// PrivateKeyPlaceholder; in the answers about one device only.
	Config string `json:"config,omitempty"`
}

// PrivateKeyPlaceholder stands for the private key in a device's config:
// the gateway never has it. FillPrivateKey puts the key in.
const PrivateKeyPlaceholder = "<your private key>"

// privateKeyLine is the config line holding the placeholder.
const privateKeyLine = "PrivateKey = " + PrivateKeyPlaceholder + "\n"

// FillPrivateKey puts private key k into config, a device config from the
// API, in place of PrivateKeyPlaceholder.
func FillPrivateKey(config string, k model.WGKey) (string, error) {
	if strings.Count(config, privateKeyLine) != 1 {
		return "", errors.New("the device config holds no private key placeholder line")
	}
	return strings.Replace(config, privateKeyLine, "PrivateKey = "+k.String()+"\n", 1), nil
}

// DeviceConfig is the wg-quick config of device d: its interface with the
// placeholder for the private key, its address and DNS, and the gateway as
// its one peer, which all IPv6 traffic (::/0) goes to.
func (w *WG4to6) DeviceConfig(d model.Device) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# webgw 4to6 device %s of tenant %s\n", d.Name, d.Tenant)
	b.WriteString("[Interface]\n")
	b.WriteString(privateKeyLine)
	fmt.Fprintf(&b, "Address = %s\n", model.InterfaceAddr(d.Address))
	if len(w.DNS) > 0 {
		dns := make([]string, len(w.DNS))
		for i, a := range w.DNS {
			dns[i] = a.String()
		}
		fmt.Fprintf(&b, "DNS = %s\n", strings.Join(dns, ", "))
	}
	b.WriteString("\n[Peer]\n")
	fmt.Fprintf(&b, "PublicKey = %s\n", w.PublicKey)
	fmt.Fprintf(&b, "Endpoint = %s\n", w.Endpoint)
	b.WriteString("AllowedIPs = ::/0\n")
	b.WriteString("PersistentKeepalive = 25\n")
	return b.String()
}

// errNo4to6 answers the device endpoints of a gateway without 4to6.
const errNo4to6 = "4to6 (IPv4-to-IPv6 WireGuard access) is off on this gateway; the operator turns it on with --wg-prefix"

// with4to6 answers 503 when the gateway has no 4to6.
func (s *Server) with4to6(h func(http.ResponseWriter, *http.Request, caller)) func(http.ResponseWriter, *http.Request, caller) {
	return func(w http.ResponseWriter, r *http.Request, c caller) {
		if s.WG == nil {
			writeError(w, http.StatusServiceUnavailable, errNo4to6)
			return
		}
		h(w, r, c)
	}
}

// deviceDetail is d with its counters (from stats, which may be nil).
func deviceDetail(d model.Device, stats map[model.WGKey]DeviceStats) DeviceDetail {
	if d.Open == nil {
		d.Open = []string{}
	}
	out := DeviceDetail{Device: d}
	if k, err := model.ParseWGKey(d.PublicKey); err == nil {
		st := stats[k]
		out.RxBytes, out.TxBytes, out.LastHandshake = st.RxBytes, st.TxBytes, st.LastHandshake
	}
	return out
}

func (s *Server) deviceStats() map[model.WGKey]DeviceStats {
	if s.WG.Stats == nil {
		return nil
	}
	return s.WG.Stats()
}

// fullDetail is deviceDetail with the config.
func (s *Server) fullDetail(d model.Device) DeviceDetail {
	out := deviceDetail(d, s.deviceStats())
	out.Config = s.WG.DeviceConfig(d)
	return out
}

// deviceTenant is the tenant whose device a path names: the ?tenant= the
// admin token must give, or the caller's own. On error it returns the
// status to answer.
func deviceTenant(r *http.Request, c caller) (string, int, error) {
	q := r.URL.Query().Get("tenant")
	switch {
	case c.admin && q == "":
		return "", http.StatusBadRequest, errors.New("tenant: the admin token must name the device's tenant (?tenant=NAME)")
	case c.admin:
		if err := model.ValidateTenantName(q); err != nil {
			return "", http.StatusBadRequest, fmt.Errorf("tenant: %w", err)
		}
		return q, 0, nil
	case q != "" && q != c.tenant:
		return "", http.StatusForbidden, fmt.Errorf("tenant: a tenant token reaches its own devices (%q) only", c.tenant)
	}
	return c.tenant, 0, nil
}

// deviceLocation is the path of a device, with ?tenant= for the admin.
func deviceLocation(d model.Device, c caller) string {
	p := "/v1/4to6/devices/" + d.Name
	if c.admin {
		p += "?tenant=" + url.QueryEscape(d.Tenant)
	}
	return p
}

// devicePath reads the device name and tenant of a path; on error it has
// answered.
func devicePath(w http.ResponseWriter, r *http.Request, c caller) (tenant, name string, ok bool) {
	name = r.PathValue("name")
	if err := model.ValidateDeviceName(name); err != nil {
		writeError(w, http.StatusBadRequest, "name: "+err.Error())
		return "", "", false
	}
	tenant, status, err := deviceTenant(r, c)
	if err != nil {
		writeError(w, status, err.Error())
		return "", "", false
	}
	return tenant, name, true
}

// deviceWriteError answers the store's error about tenant's device name,
// if any, and reports whether it did.
func (s *Server) deviceWriteError(w http.ResponseWriter, tenant, name string, ifRev int64, err error) bool {
	var bre *badRequestError
	switch {
	case err == nil:
		return false
	case errors.As(err, &bre):
		writeError(w, http.StatusBadRequest, bre.Error())
	case errors.Is(err, store.ErrInvalidDevice):
		writeError(w, http.StatusBadRequest, strings.ReplaceAll(err.Error(), "store: ", ""))
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, fmt.Sprintf("tenant %q has no device %q", tenant, name))
	case errors.Is(err, store.ErrDeviceExists):
		writeError(w, http.StatusConflict, fmt.Sprintf("name: tenant %q has a device %q already; remove it first, or choose another name", tenant, name))
	case errors.Is(err, store.ErrKeyInUse):
		writeError(w, http.StatusConflict, "public_key: another device uses this key; one key is one device (make a new key pair: wg genkey | tee private.key | wg pubkey)")
	case errors.Is(err, store.ErrAddressesFull):
		writeError(w, http.StatusConflict, fmt.Sprintf("every address block of the gateway's prefix %s is held; no device can be added", s.WG.Plan.Prefix))
	case errors.Is(err, store.ErrDeviceQuota):
		writeError(w, http.StatusForbidden, fmt.Sprintf("tenant %q holds its quota of %d devices; remove one first", tenant, s.WG.MaxDevicesPerTenant))
	case errors.Is(err, store.ErrConflict) && ifRev > 0:
		writeError(w, http.StatusPreconditionFailed, fmt.Sprintf("device %q changed since revision %d (If-Match); read it again", name, ifRev))
	case errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, fmt.Sprintf("device %q is being changed by others; try again", name))
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
	return true
}

// checkDeviceRequest checks what a device request says by itself. Errors
// name the field.
func (s *Server) checkDeviceRequest(req *DeviceRequest) error {
	if req.Name == "" {
		return errors.New("name: required: name the device, such as laptop (one DNS label)")
	}
	if err := model.ValidateDeviceName(req.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if req.PublicKey == "" {
		return errors.New("public_key: required: the device's WireGuard public key (wg genkey | tee private.key | wg pubkey); the private key stays on the device")
	}
	k, err := model.ParseWGKey(req.PublicKey)
	if err != nil {
		return fmt.Errorf("public_key: %w", err)
	}
	switch {
	case k.IsZero():
		return errors.New("public_key: the all-zero key is no key")
	case k == s.WG.PublicKey:
		return errors.New("public_key: that is the gateway's own key; give the device's")
	}
	open, err := model.ParseOpen(req.Open)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	req.Open = open
	return nil
}

func (s *Server) createDevice(w http.ResponseWriter, r *http.Request, c caller) {
	var req DeviceRequest
	if err := decode(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.checkDeviceRequest(&req); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	tenant, status, err := s.owner(r.Context(), c, req.Tenant, "devices")
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	d := model.Device{Name: req.Name, Tenant: tenant, PublicKey: req.PublicKey, Open: req.Open, Created: s.now().UTC()}
	d, err = store.CreateDevice(r.Context(), s.Store, d, s.WG.Plan, s.WG.MaxDevicesPerTenant)
	if s.deviceWriteError(w, tenant, req.Name, 0, err) {
		return
	}
	s.log().Info("4to6 device added", "device", d.Name, "tenant", d.Tenant, "address", d.Address.String(), "open", strings.Join(d.Open, " "))
	w.Header().Set("Location", deviceLocation(d, c))
	writeJSON(w, http.StatusCreated, s.fullDetail(d))
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, c caller) {
	q := r.URL.Query().Get("tenant")
	var ds []model.Device
	var err error
	switch {
	case c.admin && q == "":
		ds, err = store.ListDevices(r.Context(), s.Store)
	default:
		tenant, status, terr := deviceTenant(r, c)
		if terr != nil {
			writeError(w, status, terr.Error())
			return
		}
		ds, err = store.DevicesOf(r.Context(), s.Store, tenant)
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	stats := s.deviceStats()
	out := make([]DeviceDetail, 0, len(ds))
	for _, d := range ds {
		out = append(out, deviceDetail(d, stats))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request, c caller) {
	tenant, name, ok := devicePath(w, r, c)
	if !ok {
		return
	}
	d, rev, err := store.GetDevice(r.Context(), s.Store, tenant, name)
	if s.deviceWriteError(w, tenant, name, 0, err) {
		return
	}
	setRevision(w, rev)
	writeJSON(w, http.StatusOK, s.fullDetail(d))
}

// checkDevicePatch checks a patch by itself. Errors name the field.
func checkDevicePatch(p *DevicePatch) error {
	switch {
	case p.Open != nil && (len(p.Add) > 0 || len(p.Remove) > 0):
		return errors.New("open: give either the whole list (open) or the changes (add, remove), not both")
	case p.Open == nil && len(p.Add) == 0 && len(p.Remove) == 0:
		return errors.New(`open: nothing to change; give the whole list ("open": ["tcp/22"], [] closes all), or "add" and "remove"`)
	}
	for _, f := range []struct {
		field string
		list  []string
	}{{"add", p.Add}, {"remove", p.Remove}} {
		if _, err := model.ParseOpen(f.list); err != nil {
			return fmt.Errorf("%s: %w", f.field, err)
		}
	}
	if p.Open != nil {
		open, err := model.ParseOpen(*p.Open)
		if err != nil {
			return fmt.Errorf("open: %w", err)
		}
		p.Open = &open
	}
	return nil
}

// applyPatch changes open ports as p says (checked).
func applyPatch(d *model.Device, p *DevicePatch) error {
	if p.Open != nil {
		d.Open = *p.Open
		return nil
	}
	if len(p.Remove) > 0 && slices.Equal(d.Open, []string{model.OpenAll}) && !slices.Contains(p.Remove, model.OpenAll) {
		return &badRequestError{errors.New(`remove: every port is open ("all"), so one cannot be closed; remove all, or give the whole list with open`)}
	}
	d.Open = slices.DeleteFunc(d.Open, func(o string) bool { return slices.Contains(p.Remove, o) })
	d.Open = append(d.Open, p.Add...)
	return nil
}

func (s *Server) patchDevice(w http.ResponseWriter, r *http.Request, c caller) {
	tenant, name, ok := devicePath(w, r, c)
	if !ok {
		return
	}
	ifRev, err := ifMatch(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var p DevicePatch
	if err := decode(w, r, &p); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := checkDevicePatch(&p); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	d, rev, err := store.UpdateDevice(r.Context(), s.Store, tenant, name, ifRev, func(d *model.Device) error { return applyPatch(d, &p) })
	if s.deviceWriteError(w, tenant, name, ifRev, err) {
		return
	}
	s.log().Info("4to6 device ports changed", "device", name, "tenant", tenant, "open", strings.Join(d.Open, " "))
	setRevision(w, rev)
	writeJSON(w, http.StatusOK, s.fullDetail(d))
}

func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request, c caller) {
	tenant, name, ok := devicePath(w, r, c)
	if !ok {
		return
	}
	ifRev, err := ifMatch(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	d, err := store.DeleteDevice(r.Context(), s.Store, tenant, name, ifRev)
	if s.deviceWriteError(w, tenant, name, ifRev, err) {
		return
	}
	s.log().Info("4to6 device removed", "device", name, "tenant", tenant, "address", d.Address.String())
	w.WriteHeader(http.StatusNoContent)
}
