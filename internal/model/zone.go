package model

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// ZoneState says whether a tenant has proved control of a zone.
type ZoneState string

// Zone states.
const (
	// ZonePending: added, its proof of control not yet seen; not served.
	ZonePending ZoneState = "pending"
	// ZoneVerified: the proof was seen; the gateway's DNS server answers it.
	ZoneVerified ZoneState = "verified"
)

// Zone is a DNS zone a tenant delegated to the gateway. It is served only
// once Verified: the tenant showed its Token in a TXT record at
// ChallengeName.
type Zone struct {
	// Name is the zone apex, lower case, without the trailing dot.
	Name   string    `json:"name"`
	Tenant string    `json:"tenant"`
	Token  string    `json:"token"`
	State  ZoneState `json:"state"`
	// Created is when the zone was added.
	Created time.Time `json:"created"`
	// Verified is when the proof was seen; zero while pending.
	Verified time.Time `json:"verified,omitzero"`
}

// ChallengeName is the name whose TXT record must hold the zone's token.
func (z Zone) ChallengeName() string { return ChallengeLabel + "." + z.Name }

// Record types a zone may hold.
var RecordTypes = []string{"A", "AAAA", "CNAME", "TXT", "MX", "SRV", "CAA"}

// Limits of a zone's records.
const (
	// MaxRecords is the most records one zone holds.
	MaxRecords = 1000
	// MaxTXT is the most bytes of text one TXT record holds (its strings together).
	MaxTXT = 4096
	// maxData bounds the presentation form of a record's data as given.
	maxData = 16 << 10
	// MinTTL and MaxTTL bound a record's TTL in seconds; 0 means DefaultTTL.
	MinTTL, MaxTTL = 30, 86400
	// DefaultTTL is the TTL of a record whose TTL is 0.
	DefaultTTL = 60
)

// Record is one record of a zone. Either Type and Data are set, or Service
// (and Type is empty): the name then answers A and AAAA with the gateway's
// addresses, for the tenant's service of that name.
type Record struct {
	// ID names the record within its zone (for removal).
	ID string `json:"id"`
	// Name is relative to the zone: "@" for the apex, "www", "_sip._tcp".
	Name string `json:"name"`
	// Type is one of RecordTypes; empty for a service record.
	Type string `json:"type,omitempty"`
	// TTL in seconds; 0 means DefaultTTL.
	TTL int `json:"ttl,omitempty"`
	// Data is the record data in zone-file presentation form: "192.0.2.1",
	// "10 mail.example.org.", "\"some text\"", "10 5 5060 sip.example.org.",
	// `0 issue "letsencrypt.org"`. Names without a final dot are relative
	// to the zone. Stored in canonical form.
	Data string `json:"data,omitempty"`
	// Service names one of the tenant's services; set instead of Type and Data.
	Service string `json:"service,omitempty"`
}

// NewZoneToken returns a fresh random token for a zone's proof of control.
func NewZoneToken() string { return "webgw-" + randomHex(16) }

// NewRecordID returns a fresh random record id.
func NewRecordID() string { return randomHex(6) }

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// ValidateZoneName checks a zone name and returns it lower case without a
// trailing dot: at least two labels of letters, digits, '-' (not at
// either end), at most 253 characters.
func ValidateZoneName(name string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	if n == "" {
		return "", fmt.Errorf("invalid zone %q: empty; give a domain such as example.org", name)
	}
	if len(n) > 253 {
		return "", fmt.Errorf("invalid zone %q: %d characters long; at most 253 are accepted", name, len(n))
	}
	labels := strings.Split(n, ".")
	for _, l := range labels {
		if err := validateLabel(l); err != nil {
			return "", fmt.Errorf("invalid zone %q: label %q: %w", name, l, err)
		}
	}
	if len(labels) < 2 {
		return "", fmt.Errorf("invalid zone %q: a top-level domain cannot be delegated; give a domain such as example.org", name)
	}
	return n, nil
}

// InZone reports whether name (lower case, no trailing dot) is zone or under it.
func InZone(name, zone string) bool {
	return name == zone || strings.HasSuffix(name, "."+zone)
}

