package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/webgw/webgw/internal/store"
	"github.com/webgw/webgw/internal/store/storetest"
)

func openBolt(t *testing.T) *store.Bolt {
	t.Helper()
	b, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestBoltConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openBolt(t) })
}

func TestBoltReopen(t *testing.T) {
	ctx := testContext(t)
	path := filepath.Join(t.TempDir(), "state.db")
	b, err := store.OpenBolt(path)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	revA, err := b.Put(ctx, "a", []byte("alpha"), 0)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, err := b.Put(ctx, "gone", []byte("x"), 0); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := b.Delete(ctx, "gone", store.AnyRev); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	// The delete took a revision; find the highest one handed out so far.
	last, err := b.Put(ctx, "b", []byte("beta"), 0)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	b, err = store.OpenBolt(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer b.Close()
	e, err := b.Get(ctx, "a")
	if err != nil {
		t.Fatalf("Get after reopen: %v", err)
	}
	if string(e.Value) != "alpha" || e.Rev != revA {
		t.Fatalf("Get after reopen = %q at rev %d, want alpha at rev %d", e.Value, e.Rev, revA)
	}
	if _, err := b.Get(ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted key after reopen: Get = %v, want ErrNotFound", err)
	}
	rev, err := b.Put(ctx, "c", []byte("gamma"), 0)
	if err != nil {
		t.Fatalf("Put after reopen: %v", err)
	}
	if rev != last+1 {
		t.Fatalf("first rev after reopen = %d, want %d (counter persisted)", rev, last+1)
	}
}

func TestBoltFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "missing")
	path := filepath.Join(dir, "state.db")
	b, err := store.OpenBolt(path)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	defer b.Close()
	for _, c := range []struct {
		path string
		want os.FileMode
	}{{path, 0o600}, {dir, 0o700}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.want {
			t.Errorf("%s: mode %v, want %v", c.path, got, c.want)
		}
	}
}

func TestBoltLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	first, err := store.OpenBolt(path)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	start := time.Now()
	second, err := store.OpenBolt(path)
	if err == nil {
		second.Close()
		t.Fatal("second OpenBolt on a held file succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second OpenBolt took %v to fail, want a few seconds at most", d)
	}
	want := fmt.Sprintf("state file %s is locked by another webgw process", path)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error = %q, want it to contain %q", err, want)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	again, err := store.OpenBolt(path)
	if err != nil {
		t.Fatalf("OpenBolt after the holder closed: %v", err)
	}
	again.Close()
}

// TestBoltConcurrentReaders runs readers against a writer; run with -race.
func TestBoltConcurrentReaders(t *testing.T) {
	ctx := testContext(t)
	b := openBolt(t)
	const keys, writes = 4, 200
	for i := range keys {
		if _, err := b.Put(ctx, "r/"+strconv.Itoa(i), []byte("0"), 0); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			lastRev := map[string]int64{}
			for {
				select {
				case <-done:
					return
				default:
				}
				list, err := b.List(ctx, "r/")
				if err != nil {
					t.Error(err)
					return
				}
				if len(list) != keys {
					t.Errorf("List returned %d entries, want %d", len(list), keys)
					return
				}
				for _, e := range list {
					if e.Rev < lastRev[e.Key] {
						t.Errorf("%s: rev went back from %d to %d", e.Key, lastRev[e.Key], e.Rev)
						return
					}
					lastRev[e.Key] = e.Rev
					if _, err := strconv.Atoi(string(e.Value)); err != nil {
						t.Errorf("%s: torn value %q", e.Key, e.Value)
						return
					}
				}
				if _, err := b.Get(ctx, "r/0"); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i := range writes {
		key := "r/" + strconv.Itoa(i%keys)
		if _, err := b.Put(ctx, key, []byte(strconv.Itoa(i)), store.AnyRev); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
}

func TestBoltSlowWatcherClosed(t *testing.T) {
	ctx := testContext(t)
	b := openBolt(t)
	slow, err := b.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	n := store.WatchBuffer + 10
	for i := range n {
		if _, err := b.Put(ctx, "k", []byte(strconv.Itoa(i)), store.AnyRev); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	for open := true; open; {
		select {
		case _, open = <-slow:
			if open {
				got++
			}
		case <-ctx.Done():
			t.Fatalf("slow watcher not closed after %d events", got)
		}
	}
	if got != store.WatchBuffer {
		t.Fatalf("slow watcher got %d events before closing, want %d", got, store.WatchBuffer)
	}
	// A fresh watcher still works after the slow one was dropped.
	ch, err := b.Watch(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, "k", []byte("after"), store.AnyRev); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-ch:
		if string(ev.Entry.Value) != "after" {
			t.Fatalf("event value %q, want after", ev.Entry.Value)
		}
	case <-ctx.Done():
		t.Fatal("no event for the new watcher")
	}
}

// TestBoltCloseWhileBusy closes the store under concurrent use: every call
// must succeed or return ErrClosed, and nothing may race or hang.
func TestBoltCloseWhileBusy(t *testing.T) {
	ctx := testContext(t)
	b := openBolt(t)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			key := "busy/" + strconv.Itoa(w)
			for i := 0; ; i++ {
				_, err := b.Put(ctx, key, []byte(strconv.Itoa(i)), store.AnyRev)
				if err == nil {
					_, err = b.List(ctx, "busy/")
				}
				if errors.Is(err, store.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("worker %d: %v", w, err)
					return
				}
			}
		})
	}
	ch, err := b.Watch(ctx, "busy/")
	if err != nil {
		t.Fatal(err)
	}
	// Close once the writers are demonstrably running. (If the watcher fell
	// behind and was dropped, they ran too.)
	for seen := 0; seen < 10; seen++ {
		select {
		case _, ok := <-ch:
			if !ok {
				seen = 10
			}
		case <-ctx.Done():
			t.Fatal("no writes seen")
		}
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
}

// TestBoltLeaseSweptAtOpen: keys of a lease its process never closed (a
// crash) are gone when the file is opened again; other keys stay.
func TestBoltLeaseSweptAtOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	b, err := store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	l, err := b.Grant(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Put(ctx, "gateways/x", []byte("me")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, "tenants/a", []byte("{}"), store.AnyRev); err != nil {
		t.Fatal(err)
	}
	b.Close() // the lease is never closed, as after kill -9
	b, err = store.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Get(ctx, "gateways/x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("leased key after reopen: err = %v, want store.ErrNotFound", err)
	}
	if _, err := b.Get(ctx, "tenants/a"); err != nil {
		t.Errorf("unleased key after reopen: %v", err)
	}
}
