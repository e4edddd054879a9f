package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// backendRoleEnv is set in the backend's environment, so a test binary
// (whose TestMain checks it) can play the backend too.
const backendRoleEnv = "WEBGW_BENCH_ROLE"

var (
	smallBody = []byte("ok\n")
	body1k    = func() []byte {
		b := make([]byte, 1024)
		for i := range b {
			b[i] = 'a' + byte(i%26)
		}
		b[len(b)-1] = '\n'
		return b
	}()
	bulkChunk = make([]byte, 256<<10)
)

// backendMain is `bench backend -cert FILE -key FILE`: an HTTP server on two
// loopback ports, plain (HTTP/1.1 and h2c) and TLS (HTTP/1.1 and h2). It
// prints "http ADDR" and "https ADDR" and serves until its stdin closes
// (the harness holds it open; its death closes it).
//
//	/small      3 bytes
//	/1k         1024 bytes
//	/bulk?n=N   N bytes, streamed
func backendMain(args []string) int {
	fs := flag.NewFlagSet("backend", flag.ContinueOnError)
	certFile := fs.String("cert", "", "certificate PEM for the TLS port")
	keyFile := fs.String("key", "", "key PEM for the TLS port")
	listen := fs.String("listen", "127.0.0.1", "IP address to listen on")
	id := fs.String("id", "", "when set, every answer carries "+backendIDHeader+" (this value) and "+backendRecvHeader+" (the request's arrival, Unix ns)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	pair, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend: -cert/-key:", err)
		return 2
	}
	plainLn, err := net.Listen("tcp", net.JoinHostPort(*listen, "0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	tlsLn, err := net.Listen("tcp", net.JoinHostPort(*listen, "0"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	quiet := log.New(io.Discard, "", 0)
	var plainProtos, tlsProtos http.Protocols
	plainProtos.SetHTTP1(true)
	plainProtos.SetUnencryptedHTTP2(true)
	tlsProtos.SetHTTP1(true)
	tlsProtos.SetHTTP2(true)
	h := http.Handler(http.HandlerFunc(serveBackend))
	if *id != "" {
		h = tagged(*id, h)
	}
	plain := &http.Server{Handler: h, Protocols: &plainProtos, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 10 * time.Minute, ErrorLog: quiet}
	secure := &http.Server{Handler: h, Protocols: &tlsProtos, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 10 * time.Minute, ErrorLog: quiet,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}}}
	go plain.Serve(plainLn)
	go secure.ServeTLS(tlsLn, "", "")
	fmt.Printf("http %s\nhttps %s\n", plainLn.Addr(), tlsLn.Addr())
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// Headers of a backend started with -id, for the scenarios that must know
// which backend served a request and when it arrived there.
const (
	backendIDHeader   = "X-Bench-Backend"
	backendRecvHeader = "X-Bench-Recv"
)

// tagged adds the -id headers to every answer of next.
func tagged(id string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		recv := time.Now().UnixNano()
		w.Header().Set(backendIDHeader, id)
		w.Header().Set(backendRecvHeader, strconv.FormatInt(recv, 10))
		next.ServeHTTP(w, r)
	})
}

func serveBackend(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	switch r.URL.Path {
	case "/small":
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", "3")
		w.Write(smallBody)
	case "/1k":
		h.Set("Content-Type", "text/plain")
		h.Set("Content-Length", "1024")
		w.Write(body1k)
	case "/bulk":
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bulk: n=BYTES required", http.StatusBadRequest)
			return
		}
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(bulkChunk)))
			if _, err := w.Write(bulkChunk[:k]); err != nil {
				return
			}
			n -= k
		}
	default:
		http.NotFound(w, r)
	}
}

// writeSelfSigned writes a self-signed ECDSA P-256 certificate for 127.0.0.1
// (the key type the gateway's local CA issues) and returns the files and a
// pool that trusts it.
func writeSelfSigned(dir string) (certFile, keyFile string, roots *x509.CertPool, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "webgw bench backend"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	certFile, keyFile = filepath.Join(dir, "backend.pem"), filepath.Join(dir, "backend-key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", nil, err
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots, nil
}
