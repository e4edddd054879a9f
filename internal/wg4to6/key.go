package wg4to6

import (
	"encoding/hex"
	"fmt"

	"github.com/webgw/webgw/internal/model"
)

// Key is a WireGuard (Curve25519) key: model.WGKey (generated, parsed and
// printed there, as wg(8) does).
type Key = model.WGKey

// keyHex returns k in hex, as the WireGuard configuration protocol wants it.
func keyHex(k Key) string { return hex.EncodeToString(k[:]) }

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