// ValidateRecordName checks a record name relative to zone and returns it
// in canonical form ("@" for the apex, lower case). A name given as a
// fully qualified name under the zone ("www.example.org.") is accepted.
func ValidateRecordName(zone, name string) (string, error) {
	n := strings.ToLower(name)
	if n == "@" || n == zone+"." {
		return "@", nil
	}
	if strings.HasSuffix(n, ".") {
		rel, ok := strings.CutSuffix(n, "."+zone+".")
		if !ok {
			return "", fmt.Errorf("name: %q is not under the zone %s; give a name relative to it, or @ for the apex", name, zone)
		}
		n = rel
	}
	if n == "" {
		return "", fmt.Errorf("name: empty; give a name relative to the zone, such as www, or @ for the apex")
	}
	if len(n)+1+len(zone) > 253 {
		return "", fmt.Errorf("name: %q makes a name longer than 253 characters", name)
	}
	for _, l := range strings.Split(n, ".") {
		if err := validateRecordLabel(l); err != nil {
			return "", fmt.Errorf("name: %q: label %q: %w", name, l, err)
		}
	}
	return n, nil
}

// validateRecordLabel is validateLabel that also accepts '_' (as in
// _dmarc or _sip._tcp) and upper case (already folded by the caller).
func validateRecordLabel(l string) error {
	if l == "" {
		return fmt.Errorf("empty (two dots in a row?)")
	}
	if len(l) > 63 {
		return fmt.Errorf("%d characters long; at most 63 are accepted", len(l))
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		case c == '-':
			if i == 0 || i == len(l)-1 {
				return fmt.Errorf("must not start or end with '-'")
			}
		case c == '*':
			return fmt.Errorf("wildcards are not supported")
		default:
			return fmt.Errorf("character %q not accepted; use a-z, 0-9, '-' and '_'", c)
		}
	}
	return nil
}

// Fqdn is the record's owner name under zone, with the trailing dot.
func (r Record) Fqdn(zone string) string {
	if r.Name == "@" {
		return zone + "."
	}
	return r.Name + "." + zone + "."
}

// ValidateRecord checks r, a record of zone, and puts its name, type and
// data in canonical form. It does not check r against the zone's other
// records (see CheckRecords) nor that its service exists. Errors name the
// field.
func ValidateRecord(zone string, r *Record) error {
	name, err := ValidateRecordName(zone, r.Name)
	if err != nil {
		return err
	}
	r.Name = name
	if r.TTL != 0 && (r.TTL < MinTTL || r.TTL > MaxTTL) {
		return fmt.Errorf("ttl: %d not accepted; use %d to %d seconds, or 0 for %d", r.TTL, MinTTL, MaxTTL, DefaultTTL)
	}
	if r.Service != "" {
		if r.Type != "" || r.Data != "" {
			return fmt.Errorf("service: a service record has no type and no data (it answers A and AAAA with the gateway's addresses); leave type and data out")
		}
		if err := ValidateName(r.Service); err != nil {
			return fmt.Errorf("service: %w", err)
		}
		return nil
	}
	r.Type = strings.ToUpper(r.Type)
	if r.Type == "" {
		return fmt.Errorf("type: empty; use one of %s, or give service", strings.Join(RecordTypes, ", "))
	}
	known := false
	for _, t := range RecordTypes {
		known = known || t == r.Type
	}
	if !known {
		return fmt.Errorf("type: %q not accepted; use one of %s", r.Type, strings.Join(RecordTypes, ", "))
	}
	rr, err := r.parse(zone)
	if err != nil {
		return err
	}
	r.Data = strings.TrimPrefix(rr.String(), rr.Header().String())
	return nil
}

// RR returns the resource record of r, a valid record of zone (not a
// service record), with TTL DefaultTTL when r's is 0.
func (r Record) RR(zone string) (mdns.RR, error) { return r.parse(zone) }

