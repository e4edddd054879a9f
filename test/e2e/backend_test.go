package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// echo is what the echo backend answers: the request as the backend saw it.
type echo struct {
	Method         string   `json:"method"`
	URI            string   `json:"uri"`
	Host           string   `json:"host"`
	Proto          string   `json:"proto"`
	XForwardedFor  []string `json:"x_forwarded_for"`
	XForwardedProt []string `json:"x_forwarded_proto"`
	XForwardedHost []string `json:"x_forwarded_host"`
	BodyLen        int64    `json:"body_len"`
	BodySHA256     string   `json:"body_sha256"`
}

// echoHandler answers every request with its echo as JSON.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, _ := io.Copy(h, r.Body)
	e := echo{
		Method: r.Method, URI: r.RequestURI, Host: r.Host, Proto: r.Proto,
		XForwardedFor:  r.Header.Values("X-Forwarded-For"),
		XForwardedProt: r.Header.Values("X-Forwarded-Proto"),
		XForwardedHost: r.Header.Values("X-Forwarded-Host"),
		BodyLen:        n, BodySHA256: hex.EncodeToString(h.Sum(nil)),
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(e)
}

// startBackend runs h on 127.0.0.1:0 and returns its http:// URL.
func startBackend(t testing.TB, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// textBackend answers every request with body.
func textBackend(t testing.TB, body string) string {
	return startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, body)
	}))
}

func decodeEcho(t testing.TB, body string) echo {
	t.Helper()
	var e echo
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("backend answer is not the echo JSON: %v\n%s", err, body)
	}
	return e
}
