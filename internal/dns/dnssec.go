package dns

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base32"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/webgw/webgw/internal/store"
)

// Key is a zone's DNSSEC signing key: one combined signing key (flags 257,
// ECDSA P-256, algorithm 13) that signs every RRset, DNSKEY included.
type Key struct {
	DNSKEY *mdns.DNSKEY
	Priv   crypto.Signer
}

// DS returns the zone's DS record (SHA-256 digest), for its parent.
func (k *Key) DS() *mdns.DS { return k.DNSKEY.ToDS(mdns.SHA256) }

// KeySource gives the signing key of a zone apex (FQDN, lower case).
type KeySource interface {
	Key(ctx context.Context, apex string) (*Key, error)
}

// StoreKeys keeps each zone's key in the store (DNSSECPrefix + apex),
// made on first use, so every gateway of a cluster signs with the same key.
type StoreKeys struct {
	DB store.Store

	mu    sync.Mutex
	cache map[string]*Key // guarded by mu
}

// DNSSECPrefix is the key prefix of zones' signing keys.
const DNSSECPrefix = "dnssec/keys/"

var _ KeySource = (*StoreKeys)(nil)

type storedKey struct {
	DNSKEY  string `json:"dnskey"`
	Private string `json:"private"` // PKCS#8 PEM
}

// Key implements KeySource.
func (k *StoreKeys) Key(ctx context.Context, apex string) (*Key, error) {
	apex = strings.ToLower(mdns.Fqdn(apex))
	k.mu.Lock()
	defer k.mu.Unlock()
	if key := k.cache[apex]; key != nil {
		return key, nil
	}
	dbKey := DNSSECPrefix + strings.TrimSuffix(apex, ".")
	for range 3 {
		if e, err := k.DB.Get(ctx, dbKey); err == nil {
			key, err := parseStoredKey(e.Value)
			if err != nil {
				return nil, fmt.Errorf("dnssec key of %s: %w", apex, err)
			}
			if k.cache == nil {
				k.cache = map[string]*Key{}
			}
			k.cache[apex] = key
			return key, nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("dnssec key of %s: %w", apex, err)
		}
		b, err := newStoredKey(apex)
		if err != nil {
			return nil, err
		}
		// Create only: another gateway may make it at the same moment.
		if _, err := k.DB.Put(ctx, dbKey, b, 0); err != nil && !errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("dnssec key of %s: %w", apex, err)
		}
	}
	return nil, fmt.Errorf("dnssec key of %s: not settled", apex)
}

func newStoredKey(apex string) ([]byte, error) {
	dk := &mdns.DNSKEY{Hdr: mdns.RR_Header{Name: apex, Rrtype: mdns.TypeDNSKEY, Class: mdns.ClassINET, Ttl: 3600},
		Flags: 257, Protocol: 3, Algorithm: mdns.ECDSAP256SHA256}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	dk.PublicKey = publicKeyString(&priv.PublicKey)
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	return json.Marshal(storedKey{DNSKEY: dk.String(), Private: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))})
}

// publicKeyString is the DNSKEY public key field of an ECDSA P-256 key
// (RFC 6605: X then Y, 32 bytes each, base64).
func publicKeyString(pub *ecdsa.PublicKey) string {
	b := make([]byte, 64)
	pub.X.FillBytes(b[:32])
	pub.Y.FillBytes(b[32:])
	return base64.StdEncoding.EncodeToString(b)
}

var b32 = base32.HexEncoding.WithPadding(base32.NoPadding)

func toBase32Hex(b []byte) string { return strings.ToLower(b32.EncodeToString(b)) }

func fromBase32Hex(s string) ([]byte, error) { return b32.DecodeString(strings.ToUpper(s)) }

func parseStoredKey(b []byte) (*Key, error) {
	var sk storedKey
	if err := json.Unmarshal(b, &sk); err != nil {
		return nil, err
	}
	rr, err := mdns.NewRR(sk.DNSKEY)
	if err != nil {
		return nil, err
	}
	dk, ok := rr.(*mdns.DNSKEY)
	if !ok {
		return nil, errors.New("stored record is not a DNSKEY")
	}
	blk, _ := pem.Decode([]byte(sk.Private))
	if blk == nil {
		return nil, errors.New("no private key")
	}
	p, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := p.(crypto.Signer)
	if !ok {
		return nil, errors.New("private key cannot sign")
	}
	return &Key{DNSKEY: dk, Priv: signer}, nil
}

// sigValidity is how long an RRSIG is valid; it is made afresh for every
// answer, so resolvers always see one valid for days.
const (
	sigBefore   = time.Hour
	sigValidity = 7 * 24 * time.Hour
)

