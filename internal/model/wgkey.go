package model

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"fmt"
)

// WGKey is a WireGuard (Curve25519) private or public key: 32 bytes, shown
// as 44 characters of standard base64 like wg(8) does.
type WGKey [32]byte

// GenerateWGKey returns a fresh private key, clamped as wg genkey makes it.
func GenerateWGKey() (WGKey, error) {
	var k WGKey
	if _, err := rand.Read(k[:]); err != nil {
		return WGKey{}, fmt.Errorf("generate wireguard key: %w", err)
	}
	k[0] &= 248
	k[31] = k[31]&127 | 64
	return k, nil
}

// Public returns the public key of private key k (wg pubkey).
func (k WGKey) Public() WGKey {
	// X25519 clamps the scalar itself, so an unclamped key gives the same
	// public key as wg pubkey does. NewPrivateKey fails only for a length
	// other than 32.
	priv, err := ecdh.X25519().NewPrivateKey(k[:])
	if err != nil {
		panic("x25519: " + err.Error())
	}
	var pub WGKey
	copy(pub[:], priv.PublicKey().Bytes())
	return pub
}

// String is the key in standard base64 (44 characters).
func (k WGKey) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zero bytes (no key).
func (k WGKey) IsZero() bool { return k == WGKey{} }

// ParseWGKey reads a key in standard base64, as wg genkey and wg pubkey
// print it: 44 characters ending in '='. Only the canonical encoding is
// accepted, so a key has one spelling.
func ParseWGKey(s string) (WGKey, error) {
	const want = "want 44 characters of base64 such as wg pubkey prints"
	if len(s) != 44 {
		return WGKey{}, fmt.Errorf("wireguard key of %d characters; %s", len(s), want)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil || len(b) != 32 {
		return WGKey{}, fmt.Errorf("wireguard key %q is not base64 of 32 bytes; %s", s, want)
	}
	return WGKey(b), nil
}