// parse parses r's data as a zone-file line of zone and checks it.
func (r Record) parse(zone string) (mdns.RR, error) {
	d := strings.TrimSpace(r.Data)
	if d == "" {
		return nil, fmt.Errorf("data: empty; give the %s record's data", r.Type)
	}
	if len(d) > maxData {
		return nil, fmt.Errorf("data: %d bytes long; at most %d are accepted", len(d), maxData)
	}
	for _, c := range d {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return nil, fmt.Errorf("data: control character %q not accepted; give the data on one line", c)
		}
		if c == '(' || c == ')' || c == ';' {
			if r.Type != "TXT" && r.Type != "CAA" {
				return nil, fmt.Errorf("data: character %q not accepted in %s data", c, r.Type)
			}
		}
	}
	ttl := r.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	line := fmt.Sprintf("%s %d IN %s %s\n", r.Fqdn(zone), ttl, r.Type, d)
	zp := mdns.NewZoneParser(strings.NewReader(line), zone+".", "")
	zp.SetIncludeAllowed(false)
	rr, ok := zp.Next()
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("data: %q is not valid %s data: %v", r.Data, r.Type, parseReason(err))
	}
	if !ok || rr == nil {
		return nil, fmt.Errorf("data: %q is not valid %s data", r.Data, r.Type)
	}
	if _, more := zp.Next(); more {
		return nil, fmt.Errorf("data: %q holds more than one record", r.Data)
	}
	if rr.Header().Rrtype != mdns.StringToType[r.Type] {
		return nil, fmt.Errorf("data: %q is not valid %s data", r.Data, r.Type)
	}
	switch v := rr.(type) {
	case *mdns.TXT:
		n := 0
		for _, s := range v.Txt {
			n += len(s)
		}
		if n > MaxTXT {
			return nil, fmt.Errorf("data: TXT text is %d bytes; at most %d are accepted", n, MaxTXT)
		}
	case *mdns.CAA:
		switch v.Tag {
		case "issue", "issuewild", "iodef", "issuemail", "issuevmc":
		default:
			return nil, fmt.Errorf("data: CAA tag %q not accepted; use issue, issuewild, iodef, issuemail or issuevmc", v.Tag)
		}
	}
	return rr, nil
}

// parseReason is the useful part of a miekg/dns parse error.
func parseReason(err error) string {
	if pe, ok := err.(*mdns.ParseError); ok {
		s := pe.Error()
		if i := strings.Index(s, ": "); i >= 0 {
			s = s[i+2:]
		}
		if i := strings.Index(s, ` at line:`); i >= 0 {
			s = s[:i]
		}
		return s
	}
	return err.Error()
}

// CheckRecords checks the records of zone together: at most MaxRecords,
// no CNAME at the apex, nothing else at a CNAME's name, at most one
// service record at a name and no A or AAAA beside it, no record twice.
// The records must each be valid (ValidateRecord). The error names the
// record at fault by its name.
func CheckRecords(zone string, recs []Record) error {
	if len(recs) > MaxRecords {
		return fmt.Errorf("the zone would hold %d records; at most %d are accepted", len(recs), MaxRecords)
	}
	type seen struct{ cname, service, addr, other int }
	byName := map[string]*seen{}
	same := map[string]bool{}
	for _, r := range recs {
		s := byName[r.Name]
		if s == nil {
			s = &seen{}
			byName[r.Name] = s
		}
		switch {
		case r.Service != "":
			s.service++
		case r.Type == "CNAME":
			if r.Name == "@" {
				return fmt.Errorf("type: a CNAME cannot be at the zone's apex (@), which holds SOA and NS")
			}
			s.cname++
		case r.Type == "A" || r.Type == "AAAA":
			s.addr++
		default:
			s.other++
		}
		key := r.Name + " " + r.Type + " " + r.Data + " " + r.Service
		if same[key] {
			return fmt.Errorf("data: %s %s %s exists already", r.Name, orType(r), r.Data+r.Service)
		}
		same[key] = true
		switch {
		case s.cname > 0 && s.cname+s.service+s.addr+s.other > 1:
			return fmt.Errorf("name: %q holds a CNAME, which must be the only record at its name", r.Name)
		case s.service > 1:
			return fmt.Errorf("name: %q points at a service already; remove that record first", r.Name)
		case s.service > 0 && s.addr > 0:
			return fmt.Errorf("name: %q points at a service, which answers A and AAAA; it cannot also hold A or AAAA records", r.Name)
		}
	}
	return nil
}

func orType(r Record) string {
	if r.Service != "" {
		return "service"
	}
	return r.Type
}