// secure adds DNSSEC to m, an answer for zone apex: the DNSKEY and
// NSEC3PARAM sets at the apex, NSEC3 proofs of denial made for the query
// ("white lies": each NSEC3 covers only the hash asked about, so the zone
// cannot be walked), and an RRSIG for every RRset of the answer and
// authority sections. exists reports whether a name has records (or names
// below it); types lists the types at an existing name.
func (s *Server) secure(m *mdns.Msg, q mdns.Question, apex string, exists func(string) bool, types func(string) []uint16) {
	key, err := s.Keys.Key(context.Background(), apex)
	if err != nil {
		s.log().Error("dnssec: no key; answering unsigned", "zone", apex, "err", err)
		return
	}
	name := strings.ToLower(q.Name)
	ttl := s.ttl()
	if name == apex && len(m.Answer) == 0 && m.Rcode == mdns.RcodeSuccess {
		switch q.Qtype {
		case mdns.TypeDNSKEY:
			dk := *key.DNSKEY
			dk.Hdr.Ttl = ttl
			m.Answer = []mdns.RR{&dk}
			m.Ns = nil
		case mdns.TypeNSEC3PARAM:
			m.Answer = []mdns.RR{&mdns.NSEC3PARAM{Hdr: s.hdr(apex, mdns.TypeNSEC3PARAM), Hash: mdns.SHA1, Iterations: 0, SaltLength: 0, Salt: ""}}
			m.Ns = nil
		}
	}
	switch {
	case m.Rcode == mdns.RcodeNameError:
		// Closest encloser, the next closer name, and the wildcard at the
		// closest encloser (RFC 5155 7.2.2).
		ce, next := closestEncloser(name, apex, exists)
		m.Ns = append(m.Ns, s.nsec3Match(ce, apex, types(ce)), s.nsec3Cover(next, apex), s.nsec3Cover("*."+ce, apex))
	case m.Rcode == mdns.RcodeSuccess && len(m.Answer) == 0:
		// NODATA: the name exists without the type (RFC 5155 7.2.3).
		m.Ns = append(m.Ns, s.nsec3Match(name, apex, types(name)))
	}
	now := time.Now()
	m.Answer = append(m.Answer, s.sign(m.Answer, key, apex, now)...)
	m.Ns = append(m.Ns, s.sign(m.Ns, key, apex, now)...)
}

// closestEncloser returns the longest existing ancestor of name within
// apex, and the next closer name (one label longer).
func closestEncloser(name, apex string, exists func(string) bool) (ce, next string) {
	next = name
	for n := name; n != apex; {
		_, parent, _ := strings.Cut(n, ".")
		if parent == "" || !strings.HasSuffix(parent, apex) {
			break
		}
		if parent == apex || exists(parent) {
			return parent, n
		}
		n = parent
	}
	return apex, next
}

// hashName is the NSEC3 hash of name (SHA-1, no salt, no extra iterations:
// RFC 9276), as 20 bytes.
func hashName(name string) []byte {
	b, _ := fromBase32Hex(mdns.HashName(name, mdns.SHA1, 0, ""))
	return b
}

func (s *Server) nsec3(owner, next []byte, apex string, types []uint16) *mdns.NSEC3 {
	return &mdns.NSEC3{
		Hdr:        mdns.RR_Header{Name: toBase32Hex(owner) + "." + apex, Rrtype: mdns.TypeNSEC3, Class: mdns.ClassINET, Ttl: s.ttl()},
		Hash:       mdns.SHA1,
		Iterations: 0, SaltLength: 0, Salt: "",
		HashLength: 20, NextDomain: strings.ToUpper(toBase32Hex(next)), TypeBitMap: types,
	}
}

// nsec3Match is an NSEC3 whose owner is name's hash, listing types.
func (s *Server) nsec3Match(name, apex string, types []uint16) *mdns.NSEC3 {
	h := hashName(name)
	return s.nsec3(h, addHash(h, 1), apex, types)
}

// nsec3Cover is an NSEC3 that covers name's hash and nothing else.
func (s *Server) nsec3Cover(name, apex string) *mdns.NSEC3 {
	h := hashName(name)
	return s.nsec3(addHash(h, -1), addHash(h, 1), apex, nil)
}

// addHash adds d (+1 or -1) to h as a big-endian number, wrapping around.
func addHash(h []byte, d int) []byte {
	out := append([]byte(nil), h...)
	for i := len(out) - 1; i >= 0; i-- {
		if d > 0 {
			out[i]++
			if out[i] != 0 {
				break
			}
		} else {
			out[i]--
			if out[i] != 0xff {
				break
			}
		}
	}
	return out
}

// sign returns an RRSIG for each RRset in rrs (RRSIGs themselves and OPT
// are skipped).
func (s *Server) sign(rrs []mdns.RR, key *Key, apex string, now time.Time) []mdns.RR {
	type setKey struct {
		name string
		t    uint16
	}
	var order []setKey
	sets := map[setKey][]mdns.RR{}
	for _, rr := range rrs {
		h := rr.Header()
		if h.Rrtype == mdns.TypeRRSIG || h.Rrtype == mdns.TypeOPT {
			continue
		}
		k := setKey{strings.ToLower(h.Name), h.Rrtype}
		if _, ok := sets[k]; !ok {
			order = append(order, k)
		}
		sets[k] = append(sets[k], rr)
	}
	var out []mdns.RR
	for _, k := range order {
		set := sets[k]
		sig := &mdns.RRSIG{
			Hdr:        mdns.RR_Header{Name: set[0].Header().Name, Rrtype: mdns.TypeRRSIG, Class: mdns.ClassINET, Ttl: set[0].Header().Ttl},
			Algorithm:  key.DNSKEY.Algorithm,
			SignerName: apex,
			KeyTag:     key.DNSKEY.KeyTag(),
			Inception:  uint32(now.Add(-sigBefore).Unix()),
			Expiration: uint32(now.Add(sigValidity).Unix()),
		}
		if err := sig.Sign(key.Priv, set); err != nil {
			s.log().Debug("dnssec sign", "name", k.name, "err", err)
			continue
		}
		out = append(out, sig)
	}
	return out
}

// timeNow is the clock of tests.
var timeNow = time.Now
