package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var _ Store = (*Bolt)(nil)

const (
	// openTimeout bounds the wait for the file lock, so a second webgw on the
	// same state file fails clearly instead of hanging.
	openTimeout = 2 * time.Second
	// watchBuffer is how many events a watcher may fall behind before it is closed.
	watchBuffer = 1024
	// revSize is the length of the big-endian revision stored before each value.
	revSize = 8
)

var (
	dataBucket = []byte("kv")
	metaBucket = []byte("meta")
	revKey     = []byte("rev")
	// leaseBucket marks the keys written under a lease, so a process that
	// died without closing its leases has them removed at the next open.
	leaseBucket = []byte("leased")
)

// Bolt is a Store kept in one local bbolt file. Watches are served in
// process: only changes made through this Bolt are seen.
type Bolt struct {
	path string   // immutable
	db   *bolt.DB // immutable; safe for concurrent use, closed by Close

	// wmu serialises writes from their transaction through the fan-out of
	// their event, so watchers see events in revision order. Watch holds it
	// while registering so it sees exactly the writes committed after it.
	// Lock order: wmu before mu.
	wmu sync.Mutex

	mu       sync.Mutex
	closed   bool                  // guarded by mu
	watchers map[*watcher]struct{} // guarded by mu
}

// watcher is one Watch call.
type watcher struct {
	prefix string      // immutable
	ch     chan Event  // closed under Bolt.mu when the watcher is removed
	stop   func() bool // stops the context.AfterFunc; set under Bolt.mu
}

// OpenBolt opens or creates the state file at path (mode 0600; a missing
// parent directory is created with mode 0700). It fails after about two
// seconds if another process holds the file open.
func OpenBolt(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: openTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("state file %s is locked by another webgw process (waited %v)", path, openTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(dataBucket); err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(metaBucket); err != nil {
			return err
		}
		return sweepLeased(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise state file %s: %w", path, err)
	}
	return &Bolt{path: path, db: db, watchers: make(map[*watcher]struct{})}, nil
}

// Get implements Store.
func (b *Bolt) Get(ctx context.Context, key string) (Entry, error) {
	if err := b.begin(ctx, key, false); err != nil {
		return Entry{}, fmt.Errorf("get %q: %w", key, err)
	}
	var e Entry
	err := b.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(dataBucket).Get([]byte(key))
		if raw == nil {
			return ErrNotFound
		}
		var err error
		e, err = decodeEntry(key, raw)
		return err
	})
	if err != nil {
		return Entry{}, fmt.Errorf("get %q: %w", key, mapErr(err))
	}
	return e, nil
}

// List implements Store. An empty result is a non-nil slice of length 0.
func (b *Bolt) List(ctx context.Context, prefix string) ([]Entry, error) {
	if err := b.begin(ctx, prefix, true); err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	entries := []Entry{}
	err := b.db.View(func(tx *bolt.Tx) error {
		p := []byte(prefix)
		c := tx.Bucket(dataBucket).Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			e, err := decodeEntry(string(k), v)
			if err != nil {
				return err
			}
			entries = append(entries, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, mapErr(err))
	}
	return entries, nil
}

// Put implements Store.
func (b *Bolt) Put(ctx context.Context, key string, value []byte, expect int64) (int64, error) {
	return b.put(ctx, key, value, expect, false)
}

// put is Put; leased marks the key for removal at the next open.
func (b *Bolt) put(ctx context.Context, key string, value []byte, expect int64, leased bool) (int64, error) {
	if err := b.begin(ctx, key, false); err != nil {
		return 0, fmt.Errorf("put %q: %w", key, err)
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	var rev int64
	err := b.db.Update(func(tx *bolt.Tx) error {
		data := tx.Bucket(dataBucket)
		cur := data.Get([]byte(key))
		switch {
		case expect == AnyRev:
		case expect == 0:
			if cur != nil {
				return ErrConflict
			}
		default:
			if cur == nil {
				return ErrConflict
			}
			e, err := decodeEntry(key, cur)
			if err != nil {
				return err
			}
			if e.Rev != expect {
				return ErrConflict
			}
		}
		var err error
		if rev, err = nextRev(tx); err != nil {
			return err
		}
		buf := make([]byte, revSize+len(value))
		binary.BigEndian.PutUint64(buf, uint64(rev))
		copy(buf[revSize:], value)
		if leased {
			lb, err := tx.CreateBucketIfNotExists(leaseBucket)
			if err != nil {
				return err
			}
			if err := lb.Put([]byte(key), nil); err != nil {
				return err
			}
		}
		return data.Put([]byte(key), buf)
	})
	if err != nil {
		return 0, fmt.Errorf("put %q: %w", key, mapErr(err))
	}
	b.publish(Event{Type: EventPut, Entry: Entry{Key: key, Value: value, Rev: rev}})
	return rev, nil
}

// Delete implements Store. A missing key returns ErrNotFound whatever expect is.
func (b *Bolt) Delete(ctx context.Context, key string, expect int64) error {
	if err := b.begin(ctx, key, false); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	var rev int64
	err := b.db.Update(func(tx *bolt.Tx) error {
		data := tx.Bucket(dataBucket)
		cur := data.Get([]byte(key))
		if cur == nil {
			return ErrNotFound
		}
		if expect != AnyRev {
			e, err := decodeEntry(key, cur)
			if err != nil {
				return err
			}
			if expect == 0 || e.Rev != expect {
				return ErrConflict
			}
		}
		var err error
		if rev, err = nextRev(tx); err != nil {
			return err
		}
		return data.Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("delete %q: %w", key, mapErr(err))
	}
	b.publish(Event{Type: EventDelete, Entry: Entry{Key: key, Rev: rev}})
	return nil
}

// Watch implements Store. The channel holds up to 1024 events; a watcher
// that lets it fill is closed.
func (b *Bolt) Watch(ctx context.Context, prefix string) (<-chan Event, error) {
	if err := b.begin(ctx, prefix, true); err != nil {
		return nil, fmt.Errorf("watch %q: %w", prefix, err)
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("watch %q: %w", prefix, ErrClosed)
	}
	w := &watcher{prefix: prefix, ch: make(chan Event, watchBuffer)}
	b.watchers[w] = struct{}{}
	// The callback takes mu, so it cannot run before stop is set below.
	w.stop = context.AfterFunc(ctx, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.dropLocked(w)
	})
	return w.ch, nil
}

// Close implements Store. It closes every watch channel and is idempotent:
// only the first call does anything and may return an error.
func (b *Bolt) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	for w := range b.watchers {
		b.dropLocked(w)
	}
	b.mu.Unlock()
	// bbolt waits for open transactions; later ones fail with
	// ErrDatabaseNotOpen, which mapErr turns into ErrClosed.
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("close state file %s: %w", b.path, err)
	}
	return nil
}

