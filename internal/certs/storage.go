package certs

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/webgw/webgw/internal/store"
)

// Storage keeps certmagic's certificates, keys, ACME account and locks in
// the Store, so every gateway sharing the store shares them (and one
// issuance per name serves the whole cluster).
//
// A value is stored with its modification time in front (8 bytes, Unix
// nanoseconds, big endian) under StoragePrefix+key. A lock is a record
// under LockPrefix+name naming its owner and expiry; its holder extends the
// expiry while it holds it, and a lock whose expiry passed (its holder
// died) is taken over.
type Storage struct {
	// DB is the store the records live in.
	DB store.Store
	// LockTTL is how long a lock lives without being extended; 0 means
	// 30 s. Its holder extends it every LockTTL/3.
	LockTTL time.Duration
	// Poll is how often Lock looks again at a lock held by another; 0
	// means 500 ms.
	Poll time.Duration

	once  sync.Once
	owner string // random per Storage, in lock records

	mu    sync.Mutex
	held  map[string]*heldLock // guarded by mu
	clock func() time.Time     // for tests; nil means time.Now
}

var _ certmagic.Storage = (*Storage)(nil)

// Key prefixes of the records Storage writes.
const (
	StoragePrefix = "certmagic/"
	LockPrefix    = "certmagic-locks/"
)

// heldLock is a lock this Storage holds.
type heldLock struct {
	rev  int64
	stop chan struct{}
	done chan struct{}
}

// lockRecord is the value of a lock.
type lockRecord struct {
	Owner   string    `json:"owner"`
	Expires time.Time `json:"expires"`
}

func (s *Storage) init() {
	s.once.Do(func() {
		var b [8]byte
		rand.Read(b[:])
		s.owner = hex.EncodeToString(b[:])
		s.held = make(map[string]*heldLock)
	})
}

func (s *Storage) now() time.Time {
	if s.clock != nil {
		return s.clock()
	}
	return time.Now()
}

func (s *Storage) ttl() time.Duration {
	if s.LockTTL <= 0 {
		return 30 * time.Second
	}
	return s.LockTTL
}

// key maps a certmagic key to a store key. certmagic keys are
// slash-separated paths; a leading or trailing slash is dropped.
func key(k string) string { return StoragePrefix + strings.Trim(k, "/") }

// Store implements certmagic.Storage.
func (s *Storage) Store(ctx context.Context, k string, value []byte) error {
	b := make([]byte, 8+len(value))
	binary.BigEndian.PutUint64(b, uint64(s.now().UnixNano()))
	copy(b[8:], value)
	if _, err := s.DB.Put(ctx, key(k), b, store.AnyRev); err != nil {
		return fmt.Errorf("certificate storage: store %s: %w", k, err)
	}
	return nil
}

// Load implements certmagic.Storage; a missing key is fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, k string) ([]byte, error) {
	e, err := s.DB.Get(ctx, key(k))
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("certificate storage: %s: %w", k, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("certificate storage: load %s: %w", k, err)
	}
	if len(e.Value) < 8 {
		return nil, fmt.Errorf("certificate storage: %s: record too short", k)
	}
	return e.Value[8:], nil
}

// Delete implements certmagic.Storage: the key, and every key under it.
func (s *Storage) Delete(ctx context.Context, k string) error {
	full := key(k)
	err := s.DB.Delete(ctx, full, store.AnyRev)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("certificate storage: delete %s: %w", k, err)
	}
	under, err := s.DB.List(ctx, full+"/")
	if err != nil {
		return fmt.Errorf("certificate storage: delete %s: %w", k, err)
	}
	for _, e := range under {
		if err := s.DB.Delete(ctx, e.Key, store.AnyRev); err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("certificate storage: delete %s: %w", e.Key, err)
		}
	}
	return nil
}

// Exists implements certmagic.Storage: a key, or a prefix of keys.
func (s *Storage) Exists(ctx context.Context, k string) bool {
	if _, err := s.DB.Get(ctx, key(k)); err == nil {
		return true
	}
	under, err := s.DB.List(ctx, key(k)+"/")
	return err == nil && len(under) > 0
}

