package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"sync/atomic"
	"time"
)

// leaf is one cached leaf certificate.
type leaf struct {
	cert    *tls.Certificate // immutable
	renewAt time.Time        // immutable; the cache serves cert until then
	used    atomic.Uint64    // LocalCA.tick at the last use, for LRU eviction
}

// issueCall is one issuance in flight; callers for the same name wait on done.
type issueCall struct {
	done chan struct{}
	cert *tls.Certificate // written before done is closed, read after
	err  error            // written before done is closed, read after
}

// ForName returns a certificate for exactly the DNS name (or a wildcard
// "*.example.org", which covers one label under example.org),
// signed by the CA: a fresh ECDSA P-256 key held only in memory, valid from
// an hour ago for 90 days, for server authentication, with Leaf set and the
// CA certificate in the chain. Certificates are cached, the least recently
// used dropped beyond MaxCached, and re-issued when less than a third of
// their validity is left. Concurrent calls for one name sign only once.
// It signs for any valid name: callers pass only names they serve, or a
// client sending random SNI names makes the gateway sign for each.
func (ca *LocalCA) ForName(name string) (*tls.Certificate, error) {
	name = canonicalName(name)
	now := ca.now()
	ca.mu.RLock()
	l := ca.leaves[name]
	ca.mu.RUnlock()
	if l != nil && now.Before(l.renewAt) {
		l.used.Store(ca.tick.Add(1))
		return l.cert, nil
	}
	return ca.issue(name, now)
}

// issue signs a leaf for name, or waits for the issuance already under way.
func (ca *LocalCA) issue(name string, now time.Time) (*tls.Certificate, error) {
	if err := checkDNSName(name); err != nil {
		return nil, fmt.Errorf("issue certificate: %w", err)
	}
	ca.mu.Lock()
	if l := ca.leaves[name]; l != nil && now.Before(l.renewAt) {
		ca.mu.Unlock() // issued by another caller since our look-up
		l.used.Store(ca.tick.Add(1))
		return l.cert, nil
	}
	if c := ca.inflight[name]; c != nil {
		ca.mu.Unlock()
		if ca.testHookWait != nil {
			ca.testHookWait(name)
		}
		<-c.done
		return c.cert, c.err
	}
	c := &issueCall{done: make(chan struct{})}
	ca.inflight[name] = c
	ca.mu.Unlock()

	defer func() {
		if c.cert == nil && c.err == nil { // signLeaf panicked; do not leave waiters with nothing
			c.err = fmt.Errorf("issue certificate for %s: aborted", name)
		}
		ca.mu.Lock()
		delete(ca.inflight, name)
		if c.err == nil {
			ca.insertLocked(name, c.cert, now)
		}
		ca.mu.Unlock()
		close(c.done)
	}()
	if ca.testHookIssue != nil {
		ca.testHookIssue(name)
	}
	c.cert, c.err = ca.signLeaf(name, now)
	if c.err != nil {
		c.err = fmt.Errorf("issue certificate for %s: %w", name, c.err)
	}
	return c.cert, c.err
}

func (ca *LocalCA) signLeaf(name string, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	ca.issued.Add(1)
	return ca.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		DNSNames:    []string{name},
		NotBefore:   now.Add(-backdate),
		NotAfter:    now.Add(leafValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, key)
}

// insertLocked caches cert for name, evicting the least recently used
// entries beyond the bound. ca.mu must be held for writing.
func (ca *LocalCA) insertLocked(name string, cert *tls.Certificate, now time.Time) {
	nb, na := cert.Leaf.NotBefore, cert.Leaf.NotAfter
	renewAt := na.Add(-na.Sub(nb) / 3)
	if !renewAt.After(now) {
		// Cut short by the CA's own expiry: keep it to the end rather than
		// signing anew on every call.
		renewAt = na
	}
	if _, ok := ca.leaves[name]; !ok {
		limit := ca.MaxCached
		if limit <= 0 {
			limit = defaultMaxCached
		}
		for len(ca.leaves) >= limit {
			ca.evictLocked()
		}
	}
	l := &leaf{cert: cert, renewAt: renewAt}
	l.used.Store(ca.tick.Add(1))
	ca.leaves[name] = l
}

// evictLocked drops the least recently used leaf. It scans the cache, which
// is cheap next to the signing that precedes every insert.
func (ca *LocalCA) evictLocked() {
	var oldest string
	var oldestUsed uint64
	first := true
	for name, l := range ca.leaves {
		if u := l.used.Load(); first || u < oldestUsed {
			oldest, oldestUsed, first = name, u, false
		}
	}
	delete(ca.leaves, oldest)
}