// begin checks what every method checks first: the store is open, ctx is
// live, and key (or prefix, which may be empty) is acceptable.
func (b *Bolt) begin(ctx context.Context, key string, isPrefix bool) error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return checkKey(key, isPrefix)
}

// publish fans ev out to the matching watchers. Callers hold wmu, so events
// go out in revision order. Each watcher gets its own copy of the value.
func (b *Bolt) publish(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for w := range b.watchers {
		if !strings.HasPrefix(ev.Entry.Key, w.prefix) {
			continue
		}
		wev := ev
		if ev.Type == EventPut {
			wev.Entry.Value = bytes.Clone(ev.Entry.Value)
			if wev.Entry.Value == nil {
				wev.Entry.Value = []byte{}
			}
		}
		select {
		case w.ch <- wev:
		default:
			b.dropLocked(w) // too far behind: the caller re-lists and watches again
		}
	}
}

// dropLocked removes w and closes its channel, once. b.mu must be held.
func (b *Bolt) dropLocked(w *watcher) {
	if _, ok := b.watchers[w]; !ok {
		return
	}
	delete(b.watchers, w)
	w.stop()
	close(w.ch)
}

// nextRev increments and returns the store-wide revision inside tx.
func nextRev(tx *bolt.Tx) (int64, error) {
	meta := tx.Bucket(metaBucket)
	var rev int64
	if raw := meta.Get(revKey); raw != nil {
		if len(raw) != revSize {
			return 0, fmt.Errorf("corrupt revision counter (%d bytes)", len(raw))
		}
		rev = int64(binary.BigEndian.Uint64(raw))
	}
	rev++
	buf := make([]byte, revSize)
	binary.BigEndian.PutUint64(buf, uint64(rev))
	if err := meta.Put(revKey, buf); err != nil {
		return 0, fmt.Errorf("store revision counter: %w", err)
	}
	return rev, nil
}

// decodeEntry splits a stored value into revision and a copy of the value,
// since bbolt's memory is only valid inside the transaction.
func decodeEntry(key string, raw []byte) (Entry, error) {
	if len(raw) < revSize {
		return Entry{}, fmt.Errorf("corrupt entry for key %q (%d bytes)", key, len(raw))
	}
	return Entry{
		Key:   key,
		Value: append([]byte{}, raw[revSize:]...),
		Rev:   int64(binary.BigEndian.Uint64(raw)),
	}, nil
}

// checkKey accepts keys that are non-empty, valid UTF-8 and free of NUL.
// Prefixes follow the same rules but may be empty.
func checkKey(key string, isPrefix bool) error {
	what := "key"
	if isPrefix {
		what = "prefix"
	}
	switch {
	case key == "" && !isPrefix:
		return fmt.Errorf("invalid %s %q: empty", what, key)
	case !utf8.ValidString(key):
		return fmt.Errorf("invalid %s %q: not valid UTF-8", what, key)
	case strings.IndexByte(key, 0) >= 0:
		return fmt.Errorf("invalid %s %q: contains NUL", what, key)
	}
	return nil
}

// mapErr turns bbolt's closed-database error into ErrClosed.
func mapErr(err error) error {
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}