// List implements certmagic.Storage: the keys directly under prefix (and,
// when recursive, all below it), directories included.
func (s *Storage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	base := strings.Trim(prefix, "/")
	entries, err := s.DB.List(ctx, key(base)+"/")
	if err != nil {
		return nil, fmt.Errorf("certificate storage: list %s: %w", prefix, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("certificate storage: %s: %w", prefix, fs.ErrNotExist)
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		rel := strings.TrimPrefix(e.Key, key(base)+"/")
		parts := strings.Split(rel, "/")
		n := 1
		if recursive {
			n = len(parts)
		}
		for i := 1; i <= n; i++ {
			k := path.Join(base, strings.Join(parts[:i], "/"))
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	return out, nil
}

// Stat implements certmagic.Storage.
func (s *Storage) Stat(ctx context.Context, k string) (certmagic.KeyInfo, error) {
	e, err := s.DB.Get(ctx, key(k))
	if err == nil && len(e.Value) >= 8 {
		mod := time.Unix(0, int64(binary.BigEndian.Uint64(e.Value)))
		return certmagic.KeyInfo{Key: k, Modified: mod, Size: int64(len(e.Value) - 8), IsTerminal: true}, nil
	}
	if s.Exists(ctx, k) {
		return certmagic.KeyInfo{Key: k, IsTerminal: false}, nil
	}
	return certmagic.KeyInfo{}, fmt.Errorf("certificate storage: %s: %w", k, fs.ErrNotExist)
}

// Lock implements certmagic.Locker: it waits until name is free (or its
// holder's lease ran out) and takes it, until ctx ends.
func (s *Storage) Lock(ctx context.Context, name string) error {
	s.init()
	lk := LockPrefix + strings.Trim(name, "/")
	poll := s.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	for {
		rev, err := s.tryLock(ctx, lk)
		if err != nil {
			return err
		}
		if rev != 0 {
			h := &heldLock{rev: rev, stop: make(chan struct{}), done: make(chan struct{})}
			s.mu.Lock()
			s.held[name] = h
			s.mu.Unlock()
			go s.keepLock(lk, h)
			return nil
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("certificate storage: lock %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// tryLock takes lock key lk if it is free or stale, and returns its
// revision; 0 when another holds it.
func (s *Storage) tryLock(ctx context.Context, lk string) (int64, error) {
	rec, _ := json.Marshal(lockRecord{Owner: s.owner, Expires: s.now().Add(s.ttl())})
	rev, err := s.DB.Put(ctx, lk, rec, 0)
	if err == nil {
		return rev, nil
	}
	if !errors.Is(err, store.ErrConflict) {
		return 0, fmt.Errorf("certificate storage: lock %s: %w", lk, err)
	}
	e, err := s.DB.Get(ctx, lk)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil // released meanwhile: try again at once next round
	}
	if err != nil {
		return 0, fmt.Errorf("certificate storage: lock %s: %w", lk, err)
	}
	var cur lockRecord
	if json.Unmarshal(e.Value, &cur) == nil && s.now().Before(cur.Expires) {
		return 0, nil
	}
	// Stale (its holder stopped extending it): take it over, unless
	// another did first.
	rev, err = s.DB.Put(ctx, lk, rec, e.Rev)
	if errors.Is(err, store.ErrConflict) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("certificate storage: lock %s: %w", lk, err)
	}
	return rev, nil
}

// keepLock extends lock lk while h is held.
func (s *Storage) keepLock(lk string, h *heldLock) {
	defer close(h.done)
	t := time.NewTicker(s.ttl() / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		rec, _ := json.Marshal(lockRecord{Owner: s.owner, Expires: s.now().Add(s.ttl())})
		ctx, cancel := context.WithTimeout(context.Background(), s.ttl()/3)
		s.mu.Lock()
		rev := h.rev
		s.mu.Unlock()
		nrev, err := s.DB.Put(ctx, lk, rec, rev)
		cancel()
		if err != nil {
			return // lost (taken over as stale): nothing more to extend
		}
		s.mu.Lock()
		h.rev = nrev
		s.mu.Unlock()
	}
}

// Unlock implements certmagic.Locker.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	s.init()
	s.mu.Lock()
	h := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if h == nil {
		return fmt.Errorf("certificate storage: unlock %s: not held", name)
	}
	close(h.stop)
	<-h.done
	s.mu.Lock()
	rev := h.rev
	s.mu.Unlock()
	err := s.DB.Delete(ctx, LockPrefix+strings.Trim(name, "/"), rev)
	if err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrConflict) {
		return fmt.Errorf("certificate storage: unlock %s: %w", name, err)
	}
	return nil
}
