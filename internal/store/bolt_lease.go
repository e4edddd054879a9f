package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

var _ Leaser = (*Bolt)(nil)

// Grant implements Leaser. One process owns a Bolt file, so its leases
// never expire while it runs; Close deletes their keys, and keys of leases
// a crashed process left behind are deleted when the file is opened again.
func (b *Bolt) Grant(ctx context.Context, ttl time.Duration) (Lease, error) {
	if err := b.begin(ctx, "lease", false); err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	return &boltLease{b: b, keys: map[string]bool{}, done: make(chan struct{})}, nil
}

type boltLease struct {
	b    *Bolt
	done chan struct{}

	mu     sync.Mutex
	keys   map[string]bool // guarded by mu
	closed bool            // guarded by mu
}

func (l *boltLease) Put(ctx context.Context, key string, value []byte) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, fmt.Errorf("put %q: lease lost", key)
	}
	rev, err := l.b.put(ctx, key, value, AnyRev, true)
	if err == nil {
		l.keys[key] = true
	}
	return rev, err
}

func (l *boltLease) Done() <-chan struct{} { return l.done }

func (l *boltLease) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	close(l.done)
	var errs []error
	for key := range l.keys {
		if err := l.b.Delete(context.Background(), key, AnyRev); err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := l.b.unmark(l.keys); err != nil && !errors.Is(err, ErrClosed) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// unmark forgets the lease marks of keys.
func (b *Bolt) unmark(keys map[string]bool) error {
	if err := b.begin(context.Background(), "lease", false); err != nil {
		return err
	}
	err := b.db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket(leaseBucket)
		if lb == nil {
			return nil
		}
		for k := range keys {
			if err := lb.Delete([]byte(k)); err != nil {
				return err
			}
		}
		return nil
	})
	return mapErr(err)
}

// sweepLeased deletes the keys that were written under a lease by an
// earlier process (no watcher can exist yet at open).
func sweepLeased(tx *bolt.Tx) error {
	lb := tx.Bucket(leaseBucket)
	if lb == nil {
		return nil
	}
	data := tx.Bucket(dataBucket)
	if err := lb.ForEach(func(k, _ []byte) error { return data.Delete(k) }); err != nil {
		return err
	}
	return tx.DeleteBucket(leaseBucket)
}
