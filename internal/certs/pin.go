package certs

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// pinPrefix names the hash in fingerprints and pins.
const pinPrefix = "sha256:"

// Fingerprint identifies a certificate's key: "sha256:" and the lower-case hex
// SHA-256 of its RawSubjectPublicKeyInfo. It stays the same when the
// certificate is re-signed for the same key.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return pinPrefix + hex.EncodeToString(sum[:])
}

// PinMismatchError is returned by the VerifyPin callback when the gateway's
// key is not the pinned one. Retrying does not help: the pin is wrong or
// something else answers at the address.
type PinMismatchError struct {
	Got  string // fingerprint of the key presented, "sha256:<hex>"
	Want string // the pin, "sha256:<hex>"
}

func (e *PinMismatchError) Error() string {
	return fmt.Sprintf("gateway key fingerprint %s does not match pinned %s", e.Got, e.Want)
}

// ValidatePin checks a key pin given by the user (a flag or config value): 64
// hex digits, either case, optionally prefixed with "sha256:".
func ValidatePin(pin string) error {
	_, err := parsePin(pin)
	return err
}

// parsePin returns the pin's 64 lower-case hex digits.
func parsePin(pin string) (string, error) {
	digits := strings.TrimSpace(pin)
	if len(digits) >= len(pinPrefix) && strings.EqualFold(digits[:len(pinPrefix)], pinPrefix) {
		digits = digits[len(pinPrefix):]
	}
	if len(digits) != 2*sha256.Size {
		return "", fmt.Errorf("invalid key pin %q: want %d hex digits, optionally prefixed with %q", pin, 2*sha256.Size, pinPrefix)
	}
	if _, err := hex.DecodeString(digits); err != nil {
		return "", fmt.Errorf("invalid key pin %q: want %d hex digits (0-9, a-f), optionally prefixed with %q", pin, 2*sha256.Size, pinPrefix)
	}
	return strings.ToLower(digits), nil
}

// VerifyPin returns a tls.Config.VerifyPeerCertificate callback, for use with
// InsecureSkipVerify, that accepts the peer only when its leaf certificate's
// Fingerprint equals pin (see ValidatePin for the accepted forms). A mismatch
// is a *PinMismatchError. An invalid pin makes every handshake fail; check it
// with ValidatePin first.
//
// crypto/tls skips this callback on resumed sessions; a client that sets
// ClientSessionCache must keep that cache per pin.
func VerifyPin(pin string) func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	want, pinErr := parsePin(pin)
	return func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if pinErr != nil {
			return fmt.Errorf("verify gateway key: %w", pinErr)
		}
		if len(rawCerts) == 0 {
			return errors.New("verify gateway key: gateway presented no certificate")
		}
		leaf, err := x509.ParseCertificate(rawCerts[0])
		if err != nil {
			return fmt.Errorf("verify gateway key: parse certificate: %w", err)
		}
		got := Fingerprint(leaf)
		if got[len(pinPrefix):] != want {
			return &PinMismatchError{Got: got, Want: pinPrefix + want}
		}
		return nil
	}
}
