package certs

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/store"
)

func newStorage(t *testing.T) (*Storage, store.Store) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &Storage{DB: st, LockTTL: 300 * time.Millisecond, Poll: 10 * time.Millisecond}, st
}

func TestStorageKeys(t *testing.T) {
	s, _ := newStorage(t)
	ctx := context.Background()
	if _, err := s.Load(ctx, "certificates/ca/a.test/a.test.crt"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing key: %v, want fs.ErrNotExist", err)
	}
	for _, k := range []string{"certificates/ca/a.test/a.test.crt", "certificates/ca/a.test/a.test.key", "certificates/ca/b.test/b.test.crt", "acme/ca/users/x.json"} {
		if err := s.Store(ctx, k, []byte("v:"+k)); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := s.Load(ctx, "certificates/ca/a.test/a.test.key"); err != nil || string(v) != "v:certificates/ca/a.test/a.test.key" {
		t.Errorf("Load = %q, %v", v, err)
	}
	if !s.Exists(ctx, "certificates/ca/a.test/a.test.crt") || !s.Exists(ctx, "certificates/ca") || s.Exists(ctx, "certificates/ca/c.test") {
		t.Error("Exists is wrong for a file, a directory or a missing key")
	}
	list, err := s.List(ctx, "certificates/ca", false)
	if err != nil || !slices.Equal(list, []string{"certificates/ca/a.test", "certificates/ca/b.test"}) {
		t.Errorf("List not recursive = %v, %v", list, err)
	}
	list, err = s.List(ctx, "certificates", true)
	want := []string{"certificates/ca", "certificates/ca/a.test", "certificates/ca/a.test/a.test.crt", "certificates/ca/a.test/a.test.key",
		"certificates/ca/b.test", "certificates/ca/b.test/b.test.crt"}
	if err != nil || !slices.Equal(list, want) {
		t.Errorf("List recursive = %v, %v; want %v", list, err, want)
	}
	if _, err := s.List(ctx, "nothing", true); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List of a missing prefix: %v, want fs.ErrNotExist", err)
	}
	info, err := s.Stat(ctx, "acme/ca/users/x.json")
	if err != nil || !info.IsTerminal || info.Size != int64(len("v:acme/ca/users/x.json")) || time.Since(info.Modified) > time.Minute {
		t.Errorf("Stat = %+v, %v", info, err)
	}
	if info, err := s.Stat(ctx, "acme/ca"); err != nil || info.IsTerminal {
		t.Errorf("Stat of a directory = %+v, %v", info, err)
	}
	// Deleting a directory deletes what is under it, and only that.
	if err := s.Delete(ctx, "certificates/ca/a.test"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "certificates/ca/a.test") || !s.Exists(ctx, "certificates/ca/b.test/b.test.crt") {
		t.Error("Delete of a directory left it, or took its sibling")
	}
	if err := s.Delete(ctx, "never/was"); err != nil {
		t.Errorf("Delete of a missing key: %v, want nil", err)
	}
}

func TestStorageLock(t *testing.T) {
	s1, st := newStorage(t)
	s2 := &Storage{DB: st, LockTTL: s1.LockTTL, Poll: s1.Poll} // another gateway on the same store
	ctx := context.Background()
	if err := s1.Lock(ctx, "issue_cert_a.test"); err != nil {
		t.Fatal(err)
	}
	// The other waits while the first holds it, even past the TTL (the
	// holder extends it).
	var got atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s2.Lock(ctx, "issue_cert_a.test"); err != nil {
			t.Error(err)
			return
		}
		got.Store(true)
	}()
	time.Sleep(3 * s1.LockTTL) // the TTL must pass: that is what is tested
	if got.Load() {
		t.Fatal("a held lock was taken by another while its holder kept it")
	}
	if err := s1.Unlock(ctx, "issue_cert_a.test"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if !got.Load() {
		t.Fatal("the lock was not taken after Unlock")
	}
	if err := s2.Unlock(ctx, "issue_cert_a.test"); err != nil {
		t.Fatal(err)
	}
	if err := s2.Unlock(ctx, "issue_cert_a.test"); err == nil {
		t.Error("Unlock of a lock not held succeeded")
	}

	// A lock whose holder died (no longer extended) is taken over once stale.
	if err := s1.Lock(ctx, "dead"); err != nil {
		t.Fatal(err)
	}
	s1.mu.Lock()
	h := s1.held["dead"]
	delete(s1.held, "dead")
	s1.mu.Unlock()
	close(h.stop) // the holder "dies": it stops extending
	<-h.done
	tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := s2.Lock(tctx, "dead"); err != nil {
		t.Fatalf("taking over a stale lock: %v", err)
	}
	if time.Since(start) < s1.LockTTL/2 {
		t.Error("a lock was taken over before it was stale")
	}
	s2.Unlock(ctx, "dead")

	// Lock honours its context.
	if err := s1.Lock(ctx, "busy"); err != nil {
		t.Fatal(err)
	}
	defer s1.Unlock(ctx, "busy")
	cctx, ccancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer ccancel()
	if err := s2.Lock(cctx, "busy"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock with an expiring context: %v", err)
	}
}
