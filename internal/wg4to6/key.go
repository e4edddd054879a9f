package wg4to6

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// GenerateKey returns a new private key, clamped as Curve25519 wants it.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generate key: %w", err)
	}
	k[0] &= 248
	k[31] = k[31]&127 | 64
	return k, nil
}

// Public returns the public key of the private key k.
func (k Key) Public() Key {
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		// NewPrivateKey fails only on a wrong length; a Key has the right one.
		panic("wg4to6: " + err.Error())
	}
	var pub Key
	copy(pub[:], priv.PublicKey().Bytes())
	return pub
}

// IsZero reports whether k is the zero key (no key set).
func (k Key) IsZero() bool { return k == Key{} }

// String returns k in base64, as wg(8) prints keys.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// MarshalText encodes k as String does.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText decodes a key in the form ParseKey accepts.
func (k *Key) UnmarshalText(b []byte) error {
	p, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// hex returns k in hex, as the WireGuard configuration protocol wants it.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// ParseKey parses a key in base64 (44 characters, as wg(8) prints it).
func ParseKey(s string) (Key, error) {
	const want = 44 // base64 of 32 bytes, with one '=' of padding
	if len(s) != want {
		return Key{}, fmt.Errorf("parse key: want %d base64 characters (a 32-byte WireGuard key, as wg(8) prints it), got %d", want, len(s))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return Key{}, fmt.Errorf("parse key: not standard base64: %w", err)
	}
	if len(b) != len(Key{}) {
		return Key{}, fmt.Errorf("parse key: decodes to %d bytes, want 32", len(b))
	}
	var k Key
	copy(k[:], b)
	return k, nil
}

// decodeHexKey parses a key in hex, as the WireGuard configuration protocol
// gives it.
func decodeHexKey(s string) (Key, error) {
	var k Key
	if hex.DecodedLen(len(s)) != len(k) {
		return Key{}, fmt.Errorf("hex key: want 64 characters, got %d", len(s))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return Key{}, fmt.Errorf("hex key: %w", err)
	}
	return k, nil
}
